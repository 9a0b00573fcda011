"""Page loader: fetches pages under a batch's admission control.

Generic: the caller passes the fetch function (``page index -> bytes``,
awaitable), so this knows nothing of regions, stores or the guest. Every
:meth:`PageLoader.load` holds one slot of a :class:`FairFetchScheduler`
(at most ``max_concurrent`` loads in flight); with ``adaptive`` an
:class:`AimdLimit` fed each load's latency moves that cap.
:meth:`PageLoader.start` loads a whole batch's runs through
``max_concurrent`` workers: a task per worker rather than per page, so a
page that waits for a slot costs no task, no wake-up and no waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.fetching.limiter import AimdLimit
from vmopt.fetching.scheduler import FairFetchScheduler

__all__ = ["PageLoader"]

#: ``fetch(page)``: the contents of one base page.
FetchPage = Callable[[int], Awaitable[bytes]]
#: ``(fetch, first, count)``: pages ``first .. first+count-1`` through ``fetch``.
Run = tuple[FetchPage, int, int]


class PageLoader:
    """Loads runs of pages, ``config.max_concurrent`` runs at a time (fewer when adaptive).

    ``clock`` (seconds, monotonic) times each load for the limiter.
    """

    def __init__(self, config: ConcurrencyConfig, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.scheduler = FairFetchScheduler(config.max_concurrent, config.weights)
        self.limiter = (
            AimdLimit(min(config.max_concurrent, 4), max_limit=config.max_concurrent)
            if config.adaptive
            else None
        )
        if self.limiter is not None:
            self.scheduler.set_limit(self.limiter.limit)
        self._clock = clock
        self._max = config.max_concurrent
        self._workers: list[asyncio.Task[None]] = []
        self._queues: list[deque[tuple[Run, asyncio.Future[bytes]]]] = []

    async def load(self, fetch: FetchPage, first: int, count: int) -> bytes:
        """Pages ``first .. first+count-1`` through ``fetch``, joined, holding one demand slot."""
        async with self.scheduler.slot("demand"):
            t0 = self._clock()
            if count == 1:
                data = await fetch(first)
            else:
                data = b"".join([await fetch(first + k) for k in range(count)])
            if self.limiter is not None:
                latency = self._clock() - t0
                self.scheduler.set_limit(self.limiter.on_sample(latency, self.scheduler.in_flight))
        return data

    def start(self, runs: Sequence[Run]) -> list[asyncio.Future[bytes]]:
        """Start loading ``runs`` in order, each as :meth:`load` would: one future per run.

        Up to ``max_concurrent`` workers take the runs in order, so loads
        start in the order given, and each future ends with the run's bytes
        or its fetch's exception. A future the caller cancels is skipped.
        Call :meth:`stop` when done with them.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bytes]] = [loop.create_future() for _ in runs]
        queue = deque(zip(runs, futures, strict=True))
        self._queues.append(queue)
        self._workers += [loop.create_task(self._work(queue)) for _ in range(min(self._max, len(queue)))]
        return futures

    async def _work(self, queue: deque[tuple[Run, asyncio.Future[bytes]]]) -> None:
        while queue:
            (fetch, first, count), fut = queue.popleft()
            if fut.done():
                continue
            try:
                data = await self.load(fetch, first, count)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as exc:  # the run's own failure: its future carries it
                if not fut.done():
                    fut.set_exception(exc)
            else:
                if not fut.done():
                    fut.set_result(data)

    async def stop(self) -> None:
        """Cancel the workers of :meth:`start` and wait for them; unfinished runs are cancelled."""
        workers, self._workers = self._workers, []
        queues, self._queues = self._queues, []
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in queues:
            for _, fut in queue:
                fut.cancel()

    @property
    def history(self) -> list[tuple[int, int]] | None:
        """The adaptive limit's ``(sample, limit)`` changes, or None when not adaptive."""
        return None if self.limiter is None else list(self.limiter.history)
