"""Tests for vmopt.traces readers: formats, compression, detection and errors."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.traces._lines import BadLine, parse_block, parse_lackey_line, parse_text_line
from reference.traces._zstd import FrameTracker
from trace_diff import open_core
from vmopt.errors import ConfigError, VmoptError
from vmopt.traces import (
    FORMATS,
    AccessKind,
    TraceChunk,
    TraceError,
    concat_chunks,
    open_trace,
    rechunk,
)

DATA = Path(__file__).parent / "data"

Addrs = npt.NDArray[np.uint64]
Kinds = npt.NDArray[np.uint8]

COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "none": ("", lambda b: b),
    "gzip": (".gz", gzip.compress),
    "zstd": (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    "xz": (".xz", lzma.compress),
}

TEXT_LETTER = {AccessKind.READ: "R", AccessKind.WRITE: "W", AccessKind.FETCH: "X"}


# -- helpers -----------------------------------------------------------------


def sample(n: int = 5000, seed: int = 1) -> tuple[Addrs, Kinds]:
    rng = np.random.default_rng(seed)
    addrs = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    addrs[:3] = [0, 2**64 - 1, 0x7F00_0000_1000]
    kinds = rng.integers(0, 3, n).astype(np.uint8)
    return addrs, kinds


def text_bytes(addrs: Addrs, kinds: Kinds | None) -> bytes:
    if kinds is None:
        return "".join(f"{a:x}\n" for a in addrs.tolist()).encode()
    return "".join(
        f"{TEXT_LETTER[AccessKind(k)]} 0x{a:x}\n" for a, k in zip(addrs.tolist(), kinds.tolist(), strict=True)
    ).encode()


def lackey_bytes(addrs: Addrs, kinds: Kinds) -> bytes:
    lines = ["==42== Lackey, an example Valgrind tool", "==42== Command: /bin/true", "==42== "]
    for i, (a, k) in enumerate(zip(addrs.tolist(), kinds.tolist(), strict=True)):
        if k == AccessKind.FETCH:
            lines.append(f"I  {a:08x},{1 + i % 15}")
        elif k == AccessKind.READ:
            lines.append(f" L {a:08x},8")
        else:
            lines.append(f" {'M' if i % 2 else 'S'} {a:08x},4")
    lines += ["==42== ", "==42== Exit code:       0"]
    return ("\n".join(lines) + "\n").encode()


def npy_bytes(values: npt.NDArray[Any]) -> bytes:
    out = io.BytesIO()
    np.save(out, values)
    return out.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path: str | os.PathLike[str], **kw: object) -> TraceChunk:
    with open_trace(path, **kw) as trace:  # type: ignore[arg-type]
        return trace.read_all()


# -- round trips -------------------------------------------------------------


@pytest.mark.parametrize("compression", list(COMPRESSORS))
@pytest.mark.parametrize("fmt", ["text", "text-plain", "lackey", "npy", "raw"])
def test_round_trip_every_format_and_compression(tmp_path: Path, fmt: str, compression: str) -> None:
    addrs, kinds = sample()
    if fmt == "text":
        data, ext, want_kinds = text_bytes(addrs, kinds), ".txt", kinds
    elif fmt == "text-plain":
        data, ext, want_kinds = text_bytes(addrs, None), ".trace", np.zeros_like(kinds)
    elif fmt == "lackey":
        data, ext, want_kinds = lackey_bytes(addrs, kinds), ".out", kinds
    elif fmt == "npy":
        data, ext, want_kinds = npy_bytes(addrs), ".npy", np.zeros_like(kinds)
    else:
        data, ext, want_kinds = addrs.astype("<u8").tobytes(), ".bin", np.zeros_like(kinds)
    suffix, compress = COMPRESSORS[compression]
    path = write(tmp_path, f"trace{ext}{suffix}", compress(data))
    with open_trace(path, chunk_size=1000) as trace:
        assert trace.format == fmt.split("-")[0]
        assert trace.compression == (None if compression == "none" else compression)
        chunk = trace.read_all()
        assert trace.records == len(addrs)
        assert trace.bad_records == 0
        assert trace.total_bytes == path.stat().st_size
        assert trace.bytes_read == path.stat().st_size
    assert chunk.addrs.dtype == np.uint64 and chunk.kinds.dtype == np.uint8
    np.testing.assert_array_equal(chunk.addrs, addrs)
    np.testing.assert_array_equal(chunk.kinds, want_kinds)
    assert chunk.cpus is None


@pytest.mark.parametrize("dtype", ["u1", "i1", "<u2", ">i2", "<i4", ">u4", "<i8", ">u8"])
def test_npy_any_integer_dtype(tmp_path: Path, dtype: str) -> None:
    values = np.arange(0, 100, dtype=dtype)
    for name, data in [
        ("a.npy", npy_bytes(values)),
        ("a.npy.gz", gzip.compress(npy_bytes(values))),
    ]:
        chunk = read_all(write(tmp_path, name, data), chunk_size=7)
        np.testing.assert_array_equal(chunk.addrs, np.arange(100, dtype=np.uint64))
        assert (chunk.kinds == AccessKind.READ).all()


def test_npy_is_memory_mapped_and_reports_progress(tmp_path: Path) -> None:
    path = write(tmp_path, "a.npy", npy_bytes(np.arange(10_000, dtype=np.uint64)))
    with open_trace(path, chunk_size=1000) as trace:
        first = next(trace)
        assert len(first) == 1000
        assert 0 < trace.bytes_read < path.stat().st_size
        rest = trace.read_all()
        assert trace.bytes_read == trace.total_bytes == path.stat().st_size
    assert len(rest) == 9000


def test_text_syntax_variants(tmp_path: Path) -> None:
    text = (
        b"# a comment line\n"
        b"\n"
        b"1000\n"
        b"0x2000\n"
        b"0XaBc\n"
        b"w 0x10  # trailing comment\n"
        b"R,20\n"
        b"  X\t30  \n"
        b"i 40\r\n"
        b"L , 50\n"
        b"s 60\n"
        b"M 70\n"
        b"W    0x80\n"
        b"ffffffffffffffff\n"
        b"00000000000000000001\n"
        b"90"  # no final newline
    )
    chunk = read_all(write(tmp_path, "t.txt", text))
    assert chunk.addrs.tolist() == [
        0x1000,
        0x2000,
        0xABC,
        0x10,
        0x20,
        0x30,
        0x40,
        0x50,
        0x60,
        0x70,
        0x80,
        2**64 - 1,
        1,
        0x90,
    ]
    R, W, X = AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH
    assert chunk.kinds.tolist() == [R, R, R, W, R, X, X, R, W, W, W, R, R, R]


def test_lackey_letters_banners_and_superblocks(tmp_path: Path) -> None:
    text = (
        b"==7== Lackey, an example Valgrind tool\n"
        b"SB 0401ab70\n"
        b"I  0401a4f0,3\n"
        b" L 04222cac,8\n"
        b" S 7ff000a38,8\n"
        b" M 0421d8e0,4\n"
        b"\n"
        b"==7== Counted 1 call to main()\n"
    )
    trace = open_trace(write(tmp_path, "x.out", text))
    assert trace.format == "lackey"
    chunk = trace.read_all()
    assert chunk.addrs.tolist() == [0x0401A4F0, 0x04222CAC, 0x7FF000A38, 0x0421D8E0]
    # M (modify = read-modify-write) is ONE write access.
    fetch, read, write_ = AccessKind.FETCH, AccessKind.READ, AccessKind.WRITE
    assert chunk.kinds.tolist() == [fetch, read, write_, write_]


def test_lackey_fixture_counts_match_grep(tmp_path: Path) -> None:
    path = DATA / "ls.lackey.gz"
    counts = {"I": 0, "L": 0, "S": 0, "M": 0}
    first = None
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("=="):
                continue
            letter = line.strip()[0]
            counts[letter] += 1
            if first is None:
                first = int(line.split()[1].split(",")[0], 16)
    assert all(counts.values()), "fixture should contain all four record kinds"
    with open_trace(path) as trace:
        assert trace.format == "lackey"
        assert trace.compression == "gzip"
        chunk = trace.read_all()
    assert trace.bad_records == 0
    assert len(chunk) == sum(counts.values())
    assert chunk.addrs[0] == first
    assert int((chunk.kinds == AccessKind.FETCH).sum()) == counts["I"]
    assert int((chunk.kinds == AccessKind.READ).sum()) == counts["L"]
    assert int((chunk.kinds == AccessKind.WRITE).sum()) == counts["S"] + counts["M"]


# -- detection ---------------------------------------------------------------


def test_detects_lackey_without_banner(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"I  0401a4f0,3\n L 04222cac,8\n")
    assert open_trace(path).format == "lackey"


def test_detects_text_after_comments(tmp_path: Path) -> None:
    path = write(tmp_path, "t.log", b"# generated\n# by hand\nW 0x10\n20\n")
    assert open_trace(path).format == "text"


def test_detects_raw_from_binary_content(tmp_path: Path) -> None:
    addrs = np.array([0x7F00_0000_1000, 0x10], np.uint64)
    path = write(tmp_path, "t.dat", addrs.tobytes())
    with open_trace(path) as trace:
        assert trace.format == "raw"
        np.testing.assert_array_equal(trace.read_all().addrs, addrs)


@pytest.mark.parametrize("ext", [".bin", ".raw", ".u64", ".u64.xz"])
def test_raw_extension_wins_over_text_like_content(tmp_path: Path, ext: str) -> None:
    data = b"12345678abcdefgh"  # valid ASCII, but the extension says raw
    if ext.endswith(".xz"):
        data = lzma.compress(data)
    with open_trace(write(tmp_path, "t" + ext, data)) as trace:
        assert trace.format == "raw"
        assert trace.read_all().addrs.tolist() == [
            int.from_bytes(b"12345678", "little"),
            int.from_bytes(b"abcdefgh", "little"),
        ]


def test_npy_magic_wins_over_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "t.bin", npy_bytes(np.arange(5, dtype=np.int32)))
    assert open_trace(path).format == "npy"


def test_compression_detected_by_magic_not_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", zstandard.ZstdCompressor().compress(b"W 10\n"))
    with open_trace(path) as trace:
        assert (trace.compression, trace.format) == ("zstd", "text")
        assert trace.read_all().addrs.tolist() == [0x10]


def test_compression_can_be_forced_or_disabled(tmp_path: Path) -> None:
    path = write(tmp_path, "t.gz", gzip.compress(b"10\n"))
    with open_trace(path, compression="none", format="text") as trace:
        assert trace.compression is None
        with pytest.raises(TraceError, match="non-ASCII"):
            trace.read_all()
    forced = write(tmp_path, "t.dat", gzip.compress(b"20\n"))
    with open_trace(forced, compression="gzip") as trace:
        assert trace.read_all().addrs.tolist() == [0x20]
    with pytest.raises(TraceError, match="corrupt or truncated xz"):
        read_all(forced, compression="xz")
    with pytest.raises(TraceError, match="unknown compression 'lz4'"):
        open_trace(path, compression="lz4")


def test_format_override(tmp_path: Path) -> None:
    path = write(tmp_path, "t.bin", b"100\n200\n300\n400\n")
    assert open_trace(path).format == "raw"
    with open_trace(path, format="text") as trace:
        assert trace.format == "text"
        assert trace.read_all().addrs.tolist() == [0x100, 0x200, 0x300, 0x400]
    assert open_trace(path, format="auto").format == "raw"


def test_unknown_format_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"10\n")
    with pytest.raises(TraceError) as info:
        open_trace(path, format="csv")
    message = str(info.value)
    assert "'csv'" in message
    for name in FORMATS:
        assert name in message


def test_undetectable_text_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", b"# header\nhello world, this is prose\nmore prose\n")
    with pytest.raises(TraceError) as info:
        open_trace(path)
    assert info.value.line == 2
    assert "notes.txt:2:" in str(info.value)
    assert "hello world" in str(info.value)
    assert "format=" in str(info.value)


def test_npy_extension_without_magic_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"not a \.npy file"):
        open_trace(write(tmp_path, "t.npy", b"10\n20\n"))


# -- errors ------------------------------------------------------------------


def test_malformed_text_line_names_file_line_and_content(tmp_path: Path) -> None:
    lines = [f"{i:x}" for i in range(16)] + ["zz12"] + ["ff"] * 3
    path = write(tmp_path, "trace.txt", ("\n".join(lines) + "\n").encode())
    trace = open_trace(path)
    with pytest.raises(TraceError) as info:
        list(trace)
    err = info.value
    assert isinstance(err, VmoptError) and isinstance(err, ValueError)
    assert "trace.txt:17:" in str(err)
    assert "'zz12'" in str(err)
    assert "address" in str(err)
    assert err.line == 17
    assert err.path is not None and err.path.endswith("trace.txt")
    assert err.content == "zz12"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("Q 0x10", "unknown access kind 'Q'"),
        ("W 0x10 0x20", "expected '[KIND] ADDRESS'"),
        ("0x", "cannot parse '0x'"),
        ("1" + "0" * 16, "does not fit in 64 bits"),
        ("W 12g4", "cannot parse '12g4'"),
    ],
)
def test_malformed_text_reasons(tmp_path: Path, line: str, needle: str) -> None:
    path = write(tmp_path, "t.txt", f"10\n20\n{line}\n".encode())
    with pytest.raises(TraceError, match=re.escape(needle)) as info:
        read_all(path)
    assert info.value.line == 3
    assert info.value.content == line


def test_non_ascii_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", "10\n20\nW 1é\n".encode())
    with pytest.raises(TraceError, match="non-ASCII") as info:
        read_all(path, format="text")
    assert info.value.line == 3


def test_malformed_lackey_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ls.lackey", b"==1== banner\nI  0401a4f0,3\n L 0422zcac,8\n")
    with pytest.raises(TraceError) as info:
        read_all(path)
    assert "ls.lackey:3:" in str(info.value)
    assert "L 0422zcac,8" in str(info.value)
    assert "Lackey record" in str(info.value)
    assert info.value.line == 3


def test_line_numbers_are_exact_across_blocks(tmp_path: Path) -> None:
    # > 1 MiB so the bad line lands in a later read block.
    good = b"W 0x7f0000001000\n" * 150_000
    path = write(tmp_path, "big.txt.gz", gzip.compress(good + b"W 0xnothex\n" + good))
    with pytest.raises(TraceError, match=r"big\.txt\.gz:150001: cannot parse '0xnothex'"):
        read_all(path)


def test_skip_bad_counts_and_skips(tmp_path: Path) -> None:
    good = b"W 0x10\n" * 100_000
    data = b"bogus\n" + good + b"R 0x20,,x\n" + good + b"Q 1\n" + b"\xff\xfe\n"
    path = write(tmp_path, "t.txt", data)
    with open_trace(path, skip_bad=True, format="text") as trace:
        chunk = trace.read_all()
        assert trace.bad_records == 4
        assert trace.records == 200_000
    assert len(chunk) == 200_000
    assert (chunk.addrs == 0x10).all() and (chunk.kinds == AccessKind.WRITE).all()


def test_skip_bad_lackey(tmp_path: Path) -> None:
    path = write(tmp_path, "t.lackey", b"I  10,3\n L 20\n S 30,8\nnoise\n M 40,4\n")
    with open_trace(path, skip_bad=True) as trace:
        assert trace.read_all().addrs.tolist() == [0x10, 0x30, 0x40]
        assert trace.bad_records == 2


def test_over_long_line(tmp_path: Path) -> None:
    data = b"10\n" + b"1" * (3 << 20) + b"\n20\n"
    path = write(tmp_path, "t.txt", data)
    with pytest.raises(TraceError, match=r"t\.txt:2: line longer than"):
        read_all(path)
    with open_trace(path, skip_bad=True) as trace:
        assert trace.read_all().addrs.tolist() == [0x10, 0x20]
        assert trace.bad_records == 1


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="empty trace") as info:
        open_trace(write(tmp_path, "t.txt", b""))
    assert info.value.path is not None and info.value.path.endswith("t.txt")


@pytest.mark.parametrize(
    "data",
    [b"# only\n# comments\n\n", gzip.compress(b""), b"==1== banner\n==1== only\n"],
)
def test_trace_without_records(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(TraceError, match="empty trace: no records"):
        read_all(write(tmp_path, "t.txt", data))


def test_all_bad_with_skip_bad_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"W 10\nzz\nyy\n")
    with pytest.raises(TraceError, match=r"2 malformed records skipped"):
        read_all(write(tmp_path, "u.txt", b"zz\nyy\n"), skip_bad=True, format="text")
    assert len(read_all(path, skip_bad=True)) == 1


def test_empty_npy(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="empty trace"):
        open_trace(write(tmp_path, "t.npy", npy_bytes(np.empty(0, np.uint64))))


def test_missing_file() -> None:
    with pytest.raises(TraceError, match=r"cannot open trace '/nonexistent/t\.txt'") as info:
        open_trace("/nonexistent/t.txt")
    assert info.value.path == "/nonexistent/t.txt"
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot"):
        read_all(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"10\n")
    path.chmod(0)
    with pytest.raises(TraceError, match="cannot open trace"):
        open_trace(path)


def test_raw_size_not_multiple_of_8(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="size 12 is not a multiple of 8"):
        open_trace(write(tmp_path, "t.raw", b"\x00" * 12))
    # Compressed: only known at the end of the stream.
    path = write(tmp_path, "t.raw.gz", gzip.compress(b"\x00" * 20))
    with pytest.raises(TraceError, match="length 20 is not a multiple of 8"):
        read_all(path)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (np.zeros((2, 3), np.int64), "1-D integer array"),
        (np.zeros(3, np.float64), "1-D integer array"),
        (np.zeros(3, np.bool_), "1-D integer array"),
    ],
)
def test_npy_rejects_non_integer_or_not_1d(
    tmp_path: Path,
    values: npt.NDArray[np.generic],
    needle: str,
) -> None:
    with pytest.raises(TraceError, match=needle):
        open_trace(write(tmp_path, "t.npy", npy_bytes(values)))


def test_npy_negative_values(tmp_path: Path) -> None:
    values = np.array([1, 2, -3, 4, -5], np.int64)
    path = write(tmp_path, "t.npy", npy_bytes(values))
    with pytest.raises(TraceError, match=r"element 2 is negative \(-3\)"):
        read_all(path)
    with open_trace(path, skip_bad=True) as trace:
        assert trace.read_all().addrs.tolist() == [1, 2, 4]
        assert trace.bad_records == 2


def test_truncated_npy(tmp_path: Path) -> None:
    data = npy_bytes(np.arange(100, dtype=np.uint64))[:-16]
    with pytest.raises(TraceError, match="truncated"):
        open_trace(write(tmp_path, "t.npy", data))
    with pytest.raises(TraceError, match="truncated"):
        read_all(write(tmp_path, "t.npy.xz", lzma.compress(data)))


@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz"])
def test_truncated_compressed_stream(tmp_path: Path, compression: str) -> None:
    suffix, compress = COMPRESSORS[compression]
    data = compress(text_bytes(*sample(20_000)))
    path = write(tmp_path, "t.txt" + suffix, data[: len(data) // 2])
    with pytest.raises(TraceError, match=f"corrupt or truncated {compression}"):
        read_all(path)


def test_bad_chunk_size(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"10\n")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="chunk_size"):
            open_trace(path, chunk_size=bad)  # type: ignore[arg-type]


# -- stdin, chunking, lifecycle ---------------------------------------------


class FakeStdin:
    """Stands in for sys.stdin: text wrapper whose ``.buffer`` is binary."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


@pytest.mark.parametrize("compressed", [False, True])
def test_stdin(monkeypatch: pytest.MonkeyPatch, compressed: bool) -> None:
    addrs, kinds = sample(3000)
    data = text_bytes(addrs, kinds)
    fake = FakeStdin(gzip.compress(data) if compressed else data)
    monkeypatch.setattr(sys, "stdin", fake)
    with open_trace("-", chunk_size=500) as trace:
        assert trace.path == "<stdin>"
        assert trace.total_bytes is None
        assert trace.compression == ("gzip" if compressed else None)
        chunk = trace.read_all()
    np.testing.assert_array_equal(chunk.addrs, addrs)
    np.testing.assert_array_equal(chunk.kinds, kinds)
    assert not fake.buffer.closed  # stdin itself is never closed


def test_stdin_raw_and_npy(monkeypatch: pytest.MonkeyPatch) -> None:
    addrs = np.arange(0, 80_000, 8, dtype=np.uint64) | np.uint64(0x7F00_0000_0000)
    monkeypatch.setattr(sys, "stdin", FakeStdin(addrs.tobytes()))
    with open_trace("-") as trace:
        assert trace.format == "raw"
        np.testing.assert_array_equal(trace.read_all().addrs, addrs)
    monkeypatch.setattr(sys, "stdin", FakeStdin(npy_bytes(addrs)))
    with open_trace("-") as trace:
        assert trace.format == "npy"
        np.testing.assert_array_equal(trace.read_all().addrs, addrs)


@pytest.mark.parametrize("fmt", ["text", "lackey", "npy", "raw"])
@pytest.mark.parametrize("chunk_size", [1, 999, 65536])
def test_chunk_size_bounds_chunks(tmp_path: Path, fmt: str, chunk_size: int) -> None:
    addrs, kinds = sample(10_000)
    data = {
        "text": lambda: text_bytes(addrs, kinds),
        "lackey": lambda: lackey_bytes(addrs, kinds),
        "npy": lambda: npy_bytes(addrs),
        "raw": lambda: addrs.tobytes(),
    }[fmt]()
    path = write(tmp_path, f"t.{fmt}", data)
    sizes = [len(c) for c in open_trace(path, format=fmt, chunk_size=chunk_size)]
    assert sum(sizes) == len(addrs)
    assert all(s == chunk_size for s in sizes[:-1])
    assert 0 < sizes[-1] <= chunk_size


def test_close_stops_iteration(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"10\n" * 100)
    trace = open_trace(path, chunk_size=10)
    assert len(next(trace)) == 10
    trace.close()
    assert list(trace) == []
    assert "records=10" in repr(trace)


def test_rechunk_and_concat() -> None:
    pieces = [TraceChunk(np.arange(n, dtype=np.uint64), np.zeros(n, np.uint8)) for n in (3, 0, 10, 1)]
    out = list(rechunk(pieces, 4))
    assert [len(c) for c in out] == [4, 4, 4, 2]
    assert concat_chunks(out).addrs.tolist() == [0, 1, 2, *range(10), 0]
    assert len(concat_chunks([])) == 0
    with pytest.raises(ValueError, match="with and without cpus"):
        concat_chunks([pieces[0], TraceChunk(pieces[0].addrs, pieces[0].kinds, np.zeros(3, np.uint16))])


def test_trace_chunk_checks_dtypes() -> None:
    with pytest.raises(TypeError, match="uint64"):
        TraceChunk(np.zeros(2, np.int64), np.zeros(2, np.uint8))
    with pytest.raises(TypeError, match="kinds"):
        TraceChunk(np.zeros(2, np.uint64), np.zeros(3, np.uint8))
    with pytest.raises(TypeError, match="cpus"):
        TraceChunk(np.zeros(2, np.uint64), np.zeros(2, np.uint8), np.zeros(2, np.uint8))


# -- property tests ----------------------------------------------------------

addr_arrays = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300).map(
    lambda xs: np.array(xs, dtype=np.uint64)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(addrs=addr_arrays, fmt=st.sampled_from(["text", "raw", "npy"]), data=st.data())
def test_hypothesis_round_trip(tmp_path: Path, addrs: Addrs, fmt: str, data: st.DataObject) -> None:
    if fmt == "text":
        kinds = np.array(
            data.draw(st.lists(st.integers(0, 2), min_size=len(addrs), max_size=len(addrs))),
            np.uint8,
        )
        blob = text_bytes(addrs, kinds)
    else:
        kinds = np.zeros(len(addrs), np.uint8)
        blob = npy_bytes(addrs) if fmt == "npy" else addrs.tobytes()
    chunk_size = data.draw(st.integers(1, 400))
    path = write(tmp_path, f"h.{fmt}", blob)
    chunk = read_all(path, format=fmt, chunk_size=chunk_size)
    np.testing.assert_array_equal(chunk.addrs, addrs)
    np.testing.assert_array_equal(chunk.kinds, kinds)


text_lines = st.text(alphabet="RWXILSMrwxq 0123456789abcdefABCDEFxX,#\t\r", max_size=24).map(
    lambda s: s.replace("\n", "")
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(text_lines, min_size=1, max_size=40))
def test_fast_path_agrees_with_reference_parser(lines: list[str]) -> None:
    """The vectorized parser must give exactly what the per-line parser gives."""
    block = ("\n".join(lines) + "\n").encode()
    result = parse_block(block, "text")
    expected: list[tuple[int, int]] = []
    bad: list[int] = []
    for i, raw in enumerate(block.split(b"\n")[:-1]):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            rec = parse_text_line(line)
        except BadLine:
            bad.append(i)
            continue
        if rec is not None:
            expected.append(rec)
    assert list(zip(result.addrs.tolist(), result.kinds.tolist(), strict=True)) == expected
    assert [i for i, _, _ in result.bad] == bad


lackey_lines = st.lists(
    st.sampled_from(["I  ", " L ", " S ", " M ", " I ", "I ", "==1== ", "SB ", " ", "X  ", ""]),
    min_size=1,
    max_size=1,
).flatmap(
    lambda prefix: st.text(alphabet="0123456789abcdefABCDEFg, ", max_size=20).map(
        lambda rest: prefix[0] + rest
    )
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(lackey_lines, min_size=1, max_size=40))
def test_lackey_fast_path_agrees_with_reference_parser(lines: list[str]) -> None:
    block = ("\n".join(lines) + "\n").encode()
    result = parse_block(block, "lackey")
    expected: list[tuple[int, int]] = []
    bad: list[int] = []
    for i, line in enumerate(block.split(b"\n")[:-1]):
        try:
            rec = parse_lackey_line(line)
        except BadLine:
            bad.append(i)
            continue
        if rec is not None:
            expected.append(rec)
    assert list(zip(result.addrs.tolist(), result.kinds.tolist(), strict=True)) == expected
    assert [i for i, _, _ in result.bad] == bad


# -- zstd framing ------------------------------------------------------------


def zstd_frames() -> list[bytes]:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # raw blocks
    return [
        zstandard.ZstdCompressor(write_checksum=True).compress(b"abc" * 50_000),
        zstandard.ZstdCompressor(write_content_size=False).compress(noise),
        zstandard.ZstdCompressor(level=19).compress(b"\0" * 200_000),  # RLE blocks
        # A skippable frame (magic 0x184D2A5?, little-endian size, payload).
        (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!",
        zstandard.ZstdCompressor().compress(b""),
    ]


def test_zstd_tracker_finds_every_frame_boundary() -> None:
    frames = zstd_frames()
    blob = b"".join(frames)
    boundaries = {0}
    for f in frames:
        boundaries.add(max(boundaries) + len(f))
    # Feed in odd-sized pieces and probe a spread of cut points.
    cuts = sorted(set(range(0, len(blob) + 1, 997)) | boundaries | {b - 1 for b in boundaries})
    for cut in cuts:
        if cut < 0:
            continue
        tracker = FrameTracker()
        for start in range(0, cut, 4093):
            tracker.feed(blob[start : min(start + 4093, cut)])
        assert not tracker.lost
        assert tracker.at_boundary == (cut in boundaries), cut


def test_zstd_multi_frame_and_truncation(tmp_path: Path) -> None:
    part1, part2 = b"W 10\n" * 1000, b"R 20\n" * 1000
    cctx = zstandard.ZstdCompressor()
    blob = cctx.compress(part1) + cctx.compress(part2)
    chunk = read_all(write(tmp_path, "t.zst", blob))
    assert chunk.addrs.tolist() == [0x10] * 1000 + [0x20] * 1000
    # Cut inside the second frame: an error, not a silently shorter trace.
    with pytest.raises(TraceError, match="truncated zstd") as info:
        read_all(write(tmp_path, "cut.zst", blob[:-3]))
    assert info.value.path is not None and info.value.path.endswith("cut.zst")


@pytest.mark.parametrize("tail", [b"", b"\n", b"\n20", b"\n20\n", b"\n\n20\n"])
@pytest.mark.parametrize("long_len", [100, 127, 128, 129, 300, 317])
def test_over_long_line_at_every_block_alignment(tmp_path: Path, tail: bytes, long_len: int) -> None:
    """Skipping an over-long line works wherever its end falls relative to read blocks."""
    data = b"10\nW 11\n" + b"f" * long_len + tail
    path = write(tmp_path, "t.txt", data)
    want = [0x10, 0x11] + ([0x20] if b"20" in tail else [])
    with open_core(path, skip_bad=True, format="text", block_bytes=32, max_line=40) as trace:
        assert trace.read_all().addrs.tolist() == want
        assert trace.bad_records == 1
    with pytest.raises(TraceError, match=r"t\.txt:3: line longer than 40 bytes"):
        open_core(path, format="text", block_bytes=32, max_line=40).read_all()


def test_small_blocks_keep_line_numbers(tmp_path: Path) -> None:
    lines = [f"{i:x}" for i in range(1, 200)]
    lines[150] = "W 0xg"
    path = write(tmp_path, "t.txt", ("\n".join(lines) + "\n").encode())
    with pytest.raises(TraceError, match=r"t\.txt:151: cannot parse '0xg'"):
        open_core(path, block_bytes=7, max_line=1 << 20).read_all()
    with open_core(path, skip_bad=True, block_bytes=7, max_line=1 << 20) as trace:
        assert trace.read_all().addrs.tolist() == [i for i in range(1, 200) if i != 151]
