"""The core's batch translation against a loop over the reference implementation.

The setup of the bar: a 64 MiB working set of resident 4 KiB pages,
1,000,000 uniformly random addresses in it, a 64-entry 4-way L1 and a
1536-entry 12-way L2, both LRU. Each repetition builds two identical fresh
guests, one on the core (``vmopt``) and one on the pure-Python reference
(``tests/reference``, the executable specification), times
``Mmu.translate_batch`` on the first and a ``translate`` loop on the
second, and checks that the physical addresses and every counter agree.
The figure is the median of the per-run ratios.

    python benchmarks/bench_reference.py [--addresses N] [--reps R]

Exits 1 if the ratio is below 100.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
from _common import median

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig

BASE = 0x4000_0000
WORKING_SET = 64 << 20
BAR = 100.0
LEVELS = [TlbConfig(64, 4, "lru", name="l1"), TlbConfig(1536, 12, "lru", latency=7, name="l2")]


def build(mem_cls: Any, pt_cls: Any, mmu_cls: Any) -> Any:
    mem = mem_cls(1 << 30)
    pt = pt_cls(mem, "x86_64")
    for off in range(0, WORKING_SET, 4096):
        pt.map(BASE + off, mem.alloc(), 4096, "rw", user=True)
    return mmu_cls(pt, tlb=LEVELS)


def counters(mmu: Any) -> tuple[object, ...]:
    return (mmu.stats.as_dict(), [s.as_dict() for s in mmu.tlb_stats()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    ratios, t_ref, t_core = [], [], []
    for rep in range(args.reps):
        addrs = (BASE + rng.integers(0, WORKING_SET, args.addresses)).astype(np.uint64)
        ref = build(RefMemory, RefPageTable, RefMmu)
        core = build(PhysicalMemory, PageTable, Mmu)
        translate = ref.translate
        values = addrs.tolist()
        t0 = time.perf_counter()
        expect = [translate(va, "r", True) for va in values]
        tr = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = core.translate_batch(addrs, "r", True)
        tc = time.perf_counter() - t0
        if not np.array_equal(np.asarray(expect, dtype=np.uint64), got):
            raise SystemExit("physical addresses differ from the reference")
        if counters(ref) != counters(core):
            raise SystemExit(f"counters differ:\n  reference {counters(ref)}\n  core      {counters(core)}")
        ratios.append(tr / tc)
        t_ref.append(tr)
        t_core.append(tc)
        print(f"run {rep + 1}: reference loop {tr:.2f} s, core batch {tc * 1e3:.1f} ms, {tr / tc:.0f}x")
    n = args.addresses
    r = median(ratios)
    print(
        f"median of {args.reps}: reference {median(t_ref) / n * 1e9:.0f} ns/address,"
        f" core batch {median(t_core) / n * 1e9:.1f} ns/address, {r:.0f}x"
        f" (bar {BAR:.0f}x: {'ok' if r >= BAR else 'MISSED'})"
    )
    return 0 if r >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
