"""The core's batch loop against ``Mmu.translate`` in a loop and against the reference loop.

Every differential test builds three identical guests (same memory layout,
same mappings, same MMU configuration) from one drawn scenario: the
pure-Python reference (``tests/reference``) and one product guest driven
with the scalar ``translate`` only, and a product guest driven with the
core's array loop (``Mmu.translate_into``) plus the engine's contract (the
address it stops at is finished by ``Mmu.handle_fault``, then it resumes).
After every operation it compares:

- every result (physical address, or the fault's class, message, cause and level);
- every counter: ``MmuStats`` (with ``PrefetchStats``), each level's
  ``TlbStats``, the page-walk cache's own counters;
- the TLB way by way (every field of every entry, LRU/FIFO stamps, the
  clock, PLRU bits, the random policy's xorshift state), the page-walk
  cache's LRU order, the prefetcher's history and the deferred queue;
- guest memory byte for byte (the accessed/dirty bits walks set).

It also checks that the loop only stops at addresses that really fault, so
the comparisons are not passing because everything took the scalar path.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from tlb_state import assert_same, mmu_state
from vmopt import Mmu, PageFault, PageTable, PhysicalMemory, PrefetchConfig, PwcConfig, TlbConfig
from vmopt.tlb.mmu import DEFAULT_TLB_LEVELS

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
POLICIES = ("lru", "fifo", "random", "plru")
FORMATS = ("x86_64", "x86_64_5level", "sv39", "sv48")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- scenarios ----------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """Everything needed to build a guest twice, identically, and what to run on it."""

    fmt: str
    hierarchy: str
    policy: str
    seed: int
    prefetch: PrefetchConfig | None
    pwc: PwcConfig | None
    asid: int
    update_ad: bool
    shootdown: bool
    demand: bool
    walk_ref_cycles: int
    pages: list[tuple[str, int, str, bool, bool]]  # (region, index, perms, user, global)
    ops: list[tuple[Any, ...]] = field(default_factory=list)
    user: bool = False  # the mode most pages are mapped for and most accesses use


REGIONS = {"small": 0x4000_0000, "big": 0x8000_0000, "huge": 0x10_0000_0000}
SIZES = {"small": PAGE, "big": 2 * MiB, "huge": GiB}


def region_base(fmt: str, region: str) -> int:
    """Where a region lives; "upper" is the first page of the canonical upper half."""
    if region == "upper":
        bits = {"x86_64": 48, "x86_64_5level": 57, "sv39": 39, "sv48": 48}[fmt]
        return ((1 << 64) - 1) ^ ((1 << (bits - 1)) - 1)
    return REGIONS[region]


def perms_for(fmt: str) -> st.SearchStrategy[str]:
    """Leaf permissions the format can encode (mostly permissive, so most accesses succeed)."""
    if fmt.startswith("x86"):
        return st.sampled_from(["r", "rw", "rx", "rwx", "rw", "rwx", "rwx"])
    return st.sampled_from(["r", "rw", "rx", "rwx", "x", "rw", "rwx", "rwx"])


def tlb_spec(hierarchy: str, policy: str, seed: int) -> Any:
    """A small TLB hierarchy (small so that sets conflict and evict)."""
    big, huge = 2 * MiB, GiB
    if hierarchy == "one":
        return TlbConfig(16, 4, policy, (PAGE, big, huge), name="l1", seed=seed)
    if hierarchy == "fa":
        return TlbConfig(8, 8, policy, (PAGE, big), name="l1", seed=seed)
    if hierarchy == "two":
        return [
            TlbConfig(8, 2, policy, (PAGE,), 1, "l1", seed),
            TlbConfig(32, 4, policy, (PAGE, big), 7, "l2", seed + 1),
        ]
    if hierarchy == "split":
        return [
            [
                TlbConfig(8, 4, policy, (PAGE,), 1, "l1", seed),
                TlbConfig(4, 2, policy, (big, huge), 1, "l1b", seed),
            ],
            TlbConfig(16, 4, policy, (PAGE, big), 6, "l2", seed + 2),
            TlbConfig(64, 8, policy, (PAGE, big, huge), 20, "l3", seed + 3),
        ]
    return DEFAULT_TLB_LEVELS


@st.composite
def scenarios(draw: st.DrawFn, *, ops: int = 6) -> Scenario:
    fmt = draw(st.sampled_from(FORMATS))
    hierarchy = draw(st.sampled_from(["one", "fa", "two", "split", "default"]))
    policy = "lru" if hierarchy == "default" else draw(st.sampled_from(POLICIES))
    kind = draw(st.sampled_from(["none", "next_page", "stride"]))
    prefetch = None
    if kind != "none":
        prefetch = PrefetchConfig(
            kind,
            degree=draw(st.integers(1, 3)),
            mode=draw(st.sampled_from(["immediate", "immediate", "deferred"])),
            queue_limit=draw(st.integers(1, 6)),
        )
    pwc = draw(st.sampled_from([None, PwcConfig(), PwcConfig(entries=2, latency=3)]))
    perms = perms_for(fmt)
    mode = draw(st.booleans())
    users = st.integers(0, 7).map(lambda k: mode if k else not mode)
    pages: list[tuple[str, int, str, bool, bool]] = []
    for i in range(draw(st.integers(4, 40))):
        if draw(st.integers(0, 9)):  # holes: some 4 KiB pages stay unmapped
            pages.append(("small", i, draw(perms), draw(users), draw(st.integers(0, 7)) == 0))
    for i in range(draw(st.integers(0, 3))):
        pages.append(("big", i, draw(perms), draw(users), False))
    if draw(st.booleans()):
        pages.append(("huge", 0, draw(perms), draw(users), False))
    for i in range(draw(st.integers(0, 3))):
        pages.append(("upper", i, draw(perms), False, True))
    sc = Scenario(
        fmt=fmt,
        hierarchy=hierarchy,
        policy=policy,
        seed=draw(st.integers(0, 3)),
        prefetch=prefetch,
        pwc=pwc,
        asid=draw(st.integers(0, 3)),
        update_ad=draw(st.integers(0, 4)) > 0,
        shootdown=draw(st.integers(0, 4)) > 0,
        demand=draw(st.integers(0, 3)) == 0,
        walk_ref_cycles=draw(st.integers(0, 30)),
        pages=pages,
        user=mode,
    )
    for _ in range(draw(st.integers(1, ops))):
        sc.ops.append(draw(operation(sc)))
    return sc


def address(sc: Scenario) -> st.SearchStrategy[int]:
    """Addresses mostly in mapped pages, some in holes, beyond them, or non-canonical."""
    mapped = [(region_base(sc.fmt, r) + i * (PAGE if r == "upper" else SIZES[r]), r) for r, i, *_ in sc.pages]
    odd = st.sampled_from([0, 0x7FFF_FFFF_F000, 0x0000_8000_0000_0000, 0xDEAD_0000_0000_1000])
    anywhere = st.integers(0x4000_0000, 0x4000_0000 + 48 * PAGE - 1)
    if not mapped:
        return st.one_of(anywhere, odd)
    inside = st.sampled_from(mapped).flatmap(
        lambda m: st.integers(m[0], m[0] + (PAGE if m[1] in ("small", "upper") else SIZES[m[1]]) - 1)
    )
    starts = st.sampled_from(mapped).map(lambda m: m[0] + 8)
    return st.integers(0, 19).flatmap(
        lambda k: inside if k < 12 else starts if k < 16 else anywhere if k < 19 else odd
    )


@st.composite
def operation(draw: st.DrawFn, sc: Scenario) -> tuple[Any, ...]:
    what = draw(st.sampled_from(["batch"] * 6 + ["scalar", "invlpg", "flush", "switch", "unmap", "protect",
                                                 "process", "reset"]))  # fmt: skip
    access = draw(st.sampled_from(["r", "r", "w", "w", "x"]))
    user = sc.user if draw(st.integers(0, 5)) else not sc.user
    if what == "batch":
        mode = draw(st.sampled_from(["random", "random", "sweep"]))
        if mode == "sweep":  # a strided walk over the small region, twice: prefetchers kick in
            stride = draw(st.sampled_from([1, 1, 2, 3]))
            one = [0x4000_0000 + k * stride * PAGE + 16 for k in range(draw(st.integers(4, 30)))]
            addrs = one + one
        else:
            addrs = draw(st.lists(address(sc), min_size=0, max_size=120))
        return ("batch", addrs, access, user)
    if what == "scalar":
        return ("scalar", draw(address(sc)), access, user)
    if what in ("invlpg", "unmap", "protect"):
        small = [i for r, i, *_ in sc.pages if r == "small"]
        if not small:
            return ("flush",)
        va = 0x4000_0000 + draw(st.sampled_from(small)) * PAGE
        if what == "protect":
            return ("protect", va, draw(perms_for(sc.fmt)))
        return (what, va)
    if what == "switch":
        return ("switch", draw(st.integers(0, 3)))
    return (what,)


# -- building and driving a guest ------------------------------------------------------------------


@dataclass
class Guest:
    mem: Any
    pt: Any
    mmu: Any
    stops: int = 0
    batched: int = 0


def build(sc: Scenario, product: bool = True) -> Guest:
    """One guest of the scenario (deterministic: builds of one kind are identical)."""
    mem_cls, pt_cls, mmu_cls = (
        (PhysicalMemory, PageTable, Mmu) if product else (RefMemory, RefPageTable, RefMmu)
    )
    mem = mem_cls(4 * GiB)
    pt = pt_cls(mem, sc.fmt, update_ad=sc.update_ad)
    for region, i, perms, user, global_ in sc.pages:
        size = PAGE if region == "upper" else SIZES[region]
        va = region_base(sc.fmt, region) + i * size
        pt.map(va, mem.alloc(size), size, perms, user=user, global_=global_)

    handler: Callable[[int, str, bool], bool] | None = None
    if sc.demand:

        def handler(va: int, access: str, user: bool) -> bool:
            base = va & ~(PAGE - 1)
            if not 0x4000_0000 <= base < 0x4000_0000 + 48 * PAGE or base & 0x3000 == 0x3000:
                return False
            pt.map(base, mem.alloc(), PAGE, "rwx" if sc.fmt.startswith("sv") else "rw", user=True)
            return True

    mmu = mmu_cls(
        pt,
        tlb=tlb_spec(sc.hierarchy, sc.policy, sc.seed),
        prefetch=sc.prefetch,
        asid=sc.asid,
        pwc=sc.pwc,
        shootdown=sc.shootdown,
        walk_ref_cycles=sc.walk_ref_cycles,
        fault_handler=handler,
    )
    return Guest(mem, pt, mmu)


def scalar_one(g: Guest, va: int, access: str, user: bool) -> Any:
    try:
        return g.mmu.translate(va, access, user)
    except PageFault as f:
        return ("fault", f.cause, f.level, str(f))


def batch_core(g: Guest, addrs: list[int], access: str, user: bool) -> list[Any]:
    """The engine's loop: the core translates a prefix, the stop is finished as translate would."""
    arr = np.array(addrs, dtype=np.uint64)
    out = np.zeros(len(arr), dtype=np.uint64)
    results: list[Any] = []
    pos = 0
    while pos < len(arr):
        faults = g.mmu.stats.faults
        done, error = g.mmu.translate_into(arr[pos:], out[pos:], access, user)
        assert not out[pos + done :].any()
        results.extend(out[pos : pos + done].tolist())
        g.batched += done
        pos += done
        if error is None:
            assert pos == len(arr)
            break
        # The loop only stops where translate faults (and counted it).
        assert isinstance(error, PageFault) and g.mmu.stats.faults > faults, error
        g.stops += 1
        va = int(arr[pos])
        try:
            results.append(g.mmu.handle_fault(va, access, user, error))
        except PageFault as f:
            results.append(("fault", f.cause, f.level, str(f)))
        pos += 1
    return results


def apply(g: Guest, op: tuple[Any, ...], vectorized: bool) -> Any:
    kind = op[0]
    mmu = g.mmu
    if kind == "batch":
        _, addrs, access, user = op
        if vectorized:
            return batch_core(g, addrs, access, user)
        return [scalar_one(g, va, access, user) for va in addrs]
    if kind == "scalar":
        return scalar_one(g, op[1], op[2], op[3])
    if kind == "invlpg":
        mmu.invlpg(op[1])
    elif kind == "flush":
        mmu.flush()
    elif kind == "switch":
        mmu.switch(g.pt, op[1])
    elif kind == "unmap":
        if g.pt.lookup(op[1]) is not None:
            g.pt.unmap(op[1], PAGE)
    elif kind == "protect":
        if g.pt.lookup(op[1]) is not None:
            g.pt.protect(op[1], PAGE, op[2])
    elif kind == "process":
        return mmu.process_prefetch()
    elif kind == "reset":
        mmu.reset_stats()
    return None


# -- comparing ------------------------------------------------------------------------------------


def state(g: Guest) -> dict[str, Any]:
    """Everything the batch loop must leave exactly as the scalar loop does."""
    return mmu_state(g.mmu, g.mem)


def compare(a: Guest, b: Guest) -> None:
    assert_same(state(a), state(b))


def run_scenario(sc: Scenario) -> tuple[Guest, Guest]:
    """Reference loop, product loop and product batch agree after every operation."""
    ref, scalar, fast = build(sc, product=False), build(sc), build(sc)
    for op in sc.ops:
        want = apply(ref, op, False)
        assert apply(scalar, op, False) == want, f"scalar results of {op[0]} differ from the reference"
        assert apply(fast, op, True) == want, f"batch results of {op[0]} differ from the reference"
        compare(ref, scalar)
        compare(scalar, fast)
    return scalar, fast


# -- differential tests ------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_matches_scalar_loop(sc: Scenario) -> None:
    """Any mix of batches, scalar translations, flushes, shootdowns and switches agrees exactly."""
    run_scenario(sc)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("hierarchy", ["one", "two", "split"])
def test_every_policy_and_hierarchy_on_a_busy_batch(policy: str, hierarchy: str) -> None:
    """A long random batch over 4 KiB, 2 MiB and 1 GiB pages, reads then writes, with a PWC."""
    rng = np.random.default_rng(7)
    pages = [("small", i, "rw", True, i % 5 == 0) for i in range(40) if i % 7] + [
        ("big", 0, "rw", True, False), ("big", 1, "r", True, False), ("huge", 0, "rwx", True, False),
    ]  # fmt: skip
    small = 0x4000_0000 + rng.integers(0, 48 * PAGE, 1500)
    big = 0x8000_0000 + rng.integers(0, 4 * MiB, 300)
    huge = 0x10_0000_0000 + rng.integers(0, GiB, 200)
    addrs = np.concatenate([small, big, huge])
    rng.shuffle(addrs)
    batch = [int(a) for a in addrs]
    sc = Scenario(
        fmt="x86_64", hierarchy=hierarchy, policy=policy, seed=1,
        prefetch=PrefetchConfig("next_page", degree=2), pwc=PwcConfig(entries=4), asid=1, update_ad=True,
        shootdown=True, demand=False, walk_ref_cycles=20, pages=pages,
        ops=[("batch", batch, "r", True), ("batch", batch, "w", True), ("batch", batch, "x", False)],
    )  # fmt: skip
    scalar, fast = run_scenario(sc)
    assert fast.stops == scalar.mmu.stats.faults > 0  # each fault, and nothing else, stopped the loop
    assert fast.batched == 3 * len(batch) - fast.stops


def test_default_hierarchy_sweeps_with_each_prefetcher() -> None:
    """Sequential sweeps (the prefetchers' case) on the default split L1 + L2."""
    pages = [("small", i, "rw", False, False) for i in range(48)]
    sweep = [0x4000_0000 + k * PAGE + 8 for k in range(48)] * 3
    for prefetch in (None, PrefetchConfig("next_page", 2), PrefetchConfig("stride", 3),
                     PrefetchConfig("next_page", 1, mode="deferred", queue_limit=5)):  # fmt: skip
        sc = Scenario(
            fmt="x86_64", hierarchy="default", policy="lru", seed=0, prefetch=prefetch, pwc=PwcConfig(),
            asid=0, update_ad=True, shootdown=True, demand=False, walk_ref_cycles=20, pages=pages,
            ops=[("batch", sweep, "r", False), ("process",), ("batch", sweep, "w", False)],
        )  # fmt: skip
        _, fast = run_scenario(sc)
        assert fast.stops == 0 and fast.batched == 2 * len(sweep)
        if prefetch is not None and prefetch.mode == "immediate":
            assert fast.mmu.stats.prefetch.useful > 0


def test_demand_paging_between_batch_stops() -> None:
    """First touches stop the loop one by one and are demand-paged; everything else stays in the core."""
    sc = Scenario(
        fmt="x86_64", hierarchy="two", policy="lru", seed=0, prefetch=PrefetchConfig("next_page"),
        pwc=PwcConfig(), asid=0, update_ad=True, shootdown=True, demand=True, walk_ref_cycles=20, pages=[],
        ops=[("batch", [0x4000_0000 + i * 512 for i in range(48 * 8)], "w", True)],
    )  # fmt: skip
    scalar, fast = run_scenario(sc)
    assert scalar.mmu.stats.demand_faults == fast.mmu.stats.demand_faults == 36  # every fourth page refused
    assert fast.stops == 36 + 12 * 8  # first touches, and every access to a refused page


# -- the contract's edges --------------------------------------------------------------------------


def small_guest(policy: str = "lru", **kw: Any) -> tuple[PageTable, Mmu]:
    mem = PhysicalMemory(256 * MiB)
    pt = PageTable(mem, "x86_64")
    for i in range(8):
        pt.map(0x1000 * (i + 1), mem.alloc(), PAGE, "rw")
    return pt, Mmu(pt, TlbConfig(8, 2, policy), **kw)


def test_inputs() -> None:
    _, mmu = small_guest()
    _, ref = small_guest()
    out = np.zeros(0, dtype=np.uint64)
    assert mmu.translate_into(np.array([], dtype=np.uint64), out) == (0, None)
    assert mmu.stats.translations == 0
    assert mmu.translate_batch([0x1008, 0x2010]) == [ref.translate(0x1008), ref.translate(0x2010)]
    got = mmu.translate_batch(np.array([0x1008, 0x2010], dtype=np.int32))  # any integer dtype
    assert got.dtype == np.uint64 and got.tolist() == [ref.translate(0x1008), ref.translate(0x2010)]
    with pytest.raises(Exception, match="negative"):
        mmu.translate_batch(np.array([0x1008, -5], dtype=np.int64))
    with pytest.raises(Exception, match="1-D"):
        mmu.translate_batch(np.zeros((2, 2), dtype=np.uint64))
    strided = np.array([0x1000, 0, 0x2000, 0, 0x3000], dtype=np.uint64)[::2]  # not contiguous
    assert mmu.translate_batch(strided).tolist() == [ref.translate(int(va)) for va in strided]
    with pytest.raises(Exception, match="contiguous"):
        mmu.translate_into(strided, np.zeros(3, dtype=np.uint64))
    assert mmu.stats == ref.stats


def test_stops_exactly_at_faults() -> None:
    pt, mmu = small_guest()
    pt.protect(0x3000, PAGE, "r")
    addrs = np.array([0x1000, 0x2000, 0x3008, 0x4000, 0x9000], dtype=np.uint64)
    out = np.zeros(len(addrs), dtype=np.uint64)
    done, error = mmu.translate_into(addrs, out, "r")
    assert done == 4 and isinstance(error, PageFault)  # 0x9000 is unmapped
    assert (error.va, error.cause, error.level) == (0x9000, "not_present", 0)
    assert mmu.stats.faults == 1 and mmu.stats.walks == 5  # the stopping address was translated
    done, error = mmu.translate_into(addrs, out, "w")
    assert done == 2 and isinstance(error, PageFault) and error.cause == "protection"  # 0x3008 read-only
    done, error = mmu.translate_into(addrs[3:], out[3:], "x", True)
    assert done == 0 and isinstance(error, PageFault) and error.user  # supervisor page, user fetch
    assert mmu.stats.faults == 3
    with pytest.raises(PageFault):
        mmu.handle_fault(0x9000, "r", False, error)  # no handler: the fault is raised


def test_batch_and_scalar_interleave_for_every_policy() -> None:
    """Scalar translations, flushes and resets between batches: the same as the scalar loop."""
    for policy in POLICIES:
        _, mmu = small_guest(policy, prefetch=PrefetchConfig("next_page"))
        _, ref = small_guest(policy, prefetch=PrefetchConfig("next_page"))
        g, r = Guest(mmu.page_table.mem, mmu.page_table, mmu), Guest(ref.page_table.mem, ref.page_table, ref)
        ops: list[tuple[Any, ...]] = []
        for k in itertools.islice(itertools.cycle(range(1, 9)), 40):
            ops.append(("batch", [0x1000 * k + 8, 0x1000 * ((k * 3) % 8 + 1)], "r", False))
            ops.append(("scalar", 0x1000 * ((k * 5) % 8 + 1), "w", False))
            if k == 4:
                ops.append(("invlpg", 0x3000))
            if k == 6:
                ops.append(("reset",))
        for op in ops:
            assert apply(r, op, False) == apply(g, op, True)
            compare(r, g)


def test_translate_batch_equals_the_scalar_loop() -> None:
    """``Mmu.translate_batch`` on an array gives the scalar answers and counters."""
    _, mmu = small_guest()
    _, ref = small_guest()
    addrs = np.array([0x1000 * (i % 8 + 1) + i for i in range(200)], dtype=np.uint64)
    got = mmu.translate_batch(addrs)
    assert list(got) == [ref.translate(int(a)) for a in addrs]
    assert mmu.stats == ref.stats
    assert [lv.stats for lv in mmu.levels] == [lv.stats for lv in ref.levels]


def test_switching_address_spaces_between_batches() -> None:
    """Two page tables with different mappings, ASIDs and global pages, one MMU switching."""

    def guest(product: bool) -> tuple[Any, Any, Any]:
        mem = (PhysicalMemory if product else RefMemory)(256 * MiB)
        pt_cls = PageTable if product else RefPageTable
        a, b = pt_cls(mem, "x86_64"), pt_cls(mem, "x86_64")
        for i in range(16):
            a.map(0x1000 * (i + 1), mem.alloc(), PAGE, "rw", user=True, global_=i < 2)
            if i % 3:
                b.map(0x1000 * (i + 1), mem.alloc(), PAGE, "r", user=True)
        levels = [TlbConfig(8, 2, "plru", name="l1"), TlbConfig(32, 4, "fifo", latency=5, name="l2")]
        return a, b, (Mmu if product else RefMmu)(a, levels)

    pa, pb, ref = guest(False)
    qa, qb, fast = guest(True)
    g_ref, g_fast = Guest(pa.mem, pa, ref), Guest(qa.mem, qa, fast)
    batch = [0x1000 * (i % 16 + 1) + 8 * i for i in range(100)]
    for step in range(6):
        table_ref, table_fast = (pa, qa) if step % 2 == 0 else (pb, qb)
        ref.switch(table_ref, asid=step % 3)
        fast.switch(table_fast, asid=step % 3)
        for access in ("r", "w"):
            op = ("batch", batch, access, True)
            assert apply(g_ref, op, False) == apply(g_fast, op, True)
            compare(g_ref, g_fast)
    assert g_fast.batched > 500


def test_a_dropped_mmu_is_freed() -> None:
    """Nothing (its table's subscription, a batch) keeps an Mmu alive."""
    import gc
    import weakref

    pt, mmu = small_guest()
    mmu.translate_batch(np.array([0x1000, 0x2000], dtype=np.uint64))
    ref = weakref.ref(mmu)
    del mmu
    gc.collect()
    assert ref() is None
    pt.unmap(0x1000)  # the table's subscriber is gone: the shootdown skips it


def test_facade_arrays_match_lists() -> None:
    """``MemoryOptimizer.batch_access``: arrays (core loop, demand paging at the stops) == lists."""
    from vmopt import MemoryOptimizer, NumaConfig

    def run(as_array: bool) -> tuple[list[int], Any, Any]:
        opt = MemoryOptimizer(NumaConfig(2, 64 * MiB), cpus=2)
        heap = opt.allocate(4 * MiB)
        addrs = [heap + (i * 2654435761) % (4 * MiB) for i in range(3000)]  # first touches and hits
        out = []
        for cpu in (0, 1, 0):
            batch: Any = np.array(addrs, dtype=np.uint64) if as_array else addrs
            out += [int(x) for x in opt.batch_access(batch, "w", cpu=cpu)]
        tlbs = [[s.as_dict() for s in m.tlb_stats()] + [m.stats.as_dict()] for m in opt.mmus]
        return out, (opt.get_stats(), opt.node_stats()), tlbs

    assert run(True) == run(False)
