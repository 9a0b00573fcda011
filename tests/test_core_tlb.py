"""The Rust core's TLB arrays and MMU against the pure-Python reference, step by step.

Two hypothesis state machines drive random operation sequences through the
product (``vmopt``, backed by ``vmopt._core``) and the reference
(``tests/reference``) side by side and compare, after every step, every
result (physical addresses, faults with class, message, cause and level,
victims, flush counts), every counter, the TLB contents way by way with
their replacement state, the page-walk cache's LRU order, the prefetcher's
history, the deferred queue and guest memory byte for byte.

- :class:`ArrayMachine`: one standalone ``Tlb`` of every policy, several
  geometries and page-size mixes, ASIDs, global entries, prefetched
  entries, in-place updates and every flush.
- :class:`MmuMachine`: an ``Mmu`` over x86-64 (4 and 5 levels), Sv39 and
  Sv48 tables, one- and two-level hierarchies, L1s split by page size and
  by side (a ``SplitL1`` ITLB and DTLB, alone or over an STLB), page-walk cache
  on/off, prefetchers none/next_page/stride, immediate/deferred, ASIDs and
  switches between two tables, invlpg/flush/flush_asid/flush_range, map,
  unmap and protect between translations, demand paging through a fault
  handler, scalar and batch translation of reads, writes and fetches in
  user and supervisor mode, and batches of mixed kinds (``translate_kinds_into``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from reference.tlb.tlb import Tlb as RefTlb
from reference.tlb.tlb import TlbEntry as RefEntry
from tlb_state import array_state, assert_same, entry_state, mmu_state, outcome
from vmopt import (
    Mmu,
    PageFault,
    PageTable,
    Perm,
    PhysicalMemory,
    PrefetchConfig,
    PwcConfig,
    SplitL1,
    TlbConfig,
)
from vmopt.tlb.mmu import DEFAULT_TLB_LEVELS
from vmopt.tlb.tlb import GLOBAL_ASID, Tlb, TlbEntry

pytestmark = pytest.mark.slow

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB
POLICIES = ("lru", "fifo", "random", "plru")
FORMATS = ("x86_64", "x86_64_5level", "sv39", "sv48")
MACHINE_SETTINGS = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- one array ---------------------------------------------------------------------------------------

GEOMETRIES = [(8, 8), (8, 1), (16, 4), (8, 2), (32, 4), (4, 4), (128, 128)]
SIZE_MIXES = [(PAGE,), (PAGE, 2 * MiB), (2 * MiB,), (PAGE, 2 * MiB, GiB)]
# A small universe so that sets conflict and lookups hit: a few 4 KiB pages of a few
# 2 MiB regions of two 1 GiB regions, at a few offsets.
va_st = st.builds(
    lambda g, r, p, off: g * GiB + r * 2 * MiB + p * PAGE + off,
    st.integers(0, 1),
    st.integers(0, 2),
    st.sampled_from((0, 1, 2, 3, 5, 511)),
    st.sampled_from((0, 8, 4095)),
)
asid_st = st.sampled_from((0, 1, 2))
opt_asid_st = st.none() | asid_st
size_st = st.integers(1, 64 * PAGE) | st.integers(64 * PAGE + 1, 3 * GiB)


class ArrayMachine(RuleBasedStateMachine):
    """A standalone product ``Tlb`` against the reference ``Tlb``."""

    @initialize(
        geometry=st.sampled_from(GEOMETRIES),
        policy=st.sampled_from(POLICIES),
        sizes=st.sampled_from(SIZE_MIXES),
        seed=st.integers(-3, 3) | st.just((1 << 64) + 5),
    )
    def setup(self, geometry: tuple[int, int], policy: str, sizes: tuple[int, ...], seed: int) -> None:
        entries, ways = geometry
        self.cfg = TlbConfig(entries, ways, policy, sizes, seed=seed, name="arr")
        self.prod = Tlb(self.cfg)
        self.ref = RefTlb(self.cfg)
        self.shifts = [s.bit_length() - 1 for s in self.cfg.page_sizes]

    @rule(va=va_st, asid=asid_st)
    def lookup(self, va: int, asid: int) -> None:
        assert entry_state(self.prod.lookup(va, asid)) == entry_state(self.ref.lookup(va, asid))

    @rule(va=va_st, asid=asid_st)
    def peek(self, va: int, asid: int) -> None:
        assert entry_state(self.prod.peek(va, asid)) == entry_state(self.ref.peek(va, asid))

    @rule(
        va=va_st, k=st.integers(0, 2), asid=asid_st, global_=st.booleans(), prefetched=st.booleans(),
        used=st.booleans(), dirty=st.booleans(), rights=st.integers(0, 63),
    )  # fmt: skip
    def insert(
        self,
        va: int,
        k: int,
        asid: int,
        global_: bool,
        prefetched: bool,
        used: bool,
        dirty: bool,
        rights: int,
    ) -> None:
        shift = self.shifts[k % len(self.shifts)]
        code = GLOBAL_ASID if global_ else asid
        vpn = va >> shift
        args = (vpn, shift, code, (vpn + 7) << shift, rights, dirty, k)
        p, r = TlbEntry(*args), RefEntry(*args)
        for e in (p, r):
            e.prefetched, e.used = prefetched, used and prefetched
        assert entry_state(self.prod.insert(p)) == entry_state(self.ref.insert(r))
        assert entry_state(p) == entry_state(r)  # the inserted entry knows its way

    @rule(size=st.sampled_from((PAGE, 8 * KiB, 2 * MiB, 4 * MiB, GiB, 2 * GiB)))
    def fits(self, size: int) -> None:
        assert self.prod.fits(size) == self.ref.fits(size)

    @rule()
    def flush(self) -> None:
        assert self.prod.flush() == self.ref.flush()

    @rule(asid=st.sampled_from((0, 1, 2, GLOBAL_ASID)))
    def flush_asid(self, asid: int) -> None:
        assert self.prod.flush_asid(asid) == self.ref.flush_asid(asid)

    @rule(va=va_st, asid=opt_asid_st)
    def flush_va(self, va: int, asid: int | None) -> None:
        assert self.prod.flush_va(va, asid) == self.ref.flush_va(va, asid)

    @rule(va=va_st, size=size_st, asid=opt_asid_st)
    def flush_range(self, va: int, size: int, asid: int | None) -> None:
        assert self.prod.flush_range(va, size, asid) == self.ref.flush_range(va, size, asid)

    @invariant()
    def same_state(self) -> None:
        assert_same(array_state(self.prod), array_state(self.ref))


TestArray = ArrayMachine.TestCase
TestArray.settings = settings(MACHINE_SETTINGS, max_examples=60, stateful_step_count=60)


# -- the MMU --------------------------------------------------------------------------------------------

SMALL = 0x4000_0000  # 48 pages of 4 KiB, one page-table page
BIG = 0x8000_0000  # 2 MiB pages
HUGE = 0x10_0000_0000  # a 1 GiB page
SMALL_PAGES = 48


def upper_base(fmt: str) -> int:
    """The first page of the canonical upper half."""
    bits = {"x86_64": 48, "x86_64_5level": 57, "sv39": 39, "sv48": 48}[fmt]
    return ((1 << 64) - 1) ^ ((1 << (bits - 1)) - 1)


def hierarchy(layout: str, policy: str, seed: int) -> Any:
    """Small hierarchies, so that sets conflict and evict."""
    big = 2 * MiB
    if layout == "one":
        return TlbConfig(16, 4, policy, (PAGE, big, GiB), name="l1", seed=seed)
    if layout == "fa":
        return TlbConfig(8, 8, policy, (PAGE, big), name="l1", seed=seed)
    if layout == "two":
        return [
            TlbConfig(8, 2, policy, (PAGE,), 1, "l1", seed),
            TlbConfig(32, 4, policy, (PAGE, big), 7, "l2", seed + 1),
        ]
    if layout == "split":
        return [
            [
                TlbConfig(8, 4, policy, (PAGE,), 1, "l1", seed),
                TlbConfig(4, 2, policy, (big, GiB), 1, "l1b", seed),
            ],
            TlbConfig(16, 4, policy, (PAGE, big), 6, "l2", seed + 2),
            TlbConfig(64, 8, policy, (PAGE, big, GiB), 20, "l3", seed + 3),
        ]
    if layout in ("side", "side_only"):
        split = SplitL1(
            TlbConfig(4, 2, policy, (PAGE, big), 1, "", seed + 4),
            [TlbConfig(8, 4, policy, (PAGE,), 1, "", seed), TlbConfig(4, 4, policy, (big, GiB), 1, "", seed)],
        )
        if layout == "side_only":
            return [split]
        return [split, TlbConfig(16, 4, policy, (PAGE, big), 6, "l2", seed + 2)]
    return DEFAULT_TLB_LEVELS


class Guest:
    """One guest of either kind: memory, two page tables, an MMU."""

    def __init__(self, product: bool, sc: dict[str, Any]) -> None:
        mem_cls, pt_cls, mmu_cls = (
            (PhysicalMemory, PageTable, Mmu) if product else (RefMemory, RefPageTable, RefMmu)
        )
        self.mem = mem_cls(4 * GiB)
        fmt = sc["fmt"]
        self.tables = [pt_cls(self.mem, fmt, update_ad=sc["update_ad"]) for _ in range(2)]
        a, b = self.tables
        for region, i, perms, user, global_ in sc["pages"]:
            size = {"small": PAGE, "big": 2 * MiB, "huge": GiB, "upper": PAGE}[region]
            base = (
                upper_base(fmt) if region == "upper" else {"small": SMALL, "big": BIG, "huge": HUGE}[region]
            )
            a.map(base + i * size, self.mem.alloc(size), size, perms, user=user, global_=global_)
        for i, perms in sc["b_pages"]:
            b.map(SMALL + i * PAGE, self.mem.alloc(), PAGE, perms, user=True)
        self.handler_perms = "rwx" if fmt.startswith("sv") else "rw"
        self.mmu = mmu_cls(
            a, tlb=hierarchy(sc["layout"], sc["policy"], sc["seed"]), prefetch=sc["prefetch"],
            asid=sc["asid"], pwc=sc["pwc"], shootdown=sc["shootdown"], walk_ref_cycles=sc["cycles"],
            fault_handler=self.handler if sc["demand"] else None,
        )  # fmt: skip

    def handler(self, va: int, access: str, user: bool) -> bool:
        """Demand paging of the small region, except every fourth page."""
        page = va & ~(PAGE - 1)
        if not SMALL <= page < SMALL + SMALL_PAGES * PAGE or (page >> 12) % 4 == 3:
            return False
        self.mmu.page_table.map(page, self.mem.alloc(), PAGE, self.handler_perms, user=True)
        return True

    def table_bytes(self) -> list[tuple[int, bytes]]:
        """Every table page of both tables (A/D bits included)."""
        return [(pa, self.mem.read(pa, PAGE)) for pt in self.tables for pa in pt.table_frames()]


def perms_st(fmt: str) -> st.SearchStrategy[str]:
    if fmt.startswith("x86"):
        return st.sampled_from(["r", "rw", "rx", "rwx", "rw", "rwx"])
    return st.sampled_from(["r", "rw", "rx", "rwx", "x", "rw", "rwx"])


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    fmt = draw(st.sampled_from(FORMATS))
    layout = draw(
        st.sampled_from(["one", "fa", "two", "two", "split", "split", "side", "side", "side_only", "default"])
    )
    kind = draw(st.sampled_from(["none", "next_page", "stride"]))
    prefetch = None
    if kind != "none":
        prefetch = PrefetchConfig(
            kind, degree=draw(st.integers(1, 3)), mode=draw(st.sampled_from(["immediate", "deferred"])),
            queue_limit=draw(st.integers(1, 6)),
        )  # fmt: skip
    perms = perms_st(fmt)
    mode = draw(st.booleans())
    users = st.integers(0, 7).map(lambda k: mode if k else not mode)
    pages: list[tuple[str, int, str, bool, bool]] = []
    for i in range(draw(st.integers(4, SMALL_PAGES))):
        if draw(st.integers(0, 9)):  # holes
            pages.append(("small", i, draw(perms), draw(users), draw(st.integers(0, 7)) == 0))
    for i in range(draw(st.integers(0, 3))):
        pages.append(("big", i, draw(perms), draw(users), False))
    if draw(st.booleans()):
        pages.append(("huge", 0, draw(perms), draw(users), False))
    for i in range(draw(st.integers(0, 2))):
        pages.append(("upper", i, draw(perms), False, True))
    b_pages = [(i, draw(perms)) for i in range(0, SMALL_PAGES, draw(st.integers(2, 6)))]
    policy = "lru" if layout == "default" else draw(st.sampled_from(POLICIES))
    return {
        "fmt": fmt, "layout": layout, "policy": policy,
        "seed": draw(st.integers(0, 3)), "prefetch": prefetch,
        "pwc": draw(st.sampled_from([None, PwcConfig(), PwcConfig(entries=2, latency=3)])),
        "asid": draw(st.integers(0, 3)), "update_ad": draw(st.integers(0, 4)) > 0,
        "shootdown": draw(st.integers(0, 4)) > 0, "demand": draw(st.integers(0, 2)) == 0,
        "cycles": draw(st.integers(0, 30)), "pages": pages, "b_pages": b_pages, "user": mode,
    }  # fmt: skip


@st.composite
def addresses(draw: st.DrawFn) -> int:
    """Mostly in or near the mapped regions; sometimes odd (non-canonical, top of memory)."""
    k = draw(st.integers(0, 19))
    if k < 11:
        return SMALL + draw(st.integers(0, SMALL_PAGES * PAGE - 1))
    if k < 14:
        return SMALL + draw(st.integers(0, SMALL_PAGES - 1)) * PAGE + 8
    if k < 16:
        return BIG + draw(st.integers(0, 4 * 2 * MiB - 1))
    if k < 17:
        return HUGE + draw(st.integers(0, GiB - 1))
    if k < 18:
        return draw(st.sampled_from([0, 0x7FFF_FFFF_F000, 1 << 47, 0xDEAD_0000_0000_1000, (1 << 64) - 8]))
    return draw(st.sampled_from([upper_base(f) + off for f in FORMATS for off in (0, 8, PAGE + 16)]))


access_st = st.sampled_from(["r", "r", "w", "w", "x"])
small_page_st = st.integers(0, SMALL_PAGES - 1).map(lambda i: SMALL + i * PAGE)


class MmuMachine(RuleBasedStateMachine):
    """A product ``Mmu`` (and its memory and tables) against the reference, step by step."""

    @initialize(sc=scenarios())
    def setup(self, sc: dict[str, Any]) -> None:
        self.sc = sc
        self.prod = Guest(True, sc)
        self.ref = Guest(False, sc)
        self.user = sc["user"]

    def both(self, fn: Any) -> Any:
        got, want = outcome(lambda: fn(self.prod)), outcome(lambda: fn(self.ref))
        assert got == want
        return got

    @rule(va=addresses(), access=access_st, flip=st.integers(0, 5))
    def translate(self, va: int, access: str, flip: int) -> None:
        user = self.user if flip else not self.user
        self.both(lambda g: g.mmu.translate(va, access, user))

    @rule(
        vas=st.lists(addresses(), max_size=60) | st.builds(
            lambda n, stride: [SMALL + k * stride * PAGE + 16 for k in range(n)] * 2,
            st.integers(1, 24), st.sampled_from([1, 1, 2, 3]),
        ),
        access=access_st, flip=st.integers(0, 5),
    )  # fmt: skip
    def batch(self, vas: list[int], access: str, flip: int) -> None:
        """The product's core batch against the reference's scalar loop."""
        user = self.user if flip else not self.user
        res = self.prod.mmu.translate_batch(np.array(vas, dtype=np.uint64), access, user, errors="collect")
        got = [
            ("ok", int(res.values[i])) if res.ok[i] else outcome(lambda e=res.errors[i]: _raise(e))
            for i in range(len(vas))
        ]
        want = [outcome(lambda va=va: self.ref.mmu.translate(va, access, user)) for va in vas]
        assert got == want

    @rule(
        ops=st.lists(st.tuples(addresses(), st.sampled_from([0, 0, 1, 2, 2])), max_size=60),
        flip=st.integers(0, 5),
    )
    def batch_kinds(self, ops: list[tuple[int, int]], flip: int) -> None:
        """The product's mixed-kind core batch against the reference's scalar loop."""
        user = self.user if flip else not self.user
        vas = np.array([va for va, _ in ops], dtype=np.uint64)
        kinds = np.array([k for _, k in ops], dtype=np.uint8)
        out = np.zeros(len(ops), dtype=np.uint64)
        got, pos = [], 0
        while pos < len(ops):
            done, error = self.prod.mmu.translate_kinds_into(vas[pos:], kinds[pos:], out[pos:], user)
            got += [("ok", int(pa)) for pa in out[pos : pos + done]]
            pos += done
            if error is not None:
                got.append(
                    outcome(
                        lambda e=error, i=pos: self.prod.mmu.handle_fault(
                            int(vas[i]), "rwx"[kinds[i]], user, e
                        )
                    )
                )
                pos += 1
        want = [outcome(lambda va=va, k=k: self.ref.mmu.translate(va, "rwx"[k], user)) for va, k in ops]
        assert got == want

    @rule(va=st.sampled_from([-4096, -1, 1 << 64, (1 << 64) + 5]), access=access_st)
    def translate_out_of_range(self, va: int, access: str) -> None:
        self.both(lambda g: g.mmu.translate(va, access, self.user))

    @rule(access=st.sampled_from(["q", "p", "", "rw"]))
    def translate_bad_access(self, access: str) -> None:
        self.both(lambda g: g.mmu.translate(SMALL, access, self.user))

    @rule(va=small_page_st, which=st.integers(0, 1), perms=st.sampled_from(["r", "rw", "rwx", "rx"]))
    def map(self, va: int, which: int, perms: str) -> None:
        self.both(lambda g: g.tables[which].map(va, g.mem.alloc(), PAGE, perms, user=self.user))

    @rule(va=small_page_st, which=st.integers(0, 1))
    def unmap(self, va: int, which: int) -> None:
        self.both(lambda g: g.tables[which].unmap(va, PAGE))

    @rule(va=small_page_st, which=st.integers(0, 1), perms=st.sampled_from(["r", "rw", "rx", "rwx"]))
    def protect(self, va: int, which: int, perms: str) -> None:
        self.both(lambda g: g.tables[which].protect(va, PAGE, perms))

    @rule(va=addresses())
    def invlpg(self, va: int) -> None:
        self.both(lambda g: g.mmu.invlpg(va))

    @rule()
    def flush(self) -> None:
        self.both(lambda g: g.mmu.flush())

    @rule(asid=st.integers(0, 3))
    def flush_asid(self, asid: int) -> None:
        self.both(lambda g: g.mmu.flush_asid(asid))

    @rule(
        va=small_page_st,
        size=st.sampled_from([1, PAGE, 3 * PAGE, 80 * PAGE, 4 * MiB]),
        asid=st.none() | st.integers(0, 3),
    )
    def flush_range(self, va: int, size: int, asid: int | None) -> None:
        self.both(lambda g: g.mmu.flush_range(va, size, asid))

    @rule(which=st.integers(0, 1), asid=st.none() | st.integers(0, 3), flush=st.booleans())
    def switch(self, which: int, asid: int | None, flush: bool) -> None:
        self.both(lambda g: g.mmu.switch(g.tables[which], asid, flush=flush))

    @rule()
    def process_prefetch(self) -> None:
        self.both(lambda g: g.mmu.process_prefetch())

    @rule()
    def reset_stats(self) -> None:
        self.both(lambda g: g.mmu.reset_stats())

    @rule(cycles=st.integers(0, 40))
    def set_walk_cost(self, cycles: int) -> None:
        for g in (self.prod, self.ref):
            g.mmu.walk_ref_cycles = cycles

    @precondition(lambda self: hasattr(self, "prod"))
    @rule(va=addresses())
    def cached(self, va: int) -> None:
        self.both(lambda g: g.mmu.cached(va))

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "prod"):
            return
        assert_same(mmu_state(self.prod.mmu), mmu_state(self.ref.mmu))
        assert self.prod.table_bytes() == self.ref.table_bytes()
        for pt_p, pt_r in zip(self.prod.tables, self.ref.tables, strict=True):
            assert list(pt_p.mappings()) == list(pt_r.mappings())


def _raise(exc: BaseException) -> Any:
    raise exc


TestMmu = MmuMachine.TestCase
TestMmu.settings = MACHINE_SETTINGS


def test_install_page_resolves_a_fault_as_a_handler_does() -> None:
    """``Mmu.install_page`` == a handler that allocates, fills and maps, then the restart."""
    data = bytes(range(256)) * 16
    vas = [SMALL + (i * 7 % 32) * PAGE + 8 * i for i in range(64)]  # first touches and hits

    def guest(product: bool) -> tuple[Any, Any, Any]:
        mem = (PhysicalMemory if product else RefMemory)(256 * MiB)
        pt = (PageTable if product else RefPageTable)(mem, "x86_64")
        levels = [TlbConfig(8, 2, "lru", name="l1"), TlbConfig(16, 4, "plru", name="l2")]
        return mem, pt, (Mmu if product else RefMmu)(pt, levels, "next_page", pwc=True)

    mem_r, pt_r, ref = guest(False)

    def handler(va: int, access: str, user: bool) -> bool:
        frame = mem_r.alloc()
        mem_r.write(frame, data)
        pt_r.map(va & ~(PAGE - 1), frame, PAGE, "rw", user=True)
        return True

    ref.fault_handler = handler
    mem_p, pt_p, mmu = guest(True)
    got, want = [], []
    for va in vas:
        want.append(ref.translate(va, "w", True))
        try:
            got.append(mmu.translate(va, "w", True))
        except PageFault as fault:
            assert fault.cause == "not_present"
            placed = mmu.install_page(va, "w", True, va & ~(PAGE - 1), PAGE, [0], data, Perm.R | Perm.W, True)
            assert placed is not None
            pa, frame, node = placed
            assert node == 0 and pa == frame + (va & (PAGE - 1))
            got.append(pa)
    assert got == want
    assert mmu.stats.demand_faults == ref.stats.demand_faults == 32
    assert_same(mmu_state(mmu, mem_p), mmu_state(ref, mem_r))
    assert list(pt_p.mappings()) == list(pt_r.mappings())
    # No room on the nodes asked for: nothing changes.
    before = mmu_state(mmu, mem_p)
    assert mmu.install_page(HUGE + 8, "r", True, HUGE, GiB, [0], None, Perm.R, True) is None
    assert_same(mmu_state(mmu, mem_p), before)


def test_unnamed_levels_are_named_by_position() -> None:
    """Issue 11: arrays without a name are l1, l2, ... (split arrays l1_2, ...), as in the reference."""
    for product in (True, False):
        mem = (PhysicalMemory if product else RefMemory)(64 * MiB)
        pt = (PageTable if product else RefPageTable)(mem, "x86_64")
        mmu_cls = Mmu if product else RefMmu
        mmu = mmu_cls(pt, [TlbConfig(16, 4), TlbConfig(64, 4)])
        assert [lv.name for lv in mmu.levels] == ["l1", "l2"]
        split = [[TlbConfig(8, 4), TlbConfig(4, 4, page_sizes=(2 * MiB,))], TlbConfig(64, 4, name="stlb")]
        mmu = mmu_cls(pt, split)
        assert [lv.name for lv in mmu.levels] == ["l1+l1_2", "stlb"]
        assert [s.name for s in mmu.tlb_stats()] == ["l1+l1_2", "stlb"]
        assert [c.name for c in mmu.levels[0].configs] == ["l1", "l1_2"]
        assert (Tlb if product else RefTlb)(TlbConfig(8, 8)).stats.name == "l1"
        try:
            mmu_cls(pt, [TlbConfig(4, 4, name="x"), TlbConfig(8, 4, name="x")])
        except Exception as exc:
            assert "distinct" in str(exc)
        else:
            raise AssertionError("duplicate names accepted")
