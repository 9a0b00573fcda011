"""Two-stage translation: a guest's page table over a host's (EPT, NPT, the RISC-V G-stage,
AArch64 stage 2).

``TwoStage(guest_pt, host_pt).walk(gva, access, user)`` is the walk a CPU
with nested paging does: the guest's tables turn the GVA into a GPA, and
every GPA the walk touches (each guest page-table entry, then the final
address) is translated by the host's tables into a host-physical address.
Uncached, an n-level guest over an m-level host reads (n+1)(m+1)-1 entries.
Faults say which ``stage`` they belong to; a host fault names the ``gpa``
and whether it was ``on_table`` (a guest entry) or the final access.

A guest table built on ``host_pt.guest_memory()`` (:class:`GuestMemory`)
has its entries read at the HPA each host walk gives, in host memory, so a
host remap is seen by the next walk. A guest table in a memory of its own
(what :func:`back_guest_memory` backs) is read there at the GPA, the VMM's
view of guest RAM; the host table then says whether each access is allowed
and where the final address is backed.
"""

from __future__ import annotations

from typing import Any

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.memory.physical import PhysicalMemory
from vmopt.paging.format import PagingFormat
from vmopt.paging.hostfmt import AArch64Stage2
from vmopt.paging.pagetable import PageTable, make_format
from vmopt.paging.types import NestedTranslation, Perm
from vmopt.units import format_size

__all__ = ["HOST_FORMATS", "TwoStage", "back_guest_memory"]

#: Format names a host table of a two-stage walk may have.
HOST_FORMATS = (
    "ept",
    "ept_5level",
    "npt",
    "sv39x4",
    "sv48x4",
    "aarch64_s2",
    "aarch64_s2_16k",
    "aarch64_s2_64k",
)


class TwoStage:
    """A guest :class:`PageTable` (GVA -> GPA) translated through a host one (GPA -> HPA)."""

    def __init__(self, guest_pt: PageTable, host_pt: PageTable) -> None:
        for name, pt in (("guest_pt", guest_pt), ("host_pt", host_pt)):
            if not isinstance(pt, PageTable):
                raise ConfigError(f"TwoStage {name} must be a PageTable, got {type(pt).__name__}")
        self.guest = guest_pt
        self.host = host_pt
        self.core: Any = _core.TwoStage(guest_pt.core, host_pt.core)

    def __repr__(self) -> str:
        return f"TwoStage({self.guest.name} over {self.host.name})"

    def walk(self, gva: int, access: str = "r", user: bool = False) -> NestedTranslation:
        """Translate ``gva`` through both stages (no caches), or raise :class:`PageFault`.

        ``access`` is ``'r'``, ``'w'``, ``'x'`` or ``'p'`` (a probe: no
        rights check). Accessed and dirty bits are set in both dimensions
        as the hardware does, where each table's ``update_ad`` allows.
        """
        t: NestedTranslation = self.core.walk(gva, access, user)
        return t

    def walk_refs(self, gva: int, access: str = "r", user: bool = False) -> tuple[int, int]:
        """``(guest, host)`` page-table references of the uncached walk of ``gva``, faulting or not."""
        refs: tuple[int, int] = self.core.walk_refs(gva, access, user)
        return refs


def back_guest_memory(
    guest_pt: PageTable, host_format: str | PagingFormat, page_size: int = 2 << 20
) -> TwoStage:
    """``guest_pt`` under a new host table that backs all of its memory, as a hypervisor
    backs a VM's RAM: every guest-physical page identity-mapped (HPA = GPA, so each
    guest NUMA node sits on the same host node), ``rwx``, with host pages of
    ``page_size``. The host's own tables live in a host memory of their own, above
    guest memory. Returns the :class:`TwoStage` of the two.
    """
    host_fmt = host_format if isinstance(host_format, PagingFormat) else None
    name = host_fmt.name if host_fmt is not None else host_format
    if name not in HOST_FORMATS and not isinstance(host_fmt, AArch64Stage2):
        raise ConfigError(f"host format must be one of {', '.join(HOST_FORMATS)}, got {host_format!r}")
    fmt = host_fmt if host_fmt is not None else make_format(name)
    if page_size not in fmt.page_sizes:
        sizes = ", ".join(format_size(s) for s in fmt.page_sizes)
        raise ConfigError(f"host page size must be one of {sizes} for {fmt.name}, got {page_size!r}")
    mem = guest_pt.mem
    lo = mem.base - mem.base % page_size
    hi = -(-mem.end // page_size) * page_size
    pages = (hi - lo) // page_size
    # A table (one granule) per granule / 8 entries at each level, and room to spare.
    granule = fmt.page_sizes[0]
    table_bytes = (pages // (granule // 8) + 64) * granule * 2
    table_bytes = -(-table_bytes // (2 << 20)) * (2 << 20)
    host_base = -(-hi // (1 << 30)) * (1 << 30)
    host = PageTable(PhysicalMemory(table_bytes, base=host_base), fmt)
    rwx = Perm.R | Perm.W | Perm.X
    for gpa in range(lo, hi, page_size):
        host.map_trusted(gpa, gpa, page_size, rwx, True)
    return TwoStage(guest_pt, host)
