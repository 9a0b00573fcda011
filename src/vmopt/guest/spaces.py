"""Address spaces of one guest: a page table and the anonymous memory mapped in it, per ASID.

ASID 0 is the guest's own address space, the one its regions live in.
Every other ASID (a process of a multi-process trace: ChampSim's
cloudsuite ASIDs, drmemtrace's PIDs) is made on first use, on the same NUMA
memory, and holds anonymous memory only. Its TLB entries carry its ASID,
so switching between spaces flushes nothing, as with PCIDs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vmopt.paging.pagetable import PageTable

__all__ = ["CACHE_MASK", "NO_PAGE", "AddressSpace"]

#: Slots of a space's cache of mapped pages, minus one (64 Ki slots, 512 KiB).
CACHE_MASK = (1 << 16) - 1
#: An empty cache slot: no page number is that large.
NO_PAGE = np.uint64(2**64 - 1)


@dataclass(eq=False)
class AddressSpace:
    """One ASID's page table and its anonymous pages (page number -> frame).

    ``mapped_cache`` is a direct-mapped cache of anonymous page numbers
    known mapped (slot: ``page & CACHE_MASK``); anonymous pages are never
    unmapped, so a hit is always right.
    """

    asid: int
    table: PageTable
    anonymous: dict[int, int] = field(default_factory=dict)
    mapped_cache: npt.NDArray[np.uint64] = field(default_factory=lambda: np.full(0, NO_PAGE))

    @classmethod
    def new(cls, asid: int, table: PageTable, anonymous_memory: bool) -> AddressSpace:
        """A space; its mapped-page cache exists only when the guest has anonymous memory."""
        return cls(asid, table, {}, np.full(CACHE_MASK + 1 if anonymous_memory else 0, NO_PAGE))
