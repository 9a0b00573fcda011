"""Scalar ``Mmu.translate`` loop vs the compiled ``translate_array`` on resident pages.

The setup of the speed bar: a 64 MiB working set of resident 4 KiB pages,
1,000,000 uniformly random addresses in it, a 64-entry 4-way L1 and a
1536-entry 12-way L2, both LRU. Each repetition builds two identical fresh
guests (same mappings, cold TLBs, clear A/D bits), times the scalar loop
on one and ``translate_array`` on the other, and checks that results and
statistics agree. Prints the medians of 5 repetitions and their ratio;
exits 1 if the ratio is below 25.

The first call of the kernel in a process loads it from Numba's on-disk
cache (or compiles it when there is no cache yet); that cost is measured
apart, in a fresh subprocess: once with an empty cache directory (a cold
compile) and once with the warm one.

Run: ``python benchmarks/bench_vectorized.py [--addresses N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig
from vmopt.batch.vectorized import translate_array

BASE = 0x4000_0000
WORKING_SET = 64 << 20
BAR = 25.0

_FIRST_CALL = """
import time
t0 = time.perf_counter()
import numpy as np
from vmopt import Mmu, PageTable, PhysicalMemory
from vmopt.batch.vectorized import translate_array
t1 = time.perf_counter()
mem = PhysicalMemory(1 << 24)
pt = PageTable(mem, "x86_64")
pt.map(0x1000, mem.alloc(), 4096, "rw")
mmu = Mmu(pt)
t2 = time.perf_counter()
translate_array(mmu, np.array([0x1008], dtype=np.uint64))
t3 = time.perf_counter()
translate_array(mmu, np.array([0x1010], dtype=np.uint64))
t4 = time.perf_counter()
print(f"{t1 - t0:.6f} {t3 - t2:.6f} {t4 - t3:.6f}")
"""


def build() -> Mmu:
    """A fresh guest: 64 MiB of 4 KiB pages at ``BASE`` and the bar's two-level LRU TLB."""
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem, "x86_64")
    for off in range(0, WORKING_SET, 4096):
        pt.map(BASE + off, mem.alloc(), 4096, "rw", user=True)
    tlb = [TlbConfig(64, 4, "lru", name="l1"), TlbConfig(1536, 12, "lru", latency=7, name="l2")]
    return Mmu(pt, tlb=tlb)


def scalar(mmu: Mmu, addrs: np.ndarray) -> tuple[float, np.ndarray]:
    """Time the reference loop."""
    translate = mmu.translate
    values = addrs.tolist()
    t0 = time.perf_counter()
    out = [translate(va, "r", True) for va in values]
    elapsed = time.perf_counter() - t0
    return elapsed, np.array(out, dtype=np.uint64)


def vectorized(mmu: Mmu, addrs: np.ndarray) -> tuple[float, np.ndarray]:
    """Time the compiled path (the whole batch is resident, so one call does it all)."""
    t0 = time.perf_counter()
    out, done = translate_array(mmu, addrs, "r", True)
    elapsed = time.perf_counter() - t0
    if done != len(addrs):
        raise SystemExit(f"translate_array stopped at {done} of {len(addrs)}")
    return elapsed, out


def first_call(cache_dir: str) -> tuple[float, float, float]:
    """(import, first call, second call) seconds in a fresh interpreter using ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True
    )
    a, b, c = (float(x) for x in res.stdout.split())
    return a, b, c


def main() -> int:
    """Run the benchmark; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        cold = first_call(cache)
        warm = first_call(cache)
    print(f"first call, empty Numba cache (compile): {cold[1]:.2f} s (import {cold[0]:.2f} s)")
    print(f"first call, warm Numba cache (load):     {warm[1]:.3f} s (import {warm[0]:.2f} s)")
    print(f"second call:                              {warm[2] * 1e6:.0f} us")

    # Warm the kernel in this process (from the default cache) before timing.
    translate_array(build(), np.array([BASE], dtype=np.uint64), "r", True)

    rng = np.random.default_rng(args.seed)
    scalar_t: list[float] = []
    vector_t: list[float] = []
    for rep in range(args.repeat):
        addrs = (BASE + rng.integers(0, WORKING_SET, args.addresses)).astype(np.uint64)
        ref, fast = build(), build()
        ts, out_s = scalar(ref, addrs)
        tv, out_v = vectorized(fast, addrs)
        if not np.array_equal(out_s, out_v):
            raise SystemExit("results differ")
        if ref.stats != fast.stats or [s.as_dict() for s in ref.tlb_stats()] != [
            s.as_dict() for s in fast.tlb_stats()
        ]:
            raise SystemExit("statistics differ")
        scalar_t.append(ts)
        vector_t.append(tv)
        print(f"run {rep + 1}: scalar {ts:.3f} s, vectorized {tv:.4f} s, ratio {ts / tv:.1f}x")
    ratios = [s / v for s, v in zip(scalar_t, vector_t, strict=True)]
    med_s, med_v, med_r = statistics.median(scalar_t), statistics.median(vector_t), statistics.median(ratios)
    n = args.addresses
    print(
        f"median over {args.repeat}: scalar {med_s:.3f} s ({med_s / n * 1e9:.0f} ns/address), "
        f"vectorized {med_v:.4f} s ({med_v / n * 1e9:.0f} ns/address), ratio {med_r:.1f}x (bar {BAR:.0f}x)"
    )
    return 0 if med_r >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
