"""A 100,000,000-address trace through the core's batch loop in bounded memory.

The addresses are generated chunk by chunk (a zipf-like hot set over a
256 MiB resident working set) and never held whole: like a multi-GB trace
file, only one chunk is alive at a time. Reports peak RSS (ru_maxrss) and
throughput. Bar: peak RSS under 500 MiB.

    python benchmarks/bench_streaming.py [--accesses 100000000] [--chunk 1000000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from vmopt import Mmu, PageTable, PhysicalMemory, TlbConfig

BAR_MIB = 500


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accesses", type=int, default=100_000_000)
    p.add_argument("--chunk", type=int, default=1_000_000)
    p.add_argument("--working-set", type=int, default=256 << 20)
    args = p.parse_args()
    pages = args.working_set >> 12
    mem = PhysicalMemory(4 << 30)
    pt = PageTable(mem, "x86_64")
    base = 0x7F00_0000_0000
    pt.map_range(base, 1 << 30, args.working_set, perms="rw", user=True)
    mmu = Mmu(pt, [TlbConfig(64, 4, name="l1"), TlbConfig(1536, 12, latency=8, name="l2")])
    rng = np.random.default_rng(0)
    start_rss = rss_mib()
    done = 0
    t0 = time.perf_counter()
    while done < args.accesses:
        n = min(args.chunk, args.accesses - done)
        hot = rng.zipf(1.2, n) % pages
        addrs = (
            np.uint64(base)
            + (hot.astype(np.uint64) << np.uint64(12))
            + rng.integers(0, 4096, n, dtype=np.uint64)
        )
        out = np.empty(n, dtype=np.uint64)
        k, error = mmu.translate_into(addrs, out, "r", True)
        if error is not None:
            print(f"the batch stopped at {k} of {n}: {error}")
            return 1
        done += n
    elapsed = time.perf_counter() - t0
    peak = rss_mib()
    s = mmu.tlb_stats()
    print(f"{done:,} accesses in {elapsed:.1f} s ({done / elapsed / 1e6:.1f} M/s), chunks of {args.chunk:,}")
    print(f"l1 hit rate {s[0].hit_rate():.3f}, l2 hit rate {s[1].hit_rate():.3f}, walks {mmu.stats.walks:,}")
    print(
        f"peak RSS {peak:.0f} MiB (after setup {start_rss:.0f} MiB);"
        f" bar {BAR_MIB} MiB: {'ok' if peak < BAR_MIB else 'MISSED'}"
    )
    return 0 if peak < BAR_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
