"""A one-level TLB counts exactly what pycachesim counts, on a real program's trace.

pycachesim (RRZE-HPC, C-backed) simulates a set-associative cache; a TLB is
one whose "cache line" is a 4 KiB page: ``Cache("TLB", sets, ways, 4096,
policy)``. Set index = line number modulo sets, as in vmopt's TLB.

The trace is real: ``tests/data/ls_small.lackey.gz`` holds the last 200,000
records of ``valgrind --tool=lackey --trace-mem=yes /bin/ls /`` (instruction
fetches ``I``, loads ``L``, stores ``S`` and modifies ``M``), with lackey's
header kept as it printed it.

What pycachesim's counters mean (read from cachesim/backend.c and checked
below): every ``load`` is a LOAD and either a HIT or a MISS; a miss fills the
line into the queue position the policy names. ``EVICT_count`` is NOT the
number of replacements: it counts only dirty lines written back to
``store_to`` or lines handed to a ``victims_to`` cache, so with loads alone it
stays 0. To read real evictions from pycachesim, the TLB gets a one-line
victim cache: then every replaced valid line is counted in ``EVICT_count``
(and replacing an invalid way is not). A second, independent reading is
``misses - resident lines`` (``count_invalid_entries``), since nothing is
invalidated.

vmopt runs the same addresses through ``Mmu.translate`` with their real
access kinds (fetch, read, write; a write that hits a clean entry re-walks to
set D, and is a hit), over a page table that demand-maps every page the trace
touches.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import pytest
from cachesim import Cache, CacheSimulator, MainMemory

from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig

TRACE = Path(__file__).parent / "data" / "ls_small.lackey.gz"
ACCESS = {"I": "x", "L": "r", "S": "w", "M": "w"}


@cache
def trace() -> tuple[tuple[str, int], ...]:
    """(kind, address) per lackey record: ``I  0490b16f,3`` or `` L 1fff000688,8``."""
    out = []
    with gzip.open(TRACE, "rt") as f:
        for line in f:
            kind = line[:2].strip()
            if kind in ACCESS and line[:2] in ("I ", " L", " S", " M"):
                out.append((kind, int(line[3 : line.index(",")], 16)))
    return tuple(out)


def pycachesim_tlb(sets: int, ways: int, policy: str, *, victim_cache: bool) -> tuple[CacheSimulator, Cache]:
    mem = MainMemory()
    victims = Cache("victims", 1, 1, 4096, "LRU") if victim_cache else None
    tlb = Cache("TLB", sets, ways, 4096, policy, victims_to=victims)
    mem.load_to(tlb)
    mem.store_from(tlb)
    return CacheSimulator(tlb, mem), tlb


def vmopt_mmu(entries: int, ways: int, policy: str) -> Mmu:
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem, "x86_64")
    for page in sorted({addr >> 12 for _, addr in trace()}):
        pt.map(page << 12, mem.alloc(), 4096, "rwx", user=True)
    return Mmu(pt, TlbConfig(entries, ways, policy.lower()))


def test_trace_is_real_and_big_enough() -> None:
    records = trace()
    assert len(records) == 200_000
    kinds = {k for k, _ in records}
    assert kinds == {"I", "L", "S", "M"}
    pages = {a >> 12 for _, a in records}
    assert len(pages) > 150  # code, libraries, heap and stack of ls
    assert TRACE.stat().st_size < 1 << 20


# (entries, ways): 64 entries 4-way, 16 entries fully associative, 256 entries 8-way,
# plus direct-mapped and 2-way arrays that conflict a lot.
GEOMETRIES = [(64, 4), (16, 16), (256, 8), (8, 1), (32, 2)]


@pytest.mark.parametrize("policy", ["LRU", "FIFO"])
@pytest.mark.parametrize(("entries", "ways"), GEOMETRIES)
def test_counts_equal_pycachesim(entries: int, ways: int, policy: str) -> None:
    sets = entries // ways
    records = trace()
    sim, ref = pycachesim_tlb(sets, ways, policy, victim_cache=True)
    mmu = vmopt_mmu(entries, ways, policy)
    level = mmu.tlb_stats()[0]

    # Hit or miss, access by access.
    for i, (kind, addr) in enumerate(records):
        before = ref.backend.MISS_count
        sim.load(addr, length=1)
        ref_missed = ref.backend.MISS_count != before
        misses = level.misses
        pa = mmu.translate(addr, ACCESS[kind], user=True)
        assert (level.misses != misses) == ref_missed, f"record {i}: {kind} {addr:#x}"
        assert pa & 0xFFF == addr & 0xFFF

    s = ref.stats()
    assert s["LOAD_count"] == level.lookups == len(records)
    assert s["HIT_count"] == level.hits
    assert s["MISS_count"] == level.misses
    assert s["EVICT_count"] == level.evictions  # valid lines replaced (via the victim cache)
    resident = entries - ref.count_invalid_entries()
    assert s["MISS_count"] - resident == level.evictions
    assert resident == len(mmu.levels[0])
    # One level: every miss walked once, and writes to clean entries re-walked as hits.
    assert mmu.stats.walks == level.misses
    assert mmu.stats.translations == len(records)
    assert mmu.stats.dirty_walks > 0


def test_pycachesim_evict_count_is_writebacks_not_replacements() -> None:
    """Without a victim cache, loads never count as EVICT: the numbers to compare differ."""
    sim, ref = pycachesim_tlb(4, 4, "LRU", victim_cache=False)
    for _, addr in trace():
        sim.load(addr, length=1)
    s = ref.stats()
    assert s["MISS_count"] > 16 and s["EVICT_count"] == 0
    assert ref.count_invalid_entries() == 0


# Totals for the record (the test above proves vmopt matches them; these pin the trace).
EXPECTED_LRU = {
    (64, 4): (199_462, 538, 474),
    (16, 16): (194_003, 5_997, 5_981),
    (256, 8): (199_799, 201, 2),
    (8, 1): (176_869, 23_131, 23_123),
    (32, 2): (196_901, 3_099, 3_067),
}


@pytest.mark.parametrize(("entries", "ways"), list(EXPECTED_LRU))
def test_lru_totals(entries: int, ways: int) -> None:
    mmu = vmopt_mmu(entries, ways, "lru")
    for kind, addr in trace():
        mmu.translate(addr, ACCESS[kind], user=True)
    s = mmu.tlb_stats()[0]
    assert (s.hits, s.misses, s.evictions) == EXPECTED_LRU[entries, ways]
