"""``vmopt sweep``: run a grid of configurations over traces or workloads, in parallel."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vmopt.cli.simulate import add_input_args, input_from_args
from vmopt.errors import ConfigError
from vmopt.sim.sweep import parse_grid, run_sweep, write_results

__all__ = ["register", "run"]


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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the grid, print one line per run, write CSV, JSON and a PNG."""
    grid = parse_grid(args.grid)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    inputs = [input_from_args(args, t) for t in args.traces] or [input_from_args(args, None)]
    results = run_sweep(grid, inputs, config_path=args.config, sets=args.sets, workers=args.workers)
    keys = [k for k, _ in grid]
    for r in results:
        rep = r["report"]
        l1 = next(iter(rep["tlb"].values()))
        shown = " ".join(f"{k}={r['params'][k]}" for k in keys)
        print(f"{r['input']}: {shown}: L1 hit rate {100 * l1['hit_rate']:.2f}%,"
              f" {rep['page_walks']:,} walks, {rep['cycles']['per_access']:.2f} cycles/access")  # fmt: skip
    for path in write_results(results, keys, args.out):
        print(f"wrote {path}")
    sys.stdout.flush()
    return 0
