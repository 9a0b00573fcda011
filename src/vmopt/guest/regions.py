"""A guest's regions: reserved ranges of guest-virtual space, populated on first touch.

:class:`RegionMap` keeps them in address order (a bisect over their
starts), hands out the address of each new one (2 MiB aligned, with a guard
gap after it) and finds the region of an address. :class:`NodeStats` is the
per-node view the facade reports.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from vmopt.errors import AddressError, MappingError
from vmopt.numa.policy import MemPolicy
from vmopt.paging.format import PagingFormat
from vmopt.paging.types import Perm
from vmopt.stores.base import BackingStore
from vmopt.units import format_size

__all__ = ["REGION_BASE", "NodeStats", "Region", "RegionMap"]

#: Where the first region goes: canonical and inside every format (Sv39 included).
REGION_BASE = 0x10_0000_0000


@dataclass
class Region:
    """A reserved range of guest-virtual addresses, populated on first touch."""

    va: int
    size: int
    page_size: int
    policy: MemPolicy
    perms: Perm
    user: bool
    store: BackingStore | None = None
    resident: dict[int, int] = field(default_factory=dict)  # page index -> frame pa

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.va + self.size

    @property
    def pages(self) -> int:
        """Pages the region spans."""
        return self.size // self.page_size

    def index_of(self, va: int) -> int:
        """The index of the page holding ``va``."""
        return (va - self.va) // self.page_size

    def page_va(self, index: int) -> int:
        """The first address of page ``index``."""
        return self.va + index * self.page_size


@dataclass
class NodeStats:
    """Per-node placement and traffic counters.

    ``local_accesses``/``remote_accesses`` count translated accesses by
    whether the frame sits on the accessing vCPU's node; ``access_cost`` sums
    the SLIT distance of each access (10 per local access).
    """

    node: int
    size: int
    used_bytes: int
    pages: int
    local_accesses: int
    remote_accesses: int
    access_cost: int

    @property
    def percent_used(self) -> float:
        """Used share of the node, in percent."""
        return 100.0 * self.used_bytes / self.size


class RegionMap:
    """The regions of one address space in ``fmt``, in address order.

    Not locked: the guest serialises changes under its own lock; lookups
    read a consistent pair of lists.
    """

    def __init__(self, fmt: PagingFormat) -> None:
        self.fmt = fmt
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self._next_va = REGION_BASE

    def reserve(
        self, size: int, page_size: int, policy: MemPolicy, perms: Perm, user: bool,
        store: BackingStore | None,
    ) -> Region:  # fmt: skip
        """A new region of ``size`` bytes (a whole number of pages) after the last one."""
        align = max(page_size, 2 << 20)
        va = -(-self._next_va // align) * align
        end = va + size
        if not self.fmt.is_canonical(end - 1) or end >> (self.fmt.va_bits - 1):
            raise AddressError(f"no room for a {format_size(size)} region in the {self.fmt.name} user half")
        region = Region(va, size, page_size, policy, perms, user, store)
        i = bisect.bisect_left(self._starts, va)
        self._starts.insert(i, va)
        self._regions.insert(i, region)
        self._next_va = end + align  # a guard gap between regions
        return region

    def find(self, va: int) -> Region | None:
        """The region containing ``va``, if any."""
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0:
            r = self._regions[i]
            if va < r.end:
                return r
        return None

    def remove(self, va: int) -> Region:
        """Forget the region that starts at ``va`` (its frames are the caller's to free)."""
        i = bisect.bisect_left(self._starts, va)
        if i >= len(self._starts) or self._starts[i] != va:
            raise MappingError(f"no region starts at {va:#x}")
        region = self._regions[i]
        del self._starts[i]
        del self._regions[i]
        return region

    def __iter__(self) -> Iterator[Region]:
        """Every region, in address order (a snapshot)."""
        return iter(list(self._regions))

    def resident_in(self, va: int, length: int) -> Iterator[tuple[Region, int, int]]:
        """``(region, page index, frame)`` of every resident page overlapping ``[va, va+length)``."""
        end = va + length
        for region in self:
            if region.end <= va or region.va >= end:
                continue
            for index, pa in sorted(region.resident.items()):
                page_va = region.page_va(index)
                if page_va < end and va < page_va + region.page_size:
                    yield region, index, pa
