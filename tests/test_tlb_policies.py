"""One TLB array against a plain reference model, for every replacement policy.

The reference model below is written independently of ``vmopt.tlb.tlb`` and
as plainly as possible: per set, a list of ways holding ``(vpn, shift, asid)``
tags, plus the replacement state each policy needs in its textbook form:

- LRU: the set's tags ordered from least to most recently used;
- FIFO: the set's tags in fill order (hits change nothing);
- PLRU: a tree of ``ways - 1`` node bits (heap order, root 0), each pointing
  at the half holding the pseudo-least-recently-used way (0 = left,
  1 = right); a use points every node on the way's path away from it. This
  is the convention of ``Tlb._plru_touch`` / ``Tlb._victim``'s docstrings;
- random: ``XorShift64(seed).next() % ways``. The generator is shared with
  the implementation by design: it *defines* the policy (which way a seeded
  "random" TLB evicts), so the model draws from its own instance seeded the
  same way, once per eviction from a full set and never otherwise.

Invalid ways are filled first, lowest way index first, whatever the policy.
Invalidations clear a way and leave the PLRU bits alone (as hardware does).

Hypothesis drives both with random sequences of lookup-then-fill-on-miss
accesses (a small universe of pages so sets conflict, several ASIDs, some
global entries), fills of an already cached tag (an update in place, as a
dirty re-walk does) and invalidations (flush, flush_asid, flush_va,
flush_range), comparing every hit/miss, every victim, the eviction and
invalidation counters, and the final contents way by way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.tlb.config import TlbConfig
from vmopt.tlb.tlb import GLOBAL_ASID, Tlb, TlbEntry, XorShift64

KiB, MiB = 1 << 10, 1 << 20
SMALL, LARGE = 12, 21  # shifts of 4 KiB and 2 MiB entries
POLICIES = ("lru", "fifo", "random", "plru")
ASIDS = (0, 1, 2)

Tag = tuple[int, int, int]  # (vpn in units of the entry's size, shift, asid or GLOBAL_ASID)


# -- the reference model ------------------------------------------------------------


@dataclass
class RefArray:
    """One set-associative TLB array, written out plainly."""

    sets: int
    ways: int
    policy: str
    shifts: tuple[int, ...]
    seed: int = 0
    slots: list[list[Tag | None]] = field(init=False)
    order: list[list[Tag]] = field(init=False)
    tree: list[list[int]] = field(init=False)
    evictions: int = 0
    invalidations: int = 0

    def __post_init__(self) -> None:
        self.slots = [[None] * self.ways for _ in range(self.sets)]
        self.order = [[] for _ in range(self.sets)]  # LRU: least recent first; FIFO: oldest first
        self.tree = [[0] * (self.ways - 1) for _ in range(self.sets)]
        self.rng = XorShift64(self.seed)

    # where a tag lives
    def set_of(self, tag: Tag) -> int:
        return tag[0] % self.sets

    def way_of(self, tag: Tag) -> int | None:
        row = self.slots[self.set_of(tag)]
        return row.index(tag) if tag in row else None

    def tags(self) -> list[Tag]:
        return [t for row in self.slots for t in row if t is not None]

    # PLRU: a textbook binary tree over the ways
    def _path(self, way: int) -> list[tuple[int, int]]:
        """(node, direction) from the root down to ``way``; direction 0 = left, 1 = right."""
        depth = self.ways.bit_length() - 1
        node, out = 0, []
        for level in range(depth):
            d = (way >> (depth - 1 - level)) & 1
            out.append((node, d))
            node = 2 * node + 1 + d
        return out

    def plru_use(self, s: int, way: int) -> None:
        for node, d in self._path(way):
            self.tree[s][node] = 1 - d  # point away from the way just used

    def plru_victim(self, s: int) -> int:
        node, way = 0, 0
        for _ in range(self.ways.bit_length() - 1):
            d = self.tree[s][node]
            way = 2 * way + d
            node = 2 * node + 1 + d
        return way

    # operations
    def use(self, tag: Tag) -> None:
        s = self.set_of(tag)
        if self.policy == "lru":
            self.order[s].remove(tag)
            self.order[s].append(tag)
        elif self.policy == "plru":
            self.plru_use(s, self.slots[s].index(tag))

    def lookup(self, va: int, asid: int) -> Tag | None:
        """Smallest size first; at each size the ASID's own entry, then a global one."""
        for shift in self.shifts:
            for a in (asid, GLOBAL_ASID):
                tag = (va >> shift, shift, a)
                if self.way_of(tag) is not None:
                    self.use(tag)
                    return tag
        return None

    def insert(self, tag: Tag) -> Tag | None:
        """Fill ``tag``; return the tag it evicted."""
        s = self.set_of(tag)
        row = self.slots[s]
        if tag in row:  # an update in place: a use, not a new fill
            self.use(tag)
            return None
        victim = None
        if None in row:
            way = row.index(None)
        else:
            self.evictions += 1
            if self.policy in ("lru", "fifo"):
                way = row.index(self.order[s][0])
            elif self.policy == "random":
                way = self.rng.next() % self.ways
            else:
                way = self.plru_victim(s)
            victim = row[way]
            assert victim is not None
            self.order[s].remove(victim)
        row[way] = tag
        self.order[s].append(tag)
        if self.policy == "plru":
            self.plru_use(s, way)
        return victim

    def remove(self, tag: Tag) -> None:
        s = self.set_of(tag)
        self.slots[s][self.slots[s].index(tag)] = None
        self.order[s].remove(tag)
        self.invalidations += 1

    def remove_where(self, pred) -> int:  # type: ignore[no-untyped-def]
        victims = [t for t in self.tags() if pred(t)]
        for t in victims:
            self.remove(t)
        return len(victims)

    def flush(self) -> int:
        return self.remove_where(lambda t: True)

    def flush_asid(self, asid: int) -> int:
        return self.remove_where(lambda t: t[2] == asid)

    def flush_range(self, va: int, size: int, asid: int | None) -> int:
        def hit(t: Tag) -> bool:
            start, end = t[0] << t[1], (t[0] + 1) << t[1]
            asid_ok = asid is None or t[2] in (asid, GLOBAL_ASID)
            return start < va + size and va < end and asid_ok

        return self.remove_where(hit)

    def flush_va(self, va: int, asid: int | None) -> int:
        return self.flush_range(va, 1, asid)


# -- driving both -------------------------------------------------------------------


def tag_of(e: TlbEntry | None) -> Tag | None:
    return None if e is None else (e.vpn, e.shift, e.asid)


def contents(tlb: Tlb) -> list[list[Tag | None]]:
    return [[tag_of(e) for e in row] for row in tlb.state()]


def make_entry(tag: Tag) -> TlbEntry:
    vpn, shift, asid = tag
    return TlbEntry(vpn, shift, asid, (vpn + 7) << shift, 0x3F, True, 0 if shift == SMALL else 1)


# A small universe, so sets conflict and lookups hit: 4 KiB pages 0..5 and 511 of three
# 2 MiB regions, at a few offsets, in ASIDs 0..2 or global.
REGIONS = 3
PAGES = (*range(6), 511)
KINDS = (
    *("access",) * 12, *("refill",) * 2, *("flush_va",) * 2, *("flush_range",) * 2,
    "flush_asid", "flush",
)  # fmt: skip
#: Long runs invalidate less often, so the arrays fill up between invalidations.
LONG_KINDS = (*("access",) * 60, "refill", "refill", "flush_va", "flush_range", "flush_asid")
va_st = st.builds(
    lambda r, k, off: (r << LARGE) + (k << SMALL) + off,
    st.integers(0, REGIONS - 1),
    st.sampled_from(PAGES),
    st.sampled_from((0, 8, 4095)),
)
asid_st = st.sampled_from(ASIDS)
opt_asid_st = st.none() | asid_st
size_st = st.integers(1, 64 * 4 * KiB) | st.integers(64 * 4 * KiB + 1, 3 * 2 * MiB)

Op = tuple[str, int, int, bool, int, int | None, int]


def ops_st(multi_size: bool) -> st.SearchStrategy[list[Op]]:
    """Ops as (kind, va, asid, global, shift, asid-or-None, size); each kind reads what it needs."""
    shift_st = st.sampled_from((SMALL, LARGE)) if multi_size else st.just(SMALL)
    op = st.tuples(st.sampled_from(KINDS), va_st, asid_st, st.booleans(), shift_st, opt_asid_st, size_st)
    return st.lists(op, min_size=20, max_size=150)


def random_ops(rng: random.Random, n: int, multi_size: bool) -> list[Op]:
    """The same distribution, from a seeded PRNG, for long runs."""
    ops: list[Op] = []
    for _ in range(n):
        va = (rng.randrange(REGIONS) << LARGE) + (rng.choice(PAGES) << SMALL) + rng.choice((0, 8))
        size = rng.choice((rng.randint(1, 64 * 4 * KiB), rng.randint(1, 3 * 2 * MiB) // 4))
        ops.append((
            rng.choice(LONG_KINDS), va, rng.choice(ASIDS), rng.random() < 0.2,
            rng.choice((SMALL, LARGE)) if multi_size else SMALL,
            rng.choice((None, *ASIDS)), size,
        ))  # fmt: skip
    return ops


def run(tlb: Tlb, ref: RefArray, ops: list[Op]) -> int:
    """Apply ``ops`` to both; return the number of lookups that hit."""
    hits = 0
    for step, op in enumerate(ops):
        kind, va, asid, global_, shift, opt_asid, size = op
        where = f"step {step}: {op!r}"
        if kind in ("access", "refill"):
            tag = (va >> shift, shift, GLOBAL_ASID if global_ else asid)
            if kind == "access":
                got = tag_of(tlb.lookup(va, asid))
                want = ref.lookup(va, asid)
                assert got == want, where
                if want is not None:
                    hits += 1
                    continue
            victim = tag_of(tlb.insert(make_entry(tag)))
            assert victim == ref.insert(tag), where
        elif kind == "flush":
            assert tlb.flush() == ref.flush(), where
        elif kind == "flush_asid":
            assert tlb.flush_asid(asid) == ref.flush_asid(asid), where
        elif kind == "flush_va":
            assert tlb.flush_va(va, opt_asid) == ref.flush_va(va, opt_asid), where
        else:
            assert tlb.flush_range(va, size, opt_asid) == ref.flush_range(va, size, opt_asid), where
        assert tlb.stats.evictions == ref.evictions, where
        assert tlb.stats.invalidations == ref.invalidations, where
    assert contents(tlb) == ref.slots
    assert len(tlb) == len(ref.tags())
    assert sorted(tag_of(e) for e in tlb) == sorted(ref.tags())  # type: ignore[type-var]
    return hits


GEOMETRIES = {
    "fully-associative-8": (8, 8),
    "direct-mapped-8": (8, 1),
    "4-way-16": (16, 4),
    "2-way-8": (8, 2),
}
MULTI_GEOMETRIES = {"fully-associative-8": (8, 8), "4-way-16": (16, 4)}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@settings(max_examples=25, deadline=None)
@given(ops=ops_st(multi_size=False), seed=st.integers(0, 3))
def test_array_matches_reference(policy: str, geometry: str, ops: list[Op], seed: int) -> None:
    entries, ways = GEOMETRIES[geometry]
    cfg = TlbConfig(entries, ways, policy, seed=seed)
    tlb = Tlb(cfg)
    ref = RefArray(cfg.sets, ways, policy, (SMALL,), seed)
    run(tlb, ref, ops)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("geometry", list(MULTI_GEOMETRIES))
@settings(max_examples=25, deadline=None)
@given(ops=ops_st(multi_size=True), seed=st.integers(0, 3))
def test_multi_size_array_matches_reference(policy: str, geometry: str, ops: list[Op], seed: int) -> None:
    entries, ways = MULTI_GEOMETRIES[geometry]
    cfg = TlbConfig(entries, ways, policy, page_sizes=(4 * KiB, 2 * MiB), seed=seed)
    tlb = Tlb(cfg)
    ref = RefArray(cfg.sets, ways, policy, (SMALL, LARGE), seed)
    run(tlb, ref, ops)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("entries", "ways", "sizes"),
    [(8, 8, (4 * KiB,)), (8, 1, (4 * KiB,)), (16, 4, (4 * KiB,)), (16, 4, (4 * KiB, 2 * MiB))],
)
def test_long_random_run_matches_reference(
    policy: str, entries: int, ways: int, sizes: tuple[int, ...]
) -> None:
    cfg = TlbConfig(entries, ways, policy, page_sizes=sizes, seed=11)
    tlb = Tlb(cfg)
    ref = RefArray(cfg.sets, ways, policy, tuple(s.bit_length() - 1 for s in sizes), 11)
    hits = run(tlb, ref, random_ops(random.Random(f"{policy}{entries}{ways}{sizes}"), 4000, len(sizes) > 1))
    # The run is only a test if it exercised hits and evictions.
    assert hits > 400 and ref.evictions > 100 and ref.invalidations > 50, (hits, ref)


# -- hand-worked cases: one 4-way set, tags A..E ------------------------------------


def one_set(policy: str) -> Tlb:
    return Tlb(TlbConfig(4, 4, policy))


def fill(tlb: Tlb, vpn: int) -> Tag | None:
    return tag_of(tlb.insert(make_entry((vpn, SMALL, 0))))


def hit(tlb: Tlb, vpn: int) -> bool:
    return tlb.lookup(vpn << SMALL, 0) is not None


def test_lru_evicts_least_recently_used() -> None:
    tlb = one_set("lru")
    for vpn in (0, 1, 2, 3):
        assert fill(tlb, vpn) is None
    assert hit(tlb, 0) and hit(tlb, 1)
    assert fill(tlb, 4) == (2, SMALL, 0)
    assert fill(tlb, 5) == (3, SMALL, 0)
    assert fill(tlb, 6) == (0, SMALL, 0)
    assert tlb.stats.evictions == 3


def test_fifo_ignores_hits_and_in_place_updates() -> None:
    tlb = one_set("fifo")
    for vpn in (0, 1, 2, 3):
        fill(tlb, vpn)
    assert hit(tlb, 0)
    assert fill(tlb, 0) is None  # an update in place (a dirty re-walk) keeps the fill order
    assert fill(tlb, 4) == (0, SMALL, 0)
    assert fill(tlb, 5) == (1, SMALL, 0)


def test_plru_tree() -> None:
    # Nodes: root, L (ways 0/1), R (ways 2/3); each points at the pseudo-LRU side.
    tlb = one_set("plru")
    for vpn in (0, 1, 2, 3):
        fill(tlb, vpn)  # after way 3: root -> left, L -> way 0, R -> way 2
    assert fill(tlb, 4) == (0, SMALL, 0)  # 4 takes way 0: root -> right, L -> way 1
    assert fill(tlb, 5) == (2, SMALL, 0)  # 5 takes way 2: root -> left, R -> way 3
    assert hit(tlb, 1)  # way 1: root -> right, L -> way 0
    assert fill(tlb, 6) == (3, SMALL, 0)
    assert [tag_of(e)[0] for e in tlb.state()[0]] == [4, 1, 5, 6]  # type: ignore[index]


def test_random_victim_is_the_seeded_generator() -> None:
    tlb = Tlb(TlbConfig(4, 4, "random", seed=7))
    rng = XorShift64(7)
    for vpn in (0, 1, 2, 3):
        fill(tlb, vpn)  # invalid ways first: no draws
    ways = [0, 1, 2, 3]
    for vpn in range(4, 40):
        way = rng.next() % 4
        assert fill(tlb, vpn) == (ways[way], SMALL, 0)
        ways[way] = vpn


def test_xorshift64_is_marsaglias() -> None:
    rng = XorShift64(123)
    x = rng.state
    assert x != 0
    mask = (1 << 64) - 1
    for _ in range(100):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        assert rng.next() == x
    assert XorShift64(0).state != XorShift64(1).state


def test_invalid_ways_fill_lowest_first() -> None:
    for policy in POLICIES:
        tlb = one_set(policy)
        for vpn in (0, 1, 2, 3):
            fill(tlb, vpn)
        tlb.flush_va(2 << SMALL)
        tlb.flush_va(1 << SMALL)
        assert fill(tlb, 8) is None and fill(tlb, 9) is None, policy
        assert [tag_of(e)[0] for e in tlb.state()[0]] == [0, 8, 9, 3], policy  # type: ignore[index]
        assert tlb.stats.evictions == 0 and tlb.stats.invalidations == 2


def test_set_index_is_vpn_modulo_sets() -> None:
    tlb = Tlb(TlbConfig(16, 2))  # 8 sets
    for vpn in (3, 11, 19):
        fill(tlb, vpn)
    state = tlb.state()
    assert {tag_of(e) for e in state[3] if e} == {(11, SMALL, 0), (19, SMALL, 0)}
    assert tlb.stats.evictions == 1  # 3, 11 and 19 all map to set 3 of a 2-way array
    big = Tlb(TlbConfig(16, 2, page_sizes=(4 * KiB, 2 * MiB)))
    big.insert(make_entry((5, LARGE, 0)))  # a 2 MiB entry: vpn in 2 MiB units
    assert tag_of(big.state()[5][0]) == (5, LARGE, 0)


def test_2m_entry_covers_512_small_pages() -> None:
    tlb = Tlb(TlbConfig(16, 4, page_sizes=(4 * KiB, 2 * MiB)))
    tlb.insert(make_entry((3, LARGE, 1)))
    base = 3 << LARGE
    for k in range(512):
        e = tlb.lookup(base + (k << SMALL) + 123, 1)
        assert e is not None and (e.vpn, e.shift) == (3, LARGE)
    assert tlb.lookup(base - 1, 1) is None
    assert tlb.lookup(base + (2 * MiB), 1) is None
    assert tlb.lookup(base, 2) is None  # another ASID
    assert tlb.flush_va(base + (300 << SMALL), 1) == 1  # any small page inside removes it
    assert tlb.lookup(base, 1) is None


def test_small_entry_is_found_before_a_covering_large_one() -> None:
    tlb = Tlb(TlbConfig(16, 4, page_sizes=(4 * KiB, 2 * MiB)))
    tlb.insert(make_entry((1, LARGE, 0)))
    tlb.insert(make_entry(((1 << 9) + 5, SMALL, 0)))
    e = tlb.lookup((1 << LARGE) + (5 << SMALL), 0)
    assert e is not None and e.shift == SMALL
    assert tlb.flush_va((1 << LARGE) + (5 << SMALL), 0) == 2  # INVLPG drops every size
    assert len(tlb) == 0


def test_global_entries_match_every_asid_and_survive_flush_asid() -> None:
    tlb = Tlb(TlbConfig(8, 8))
    tlb.insert(make_entry((1, SMALL, GLOBAL_ASID)))
    tlb.insert(make_entry((2, SMALL, 1)))
    for asid in (0, 1, 2, 65535):
        assert tlb.lookup(1 << SMALL, asid) is not None
    assert tlb.lookup(2 << SMALL, 0) is None
    assert tlb.flush_asid(1) == 1
    assert tlb.lookup(1 << SMALL, 3) is not None
    assert tlb.flush_va(1 << SMALL, 5) == 1  # INVLPG in any ASID drops a global entry
    assert len(tlb) == 0
