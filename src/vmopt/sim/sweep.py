"""Parameter sweeps: a cartesian grid of ``--set`` overrides over one or more inputs, in parallel."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from vmopt.errors import ConfigError, VmoptError
from vmopt.sim.config import load_config, parse_value
from vmopt.sim.run import Input, simulate

__all__ = ["parse_grid", "run_sweep", "write_results"]

log = logging.getLogger(__name__)


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["tlb.l1.entries=16,32"]`` -> ``[("tlb.l1.entries", [16, 32])]``."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or "." not in key:
            raise ConfigError(f"--grid {item!r}: expected section.key=v1,v2,...")
        values = [parse_value(v) for v in text.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {key}: no values")
        if any(k == key for k, _ in grid):
            raise ConfigError(f"--grid {key}: given twice")
        grid.append((key, values))
    return grid


def _point(job: tuple[str | None, list[str], Input, dict[str, Any]]) -> dict[str, Any]:
    """Run one grid point (in a worker process); errors come back as ``{"error": ...}``."""
    config_path, sets, inp, params = job
    try:
        report = simulate(load_config(config_path, sets), inp)
    except VmoptError as exc:
        return {"error": str(exc), "params": params, "input": inp.label}
    return {"params": params, "input": inp.label, "report": report}


def run_sweep(
    grid: list[tuple[str, list[Any]]],
    inputs: Sequence[Input],
    *,
    config_path: str | None = None,
    sets: Sequence[str] = (),
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Every (input, grid point) pair, run on ``workers`` processes (default: every core).

    The configuration of each point is validated up front, so a bad value
    fails before any simulation starts.
    """
    keys = [k for k, _ in grid]
    jobs = []
    for combo in itertools.product(*(v for _, v in grid)):
        params = dict(zip(keys, combo, strict=True))
        point_sets = [*sets, *(f"{k}={json.dumps(v)}" for k, v in params.items())]
        load_config(config_path, point_sets)  # fail early, naming the key
        for inp in inputs:
            jobs.append((config_path, point_sets, inp, params))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    log.info("sweep: %d runs on %d workers", len(jobs), workers)
    if workers == 1:
        results = [_point(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_point, jobs))
    errors = [r for r in results if "error" in r]
    if errors:
        raise ConfigError(f"sweep point {errors[0]['params']} on {errors[0]['input']}: {errors[0]['error']}")
    return results


def _row(result: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    rep = result["report"]
    row: dict[str, Any] = {"input": result["input"]}
    row.update({k: result["params"][k] for k in keys})
    row["accesses"] = rep["accesses"]
    for name, lv in rep["tlb"].items():
        row[f"{name}_hits"] = lv["hits"]
        row[f"{name}_misses"] = lv["misses"]
        row[f"{name}_miss_rate"] = 1.0 - lv["hit_rate"] if lv["lookups"] else 0.0
    row["page_walks"] = rep["page_walks"]
    row["walks_per_access"] = rep["page_walks"] / rep["accesses"] if rep["accesses"] else 0.0
    row["walk_memory_refs"] = rep["walk_memory_refs"]
    row["cycles_per_access"] = rep["cycles"]["per_access"]
    row["elapsed_s"] = rep["elapsed_s"]
    return row


def write_results(results: list[dict[str, Any]], keys: list[str], out_dir: str | Path) -> list[Path]:
    """Write sweep.csv, sweep.json and sweep.png (miss rate against the first grid key)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [_row(r, keys) for r in results]
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
        json.dump({"grid": keys, "runs": results}, fh, indent=2)
        fh.write("\n")
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
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
