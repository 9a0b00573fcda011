"""Tests of the buddy frame allocator: hand-worked cases and a model check."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vmopt.errors import (
    AddressError,
    ConfigError,
    MappingError,
    OutOfFramesError,
    VmoptError,
)
from vmopt.memory.buddy import BuddyAllocator

GIB_PAGES = 1 << 18


def snapshot(b: BuddyAllocator) -> tuple[object, ...]:
    return (b.free_pages, b.free_blocks(), list(b.iter_free_blocks()))


# -- hand-worked cases ---------------------------------------------------------------


def test_split_and_coalesce_back() -> None:
    b = BuddyAllocator(0, 16, max_order=4)
    assert b.free_blocks() == [0, 0, 0, 0, 1]
    assert b.alloc(0) == 0
    assert b.free_blocks() == [1, 1, 1, 1, 0]  # buddies 1, 2-3, 4-7, 8-15 put back
    assert list(b.iter_free_blocks()) == [(1, 0), (2, 1), (4, 2), (8, 3)]
    assert b.alloc(0) == 1
    assert b.alloc(1) == 2
    assert b.alloc(0) == 4  # splits 4-7
    assert b.free_blocks() == [1, 1, 0, 1, 0]
    assert (b.free_pages, b.used_pages, b.total_pages) == (11, 5, 16)
    assert not b.is_free(4) and b.is_free(5) and b.is_free(6) and b.is_free(15)
    for pfn, order in [(1, 0), (4, 0), (2, 1), (0, 0)]:
        b.free(pfn, order)
    assert b.free_blocks() == [0, 0, 0, 0, 1]
    assert list(b.iter_free_blocks()) == [(0, 4)]


def test_lowest_free_block_of_the_order_beats_splitting_a_lower_one() -> None:
    b = BuddyAllocator(0, 16, max_order=2)
    assert [b.alloc(2) for _ in range(3)] == [0, 4, 8]
    assert b.alloc(1) == 12
    b.free(0, 2)
    # 0-3 (order 2) is lower, but a free order-1 block exists: 14.
    assert b.alloc(1) == 14
    assert b.alloc(1) == 0  # now split 0-3, lowest half first
    assert b.alloc(0) == 2


def test_unaligned_base_and_size_are_carved_into_aligned_blocks() -> None:
    b = BuddyAllocator(3, 1000)
    expected = [
        (3, 0), (4, 2), (8, 3), (16, 4), (32, 5), (64, 6), (128, 7), (256, 8),
        (512, 8), (768, 7), (896, 6), (960, 5), (992, 3), (1000, 1), (1002, 0),
    ]  # fmt: skip
    assert list(b.iter_free_blocks()) == expected
    assert b.free_pages == b.total_pages == 1000
    assert sum(n << k for k, n in enumerate(b.free_blocks())) == 1000
    assert not b.is_free(2) and b.is_free(3) and b.is_free(1002) and not b.is_free(1003)


def test_alignment_is_absolute_not_relative_to_base() -> None:
    b = BuddyAllocator(512, 1024, max_order=10)
    assert list(b.iter_free_blocks()) == [(512, 9), (1024, 9)]
    with pytest.raises(OutOfFramesError):
        b.alloc(10)
    assert b.alloc(9) == 512


def test_range_crossing_sections() -> None:
    base = GIB_PAGES - 5
    b = BuddyAllocator(base, 2 * GIB_PAGES + 10)
    assert b.free_blocks()[18] == 2  # [1 GiB, 3 GiB) is whole; the ends are partial
    assert b.free_pages == 2 * GIB_PAGES + 10
    assert b.alloc(18) == GIB_PAGES
    assert b.alloc(0) == base  # lowest order-0 block
    assert b.alloc(17) == 2 * GIB_PAGES
    b.free(GIB_PAGES, 18)
    b.free(base, 0)
    b.free(2 * GIB_PAGES, 17)
    assert b.free_pages == b.total_pages
    assert b.free_blocks() == BuddyAllocator(base, 2 * GIB_PAGES + 10).free_blocks()


def test_small_max_order_uses_many_top_blocks_per_section() -> None:
    b = BuddyAllocator(0, 4 * GIB_PAGES, max_order=10)
    assert b.free_blocks()[10] == 4 * 256
    assert b.alloc(0) == 0
    assert b.free_blocks() == [1] * 10 + [4 * 256 - 1]
    assert b.alloc(10) == 1024
    b.free(0, 0)
    b.free(1024, 10)
    assert b.free_blocks()[10] == 4 * 256
    assert list(b.iter_free_blocks())[:2] == [(0, 10), (1024, 10)]


def test_one_gib_blocks_without_splitting() -> None:
    b = BuddyAllocator(0, 4 * GIB_PAGES)
    assert [b.alloc(18) for _ in range(4)] == [0, GIB_PAGES, 2 * GIB_PAGES, 3 * GIB_PAGES]
    assert b.free_pages == 0
    b.free(2 * GIB_PAGES, 18)
    assert b.alloc(18) == 2 * GIB_PAGES


def test_out_of_frames_message_and_unchanged_state() -> None:
    b = BuddyAllocator(0, 1024, max_order=9, node=1)
    assert [b.alloc(0) for _ in range(1024)] == list(range(1024))
    for pfn in range(0, 1024, 2):
        b.free(pfn, 0)
    before = snapshot(b)
    with pytest.raises(OutOfFramesError) as info:
        b.alloc(1)
    assert str(info.value) == "node 1: no free 8 KiB block (free: 2 MiB in 512 blocks)"
    assert info.value.size == 8192
    assert info.value.node == 1
    assert snapshot(b) == before
    assert b.alloc(0) == 0


def test_out_of_frames_without_node() -> None:
    b = BuddyAllocator(0, 512 + 256, max_order=9)
    with pytest.raises(OutOfFramesError) as info:
        b.alloc(9)
        b.alloc(9)
    assert str(info.value) == "no free 2 MiB block (free: 1 MiB in 1 blocks)"
    assert info.value.node is None


@pytest.mark.parametrize(
    ("pfn", "order", "error", "text"),
    [
        (4, 0, MappingError, "double free of order-0 block at pfn 0x4"),
        (6, 1, MappingError, "double free"),  # exactly a free block
        (7, 0, MappingError, "lies in the free order-1 block at pfn 0x6"),
        (8, 3, MappingError, "double free of order-3 block at pfn 0x8"),
        (12, 1, MappingError, "lies in the free order-3 block at pfn 0x8"),
        (4, 2, MappingError, "contains a free order-0 block"),
        (0, 4, MappingError, "contains a free"),
        (1, 1, AddressError, "not a multiple of 2"),
        (16, 0, AddressError, "outside frames"),
        (12, 3, AddressError, "not a multiple of 8"),
        (0, 5, ConfigError, "order must be in 0..4"),
        (0, -1, ConfigError, "order must be in 0..4"),
    ],
)
def test_bad_free_raises_and_changes_nothing(
    pfn: int, order: int, error: type[VmoptError], text: str
) -> None:
    b = BuddyAllocator(0, 16, max_order=4, node=0)
    assert b.alloc(2) == 0
    assert b.alloc(2) == 4
    b.free(4, 0)
    b.free(6, 1)
    assert list(b.iter_free_blocks()) == [(4, 0), (6, 1), (8, 3)]
    before = snapshot(b)
    with pytest.raises(error, match=text) as info:
        b.free(pfn, order)
    assert isinstance(info.value, ValueError)
    if error is not ConfigError:
        assert str(info.value).startswith("node 0: ")
    assert snapshot(b) == before


def test_double_free_in_untouched_section() -> None:
    b = BuddyAllocator(0, 2 * GIB_PAGES, max_order=9)
    before = snapshot(b)
    with pytest.raises(MappingError, match="lies in the free order-9 block at pfn 0x40000"):
        b.free(GIB_PAGES + 3, 0)
    assert snapshot(b) == before


def test_freeing_part_of_an_allocated_block() -> None:
    b = BuddyAllocator(0, GIB_PAGES)
    b.alloc_at(0, 18)  # as for a guest image: every frame starts in use
    assert b.free_pages == 0
    b.free(5, 0)
    b.free(4, 0)
    assert list(b.iter_free_blocks()) == [(4, 1)]
    assert b.is_free(5) and not b.is_free(6)
    assert b.alloc(0) == 4


def test_alloc_at() -> None:
    b = BuddyAllocator(0, 64, max_order=6)
    b.alloc_at(20, 2)
    assert list(b.iter_free_blocks()) == [(0, 4), (16, 2), (24, 3), (32, 5)]
    before = snapshot(b)
    for pfn, order, error in [
        (20, 2, MappingError),  # in use
        (16, 3, MappingError),  # partly in use
        (0, 6, MappingError),
        (18, 2, AddressError),
        (64, 0, AddressError),
        (0, 7, ConfigError),
    ]:
        with pytest.raises(error):
            b.alloc_at(pfn, order)
        assert snapshot(b) == before
    b.alloc_at(17, 0)
    b.alloc_at(0, 4)
    assert b.alloc(0) == 16
    b.free(20, 2)
    b.free(17, 0)
    b.free(0, 4)
    b.free(16, 0)
    assert list(b.iter_free_blocks()) == [(0, 6)]


def test_alloc_at_whole_section_and_reserve_ranges() -> None:
    b = BuddyAllocator(0, 3 * GIB_PAGES)
    b.alloc_at(GIB_PAGES, 18)
    b.alloc_at(2 * GIB_PAGES + 512, 9)
    assert b.alloc(18) == 0
    with pytest.raises(OutOfFramesError):
        b.alloc(18)
    assert b.alloc(9) == 2 * GIB_PAGES


def test_sections_split_dropped_and_split_again_stay_independent() -> None:
    b = BuddyAllocator(0, 4 * GIB_PAGES)
    b.alloc_at(3 * GIB_PAGES, 18)  # section 3 fully in use, no bitmaps
    b.free(b.alloc(0), 0)  # section 0 split, then whole again
    b.free(3 * GIB_PAGES + 1, 0)  # section 3 gets bitmaps again
    b.free(3 * GIB_PAGES + 2, 0)
    b.alloc_at(GIB_PAGES + 7, 0)
    b.alloc_at(2 * GIB_PAGES + 9, 0)
    assert b.free_blocks() == [4] + [2] * 17 + [1]
    assert b.is_free(3 * GIB_PAGES + 1) and b.is_free(3 * GIB_PAGES + 2)
    assert not b.is_free(3 * GIB_PAGES) and not b.is_free(3 * GIB_PAGES + 3)
    assert not b.is_free(GIB_PAGES + 7) and b.is_free(2 * GIB_PAGES + 7)
    assert not b.is_free(2 * GIB_PAGES + 9) and b.is_free(GIB_PAGES + 9)
    for pfn in (GIB_PAGES + 7, 2 * GIB_PAGES + 9):
        b.free(pfn, 0)
    b.alloc_at(3 * GIB_PAGES + 1, 0)
    b.alloc_at(3 * GIB_PAGES + 2, 0)
    b.free(3 * GIB_PAGES, 18)
    assert list(b.iter_free_blocks()) == [(k * GIB_PAGES, 18) for k in range(4)]


@pytest.mark.parametrize(
    ("args", "kwargs", "text"),
    [
        ((-1, 10), {}, "base_pfn must be >= 0, got -1"),
        ((0, 0), {}, "npages must be > 0, got 0"),
        ((0, 10), {"max_order": 25}, "max_order must be in 0..24, got 25"),
        ((0, 10), {"max_order": -1}, "got -1"),
        ((1.5, 10), {}, "base_pfn must be an int, got 1.5"),
        ((0, 10), {"node": -2}, "node must be None or an int >= 0, got -2"),
        (((1 << 52) - 1, 2), {}, "exceed the 64-bit physical space"),
    ],
)
def test_constructor_validation(args: tuple[object, ...], kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        BuddyAllocator(*args, **kwargs)  # type: ignore[arg-type]


def test_is_free_outside_range_is_false() -> None:
    b = BuddyAllocator(100, 10)
    assert not b.is_free(99) and not b.is_free(110) and b.is_free(100)


def test_numpy_ints_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    b = BuddyAllocator(0, 64)
    pfn = b.alloc(np.int64(2))
    b.free(np.uint64(pfn), np.int32(2))
    assert b.free_pages == 64


# -- host memory -----------------------------------------------------------------------


def _traced(fn: Callable[[], object]) -> int:
    """Peak bytes allocated while running ``fn``, net of what it returns."""
    gc.collect()
    tracemalloc.start()
    try:
        keep = fn()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del keep
    return current


def test_64_gib_with_10000_small_allocations_costs_under_1_mib() -> None:
    def build() -> BuddyAllocator:
        b = BuddyAllocator(0, 64 * GIB_PAGES)
        for _ in range(10_000):
            b.alloc(0)
        return b

    used = _traced(build)
    assert used < 1 << 20, used


def test_worst_fragmentation_of_a_section_is_bounded() -> None:
    def build() -> BuddyAllocator:
        b = BuddyAllocator(0, 64 * GIB_PAGES)
        b.alloc_at(0, 18)
        for pfn in range(0, GIB_PAGES, 2):  # every other frame free: 128 Ki blocks
            b.free(pfn, 0)
        assert b.free_blocks()[0] == GIB_PAGES // 2
        return b

    used = _traced(build)
    assert used < 200 << 10, used


def test_bitmaps_are_dropped_and_reused_once_a_section_is_whole_again() -> None:
    b = BuddyAllocator(0, 64 * GIB_PAGES)
    pfns = [b.alloc(k % 10) for k in range(5000)]
    for pfn, k in zip(pfns, range(5000), strict=True):
        b.free(pfn, k % 10)
    assert b.free_blocks() == [0] * 18 + [64]

    def churn() -> None:
        for _ in range(1000):
            b.free(b.alloc(0), 0)
            b.free(b.alloc(9), 9)

    assert _traced(churn) < 4 << 10  # no new bitmaps per cycle


# -- model check -----------------------------------------------------------------------


class ModelBuddy:
    """Brute-force reference: per order, a set of free block pfns."""

    def __init__(self, lo: int, hi: int, max_order: int) -> None:
        self.lo, self.hi, self.top = lo, hi, max_order
        self.free: list[set[int]] = [set() for _ in range(max_order + 1)]
        p = lo
        while p < hi:
            k = max_order
            while p % (1 << k) or p + (1 << k) > hi:
                k -= 1
            self.free[k].add(p)
            p += 1 << k

    def blocks(self) -> list[tuple[int, int]]:
        return sorted((p, k) for k, s in enumerate(self.free) for p in s)

    def counts(self) -> list[int]:
        return [len(s) for s in self.free]

    def free_pages(self) -> int:
        return sum(len(s) << k for k, s in enumerate(self.free))

    def containing(self, pfn: int) -> tuple[int, int] | None:
        for k, s in enumerate(self.free):
            p = pfn >> k << k
            if p in s:
                return p, k
        return None

    def overlaps_free(self, pfn: int, order: int) -> bool:
        end = pfn + (1 << order)
        return any(p < end and pfn < p + (1 << k) for p, k in self.blocks())

    def alloc(self, order: int) -> int | None:
        for k in range(order, self.top + 1):
            if self.free[k]:
                p = min(self.free[k])
                self.free[k].remove(p)
                while k > order:
                    k -= 1
                    self.free[k].add(p + (1 << k))
                return p
        return None

    def alloc_at(self, pfn: int, order: int) -> bool:
        found = self.containing(pfn)
        if found is None or found[1] < order:
            return False
        p, k = found
        self.free[k].remove(p)
        while k > order:
            k -= 1
            self.free[k].add((pfn >> k << k) ^ (1 << k))
        return True

    def release(self, pfn: int, order: int) -> None:
        k = order
        while k < self.top and pfn ^ (1 << k) in self.free[k]:
            self.free[k].remove(pfn ^ (1 << k))
            pfn &= ~(1 << k)
            k += 1
        self.free[k].add(pfn)


@st.composite
def configs(draw: st.DrawFn) -> tuple[int, int, int]:
    max_order = draw(st.sampled_from([0, 1, 3, 5, 9, 18, 19]))
    section = 1 << max(max_order, 18)
    base = draw(st.sampled_from([0, section, 5 * section]))
    base = max(0, base + draw(st.integers(-300, 300)))
    if max_order >= 9 and draw(st.booleans()):
        npages = draw(st.integers(1, 2 * section + 600))
    else:
        npages = draw(st.integers(1, 3000))
    return base, npages, max_order


class BuddyMachine(RuleBasedStateMachine):
    """Random alloc / alloc_at / free sequences against :class:`ModelBuddy`."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, int] = {}

    @initialize(config=configs())
    def setup(self, config: tuple[int, int, int]) -> None:
        base, npages, max_order = config
        self.b = BuddyAllocator(base, npages, max_order=max_order, node=3)
        self.model = ModelBuddy(base, base + npages, max_order)
        self.initial = snapshot(self.b)
        assert self.initial[2] == self.model.blocks()

    def order(self, data: st.DataObject) -> int:
        top = self.b.max_order
        return data.draw(st.one_of(st.integers(0, min(top, 4)), st.integers(0, top), st.just(top)))

    @rule(data=st.data())
    def alloc(self, data: st.DataObject) -> None:
        order = self.order(data)
        expected = self.model.alloc(order)
        if expected is None:
            before = snapshot(self.b)
            with pytest.raises(OutOfFramesError, match="node 3: no free"):
                self.b.alloc(order)
            assert snapshot(self.b) == before
            return
        pfn = self.b.alloc(order)
        assert pfn == expected
        assert pfn % (1 << order) == 0
        assert self.b.base_pfn <= pfn and pfn + (1 << order) <= self.b.end_pfn
        self.held[pfn] = order

    @rule(data=st.data())
    def alloc_at(self, data: st.DataObject) -> None:
        order = self.order(data)
        first = -(-self.b.base_pfn >> order)  # aligned blocks inside the range
        end = self.b.end_pfn >> order
        if first >= end:
            return
        pfn = data.draw(st.integers(first, end - 1)) << order
        before = snapshot(self.b)
        if self.model.alloc_at(pfn, order):
            self.b.alloc_at(pfn, order)
            self.held[pfn] = order
        else:
            with pytest.raises(MappingError):
                self.b.alloc_at(pfn, order)
            assert snapshot(self.b) == before

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def free_held(self, data: st.DataObject) -> None:
        pfn = data.draw(st.sampled_from(sorted(self.held)))
        order = self.held.pop(pfn)
        self.b.free(pfn, order)
        self.model.release(pfn, order)

    @rule(data=st.data())
    def bad_free(self, data: st.DataObject) -> None:
        order = self.order(data)
        pfn = data.draw(st.integers(self.b.base_pfn - 4, self.b.end_pfn + 4))
        b, m = self.b, self.model
        if pfn % (1 << order) or pfn < b.base_pfn or pfn + (1 << order) > b.end_pfn:
            error: type[VmoptError] = AddressError
        elif m.overlaps_free(pfn, order):
            error = MappingError
        else:
            return  # a valid free of held frames; free_held covers those
        before = snapshot(b)
        with pytest.raises(error):
            b.free(pfn, order)
        assert snapshot(b) == before

    @invariant()
    def matches_model(self) -> None:
        b, m = self.b, self.model
        assert b.free_blocks() == m.counts()
        assert b.free_pages == m.free_pages()
        assert sum(n << k for k, n in enumerate(b.free_blocks())) == b.free_pages
        assert b.used_pages == sum(1 << k for k in self.held.values())
        assert list(b.iter_free_blocks()) == m.blocks()

    @invariant()
    def held_blocks_are_disjoint_aligned_and_in_range(self) -> None:
        end = self.b.base_pfn
        for pfn, order in sorted(self.held.items()):
            assert pfn % (1 << order) == 0
            assert pfn >= end
            end = pfn + (1 << order)
            assert not self.b.is_free(pfn) and not self.b.is_free(end - 1)
        assert end <= self.b.end_pfn

    @invariant()
    def is_free_per_frame(self) -> None:
        for pfn, _ in self.model.blocks()[:8]:
            assert self.b.is_free(pfn)
        for pfn, order in list(self.held.items())[:8]:
            assert not self.b.is_free(pfn + (1 << order) // 2)

    def teardown(self) -> None:
        if not hasattr(self, "b"):
            return
        for pfn, order in self.held.items():
            self.b.free(pfn, order)
        assert snapshot(self.b) == self.initial  # fully coalesced again


BuddyMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBuddyMachine = BuddyMachine.TestCase
TestBuddyMachine.pytestmark = [pytest.mark.slow]
