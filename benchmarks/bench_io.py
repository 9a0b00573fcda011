"""I/O-bound batches: faults served from a slow store, sequential vs concurrent.

Setup (issue 5): a LatencyStore of 2 ms and 1,000 faulting pages. Each
repetition builds fresh guests so every page faults; the figure is the
median over repetitions of the per-run ratio sequential / concurrent.

    python benchmarks/bench_io.py [--latency 0.002] [--pages 1000] [--reps 3]

Exits 1 if a bar is missed: >= 6x at max_concurrent=8, >= 40x at 64.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from vmopt import ConcurrencyConfig, LatencyStore, MemoryOptimizer, NumaConfig

BARS = {8: 6.0, 64: 40.0}


def run_once(latency: float, pages: int, max_concurrent: int | None) -> float:
    cfg = ConcurrencyConfig(max_concurrent) if max_concurrent else ConcurrencyConfig.sequential()
    opt = MemoryOptimizer(NumaConfig(2, 64 << 20), concurrency=cfg)
    va = opt.allocate(pages * 4096, store=LatencyStore(latency))
    addrs = [va + i * 4096 for i in range(pages)]
    t0 = time.perf_counter()
    if max_concurrent:
        asyncio.run(opt.batch_access_concurrent(addrs))
    else:
        opt.batch_access(addrs)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.002)
    p.add_argument("--pages", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    ratios: dict[int, list[float]] = {k: [] for k in BARS}
    seq_times: list[float] = []
    conc_times: dict[int, list[float]] = {k: [] for k in BARS}
    for _ in range(args.reps):
        seq = run_once(args.latency, args.pages, None)
        seq_times.append(seq)
        for k in BARS:
            t = run_once(args.latency, args.pages, k)
            conc_times[k].append(t)
            ratios[k].append(seq / t)
    print(
        f"{args.pages} faulting pages, store latency {args.latency * 1e3:.1f} ms, {args.reps} reps (medians)"
    )
    print(f"  sequential          {statistics.median(seq_times):8.3f} s")
    ok = True
    for k, bar in BARS.items():
        r = statistics.median(ratios[k])
        verdict = "ok" if r >= bar else "MISSED"
        ok = ok and r >= bar
        t = statistics.median(conc_times[k])
        print(f"  max_concurrent={k:<3}  {t:8.3f} s   {r:6.1f}x  (bar {bar:.0f}x: {verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
