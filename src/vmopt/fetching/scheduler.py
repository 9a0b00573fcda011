"""Weighted fair admission of concurrent store fetches.

:class:`FairFetchScheduler` is an asyncio gate: at most ``limit`` operations
run at once, and operations that must wait queue per traffic class (FIFO
within a class). When a slot frees, the next class is chosen by start-time
fair queueing (SFQ, Goyal et al. 1996), a virtual-time form of weighted fair
queueing: every admission of class ``c`` advances the class's finish tag by
``1 / weight[c]``, and the backlogged class with the smallest start tag
``max(finish[c], V)`` goes next (``V`` = start tag of the last admission).
While several classes wait, admissions therefore split in proportion to the
weights, each class staying within one admission of its exact share; a class
that was idle cannot bank credit, and no class with waiters is starved.

asyncio.Semaphore is not used: its wake-up order is not a fairness contract.
Waiters wait on futures created from the running loop, so one scheduler works
under any event loop (one loop at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType

from vmopt.errors import ConfigError

__all__ = ["DEFAULT_WEIGHTS", "FairFetchScheduler", "SchedulerStats"]

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS: Mapping[str, int] = MappingProxyType({"demand": 4, "prefetch": 1})
"""Demand fetches (a guest is stalled on them) get 4 slots for every prefetch."""


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A snapshot of a scheduler's counters."""

    limit: int
    """Current cap on operations in flight."""
    in_flight: int
    """Operations holding a slot now (granted waiters included)."""
    peak_in_flight: int
    """Most operations ever in flight at once."""
    admitted: Mapping[str, int]
    """Operations admitted so far, per class."""
    waiting: Mapping[str, int]
    """Operations queued now, per class."""
    cancelled: int
    """Waiters cancelled before they got a slot."""


class _Class:
    """Per-class state: FIFO of waiting futures, SFQ finish tag, counters."""

    __slots__ = ("admitted", "finish", "name", "queue", "rank", "stride")

    def __init__(self, name: str, stride: int, rank: int) -> None:
        self.name = name
        self.stride = stride  # lcm(weights) // weight: virtual cost of one admission
        self.rank = rank  # tie-break: heavier classes first, then declaration order
        self.finish = 0
        self.admitted = 0
        self.queue: deque[asyncio.Future[None]] = deque()


class _Slot:
    """``async with scheduler.slot(cls)``: acquire on entry, release on exit."""

    __slots__ = ("_cls", "_sched")

    def __init__(self, sched: FairFetchScheduler, cls: str) -> None:
        self._sched = sched
        self._cls = cls

    async def __aenter__(self) -> None:
        await self._sched.acquire(self._cls)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sched.release()


class FairFetchScheduler:
    """Admit at most ``max_in_flight`` operations; share waits by class weight.

    ``async with scheduler.slot("demand"): ...`` runs the body holding a slot.
    A slot freed by a finishing operation goes straight to the chosen waiter,
    so newcomers never overtake queued operations. :meth:`set_limit` changes
    the cap at run time (for an adaptive limiter); lowering it lets running
    operations finish and admits no one until the count drops below the cap.
    """

    def __init__(
        self,
        max_in_flight: int,
        weights: Mapping[str, int] = DEFAULT_WEIGHTS,
    ) -> None:
        self._limit = self._check_limit(max_in_flight, "max_in_flight")
        if not isinstance(weights, Mapping) or not weights:
            raise ConfigError(f"weights must be a non-empty mapping, got {weights!r}")
        for name, w in weights.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"class names must be non-empty strings, got {name!r}")
            if isinstance(w, bool) or not isinstance(w, int) or w < 1:
                raise ConfigError(f"weight of class {name!r} must be an int >= 1, got {w!r}")
        scale = math.lcm(*weights.values())
        order = sorted(weights, key=lambda n: -weights[n])  # stable: keeps declaration order
        self._classes: dict[str, _Class] = {
            name: _Class(name, scale // weights[name], order.index(name)) for name in weights
        }
        self._weights: Mapping[str, int] = MappingProxyType(dict(weights))
        self._vtime = 0
        self._in_flight = 0
        self._peak = 0
        self._cancelled = 0

    @staticmethod
    def _check_limit(n: object, what: str) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{what} must be an int >= 1, got {n!r}")
        return n

    @property
    def limit(self) -> int:
        """Current cap on operations in flight."""
        return self._limit

    @property
    def weights(self) -> Mapping[str, int]:
        """Class weights (read-only)."""
        return self._weights

    @property
    def in_flight(self) -> int:
        """Operations holding a slot now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Operations queued now, all classes together."""
        return sum(len(c.queue) for c in self._classes.values())

    @property
    def stats(self) -> SchedulerStats:
        """A snapshot of the counters."""
        return SchedulerStats(
            limit=self._limit,
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            admitted=MappingProxyType({n: c.admitted for n, c in self._classes.items()}),
            waiting=MappingProxyType({n: len(c.queue) for n, c in self._classes.items()}),
            cancelled=self._cancelled,
        )

    def slot(self, cls: str = "demand") -> _Slot:
        """An async context manager holding one slot of class ``cls``."""
        self._class(cls)
        return _Slot(self, cls)

    async def acquire(self, cls: str = "demand") -> None:
        """Wait for a slot of class ``cls``; pair with :meth:`release`.

        If cancelled while waiting, the waiter leaves its queue; if it was
        cancelled just after being granted a slot, the slot is passed on.
        """
        c = self._class(cls)
        if self._in_flight < self._limit and not self.waiting:
            self._grant(c)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        c.queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted, then cancelled before it could run: hand the slot on.
                self.release()
            else:
                with contextlib.suppress(ValueError):  # the dispatcher may have dropped it
                    c.queue.remove(fut)
                self._cancelled += 1
                # No dispatch needed: slots are only ever free while every
                # queue is empty, so this waiter was not holding anyone up.
            raise

    def release(self) -> None:
        """Give back a slot taken by :meth:`acquire` and admit the next waiter."""
        if self._in_flight <= 0:
            raise RuntimeError("release() called with no slot held")
        self._in_flight -= 1
        self._dispatch()

    def set_limit(self, n: int) -> None:
        """Change the cap on operations in flight (takes effect immediately)."""
        n = self._check_limit(n, "limit")
        if n != self._limit:
            logger.debug("limit %d -> %d (in flight %d)", self._limit, n, self._in_flight)
        self._limit = n
        self._dispatch()

    def __repr__(self) -> str:
        return (
            f"FairFetchScheduler(limit={self._limit}, in_flight={self._in_flight}, "
            f"waiting={self.waiting}, weights={dict(self._weights)})"
        )

    def _class(self, cls: str) -> _Class:
        try:
            return self._classes[cls]
        except (KeyError, TypeError):
            known = ", ".join(map(repr, self._classes))
            raise ConfigError(f"unknown traffic class {cls!r}; known classes: {known}") from None

    def _grant(self, c: _Class) -> None:
        """Account one admission of class ``c`` (SFQ tags, counters)."""
        start = max(c.finish, self._vtime)
        self._vtime = start
        c.finish = start + c.stride
        c.admitted += 1
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)

    def _dispatch(self) -> None:
        """Hand free slots to waiters, class by class in SFQ order."""
        while self._in_flight < self._limit:
            best: _Class | None = None
            best_key: tuple[int, int] = (0, 0)
            for c in self._classes.values():
                if c.queue:
                    key = (max(c.finish, self._vtime), c.rank)
                    if best is None or key < best_key:
                        best, best_key = c, key
            if best is None:
                return
            fut = best.queue.popleft()
            if fut.done():
                # Cancelled, its task not yet resumed to clean up: skip it.
                continue
            self._grant(best)
            fut.set_result(None)
