"""Host (stage-2) formats for two-stage translation: Intel EPT, AMD NPT and the RISC-V G-stage, run
by the core.

EPT (Intel SDM Vol. 3C, "EPT"): R/W/X in bits 2:0, the memory type in 5:3
and ignore-PAT in 6 on leaves, a large page in 7, accessed/dirty in 8/9
when EPTP bit 6 (``ad``) enables them. A W-only or WX-only entry, a reserved
memory type (2, 3, 7) or a reserved bit is a misconfiguration (fault cause
``"misconfigured"``); an entry that is not present or lacks the right is a
violation (``"not_present"``, ``"protection"``). GPAs are zero-extended.

NPT (AMD APM Vol. 2, "Nested Paging"): the long-mode format, and every
nested walk is a user access, so host leaves are always user pages.

G-stage (RISC-V privileged spec, hypervisor extension): Sv39x4/Sv48x4, the
Sv39/Sv48 entries with a 16 KiB root and GPAs 2 bits wider; every access is
a U-mode access, so leaves need U. ``PageTable`` builds, edits, lists and
frees its tables like any other: the root is one 16 KiB (order-2) block,
16 KiB aligned (``attach`` requires that), with 2048 entries.
"""

from __future__ import annotations

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.paging.format import CoreFormat

__all__ = ["Ept", "GStage", "HostFormat", "Npt"]


class HostFormat(CoreFormat):
    """A stage-2 format: GPAs are not sign-extended, so canonical means below ``2**va_bits``."""

    def is_canonical(self, va: int) -> bool:
        return isinstance(va, int) and 0 <= va < 1 << 64 and bool(self.core.is_canonical(va))

    def canonicalize(self, va: int) -> int:
        return int(self.core.canonicalize(va & ((1 << 64) - 1)))


class Ept(HostFormat):
    """Intel EPT with 4 (``"ept"``, 48-bit GPAs) or 5 (``"ept_5level"``, 57-bit) levels.

    ``maxphyaddr`` bounds host-physical addresses (bits above it are
    reserved: a misconfiguration); ``ad`` is EPTP bit 6: walks set A and D,
    and guest page-table reads count as host writes, as the SDM says.
    """

    def __init__(self, levels: int = 4, *, maxphyaddr: int = 46, ad: bool = False) -> None:
        if type(levels) is not int:
            raise ConfigError(f"EPT has 4 or 5 levels, got {levels!r}")
        if type(maxphyaddr) is not int:
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self._bind(_core.Format.ept(levels, maxphyaddr, bool(ad)))
        self.ad = bool(ad)

    def __repr__(self) -> str:
        return f"Ept(levels={self.levels}, maxphyaddr={self.pa_bits}, ad={self.ad})"


class Npt(HostFormat):
    """AMD nested paging: 4-level long-mode entries, every walk a user access, GPAs below 2**47."""

    def __init__(self, *, maxphyaddr: int = 46) -> None:
        if type(maxphyaddr) is not int:
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self._bind(_core.Format.npt(maxphyaddr))

    def __repr__(self) -> str:
        return f"Npt(maxphyaddr={self.pa_bits})"


class GStage(HostFormat):
    """The RISC-V G-stage: Sv39x4 (``levels=3``, 41-bit GPAs) or Sv48x4 (``levels=4``, 50-bit GPAs)."""

    def __init__(self, levels: int = 3, *, svade: bool = False) -> None:
        if type(levels) is not int:
            raise ConfigError(f"the RISC-V G-stage here is Sv39x4 (3 levels) or Sv48x4 (4), got {levels!r}")
        self._bind(_core.Format.gstage(levels, bool(svade)))
        self.svade = bool(svade)

    def root_index(self, gpa: int) -> int:
        """Index of ``gpa`` in the 2048-entry root table (``index`` gives the 9-bit ones below it)."""
        return (gpa >> (12 + 9 * (self.levels - 1))) & 0x7FF

    def __repr__(self) -> str:
        return f"GStage({self.name})"
