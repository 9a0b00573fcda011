"""Binary buddy allocator of physical page frames (like Linux's page_alloc).

Design. Frames are grouped into naturally aligned *sections* of ``2**S``
frames, ``S = max(max_order, 18)`` (1 GiB by default). A section that is
entirely free costs one bit in an int mask, one entirely in use costs
nothing. Only a section that has been split owns bitmaps: per order ``k``
(created lazily, the first time that order gets a free block there), bit
``i`` says "block ``i`` of ``2**k`` frames is a free buddy block", with
64-ary summary levels above it, so find-lowest, set and clear touch three
words. A split 1 GiB section costs at most ~70 KiB however fragmented,
never a Python object per free frame or block; its bitmaps are dropped
when it becomes whole or full again (one set is kept as a spare, so churn
at a section's edge does not reallocate them). Per order, an int mask of
section numbers says which sections hold a free block of that order, so the
lowest-address block is two lowest-set-bit operations away.

The words live in ``array('Q')``, not numpy: the hot paths read and write
single words, and ``array`` hands back plain ints far faster than numpy
scalar indexing.

Free space is always fully coalesced, so the set of free blocks is a
function of the set of free frames: a frame range is all free exactly when
one free block contains it. Not thread-safe.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from operator import index
from typing import Final

from vmopt.errors import AddressError, ConfigError, MappingError, OutOfFramesError
from vmopt.units import format_size

__all__ = ["MAX_ORDER_LIMIT", "BuddyAllocator"]

#: Largest ``max_order`` accepted (2**24 frames = 64 GiB blocks); a split
#: section costs about ``2**max(max_order, 18) / 4`` bytes.
MAX_ORDER_LIMIT: Final = 24

_PAGE_SHIFT: Final = 12
_MIN_SECTION_SHIFT: Final = 18
_PFN_LIMIT: Final = 1 << 52  # 64-bit physical addresses
_ALL: Final = (1 << 64) - 1

# One order's bitmap in one section: level 0 holds one bit per block, each
# level above one bit per non-zero word of the level below; the last level
# is a single word.
_Levels = list["array[int]"]


def _new_levels(nbits: int) -> _Levels:
    levels: _Levels = []
    while True:
        words = (nbits + 63) >> 6
        levels.append(array("Q", bytes(8 * words)))
        if words == 1:
            return levels
        nbits = words


def _first(levels: _Levels) -> int:
    """Lowest set bit; the bitmap must not be empty."""
    i = 0
    for arr in reversed(levels):
        w = arr[i]
        i = (i << 6) | ((w & -w).bit_length() - 1)
    return i


def _any(levels: _Levels, start: int, count: int) -> bool:
    """Whether any bit is set in ``[start, start+count)``, an aligned power of two."""
    for arr in levels:
        if count <= 64:
            return (arr[start >> 6] >> (start & 63)) & ((1 << count) - 1) != 0
        start >>= 6
        count >>= 6
    raise AssertionError("range larger than the bitmap")  # pragma: no cover


def _fill(levels: _Levels, start: int, stop: int) -> None:
    """Set every bit in ``[start, stop)`` (non-empty)."""
    for arr in levels:
        ws, we = start >> 6, (stop - 1) >> 6
        if ws == we:
            arr[ws] |= ((1 << (stop - start)) - 1) << (start & 63)
        else:
            arr[ws] |= (_ALL << (start & 63)) & _ALL
            if we - ws > 1:
                arr[ws + 1 : we] = array("Q", [_ALL]) * (we - ws - 1)
            arr[we] |= (1 << (((stop - 1) & 63) + 1)) - 1
        start, stop = ws, we + 1


class _Section:
    """Bitmaps of one split section; ``levels[k]`` is ``None`` until order k is used.

    Bit ``k`` of ``orders`` is set while the section has a free order-k block.
    """

    __slots__ = ("free_pages", "levels", "orders")

    def __init__(self, free_pages: int, norders: int) -> None:
        self.free_pages = free_pages
        self.levels: list[_Levels | None] = [None] * norders
        self.orders = 0


class BuddyAllocator:
    """Buddy allocator of the frames ``[base_pfn, base_pfn + npages)``.

    An order-``k`` block is ``2**k`` frames at a pfn that is a multiple of
    ``2**k``. ``alloc`` is deterministic: the lowest-address free block of the
    order, else the lowest block of the smallest larger order that has one,
    split. Every failing call raises before changing anything.
    """

    def __init__(self, base_pfn: int, npages: int, *, max_order: int = 18, node: int | None = None) -> None:
        for name, value in (("base_pfn", base_pfn), ("npages", npages), ("max_order", max_order)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an int, got {value!r}")
        if base_pfn < 0:
            raise ConfigError(f"base_pfn must be >= 0, got {base_pfn}")
        if npages <= 0:
            raise ConfigError(f"npages must be > 0, got {npages}")
        if base_pfn + npages > _PFN_LIMIT:
            raise ConfigError(
                f"frames [{base_pfn:#x}, {base_pfn + npages:#x}) exceed the 64-bit physical space"
            )
        if not 0 <= max_order <= MAX_ORDER_LIMIT:
            raise ConfigError(f"max_order must be in 0..{MAX_ORDER_LIMIT}, got {max_order}")
        if node is not None and (not isinstance(node, int) or isinstance(node, bool) or node < 0):
            raise ConfigError(f"node must be None or an int >= 0, got {node!r}")

        self._lo = base_pfn
        self._hi = base_pfn + npages
        self._max_order = max_order
        self._node = node
        shift = max(max_order, _MIN_SECTION_SHIFT)
        self._shift = shift
        self._sec0 = base_pfn >> shift
        self._free_pages = 0
        self._nfree = [0] * (max_order + 1)
        # Bit r of _index[k]: section r (relative to _sec0) has a free order-k block.
        self._index = [0] * (max_order + 1)
        # Bit r of _whole: section r is entirely free and has no _Section.
        self._whole = 0
        self._secs: dict[int, _Section] = {}
        self._spare: _Section | None = None

        first_full = -(-self._lo >> shift)
        end_full = self._hi >> shift
        if first_full < end_full:
            n = end_full - first_full
            mask = ((1 << n) - 1) << (first_full - self._sec0)
            self._whole = mask
            self._index[max_order] = mask
            self._nfree[max_order] = n << (shift - max_order)
            self._free_pages = n << shift
        # The partial sections at either end (possibly one and the same).
        for sec in {self._lo >> shift, (self._hi - 1) >> shift}:
            start = max(self._lo, sec << shift)
            stop = min(self._hi, (sec + 1) << shift)
            if stop - start < 1 << shift:
                self._carve(sec - self._sec0, start - (sec << shift), stop - (sec << shift))

    # -- properties ------------------------------------------------------------------

    @property
    def base_pfn(self) -> int:
        """First frame managed."""
        return self._lo

    @property
    def end_pfn(self) -> int:
        """One past the last frame managed."""
        return self._hi

    @property
    def max_order(self) -> int:
        """Largest block order (``2**max_order`` frames)."""
        return self._max_order

    @property
    def node(self) -> int | None:
        """NUMA node these frames belong to, for messages."""
        return self._node

    @property
    def total_pages(self) -> int:
        """Frames managed, free or not."""
        return self._hi - self._lo

    @property
    def free_pages(self) -> int:
        """Frames currently free."""
        return self._free_pages

    @property
    def used_pages(self) -> int:
        """Frames currently allocated."""
        return self._hi - self._lo - self._free_pages

    def free_blocks(self) -> list[int]:
        """Free blocks per order ``0..max_order``, like ``/proc/buddyinfo``."""
        return list(self._nfree)

    def __repr__(self) -> str:
        node = "" if self._node is None else f"node={self._node}, "
        return (
            f"BuddyAllocator({node}pfn [{self._lo:#x}, {self._hi:#x}), "
            f"free {self._free_pages}/{self._hi - self._lo} pages)"
        )

    # -- queries ---------------------------------------------------------------------

    def is_free(self, pfn: int) -> bool:
        """Whether frame ``pfn`` is free (``False`` outside the managed range)."""
        pfn = index(pfn)
        if not self._lo <= pfn < self._hi:
            return False
        rel = (pfn >> self._shift) - self._sec0
        sec = self._secs.get(rel)
        if sec is None:
            return bool(self._whole >> rel & 1)
        local = pfn & ((1 << self._shift) - 1)
        for k, levels in enumerate(sec.levels):
            if levels is not None:
                b = local >> k
                if levels[0][b >> 6] >> (b & 63) & 1:
                    return True
        return False

    def iter_free_blocks(self) -> Iterator[tuple[int, int]]:
        """``(pfn, order)`` of every free block, in address order (for dumps and checks)."""
        shift, top = self._shift, self._max_order
        whole = self._whole
        rels = set(self._secs)
        while whole:
            low = whole & -whole
            whole ^= low
            rels.add(low.bit_length() - 1)
        for rel in sorted(rels):
            base = (self._sec0 + rel) << shift
            sec = self._secs.get(rel)
            if sec is None:
                for pfn in range(base, base + (1 << shift), 1 << top):
                    yield pfn, top
                continue
            blocks: list[tuple[int, int]] = []
            for k, levels in enumerate(sec.levels):
                if levels is None:
                    continue
                for w, word in enumerate(levels[0]):
                    while word:
                        low = word & -word
                        word ^= low
                        blocks.append((base + ((w << 6 | (low.bit_length() - 1)) << k), k))
            blocks.sort()
            yield from blocks

    # -- allocation ------------------------------------------------------------------

    def alloc(self, order: int) -> int:
        """Allocate a free order-``order`` block; return its pfn.

        Raises :class:`OutOfFramesError` when no block that large is free.
        """
        order = self._check_order(order)
        idx = self._index
        for k in range(order, self._max_order + 1):
            mask = idx[k]
            if mask:
                break
        else:
            raise self._oom(order)
        rel = (mask & -mask).bit_length() - 1
        sec = self._secs.get(rel)
        if sec is None:  # an entirely free section: k == max_order
            if self._shift == order:
                return self._take_whole(rel)
            sec = self._split_whole(rel)
        levels = sec.levels[k]
        assert levels is not None
        b = _first(levels)
        self._remove(sec, rel, k, b)
        while k > order:
            k -= 1
            b <<= 1
            self._insert(sec, rel, k, b | 1)
        return self._account_alloc(sec, rel, order, b)

    def alloc_at(self, pfn: int, order: int) -> None:
        """Allocate the block at ``pfn``; every frame in it must be free.

        Raises :class:`AddressError` for a misaligned or out-of-range block
        and :class:`MappingError` when some frame in it is not free.
        """
        order = self._check_order(order)
        pfn = self._check_block(pfn, order, "alloc_at")
        rel = (pfn >> self._shift) - self._sec0
        sec = self._secs.get(rel)
        if sec is None:
            if not self._whole >> rel & 1:
                raise MappingError(f"{self._where()}alloc_at {self._block(pfn, order)}: not free")
            if self._shift == order:
                self._take_whole(rel)
                return
            sec = self._split_whole(rel)
        local = pfn & ((1 << self._shift) - 1)
        for k in range(order, self._max_order + 1):
            levels = sec.levels[k]
            if levels is not None:
                b = local >> k
                if levels[0][b >> 6] >> (b & 63) & 1:
                    break
        else:
            raise MappingError(f"{self._where()}alloc_at {self._block(pfn, order)}: not all of it is free")
        self._remove(sec, rel, k, b)
        while k > order:
            k -= 1
            self._insert(sec, rel, k, (local >> k) ^ 1)
        self._account_alloc(sec, rel, order, local >> order)

    def free(self, pfn: int, order: int) -> None:
        """Return the order-``order`` block at ``pfn``, coalescing with free buddies.

        The block need not come from :meth:`alloc` (part of a larger allocated
        block may be freed), but none of its frames may be free already:
        that raises :class:`MappingError`. A misaligned or out-of-range block
        raises :class:`AddressError`.
        """
        order = self._check_order(order)
        pfn = self._check_block(pfn, order, "free")
        shift = self._shift
        rel = (pfn >> shift) - self._sec0
        local = pfn & ((1 << shift) - 1)
        sec = self._secs.get(rel)
        if sec is None:
            if self._whole >> rel & 1:
                top = self._max_order
                raise self._double_free(pfn, order, pfn >> top << top, top)
            sec = self._new_section(rel, 0)
        else:
            self._check_not_free(sec, pfn, order, local)
        b = local >> order
        k = order
        levels_by_order = sec.levels
        while k < self._max_order:
            levels = levels_by_order[k]
            if levels is None:
                break
            buddy = b ^ 1
            if not levels[0][buddy >> 6] >> (buddy & 63) & 1:
                break
            self._remove(sec, rel, k, buddy)
            b >>= 1
            k += 1
        self._insert(sec, rel, k, b)
        size = 1 << order
        self._free_pages += size
        sec.free_pages += size
        if sec.free_pages == 1 << shift:  # coalesced into order-max blocks only
            sec.levels[self._max_order] = None
            sec.orders = 0
            self._drop(rel)
            self._whole |= 1 << rel

    # -- internals -------------------------------------------------------------------

    def _check_order(self, order: int) -> int:
        order = index(order)
        if not 0 <= order <= self._max_order:
            raise ConfigError(f"order must be in 0..{self._max_order}, got {order}")
        return order

    def _check_block(self, pfn: int, order: int, what: str) -> int:
        pfn = index(pfn)
        if pfn & ((1 << order) - 1):
            raise AddressError(
                f"{self._where()}{what} {self._block(pfn, order)}: pfn is not a multiple of {1 << order}"
            )
        if pfn < self._lo or pfn + (1 << order) > self._hi:
            raise AddressError(
                f"{self._where()}{what} {self._block(pfn, order)}: "
                f"outside frames [{self._lo:#x}, {self._hi:#x})"
            )
        return pfn

    def _check_not_free(self, sec: _Section, pfn: int, order: int, local: int) -> None:
        levels_by_order = sec.levels
        orders = sec.orders
        while orders:  # only the orders that have free blocks in this section
            low = orders & -orders
            orders ^= low
            k = low.bit_length() - 1
            levels = levels_by_order[k]
            assert levels is not None
            if k >= order:  # a free block containing it?
                b = local >> k
                if levels[0][b >> 6] >> (b & 63) & 1:
                    raise self._double_free(pfn, order, pfn >> k << k, k)
            elif _any(levels, local >> k, 1 << (order - k)):  # free blocks inside it?
                raise self._double_free(pfn, order, None, k)

    def _double_free(self, pfn: int, order: int, free_pfn: int | None, k: int) -> MappingError:
        what = self._block(pfn, order)
        if free_pfn == pfn and k == order:
            return MappingError(f"{self._where()}double free of {what}")
        if free_pfn is None:
            detail = f"contains a free order-{k} block"
        else:
            detail = f"lies in the free {self._block(free_pfn, k)}"
        return MappingError(f"{self._where()}free of {what}: {detail} (double free?)")

    def _insert(self, sec: _Section, rel: int, k: int, b: int) -> None:
        levels = sec.levels[k]
        if levels is None:
            levels = sec.levels[k] = _new_levels(1 << (self._shift - k))
        for arr in levels:  # set bit b, and summary bits of words that were zero
            w = b >> 6
            old = arr[w]
            arr[w] = old | (1 << (b & 63))
            if old:
                break
            b = w
        self._nfree[k] += 1
        self._index[k] |= 1 << rel
        sec.orders |= 1 << k

    def _remove(self, sec: _Section, rel: int, k: int, b: int) -> None:
        levels = sec.levels[k]
        assert levels is not None
        for arr in levels:  # clear bit b, and summary bits of words now zero
            w = b >> 6
            new = arr[w] & ~(1 << (b & 63))
            arr[w] = new
            if new:
                break
            b = w
        self._nfree[k] -= 1
        if not levels[-1][0]:
            self._index[k] &= ~(1 << rel)
            sec.orders &= ~(1 << k)

    def _account_alloc(self, sec: _Section, rel: int, order: int, b: int) -> int:
        size = 1 << order
        self._free_pages -= size
        sec.free_pages -= size
        if not sec.free_pages:  # entirely in use: drop the bitmaps
            self._drop(rel)
        return ((self._sec0 + rel) << self._shift) | (b << order)

    def _take_whole(self, rel: int) -> int:
        """Allocate entirely free section ``rel`` as one block (shift == max_order)."""
        bit = 1 << rel
        self._whole &= ~bit
        self._index[self._max_order] &= ~bit
        self._nfree[self._max_order] -= 1
        self._free_pages -= 1 << self._shift
        return (self._sec0 + rel) << self._shift

    def _split_whole(self, rel: int) -> _Section:
        """Give entirely free section ``rel`` bitmaps holding its order-max blocks."""
        sec = self._new_section(rel, 1 << self._shift)
        nbits = 1 << (self._shift - self._max_order)
        top = sec.levels[self._max_order]
        if top is None:
            top = sec.levels[self._max_order] = _new_levels(nbits)
        _fill(top, 0, nbits)
        sec.orders = 1 << self._max_order
        self._whole &= ~(1 << rel)
        return sec

    def _new_section(self, rel: int, free_pages: int) -> _Section:
        """Register an empty section for ``rel``, reusing the spare one if any."""
        sec = self._spare
        if sec is None:
            sec = _Section(free_pages, self._max_order + 1)
        else:
            self._spare = None
            sec.free_pages = free_pages
        self._secs[rel] = sec
        return sec

    def _drop(self, rel: int) -> None:
        """Forget section ``rel``'s bitmaps (now all zero), keeping one as a spare.

        The spare makes alloc/free churn at the edge of an otherwise whole or
        full section cheap, at a bounded cost of one section's bitmaps.
        """
        self._spare = self._secs.pop(rel)

    def _carve(self, rel: int, start: int, stop: int) -> None:
        """Make section-local frames ``[start, stop)`` of a partial section free."""
        top = self._max_order
        sec = self._new_section(rel, stop - start)
        self._free_pages += stop - start
        first = -(-start >> top)  # order-max blocks entirely inside
        end = stop >> top
        if first < end:
            levels = sec.levels[top] = _new_levels(1 << (self._shift - top))
            _fill(levels, first, end)
            self._nfree[top] += end - first
            self._index[top] |= 1 << rel
            sec.orders |= 1 << top
            pieces = [(start, first << top), (end << top, stop)]
        else:
            pieces = [(start, stop)]
        for p, q in pieces:
            while p < q:
                k = min(top, (p & -p).bit_length() - 1 if p else top, (q - p).bit_length() - 1)
                self._insert(sec, rel, k, p >> k)
                p += 1 << k

    def _where(self) -> str:
        return "" if self._node is None else f"node {self._node}: "

    @staticmethod
    def _block(pfn: int, order: int) -> str:
        return f"order-{order} block at pfn {pfn:#x}"

    def _oom(self, order: int) -> OutOfFramesError:
        size = 1 << (order + _PAGE_SHIFT)
        return OutOfFramesError(
            f"{self._where()}no free {format_size(size)} block (free: "
            f"{format_size(self._free_pages << _PAGE_SHIFT)} in {sum(self._nfree)} blocks)",
            size=size,
            node=self._node,
        )
