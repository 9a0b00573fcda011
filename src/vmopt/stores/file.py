"""A backing store that serves pages from a guest-memory snapshot file.

Reads use ``os.pread`` on one shared file descriptor: ``pread`` takes the
offset as an argument and never moves the file position, so concurrent reads
from worker threads cannot race on a seek. Async fetches run the read in a
worker thread (``asyncio.to_thread``) so a slow disk never blocks the event
loop that is overlapping other fetches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from vmopt.errors import ConfigError
from vmopt.stores.base import DEFAULT_PAGE_SIZE, StoreError, check_page_index, check_page_size

__all__ = ["FileStore", "FileStoreStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileStoreStats:
    """Counters of a :class:`FileStore` (a snapshot; safe to keep)."""

    reads: int
    """Pages read successfully."""
    bytes_read: int
    """Bytes read from the file (excluding zero padding)."""
    errors: int
    """Fetches that raised :class:`StoreError`."""


class FileStore:
    """Pages of a snapshot file: page ``i`` is bytes ``[offset + i*ps, offset + (i+1)*ps)``.

    The file size is taken when the store opens (snapshots are immutable); a
    short last page is zero-padded and pages past the end raise
    :class:`StoreError`. Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
    ) -> None:
        self._page_size = check_page_size(page_size)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"offset must be a non-negative int, got {offset!r}")
        if not isinstance(path, str | os.PathLike):  # an int would be taken as an open fd
            raise ConfigError(f"snapshot path must be a str or os.PathLike, got {path!r}")
        self._path = os.fspath(path)
        self._offset = offset
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError as exc:
            raise StoreError(f"cannot open snapshot file {self._path!r}: {exc.strerror or exc}") from exc
        try:
            # lseek rather than fstat: it also sizes block devices, and it fails
            # (ESPIPE) for pipes and sockets, which pread could not read anyway.
            size = os.lseek(fd, 0, os.SEEK_END)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"snapshot {self._path!r} is not seekable (a pipe or socket?): {exc.strerror or exc}"
            ) from exc
        if offset > size:
            os.close(fd)
            raise ConfigError(f"offset {offset} is past the end of {self._path!r} ({size} bytes)")
        self._fd = fd
        self._file_size = size
        self._num_pages = -(-(size - offset) // self._page_size)
        # Guards the descriptor's lifetime and the counters: worker threads
        # read concurrently, and close() must not free the fd (whose number
        # the OS could reuse) while a read still uses it.
        self._lock = threading.Lock()
        self._active_reads = 0
        self._closed = False
        self._reads = 0
        self._bytes_read = 0
        self._errors = 0
        logger.debug(
            "opened %s: %d bytes from offset %d, %d pages of %d",
            self._path,
            size - offset,
            offset,
            self._num_pages,
            self._page_size,
        )

    @property
    def page_size(self) -> int:
        """Page size in bytes."""
        return self._page_size

    @property
    def num_pages(self) -> int:
        """Pages in the snapshot (the last one may be zero-padded)."""
        return self._num_pages

    @property
    def path(self) -> str:
        """The snapshot file's path."""
        return self._path

    @property
    def offset(self) -> int:
        """Byte offset of page 0 in the file."""
        return self._offset

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def stats(self) -> FileStoreStats:
        """A snapshot of the read counters."""
        with self._lock:
            return FileStoreStats(self._reads, self._bytes_read, self._errors)

    async def fetch(self, page_index: int) -> bytes:
        """Read page ``page_index`` in a worker thread (the loop stays free)."""
        index = self._check(page_index)
        return await asyncio.to_thread(self._read_page, index)

    def fetch_sync(self, page_index: int) -> bytes:
        """Read page ``page_index`` in the calling thread (same result as fetch)."""
        return self._read_page(self._check(page_index))

    def close(self) -> None:
        """Close the file; idempotent. Reads already running finish first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._active_reads == 0:
                os.close(self._fd)
        logger.debug("closed %s", self._path)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._num_pages} pages"
        return f"FileStore({self._path!r}, page_size={self._page_size}, offset={self._offset}, {state})"

    def _check(self, page_index: int) -> int:
        try:
            if self._closed:
                raise StoreError(f"store for {self._path!r} is closed", page_index=page_index)
            return check_page_index(page_index, self._num_pages, where=f"snapshot {self._path!r}")
        except StoreError:
            with self._lock:
                self._errors += 1
            raise

    def _read_page(self, index: int) -> bytes:
        """Read one page with pread (runs in a worker thread for async fetches)."""
        ps = self._page_size
        start = self._offset + index * ps
        expected = min(ps, self._file_size - start)
        with self._lock:
            if self._closed:
                self._errors += 1
                raise StoreError(f"store for {self._path!r} is closed", page_index=index)
            self._active_reads += 1
        chunks: list[bytes] = []
        got = 0
        try:
            # pread may return fewer bytes than asked (signals, some
            # filesystems); loop until the page is complete or the file ends.
            while got < expected:
                chunk = os.pread(self._fd, expected - got, start + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except OSError as exc:
            with self._lock:
                self._errors += 1
            raise StoreError(
                f"reading {self._path!r} at byte {start} failed: {exc.strerror or exc}",
                page_index=index,
            ) from exc
        finally:
            with self._lock:
                self._active_reads -= 1
                if self._closed and self._active_reads == 0:
                    os.close(self._fd)
        if got < expected:
            with self._lock:
                self._errors += 1
            raise StoreError(
                f"short read from {self._path!r}: got {got} of {expected} bytes at byte {start}"
                " (was the snapshot truncated after it was opened?)",
                page_index=index,
            )
        with self._lock:
            self._reads += 1
            self._bytes_read += got
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if got < ps:
            data += bytes(ps - got)
        return data
