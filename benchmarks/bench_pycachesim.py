"""vmopt's batch translation against pycachesim, both configured as the same TLB, on real traces.

Inputs: Lackey traces (``valgrind --tool=lackey --trace-mem=yes``) of
several real programs, made once into ``benchmarks/.traces`` (see
``_common.PROGRAMS``), or ``--trace FILE`` (repeatable). Configuration: a
one-level 64-entry 4-way LRU TLB of 4 KiB pages. Each repetition builds a
fresh ``Mmu`` (its construction is timed with the batch) and runs
``Mmu.translate_batch`` over the trace as a uint64 array; vmopt also walks
the page tables on every miss and returns physical addresses. pycachesim
(C-backed) gets a fresh ``Cache`` and its bulk ``load`` over a list of
ints. Every run checks that hits and misses are identical. The figure is
the median over repetitions of the per-run ratio pycachesim time / vmopt
time.

    python benchmarks/bench_pycachesim.py [--trace FILE ...] [--entries 64 --ways 4] [--reps 5]

Exits 1 if vmopt is below the bar (3x) on any trace or the counts differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import lackey_traces, median
from cachesim import Cache, CacheSimulator, MainMemory

from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig
from vmopt.traces import open_trace

BAR = 3.0


def build_tables(pages: np.ndarray) -> PageTable:
    """A guest that maps every page of the trace (4 KiB, user rwx)."""
    mem = PhysicalMemory(1 << 36)
    pt = PageTable(mem, "x86_64")
    for i, vpn in enumerate(pages.tolist()):
        pt.map(vpn << 12, (i + 1) << 12, 4096, "rwx", user=True)
    return pt


def run_pycachesim(as_list: list[int], sets: int, ways: int) -> tuple[float, int, int]:
    mem = MainMemory()
    tlb = Cache("TLB", sets, ways, 4096, "LRU")
    mem.load_to(tlb)
    mem.store_from(tlb)
    sim = CacheSimulator(tlb, mem)
    t0 = time.perf_counter()
    sim.load(as_list, length=1)
    return time.perf_counter() - t0, tlb.HIT_count, tlb.MISS_count


def run_vmopt(pt: PageTable, addrs: np.ndarray, entries: int, ways: int) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    mmu = Mmu(pt, TlbConfig(entries, ways, "lru"))
    out = mmu.translate_batch(addrs, "r", True)
    elapsed = time.perf_counter() - t0
    assert len(out) == len(addrs)
    s = mmu.tlb_stats()[0]
    return elapsed, s.hits, s.misses


def bench(name: str, path: Path, entries: int, ways: int, reps: int) -> float | None:
    with open_trace(path) as trace:
        addrs = trace.read_all().addrs
    as_list = addrs.tolist()
    pages = np.unique(addrs >> np.uint64(12))
    pt = build_tables(pages)
    ratios, t_sim, t_vm = [], [], []
    for _ in range(reps):
        ts, sh, sm = run_pycachesim(as_list, entries // ways, ways)
        tv, vh, vm = run_vmopt(pt, addrs, entries, ways)
        if (sh, sm) != (vh, vm):
            print(f"{name}: MISMATCH vmopt hits/misses {vh}/{vm}, pycachesim {sh}/{sm}")
            return None
        ratios.append(ts / tv)
        t_sim.append(ts)
        t_vm.append(tv)
    r = median(ratios)
    print(
        f"{name:8} {len(addrs):>10,} {len(pages):>7,} {vh:>11,} {vm:>9,}"
        f" {len(addrs) / median(t_sim) / 1e6:>9.1f} {len(addrs) / median(t_vm) / 1e6:>9.1f} {r:>7.2f}x"
    )
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", action="append", type=Path, help="a Lackey trace (repeatable)")
    p.add_argument("--entries", type=int, default=64)
    p.add_argument("--ways", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    traces = [(t.name, t) for t in args.trace] if args.trace else lackey_traces()
    print(f"one-level {args.entries}x{args.ways} LRU TLB, 4 KiB pages; medians of {args.reps} runs")
    print(
        f"{'trace':8} {'accesses':>10} {'pages':>7} {'hits':>11} {'misses':>9}"
        f" {'cachesim':>9} {'vmopt':>9} {'ratio':>8}"
    )
    print(f"{'':8} {'':>10} {'':>7} {'(equal)':>11} {'(equal)':>9} {'M/s':>9} {'M/s':>9}")
    ok = bool(traces)
    for name, path in traces:
        r = bench(name, path, args.entries, args.ways, args.reps)
        ok = ok and r is not None and r >= BAR
    print(f"bar: >= {BAR:.0f}x on every trace: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
