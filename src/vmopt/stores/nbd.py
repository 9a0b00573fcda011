"""A backing store that reads guest pages from an NBD export (nbdkit, qemu-nbd, nbd-server).

``NbdStore("nbd://HOST[:PORT]/EXPORT")`` or ``NbdStore("nbd+unix:///EXPORT?socket=PATH")``.
The store opens one connection when it is built (the export's size gives
``num_pages``); that connection serves :meth:`NbdStore.fetch_sync`, one
request at a time. :meth:`NbdStore.fetch` runs on the caller's event loop
over a second connection bound to that loop, which pipelines up to
``max_concurrent`` NBD_CMD_READ requests, each with its own handle, and
matches the replies to them as they arrive in whatever order the server
sends them. A fetch from a new event loop (a later ``asyncio.run``) opens a
fresh connection for it.

If a connection drops, every read in flight on it is retried once on a new
connection; a read that fails again (or whose reconnect fails) raises
:class:`StoreError`, so a batch records exactly those pages as failed and
installs none of them. The next fetch dials again: a batch retried once the
server is back completes. An error reply raises :class:`NbdError` naming
the NBD error (``EIO``, ``EPERM``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from vmopt.errors import ConfigError
from vmopt.stores.base import DEFAULT_PAGE_SIZE, StoreError, check_page_index, check_page_size
from vmopt.stores.nbd_proto import (
    REPLY_HEADER,
    ExportInfo,
    NbdAddress,
    NbdError,
    dial,
    encode_disc,
    encode_read,
    errno_name,
    handshake,
    parse_nbd_uri,
)

__all__ = ["NbdError", "NbdStore", "NbdStoreStats"]

logger = logging.getLogger(__name__)

_SIMPLE_REPLY_MAGIC = 0x67446698


@dataclass(frozen=True, slots=True)
class NbdStoreStats:
    """Counters of an :class:`NbdStore` (a snapshot; safe to keep)."""

    reads: int
    """Pages read successfully."""
    bytes_read: int
    """Bytes received in successful reads (excluding zero padding)."""
    errors: int
    """Fetches that raised :class:`StoreError` (error replies, lost connections, bad indexes)."""
    in_flight: int
    """Async reads sent and not yet answered."""
    max_in_flight: int
    """Most async reads ever in flight at once."""
    connects: int
    """Connections opened (the first one included)."""
    retries: int
    """Reads sent a second time after their connection dropped."""


class _Dropped(Exception):
    """The connection carrying a read went away before its reply (internal: triggers the retry)."""


class _Pipe(asyncio.Protocol):
    """One NBD connection on an event loop: sends reads, matches replies to them by handle.

    At most ``limit`` reads are on the wire; more wait in a backlog and
    leave as replies free their slots. A read whose caller was cancelled
    keeps its handle until its reply arrives (the server still sends it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int, on_drop: Callable[[_Pipe], None]) -> None:
        self._loop = loop
        self._limit = limit
        self._buf = bytearray()
        self._pending: dict[int, tuple[asyncio.Future[bytes], int]] = {}
        self._backlog: deque[tuple[asyncio.Future[bytes], int, int]] = deque()
        self._next = 1
        self._transport: asyncio.Transport | None = None
        self._on_drop = on_drop
        self.alive = False
        self.error: BaseException | None = None
        self.sock: socket.socket | None = None
        self.peak = 0
        self.closer: AsyncGenerator[None, None] | None = None
        # Requests issued in one turn of the loop leave in one write (one syscall, one wake-up).
        self._out = bytearray()
        self._flush_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.alive = True

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        header = REPLY_HEADER.size
        pending = self._pending
        with memoryview(buf) as view:
            while len(buf) - pos >= header:
                magic, error, handle = REPLY_HEADER.unpack_from(buf, pos)
                entry = pending.get(handle)
                if magic != _SIMPLE_REPLY_MAGIC or entry is None:
                    shown = "bad reply magic" if magic != _SIMPLE_REPLY_MAGIC else f"unknown handle {handle}"
                    view.release()
                    self._fail(StoreError(f"NBD protocol error: {shown}"))
                    return
                fut, length = entry
                if error:
                    del pending[handle]
                    pos += header
                    if not fut.done():
                        fut.set_exception(_ErrorReply(error))
                    continue
                if len(buf) - pos < header + length:
                    break
                del pending[handle]
                data_start = pos + header
                pos = data_start + length
                if not fut.done():
                    fut.set_result(bytes(view[data_start:pos]))
        if pos:
            del buf[:pos]
        backlog = self._backlog
        while backlog and len(pending) < self._limit:
            fut, offset, length = backlog.popleft()
            if not fut.done():
                self._send(fut, offset, length)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        """Mark the connection dead and fail every read in flight or waiting on it."""
        was_alive = self.alive
        self.alive = False
        self.error = exc
        waiting = [f for f, _ in self._pending.values()] + [f for f, _, _ in self._backlog]
        self._pending, self._backlog = {}, deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(_Dropped(str(exc)))
        if self._transport is not None:
            self._transport.abort()
        if was_alive:
            self._on_drop(self)

    def submit(self, offset: int, length: int) -> asyncio.Future[bytes]:
        """Queue one NBD_CMD_READ; the future fails with _Dropped if the connection goes, _ErrorReply
        on an error reply."""
        fut: asyncio.Future[bytes] = self._loop.create_future()
        if not self.alive or self._transport is None:
            fut.set_exception(_Dropped(str(self.error or "not connected")))
        elif len(self._pending) >= self._limit:
            self._backlog.append((fut, offset, length))
        else:
            self._send(fut, offset, length)
        return fut

    def _send(self, fut: asyncio.Future[bytes], offset: int, length: int) -> None:
        handle = self._next
        self._next += 1
        self._pending[handle] = (fut, length)
        if len(self._pending) > self.peak:
            self.peak = len(self._pending)
        self._out += encode_read(handle, offset, length)
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send the requests queued this turn."""
        self._flush_due = False
        if self._out and self.alive and self._transport is not None:
            self._transport.write(bytes(self._out))
        self._out.clear()

    @property
    def in_flight(self) -> int:
        """Reads sent and not answered."""
        return len(self._pending)

    def close(self) -> None:
        """Send NBD_CMD_DISC and close (on this connection's loop)."""
        if self.alive and self._transport is not None:
            self._flush()
            self.alive = False
            self._transport.write(encode_disc())
            self._transport.close()


class _ErrorReply(Exception):
    """An error reply to a read (internal: carries the NBD error value)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class NbdStore:
    """Guest pages from an NBD export: page ``i`` is bytes ``[i*ps, (i+1)*ps)`` of the export.

    ``max_concurrent`` caps the reads in flight on the async connection;
    ``timeout`` bounds connecting and the handshake (seconds). Async
    fetches belong to one event loop at a time (a new loop reconnects);
    ``fetch_sync`` may be called from any thread. The export's
    size is read once, at open; a short last page is zero-padded. Use it as
    a context manager or call :meth:`close` (which sends NBD_CMD_DISC).
    """

    def __init__(
        self,
        uri: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_concurrent: int = 64,
        timeout: float = 10.0,
    ) -> None:
        self._addr: NbdAddress = parse_nbd_uri(uri)
        self._uri = uri
        self._page_size = check_page_size(page_size)
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be an int >= 1, got {max_concurrent!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._max_concurrent = max_concurrent
        self._timeout = float(timeout)
        self._lock = threading.Lock()  # the sync connection and the counters
        self._reads = self._bytes = self._errors = self._connects = self._retries = 0
        self._max_in_flight = 0
        self._closed = False
        self._sync: socket.socket | None = None
        self._pipe: _Pipe | None = None
        self._pipe_loop: asyncio.AbstractEventLoop | None = None
        self._dialing: asyncio.Task[_Pipe] | None = None
        self._sync, self._info = self._open_sync()
        if self._info.min_block > self._page_size or self._page_size % self._info.min_block:
            self.close()
            raise ConfigError(
                f"{self._addr}: page_size {self._page_size} is not a multiple of the export's"
                f" minimum block size {self._info.min_block}"
            )
        if self._page_size > self._info.max_block:
            self.close()
            raise ConfigError(
                f"{self._addr}: page_size {self._page_size} exceeds the export's maximum block size"
                f" {self._info.max_block}"
            )
        self._size = self._info.size
        self._num_pages = -(-self._size // self._page_size)
        logger.debug("opened %s: %d bytes in %d pages", self._addr, self._size, self._num_pages)

    # -- properties ------------------------------------------------------------------------

    @property
    def page_size(self) -> int:
        """Page size in bytes."""
        return self._page_size

    @property
    def num_pages(self) -> int:
        """Pages in the export (the last one may be zero-padded)."""
        return self._num_pages

    @property
    def export_size(self) -> int:
        """The export's size in bytes, as the server reported it."""
        return self._size

    @property
    def address(self) -> NbdAddress:
        """Where the export is."""
        return self._addr

    @property
    def max_concurrent(self) -> int:
        """Most reads in flight at once on the async connection."""
        return self._max_concurrent

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def stats(self) -> NbdStoreStats:
        """A snapshot of the counters."""
        pipe = self._pipe
        with self._lock:
            return NbdStoreStats(
                self._reads, self._bytes, self._errors, 0 if pipe is None else pipe.in_flight,
                max(self._max_in_flight, 0 if pipe is None else pipe.peak), self._connects, self._retries,
            )  # fmt: skip

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, page_index: int) -> bytes:
        """Read page ``page_index`` over the pipelined connection of the running event loop."""
        index = self._check(page_index)
        offset, length = self._extent(index)
        try:
            pipe = self._pipe
            if pipe is None or not pipe.alive or self._pipe_loop is not asyncio.get_running_loop():
                pipe = await self._connected()
            try:
                data = await pipe.submit(offset, length)
            except _Dropped as exc:
                logger.info("%s: connection lost (%s); retrying page %d once", self._addr, exc, index)
                with self._lock:
                    self._retries += 1
                pipe = await self._connected()
                data = await pipe.submit(offset, length)
        except _Dropped as exc:
            raise self._error(f"connection to {self._addr} lost again on retry: {exc}", index) from None
        except _ErrorReply as exc:
            raise self._nbd_error(exc.code, offset, length, index) from None
        except OSError as exc:
            raise self._error(f"cannot reconnect to {self._addr}: {exc.strerror or exc}", index) from exc
        except StoreError as exc:
            with self._lock:
                self._errors += 1
            raise StoreError(exc.reason, page_index=index) from exc
        return self._done(data)

    def fetch_sync(self, page_index: int) -> bytes:
        """Read page ``page_index`` on the blocking connection (reconnecting once if it dropped)."""
        index = self._check(page_index)
        offset, length = self._extent(index)
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._sync is None:
                        self._sync, _ = self._open_sync(locked=True)
                    data = self._read_sync(self._sync, offset, length)
                    break
                except _ErrorReply as exc:
                    self._errors += 1
                    raise self._nbd_error(exc.code, offset, length, index, counted=True) from None
                except (OSError, StoreError) as exc:
                    if self._sync is not None:
                        self._sync.close()
                        self._sync = None
                    if attempt:
                        self._errors += 1
                        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                        reason = f"reading from {self._addr} failed: {why}"
                        raise StoreError(reason, page_index=index) from exc
                    self._retries += 1
        return self._done(data)

    def close(self) -> None:
        """Disconnect (NBD_CMD_DISC on each connection); idempotent. Later fetches raise StoreError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock, self._sync = self._sync, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(encode_disc())
            sock.close()
        pipe, loop = self._pipe, self._pipe_loop
        self._pipe = None
        if pipe is not None and loop is not None:
            self._close_pipe(pipe, loop)
        logger.debug("closed %s", self._addr)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._num_pages} pages"
        return f"NbdStore({str(self._addr)!r}, page_size={self._page_size}, {state})"

    # -- internals -------------------------------------------------------------------------

    def _check(self, page_index: int) -> int:
        try:
            if self._closed:
                raise StoreError(f"store for {self._addr} is closed", page_index=page_index)
            return check_page_index(page_index, self._num_pages, where=f"NBD export {self._addr}")
        except StoreError:
            with self._lock:
                self._errors += 1
            raise

    def _extent(self, index: int) -> tuple[int, int]:
        offset = index * self._page_size
        return offset, min(self._page_size, self._size - offset)

    def _done(self, data: bytes) -> bytes:
        with self._lock:
            self._reads += 1
            self._bytes += len(data)
        if len(data) < self._page_size:
            data += bytes(self._page_size - len(data))
        return data

    def _error(self, reason: str, index: int) -> StoreError:
        with self._lock:
            self._errors += 1
        return StoreError(reason, page_index=index)

    def _nbd_error(
        self, code: int, offset: int, length: int, index: int, *, counted: bool = False
    ) -> NbdError:
        if not counted:
            with self._lock:
                self._errors += 1
        name = errno_name(code)
        return NbdError(
            f"{self._addr}: NBD_CMD_READ of {length} bytes at offset {offset} failed: {name}",
            code=name,
            page_index=index,
        )

    def _open_sync(self, *, locked: bool = False) -> tuple[socket.socket, ExportInfo]:
        """Dial and handshake a blocking connection (StoreError if the server cannot be reached)."""
        try:
            sock = dial(self._addr, self._timeout)
        except OSError as exc:
            raise StoreError(f"cannot connect to {self._addr}: {exc.strerror or exc}") from exc
        try:
            info = handshake(sock, self._addr.export, str(self._addr))
        except (OSError, StoreError) as exc:
            sock.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"NBD handshake with {self._addr} failed: {exc.strerror or exc}") from exc
        if locked:
            self._connects += 1
        else:
            with self._lock:
                self._connects += 1
        return sock, info

    def _read_sync(self, sock: socket.socket, offset: int, length: int) -> bytes:
        sock.sendall(encode_read(0, offset, length))
        header = _recv_exact(sock, REPLY_HEADER.size)
        magic, error, _handle = REPLY_HEADER.unpack(header)
        if magic != _SIMPLE_REPLY_MAGIC:
            raise StoreError(f"{self._addr}: NBD protocol error: bad reply magic {magic:#x}")
        if error:
            raise _ErrorReply(error)
        return _recv_exact(sock, length)

    async def _connected(self) -> _Pipe:
        """The live connection of the running loop, dialling one (one dial shared by every caller).

        The dial runs as its own task, so a caller cancelled while it waits
        does not leave a half-made connection behind.
        """
        loop = asyncio.get_running_loop()
        pipe = self._pipe
        if pipe is not None and pipe.alive and self._pipe_loop is loop:
            return pipe
        if self._closed:
            raise StoreError(f"store for {self._addr} is closed")
        dialing = self._dialing
        if dialing is None or dialing.done() or dialing.get_loop() is not loop:
            if pipe is not None:
                self._max_in_flight = max(self._max_in_flight, pipe.peak)
                if self._pipe_loop is not loop and self._pipe_loop is not None:
                    self._close_pipe(pipe, self._pipe_loop)
                self._pipe = None
            self._pipe_loop = loop
            dialing = loop.create_task(self._dial(loop))
            dialing.add_done_callback(_retrieve)
            self._dialing = dialing
        return await asyncio.shield(dialing)

    async def _dial(self, loop: asyncio.AbstractEventLoop) -> _Pipe:
        sock, _ = await asyncio.to_thread(self._open_sync)
        try:
            sock.settimeout(None)
            new = _Pipe(loop, self._max_concurrent, self._dropped)
            new.sock = sock
            await loop.connect_accepted_socket(lambda: new, sock)
        except BaseException:
            sock.close()
            raise
        # asyncio.run finalizes live async generators before it closes the loop: this one
        # disconnects politely then, so no transport outlives its loop.
        new.closer = _close_at_loop_end(new)
        await anext(new.closer)
        self._pipe = new
        return new

    def _dropped(self, pipe: _Pipe) -> None:
        self._max_in_flight = max(self._max_in_flight, pipe.peak)
        if self._pipe is pipe:
            logger.warning("%s: connection dropped: %s", self._addr, pipe.error)

    @staticmethod
    def _close_pipe(pipe: _Pipe, loop: asyncio.AbstractEventLoop) -> None:
        """Close a connection of ``loop``: politely if the loop still runs, else drop its socket."""
        if loop.is_closed():
            if pipe.sock is not None:
                pipe.sock.close()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            pipe.close()
        else:
            loop.call_soon_threadsafe(pipe.close)


def _retrieve(task: asyncio.Task[_Pipe]) -> None:
    """Mark a dial's failure as seen (its callers re-raise it; all of them may have gone)."""
    if not task.cancelled():
        task.exception()


async def _close_at_loop_end(pipe: _Pipe) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        pipe.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        buf += chunk
    return bytes(buf)
