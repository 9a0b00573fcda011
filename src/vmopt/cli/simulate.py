"""``vmopt simulate [TRACE]``: play an address stream through the whole memory system and report."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from vmopt.sim.config import load_config
from vmopt.sim.report import render_report, write_json
from vmopt.sim.run import Input, parse_params, simulate
from vmopt.traces import FORMATS, WORKLOADS

__all__ = ["add_input_args", "input_from_args", "register", "run"]

log = logging.getLogger(__name__)

#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``, shared by simulate, sweep and config."""
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override a setting, e.g. tlb.l1.entries=128 (repeatable)",
    )  # fmt: skip


def add_input_args(p: argparse.ArgumentParser) -> None:
    """Trace format and workload options, shared by simulate and sweep."""
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="trace format")
    p.add_argument("--skip-bad", action="store_true", help="count and skip malformed trace lines")
    p.add_argument("--workload", choices=sorted(WORKLOADS), help="a built-in workload instead of a trace")
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="workload parameter, e.g. footprint=64M (repeatable)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, help="workload seed")
    p.add_argument("--length", type=int, help="workload length in accesses")
    add_config_args(p)


def input_from_args(args: argparse.Namespace, trace: str | None) -> Input:
    """The :class:`Input` the options describe."""
    params = parse_params(args.param)
    if args.seed is not None:
        params["seed"] = args.seed
    if args.length is not None:
        params["length"] = args.length
    workload = args.workload
    if trace is None and workload is None and params:
        from vmopt.sim.run import DEFAULT_WORKLOAD, DEFAULT_WORKLOAD_PARAMS

        workload = DEFAULT_WORKLOAD
        params = {**DEFAULT_WORKLOAD_PARAMS, **params}
    if trace is not None and (params or workload):
        from vmopt.errors import ConfigError

        raise ConfigError("--workload, --param, --seed and --length apply to workloads, not to a TRACE")
    fmt = None if args.format == "auto" else args.format
    return Input(trace=trace, format=fmt, skip_bad=args.skip_bad, workload=workload, params=params)


def register(sub: Any) -> None:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser(
        "simulate", help="play an address trace or workload through TLBs, page walks and NUMA memory",
        description="Play an address trace (or a built-in workload) through the whole memory system "
        "and report TLB, page-walk, fault, prefetch and NUMA statistics.",
    )  # fmt: skip
    p.add_argument(
        "trace", nargs="?", metavar="TRACE", help="trace file ('-' for stdin); default: a workload"
    )
    add_input_args(p)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", dest="plot_dir", metavar="DIR", help="write PNG plots into DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-pipeline", action="store_true",
        help="read the trace on the simulation thread instead of its own (same counts, slower)",
    )  # fmt: skip
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, print the report, write JSON and plots."""
    config = load_config(args.config, args.sets)
    inp = input_from_args(args, args.trace)
    show_progress = not args.no_progress and sys.stderr.isatty()
    report = simulate(
        config, inp, progress=show_progress, pipeline=not args.no_pipeline, partial_on_interrupt=True
    )
    render_report(report, sys.stdout)
    if args.json_path:
        write_json(report, args.json_path)
    if args.plot_dir:
        from vmopt.sim.plots import write_plots

        for path in write_plots(report, args.plot_dir):
            print(f"wrote {path}")
    if report["partial"]:
        print(
            f"vmopt simulate: interrupted after {report['accesses']:,} accesses (partial report)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0
