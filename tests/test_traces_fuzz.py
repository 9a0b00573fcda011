"""Fuzzing the trace readers (issue 12 item 23, trace half), bounded in time.

Every seed in tests/corpus/traces/ is replayed on every run under every
format and compression setting, then mutated (flips, inserts, cuts,
compression) for ``VMOPT_FUZZ_EXAMPLES`` examples (default 150; set it
higher to fuzz longer locally). A reader may only ever finish or raise
``TraceError``: a panic (``VmoptError`` "internal error"), any other
exception, a hang or unbounded memory is a bug. Also here: regression
tests for issue 12 item 8 (hostile ``.npy`` headers) and bombs that must
be refused or streamed in bounded memory.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmopt.traces import FORMATS, TraceError, open_trace

CORPUS = Path(__file__).parent / "corpus" / "traces"
SEEDS = sorted(p for p in CORPUS.iterdir() if p.suffix != ".py")
EXAMPLES = int(os.environ.get("VMOPT_FUZZ_EXAMPLES", "150"))


def read_or_trace_error(path: str | Path, **kw: object) -> int:
    """Read ``path`` to its end; return the access count, or -1 for a TraceError."""
    try:
        with open_trace(path, chunk_size=4096, **kw) as trace:  # type: ignore[arg-type]
            return sum(len(c) for c in trace)
    except TraceError:
        return -1


def test_corpus_has_seeds() -> None:
    assert len(SEEDS) >= 10


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.name)
def test_corpus_seed_under_every_setting(seed: Path) -> None:
    for fmt in (None, *FORMATS):
        for compression in (None, "none"):
            for skip_bad in (False, True):
                read_or_trace_error(seed, format=fmt, compression=compression, skip_bad=skip_bad)


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, value in ops:
        at = pos % (len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << (value % 8)
        elif op == 1:
            buf[at:at] = bytes([value % 256]) * (1 + value % 7)
        elif op == 2:
            del buf[at:]
        elif op == 3:
            buf[at:at] = buf[: value % 64]
    return bytes(buf)


COMPRESS = {
    "none": lambda b: b,
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "xz": lzma.compress,
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(SEEDS),
    ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4096), st.integers(0, 255)), max_size=6),
    compress=st.sampled_from(list(COMPRESS)),
    cut_compressed=st.none() | st.integers(0, 4096),
    fmt=st.sampled_from([None, *FORMATS]),
    skip_bad=st.booleans(),
)
def test_mutated_seeds_only_raise_trace_error(
    tmp_path: Path,
    seed: Path,
    ops: list[tuple[int, int, int]],
    compress: str,
    cut_compressed: int | None,
    fmt: str | None,
    skip_bad: bool,
) -> None:
    blob = COMPRESS[compress](mutate(seed.read_bytes(), ops))
    if cut_compressed is not None:
        blob = blob[:cut_compressed]
    path = tmp_path / seed.name
    path.write_bytes(blob)
    read_or_trace_error(path, format=fmt, skip_bad=skip_bad)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=2048),
    fmt=st.sampled_from([None, *FORMATS]),
    forced=st.sampled_from([None, "gzip", "zstd", "xz"]),
)
def test_random_bytes_only_raise_trace_error(
    tmp_path: Path, data: bytes, fmt: str | None, forced: str | None
) -> None:
    path = tmp_path / "t"
    path.write_bytes(data)
    read_or_trace_error(path, format=fmt, compression=forced)


# -- issue 12 item 8: hostile .npy headers -------------------------------------


def npy_header(header: str) -> bytes:
    raw = header.encode()
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (
            "{'descr': '<u8', 'fortran_order': False, 'shape': (-1,), }",
            "negative dimension -1 in shape (-1,)",
        ),
        ("{'descr': (", "not a valid .npy file"),
        ("{'descr': '<u8', 'fortran_order': False, 'shape': (2**64,), }", "not a valid .npy file"),
        ("{'descr': '<u8', 'fortran_order': 1, 'shape': (3,), }", "fortran_order"),
        ("{'descr': '<u8', 'shape': (3,), }", "keys"),
        ("[1, 2]", "not a dictionary"),
        ("{'descr': '<u8', 'fortran_order': False, 'shape': (100000000000000000000000,), }", "too large"),
    ],
)
def test_bad_npy_headers_are_trace_errors(tmp_path: Path, header: str, needle: str) -> None:
    path = tmp_path / "t.npy"
    path.write_bytes(npy_header(header) + b"\0" * 64)
    with pytest.raises(TraceError) as info:
        open_trace(path).read_all()
    assert needle in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_negative_npy_shape_on_stdin_is_not_an_empty_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    data = npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (-1,), }") + b"\0" * 16

    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin())
    with pytest.raises(TraceError, match="negative dimension") as info:
        open_trace("-").read_all()
    assert "empty" not in str(info.value)


def test_huge_npy_shape_is_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    path.write_bytes(
        npy_header("{'descr': '<u8', 'fortran_order': False, 'shape': (4611686018427387904,), }")
    )
    with pytest.raises(
        TraceError, match=r"truncated \.npy file: header declares 4611686018427387904 elements"
    ):
        open_trace(path)
    path.write_bytes(gzip.compress(path.read_bytes() + b"\1" * 800))
    with pytest.raises(TraceError, match=r"truncated \.npy data: .* found 100"):
        open_trace(path).read_all()


def test_oversized_npy_header_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'")
    with pytest.raises(TraceError, match="header of 4294967295 bytes is longer than the 10000 allowed"):
        open_trace(path)


# -- bombs: decompression streams, memory stays bounded ------------------------


def gzip_zeros(path: Path, mib: int) -> None:
    """Write ``mib`` MiB of zero bytes gzip-compressed, without holding them in memory."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(comp.compress(block))
        f.write(comp.flush())


PEAK_RSS = """
import resource, sys
from vmopt.traces import open_trace, TraceError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = 0
try:
    with open_trace(sys.argv[1], format=sys.argv[2], skip_bad=True) as t:
        for c in t:
            n += len(c)
except TraceError as e:
    print("error", e, file=sys.stderr)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(n, (after - before) // 1024)
"""


@pytest.mark.parametrize(("fmt", "records"), [("raw", 256 << 17), ("text", -1)])
def test_decompression_bomb_streams_in_bounded_memory(tmp_path: Path, fmt: str, records: int) -> None:
    """256 MiB of zeros in a 256 KiB gzip: raw streams them, text refuses the endless line.

    Either way the reader's peak RSS grows by less than 64 MiB.
    """
    path = tmp_path / "bomb.gz"
    gzip_zeros(path, 256)
    assert path.stat().st_size < 1 << 20
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(path), fmt],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    count, grown_mib = map(int, out.stdout.split())
    if records >= 0:
        assert count == records
    else:
        assert "line longer than 1048576 bytes" in out.stderr
    assert grown_mib < 64, out.stdout
