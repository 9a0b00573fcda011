"""``translate_array`` against ``Mmu.translate`` in a loop: results, counters, TLB state, memory.

Every differential test builds two identical guests (same memory layout,
same mappings, same MMU configuration) from one drawn scenario, drives the
reference with the scalar ``translate`` only and the other with
``translate_array`` plus the documented fallback (the address it stops at
goes through ``translate``, then it resumes), and then compares:

- every result (physical address, or the fault's cause and level);
- every counter: ``MmuStats`` (with ``PrefetchStats``), each level's
  ``TlbStats``, the page-walk cache's own counters;
- the TLB way by way (every field of every entry, LRU/FIFO stamps, the
  clock, PLRU bits, the random policy's xorshift state, the lookup maps),
  the page-walk cache's LRU order, the prefetcher's history and the
  deferred queue;
- guest memory byte for byte (the accessed/dirty bits walks set).

It also checks that the kernel only hands back addresses that really fault,
so the comparisons are not passing because everything fell back.
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

from vmopt import Mmu, PageFault, PageTable, PhysicalMemory, PrefetchConfig, PwcConfig, TlbConfig
from vmopt.batch import _kernel as K
from vmopt.batch.vectorized import _Regions, translate_array, unsupported_reason
from vmopt.paging.riscv import RiscV
from vmopt.paging.x86 import X86_64
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
        return TlbConfig(16, 4, policy, (PAGE, big, huge), seed=seed)
    if hierarchy == "fa":
        return TlbConfig(8, 8, policy, (PAGE, big), seed=seed)
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
    mem: PhysicalMemory
    pt: PageTable
    mmu: Mmu
    fallbacks: int = 0
    kernel_done: int = 0


def build(sc: Scenario) -> Guest:
    """One guest of the scenario (deterministic: two builds are identical)."""
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, sc.fmt, update_ad=sc.update_ad)
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

    mmu = Mmu(
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
        return ("fault", f.cause, f.level)


def batch_vectorized(g: Guest, addrs: list[int], access: str, user: bool) -> list[Any]:
    """The engine's loop: kernel prefix, the stopping address through ``translate``, resume."""
    arr = np.array(addrs, dtype=np.uint64)
    out: list[Any] = []
    pos = 0
    while pos < len(arr):
        res, done = translate_array(g.mmu, arr[pos:], access, user)
        assert res.dtype == np.uint64 and len(res) == len(arr) - pos
        assert not res[done:].any()
        out.extend(res[:done].tolist())
        g.kernel_done += done
        pos += done
        if pos < len(arr):
            faults = g.mmu.stats.faults
            out.append(scalar_one(g, int(arr[pos]), access, user))
            # The kernel only stops where the scalar path faults (raised or demand-paged).
            assert g.mmu.stats.faults > faults, f"kernel stopped at {int(arr[pos]):#x} which does not fault"
            g.fallbacks += 1
            pos += 1
    return out


def apply(g: Guest, op: tuple[Any, ...], vectorized: bool) -> Any:
    kind = op[0]
    mmu = g.mmu
    if kind == "batch":
        _, addrs, access, user = op
        if vectorized:
            return batch_vectorized(g, addrs, access, user)
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


def entry_state(e: Any) -> Any:
    if e is None:
        return None
    return (e.vpn, e.shift, e.asid, e.page_pa, e.rights, e.dirty, e.level, e.prefetched, e.used, e.stamp,
            e.set, e.way, e.key)  # fmt: skip


def state(g: Guest) -> dict[str, Any]:
    """Everything translate_array must leave exactly as the scalar loop does."""
    mmu = g.mmu
    out: dict[str, Any] = {"mmu": mmu.stats.as_dict(), "levels": [lv.stats.as_dict() for lv in mmu.levels]}
    arrays = []
    for level in mmu.levels:
        for arr in level.arrays:
            maps = {}
            for shift, m in arr._maps.items():
                for key, e in m.items():
                    assert arr._table[e.set][e.way] is e, "lookup map and ways disagree"
                    assert key == e.key and e.shift == shift
                maps[shift] = sorted((key, e.set, e.way) for key, e in m.items())
            arrays.append({
                "ways": [[entry_state(e) for e in row] for row in arr._table],
                "maps": maps, "clock": arr._clock, "plru": list(arr._plru), "rng": arr._rng.state,
                "globals": arr._globals, "len": len(arr),
            })  # fmt: skip
            assert arr.stats is level.stats
    out["arrays"] = arrays
    if mmu.pwc is not None:
        out["pwc"] = ({k: list(c) for k, c in mmu.pwc._caches.items()}, mmu.pwc.lookups, mmu.pwc.hits)
    out["queue"] = list(mmu._queue)
    out["prefetcher"] = None if mmu._prefetcher is None else dict(vars(mmu._prefetcher))
    out["memory"] = {pa: g.mem.read(pa, PAGE) for pa in g.mem.iter_resident()}
    return out


def compare(ref: Guest, fast: Guest) -> None:
    a, b = state(ref), state(fast)
    for key in a:
        assert a[key] == b[key], f"{key} differs"


def run_scenario(sc: Scenario) -> tuple[Guest, Guest]:
    ref, fast = build(sc), build(sc)
    assert unsupported_reason(fast.mmu) is None
    for op in sc.ops:
        assert apply(ref, op, False) == apply(fast, op, True), f"results of {op[0]} differ"
        compare(ref, fast)
    return ref, fast


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
    ref, fast = run_scenario(sc)
    assert fast.fallbacks == ref.mmu.stats.faults > 0  # each fault, and nothing else, fell back
    assert fast.kernel_done == 3 * len(batch) - fast.fallbacks


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
        assert fast.fallbacks == 0 and fast.kernel_done == 2 * len(sweep)
        if prefetch is not None and prefetch.mode == "immediate":
            assert fast.mmu.stats.prefetch.useful > 0


def test_demand_paging_through_the_fallback() -> None:
    """First touches fault into the handler one by one; everything else stays compiled."""
    sc = Scenario(
        fmt="x86_64", hierarchy="two", policy="lru", seed=0, prefetch=PrefetchConfig("next_page"),
        pwc=PwcConfig(), asid=0, update_ad=True, shootdown=True, demand=True, walk_ref_cycles=20, pages=[],
        ops=[("batch", [0x4000_0000 + i * 512 for i in range(48 * 8)], "w", True)],
    )  # fmt: skip
    ref, fast = run_scenario(sc)
    assert ref.mmu.stats.demand_faults == 36  # 48 pages, every fourth refused by the handler
    assert fast.fallbacks == 36 + 12 * 8  # first touches, and every access to a refused page


# -- the compiled walker against the formats' own walks -----------------------------------------------


@st.composite
def pte_trees(draw: st.DrawFn) -> tuple[Any, int, list[int], list[bool], int]:
    """A random path of PTEs (random bits, usually linked to the next table) and the VA that walks it."""
    if draw(st.booleans()):
        fmt: Any = X86_64(draw(st.sampled_from([4, 5])), maxphyaddr=draw(st.integers(36, 52)),
                          nxe=draw(st.booleans()), wp=draw(st.booleans()), smep=draw(st.booleans()),
                          smap=draw(st.booleans()))  # fmt: skip
    else:
        fmt = RiscV(draw(st.sampled_from([3, 4])), sum=draw(st.booleans()), mxr=draw(st.booleans()))
    ptes = []
    for _level in range(fmt.levels):
        raw = draw(st.integers(0, (1 << 64) - 1))
        bias = draw(st.integers(0, 5))
        if bias:  # present, linked, mostly-canonical bits: walks go deep
            raw |= 1
            raw &= ~(((1 << 64) - 1) << 52) if bias > 2 else (1 << 64) - 1
        ptes.append(raw)
    link = [draw(st.integers(0, 4)) > 0 for _ in range(fmt.levels)]
    va = draw(st.integers(0, (1 << 64) - 1))
    if draw(st.integers(0, 4)):
        va = fmt.canonicalize(va)
    return fmt, va, ptes, link, draw(st.sampled_from([1, 2, 4]))


def lay_out(fmt: Any, va: int, ptes: list[int], link: list[bool]) -> tuple[PhysicalMemory, PageTable]:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, fmt)
    table = pt.root
    for depth, raw in enumerate(ptes):
        level = fmt.levels - 1 - depth
        nxt = mem.alloc(2 * MiB if depth == fmt.levels - 2 else PAGE)  # aligned for a 2 MiB leaf too
        pte = raw
        if link[depth]:
            if isinstance(fmt, X86_64):
                pte = (raw & ~(((1 << 52) - 1) & ~0xFFF)) | nxt
            else:
                pte = (raw & ~(((1 << 44) - 1) << 10)) | (nxt >> 2)
        mem.write_u64(table + ((va >> (12 + 9 * level)) & 0x1FF) * 8, pte)
        table = nxt
    return mem, pt


@settings(max_examples=300, deadline=None)
@given(pte_trees())
def test_compiled_walker_matches_format_walk(case: tuple[Any, int, list[int], list[bool], int]) -> None:
    """Region, refs, level, frame, rights, G/D bits, faults; and the A/D bits a replay sets."""
    fmt, va, ptes, link, replay = case
    mem, pt = lay_out(fmt, va, ptes, link)
    mmu = Mmu(pt, TlbConfig(4, 4))
    regions = _Regions(mmu, 1)
    regions.resolve(np.array([va >> 12], dtype=np.int64))
    assert regions.n == 1
    first, row = int(regions.pstart[0]), regions.pinfo[0].tolist()
    top = fmt.levels - 1
    try:
        t = fmt.walk(mem, pt.root, va, "p", False, False)
    except PageFault as f:
        level = -1 if f.level is None else f.level
        assert (row[K.P_FAULT], row[K.P_LEVEL]) == (1, level)
        assert row[K.P_REFS] == (0 if f.level is None else top - f.level + 1)
        assert row[K.P_NPAGES] == (1 if f.level is None else 1 << (9 * f.level))
        probe = "p"
        row_flag = 4
    else:
        assert row[K.P_FAULT] == 0
        assert (row[K.P_REFS], row[K.P_LEVEL], row[K.P_PA]) == (t.memory_refs, t.level, t.page_pa)
        assert (row[K.P_RIGHTS], row[K.P_GLOBAL], row[K.P_DIRTY]) == (mmu._rights(t), t.global_, t.dirty)
        assert row[K.P_NPAGES] << 12 == t.page_size and row[K.P_PTE] == t.pte_pa
        probe = "w" if replay == 2 else "p"
        row_flag = replay
    assert first == (va >> 12) & ~(row[K.P_NPAGES] - 1)
    # Replay on the snapshot == the real walk's A/D writes (walks the kernel replays succeeded).
    twin_mem, twin_pt = lay_out(fmt, va, ptes, link)
    try:
        twin_pt.walk(va, probe)
    except PageFault as f:
        if row_flag != 4 and f.cause == "protection":
            return  # a write the rights forbid is never replayed
    regions.pinfo[0, K.P_WALKED] = row_flag
    regions.replay_ad()
    assert {pa: mem.read(pa, PAGE) for pa in mem.iter_resident()} == {
        pa: twin_mem.read(pa, PAGE) for pa in twin_mem.iter_resident()
    }


# -- the contract's edges --------------------------------------------------------------------------


def small_guest(policy: str = "lru", **kw: Any) -> tuple[PageTable, Mmu]:
    mem = PhysicalMemory(256 * MiB)
    pt = PageTable(mem, "x86_64")
    for i in range(8):
        pt.map(0x1000 * (i + 1), mem.alloc(), PAGE, "rw")
    return pt, Mmu(pt, TlbConfig(8, 2, policy), **kw)


def test_inputs() -> None:
    _, mmu = small_guest()
    out, done = translate_array(mmu, np.array([], dtype=np.uint64))
    assert (len(out), done) == (0, 0)
    out, done = translate_array(mmu, [0x1008, 0x2010])  # any integer sequence
    assert done == 2 and out.tolist() == [mmu.translate(0x1008), mmu.translate(0x2010)]
    out, done = translate_array(mmu, np.array([0x1008, 0x3000, -5, 0x2000], dtype=np.int64))
    assert done == 2 and out[2:].tolist() == [0, 0]  # stops before a negative address
    assert translate_array(mmu, np.zeros((2, 2), dtype=np.uint64))[1] == 0
    assert translate_array(mmu, np.array([4096.0]))[1] == 0  # not integers: scalar path


def test_stops_exactly_at_faults() -> None:
    pt, mmu = small_guest()
    pt.protect(0x3000, PAGE, "r")
    addrs = np.array([0x1000, 0x2000, 0x3008, 0x4000, 0x9000], dtype=np.uint64)
    assert translate_array(mmu, addrs, "r")[1] == 4  # 0x9000 is unmapped
    assert translate_array(mmu, addrs, "w")[1] == 2  # 0x3008 is read-only
    assert translate_array(mmu, addrs[3:], "x", True)[1] == 0  # supervisor page, user fetch
    assert mmu.stats.faults == 0  # stopping is not faulting: the scalar path does that


def test_unsupported_configurations_fall_back() -> None:
    class Custom(Mmu):
        def translate(self, va: int, access: str = "r", user: bool = False) -> int:
            return super().translate(va, access, user)

    pt, _ = small_guest()
    custom = Custom(pt, TlbConfig(8, 2))
    assert unsupported_reason(custom) is not None
    assert translate_array(custom, np.array([0x1000], dtype=np.uint64))[1] == 0
    _, mmu = small_guest()
    assert unsupported_reason(mmu, "q") is not None
    assert translate_array(mmu, np.array([0x1000], dtype=np.uint64), "q")[1] == 0
    mem = PhysicalMemory(16 * MiB)
    svade = PageTable(mem, RiscV(3, svade=True))
    svade.map(0x1000, mem.alloc(), PAGE, "rw")
    assert translate_array(Mmu(svade, TlbConfig(4, 4)), np.array([0x1000], dtype=np.uint64))[1] == 0
    assert translate_array(Mmu(svade, TlbConfig(4, 4)), np.array([0x1000], dtype=np.uint64))[0].tolist() == [
        0
    ]


def test_mirror_follows_scalar_changes_between_calls() -> None:
    """The kernel's cached copy of the TLB must see what translate, flushes and resets did."""
    for policy in POLICIES:
        pt, mmu = small_guest(policy, prefetch=PrefetchConfig("next_page"))
        pt2, ref = small_guest(policy, prefetch=PrefetchConfig("next_page"))
        g, r = Guest(pt.mem, pt, mmu), Guest(pt2.mem, pt2, ref)
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


def test_translate_batch_uses_the_kernel() -> None:
    """``Mmu.translate_batch`` on an array gives the scalar answers (through the engine)."""
    _, mmu = small_guest()
    _, ref = small_guest()
    addrs = np.array([0x1000 * (i % 8 + 1) + i for i in range(200)], dtype=np.uint64)
    got = mmu.translate_batch(addrs)
    assert list(got) == [ref.translate(int(a)) for a in addrs]
    assert mmu.stats == ref.stats


def test_replay_never_undoes_a_concurrent_change() -> None:
    """A/D write-back is compare-and-set: a PTE cleared meanwhile (an unmap) stays cleared."""
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    pt.map(0x1000, mem.alloc(), PAGE, "rw")
    pt.map(0x2000, mem.alloc(), PAGE, "rw")
    regions = _Regions(Mmu(pt, TlbConfig(4, 4)), 1)
    regions.resolve(np.array([1, 2], dtype=np.int64))
    regions.pinfo[: regions.n, K.P_WALKED] = 2
    leaf1, leaf2 = (int(regions.pinfo[r, K.P_PTE]) for r in range(2))
    mem.write_u64(leaf1, 0)  # "unmapped" after the snapshot, before the write-back
    regions.replay_ad()
    assert mem.read_u64(leaf1) == 0
    assert mem.read_u64(leaf2) & 0x60 == 0x60  # the other page got A and D
    assert all(pte & 0x20 for _, _, pte in pt.walk_path(0x2000)[:-1])  # and its tables A


def test_switching_address_spaces_between_batches() -> None:
    """Two page tables with different mappings, ASIDs and global pages, one MMU switching."""

    def guest() -> tuple[PageTable, PageTable, Mmu]:
        mem = PhysicalMemory(256 * MiB)
        a, b = PageTable(mem, "x86_64"), PageTable(mem, "x86_64")
        for i in range(16):
            a.map(0x1000 * (i + 1), mem.alloc(), PAGE, "rw", user=True, global_=i < 2)
            if i % 3:
                b.map(0x1000 * (i + 1), mem.alloc(), PAGE, "r", user=True)
        return a, b, Mmu(a, [TlbConfig(8, 2, "plru"), TlbConfig(32, 4, "fifo", latency=5, name="l2")])

    pa, pb, ref = guest()
    qa, qb, fast = guest()
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
    assert g_fast.kernel_done > 500


def test_the_cached_mirror_does_not_keep_the_mmu_alive() -> None:
    import gc
    import weakref

    from vmopt.batch import vectorized

    _, mmu = small_guest()
    translate_array(mmu, np.array([0x1000, 0x2000], dtype=np.uint64))
    assert mmu in vectorized._MIRRORS
    ref = weakref.ref(mmu)
    del mmu
    gc.collect()
    assert ref() is None


def test_facade_arrays_match_lists() -> None:
    """``MemoryOptimizer.batch_access``: arrays (kernel, demand paging in between) == lists."""
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
