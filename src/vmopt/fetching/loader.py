"""Page loader: fetches pages under a batch's admission control.

Generic: the caller passes the fetch function (``page index -> bytes``,
awaitable), so this knows nothing of regions, stores or the guest. Every
:meth:`PageLoader.load` holds one slot of a :class:`FairFetchScheduler`
(at most ``max_concurrent`` loads in flight); with ``adaptive`` an
:class:`AimdLimit` fed each load's latency moves that cap.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.fetching.limiter import AimdLimit
from vmopt.fetching.scheduler import FairFetchScheduler

__all__ = ["PageLoader"]

#: ``fetch(page)``: the contents of one base page.
FetchPage = Callable[[int], Awaitable[bytes]]


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

    async def load(self, fetch: FetchPage, first: int, count: int) -> bytes:
        """Pages ``first .. first+count-1`` through ``fetch``, joined, holding one demand slot."""
        async with self.scheduler.slot("demand"):
            t0 = self._clock()
            parts = [await fetch(first + k) for k in range(count)]
            if self.limiter is not None:
                latency = self._clock() - t0
                self.scheduler.set_limit(self.limiter.on_sample(latency, self.scheduler.in_flight))
        return b"".join(parts)

    @property
    def history(self) -> list[tuple[int, int]] | None:
        """The adaptive limit's ``(sample, limit)`` changes, or None when not adaptive."""
        return None if self.limiter is None else list(self.limiter.history)
