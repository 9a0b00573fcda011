"""The reference trace readers (the Python ones the core replaced): detection and streaming.

Kept as the specification of the Lackey, text, raw and npy formats, their
messages and skip-bad counts; tests/test_traces_core.py compares the core
against it.

:func:`open_trace` turns a file (or stdin) in one of :data:`FORMATS`,
optionally gzip/zstd/xz compressed, into a :class:`Trace`: a single-pass
iterator of :class:`~vmopt.traces.chunk.TraceChunk` that never holds more
than about one block of input plus one chunk of output in memory.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import PurePath
from types import TracebackType
from typing import Any, Final

import numpy as np
import numpy.lib.format as npformat
import numpy.typing as npt

from reference.traces._lines import (
    BadLine,
    is_lackey_banner,
    parse_block,
    parse_lackey_line,
    parse_text_line,
)
from reference.traces._source import ByteSource, open_source
from vmopt.errors import ConfigError
from vmopt.traces.chunk import DEFAULT_CHUNK_SIZE, AccessKind, TraceChunk, concat_chunks, rechunk
from vmopt.traces.errors import TraceError

__all__ = ["FORMATS", "Trace", "open_trace"]

logger = logging.getLogger(__name__)

#: Trace format names accepted by ``open_trace(format=...)``.
FORMATS: Final = ("lackey", "text", "npy", "raw")

_NPY_MAGIC = b"\x93NUMPY"
_RAW_EXTS = frozenset({".bin", ".raw", ".u64"})
_COMPRESSED_EXTS = frozenset({".gz", ".zst", ".zstd", ".xz"})
_SNIFF_BYTES = 64 * 1024
_SNIFF_LINES = 20
_BLOCK_BYTES = 1 << 20
_MAX_LINE_BYTES = 1 << 20
_CONTENT_CHARS = 200


def _logical_ext(name: str) -> str:
    """The extension that names the format, ignoring a compression suffix."""
    suffixes = [s.lower() for s in PurePath(name).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED_EXTS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _show(line: bytes) -> str:
    """Printable form of a raw line for messages and ``TraceError.content``."""
    return line[:_CONTENT_CHARS].decode("ascii", errors="backslashreplace").strip()


def _is_text(head: bytes) -> bool:
    """Whether ``head`` looks like UTF-8 text (no NULs, decodes, few control bytes)."""
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 12, 13))
    return controls * 100 <= len(head)


def _detect_text_format(head: bytes, name: str, at_eof: bool) -> str:
    """Choose "lackey" or "text" from the first lines of a text trace."""
    lines = head.split(b"\n")
    if not at_eof:
        lines.pop()  # possibly cut in the middle
    lackey = text = seen = 0
    first_bad: tuple[int, bytes] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if is_lackey_banner(line):
            return "lackey"
        seen += 1
        lackey_rec = text_rec = None
        failures = 0
        try:
            lackey_rec = parse_lackey_line(line)
        except BadLine:
            failures += 1
        try:
            text_rec = parse_text_line(line)
        except BadLine:
            failures += 1
        lackey += lackey_rec is not None
        text += text_rec is not None
        if failures == 2 and first_bad is None:
            first_bad = (number, line)
        if seen >= _SNIFF_LINES:
            break
    if lackey and lackey >= text:
        return "lackey"
    if text or first_bad is None:
        return "text"
    number, line = first_bad
    raise TraceError(
        f"{name}:{number}: cannot detect the trace format: {_show(line)!r} is neither a "
        f"Lackey nor a text record; pass format= (one of {', '.join(FORMATS)})",
        path=name,
        line=number,
        content=_show(line),
    )


def _detect(source: ByteSource, head: bytes) -> str:
    name = source.name
    ext = _logical_ext(name)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if ext == ".npy":
        raise TraceError(
            f"{name}: not a .npy file (it does not start with the NumPy magic "
            f"\\x93NUMPY); pass format= to read it as something else",
            path=name,
        )
    if ext in _RAW_EXTS or not _is_text(head):
        return "raw"
    return _detect_text_format(head, name, at_eof=len(head) < _SNIFF_BYTES)


class Trace:
    """A single-pass stream of :class:`TraceChunk` read from a trace file.

    Iterate it (once) to get chunks of at most ``chunk_size`` accesses; all
    but the last have exactly ``chunk_size``. Close it, or use it as a
    context manager, to release the file early; it closes itself at the end.

    Attributes: ``path`` (as given; ``"<stdin>"`` for ``-``), ``format``
    (detected or forced name), ``compression`` (``"gzip"``, ``"zstd"``,
    ``"xz"`` or ``None``), ``records`` (accesses yielded so far),
    ``bad_records`` (malformed records skipped so far with ``skip_bad``),
    ``bytes_read`` and ``total_bytes`` (progress through the underlying,
    possibly compressed, file; ``total_bytes`` is ``None`` for stdin/pipes).

    A :class:`TraceError` for malformed content is raised during iteration,
    at the offending record; a trace with no records at all raises one at
    its end (or at open when that is known up front).
    """

    def __init__(
        self,
        source: ByteSource,
        fmt: str,
        *,
        chunk_size: int,
        skip_bad: bool,
    ) -> None:
        self.path = source.name
        self.format = fmt
        self.compression = source.compression
        self.total_bytes = source.total_bytes
        self.chunk_size = chunk_size
        self.skip_bad = skip_bad
        self.records = 0
        self.bad_records = 0
        self._source = source
        self._progress: Callable[[], int] = lambda: source.bytes_read
        self._closed = False
        readers = {
            "lackey": self._read_lines,
            "text": self._read_lines,
            "npy": self._read_npy,
            "raw": self._read_raw,
        }
        try:
            chunks = readers[fmt]()
        except BaseException:
            self.close()
            raise
        self._chunks = rechunk(chunks, chunk_size)

    @property
    def bytes_read(self) -> int:
        """Bytes of the underlying file consumed so far (for progress bars)."""
        return self._progress()

    def __iter__(self) -> Trace:
        return self

    def __next__(self) -> TraceChunk:
        if self._closed:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.close()
            if self.records == 0:
                self._raise_empty()
            raise
        except BaseException:
            self.close()
            raise
        self.records += len(chunk)
        return chunk

    def read_all(self) -> TraceChunk:
        """Read the rest of the trace into one chunk (only for traces that fit in memory)."""
        return concat_chunks(list(self))

    def close(self) -> None:
        """Release the file; further iteration ends immediately."""
        if not self._closed:
            self._closed = True
            self._source.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Trace(path={self.path!r}, format={self.format!r}, "
            f"compression={self.compression!r}, records={self.records}, "
            f"bad_records={self.bad_records})"
        )

    # -- helpers -----------------------------------------------------------

    def _raise_empty(self) -> None:
        skipped = f" ({self.bad_records} malformed records skipped)" if self.bad_records else ""
        raise TraceError(f"{self.path}: empty trace: no records{skipped}", path=self.path)

    def _bad(self, message: str, *, line: int | None = None, content: str | None = None) -> None:
        """Count a malformed record, or raise for it unless ``skip_bad``."""
        if not self.skip_bad:
            raise TraceError(message, path=self.path, line=line, content=content)
        if self.bad_records == 0:
            logger.warning("%s (skipping malformed records)", message)
        self.bad_records += 1

    # -- readers -----------------------------------------------------------
    # Each reader validates what it can up front and returns a generator.

    def _read_lines(self) -> Iterator[TraceChunk]:
        """Text and Lackey: blocks of whole lines, parsed by ``_lines.parse_block``."""
        return self._line_chunks(self._source, self.format)

    def _line_chunks(self, source: ByteSource, fmt: str) -> Iterator[TraceChunk]:
        carry = b""  # incomplete last line of the previous read
        lines_before = 0  # physical lines in earlier blocks
        discarding = False  # inside an over-long line that was skipped
        while True:
            data = source.read(_BLOCK_BYTES)
            if not data:  # EOF; a last line without "\n" still counts
                if carry:
                    yield self._parse_lines(carry + b"\n", fmt, lines_before)
                return
            if discarding:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                discarding = False
                lines_before += 1
                data = data[nl + 1 :]
            cut = data.rfind(b"\n")
            if cut < 0:
                carry += data
                if len(carry) > _MAX_LINE_BYTES:
                    self._bad(
                        f"{self.path}:{lines_before + 1}: line longer than "
                        f"{_MAX_LINE_BYTES} bytes (is this really a {fmt} trace?)",
                        line=lines_before + 1,
                        content=_show(carry),
                    )
                    carry, discarding = b"", True
                continue
            block, carry = carry + data[: cut + 1], data[cut + 1 :]
            chunk = self._parse_lines(block, fmt, lines_before)
            lines_before += block.count(b"\n")
            yield chunk

    def _parse_lines(self, block: bytes, fmt: str, lines_before: int) -> TraceChunk:
        """Parse whole lines; raise or count the bad ones (numbered from ``lines_before``)."""
        result = parse_block(block, fmt)
        for index, reason, line in result.bad:
            number = lines_before + index + 1
            self._bad(f"{self.path}:{number}: {reason}", line=number, content=_show(line))
        return TraceChunk(result.addrs, result.kinds)

    def _read_raw(self) -> Iterator[TraceChunk]:
        """Raw little-endian uint64 addresses, all reads."""
        total = self._source.total_bytes
        if self._source.plain_path is not None and total is not None and total % 8:
            raise TraceError(
                f"{self.path}: raw trace size {total} is not a multiple of 8 bytes "
                "(raw traces are little-endian uint64 addresses)",
                path=self.path,
            )
        return self._raw_chunks()

    def _raw_chunks(self) -> Iterator[TraceChunk]:
        step = self.chunk_size * 8
        position = 0
        while data := self._source.read(step):
            if len(data) % 8:
                raise TraceError(
                    f"{self.path}: raw trace length {position + len(data)} is not a multiple "
                    "of 8 bytes (raw traces are little-endian uint64 addresses)",
                    path=self.path,
                )
            position += len(data)
            addrs = np.frombuffer(data, "<u8").astype(np.uint64)
            yield TraceChunk(addrs, np.zeros(addrs.shape[0], np.uint8))

    def _read_npy(self) -> Iterator[TraceChunk]:
        """A 1-D integer .npy array, all reads; memory-mapped when the file allows."""
        source = self._source
        try:
            version = npformat.read_magic(source)  # type: ignore[arg-type]
            if version == (1, 0):
                shape, _, dtype = npformat.read_array_header_1_0(source)  # type: ignore[arg-type]
            else:
                shape, _, dtype = npformat.read_array_header_2_0(source)  # type: ignore[arg-type]
        except (ValueError, OSError, EOFError) as exc:
            raise TraceError(f"{self.path}: not a valid .npy file: {exc}", path=self.path) from exc
        if len(shape) != 1 or dtype.kind not in "iu" or dtype.fields is not None:
            raise TraceError(
                f"{self.path}: expected a 1-D integer array in the .npy file, "
                f"got dtype {dtype} with shape {shape}",
                path=self.path,
            )
        count = shape[0]
        if count == 0:
            self._raise_empty()
        offset = source.position
        need = offset + count * dtype.itemsize
        if source.plain_path is not None and source.total_bytes is not None:
            if source.total_bytes < need:
                raise TraceError(
                    f"{self.path}: truncated .npy file: header declares {count} elements "
                    f"({need} bytes) but the file has {source.total_bytes} bytes",
                    path=self.path,
                )
            array = np.memmap(source.plain_path, dtype=dtype, mode="r", offset=offset, shape=count)
            return self._npy_mmap_chunks(array, offset)
        return self._npy_stream_chunks(dtype, count)

    def _npy_values(self, values: npt.NDArray[Any], first: int) -> TraceChunk:
        """Check and convert one slice of array elements starting at index ``first``."""
        if values.dtype.kind == "i":
            negative = values < 0
            if negative.any():
                bad = np.flatnonzero(negative)
                for index in bad.tolist():
                    self._bad(
                        f"{self.path}: element {first + index} is negative ({values[index]}); "
                        "addresses must be >= 0",
                        content=str(values[index]),
                    )
                values = values[~negative]
        addrs = values.astype(np.uint64)
        return TraceChunk(addrs, np.full(addrs.shape[0], AccessKind.READ, np.uint8))

    def _npy_mmap_chunks(self, array: np.memmap[Any, np.dtype[Any]], offset: int) -> Iterator[TraceChunk]:
        position = 0
        itemsize = array.dtype.itemsize
        self._progress = lambda: offset + position * itemsize
        for position in range(0, array.shape[0], self.chunk_size):
            values = np.array(array[position : position + self.chunk_size])
            yield self._npy_values(values, position)
        position = array.shape[0]

    def _npy_stream_chunks(self, dtype: np.dtype[Any], count: int) -> Iterator[TraceChunk]:
        done = 0
        while done < count:
            n = min(self.chunk_size, count - done)
            data = self._source.read(n * dtype.itemsize)
            if len(data) < n * dtype.itemsize:
                raise TraceError(
                    f"{self.path}: truncated .npy data: header declares {count} elements, "
                    f"found {done + len(data) // dtype.itemsize}",
                    path=self.path,
                )
            yield self._npy_values(np.frombuffer(data, dtype), done)
            done += n


def open_trace(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    compression: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_bad: bool = False,
) -> Trace:
    """Open an address trace for streaming; ``path`` ``"-"`` reads stdin.

    ``format`` is one of :data:`FORMATS` or ``None``/``"auto"`` to detect it
    (``.npy`` magic, Valgrind banner or Lackey records, ``.bin``/``.raw``/
    ``.u64`` extension or binary content for raw, else text).
    ``compression`` is ``None`` to detect gzip/zstd/xz by magic bytes,
    ``"none"`` to disable decompression, or ``"gzip"``/``"zstd"``/``"xz"``.
    With ``skip_bad`` malformed records are skipped and counted in
    ``Trace.bad_records`` instead of raising.

    Raises :class:`TraceError` for a missing/unreadable file, an unknown or
    undetectable format, malformed content and empty traces.
    """
    if format == "auto":
        format = None
    if format is not None and format not in FORMATS:
        raise TraceError(
            f"unknown trace format {format!r}; expected one of: {', '.join(FORMATS)} "
            "(or None/'auto' to detect)"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    source = open_source(path, compression=compression)
    try:
        head = source.peek_head(_SNIFF_BYTES)
        if not head:
            raise TraceError(f"{source.name}: empty trace: no records", path=source.name)
        fmt = format if format is not None else _detect(source, head)
        logger.debug(
            "trace %s: format %s%s",
            source.name,
            fmt,
            "" if format is not None else " (detected)",
        )
        return Trace(source, fmt, chunk_size=chunk_size, skip_bad=skip_bad)
    except BaseException:
        source.close()
        raise
