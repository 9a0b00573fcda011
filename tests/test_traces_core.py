"""Differential tests: the core's trace readers against the Python reference.

Both readers get the same bytes (random lines, well-formed and malformed;
random binary; generated ``.npy`` files; every compression, whole or cut
short) and must show the same accesses, kinds, errors (class, message,
line, content) and ``skip_bad`` counts; see trace_diff.normalize for the
few deliberate differences.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.traces import open_trace as ref_open_trace
from trace_diff import COMPRESSORS, compare, drain, normalize
from vmopt import _core
from vmopt.traces import FORMATS, TraceError, open_trace

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Pieces lines are made of: kind letters, separators (including the
# whitespace Python's str.strip knows and bytes.strip does not), addresses
# of every shape, comments, CR, non-ASCII and Lackey syntax.
TOKENS = [
    "R",
    "W",
    "X",
    "I",
    "L",
    "S",
    "M",
    "r",
    "w",
    "x",
    "q",
    "E",
    "RW",
    " ",
    "  ",
    "\t",
    ",",
    ", ",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1f",
    "\r",
    "0x",
    "0X",
    "1f",
    "7f000044cb63",
    "ffffffffffffffff",
    "10000000000000000",
    "00000000000000000001",
    "0xg",
    "zz",
    "dead",
    "beef",
    "8",
    "#",
    "# c",
    "==12==",
    "==x==",
    "SB",
    "SB 4000",
    "I  0400d7d4,8",
    " L 04222cac,8",
    " S 1f,4",
    " M 1f, 4",
    " L 1f,",
    " L ,8",
    "\xff",
    "é",
]

addresses = st.tuples(
    st.integers(0, 2**68) | st.integers(2**64 - 16, 2**64 + 16),
    st.integers(0, 20),
    st.sampled_from(["", "0x", "0X"]),
).map(lambda t: f"{t[2]}{t[0]:0{t[1]}x}")
kinds = st.sampled_from(["R", "W", "X", "I", "L", "S", "M", "r", "w", "x", "i", "l", "s", "m", "Q", ""])
separators = st.sampled_from([" ", "\t", ",", " , ", "\x1c", "  "])
text_records = st.tuples(kinds, separators, addresses).map("".join)
big_values = st.integers(0, 2**68) | st.integers(2**64 - 16, 2**64 + 16) | st.integers(0, 2**32)
lackey_records = st.tuples(
    st.sampled_from(["I  ", " L ", " S ", " M ", " X ", "L ", " L\t"]),
    st.tuples(big_values, st.integers(0, 18)).map(lambda t: f"{t[0]:0{t[1]}x}"),
    st.sampled_from([",", ", ", "", ",,"]),
    st.integers(0, 99).map(str) | st.integers(0, 10**7).map(str) | st.sampled_from(["", " ", "8 ", "x"]),
).map("".join)
lines = st.one_of(st.lists(st.sampled_from(TOKENS), max_size=6).map("".join), text_records, lackey_records)
line_blocks = st.lists(lines, min_size=0, max_size=30)


def encode(block: list[str], crlf: bool, final_newline: bool) -> bytes:
    sep = "\r\n" if crlf else "\n"
    text = sep.join(block) + (sep if final_newline and block else "")
    return text.encode("utf-8", errors="surrogateescape")


@SETTINGS
@given(
    block=line_blocks,
    crlf=st.booleans(),
    final_newline=st.booleans(),
    fmt=st.sampled_from([None, "text", "lackey"]),
    compression=st.sampled_from(list(COMPRESSORS)),
    skip_bad=st.booleans(),
    chunk_size=st.sampled_from([1, 3, 65536]),
    name=st.sampled_from(["t.txt", "t", "t.trace", "t.lackey"]),
)
def test_line_formats_agree(
    tmp_path: Path,
    block: list[str],
    crlf: bool,
    final_newline: bool,
    fmt: str | None,
    compression: str,
    skip_bad: bool,
    chunk_size: int,
    name: str,
) -> None:
    data = COMPRESSORS[compression](encode(block, crlf, final_newline))
    path = tmp_path / name
    path.write_bytes(data)
    compare(path, format=fmt, skip_bad=skip_bad, chunk_size=chunk_size)


canonical_lackey = st.tuples(
    st.sampled_from(["I  ", " L ", " S ", " M "]),
    st.tuples(big_values | st.integers(2**64, 2**68), st.integers(0, 17)).map(lambda t: f"{t[0]:0{t[1]}x}"),
    st.integers(0, 999_999),
).map(lambda t: f"{t[0]}{t[1]},{t[2]}")


@SETTINGS
@given(
    records=st.lists(canonical_lackey, min_size=1, max_size=40),
    skip_bad=st.booleans(),
    compression=st.sampled_from(list(COMPRESSORS)),
)
def test_wellformed_lackey_agree(
    tmp_path: Path, records: list[str], skip_bad: bool, compression: str
) -> None:
    """Lackey records as valgrind writes them, addresses up to and past 64 bits."""
    path = tmp_path / "t.lackey"
    path.write_bytes(COMPRESSORS[compression](("==7== Lackey\n" + "\n".join(records) + "\n").encode()))
    compare(path, skip_bad=skip_bad, chunk_size=16)


@SETTINGS
@given(
    block=st.lists(st.sampled_from(["10", "W 11", "f" * 50, "R 0xg", "", "ab" * 30]), max_size=12),
    block_bytes=st.integers(7, 64),
    max_line=st.integers(8, 80),
    skip_bad=st.booleans(),
    fmt=st.sampled_from(["text", "lackey"]),
)
def test_block_boundaries_and_long_lines_agree(
    tmp_path: Path, block: list[str], block_bytes: int, max_line: int, skip_bad: bool, fmt: str
) -> None:
    """Line numbers and over-long lines come out the same wherever read blocks end."""
    path = tmp_path / "t.txt"
    path.write_bytes("\n".join(block).encode())
    compare(path, format=fmt, skip_bad=skip_bad, block_bytes=block_bytes, max_line=max_line)


@SETTINGS
@given(
    data=st.binary(max_size=300),
    fmt=st.sampled_from([None, "raw", "text", "lackey", "npy"]),
    compression=st.sampled_from(list(COMPRESSORS)),
    skip_bad=st.booleans(),
    name=st.sampled_from(["t.bin", "t", "t.npy"]),
)
def test_random_bytes_agree(
    tmp_path: Path, data: bytes, fmt: str | None, compression: str, skip_bad: bool, name: str
) -> None:
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[compression](data))
    compare(path, format=fmt, skip_bad=skip_bad, chunk_size=7)


@SETTINGS
@given(
    data=st.binary(min_size=1, max_size=400),
    compression=st.sampled_from(["gzip", "zstd", "xz"]),
    cut=st.floats(0, 1),
    fmt=st.sampled_from([None, "raw", "text"]),
)
def test_cut_compressed_streams_agree(
    tmp_path: Path, data: bytes, compression: str, cut: float, fmt: str | None
) -> None:
    """A compressed trace cut short is an error in both, never a silently shorter trace."""
    blob = COMPRESSORS[compression](b"W 10\n" * 50 + data)
    path = tmp_path / "t"
    path.write_bytes(blob[: int(len(blob) * cut)])
    compare(path, format=fmt)


NPY_DTYPES = ["<u8", "<i8", "<u4", "<i4", "<u2", "<i2", "|u1", "|i1", ">u8", ">i4", "<f8", "|b1"]


@SETTINGS
@given(
    values=st.lists(st.integers(-(2**63), 2**64 - 1), min_size=0, max_size=40),
    dtype=st.sampled_from(NPY_DTYPES),
    two_d=st.booleans(),
    version=st.sampled_from([(1, 0), (2, 0), (3, 0)]),
    compression=st.sampled_from(list(COMPRESSORS)),
    cut=st.none() | st.integers(0, 200),
    skip_bad=st.booleans(),
)
def test_npy_agrees(
    tmp_path: Path,
    values: list[int],
    dtype: str,
    two_d: bool,
    version: tuple[int, int],
    compression: str,
    cut: int | None,
    skip_bad: bool,
) -> None:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = [min(max(v, info.min), info.max) for v in values]
    array = np.array(values, dtype=np.float64 if dt.kind not in "iu" else object).astype(dt)
    if two_d and len(values) % 2 == 0 and values:
        array = array.reshape(2, -1)
    out = io.BytesIO()
    np.lib.format.write_array(out, array, version=version)
    data = out.getvalue()
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "t.npy"
    path.write_bytes(COMPRESSORS[compression](data))
    compare(path, skip_bad=skip_bad, chunk_size=5)


def test_format_lists_agree() -> None:
    assert tuple(_core.TRACE_FORMATS) == FORMATS


@pytest.mark.parametrize("data", [b"zz\n", b"  \n\n# only a comment\nqq 1 2\n"])
def test_detection_message_names_the_cli_option(tmp_path: Path, data: bytes) -> None:
    """Issue 12 item 13: the undetectable-format message names --format, not format=."""
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    out = compare(path)
    assert out.error is not None
    assert "pass --format" in out.error[1] and "format=" in out.error[1]
    assert "champsim" in out.error[1]


class _Stdin:
    """Stands in for sys.stdin: only ``.buffer`` is read."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


@SETTINGS
@given(
    block=line_blocks,
    compression=st.sampled_from(list(COMPRESSORS)),
    skip_bad=st.booleans(),
)
def test_stdin_agrees(
    monkeypatch: pytest.MonkeyPatch, block: list[str], compression: str, skip_bad: bool
) -> None:
    """stdin streams through Python reads into the core parser, with the reference's results."""
    from vmopt.traces import open_trace

    data = COMPRESSORS[compression](encode(block, False, True))
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    want = drain(lambda: ref_open_trace("-", skip_bad=skip_bad))
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    got = drain(lambda: open_trace("-", skip_bad=skip_bad))
    assert normalize(got) == normalize(want)


def test_closed_stdin_is_a_trace_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 9: ``vmopt simulate - <&-`` has no sys.stdin at all."""
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(TraceError, match="stdin is closed"):
        open_trace("-")
