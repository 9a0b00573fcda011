"""``vmopt bench``: the design report's table, measured.

For each batch size it times the sequential path, the concurrent path at
``max_concurrent`` 8 and 64, and the vectorized path (NumPy array input),
on two workloads: resident pages (CPU-bound) and pages that fault from a
``LatencyStore`` (I/O-bound). Every figure is the median of ``--reps``
repetitions; speedups are ratios against sequential within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vmopt.cli.outputs import check_file, write_error
from vmopt.errors import ConfigError
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.guest import MemoryOptimizer
from vmopt.numa.config import NumaConfig
from vmopt.stores.latency import LatencyStore

__all__ = ["register", "run"]

SIZES = (10, 50, 100, 500, 1_000, 10_000, 100_000)
IO_SIZES = (10, 50, 100, 500, 1_000)
PATHS = ("sequential", "concurrent_8", "concurrent_64", "vectorized")


def register(sub: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser("bench", help="measure batch translation paths (the design report's table)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="batch sizes (resident workload)")
    p.add_argument("--io-sizes", default=",".join(map(str, IO_SIZES)), help="batch sizes (faulting workload)")
    p.add_argument("--latency", type=float, default=0.0005, help="store latency in seconds (default 0.5 ms)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per figure (median)")
    p.add_argument("--working-set", default="16M", help="resident working set (default 16 MiB)")
    p.add_argument("--json", dest="json_path", help="write the results as JSON")
    p.add_argument(
        "--plot",
        dest="plot_path",
        metavar="FILE",
        help="write a PNG of throughput against batch size to FILE",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def _sizes(text: str, what: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"{what} must be positive integers, got {text!r}")
    return sizes


def environment() -> dict[str, Any]:
    """Machine, Python and dependency versions, for the report."""
    deps: dict[str, str | None] = {}
    for name in ("vmopt", "numpy"):
        try:
            deps[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            deps[name] = None
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "dependencies": deps,
    }


def _guest(max_concurrent: int) -> MemoryOptimizer:
    return MemoryOptimizer(NumaConfig(2, 512 << 20), concurrency=ConcurrencyConfig(max_concurrent))


def _time_path(path: str, opt: MemoryOptimizer, addrs: np.ndarray) -> float:
    t0 = time.perf_counter()
    if path == "vectorized":
        opt.batch_access(addrs)
    elif path == "sequential":
        opt.batch_access(addrs.tolist())
    else:
        asyncio.run(opt.batch_access_concurrent(addrs.tolist()))
    return time.perf_counter() - t0


def _concurrency(path: str) -> int:
    return {"concurrent_8": 8, "concurrent_64": 64}.get(path, 8)


def bench_resident(sizes: list[int], reps: int, working_set: int, seed: int) -> dict[str, Any]:
    """Random addresses over a resident working set; each path replays the same batches."""
    rng = np.random.default_rng(seed)
    pages = working_set // 4096
    batches = [rng.integers(0, working_set, size=n, dtype=np.uint64) for n in sizes]
    times: dict[str, dict[int, list[float]]] = {p: {n: [] for n in sizes} for p in PATHS}
    for _ in range(reps):
        for path in PATHS:
            opt = _guest(_concurrency(path))
            va = opt.allocate(working_set)
            opt.batch_access(np.arange(va, va + pages * 4096, 4096, dtype=np.uint64))  # make resident
            for n, batch in zip(sizes, batches, strict=True):
                times[path][n].append(_time_path(path, opt, batch + np.uint64(va)))
    return _summarise(times, sizes)


def bench_faulting(sizes: list[int], reps: int, latency: float) -> dict[str, Any]:
    """Batches of distinct pages, each faulting once from a LatencyStore."""
    times: dict[str, dict[int, list[float]]] = {p: {n: [] for n in sizes} for p in PATHS}
    for _ in range(reps):
        for path in PATHS:
            for n in sizes:
                opt = _guest(_concurrency(path))
                va = opt.allocate(n * 4096, store=LatencyStore(latency))
                addrs = np.arange(va, va + n * 4096, 4096, dtype=np.uint64)
                times[path][n].append(_time_path(path, opt, addrs))
    return _summarise(times, sizes)


def _summarise(times: dict[str, dict[int, list[float]]], sizes: list[int]) -> dict[str, Any]:
    rows = []
    for n in sizes:
        seq = statistics.median(times["sequential"][n])
        row: dict[str, Any] = {"batch": n}
        for path in PATHS:
            t = statistics.median(times[path][n])
            row[path] = {"seconds": t, "per_second": n / t if t else float("inf"), "speedup": seq / t}
        rows.append(row)
    return {"rows": rows}


def _print_table(title: str, result: dict[str, Any], out: Callable[[str], None]) -> None:
    out(title)
    header = f"{'batch':>8} " + " ".join(f"{p + ' /s':>18} {'x':>6}" for p in PATHS)
    out(header)
    for row in result["rows"]:
        cells = " ".join(f"{row[p]['per_second']:>18,.0f} {row[p]['speedup']:>6.1f}" for p in PATHS)
        out(f"{row['batch']:>8,} {cells}")
    out("")


def _plot(path: str, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in (
        (axes[0], "resident", "resident pages (CPU-bound)"),
        (axes[1], "faulting", "faulting pages (I/O-bound)"),
    ):
        rows = results[key]["rows"]
        xs = [r["batch"] for r in rows]
        for p in PATHS:
            ax.plot(xs, [r[p]["per_second"] for r in rows], marker="o", label=p)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("translations per second")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # exactly ``path``: no ".png" appended
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Measure, print the tables, and write JSON/PNG when asked."""
    from vmopt.units import parse_size

    sizes = _sizes(args.sizes, "--sizes")
    io_sizes = _sizes(args.io_sizes, "--io-sizes")
    if args.reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {args.reps}")
    if not args.latency >= 0:
        raise ConfigError(f"--latency must be >= 0 seconds, got {args.latency}")
    try:
        working_set = parse_size(args.working_set)
    except ValueError as exc:
        raise ConfigError(f"--working-set: cannot parse {args.working_set!r}") from exc
    if working_set < 4096 or working_set > 256 << 20:
        raise ConfigError(f"--working-set must be between 4 KiB and 256 MiB, got {args.working_set!r}")
    if args.json_path:
        check_file(args.json_path, "--json")
    if args.plot_path:
        check_file(args.plot_path, "--plot")
    env = environment()
    out = print
    out(
        f"vmopt bench on {env['processor']} ({env['cpus']} cpus, {env['system']}), Python {env['python']},"
        f" numpy {env['dependencies']['numpy']}"
    )
    out(f"medians of {args.reps} repetitions; speedup x = sequential time / path time\n")
    resident = bench_resident(sizes, args.reps, working_set, args.seed)
    _print_table(f"resident pages: random addresses over {args.working_set} (CPU-bound)", resident, out)
    faulting = bench_faulting(io_sizes, args.reps, args.latency)
    _print_table(f"faulting pages: one fetch per page from a {args.latency * 1e3:g} ms store", faulting, out)
    results = {"environment": env, "reps": args.reps, "latency_s": args.latency,
               "working_set": working_set, "resident": resident, "faulting": faulting}  # fmt: skip
    if args.json_path:
        try:
            with open(args.json_path, "w") as f:
                json.dump(results, f, indent=2)
        except OSError as exc:
            raise write_error("--json", args.json_path, exc) from exc
    if args.plot_path:
        try:
            _plot(args.plot_path, results)
        except OSError as exc:
            raise write_error("--plot", args.plot_path, exc) from exc
    sys.stdout.flush()
    return 0
