"""``vmopt simulate [TRACE]``: play an address stream through the whole memory system and report.

Output paths are checked before the run; the JSON and plots are written
before the report prints, so a closed stdout (``| head``) loses nothing.
Warnings (most accesses faulted) go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from vmopt.cli.outputs import check_dir, check_file, write_error
from vmopt.errors import ConfigError
from vmopt.sim.config import load_config
from vmopt.sim.report import render_report, report_warnings, write_json
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
    for key in ("seed", "length"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in params and params[key] != value:
            raise ConfigError(f"--param {key}={params[key]} and --{key} {value} disagree; give one")
        params[key] = value
    if trace == "-" and (sys.stdin is None or sys.stdin.closed):
        raise ConfigError("TRACE '-' reads standard input, which is closed; pipe a trace in or name a file")
    workload = args.workload
    if trace is None and workload is None and params:
        from vmopt.sim.run import DEFAULT_WORKLOAD, DEFAULT_WORKLOAD_PARAMS

        workload = DEFAULT_WORKLOAD
        params = {**DEFAULT_WORKLOAD_PARAMS, **params}
    if trace is not None and (params or workload):
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
    add_metrics_arg(p)
    p.set_defaults(run=run)


def add_metrics_arg(p: argparse.ArgumentParser) -> None:
    """``--metrics-port``, shared by simulate and sweep."""
    p.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics while running (0: a free port)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Check the outputs, simulate, write JSON and plots, then print warnings and the report."""
    config = load_config(args.config, args.sets)
    inp = input_from_args(args, args.trace)
    if args.json_path:
        check_file(args.json_path, "--json")
    if args.plot_dir:
        check_dir(args.plot_dir, "--plot")
    show_progress = not args.no_progress and sys.stderr.isatty()
    if show_progress:
        # Building the guest (TLBs, NUMA memory) comes before the first progress update.
        print(f"vmopt simulate: preparing {inp.label} ...", file=sys.stderr, flush=True)
    observer = server = None
    if args.metrics_port is not None:
        from vmopt.metrics import GuestCollector, serve
        from vmopt.sim.run import MetricsObserver

        collector = GuestCollector()
        server = serve(args.metrics_port, [collector])
        print(f"vmopt simulate: serving metrics on {server.url}", file=sys.stderr, flush=True)
        observer = MetricsObserver(collector)
    try:
        report = simulate(
            config, inp, progress=show_progress, pipeline=not args.no_pipeline, partial_on_interrupt=True,
            observer=observer,
        )  # fmt: skip
    finally:
        if server is not None:
            server.close()
    written = []
    if args.json_path:
        try:
            write_json(report, args.json_path)
        except OSError as exc:
            raise write_error("--json", args.json_path, exc) from exc
        written.append(args.json_path)
    if args.plot_dir:
        from vmopt.sim.plots import write_plots

        try:
            written += [str(p) for p in write_plots(report, args.plot_dir)]
        except OSError as exc:
            raise write_error("--plot", args.plot_dir, exc) from exc
    for warning in report_warnings(report):
        print(f"vmopt simulate: warning: {warning}", file=sys.stderr)
    render_report(report, sys.stdout)
    for path in written:
        print(f"wrote {path}")
    if report["partial"]:
        print(
            f"vmopt simulate: interrupted after {report['accesses']:,} accesses (partial report)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    return 0
