"""I/O-bound batches: faults served from a real NBD server, sequential vs concurrent.

Setup (issue 16): nbdkit serves a 1,000-page snapshot with its delay filter
(``rdelay=2ms``, 64 threads) on a Unix socket; 1,000 faulting pages go
through ``MemoryOptimizer.batch_access_concurrent`` (an ``NbdStore`` region)
and, as the baseline, through the sequential ``batch_access`` (one blocking
read per fault). Each repetition builds fresh guests and stores so every
page faults; the figure is the median over repetitions of the per-run ratio
sequential / concurrent. ``--store latency`` runs the same on a
``LatencyStore`` (asyncio sleeps) instead.

    python benchmarks/bench_io.py [--latency 0.002] [--pages 1000] [--reps 5] [--store nbd|latency]
    python benchmarks/bench_io.py --profile 64    # where the CPU goes per page at max_concurrent 64
    python benchmarks/bench_io.py --cpu           # CPU per page: vmopt's process and nbdkit's, no delay

Exits 1 if a bar is missed: >= 7x at max_concurrent=8, >= 40x at 64.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import median  # also puts tests/ on sys.path

from nbd_servers import NbdServer, have, nbdkit_argv, snapshot_bytes
from vmopt import ConcurrencyConfig, LatencyStore, MemoryOptimizer, NbdStore, NumaConfig
from vmopt.stores import BackingStore

BARS = {8: 7.0, 64: 40.0}


def run_once(make_store: Callable[[], BackingStore], pages: int, max_concurrent: int | None) -> float:
    cfg = ConcurrencyConfig(max_concurrent) if max_concurrent else ConcurrencyConfig.sequential()
    opt = MemoryOptimizer(NumaConfig(2, 64 << 20), concurrency=cfg)
    store = make_store()
    va = opt.allocate((pages + 1) * 4096, store=store)
    addrs = [va + i * 4096 for i in range(pages)]

    async def concurrent() -> None:
        await store.fetch(pages)  # connect outside the timed part, as the sync path did at open
        t0 = time.perf_counter()
        await opt.batch_access_concurrent(addrs)
        timed.append(time.perf_counter() - t0)

    timed: list[float] = []
    try:
        if max_concurrent:
            asyncio.run(concurrent())
            return timed[0]
        t0 = time.perf_counter()
        opt.batch_access(addrs)
        return time.perf_counter() - t0
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.002, help="store read delay, seconds")
    p.add_argument("--pages", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--store", choices=("nbd", "latency"), default="nbd")
    p.add_argument("--profile", type=int, metavar="N", help="profile one run at max_concurrent N instead")
    p.add_argument("--cpu", action="store_true", help="measure CPU per page at max_concurrent 64 instead")
    args = p.parse_args()
    if args.store == "nbd" and not have("nbdkit"):
        print("bench_io: nbdkit is not installed (apt-get install nbdkit)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="vmopt-bench-io-", dir="/tmp") as tmp:
        server = None
        if args.store == "nbd":
            snap = Path(tmp) / "snap.img"
            snap.write_bytes(snapshot_bytes(args.pages + 1))
            delay = None if args.cpu else f"{args.latency * 1e3:g}ms"
            server = NbdServer(nbdkit_argv(snap, rdelay=delay, threads=64), Path(tmp) / "nbd.sock").start()
            uri = server.uri

            def make_store() -> BackingStore:
                return NbdStore(uri, max_concurrent=64)
        else:

            def make_store() -> BackingStore:
                return LatencyStore(args.latency)

        try:
            if args.cpu:
                assert server is not None and server.proc is not None
                return cpu_split(make_store, args.pages, server.proc.pid, args.reps)
            if args.profile:
                return profile(make_store, args.pages, args.profile)
            return measure(make_store, args)
        finally:
            if server is not None:
                server.stop()


def measure(make_store: Callable[[], BackingStore], args: argparse.Namespace) -> int:
    ratios: dict[int, list[float]] = {k: [] for k in BARS}
    seq_times: list[float] = []
    conc_times: dict[int, list[float]] = {k: [] for k in BARS}
    for _ in range(args.reps):
        seq = run_once(make_store, args.pages, None)
        seq_times.append(seq)
        for k in BARS:
            t = run_once(make_store, args.pages, k)
            conc_times[k].append(t)
            ratios[k].append(seq / t)
    where = "nbdkit (delay filter), Unix socket" if args.store == "nbd" else "LatencyStore"
    print(
        f"{args.pages} faulting pages from {where}, read delay {args.latency * 1e3:.1f} ms,"
        f" {args.reps} reps (medians)"
    )
    print(f"  sequential          {median(seq_times):8.3f} s")
    ok = True
    for k, bar in BARS.items():
        r = median(ratios[k])
        verdict = "ok" if r >= bar else "MISSED"
        ok = ok and r >= bar
        t = median(conc_times[k])
        spread = f"{min(ratios[k]):.1f}-{max(ratios[k]):.1f}x"
        print(f"  max_concurrent={k:<3}  {t:8.3f} s   {r:6.1f}x  (runs {spread}; bar {bar:.0f}x: {verdict})")
    return 0 if ok else 1


def cpu_split(make_store: Callable[[], BackingStore], pages: int, server_pid: int, reps: int) -> int:
    """CPU per page at max_concurrent 64 with no read delay: this process (NBD, and a zero-latency
    LatencyStore for the facade's share) and the nbdkit server (medians)."""

    def one(make: Callable[[], BackingStore]) -> tuple[float, float]:
        opt = MemoryOptimizer(NumaConfig(2, 64 << 20), concurrency=ConcurrencyConfig(64))
        store = make()
        va = opt.allocate((pages + 1) * 4096, store=store)
        addrs = [va + i * 4096 for i in range(pages)]

        async def go() -> tuple[float, float]:
            await store.fetch(pages)
            c0, k0 = time.process_time(), _cpu_of(server_pid)
            await opt.batch_access_concurrent(addrs)
            return time.process_time() - c0, _cpu_of(server_pid) - k0

        try:
            return asyncio.run(go())
        finally:
            store.close()

    nbd, zero = [], []
    for _ in range(reps):  # interleaved, so both see the same machine
        nbd.append(one(make_store))
        zero.append(one(lambda: LatencyStore(0.0)))
    us = 1e6 / pages
    own, server = median([c for c, _ in nbd]) * us, median([k for _, k in nbd]) * us
    facade = median([c for c, _ in zero]) * us
    print(f"CPU per page at max_concurrent=64, no read delay, medians of {reps}:")
    print(f"  vmopt's process, NbdStore        {own:6.1f} us")
    print(f"  vmopt's process, LatencyStore(0) {facade:6.1f} us  (the facade: install, loader, scheduler)")
    print(f"  so the NBD client                {own - facade:6.1f} us  (with asyncio's wake-ups)")
    print(f"  nbdkit                           {server:6.1f} us")
    return 0


def _cpu_of(pid: int) -> float:
    """CPU seconds process ``pid``'s live threads have run (/proc schedstat, in nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended
    return total / 1e9


def profile(make_store: Callable[[], BackingStore], pages: int, max_concurrent: int) -> int:
    """One concurrent run under cProfile: the functions that take the CPU, per page."""
    prof = cProfile.Profile()
    prof.enable()
    t = run_once(make_store, pages, max_concurrent)
    prof.disable()
    print(f"max_concurrent={max_concurrent}: {t:.3f} s for {pages} pages ({t / pages * 1e6:.1f} us/page)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    return 0


if __name__ == "__main__":
    sys.exit(main())
