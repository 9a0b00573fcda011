"""`vmopt simulate` through the pipeline: counts as without it and as the reference parser's; Ctrl-C."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_simulate import check_consistent
from vmopt.cli.main import main
from vmopt.sim import pipeline
from vmopt.sim.config import load_config
from vmopt.sim.driver import Simulator
from vmopt.sim.report import build_report
from vmopt.sim.run import Input, simulate
from vmopt.traces import TraceChunk, TraceError, open_trace

try:  # the per-line parsers that define the formats (they move to tests/reference with the core reader)
    from reference.traces._lines import parse_lackey_line, parse_text_line
except ImportError:
    from vmopt.traces._lines import parse_lackey_line, parse_text_line

ROOT = Path(__file__).resolve().parent.parent
BASE = 0x7F00_0000_0000
LACKEY_LETTER = {0: " L", 1: " S", 2: "I "}
VOLATILE = ("elapsed_s", "accesses_per_s", "source")


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread during the test, whatever ran before."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def records(seed: int, n: int) -> tuple[list[int], list[int]]:
    """``n`` accesses over ~300 pages with some locality, and their kinds."""
    rng = np.random.default_rng(seed)
    pages = rng.zipf(1.3, n) % 300
    addrs = (BASE + (pages << 12) + rng.integers(0, 4096, n)).tolist()
    kinds = rng.integers(0, 3, n).tolist()
    return addrs, kinds


def write_trace(path: Path, fmt: str, addrs: list[int], kinds: list[int]) -> None:
    if fmt in ("lackey", "lackey.gz"):
        lines = ["==1== Lackey, an example Valgrind tool"]
        lines += [f"{LACKEY_LETTER[k]} {a:08x},{1 + a % 8}" for a, k in zip(addrs, kinds, strict=True)]
        data = ("\n".join(lines) + "\n").encode()
        path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    elif fmt == "text":
        path.write_text("".join(f"{'RWX'[k]} {a:#x}\n" for a, k in zip(addrs, kinds, strict=True)))
    elif fmt == "npy":
        np.save(path, np.array(addrs, dtype=np.uint64))
    else:
        np.array(addrs, dtype="<u8").tofile(path)


def reference_records(path: Path, fmt: str) -> tuple[list[int], list[int]]:
    """What the reference parser reads from ``path``."""
    if fmt == "npy":
        return np.load(path).tolist(), [0] * len(np.load(path))
    if fmt == "raw":
        addrs = np.fromfile(path, "<u8").tolist()
        return addrs, [0] * len(addrs)
    data = gzip.decompress(path.read_bytes()) if fmt.endswith(".gz") else path.read_bytes()
    parse = parse_text_line if fmt == "text" else parse_lackey_line
    recs = [r for r in (parse(line) for line in data.splitlines()) if r is not None]
    return [a for a, _ in recs], [int(k) for _, k in recs]


def counts(sim: Simulator, result: Any) -> dict[str, Any]:
    report = build_report(result, {})
    check_consistent(report)
    return {k: v for k, v in report.items() if k not in VOLATILE}


SUFFIX = {"lackey": ".lackey", "lackey.gz": ".lackey.gz", "text": ".txt", "npy": ".npy", "raw": ".bin"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(sorted(SUFFIX)),
    n=st.integers(1, 3000),
    chunk=st.sampled_from([1, 7, 100, 1024, 65536]),
    depth=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_counts_identical_with_and_without_pipeline_and_to_the_reference(
    tmp_path: Path, fmt: str, n: int, chunk: int, depth: int, seed: int
) -> None:
    addrs, kinds = records(seed, n)
    path = tmp_path / f"t{SUFFIX[fmt]}"
    write_trace(path, fmt, addrs, kinds)
    ref_addrs, ref_kinds = reference_records(path, fmt)
    assert ref_addrs == addrs  # the written file says what we meant
    cfg = load_config(sets=["pwc.enabled=true", "prefetch.kind=stride"])

    expected = Simulator(cfg, 1)
    a = np.array(ref_addrs, dtype=np.uint64)
    k = np.array(ref_kinds, dtype=np.uint8)
    ref_chunks = [TraceChunk(a[i : i + chunk], k[i : i + chunk]) for i in range(0, len(a), chunk)]
    want = counts(expected, expected.run(ref_chunks, depth=None))

    for read_ahead in (depth, None):
        sim = Simulator(cfg, 1)
        trace = open_trace(path, chunk_size=chunk)
        got = counts(sim, sim.run(trace, depth=read_ahead, close=trace.close))
        assert got == want, f"depth {read_ahead}"
        assert got["partial"] is False


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def test_cli_no_pipeline_same_report(tmp_path: Path) -> None:
    addrs, kinds = records(3, 200_000)
    path = tmp_path / "t.lackey.gz"
    write_trace(path, "lackey.gz", addrs, kinds)
    reports = []
    for extra in ([], ["--no-pipeline"]):
        out = tmp_path / "r.json"
        assert main(["simulate", str(path), "--no-progress", "--json", str(out), *extra]) == 0
        r = json.loads(out.read_text())
        check_consistent(r)
        reports.append({k: v for k, v in r.items() if k not in ("elapsed_s", "accesses_per_s")})
    assert reports[0] == reports[1] and reports[0]["accesses"] == 200_000


@pytest.mark.parametrize("extra", [[], ["--no-pipeline"]])
def test_bad_line_deep_in_the_trace_reads_as_today(tmp_path: Path, extra: list[str]) -> None:
    """The error of a reader thread surfaces in the main thread: file, line and content, exit 2."""
    addrs, kinds = records(4, 150_000)
    path = tmp_path / "t.lackey"
    write_trace(path, "lackey", addrs, kinds)
    lines = path.read_text().splitlines()
    lines[140_001] = " Q zz,8"
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "simulate", str(path), "--no-progress", *extra],
        capture_output=True, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{path}:140002:" in proc.stderr and "Q zz,8" in proc.stderr


def test_bad_line_error_object_and_no_thread_left(tmp_path: Path) -> None:
    addrs, kinds = records(5, 100_000)
    path = tmp_path / "t.lackey"
    write_trace(path, "lackey", addrs, kinds)
    with path.open("a") as f:
        f.write("not a record\n")
    with pytest.raises(TraceError) as info:
        simulate(load_config(), Input(trace=str(path)))
    assert (info.value.line, info.value.content) == (100_002, "not a record")
    assert not [t for t in threading.enumerate() if t.name.startswith("vmopt-")]


def test_ctrl_c_on_a_fifo_reports_partial_and_exits_130(tmp_path: Path) -> None:
    """SIGINT once the run has simulated two chunks, while the writer keeps the FIFO open.

    The reader thread is blocked in a read then; the run must still stop,
    write its report and JSON marked partial, and exit 130 without a
    traceback. The debug log line ``simulated N accesses`` is the marker.
    """
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    addrs, kinds = records(6, 200_000)  # ~2.8 MB: two whole 1 MiB read blocks, then the reader waits
    write_trace(tmp_path / "t.lackey", "lackey", addrs, kinds)
    data = (tmp_path / "t.lackey").read_bytes()
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmopt.cli.main", "-vv", "simulate", str(fifo), "--no-progress",
         "--format", "lackey", "--json", str(out), "--plot", str(tmp_path / "plots")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    writer_done = threading.Event()
    release = threading.Event()

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(data)
            f.flush()
            writer_done.set()
            release.wait(120)  # keep the FIFO open: the reader blocks for more
            with contextlib.suppress(BrokenPipeError):
                f.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        assert proc.stderr is not None
        seen = 0
        for line in proc.stderr:
            if "simulated " in line and line.rstrip().endswith(" accesses"):
                seen = int(line.split("simulated ")[1].split()[0])
                if seen >= 131072:
                    break
        assert seen >= 131072
        assert writer_done.wait(120)  # all written: the reader is now blocked in a read
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "partial report" in stderr and "partial run" in stdout
    r = json.loads(out.read_text())
    check_consistent(r)
    assert r["partial"] is True
    assert r["accesses"] >= seen and r["accesses"] % 65536 == 0 and r["accesses"] < len(addrs)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir())


@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_in_process_returns_a_consistent_partial_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT during chunk 2 of a trace whose reader then stalls (until released): chunks 0-2 are reported."""
    monkeypatch.setattr(pipeline, "JOIN_GRACE_S", 0.01)
    addrs, kinds = records(7, 400_000)
    path = tmp_path / "t.lackey"
    write_trace(path, "lackey", addrs, kinds)
    main_ident = threading.main_thread().ident
    assert main_ident is not None
    release = threading.Event()
    trace = open_trace(path)

    def stalling() -> Iterator[TraceChunk]:
        for i, chunk in enumerate(trace):
            if i == 3:
                release.wait(120)
            yield chunk

    def progress(n: int) -> None:
        if sim.accesses == 3 * 65536:
            signal.pthread_kill(main_ident, signal.SIGINT)

    sim = Simulator(load_config(), 1)
    result = sim.run(stalling(), progress, close=trace.close, partial_on_interrupt=True)
    release.set()
    report = build_report(result, {})
    check_consistent(report)
    assert report["partial"] is True and report["accesses"] == 3 * 65536
    for t in threading.enumerate():
        if t.name.startswith("vmopt-"):
            t.join(120)
    assert sim.accesses == 3 * 65536  # the released reader played nothing more
