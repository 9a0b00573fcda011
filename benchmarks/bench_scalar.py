"""The scalar path from Python: one ``Mmu.translate`` call on a TLB hit, and on a miss.

- **Hit**: one resident page translated over and over (an L1 hit each time).
- **Miss**: 65,536 distinct 4 KiB pages swept in order through a one-level
  64x4 LRU TLB with no page-walk cache, so every call misses, walks all
  four levels of an x86-64 table and fills (evicting).

Each figure is the median of ``--reps`` runs of ``--calls`` calls, in
nanoseconds per call; beside it, the same loop over the pure-Python
reference (``tests/reference``) measured in the same run, as a ratio.

    python benchmarks/bench_scalar.py [--calls N] [--reps R]

Exits 1 if a hit costs more than 250 ns or a miss more than 1,000 ns.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import median

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig

BASE = 0x4000_0000
PAGES = 65_536
HIT_BAR_NS = 250.0
MISS_BAR_NS = 1000.0


def build(mem_cls: Any, pt_cls: Any, mmu_cls: Any) -> Any:
    mem = mem_cls(1 << 30)
    pt = pt_cls(mem, "x86_64")
    for i in range(PAGES):
        pt.map(BASE + i * 4096, mem.alloc(), 4096, "rw", user=True)
    return mmu_cls(pt, tlb=TlbConfig(64, 4, "lru"))


def per_call_ns(mmu: Any, vas: list[int]) -> float:
    translate = mmu.translate
    t0 = time.perf_counter()
    for va in vas:
        translate(va, "r", True)
    return (time.perf_counter() - t0) / len(vas) * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    core = build(PhysicalMemory, PageTable, Mmu)
    ref = build(RefMemory, RefPageTable, RefMmu)
    hits = [BASE + 8] * args.calls
    sweep = [BASE + (i % PAGES) * 4096 for i in range(max(args.calls, PAGES))]
    res: dict[str, list[float]] = {"hit": [], "miss": [], "ref_hit": [], "ref_miss": []}
    for _ in range(args.reps):
        res["hit"].append(per_call_ns(core, hits))
        res["miss"].append(per_call_ns(core, sweep))
        res["ref_hit"].append(per_call_ns(ref, hits[: args.calls // 10]))
        res["ref_miss"].append(per_call_ns(ref, sweep[: len(sweep) // 10]))
    walks = core.stats.walks
    if walks < args.reps * len(sweep):
        raise SystemExit(f"the miss sweep hit the TLB: {walks} walks for {args.reps * len(sweep)} calls")
    hit, miss = median(res["hit"]), median(res["miss"])
    ref_hit, ref_miss = median(res["ref_hit"]), median(res["ref_miss"])
    ok_hit, ok_miss = hit <= HIT_BAR_NS, miss <= MISS_BAR_NS
    print(f"medians of {args.reps} runs, ns per Mmu.translate call from Python")
    print(
        f"  TLB hit            {hit:7.0f} ns   (reference {ref_hit:6.0f} ns, {ref_hit / hit:5.1f}x)"
        f"  bar {HIT_BAR_NS:.0f} ns: {'ok' if ok_hit else 'MISSED'}"
    )
    print(
        f"  miss, 4-level walk {miss:7.0f} ns   (reference {ref_miss:6.0f} ns, {ref_miss / miss:5.1f}x)"
        f"  bar {MISS_BAR_NS:.0f} ns: {'ok' if ok_miss else 'MISSED'}"
    )
    return 0 if ok_hit and ok_miss else 1


if __name__ == "__main__":
    sys.exit(main())
