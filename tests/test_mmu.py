"""The per-vCPU MMU through the public API: it must translate exactly as the page walk does.

Every expected value here comes from the page tables in guest memory
(``PageTable.walk`` without A/D updates, ``PageTable.lookup``) or is worked
out by hand in the test; none is read back from the MMU under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmopt
from vmopt import (
    AsyncPrefetchingTlb,
    ConfigError,
    Mmu,
    PageFault,
    PageTable,
    PhysicalMemory,
    PrefetchConfig,
    PwcConfig,
    TlbConfig,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
K4, M2 = 4 * KiB, 2 * MiB
FORMATS = ("x86_64", "x86_64_5level", "sv39", "sv48")
BASE = 0x40_0000  # 4 KiB pages live here, all in one page-table page

# -- a mixed address space, built the same way in every format --------------------------

SMALL_PAGES = [("r", False), ("rw", True), ("rx", False), ("rwx", True),
               ("rw", False), ("r", True), ("rwx", False), ("rw", True)]  # fmt: skip
MID_PAGES = [("rw", True), ("rx", False), ("r", True)]  # at 1 GiB + j * 2 MiB
HUGE_PAGES = [("rwx", False), ("rw", True)]  # at 2 GiB and 3 GiB
# (va, size) of every mapped page, then addresses that are not mapped.
MAPPED = (
    [(BASE + i * K4, K4) for i in range(len(SMALL_PAGES))]
    + [(GiB + j * M2, M2) for j in range(len(MID_PAGES))]
    + [((2 + k) * GiB, GiB) for k in range(len(HUGE_PAGES))]
)
UNMAPPED = [
    (BASE + 8 * K4, K4),  # its PTE is empty: not present at level 0
    (GiB + 3 * M2, M2),  # not present at level 1
    (5 * GiB, GiB),  # not present at level 2
    (1 << 47, K4),  # non-canonical except with 5-level paging, where it is unmapped
]


def build(fmt: str) -> PageTable:
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, fmt)
    for i, (perms, user) in enumerate(SMALL_PAGES):
        pt.map(BASE + i * K4, mem.alloc(K4), K4, perms, user=user)
    for j, (perms, user) in enumerate(MID_PAGES):
        pt.map(GiB + j * M2, mem.alloc(M2), M2, perms, user=user)
    for k, (perms, user) in enumerate(HUGE_PAGES):
        pt.map((2 + k) * GiB, mem.alloc(GiB), GiB, perms, user=user)
    return pt


def hierarchy() -> list[TlbConfig]:
    """Small on purpose, so a short run mixes L1 hits, L2 hits and walks.

    L1 holds 4 KiB entries only, so 2 MiB and 1 GiB pages are splintered there.
    """
    return [
        TlbConfig(4, 2, page_sizes=(K4,), name="l1"),
        TlbConfig(16, 4, page_sizes=(K4, M2, GiB), latency=7, name="l2"),
    ]


Outcome = tuple[str, object, object]


def outcome(fn: Callable[[], int]) -> Outcome:
    try:
        return ("pa", fn(), None)
    except PageFault as f:
        return ("fault", f.cause, f.level)


def expected(pt: PageTable, va: int, access: str, user: bool) -> Outcome:
    return outcome(lambda: pt.walk(va, access, user, update_ad=False).pa)


def check_counters(mmu: Mmu) -> None:
    l1, l2 = mmu.tlb_stats()
    for s in (l1, l2):
        assert s.hits + s.misses == s.lookups
    assert l1.lookups == mmu.stats.translations
    assert l2.lookups == l1.misses
    total = mmu.total_stats()
    assert total.lookups == mmu.stats.translations
    assert total.misses == mmu.stats.walks == l2.misses
    assert total.hits == total.lookups - total.misses


@st.composite
def addresses(draw: st.DrawFn) -> int:
    va, size = draw(st.sampled_from(MAPPED + UNMAPPED))
    off = draw(st.sampled_from((0, 8, size - 1)) | st.integers(0, size - 1))
    return va + off


accesses_st = st.lists(st.tuples(addresses(), st.sampled_from("rwx"), st.booleans()), min_size=1, max_size=80)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(accesses=accesses_st)
def test_translate_equals_walk(fmt: str, accesses: list[tuple[int, str, bool]]) -> None:
    pt = build(fmt)
    mmu = Mmu(pt, hierarchy())
    for va, access, user in accesses:
        want = expected(pt, va, access, user)
        got = outcome(lambda va=va, access=access, user=user: mmu.translate(va, access, user))
        assert got == want, (hex(va), access, user)
    check_counters(mmu)


@pytest.mark.parametrize("fmt", FORMATS)
def test_long_run_mixes_hits_misses_and_faults(fmt: str) -> None:
    pt = build(fmt)
    mmu = Mmu(pt, hierarchy())
    rng = random.Random(fmt)
    hot = [va + rng.randrange(size) for va, size in MAPPED for _ in range(3)]
    kinds: dict[str, int] = {"pa": 0, "fault": 0}
    for _ in range(3000):
        if rng.random() < 0.8:
            va = rng.choice(hot)
        else:
            page, size = rng.choice(MAPPED + UNMAPPED)
            va = page + rng.randrange(size)
        access, user = rng.choice("rwx"), rng.random() < 0.5
        want = expected(pt, va, access, user)
        assert outcome(lambda va=va, a=access, u=user: mmu.translate(va, a, u)) == want
        kinds[want[0]] += 1
    check_counters(mmu)
    l1, l2 = mmu.tlb_stats()
    assert l1.hits > 300 and l2.hits > 100 and mmu.stats.walks > 100
    assert kinds["pa"] > 500 and kinds["fault"] > 500
    assert mmu.stats.dirty_walks > 0


def test_hierarchy_counters_hand_worked() -> None:
    pt = build("x86_64")
    mmu = Mmu(pt, hierarchy())
    pages = [BASE + i * K4 for i in range(6)]
    for va in pages:  # 6 cold misses; L1 (2 sets x 2 ways) keeps the last 4
        mmu.translate(va)
    mmu.translate(pages[5])  # L1 hit
    mmu.translate(pages[0])  # L1 miss (evicted), L2 hit, refills L1
    l1, l2 = mmu.tlb_stats()
    assert (l1.lookups, l1.hits, l1.misses, l1.evictions) == (8, 1, 7, 3)
    assert (l2.lookups, l2.hits, l2.misses) == (7, 1, 6)
    assert mmu.stats.walks == 6 and mmu.stats.translations == 8
    check_counters(mmu)
    # Latency: L1 costs 1 per lookup, L2 7; every walk reads 4 PTEs at 20 cycles.
    assert l1.avg_latency() == 1.0 and l2.avg_latency() == 7.0
    assert mmu.total_stats().cycles == 8 * 1 + 7 * 7 + 6 * 4 * 20


def test_split_l1_counts_one_lookup_per_access() -> None:
    pt = build("x86_64")
    l1_4k = TlbConfig(8, 4, page_sizes=(K4,), name="l1_4k")
    l1_2m = TlbConfig(4, 4, page_sizes=(M2,), name="l1_2m")
    l2 = TlbConfig(32, 4, page_sizes=(K4, M2), name="l2")
    mmu = Mmu(pt, [[l1_4k, l1_2m], l2])
    small = [BASE + i * K4 for i in range(4)]
    mid = [GiB + j * M2 + 5 * K4 for j in range(3)]
    order = (small + mid) * 3
    for va in order:
        mmu.translate(va)
    l1 = mmu.tlb_stats()[0]
    assert l1.name == "l1_4k+l1_2m"
    assert l1.lookups == len(order) and l1.hits + l1.misses == len(order)
    assert l1.misses == 7 and mmu.stats.walks == 7
    arr_4k, arr_2m = mmu.levels[0].arrays
    assert sorted(e.va for e in arr_4k) == small and {e.size for e in arr_4k} == {K4}
    assert sorted(e.va for e in arr_2m) == [GiB + j * M2 for j in range(3)]
    assert {e.size for e in arr_2m} == {M2}
    # A 1 GiB page goes into the 2 MiB array, splintered to the 2 MiB piece it was used in.
    mmu.translate(2 * GiB + 7 * M2 + 1)
    assert (2 * GiB + 7 * M2) in {e.va for e in arr_2m}


def test_splintering_1g_page_into_4k_entries() -> None:
    pt = build("x86_64")
    frame = pt.walk(2 * GiB, update_ad=False).page_pa
    mmu = Mmu(pt, TlbConfig(16, 4, page_sizes=(K4,)))
    pieces = [0, 1, 511, 512, 262143]  # 4 KiB pieces of the 1 GiB page
    for n, piece in enumerate(pieces, 1):
        va = 2 * GiB + piece * K4 + 0x123
        assert mmu.translate(va) == frame + piece * K4 + 0x123
        assert mmu.stats.walks == n  # a new piece is a miss
        assert mmu.translate(va + 0x10) == frame + piece * K4 + 0x133
        assert mmu.stats.walks == n  # the same piece hits
    entries = sorted(mmu.levels[0].arrays[0], key=lambda e: e.va)
    assert [e.size for e in entries] == [K4] * len(pieces)
    assert [(e.va, e.page_pa) for e in entries] == [(2 * GiB + p * K4, frame + p * K4) for p in pieces]
    assert all(e.level == 2 for e in entries)  # the walk's leaf level, for fault reports


def test_page_not_cached_by_a_level_that_cannot_hold_it() -> None:
    pt = build("x86_64")
    mmu = Mmu(pt, TlbConfig(4, 4, page_sizes=(GiB,)))
    for _ in range(3):
        assert mmu.translate(BASE + 5) == pt.walk(BASE + 5, update_ad=False).pa
    assert mmu.stats.walks == 3 and len(mmu.levels[0]) == 0


# -- ASIDs and global entries ---------------------------------------------------------


KVA = 0xFFFF_8000_0000_0000  # a kernel page, global in both address spaces


def two_spaces() -> tuple[PhysicalMemory, PageTable, PageTable, dict[str, int]]:
    mem = PhysicalMemory(1 * GiB)
    a, b = PageTable(mem), PageTable(mem)
    f = {name: mem.alloc() for name in ("a", "b", "kernel")}
    a.map(BASE, f["a"])
    b.map(BASE, f["b"])
    for pt in (a, b):
        pt.map(KVA, f["kernel"], global_=True)
    return mem, a, b, f


def test_asids_keep_entries_apart() -> None:
    _, a, b, f = two_spaces()
    mmu = Mmu(a, hierarchy(), asid=1)
    assert mmu.translate(BASE + 4) == f["a"] + 4
    mmu.switch(b, asid=2)
    assert not mmu.cached(BASE)  # ASID 1's entry does not match ASID 2
    assert mmu.translate(BASE + 4) == f["b"] + 4
    assert mmu.stats.walks == 2
    mmu.switch(a, asid=1)  # PCID semantics: ASID 1's entries are still there
    assert mmu.translate(BASE + 4) == f["a"] + 4
    assert mmu.stats.walks == 2
    mmu.switch(b, asid=2)
    assert mmu.translate(BASE + 4) == f["b"] + 4
    assert mmu.stats.walks == 2


def test_global_entries_hit_across_asids_and_survive_flush_asid() -> None:
    _, a, b, f = two_spaces()
    mmu = Mmu(a, hierarchy(), asid=1)
    assert mmu.translate(KVA + 8) == f["kernel"] + 8
    mmu.translate(BASE)
    mmu.switch(b, asid=2)
    assert mmu.translate(KVA + 8) == f["kernel"] + 8
    assert mmu.stats.walks == 2  # the kernel page did not walk again
    mmu.switch(a, asid=1)
    mmu.flush_asid(1)
    assert mmu.cached(KVA) and not mmu.cached(BASE)
    mmu.translate(KVA)
    assert mmu.stats.walks == 2
    mmu.flush()
    assert not mmu.cached(KVA)


def test_switch_with_flush_or_the_same_asid_drops_that_asids_entries() -> None:
    _, a, b, f = two_spaces()
    mmu = Mmu(a, hierarchy(), asid=1)
    mmu.translate(BASE)
    mmu.switch(b)  # same ASID, new tables: the old entries must go
    assert mmu.translate(BASE) == f["b"]
    mmu.switch(a, asid=2)
    assert mmu.translate(BASE) == f["a"]
    mmu.switch(b, asid=1, flush=True)  # ASID 1 reused with other tables: flushed on request
    assert mmu.translate(BASE) == f["b"]
    # Reusing an ASID for other tables without a flush uses its old entries, as hardware
    # does with a PCID: here ASID 2 still holds table a's translation.
    mmu.switch(b, asid=2)
    assert mmu.translate(BASE) == f["a"]


def test_invlpg_removes_every_size_covering_the_address() -> None:
    # Entries of two sizes covering one address, built the hardware way: ASID 1 caches
    # a 4 KiB page, ASID 2 a global 2 MiB page over the same address.
    mem = PhysicalMemory(1 * GiB)
    a, b = PageTable(mem), PageTable(mem)
    small, big = mem.alloc(), mem.alloc(M2)
    a.map(BASE, small)
    b.map(0x20_0000 * 2, big, M2, global_=True)  # [4 MiB, 6 MiB) covers BASE
    level = TlbConfig(16, 4, page_sizes=(K4, M2))
    mmu = Mmu(a, [level, TlbConfig(32, 4, page_sizes=(K4,), name="l2")], asid=1)
    assert mmu.translate(BASE) == small
    mmu.switch(b, asid=2)
    assert mmu.translate(BASE + 3 * K4) == big + 3 * K4
    mmu.switch(a, asid=1)

    def covering(va: int) -> list[int]:
        entries = [e for lv in mmu.levels for arr in lv.arrays for e in arr]
        return sorted(e.size for e in entries if e.va <= va < e.va + e.size)

    assert covering(BASE) == [K4, K4, M2]  # ASID 1's 4 KiB in L1 and L2, the global 2 MiB
    assert covering(BASE + 3 * K4) == [K4, M2]  # L2 (4 KiB only) holds a piece of the 2 MiB
    mmu.invlpg(BASE + 100)
    assert covering(BASE) == []
    assert covering(BASE + 3 * K4) == [K4]  # INVLPG is for one address: other pieces stay
    walks = mmu.stats.walks
    assert mmu.translate(BASE) == small  # walked again in table a
    assert mmu.stats.walks == walks + 1


def test_stale_entries_of_an_inactive_asid_are_shot_down() -> None:
    _, a, b, f = two_spaces()
    mmu = Mmu(a, hierarchy(), asid=1)
    assert mmu.translate(BASE) == f["a"]
    mmu.switch(b, asid=2)
    a.unmap(BASE)  # while ASID 1 is not running
    mmu.switch(a, asid=1)
    with pytest.raises(PageFault) as info:
        mmu.translate(BASE)
    assert info.value.cause == "not_present"


# -- permissions and dirty bits on hits -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_to_read_only_page_faults_on_a_hit_without_a_walk(fmt: str) -> None:
    pt = build(fmt)
    va = BASE  # "r", supervisor
    mmu = Mmu(pt, hierarchy())
    mmu.translate(va, "r")
    assert mmu.stats.walks == 1 and mmu.cached(va)
    with pytest.raises(PageFault) as info:
        mmu.translate(va, "w")
    assert (info.value.cause, info.value.level, info.value.access) == ("protection", 0, "w")
    assert mmu.stats.walks == 1  # decided from the cached rights
    assert mmu.stats.faults == 1
    assert not mmu.cached(va)  # the faulting translation is dropped, as hardware does
    mmu.translate(va, "r")
    with pytest.raises(PageFault) as info:  # user access to a supervisor page, also on a hit
        mmu.translate(va, "r", user=True)
    assert info.value.cause == "protection" and mmu.stats.walks == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_hit_on_clean_entry_rewalks_and_sets_dirty_in_memory(fmt: str) -> None:
    pt = build(fmt)
    va = BASE + 4 * K4  # "rw", supervisor
    mmu = Mmu(pt, hierarchy())
    leaf = pt.lookup(va)
    assert leaf is not None and not leaf.dirty
    mmu.translate(va, "r")
    assert not pt.lookup(va).dirty  # type: ignore[union-attr]
    pa = mmu.translate(va + 1, "w")
    assert pa == leaf.page_pa + 1
    assert mmu.stats.dirty_walks == 1 and mmu.stats.walks == 1
    raw = pt.mem.read_u64(leaf.pte_pa)
    d_bit = 1 << 6 if fmt.startswith("x86") else 1 << 7
    assert raw & d_bit and pt.lookup(va).dirty  # type: ignore[union-attr]
    mmu.translate(va, "w")  # the entry is dirty now: a plain hit
    assert mmu.stats.dirty_walks == 1 and mmu.stats.walks == 1
    check_counters(mmu)


# -- page-walk cache ----------------------------------------------------------------------


def test_page_walk_cache_skips_upper_levels() -> None:
    mem = PhysicalMemory(1 * GiB)
    pt = PageTable(mem)
    for i in range(10):
        pt.map(BASE + i * K4, mem.alloc())
    mmu = Mmu(pt, TlbConfig(64, 4), pwc=PwcConfig(entries=8))
    plain = Mmu(pt, TlbConfig(64, 4))
    for i in range(8):
        mmu.translate(BASE + i * K4)
        plain.translate(BASE + i * K4)
    assert plain.stats.walk_memory_refs == 8 * 4
    assert mmu.stats.walk_memory_refs == 4 + 7 * 1  # the PDE is cached after the first walk
    assert (mmu.stats.pwc_lookups, mmu.stats.pwc_hits) == (8, 7)
    pt.unmap(BASE + 9 * K4)  # shootdown: the PWC goes too
    assert mmu.stats.shootdowns == 1
    mmu.translate(BASE + 8 * K4)
    assert mmu.stats.walk_memory_refs == 11 + 4
    mmu.translate(BASE + 7 * K4)  # still cached in the TLB: the shootdown was for page 9
    assert mmu.stats.walks == 9


def test_page_walk_cache_levels() -> None:
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem)
    pt.map(GiB, mem.alloc(M2), M2)
    pt.map(GiB + M2, mem.alloc(M2), M2)
    pt.map(GiB + 64 * M2 + K4, mem.alloc())  # same PDPT entry, another PD entry
    mmu = Mmu(pt, TlbConfig(64, 4, page_sizes=(K4, M2)), pwc=True)
    mmu.translate(GiB)
    mmu.translate(GiB + M2)  # PDPTE cached: only the PDE is read
    mmu.translate(GiB + 64 * M2 + K4)  # PDPTE cached: PDE and PTE read
    assert mmu.stats.walk_memory_refs == 3 + 1 + 2


# -- prefetching ---------------------------------------------------------------------------


def prefetch_space() -> tuple[PageTable, list[int]]:
    mem = PhysicalMemory(1 * GiB)
    pt = PageTable(mem)
    pages = [BASE + i * K4 for i in range(12)]
    for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11):  # page 6 is a hole
        pt.map(pages[i], mem.alloc(), perms="rw")
    return pt, pages


def test_next_page_degree_n_installs_the_next_n_pages() -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, TlbConfig(16, 16), PrefetchConfig("next_page", degree=4))
    mmu.translate(p[0])
    for i in (1, 2, 3, 4):
        assert mmu.translate(p[i] + 9) == pt.walk(p[i] + 9, update_ad=False).pa
    assert mmu.stats.walks == 1
    assert mmu.stats.prefetch.installed == 4 and mmu.stats.prefetch.useful == 4
    mmu.translate(p[5])
    assert mmu.stats.walks == 2


def test_prefetches_go_into_the_last_level_only() -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, hierarchy(), PrefetchConfig("next_page", degree=1))
    mmu.translate(p[0])
    l1, l2 = mmu.levels
    assert l1.peek(p[1], 0) is None
    entry = l2.peek(p[1], 0)
    assert entry is not None and entry.prefetched and not entry.used
    mmu.translate(p[1])  # an L1 miss that hits the prefetched L2 entry, then fills L1
    s1, s2 = mmu.tlb_stats()
    assert (s1.misses, s2.hits, s2.prefetch_useful, s1.prefetch_useful) == (2, 1, 1, 0)
    assert entry.used and mmu.stats.walks == 1
    assert l1.peek(p[1], 0) is not None


def test_next_page_counters_hand_worked() -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, TlbConfig(16, 16), PrefetchConfig("next_page", degree=2))
    pf, level = mmu.stats.prefetch, mmu.tlb_stats()[0]
    mmu.translate(p[0])  # miss: prefetch 1, 2
    mmu.translate(p[1])  # hit, useful
    mmu.translate(p[2])  # hit, useful
    mmu.translate(p[4])  # miss: prefetch 5, and 6 (a hole: dropped, no fault)
    mmu.translate(p[3])  # miss: 4 and 5 are cached already (redundant)
    assert mmu.stats.walks == 3
    assert (pf.requested, pf.issued, pf.installed, pf.dropped, pf.redundant) == (6, 4, 3, 1, 2)
    assert pf.useful == 2 and pf.useless == 0
    assert mmu.stats.walk_memory_refs == 3 * 4  # demand walks only
    assert pf.walk_memory_refs == 4 * 4  # 3 prefetch walks and 1 dropped one, 4 PTEs each
    mmu.flush()  # page 5 was prefetched and never used
    assert pf.useless == 1 and level.prefetch_useless == 1
    assert (level.prefetch_fills, level.prefetch_useful) == (3, 2)
    assert level.prefetch_effectiveness() == pytest.approx(2 / 3)
    assert pf.accuracy() == pytest.approx(2 / 3)
    with pytest.raises(PageFault):
        mmu.translate(p[6])  # a demand miss on the hole faults; nothing is prefetched
    assert pf.requested == 6


def test_prefetch_beyond_the_address_space_is_dropped() -> None:
    mem = PhysicalMemory(1 * GiB)
    pt = PageTable(mem)
    top = (1 << 47) - K4  # the last canonical lower-half page
    pt.map(top, mem.alloc())
    mmu = Mmu(pt, TlbConfig(16, 16), PrefetchConfig("next_page", degree=2))
    assert mmu.translate(top) == pt.walk(top, update_ad=False).pa
    assert mmu.stats.prefetch.dropped == 2 and mmu.stats.prefetch.installed == 0


def test_stride_prefetcher_after_two_equal_strides() -> None:
    mem = PhysicalMemory(1 * GiB)
    pt = PageTable(mem)
    for i in range(40):
        pt.map(BASE + i * K4, mem.alloc())
    mmu = Mmu(pt, TlbConfig(64, 4), PrefetchConfig("stride", degree=2))
    pf = mmu.stats.prefetch
    mmu.translate(BASE)
    mmu.translate(BASE + 3 * K4)  # one stride of 3: not yet
    assert pf.requested == 0
    mmu.translate(BASE + 6 * K4)  # the second equal stride: 9 and 12
    assert pf.installed == 2
    walks = mmu.stats.walks
    for i in (9, 12):
        assert mmu.translate(BASE + i * K4 + 5) == pt.walk(BASE + i * K4 + 5, update_ad=False).pa
    assert mmu.stats.walks == walks and pf.useful == 2
    other = Mmu(pt, TlbConfig(64, 4), PrefetchConfig("stride", degree=2))
    for i in (20, 23, 27, 30, 35):  # no two consecutive equal strides
        other.translate(BASE + i * K4)
    assert other.stats.prefetch.requested == 0


def test_deferred_prefetch_waits_for_process_prefetch() -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, TlbConfig(16, 16), PrefetchConfig("next_page", degree=2, mode="deferred"))
    mmu.translate(p[0])
    assert mmu.pending_prefetches == 2 and not mmu.cached(p[1]) and not mmu.cached(p[2])
    assert mmu.stats.prefetch.walk_memory_refs == 0
    assert mmu.process_prefetch() == 2
    assert mmu.pending_prefetches == 0 and mmu.cached(p[1]) and mmu.cached(p[2])
    mmu.translate(p[1])
    assert mmu.stats.walks == 1
    mmu.translate(p[5])  # queues 6 (a hole) and 7
    assert mmu.process_prefetch() == 1
    assert mmu.stats.prefetch.dropped == 1
    assert mmu.process_prefetch() == 0


def test_deferred_queue_limit_and_shootdown() -> None:
    pt, p = prefetch_space()
    cfg = PrefetchConfig("next_page", degree=2, mode="deferred", queue_limit=3)
    mmu = Mmu(pt, TlbConfig(16, 16), cfg)
    mmu.translate(p[0])  # queue 1, 2
    mmu.translate(p[8])  # queue 9, 10: 1 is dropped
    assert mmu.pending_prefetches == 3 and mmu.stats.prefetch.overflowed == 1
    pt.unmap(p[9])  # a shootdown also drops queued requests in the range
    assert mmu.pending_prefetches == 2
    assert mmu.process_prefetch() == 2
    assert mmu.cached(p[2]) and mmu.cached(p[10]) and not mmu.cached(p[1])


def test_async_prefetching_tlb_defaults_to_deferred_next_page() -> None:
    pt, p = prefetch_space()
    mmu = AsyncPrefetchingTlb(pt, TlbConfig(16, 16))
    cfg = mmu.prefetch_config
    assert (cfg.kind, cfg.degree, cfg.mode) == ("next_page", 1, "deferred")
    mmu.translate(p[2])
    assert mmu.pending_prefetches == 1 and not mmu.cached(p[3])
    assert mmu.process_prefetch() == 1
    mmu.translate(p[3])
    assert mmu.stats.walks == 1 and mmu.stats.prefetch.useful == 1


# -- statistics ---------------------------------------------------------------------------


def test_stats_ratios() -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, TlbConfig(16, 4, latency=3), walk_ref_cycles=20)
    s = mmu.tlb_stats()[0]
    assert s.hit_rate() == 0.0 and s.avg_latency() == 0.0 and s.prefetch_effectiveness() == 0.0
    for va in (p[0], p[0], p[0] + 1, p[0] + 2):
        mmu.translate(va)
    assert s.hit_rate() == 0.75 and s.miss_rate() == 0.25
    assert s.avg_latency() == 3.0
    total = mmu.total_stats()
    assert total.hit_rate() == 0.75
    assert total.avg_latency() == (4 * 3 + 4 * 20) / 4
    mmu.reset_stats()
    assert mmu.tlb_stats()[0].lookups == 0 and mmu.stats.translations == 0
    mmu.translate(p[0])
    assert mmu.tlb_stats()[0].hit_rate() == 1.0  # contents stayed


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.sampled_from("rw")), min_size=1, max_size=60))
def test_ratios_are_ratios(seq: list[tuple[int, str]]) -> None:
    pt, p = prefetch_space()
    mmu = Mmu(pt, hierarchy(), PrefetchConfig("next_page", degree=2))
    for i, access in seq:
        try:
            mmu.translate(p[i], access)
        except PageFault:
            assert i == 6
    for s in [*mmu.tlb_stats(), mmu.total_stats()]:
        for r in (s.hit_rate(), s.miss_rate(), s.prefetch_effectiveness()):
            assert 0.0 <= r <= 1.0
        assert s.hit_rate() + s.miss_rate() == pytest.approx(1.0)
    assert 0.0 <= mmu.stats.prefetch.accuracy() <= 1.0
    check_counters(mmu)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: TlbConfig(12, 4), "= 3"),  # 3 sets
        (lambda: TlbConfig(10, 4), "(10)"),
        (lambda: TlbConfig(16, 4, "mru"), "'mru'"),
        (lambda: TlbConfig(6, 3, "plru"), "3"),
        (lambda: TlbConfig(16, 4, page_sizes=(8192,)), "8192"),
        (lambda: TlbConfig(0, 1), "0"),
        (lambda: TlbConfig(16, 4, latency=-2), "-2"),
        (lambda: PrefetchConfig("markov"), "'markov'"),
        (lambda: PrefetchConfig("next_page", degree=0), "0"),
        (lambda: PrefetchConfig("next_page", mode="lazy"), "'lazy'"),
        (lambda: PwcConfig(entries=-1), "-1"),
    ],
)
def test_config_errors_name_the_value(make: Callable[[], object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert needle in str(info.value)
    assert isinstance(info.value, vmopt.VmoptError) and isinstance(info.value, ValueError)


def test_mmu_config_errors() -> None:
    pt = PageTable(PhysicalMemory(64 * MiB))
    with pytest.raises(ConfigError, match="70000"):
        Mmu(pt, asid=70000)
    with pytest.raises(ConfigError, match="4096"):  # split arrays must hold disjoint sizes
        Mmu(pt, [[TlbConfig(4, 4, name="a"), TlbConfig(4, 4, name="b")]])
    with pytest.raises(ConfigError, match="distinct"):
        Mmu(pt, [TlbConfig(4, 4, name="x"), TlbConfig(8, 4, name="x")])
    with pytest.raises(ConfigError, match="-5"):
        Mmu(pt, walk_ref_cycles=-5)
    mmu = Mmu(pt)
    with pytest.raises(ConfigError, match="'q'"):
        mmu.translate(0, "q")
    with pytest.raises(ConfigError, match="99999"):
        mmu.switch(pt, asid=99999)


def test_default_hierarchy() -> None:
    pt = build("x86_64")
    mmu = Mmu(pt)
    assert [lv.name for lv in mmu.levels] == ["l1+l1_2m+l1_1g", "l2+l2_1g"]
    for va, _size in MAPPED:
        assert mmu.translate(va + 1) == pt.walk(va + 1, update_ad=False).pa
    sizes = [{e.size for arr in lv.arrays for e in arr} for lv in mmu.levels]
    assert sizes == [{K4, M2, GiB}, {K4, M2, GiB}]  # nothing splintered
    check_counters(mmu)


def test_levels_are_named_by_position_when_names_are_not_given() -> None:
    pt = build("x86_64")
    mmu = Mmu(pt, tlb=[TlbConfig(64, 4), TlbConfig(1536, 12)])
    assert [lv.name for lv in mmu.levels] == ["l1", "l2"]
    split = Mmu(pt, tlb=[[TlbConfig(64, 4), TlbConfig(32, 4, page_sizes=(M2,))], TlbConfig(256, 4)])
    assert [lv.name for lv in split.levels] == ["l1+l1_2", "l2"]
    named_ = Mmu(pt, tlb=[TlbConfig(8, 2, name="dtlb"), TlbConfig(16, 4)])
    assert [lv.name for lv in named_.levels] == ["dtlb", "l2"]
    with pytest.raises(ConfigError, match="TLB level names must be distinct"):
        Mmu(pt, tlb=[TlbConfig(8, 2, name="x"), TlbConfig(16, 4, name="x")])
