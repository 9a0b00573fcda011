"""Run the core reader and the Python reference reader on the same bytes and compare.

Shared by the differential and fuzz tests of ``vmopt.traces``. An outcome
is what a user can observe: the accesses (addresses, kinds, cpus), the
error (class, message, line, content) and the ``skip_bad`` count.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from reference.traces import open_trace as ref_open_trace
from reference.traces import readers as ref_readers
from vmopt import _core
from vmopt.traces import TraceChunk, TraceError, open_trace
from vmopt.traces.readers import Trace

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b,
    "gzip": gzip.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "xz": lzma.compress,
}


@dataclass(frozen=True)
class Outcome:
    """What reading a trace to its end showed."""

    addrs: tuple[int, ...] = ()
    kinds: tuple[int, ...] = ()
    cpus: tuple[int, ...] | None = None
    error: tuple[str, str, int | None, str | None] | None = None
    bad_records: int = 0
    chunk_lens: tuple[int, ...] = ()
    warnings: tuple[str, ...] = ()


class _Warnings(logging.Handler):
    """Collects the "skipping malformed records" warnings of both readers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def drain(open_fn: Callable[[], Any]) -> Outcome:
    """Open a trace with ``open_fn`` and read it all, catching a TraceError."""
    handler = _Warnings()
    loggers = [logging.getLogger("vmopt.traces.readers"), logging.getLogger("reference.traces.readers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        return _drain(open_fn, handler)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def _drain(open_fn: Callable[[], Any], handler: _Warnings) -> Outcome:
    trace = None
    chunks: list[TraceChunk] = []
    try:
        trace = open_fn()
        chunks.extend(trace)
    except TraceError as exc:
        return Outcome(
            error=(type(exc).__name__, str(exc), exc.line, exc.content),
            bad_records=trace.bad_records if trace is not None else 0,
            warnings=tuple(handler.messages),
        )
    addrs: list[int] = []
    kinds: list[int] = []
    cpus: list[int] | None = [] if chunks and chunks[0].cpus is not None else None
    for c in chunks:
        addrs += c.addrs.tolist()
        kinds += c.kinds.tolist()
        if cpus is not None and c.cpus is not None:
            cpus += c.cpus.tolist()
    return Outcome(
        tuple(addrs),
        tuple(kinds),
        None if cpus is None else tuple(cpus),
        None,
        trace.bad_records if trace is not None else 0,
        tuple(len(c) for c in chunks),
        tuple(handler.messages),
    )


def open_core(
    path: str | os.PathLike[str], *, block_bytes: int | None = None, max_line: int | None = None, **kw: Any
) -> Trace:
    """``open_trace``, or with a small block/line size the core reader built directly (tests only)."""
    if block_bytes is None:
        return open_trace(path, **kw)
    name = os.fspath(path)
    fmt = kw.get("format")
    with open(name, "rb") as f:
        reader = _core.TraceReader(
            name,
            fd=f.fileno(),
            format=None if fmt in (None, "auto") else fmt,
            compression=kw.get("compression"),
            chunk_size=kw.get("chunk_size", 65536),
            skip_bad=kw.get("skip_bad", False),
            block_bytes=block_bytes,
            max_line_bytes=max_line if max_line is not None else block_bytes,
        )
    return Trace(
        reader,
        name,
        total_bytes=None,
        chunk_size=kw.get("chunk_size", 65536),
        skip_bad=kw.get("skip_bad", False),
    )


def normalize(out: Outcome) -> Outcome:
    """Forget the differences the core makes on purpose (listed in docs/traces.md)."""
    if out.error is None:
        return Outcome(out.addrs, out.kinds, out.cpus, None, out.bad_records, (), _cut_all(out.warnings))
    cls, msg, line, content = out.error
    return Outcome(
        error=(cls, _cut(msg), line, content), bad_records=out.bad_records, warnings=_cut_all(out.warnings)
    )


def _cut_all(messages: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_cut(m) for m in messages)


def _cut(msg: str) -> str:
    """``msg`` up to the first deliberately different part."""
    for cut in (
        "; pass ",  # the reference says format=, the core names --format (issue 12 item 13)
        "not a valid .npy file",  # NumPy's header messages vs the core's own
        "data:",  # Python's vs Rust's decompressor messages after "corrupt or truncated X data:"
        "expected a 1-D integer array",  # dtype spelling of non-integer dtypes
    ):
        at = msg.find(cut)
        if at >= 0:
            return msg[: at + len(cut)]
    return msg


def compare(path: Path, *, block_bytes: int | None = None, max_line: int | None = None, **kw: Any) -> Outcome:
    """Read ``path`` with both readers; assert they agree; return the core's outcome."""
    if block_bytes is not None:
        saved = ref_readers._BLOCK_BYTES, ref_readers._MAX_LINE_BYTES
        ref_readers._BLOCK_BYTES = block_bytes
        ref_readers._MAX_LINE_BYTES = max_line if max_line is not None else block_bytes
    try:
        want = drain(lambda: ref_open_trace(path, **kw))
    finally:
        if block_bytes is not None:
            ref_readers._BLOCK_BYTES, ref_readers._MAX_LINE_BYTES = saved
    got = drain(lambda: open_core(path, block_bytes=block_bytes, max_line=max_line, **kw))
    assert normalize(got) == normalize(want), (got.error, want.error)
    if got.error is None:
        size = kw.get("chunk_size", 65536)
        assert all(n == size for n in got.chunk_lens[:-1]) and all(0 < n <= size for n in got.chunk_lens)
    return got
