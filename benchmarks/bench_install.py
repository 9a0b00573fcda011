"""Installing fetched pages: allocate on the chosen node, copy 4 KiB, map, fill the TLB.

The CPU cost (``time.process_time``) per store-backed page installed
through the guest facade: a ``MemoryOptimizer`` region backed by a
``LatencyStore``, its pages fetched first, then installed the way a
concurrent batch installs them: ``MemoryOptimizer.translate_fetched_batch``,
where each first touch faults inside the core's translate loop and the
fetched page goes in there (one core call per run of addresses,
``Mmu.translate_staged``), under the region's interleave policy, with the
accesses' NUMA traffic counted. Beside it, in the same run: the same pages
one call each (``MemoryOptimizer.translate_fetched``), the bare core call
(``Mmu.install_page`` alone), and the same work done the way the
pure-Python reference does it (``alloc`` + ``write`` + ``map`` +
``translate``), as a ratio. Each repetition installs ``--pages`` pages into
a fresh 2-node guest.

    python benchmarks/bench_install.py [--pages N] [--reps R]

Exits 1 if the batch path's median exceeds 5 µs of CPU per page.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
from _common import median

from reference.numa_memory import NumaMemory as RefNumaMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from vmopt import LatencyStore, MemoryOptimizer, MemPolicy, Mmu, NumaConfig, NumaMemory, PageTable, Perm

BASE = 0x10_0000_0000
BAR_US = 5.0


def facade_run(pages: int, data: list[bytes], batch: bool) -> float:
    opt = MemoryOptimizer(NumaConfig(2, 256 << 20))
    store = LatencyStore(0.0, data=lambda i: data[i], num_pages=pages)
    va = opt.allocate(pages * 4096, policy=MemPolicy.interleave([0, 1]), store=store)
    fetched = [store.fetch_sync(i) for i in range(pages)]  # the batch's fetches, done ahead
    if batch:
        vas = np.arange(va, va + pages * 4096, 4096, dtype=np.uint64)
        staged = {va + i * 4096: fetched[i] for i in range(pages)}
        t0 = time.process_time()
        opt.translate_fetched_batch(vas, staged, "w")
    else:
        install = opt.translate_fetched
        t0 = time.process_time()
        for i in range(pages):
            install(va + i * 4096, fetched[i], "w")
    cpu = time.process_time() - t0
    region = opt.region_of(va)
    if region is None or len(region.resident) != pages or opt.store_fetches:
        raise SystemExit("the facade did not install every page from the fetched data")
    return cpu / pages * 1e6


def core_run(pages: int, data: list[bytes]) -> float:
    mem = NumaMemory(NumaConfig(2, 256 << 20))
    mmu = Mmu(PageTable(mem, "x86_64"))
    rw = Perm.R | Perm.W
    t0 = time.process_time()
    for i in range(pages):
        va = BASE + i * 4096
        if mmu.install_page(va, "w", True, va, 4096, [i & 1, 1 - (i & 1)], data[i], rw, True) is None:
            raise SystemExit("out of memory")
    return (time.process_time() - t0) / pages * 1e6


def reference_run(pages: int, data: list[bytes]) -> float:
    mem: Any = RefNumaMemory(NumaConfig(2, 256 << 20))
    pt = RefPageTable(mem, "x86_64")
    mmu = RefMmu(pt)
    t0 = time.process_time()
    for i in range(pages):
        va = BASE + i * 4096
        pa = mem.alloc(4096, i & 1)
        mem.write(pa, data[i])
        pt.map_trusted(va, pa, 4096, Perm.R | Perm.W, True)
        mmu.translate(va, "w", True)
    return (time.process_time() - t0) / pages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    data = [bytes([i & 0xFF]) * 4096 for i in range(args.pages)]
    batch, single, core, ref = [], [], [], []
    for _ in range(args.reps):
        batch.append(facade_run(args.pages, data, batch=True))
        single.append(facade_run(args.pages, data, batch=False))
        core.append(core_run(args.pages, data))
        ref.append(reference_run(args.pages // 4, data))
    b, f, c, r = median(batch), median(single), median(core), median(ref)
    ok = b <= BAR_US
    print(
        f"install a fetched 4 KiB page, CPU per page, medians of {args.reps}: facade batch {b:.2f} µs"
        f" (one call per page {f:.2f} µs, core install_page alone {c:.2f} µs), reference {r:.1f} µs"
        f" ({r / b:.0f}x); bar <= {BAR_US:.0f} µs: {'ok' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
