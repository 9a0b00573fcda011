"""``vmopt sweep``: run a grid of configurations over traces or workloads, in parallel.

Points run on a local process pool, or with ``--scheduler`` on a Dask
cluster (``tcp://HOST:PORT``, or ``local`` for a LocalCluster); the files
written are the same. Each point prints its line as it finishes, prefixed
with how many have finished (``[3/8]``). A point that fails (a bad trace)
is listed on stderr and the others still run and are written; the exit
status is then 2. Ctrl-C stops the running points at once and writes the
finished ones, marked ``partial`` in sweep.json; the exit status is 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from vmopt.cli.outputs import check_dir
from vmopt.cli.simulate import add_input_args, add_metrics_arg, input_from_args
from vmopt.errors import ConfigError
from vmopt.sim.sweep import parse_grid, run_sweep, write_results

__all__ = ["register", "run"]

EXIT_FAILED_POINTS = 2
EXIT_INTERRUPTED = 130


def register(sub: Any) -> None:
    """Add the ``sweep`` subcommand."""
    p = sub.add_parser(
        "sweep", help="run a grid of configurations (e.g. --grid tlb.l1.entries=16,32,64) in parallel",
    )  # fmt: skip
    p.add_argument("traces", nargs="*", metavar="TRACE", help="trace files; default: the default workload")
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
        help="a setting and its values (repeatable: the cartesian product is run)",
    )  # fmt: skip
    add_input_args(p)
    p.add_argument("--out", default="sweep-out", metavar="DIR", help="output directory (default sweep-out)")
    p.add_argument("--workers", type=int, help="worker processes (default: every core)")
    p.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run the points on a Dask cluster: tcp://HOST:PORT of a scheduler, or local (a LocalCluster"
        " of --workers processes); needs pip install 'vmopt[dask]'",
    )  # fmt: skip
    add_metrics_arg(p)
    p.set_defaults(run=run)


def _line(result: dict[str, Any], keys: list[str]) -> str:
    shown = " ".join(f"{k}={result['params'][k]}" for k in keys)
    if "error" in result:
        return f"{result['input']}: {shown}: FAILED: {result['error']}"
    rep = result["report"]
    # The L1: a unified one, or both sides of a split one.
    l1 = [lv for name, lv in rep["tlb"].items() if name in ("l1", "l1i", "l1d")]
    lookups = sum(lv["lookups"] for lv in l1)
    hit_rate = sum(lv["hits"] for lv in l1) / lookups if lookups else 0.0
    return (f"{result['input']}: {shown}: L1 hit rate {100 * hit_rate:.2f}%,"
            f" {rep['page_walks']:,} walks, {rep['cycles']['per_access']:.2f} cycles/access")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the grid, print one line per run as it ends, write CSV, JSON and a PNG of what finished."""
    grid = parse_grid(args.grid)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    check_dir(args.out, "--out")
    inputs = [input_from_args(args, t) for t in args.traces] or [input_from_args(args, None)]
    keys = [k for k, _ in grid]
    total = len(inputs) * math.prod(len(v) for _, v in grid)
    finished = [0]
    collector = server = None
    if args.metrics_port is not None:
        from vmopt.metrics import SweepCollector, serve

        collector = SweepCollector(total)
        server = serve(args.metrics_port, [collector])
        print(f"vmopt sweep: serving metrics on {server.url}", file=sys.stderr, flush=True)

    def show(result: dict[str, Any]) -> None:
        finished[0] += 1
        if collector is not None:
            collector.point_done(result)
        stream = sys.stderr if "error" in result else sys.stdout
        print(f"[{finished[0]}/{total}] {_line(result, keys)}", file=stream, flush=True)

    try:
        outcome = run_sweep(
            grid, inputs, config_path=args.config, sets=args.sets, workers=args.workers, on_result=show,
            scheduler=args.scheduler,
        )  # fmt: skip
    finally:
        if server is not None:
            server.close()
    paths = write_results(outcome, keys, args.out)
    for path in paths:
        print(f"wrote {path}")
    sys.stdout.flush()
    if outcome.interrupted:
        print(
            f"vmopt sweep: interrupted: {len(outcome.finished)} of {outcome.total} points finished;"
            f" wrote them to {args.out} marked partial",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if outcome.failures:
        print(f"vmopt sweep: {len(outcome.failures)} of {outcome.total} points failed:", file=sys.stderr)
        for r in outcome.failures:
            print(f"  {_line(r, keys)}", file=sys.stderr)
        return EXIT_FAILED_POINTS
    return 0
