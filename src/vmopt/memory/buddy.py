"""Binary buddy allocator of physical page frames (like Linux's page_alloc).

A thin wrapper over the Rust core's allocator, ``vmopt._core.Buddy`` (see
crates/vmopt-core/src/memory/buddy.rs for the design: sections that cost
nothing while whole or full, per-order bitmaps with 64-ary summaries only in
split ones, free space always fully coalesced). An allocator is standalone,
or a view of one node of a :class:`~vmopt.memory.PhysicalMemory`: both views
share the same frames. The core takes unsigned integers; the few values it
cannot represent (negative, too wide, not an int) are explained here with
the same errors the core gives for the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import index
from typing import Final

from vmopt import _core
from vmopt.errors import AddressError, ConfigError

__all__ = ["MAX_ORDER_LIMIT", "BuddyAllocator"]

#: Largest ``max_order`` accepted (2**24 frames = 64 GiB blocks); a split
#: section costs about ``2**max(max_order, 18) / 4`` bytes.
MAX_ORDER_LIMIT: Final = 24

_PFN_LIMIT: Final = 1 << 52  # 64-bit physical addresses


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BuddyAllocator:
    """Buddy allocator of the frames ``[base_pfn, base_pfn + npages)``.

    An order-``k`` block is ``2**k`` frames at a pfn that is a multiple of
    ``2**k``. ``alloc`` is deterministic: the lowest-address free block of the
    order, else the lowest block of the smallest larger order that has one,
    split. Every failing call raises before changing anything. Thread-safe
    (the core holds the allocator behind a lock).
    """

    __slots__ = ("core",)

    core: _core.Buddy
    """The core allocator this wraps (shared with the memory it belongs to, if any)."""

    def __init__(self, base_pfn: int, npages: int, *, max_order: int = 18, node: int | None = None) -> None:
        if all(_is_int(v) for v in (base_pfn, npages, max_order)) and (node is None or _is_int(node)):
            try:
                self.core = _core.Buddy(base_pfn, npages, max_order, node)
                return
            except OverflowError:
                pass
        raise _constructor_error(base_pfn, npages, max_order, node)

    @classmethod
    def from_core(cls, core: _core.Buddy) -> BuddyAllocator:
        """A wrapper of an existing core allocator (a memory's node), sharing its state."""
        allocator = cls.__new__(cls)
        allocator.core = core
        return allocator

    # -- properties ------------------------------------------------------------------

    @property
    def base_pfn(self) -> int:
        """First frame managed."""
        return self.core.base_pfn

    @property
    def end_pfn(self) -> int:
        """One past the last frame managed."""
        return self.core.end_pfn

    @property
    def max_order(self) -> int:
        """Largest block order (``2**max_order`` frames)."""
        return self.core.max_order

    @property
    def node(self) -> int | None:
        """NUMA node these frames belong to, for messages."""
        return self.core.node

    @property
    def total_pages(self) -> int:
        """Frames managed, free or not."""
        return self.core.total_pages

    @property
    def free_pages(self) -> int:
        """Frames currently free."""
        return self.core.free_pages

    @property
    def used_pages(self) -> int:
        """Frames currently allocated."""
        return self.core.used_pages

    def free_blocks(self) -> list[int]:
        """Free blocks per order ``0..max_order``, like ``/proc/buddyinfo``."""
        return self.core.free_blocks()

    def __repr__(self) -> str:
        return repr(self.core)

    # -- queries ---------------------------------------------------------------------

    def is_free(self, pfn: int) -> bool:
        """Whether frame ``pfn`` is free (``False`` outside the managed range)."""
        try:
            return self.core.is_free(pfn)
        except OverflowError:
            index(pfn)
            return False  # negative or past 2**64: outside

    def iter_free_blocks(self) -> Iterator[tuple[int, int]]:
        """``(pfn, order)`` of every free block, in address order (for dumps and checks)."""
        return iter(self.core.iter_free_blocks())

    # -- allocation ------------------------------------------------------------------

    def alloc(self, order: int) -> int:
        """Allocate a free order-``order`` block; return its pfn.

        Raises :class:`OutOfFramesError` when no block that large is free.
        """
        try:
            return self.core.alloc(order)
        except OverflowError:
            raise self._order_error(index(order)) from None

    def alloc_at(self, pfn: int, order: int) -> None:
        """Allocate the block at ``pfn``; every frame in it must be free.

        Raises :class:`AddressError` for a misaligned or out-of-range block
        and :class:`MappingError` when some frame in it is not free.
        """
        try:
            self.core.alloc_at(pfn, order)
        except OverflowError:
            raise self._block_error("alloc_at", index(pfn), index(order)) from None

    def free(self, pfn: int, order: int) -> None:
        """Return the order-``order`` block at ``pfn``, coalescing with free buddies.

        The block need not come from :meth:`alloc` (part of a larger allocated
        block may be freed), but none of its frames may be free already:
        that raises :class:`MappingError`. A misaligned or out-of-range block
        raises :class:`AddressError`.
        """
        try:
            self.core.free(pfn, order)
        except OverflowError:
            raise self._block_error("free", index(pfn), index(order)) from None

    # -- errors for values the core cannot take -------------------------------------

    def _order_error(self, order: int) -> ConfigError:
        return ConfigError(f"order must be in 0..{self.max_order}, got {order}")

    def _block_error(self, what: str, pfn: int, order: int) -> ConfigError | AddressError:
        """The error for a block whose pfn or order does not fit the core's integers."""
        if not 0 <= order <= self.max_order:
            return self._order_error(order)
        where = "" if self.node is None else f"node {self.node}: "
        block = f"order-{order} block at pfn {pfn:#x}"
        if pfn & ((1 << order) - 1):
            return AddressError(f"{where}{what} {block}: pfn is not a multiple of {1 << order}")
        return AddressError(f"{where}{what} {block}: outside frames [{self.base_pfn:#x}, {self.end_pfn:#x})")


def _constructor_error(base_pfn: object, npages: object, max_order: object, node: object) -> ConfigError:
    """The constructor's error, in its order of checks, for arguments the core cannot take."""
    for name, value in (("base_pfn", base_pfn), ("npages", npages), ("max_order", max_order)):
        if not _is_int(value):
            return ConfigError(f"{name} must be an int, got {value!r}")
    assert isinstance(base_pfn, int) and isinstance(npages, int) and isinstance(max_order, int)
    if base_pfn < 0:
        return ConfigError(f"base_pfn must be >= 0, got {base_pfn}")
    if npages <= 0:
        return ConfigError(f"npages must be > 0, got {npages}")
    if base_pfn + npages > _PFN_LIMIT:
        return ConfigError(f"frames [{base_pfn:#x}, {base_pfn + npages:#x}) exceed the 64-bit physical space")
    if not 0 <= max_order <= MAX_ORDER_LIMIT:
        return ConfigError(f"max_order must be in 0..{MAX_ORDER_LIMIT}, got {max_order}")
    return ConfigError(f"node must be None or an int >= 0, got {node!r}")
