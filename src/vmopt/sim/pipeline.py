"""The pipelined driver loop: read a trace on one thread, simulate it on another.

:func:`play` feeds every chunk of a stream to a consumer on a *simulation
thread*. With ``depth`` set, a *reader thread* pulls the chunks (reading,
decompressing, parsing) and hands them over through a bounded channel of at
most ``depth`` chunks, so memory stays bounded whatever the trace length
and parsing overlaps simulation (the core releases the GIL in both). The
calling (main) thread only waits; the two workers block SIGINT, so Ctrl-C
always lands there:

* **Errors.** An exception of either worker (a :class:`TraceError` with its
  file, line and content, a bad vCPU number, ...) stops the other and is
  re-raised, unchanged, in the caller.
* **Ctrl-C.** A :class:`KeyboardInterrupt` in the caller stops both workers
  at a chunk boundary: the chunk being simulated finishes, no other starts,
  so the counters describe exactly the chunks played. :func:`play` returns
  ``False`` (or re-raises, see ``on_interrupt``).

A reader blocked in a read that never returns (a pipe whose writer stays
open) cannot be woken; after :data:`JOIN_GRACE_S` it is left behind as a
daemon thread that plays nothing more and ends with the process.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Generic, TypeVar

from vmopt.errors import ConfigError

__all__ = ["DEFAULT_DEPTH", "JOIN_GRACE_S", "Channel", "play"]

log = logging.getLogger(__name__)

#: Chunks the reader may run ahead of the simulation: enough to absorb the
#: jitter of either side, few enough that memory stays at a few MiB.
DEFAULT_DEPTH: Final = 4
#: Seconds to wait for a stopped reader before leaving it behind.
JOIN_GRACE_S: Final = 2.0

#: Seconds between the main thread's checks for a signal while it waits.
_POLL_S: Final = 0.25

T = TypeVar("T")


class _Closed(Exception):
    """The channel was cancelled: the other side stopped."""


class Channel(Generic[T]):
    """A bounded FIFO between one producer and one consumer that either side can cancel.

    :meth:`put` blocks while ``depth`` items wait; :meth:`get` while none
    does. :meth:`cancel` drops what waits and wakes both sides (they raise
    ``_Closed`` from then on), which :class:`queue.Queue` cannot do.
    """

    def __init__(self, depth: int) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"pipeline depth must be an integer >= 1, got {depth!r}")
        self.depth = depth
        self._items: deque[T] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._cancelled = False
        #: Most items that ever waited at once (the bound is ``depth``).
        self.high_water = 0

    def put(self, item: T) -> None:
        """Append ``item``, waiting for room."""
        with self._cond:
            while len(self._items) >= self.depth and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise _Closed
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()

    def get(self) -> T:
        """The oldest item, waiting for one."""
        with self._cond:
            while not self._items and not self._cancelled:
                self._cond.wait()
            if self._cancelled:
                raise _Closed
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def cancel(self) -> None:
        """Drop every waiting item and wake both sides for good."""
        with self._cond:
            self._cancelled = True
            self._items.clear()
            self._cond.notify_all()


class _End:
    """Marks the end of the stream in the channel."""


class _Failed:
    """Carries the reader's exception through the channel, in stream order."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _block_sigint() -> None:
    """Keep SIGINT off this (worker) thread, so the kernel delivers it to the main thread."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _close(chunks: Iterator[T], close: Callable[[], None] | None) -> None:
    """Release the stream from the thread that iterated it."""
    if close is not None:
        close()
    elif hasattr(chunks, "close"):
        chunks.close()


class _Reader(Generic[T]):
    """The reader thread: pulls ``chunks`` into ``channel`` until the end, an error or a stop."""

    def __init__(self, chunks: Iterator[T], depth: int, close: Callable[[], None] | None) -> None:
        self.channel: Channel[T | _End | _Failed] = Channel(depth)
        self._chunks = chunks
        self._close = close
        self.thread = threading.Thread(target=self._run, name="vmopt-reader", daemon=True)
        self.ended = threading.Event()  # set as the thread's last act

    def _run(self) -> None:
        _block_sigint()
        try:
            for chunk in self._chunks:
                self.channel.put(chunk)
            self.channel.put(_End())
        except _Closed:
            pass  # the simulation stopped first
        except BaseException as exc:  # handed to the simulation thread, re-raised there
            with contextlib.suppress(_Closed):
                self.channel.put(_Failed(exc))
        finally:
            try:
                _close(self._chunks, self._close)
            finally:
                self.ended.set()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self.channel.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item


class _Run(Generic[T]):
    """One :func:`play`: the simulation thread, its stop flag and the error it hit."""

    def __init__(
        self, chunks: Iterable[T], consume: Callable[[T], None], depth: int | None,
        close: Callable[[], None] | None,
    ) -> None:  # fmt: skip
        self.stop = threading.Event()
        self.feeding = threading.Lock()  # held while a chunk is consumed
        self.error: BaseException | None = None
        self.completed = False  # the stream ended and every chunk was consumed
        self.reader = None if depth is None else _Reader(iter(chunks), depth, close)
        self._chunks = chunks
        self._consume = consume
        self._close = close
        self.thread = threading.Thread(target=self._run, name="vmopt-simulate", daemon=True)
        self.ended = threading.Event()  # set as the thread's last act

    def _run(self) -> None:
        _block_sigint()
        stream = iter(self._chunks) if self.reader is None else iter(self.reader)
        try:
            for chunk in stream:
                with self.feeding:
                    if self.stop.is_set():
                        break
                    self._consume(chunk)
            else:
                self.completed = True
        except _Closed:
            pass  # interrupted while waiting for the reader
        except BaseException as exc:  # re-raised in the calling thread
            self.error = exc
        finally:
            try:
                if self.reader is not None:
                    self.reader.channel.cancel()
                else:
                    _close(stream, self._close)
            finally:
                self.ended.set()

    def halt(self) -> None:
        """Stop both workers; return once no chunk is being consumed or will be."""
        self.stop.set()
        if self.reader is not None:
            self.reader.channel.cancel()
        with self.feeding:
            pass  # the chunk in progress finished; the stop flag keeps any other out

    def join(self) -> None:
        """Wait for both threads, leaving behind (with a log line) a reader stuck in a read.

        The waits are on events, not ``Thread.join``: on CPython 3.11 a
        KeyboardInterrupt inside ``join`` can mark a running thread stopped.
        """
        workers = [(self.thread, self.ended)]
        if self.reader is not None:
            workers.append((self.reader.thread, self.reader.ended))
        for thread, ended in workers:
            if ended.wait(None if self.completed else JOIN_GRACE_S):
                thread.join()  # only its last few bytecodes remain
            else:
                log.debug(
                    "%s is blocked in a read; it plays nothing more and ends with the process", thread.name
                )


def play(
    chunks: Iterable[T],
    consume: Callable[[T], None],
    *,
    depth: int | None = DEFAULT_DEPTH,
    close: Callable[[], None] | None = None,
    on_interrupt: str = "return",
) -> bool:
    """Call ``consume(chunk)`` for every chunk on a simulation thread; True when all were played.

    ``depth`` None reads the chunks on the simulation thread itself; an int
    reads them on a reader thread at most ``depth`` chunks ahead. ``close``
    (default: the iterator's own ``close``, if any) releases the stream from
    the thread that read it, once it is done. Errors of either thread are
    re-raised here. On Ctrl-C both threads stop after the chunk in progress;
    ``on_interrupt="return"`` then returns False, ``"raise"`` re-raises the
    :class:`KeyboardInterrupt`.
    """
    if on_interrupt not in ("return", "raise"):
        raise ConfigError(f"on_interrupt must be 'return' or 'raise', got {on_interrupt!r}")
    run = _Run(chunks, consume, depth, close)
    interrupted = False
    try:
        if run.reader is not None:
            run.reader.thread.start()
        run.thread.start()
        while not run.ended.wait(_POLL_S):
            pass  # bounded waits: a signal whose wakeup was lost is still handled within one
    except KeyboardInterrupt:
        interrupted = True
        log.debug("interrupted: stopping the reader and simulation threads")
    finally:
        while True:
            try:
                if interrupted or not run.ended.is_set():
                    run.halt()
                run.join()
                break
            except KeyboardInterrupt:
                interrupted = True  # a second Ctrl-C while stopping: keep stopping
    if run.error is not None:
        raise run.error
    if interrupted and on_interrupt == "raise":
        raise KeyboardInterrupt
    return not interrupted
