"""Sweeps on Dask: a real ``dask scheduler`` and two ``dask worker`` processes on loopback.

The cluster is started once for the module and always torn down. Results
are compared with the local process pool's, field for field but the host
timings (``elapsed_s``, ``accesses_per_s``), which no two runs share. The
worker-death test is deterministic: one point reads its trace from a FIFO,
so it blocks until the test writes it; the test kills the worker that holds
the FIFO open, waits until the survivor has opened it, and only then
writes.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.sim.run import Input
from vmopt.sim.sweep import SweepOutcome, run_sweep, write_results

distributed = pytest.importorskip("distributed")

WAIT = 60.0
DASK = Path(sys.executable).with_name("dask")
TIMING = ("elapsed_s", "accesses_per_s")


def _trace(path: Path, n: int, stride: int) -> Path:
    path.write_text("".join(f"{'RW'[i % 2]} {0x10000000 + (i * stride) % (1 << 22):x}\n" for i in range(n)))
    return path


class Cluster:
    """A scheduler and two workers, each its own process; ``pids`` maps worker address -> pid."""

    def __init__(self, work: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.work = work
        self.address = ""
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        sched_file = self.work / "scheduler.json"
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(sched_file)])  # fmt: skip
        client = distributed.Client(scheduler_file=str(sched_file), timeout=WAIT)
        try:
            self.address = client.scheduler.address
            cwd = self.work / "workers"  # not the tests' cwd: relative paths must be shipped
            cwd.mkdir()
            for k in range(2):
                flags = ["--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{k}"]
                self._spawn(["worker", self.address, *flags, "--local-directory", str(cwd / f"w{k}")], cwd)
            client.wait_for_workers(2, timeout=WAIT)
            self.pids = client.run(os.getpid)
        finally:
            client.close()

    def _spawn(self, args: list[str], cwd: Path | None = None) -> None:
        quiet = subprocess.DEVNULL
        self.procs.append(subprocess.Popen([str(DASK), *args], cwd=cwd, stdout=quiet, stderr=quiet))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait(timeout=WAIT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not DASK.exists():
        pytest.skip(f"no dask command beside {sys.executable}")
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _comparable(outcome: SweepOutcome) -> list[dict[str, Any]]:
    out = []
    for r in outcome.results:
        r = json.loads(json.dumps(r))
        if "report" in r:
            for key in TIMING:
                r["report"].pop(key)
        out.append(r)
    return out


def _files(out: Path) -> tuple[Any, list[dict[str, str]]]:
    doc = json.loads((out / "sweep.json").read_text())
    for r in doc["runs"]:
        for key in TIMING:
            r["report"].pop(key)
    with open(out / "sweep.csv", newline="") as fh:
        rows = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]
    return doc, rows


GRID = [("tlb.l1d.entries", [48, 192]), ("prefetch.kind", ["none", "next_page"])]


@pytest.mark.slow
def test_dask_sweep_equals_the_local_pool(cluster: Cluster, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    _trace(tmp_path / "a.txt", 4000, 4096 * 3)
    inputs = [Input(trace="a.txt", format="text"), Input(workload="strided", params={"length": 5000})]
    seen: list[str] = []
    on_dask = run_sweep(GRID, inputs, scheduler=cluster.address, on_result=lambda r: seen.append(r["input"]))
    local = run_sweep(GRID, inputs, workers=2)
    assert len(seen) == 8 and not on_dask.failures and not on_dask.partial
    assert _comparable(on_dask) == _comparable(local)
    assert on_dask.results[0]["report"]["source"]["name"] == "a.txt"  # shipped, named as given
    write_results(on_dask, [k for k, _ in GRID], tmp_path / "dask")
    write_results(local, [k for k, _ in GRID], tmp_path / "local")
    assert _files(tmp_path / "dask") == _files(tmp_path / "local")


@pytest.mark.slow
def test_a_killed_worker_has_its_point_retried(cluster: Cluster, tmp_path: Path) -> None:
    fifo = tmp_path / "held.txt"
    os.mkfifo(fifo)
    plain = _trace(tmp_path / "same.txt", 3000, 4096 * 5)
    others = [Input(trace=str(_trace(tmp_path / f"o{k}.txt", 2000, 4096 * (k + 1))), format="text")
              for k in range(3)]  # fmt: skip
    grid = [("tlb.l1d.entries", [96])]
    box: dict[str, Any] = {}
    inputs = [Input(trace=str(fifo), format="text"), *others]
    runner = threading.Thread(
        target=lambda: box.update(out=run_sweep(grid, inputs, scheduler=cluster.address))
    )
    runner.start()
    wfd = -1
    try:
        wfd = _open_writer_when_read(fifo)  # a worker is blocked reading the held point's trace
        # The reader may open the trace more than once (sniffing, then reading): ask until one holds it.
        _wait(lambda: _holder(cluster, fifo) is not None, "a worker to hold the held trace open")
        victim = _holder(cluster, fifo)
        assert victim is not None
        survivor = next(pid for pid in cluster.pids.values() if pid != victim)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: _holder(cluster, fifo) == survivor, "the survivor to open the held trace")
        os.set_blocking(wfd, True)
        os.write(wfd, plain.read_bytes())
    finally:
        if wfd >= 0:
            os.close(wfd)
        runner.join(WAIT)
    assert not runner.is_alive()
    outcome: SweepOutcome = box["out"]
    assert not outcome.failures and len(outcome.finished) == 4
    reference = run_sweep(grid, [Input(trace=str(plain), format="text"), *others], workers=1)
    got, want = _comparable(outcome), _comparable(reference)
    for r in (got[0], want[0]):
        r["report"].pop("source")
        r.pop("input")
    assert got == want


def _open_writer_when_read(fifo: Path) -> int:
    """Open the FIFO for writing once some process has it open for reading (ENXIO until then)."""
    fd: list[int] = []

    def try_open() -> bool:
        try:
            fd.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return False
        return True

    _wait(try_open, "a worker to open the held trace")
    return fd[0]


def _holder(cluster: Cluster, fifo: Path) -> int | None:
    """The worker pid that has ``fifo`` open, if one does."""
    for pid in cluster.pids.values():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo):
                    return pid
            except OSError:
                continue
    return None


def _wait(cond: Any, what: str) -> None:
    """Wait (bounded) for ``cond()``: a condition on the processes, looked at every 10 ms."""
    done = threading.Event()
    for _ in range(int(WAIT * 100)):
        if cond():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_cli_scheduler_local_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--grid", "tlb.l1d.entries=48,96", "--workload", "sequential", "--length", "3000"]
    assert main([*args, "--scheduler", "local", "--workers", "2", "--out", str(tmp_path / "d"),
                 "--metrics-port", "0"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "vmopt sweep: serving metrics on http://127.0.0.1:" in captured.err
    lines = captured.out.splitlines()
    assert sorted(line[:5] for line in lines if line.startswith("[")) == ["[1/2]", "[2/2]"]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "l")]) == 0
    assert _files(tmp_path / "d") == _files(tmp_path / "l")


def test_without_dask_scheduler_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["sweep", "--grid", "tlb.l1d.entries=48", "--scheduler", "tcp://127.0.0.1:1",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "pip install 'vmopt[dask]'" in err and "Traceback" not in err


def test_a_bad_scheduler_address_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "--grid", "tlb.l1d.entries=48", "--scheduler", "nowhere:1", "--out", str(tmp_path)])
    assert code == 2
    assert "--scheduler 'nowhere:1'" in capsys.readouterr().err


def test_stdin_cannot_go_to_dask(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="standard input"):
        run_sweep([("tlb.l1d.entries", [48])], [Input(trace="-")], scheduler="local")
