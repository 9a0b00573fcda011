"""The nested cost model of an MMU translating through a TwoStage (Bhargava et al., ASPLOS 2008).

A two-dimensional walk costs up to (n+1)(m+1)-1 references; the MMU's own
page-walk cache covers the guest dimension, a nested TLB caches GPA->HPA
per 4 KiB guest frame (fully associative, LRU), and a host page-walk cache
covers the host dimension. TLB entries cache GVA->HPA tagged with the ASID
and the VMID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from vmopt.errors import ConfigError
from vmopt.tlb.config import PwcConfig

__all__ = ["MAX_NTLB_ENTRIES", "NestedConfig", "NestedStats"]

MAX_NTLB_ENTRIES: Final = 1 << 16


@dataclass(frozen=True)
class NestedConfig:
    """How an MMU caches the host dimension: the VMID, the nested TLB and the host PWC.

    ``ntlb_entries`` 0 disables the nested TLB; ``host_pwc`` None disables
    the host page-walk cache.
    """

    vmid: int = 1
    ntlb_entries: int = 16
    host_pwc: PwcConfig | None = field(default_factory=PwcConfig)

    def __post_init__(self) -> None:
        if type(self.vmid) is not int or not 1 <= self.vmid <= 0xFFFF:
            raise ConfigError(f"vmid must be an integer in [1, 65535], got {self.vmid!r}", field="vmid")
        n = self.ntlb_entries
        if type(n) is not int or not 0 <= n <= MAX_NTLB_ENTRIES:
            raise ConfigError(
                f"nested TLB entries must be an integer in [0, {MAX_NTLB_ENTRIES}], got {n!r}",
                field="ntlb_entries",
            )
        if self.host_pwc is not None and not isinstance(self.host_pwc, PwcConfig):
            raise ConfigError(
                f"host_pwc must be a PwcConfig or None, got {self.host_pwc!r}", field="host_pwc"
            )


@dataclass(frozen=True, slots=True)
class NestedStats:
    """Counters of the nested cost model: walks, references per dimension, cache lookups and hits."""

    walks: int
    guest_refs: int
    host_refs: int
    host_faults: int
    ntlb_lookups: int
    ntlb_hits: int
    host_pwc_lookups: int
    host_pwc_hits: int
