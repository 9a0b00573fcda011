"""Parameter sweeps: a cartesian grid of ``--set`` overrides over one or more inputs, in parallel."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vmopt.errors import ConfigError, VmoptError
from vmopt.sim.config import load_config, parse_value
from vmopt.sim.run import Input, simulate

__all__ = ["LEGEND_SERIES", "SweepOutcome", "parse_grid", "run_job", "run_sweep", "write_results"]

log = logging.getLogger(__name__)

#: Most series the sweep plot labels in a legend (more would cover the plot).
LEGEND_SERIES: Final = 8


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["tlb.l1.entries=16,32"]`` -> ``[("tlb.l1.entries", [16, 32])]``; a value given twice is refused."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or "." not in key:
            raise ConfigError(f"--grid {item!r}: expected section.key=v1,v2,...")
        values = [parse_value(v) for v in text.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {key}: no values")
        seen: list[str] = []
        for v in values:
            shown = json.dumps(v)
            if shown in seen:
                raise ConfigError(f"--grid {key}: value {shown} given twice (each point would run twice)")
            seen.append(shown)
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--grid {key}: given twice")
        grid.append((key, values))
    return grid


def run_job(job: tuple[str | None, list[str], Input, dict[str, Any]]) -> dict[str, Any]:
    """Run one grid point (in a pool process or a Dask worker); errors come back as ``{"error": ...}``."""
    config_path, sets, inp, params = job
    try:
        report = simulate(load_config(config_path, sets), inp)
    except VmoptError as exc:
        return {"error": str(exc), "params": params, "input": inp.label}
    except OSError as exc:
        return {
            "error": f"{exc.strerror or exc}: {exc.filename or inp.label}",
            "params": params,
            "input": inp.label,
        }
    return {"params": params, "input": inp.label, "report": report}


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (no tracebacks from every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class SweepOutcome:
    """What a sweep produced: finished points in grid order, the failed ones, and whether it was cut short.

    ``results`` holds both (a failure is ``{"error": ..., "params": ..., "input": ...}``);
    ``total`` is how many points the grid has.
    """

    results: list[dict[str, Any]]
    total: int
    interrupted: bool = False

    @property
    def finished(self) -> list[dict[str, Any]]:
        """The points that produced a report."""
        return [r for r in self.results if "report" in r]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The points that failed, each with its error."""
        return [r for r in self.results if "error" in r]

    @property
    def partial(self) -> bool:
        """True if some points are missing (interrupted) or failed."""
        return self.interrupted or len(self.finished) < self.total


def run_sweep(
    grid: list[tuple[str, list[Any]]],
    inputs: Sequence[Input],
    *,
    config_path: str | None = None,
    sets: Sequence[str] = (),
    workers: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    scheduler: str | None = None,
) -> SweepOutcome:
    """Every (input, grid point) pair, run on ``workers`` processes (default: every core).

    With ``scheduler`` (``tcp://HOST:PORT`` or ``local``) the points run on a
    Dask cluster instead (see :mod:`vmopt.sim.dask_engine`); the outcome is the same.

    The configuration of each point is validated up front, so a bad value
    fails before any simulation starts. A point that fails (a bad trace) is
    recorded with its error and the others still run. ``on_result`` is told
    of each point as it ends. Ctrl-C stops the running points at once (the
    workers are terminated) and returns what finished, marked interrupted.
    """
    keys = [k for k, _ in grid]
    jobs = []
    for combo in itertools.product(*(v for _, v in grid)):
        params = dict(zip(keys, combo, strict=True))
        point_sets = [*sets, *(f"{k}={json.dumps(v)}" for k, v in params.items())]
        load_config(config_path, point_sets)  # fail early, naming the key
        for inp in inputs:
            jobs.append((config_path, point_sets, inp, params))
    if scheduler is not None:
        from vmopt.sim.dask_engine import require_dask

        if any(inp.trace == "-" for inp in inputs):
            raise ConfigError("TRACE '-' (standard input) cannot be read by Dask workers; give a file")
        require_dask()  # before any work, naming what to install
    else:
        workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        log.info("sweep: %d runs on %d workers", len(jobs), workers)
    done: dict[int, dict[str, Any]] = {}
    interrupted = False

    def record(i: int, result: dict[str, Any]) -> None:
        done[i] = result
        if on_result is not None:
            on_result(result)

    try:
        if scheduler is not None:
            from vmopt.sim.dask_engine import run_on_dask

            run_on_dask(jobs, scheduler, workers, record, run_job)
        elif workers == 1:
            for i, job in enumerate(jobs):
                record(i, run_job(job))
        else:
            with multiprocessing.Pool(workers, initializer=_ignore_sigint) as pool:
                try:
                    for i, result in pool.imap_unordered(_indexed, list(enumerate(jobs))):
                        record(i, result)
                except KeyboardInterrupt:
                    pool.terminate()
                    raise
    except KeyboardInterrupt:
        interrupted = True
        log.warning("sweep interrupted: %d of %d points finished", len(done), len(jobs))
    return SweepOutcome([done[i] for i in sorted(done)], len(jobs), interrupted)


def _indexed(
    item: tuple[int, tuple[str | None, list[str], Input, dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    i, job = item
    return i, run_job(job)


def _row(result: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    rep = result["report"]
    row: dict[str, Any] = {"input": result["input"]}
    row.update({k: result["params"][k] for k in keys})
    row["accesses"] = rep["accesses"]
    for name, lv in rep["tlb"].items():
        row[f"{name}_hits"] = lv["hits"]
        row[f"{name}_misses"] = lv["misses"]
        row[f"{name}_miss_rate"] = 1.0 - lv["hit_rate"] if lv["lookups"] else 0.0
    if "l1" not in rep["tlb"]:  # a split L1: its two sides as one, for the plot
        sides = [rep["tlb"][name] for name in ("l1i", "l1d")]
        lookups = sum(lv["lookups"] for lv in sides)
        row["l1_miss_rate"] = sum(lv["misses"] for lv in sides) / lookups if lookups else 0.0
    row["page_walks"] = rep["page_walks"]
    row["walks_per_access"] = rep["page_walks"] / rep["accesses"] if rep["accesses"] else 0.0
    row["walk_memory_refs"] = rep["walk_memory_refs"]
    row["cycles_per_access"] = rep["cycles"]["per_access"]
    row["elapsed_s"] = rep["elapsed_s"]
    return row


def write_results(
    results: list[dict[str, Any]] | SweepOutcome, keys: list[str], out_dir: str | Path
) -> list[Path]:
    """Write sweep.csv, sweep.json and sweep.png (miss rate against the first grid key).

    Failed points are left out of the CSV and the plot and listed under
    ``failures`` in the JSON; ``partial`` is true when points failed or the
    sweep was interrupted.
    """
    outcome = results if isinstance(results, SweepOutcome) else SweepOutcome(list(results), len(results))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write(outcome, keys, out)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: cannot write: {exc.strerror or exc}") from exc


def _write(outcome: SweepOutcome, keys: list[str], out: Path) -> list[Path]:
    finished = outcome.finished
    rows = [_row(r, keys) for r in finished]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    csv_path = out / "sweep.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    json_path = out / "sweep.json"
    with open(json_path, "w", encoding="utf-8") as fh:
        doc = {
            "grid": keys,
            "partial": outcome.partial,
            "interrupted": outcome.interrupted,
            "points": outcome.total,
            "runs": finished,
            "failures": outcome.failures,
        }
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    if not rows:
        return [csv_path, json_path]
    png_path = out / "sweep.png"
    _plot(rows, keys, png_path)
    return [csv_path, json_path, png_path]


def _plot(rows: list[dict[str, Any]], keys: list[str], path: Path) -> None:
    from vmopt.sim.plots import pyplot

    plt = pyplot()
    x_key, rest = keys[0], keys[1:]
    series: dict[str, list[tuple[Any, float, float]]] = {}
    for row in rows:
        label = row["input"] + "".join(f", {k}={row[k]}" for k in rest)
        series.setdefault(label, []).append((row[x_key], row["l1_miss_rate"], row["walks_per_access"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    numeric = all(
        isinstance(p[0], int | float) and not isinstance(p[0], bool) for s in series.values() for p in s
    )
    for label, pts in series.items():
        if numeric:
            pts.sort(key=lambda p: p[0])
        xs = [p[0] if numeric else str(p[0]) for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", label=f"L1 miss rate — {label}")
        ax.plot(xs, [p[2] for p in pts], marker="s", linestyle="--", label=f"walks/access — {label}")
    if numeric and all(p[0] > 0 for s in series.values() for p in s):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_key)
    ax.set_ylabel("miss rate")
    ax.set_title(f"Miss rate against {x_key}")
    if len(series) <= LEGEND_SERIES:
        ax.legend(fontsize="small")
    else:  # a legend of every series would cover the plot: put it beside, or name the count
        ax.set_title(f"Miss rate against {x_key} ({len(series)} series; see sweep.csv)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
