"""ChampSim, cloudsuite and drmemtrace traces: read back what the struct layouts say.

Expected accesses come from NumPy structured dtypes of the C structs
(tests/trace_layouts.py), never from the reader itself.
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trace_layouts import (
    CLOUDSUITE_INSTR,
    DR_HEADER,
    DR_PID,
    DR_THREAD,
    INPUT_INSTR,
    TRACE_ENTRY,
    Expected,
    champsim_expected,
    drmemtrace_expected,
)
from vmopt.traces import TraceChunk, TraceError, open_trace

DATA = Path(__file__).parent / "data"
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def read(path: Path, **kw: object) -> tuple[TraceChunk, str, int]:
    with open_trace(path, **kw) as trace:  # type: ignore[arg-type]
        chunk = trace.read_all()
        return chunk, trace.format, trace.bad_records


def assert_chunk(chunk: TraceChunk, want: Expected, *, cpus: bool, asids: bool) -> None:
    addrs, kinds, want_cpus, want_asids = want
    assert chunk.addrs.tolist() == addrs
    assert chunk.kinds.tolist() == kinds
    assert (chunk.cpus is not None) == cpus
    assert (chunk.asids is not None) == asids
    if cpus:
        assert chunk.cpus is not None and chunk.cpus.tolist() == want_cpus
    if asids:
        assert chunk.asids is not None and chunk.asids.tolist() == want_asids


def decompress(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else gzip.decompress(data)


def test_champsim_sample_detected_and_counted() -> None:
    path = DATA / "sample.champsimtrace.xz"
    records = np.frombuffer(decompress(path), INPUT_INSTR)
    chunk, fmt, _ = read(path)
    assert fmt == "champsim"
    assert_chunk(chunk, champsim_expected(records), cpus=False, asids=False)
    # The sample has empty slots (skipped) and full ones.
    assert len(chunk) < 7 * len(records) and len(chunk) > len(records)


def test_cloudsuite_sample_detected_and_counted() -> None:
    path = DATA / "sample_cloudsuite.champsimtrace.gz"
    records = np.frombuffer(decompress(path), CLOUDSUITE_INSTR)
    chunk, fmt, _ = read(path)
    assert fmt == "champsim-cloudsuite"
    assert_chunk(chunk, champsim_expected(records), cpus=False, asids=True)
    assert chunk.asids is not None and len(set(chunk.asids.tolist())) > 1


def test_drmemtrace_sample_detected_and_counted() -> None:
    path = DATA / "sample.drmemtrace.gz"
    entries = np.frombuffer(decompress(path), TRACE_ENTRY)
    chunk, fmt, _ = read(path)
    assert fmt == "drmemtrace"
    assert_chunk(chunk, drmemtrace_expected(entries), cpus=True, asids=True)
    assert chunk.cpus is not None and set(chunk.cpus.tolist()) == {0, 1, 2}


def random_records(dtype: np.dtype[np.void], data: bytes) -> npt.NDArray[np.void]:
    n = len(data) // dtype.itemsize
    return np.frombuffer(data[: n * dtype.itemsize], dtype).copy()


@SETTINGS
@given(
    raw=st.binary(min_size=0, max_size=96 * 12),
    zero_mask=st.integers(0, 2**12 - 1),
    cloudsuite=st.booleans(),
    compression=st.sampled_from(["none", "gzip", "xz"]),
    chunk_size=st.sampled_from([1, 5, 65536]),
)
def test_champsim_random_records(
    tmp_path: Path, raw: bytes, zero_mask: int, cloudsuite: bool, compression: str, chunk_size: int
) -> None:
    dtype = CLOUDSUITE_INSTR if cloudsuite else INPUT_INSTR
    records = random_records(dtype, raw)
    for i in range(len(records)):  # zero some slots so skipping is exercised
        if zero_mask >> (i % 12) & 1:
            records["src_mem"][i, 0] = 0
            records["dst_mem"][i, -1] = 0
    data = records.tobytes()
    blob = {"none": data, "gzip": gzip.compress(data), "xz": lzma.compress(data)}[compression]
    path = tmp_path / "t.bin"
    path.write_bytes(blob)
    fmt = "champsim-cloudsuite" if cloudsuite else "champsim"
    if len(records) == 0:
        with pytest.raises(TraceError, match="empty trace"):
            read(path, format=fmt)
        return
    chunk, _, _ = read(path, format=fmt, chunk_size=chunk_size)
    assert_chunk(chunk, champsim_expected(records), cpus=False, asids=cloudsuite)


entry_types = st.sampled_from([0, 1, 2, 10, 11, 16, 17, 22, 23, 24, 25, 26, 28, 29, 31, 47, 48, 49, 500])


@SETTINGS
@given(
    entries=st.lists(
        st.tuples(
            entry_types, st.integers(0, 2**16 - 1), st.sampled_from([0, 1, 7, 2**64 - 1, 0x7F00_0000_1000])
        ),
        max_size=60,
    ),
    compression=st.sampled_from(["none", "gzip"]),
    chunk_size=st.sampled_from([1, 4, 65536]),
)
def test_drmemtrace_random_entries(
    tmp_path: Path, entries: list[tuple[int, int, int]], compression: str, chunk_size: int
) -> None:
    array = np.array([(DR_HEADER, 0, 5), (DR_THREAD, 4, 9), *entries], TRACE_ENTRY)
    data = array.tobytes()
    path = tmp_path / "t.drmemtrace"
    path.write_bytes(gzip.compress(data) if compression == "gzip" else data)
    want = drmemtrace_expected(array)
    if not want[0]:
        with pytest.raises(TraceError, match="empty trace"):
            read(path)
        return
    chunk, fmt, _ = read(path, chunk_size=chunk_size)
    assert fmt == "drmemtrace"
    assert_chunk(chunk, want, cpus=True, asids=True)


@pytest.mark.parametrize(
    ("fmt", "size", "what"),
    [("champsim", 64, "ChampSim"), ("champsim-cloudsuite", 96, "ChampSim"), ("drmemtrace", 12, "drmemtrace")],
)
def test_truncated_last_record(tmp_path: Path, fmt: str, size: int, what: str) -> None:
    """A cut-off last record is an error naming the byte offset, or one bad record with skip_bad."""
    data = bytearray(3 * size + 5)
    if fmt == "drmemtrace":
        for i in range(3):
            data[i * 12 : i * 12 + 2] = (10).to_bytes(2, "little")  # INSTR
            data[i * 12 + 4 : i * 12 + 12] = (0x1000 * (i + 1)).to_bytes(8, "little")
    else:
        for i in range(3):
            data[i * size : i * size + 8] = (0x400000 + i).to_bytes(8, "little")
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError) as info:
        read(path, format=fmt)
    assert str(info.value) == f"{path}: truncated {what} record at byte {3 * size}: 5 of {size} bytes"
    chunk, _, bad = read(path, format=fmt, skip_bad=True)
    assert bad == 1 and len(chunk) == 3


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("600.perlbench_s-210B.champsimtrace.xz", "champsim"),
        ("x.champsimtrace", "champsim"),
        ("cloudsuite_cassandra.champsimtrace.gz", "champsim-cloudsuite"),
    ],
)
def test_champsim_detected_by_name(tmp_path: Path, name: str, fmt: str) -> None:
    record = np.zeros(2, CLOUDSUITE_INSTR if "cloudsuite" in name else INPUT_INSTR)
    record["ip"] = [0x1000, 0x2000]
    data = record.tobytes()
    blob = (
        lzma.compress(data) if name.endswith(".xz") else gzip.compress(data) if name.endswith(".gz") else data
    )
    path = tmp_path / name
    path.write_bytes(blob)
    chunk, got, _ = read(path)
    assert got == fmt and chunk.addrs.tolist() == [0x1000, 0x2000]


def test_drmemtrace_many_threads_and_pids_numbered_in_order(tmp_path: Path) -> None:
    entries = [(DR_HEADER, 0, 5)]
    for tid in (50, 40, 50, 30):
        entries += [(DR_THREAD, 4, tid), (DR_PID, 4, tid + 1000), (10, 4, tid)]
    path = tmp_path / "t"
    path.write_bytes(np.array(entries, TRACE_ENTRY).tobytes())
    chunk, _, _ = read(path)
    assert chunk.cpus is not None and chunk.cpus.tolist() == [0, 1, 0, 2]
    assert chunk.asids is not None and chunk.asids.tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize(
    ("sample", "fmt", "extra"),
    [
        ("sample.champsimtrace.xz", "champsim", []),
        ("sample_cloudsuite.champsimtrace.gz", "champsim-cloudsuite", []),
        ("sample.drmemtrace.gz", "drmemtrace", ["--set", "numa.cpus=3"]),
    ],
)
def test_simulate_runs_the_new_formats(tmp_path: Path, sample: str, fmt: str, extra: list[str]) -> None:
    """`vmopt simulate` detects each new format (and accepts it as --format), counting every access."""
    import json

    from vmopt.cli.main import main

    chunk, _, _ = read(DATA / sample)
    want_kinds = np.bincount(chunk.kinds, minlength=3).tolist()
    for forced in ([], ["--format", fmt]):
        out = tmp_path / "r.json"
        assert (
            main(["simulate", str(DATA / sample), *forced, *extra, "--no-progress", "--json", str(out)]) == 0
        )
        report = json.loads(out.read_text())
        assert report["source"]["format"] == fmt
        assert report["accesses"] == len(chunk)
        assert [report["kinds"][k] for k in ("read", "write", "fetch")] == want_kinds
