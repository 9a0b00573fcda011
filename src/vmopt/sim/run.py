"""One simulation from start to report: choose the input, build the guest, play it, report."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from vmopt.errors import ConfigError
from vmopt.metrics import GuestCollector
from vmopt.sim.config import SimConfig, parse_value
from vmopt.sim.driver import Simulator
from vmopt.sim.pipeline import DEFAULT_DEPTH
from vmopt.sim.report import build_report
from vmopt.traces import WORKLOADS, Trace, TraceChunk, make_workload, open_trace
from vmopt.units import parse_size

__all__ = [
    "DEFAULT_WORKLOAD",
    "DEFAULT_WORKLOAD_PARAMS",
    "Input",
    "MetricsObserver",
    "SimObserver",
    "parse_params",
    "simulate",
]

log = logging.getLogger(__name__)

#: What ``vmopt simulate`` plays without a trace: two vCPUs on two nodes, each with a
#: private 6.4 MiB set plus a shared 3.2 MiB one: far past L1 TLB reach, near L2 reach.
DEFAULT_WORKLOAD: Final = "numa_mix"
DEFAULT_WORKLOAD_PARAMS: Final = {"cpus": 2, "footprint": 16 << 20, "length": 2_000_000}
_SIZE_PARAMS: Final = ("footprint", "base", "page_size", "elem_size", "line_size", "stride")


@dataclass(frozen=True)
class Input:
    """What to play: a trace file (``trace``), or a built-in workload with parameters."""

    trace: str | None = None
    format: str | None = None
    skip_bad: bool = False
    workload: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trace is not None and self.workload is not None:
            raise ConfigError("give a TRACE or --workload, not both")
        if self.workload is not None and self.workload not in WORKLOADS:
            raise ConfigError(f"unknown workload {self.workload!r}; expected one of: {', '.join(WORKLOADS)}")

    @property
    def label(self) -> str:
        """Short name, for tables and file names."""
        if self.trace is not None:
            return self.trace
        return self.workload or DEFAULT_WORKLOAD


class SimObserver(Protocol):
    """Told of a run's progress, on the simulation thread (the metrics endpoint attaches here).

    ``started`` gets the simulator once its guest is built; ``chunk_done``
    runs after each chunk, between chunks, so a blocking observer pauses the
    run at a known point (the metrics tests scrape there).
    """

    def started(self, sim: Simulator) -> None:
        """The guest is built; no access has run."""
        ...

    def chunk_done(self, sim: Simulator) -> None:
        """A chunk was simulated; ``sim.accesses`` counts every access so far."""
        ...


class MetricsObserver:
    """Points a metrics collector at the run's guest once it is built (``vmopt simulate --metrics-port``)."""

    def __init__(self, collector: GuestCollector) -> None:
        self.collector = collector

    def started(self, sim: Simulator) -> None:
        """Export this run's guest."""
        self.collector.attach(sim.opt)

    def chunk_done(self, sim: Simulator) -> None:
        """Nothing: every scrape reads the guest live."""


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["footprint=64M", "alpha=1.2"]`` -> ``{"footprint": 67108864, "alpha": 1.2}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--param {item!r}: expected key=value")
        value = parse_value(text)
        if isinstance(value, str) and key in _SIZE_PARAMS:
            try:
                value = parse_size(value)
            except ValueError as exc:
                raise ConfigError(f"--param {key}: cannot parse {text!r} as a size") from exc
        out[key] = value
    return out


def _open(inp: Input) -> tuple[Iterator[TraceChunk], dict[str, Any], int, Trace | None]:
    """The chunks, the report's ``source``, the vCPUs the input needs, the open trace if any."""
    if inp.trace is not None:
        trace = open_trace(inp.trace, format=inp.format, skip_bad=inp.skip_bad)
        source: dict[str, Any] = {
            "kind": "trace",
            "name": trace.path,
            "format": trace.format,
            "compression": trace.compression,
            "description": f"trace {trace.path} ({trace.format})",
        }
        return trace, source, 1, trace
    name = inp.workload or DEFAULT_WORKLOAD
    params = dict(DEFAULT_WORKLOAD_PARAMS) if inp.workload is None else {}
    params.update(inp.params)
    chunks = make_workload(name, **params)
    cpus = int(params.get("cpus", 2)) if name == "numa_mix" else 1
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    source = {
        "kind": "workload",
        "name": name,
        "params": params,
        "description": f"workload {name}" + (f" ({shown})" if shown else ""),
    }
    return chunks, source, cpus, None


def simulate(
    config: SimConfig,
    inp: Input,
    *,
    progress: bool = False,
    pipeline: bool = True,
    depth: int = DEFAULT_DEPTH,
    partial_on_interrupt: bool = False,
    observer: SimObserver | None = None,
) -> dict[str, Any]:
    """Run one simulation and return its report (see docs/report-schema.md).

    With ``pipeline`` a trace (not a workload) is read ``depth`` chunks ahead on its own
    thread (see :mod:`vmopt.sim.pipeline`); without, on the simulation
    thread (the counts are the same). On Ctrl-C, ``partial_on_interrupt``
    returns the report of what was simulated, marked ``partial``; otherwise
    the KeyboardInterrupt propagates once both threads have stopped.
    ``observer`` is told when the guest is built and after every chunk.
    """
    chunks, source, cpus, trace = _open(inp)
    try:
        if config.numa.cpus:
            cpus = config.numa.cpus
        sim = Simulator(config, cpus)
    except BaseException:
        if trace is not None:
            trace.close()
        raise
    # One rule: traces are read ahead on their own thread; workloads are generated on the
    # simulation thread (NumPy's generators hold the GIL: pipelined, numa_mix, zipf and
    # sequential measured the same, 4.9, 5.0 and 27.9 M accesses/s both ways).
    read_ahead = depth if pipeline and trace is not None else None
    close = None if trace is None else trace.close
    if observer is not None:
        observer.started(sim)

    def told(advance: Callable[[int], None] | None) -> Callable[[int], None] | None:
        if observer is None:
            return advance
        seen = observer

        def both(n: int) -> None:
            if advance is not None:
                advance(n)
            seen.chunk_done(sim)

        return both

    if progress:
        from vmopt.sim.progress import progress_bar

        with progress_bar(trace, source, sys.stderr) as advance:
            result = sim.run(
                chunks, told(advance), depth=read_ahead, close=close,
                partial_on_interrupt=partial_on_interrupt,
            )  # fmt: skip
    else:
        result = sim.run(
            chunks, told(None), depth=read_ahead, close=close, partial_on_interrupt=partial_on_interrupt
        )
    if trace is not None:
        source["bad_records"] = trace.bad_records
    report = build_report(result, source)
    return report
