"""Opening address traces: the Python face of the core's trace readers.

:func:`open_trace` turns a file (or stdin) in one of :data:`FORMATS`,
optionally gzip/zstd/xz compressed, into a :class:`Trace`: a single-pass
iterator of :class:`~vmopt.traces.chunk.TraceChunk`. Detection,
decompression and parsing run in the Rust core (``vmopt._core.TraceReader``)
with the GIL released; memory stays within about one input block plus one
chunk whatever the trace length. This module opens the file (so open
errors read as Python's) and adapts the core's arrays to chunks.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from types import TracebackType
from typing import BinaryIO, Final

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.traces.chunk import DEFAULT_CHUNK_SIZE, TraceChunk, concat_chunks
from vmopt.traces.errors import TraceError

__all__ = ["COMPRESSIONS", "FORMATS", "Trace", "open_trace"]

logger = logging.getLogger(__name__)

#: Trace format names accepted by ``open_trace(format=...)`` and ``--format``.
FORMATS: Final = ("lackey", "text", "npy", "raw", "champsim", "champsim-cloudsuite", "drmemtrace")

#: Compression names accepted by ``open_trace(compression=...)``.
COMPRESSIONS: Final = ("gzip", "zstd", "xz")


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
        reader: _core.TraceReader,
        path: str,
        *,
        total_bytes: int | None,
        chunk_size: int,
        skip_bad: bool,
    ) -> None:
        self.path = path
        self.format: str = reader.format
        self.compression: str | None = reader.compression
        self.total_bytes = total_bytes
        self.chunk_size = chunk_size
        self.skip_bad = skip_bad
        self.records = 0
        self._reader = reader
        self._closed = False

    @property
    def bytes_read(self) -> int:
        """Bytes of the underlying file consumed so far (for progress bars)."""
        return self._reader.bytes_read

    @property
    def bad_records(self) -> int:
        """Malformed records skipped so far (only with ``skip_bad``)."""
        return self._reader.bad_records

    def __iter__(self) -> Trace:
        return self

    def __next__(self) -> TraceChunk:
        if self._closed:
            raise StopIteration
        try:
            arrays = self._reader.next_chunk()
        except BaseException:
            self.close()
            raise
        finally:
            self._warn_skipped()
        if arrays is None:
            self.close()
            if self.records == 0:
                self._raise_empty()
            raise StopIteration
        chunk = TraceChunk(*arrays)
        self.records += len(chunk)
        return chunk

    def read_all(self) -> TraceChunk:
        """Read the rest of the trace into one chunk (only for traces that fit in memory)."""
        return concat_chunks(list(self))

    def close(self) -> None:
        """Release the file; further iteration ends immediately."""
        if not self._closed:
            self._closed = True
            self._reader.close()

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

    def _warn_skipped(self) -> None:
        message = self._reader.take_first_bad()
        if message is not None:
            logger.warning("%s (skipping malformed records)", message)

    def _raise_empty(self) -> None:
        bad = self.bad_records
        skipped = f" ({bad} malformed records skipped)" if bad else ""
        raise TraceError(f"{self.path}: empty trace: no records{skipped}", path=self.path)


def _open_reader(
    path: str | os.PathLike[str],
    *,
    format: str | None,
    compression: str | None,
    chunk_size: int,
    skip_bad: bool,
) -> tuple[_core.TraceReader, str, int | None]:
    """The core reader for ``path``, its display name and its size (``None`` if not a regular file)."""

    def reader(name: str, fd: int | None = None, stream: BinaryIO | None = None) -> _core.TraceReader:
        return _core.TraceReader(
            name,
            fd=fd,
            stream=stream,
            format=format,
            compression=compression,
            chunk_size=chunk_size,
            skip_bad=skip_bad,
        )

    if isinstance(path, str) and path == "-":
        name = "<stdin>"
        if sys.stdin is None:
            raise TraceError(f"cannot read trace {name!r}: stdin is closed", path=name)
        return reader(name, stream=sys.stdin.buffer), name, None
    name = os.fspath(path)
    try:
        f = open(name, "rb")  # noqa: SIM115 - closed below; the core keeps a duplicate
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TraceError(f"cannot open trace {name!r}: {reason}", path=name) from exc
    with f:
        st = os.fstat(f.fileno())
        total = st.st_size if stat.S_ISREG(st.st_mode) else None
        return reader(name, fd=f.fileno()), name, total


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
    (``.npy`` magic; a ``.champsimtrace`` name; a drmemtrace header entry;
    a Valgrind banner or Lackey records; ``.bin``/``.raw``/``.u64``
    extension or binary content for raw; else text).
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
    if compression is not None and compression != "none" and compression not in COMPRESSIONS:
        raise TraceError(
            f"unknown compression {compression!r}; expected None (detect), 'none' or one of: "
            + ", ".join(COMPRESSIONS)
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    reader, name, total = _open_reader(
        path, format=format, compression=compression, chunk_size=chunk_size, skip_bad=skip_bad
    )
    logger.debug(
        "trace %s: format %s%s, compression %s",
        name,
        reader.format,
        "" if format is not None else " (detected)",
        reader.compression,
    )
    return Trace(reader, name, total_bytes=total, chunk_size=chunk_size, skip_bad=skip_bad)
