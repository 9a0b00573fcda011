"""vmopt's core batch loop against pycachesim, both configured as the same TLB.

Input: a real program address trace, made here with
``valgrind --tool=lackey --trace-mem=yes`` (or given with ``--trace``).
Configuration: one-level LRU TLB of 4 KiB pages (default 64 entries,
4-way). pycachesim (C-backed) gets its fastest bulk call, ``iterload`` over
a list of ints; vmopt gets ``Mmu.translate_batch`` over a uint64 array (the
Rust core's loop, no GIL), and also walks the page tables on every miss and
returns physical addresses. Each run uses a fresh ``Mmu``. Every run checks
that hits and misses are identical. Figures are medians.

    python benchmarks/bench_pycachesim.py [--trace FILE] [--entries 64 --ways 4] [--reps 5]

Exits 1 if vmopt is slower than pycachesim (the bar) or the counts differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from cachesim import Cache, CacheSimulator, MainMemory

from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig
from vmopt.traces import open_trace

PROGRAM = [sys.executable, "-c", "import json, re, collections; print(len(json.dumps(list(range(20000)))))"]


def make_trace(path: str) -> None:
    """Run a real program under Lackey."""
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed; pass --trace FILE")
    subprocess.run(
        ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={path}", *PROGRAM],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def build_vmopt(pages: np.ndarray, entries: int, ways: int) -> Mmu:
    mem = PhysicalMemory(1 << 34)
    pt = PageTable(mem, "x86_64")
    for i, vpn in enumerate(pages.tolist()):
        pt.map(vpn << 12, (i + 1) << 12, 4096, "rwx", user=True)
    return Mmu(pt, TlbConfig(entries, ways, "lru"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", help="a Lackey trace (made with valgrind when omitted)")
    p.add_argument("--entries", type=int, default=64)
    p.add_argument("--ways", type=int, default=4)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    tmp = None
    path = args.trace
    if path is None:
        tmp = tempfile.mkdtemp()
        path = os.path.join(tmp, "trace.lackey")
        make_trace(path)
    with open_trace(path) as trace:
        chunk = trace.read_all()
    addrs = chunk.addrs
    as_list = addrs.tolist()
    pages = np.unique(addrs >> np.uint64(12))
    print(
        f"trace: {len(addrs):,} accesses over {len(pages):,} pages"
        f" ({path if args.trace else ' '.join(PROGRAM[1:])})"
    )
    sets = args.entries // args.ways
    t_sim, t_vm = [], []
    for _ in range(args.reps):
        mem = MainMemory()
        tlb = Cache("TLB", sets, args.ways, 4096, "LRU")
        mem.load_to(tlb)
        mem.store_from(tlb)
        sim = CacheSimulator(tlb, mem)
        t0 = time.perf_counter()
        sim.load(as_list, length=1)
        t_sim.append(time.perf_counter() - t0)
        mmu = build_vmopt(pages, args.entries, args.ways)
        t0 = time.perf_counter()
        out = mmu.translate_batch(addrs, "r", True)
        t_vm.append(time.perf_counter() - t0)
        stats = mmu.tlb_stats()[0]
        done = len(out)
        if done != len(addrs) or (stats.hits, stats.misses) != (tlb.HIT_count, tlb.MISS_count):
            print(
                f"MISMATCH: vmopt hits/misses {stats.hits}/{stats.misses} (done {done}),"
                f" pycachesim {tlb.HIT_count}/{tlb.MISS_count}"
            )
            return 1
    print(
        f"TLB {args.entries} entries, {args.ways}-way LRU, 4 KiB pages:"
        f" hits {stats.hits:,}, misses {stats.misses:,} (identical in both)"
    )
    ts, tv = statistics.median(t_sim), statistics.median(t_vm)
    print(f"pycachesim iterload : {ts:.3f} s  ({len(addrs) / ts / 1e6:.1f} M accesses/s)")
    rate = len(addrs) / tv / 1e6
    print(f"vmopt translate_batch: {tv:.3f} s  ({rate:.1f} M accesses/s), {ts / tv:.2f}x pycachesim")
    if tmp:
        shutil.rmtree(tmp)
    return 0 if tv <= ts else 1


if __name__ == "__main__":
    sys.exit(main())
