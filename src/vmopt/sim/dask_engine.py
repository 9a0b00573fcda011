"""Sweeps on a Dask distributed cluster: ``vmopt sweep --scheduler tcp://HOST:PORT`` (or ``local``).

Every grid point is one task submitted through the futures API; results
come back as they finish (``as_completed``), each recorded under its grid
index, so the written files do not depend on the engine. A worker that dies
has its tasks rescheduled by the Dask scheduler on the others (its
``allowed-failures`` setting bounds how often; past it a point fails with
the scheduler's ``KilledWorker`` error and the others still run).

Files the workers must read: a regular trace or config file of at most
:data:`SHIP_LIMIT` bytes is shipped by the client (scattered once to every
worker, written to a temporary file there, and reported under its original
name); anything larger, or not a regular file (a FIFO, a device), is read
by the workers at the same path, so it must be on storage they share.
``--scheduler local`` starts a ``LocalCluster`` of ``workers`` processes
(default: every core) for the sweep and stops it after.

Dask is an optional dependency: ``pip install 'vmopt[dask]'``.
"""

from __future__ import annotations

import importlib
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from vmopt.errors import ConfigError
from vmopt.sim.run import Input

__all__ = ["INSTALL_HINT", "SHIP_LIMIT", "Job", "require_dask", "run_on_dask"]

log = logging.getLogger(__name__)

#: Files up to this size are shipped to the workers by the client; larger ones are read in place.
SHIP_LIMIT: Final = 32 << 20
#: What to install for ``--scheduler``.
INSTALL_HINT: Final = "pip install 'vmopt[dask]'"
#: Seconds to wait for the scheduler to answer when connecting.
CONNECT_TIMEOUT: Final = 30

#: One grid point: (config path, its --set list, the input, the grid values).
Job = tuple[str | None, list[str], Input, dict[str, Any]]
#: Runs one job and returns its result (``vmopt.sim.sweep.run_job``).
RunJob = Callable[[Job], dict[str, Any]]


def require_dask() -> Any:
    """The ``distributed`` module (untyped, hence Any); a ConfigError naming what to install if missing."""
    try:
        return importlib.import_module("distributed")
    except ImportError as exc:
        raise ConfigError(
            f"--scheduler needs Dask's distributed scheduler, which is not installed ({exc.name}):"
            f" {INSTALL_HINT}"
        ) from None


def _shippable(path: str | None) -> bool:
    if path is None or path == "-":
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False  # the workers will report it, as the local pool would
    return stat.S_ISREG(st.st_mode) and st.st_size <= SHIP_LIMIT


@contextmanager
def _client(scheduler: str, workers: int | None) -> Iterator[Any]:
    dist = require_dask()
    Client, LocalCluster = dist.Client, dist.LocalCluster
    if scheduler == "local":
        n = max(1, workers or os.cpu_count() or 1)
        # ":0": the scheduler's HTTP server (health, its own metrics) on a free port; None would
        # still take 8787.
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
            silence_logs=logging.ERROR,
        )  # fmt: skip
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if not scheduler.startswith(("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")):
        raise ConfigError(f"--scheduler {scheduler!r}: expected tcp://HOST:PORT (a Dask scheduler) or local")
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"--scheduler {scheduler}: cannot reach the Dask scheduler: {exc}") from exc
    with client:
        yield client


def run_on_dask(
    jobs: Sequence[Job],
    scheduler: str,
    workers: int | None,
    record: Callable[[int, dict[str, Any]], None],
    run: RunJob,
) -> None:
    """Run every job on the cluster through ``run`` (a module-level function: it is pickled by
    name), calling ``record(index, result)`` as each finishes.

    Ctrl-C cancels the tasks not yet finished and re-raises.
    """
    as_completed = require_dask().as_completed
    with _client(scheduler, workers) as client:
        files = {p for job in jobs for p in (job[0], job[2].trace) if p is not None and _shippable(p)}
        shipped = {}
        for path in sorted(files):
            data = Path(path).read_bytes()
            shipped[path] = client.scatter(data, broadcast=True, hash=False)
        log.info("sweep: %d points on %s; shipped %d file(s)", len(jobs), scheduler, len(shipped))
        token = uuid.uuid4().hex[:12]
        futures: dict[Any, tuple[int, Job]] = {}
        for i, job in enumerate(jobs):
            config_path, _, inp, _ = job
            ship = {p: shipped[p] for p in (config_path, inp.trace) if p in shipped}
            fut = client.submit(run_point, run, job, ship, key=f"vmopt-point-{token}-{i}", pure=False)
            futures[fut] = (i, job)
        try:
            for fut in as_completed(list(futures)):
                i, job = futures[fut]
                try:
                    result = fut.result()
                except Exception as exc:  # the task never returned: its worker died too often
                    _, _, inp, params = job
                    result = {"error": f"{type(exc).__name__}: {exc}", "params": params, "input": inp.label}
                record(i, result)
        except KeyboardInterrupt:
            client.cancel(list(futures))
            raise


def run_point(run: RunJob, job: Job, ship: dict[str, bytes]) -> dict[str, Any]:
    """One grid point on a worker, through ``run``; ``ship`` holds the contents of files the client sent.

    Shipped files are written to a temporary directory under their own
    names (formats are detected by name) and the result names the original
    paths, so it is what the local process pool would have produced.
    """
    if not ship:
        return run(job)
    config_path, sets, inp, params = job
    with tempfile.TemporaryDirectory(prefix="vmopt-point-") as tmp:
        local: dict[str, str] = {}
        for k, (path, data) in enumerate(ship.items()):
            dest = Path(tmp) / str(k) / Path(path).name
            dest.parent.mkdir()
            dest.write_bytes(data)
            local[path] = str(dest)
        moved = replace(inp, trace=local.get(inp.trace, inp.trace)) if inp.trace is not None else inp
        result = run((local.get(config_path, config_path) if config_path else None, sets, moved, params))
    return _renamed(result, {v: k for k, v in local.items()}, inp.label)


def _renamed(result: dict[str, Any], names: dict[str, str], label: str) -> dict[str, Any]:
    """``result`` with the temporary paths in ``names`` put back to the originals."""

    def fix(text: str) -> str:
        for tmp, original in names.items():
            text = text.replace(tmp, original)
        return text

    result = dict(result, input=label)
    if "error" in result:
        result["error"] = fix(result["error"])
    report = result.get("report")
    if report is not None:
        source = dict(report["source"])
        for key in ("name", "description"):
            if isinstance(source.get(key), str):
                source[key] = fix(source[key])
        result["report"] = dict(report, source=source)
    return result
