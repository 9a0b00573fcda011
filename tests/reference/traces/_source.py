"""Byte sources for traces: files or stdin, transparently decompressed.

Compression is recognised by magic bytes (not by file name), so that piped
or misnamed files work. Everything is read sequentially, so sources also
work on pipes; the bytes consumed from the underlying file are counted for
progress reporting.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import os
import stat
import sys
import zlib
from collections.abc import Callable
from typing import BinaryIO, Protocol, cast

from vmopt.traces.errors import TraceError

__all__ = ["COMPRESSIONS", "ByteSource", "open_source"]

logger = logging.getLogger(__name__)

#: Compression names accepted by ``open_source(compression=...)``.
COMPRESSIONS = ("gzip", "zstd", "xz")

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
)
_MAGIC_LEN = max(len(m) for m, _ in _MAGICS)

# Errors a decompressor raises on corrupt or truncated input.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error)


class _Reader(Protocol):
    """What a (decompressing) stream must offer."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _read_fully(f: _Reader, n: int) -> bytes:
    """Read exactly ``n`` bytes unless EOF comes first (pipes return short reads)."""
    parts = []
    while n > 0:
        b = f.read(n)
        if not b:
            break
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


class _CountingReader(io.RawIOBase):
    """Raw reader over ``f`` that first replays ``prefix`` and counts bytes read."""

    def __init__(self, f: BinaryIO, prefix: bytes) -> None:
        super().__init__()
        self._f = f
        self._prefix = prefix
        self.count = len(prefix)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        mv = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(mv), len(self._prefix))
            mv[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._f.read(len(mv))
        n = len(data)
        mv[:n] = data
        self.count += n
        return n


class ByteSource:
    """A sequential, decompressed byte stream with a replayable head.

    ``head`` holds up to the first few KiB of decompressed data (for format
    detection) and is returned again by :meth:`read`. ``bytes_read`` counts
    bytes taken from the underlying file (compressed bytes for compressed
    traces) and ``total_bytes`` is that file's size, or ``None`` when unknown
    (stdin, pipes), so ``bytes_read / total_bytes`` is a progress fraction.
    ``plain_path`` is the file path when the data is an uncompressed regular
    file that can be memory-mapped, else ``None``.
    """

    def __init__(
        self,
        name: str,
        stream: _Reader,
        counter: _CountingReader,
        closers: list[Callable[[], None]],
        *,
        compression: str | None,
        total_bytes: int | None,
        plain_path: str | None,
    ) -> None:
        self.name = name
        self.compression = compression
        self.total_bytes = total_bytes
        self.plain_path = plain_path
        self._stream = stream
        self._counter = counter
        self._closers = closers
        self._head = b""
        self._replay = b""
        #: Decompressed bytes handed out by :meth:`read` so far.
        self.position = 0
        #: Exceptions that mean corrupt input rather than a programming error.
        self.decode_errors: tuple[type[BaseException], ...] = _DECODE_ERRORS

    @property
    def bytes_read(self) -> int:
        """Bytes consumed from the underlying file so far."""
        return self._counter.count

    def peek_head(self, n: int) -> bytes:
        """Return up to the first ``n`` decompressed bytes without consuming them."""
        if len(self._head) < n:
            more = self._raw_read(n - len(self._head))
            self._head += more
            self._replay += more
        return self._head[:n]

    def read(self, n: int) -> bytes:
        """Read up to ``n`` bytes (fewer only at EOF); ``b""`` means EOF."""
        if self._replay:
            out = self._replay[:n]
            self._replay = self._replay[n:]
            if len(out) < n:
                out += self._raw_read(n - len(out))
        else:
            out = self._raw_read(n)
        self.position += len(out)
        return out

    def _raw_read(self, n: int) -> bytes:
        try:
            return _read_fully(self._stream, n)
        except self.decode_errors as exc:
            what = f"corrupt or truncated {self.compression} data" if self.compression else "read error"
            raise TraceError(f"{self.name}: {what}: {exc}", path=self.name) from exc

    def close(self) -> None:
        """Close the decompressor and the file (never stdin itself)."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            close()


def _decompressor(kind: str, raw: BinaryIO, name: str) -> tuple[_Reader, tuple[type[BaseException], ...]]:
    """Return a decompressing reader over ``raw`` and the errors it raises on bad data."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb"), _DECODE_ERRORS
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb"), _DECODE_ERRORS
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - zstandard is a dependency
        raise TraceError(
            f"{name}: reading zstd-compressed traces needs the 'zstandard' package",
            path=name,
        ) from exc
    from reference.traces._zstd import ZstdReader

    return ZstdReader(raw), (*_DECODE_ERRORS, zstandard.ZstdError)


def open_source(path: str | os.PathLike[str], *, compression: str | None = None) -> ByteSource:
    """Open ``path`` (``"-"`` for stdin) as a decompressed :class:`ByteSource`.

    ``compression`` is ``None`` to detect gzip/zstd/xz from magic bytes,
    ``"none"`` to read bytes as they are, or one of :data:`COMPRESSIONS` to
    force a decompressor. A missing or unreadable file is a :class:`TraceError`.
    """
    if compression is not None and compression != "none" and compression not in COMPRESSIONS:
        raise TraceError(
            f"unknown compression {compression!r}; expected None (detect), 'none' or one of: "
            + ", ".join(COMPRESSIONS)
        )
    closers: list[Callable[[], None]] = []
    total: int | None
    if isinstance(path, str) and path == "-":
        name = "<stdin>"
        f: BinaryIO = sys.stdin.buffer
        total = None
        is_regular = False
    else:
        name = os.fspath(path)
        try:
            f = open(name, "rb")  # noqa: SIM115 - closed by ByteSource.close
            st = os.fstat(f.fileno())
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise TraceError(f"cannot open trace {name!r}: {reason}", path=name) from exc
        closers.append(f.close)
        is_regular = stat.S_ISREG(st.st_mode)
        total = st.st_size if is_regular else None
    try:
        head = _read_fully(f, _MAGIC_LEN)
    except OSError as exc:
        for close in closers:
            close()
        raise TraceError(f"cannot read trace {name!r}: {exc.strerror or exc}", path=name) from exc
    kind = compression
    if kind is None:
        kind = next((k for m, k in _MAGICS if head.startswith(m)), "none")
    counter = _CountingReader(f, head)
    raw = cast(BinaryIO, io.BufferedReader(counter, buffer_size=1 << 20))
    stream: _Reader
    if kind == "none":
        stream = raw
        detected: str | None = None
    else:
        stream, errors = _decompressor(kind, raw, name)
        closers.append(stream.close)
        detected = kind
    logger.debug("opened trace %s (compression: %s, size: %s)", name, detected, total)
    plain = name if (detected is None and is_regular) else None
    source = ByteSource(
        name,
        stream,
        counter,
        closers,
        compression=detected,
        total_bytes=total,
        plain_path=plain,
    )
    if detected is not None:
        source.decode_errors = errors
    return source
