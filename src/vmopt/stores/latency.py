"""A backing store with deterministic, configurable latency and failures.

For experiments and tests: each fetch sleeps ``latency_s`` plus a per-page
jitter, and fails for a deterministic subset of pages. Jitter and failure are
derived from a hash of ``(seed, page_index)`` rather than from a shared random
stream, so a page's latency and fate are the same however fetches interleave
-- results do not depend on scheduling order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from vmopt.errors import ConfigError, VmoptError
from vmopt.stores.base import DEFAULT_PAGE_SIZE, StoreError, check_page_index, check_page_size

__all__ = ["LatencyStore", "LatencyStoreStats", "PageData"]

logger = logging.getLogger(__name__)

PageData: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[np.uint8] | Callable[[int], bytes]
"""What a :class:`LatencyStore` serves: a flat buffer, or ``page_index -> bytes``."""

_UNIT = float(1 << 64)


@dataclass(frozen=True, slots=True)
class LatencyStoreStats:
    """Counters of a :class:`LatencyStore` (a snapshot; safe to keep)."""

    fetches: int
    """Fetches started (successful or not, async or sync)."""
    failures: int
    """Fetches that raised (injected failure, invalid index, bad data callable)."""
    in_flight: int
    """Fetches running right now."""
    max_in_flight: int
    """Highest number of fetches ever running at once."""
    bytes_served: int
    """Bytes returned by successful fetches."""


def _finite_nonneg(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}")
    return v


class LatencyStore:
    """Serve pages after a deterministic delay, failing a deterministic subset.

    Each fetch of page ``i`` sleeps ``latency_s + u_i * jitter_s`` and fails
    (raises :class:`StoreError`, after the delay) when ``v_i < fail_rate``,
    where ``u_i, v_i`` are uniform in ``[0, 1)`` drawn from a BLAKE2b hash of
    ``(seed, i)``. ``data`` is a buffer (bytes, bytearray, memoryview or a
    uint8 numpy array; copied at construction, so later mutation has no
    effect) or a callable ``page_index -> bytes``; without data every page is
    zeros. ``num_pages`` defaults to the buffer's page count (short last page
    zero-padded), or to unbounded for a callable or no data.

    ``sleep`` and ``async_sleep`` do the waiting (``time.sleep`` and
    ``asyncio.sleep`` unless given): tests pass their own to control time.
    """

    def __init__(
        self,
        latency_s: float,
        data: PageData | None = None,
        jitter_s: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 0,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        num_pages: int | None = None,
        sleep: Callable[[float], object] = time.sleep,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._latency_s = _finite_nonneg("latency_s", latency_s)
        self._jitter_s = _finite_nonneg("jitter_s", jitter_s)
        if isinstance(fail_rate, bool) or not isinstance(fail_rate, int | float):
            raise ConfigError(f"fail_rate must be a number in [0, 1], got {fail_rate!r}")
        if not 0.0 <= float(fail_rate) <= 1.0:  # also rejects NaN
            raise ConfigError(f"fail_rate must be in [0, 1], got {fail_rate!r}")
        self._fail_rate = float(fail_rate)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        self._seed = seed
        self._page_size = check_page_size(page_size)
        if num_pages is not None and (
            isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 0
        ):
            raise ConfigError(f"num_pages must be None or an int >= 0, got {num_pages!r}")

        self._buffer: bytes | None = None
        self._source: Callable[[int], bytes] | None = None
        if data is None:
            pass
        elif isinstance(data, np.ndarray):
            if data.dtype != np.uint8:
                raise ConfigError(f"data array must have dtype uint8, got {data.dtype}")
            self._buffer = np.ascontiguousarray(data).tobytes()
        elif isinstance(data, bytes | bytearray | memoryview):
            self._buffer = data if isinstance(data, bytes) else memoryview(data).tobytes()
        elif callable(data):
            self._source = data
        else:
            raise ConfigError(
                "data must be bytes, bytearray, memoryview, a uint8 numpy array or a "
                f"callable page_index -> bytes, got {type(data).__name__}"
            )
        if num_pages is None and self._buffer is not None:
            num_pages = -(-len(self._buffer) // self._page_size)
        self._num_pages = num_pages
        self._zero_page = bytes(self._page_size)

        self._lock = threading.Lock()  # counters are shared with fetch_sync callers
        self._closed = False
        self._fetches = 0
        self._failures = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._bytes_served = 0

    @property
    def page_size(self) -> int:
        """Page size in bytes."""
        return self._page_size

    @property
    def num_pages(self) -> int | None:
        """Number of pages, or ``None`` when any index >= 0 is valid."""
        return self._num_pages

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def stats(self) -> LatencyStoreStats:
        """A snapshot of the counters."""
        with self._lock:
            return LatencyStoreStats(
                self._fetches,
                self._failures,
                self._in_flight,
                self._max_in_flight,
                self._bytes_served,
            )

    def latency_for(self, page_index: int) -> float:
        """The delay (seconds) every fetch of ``page_index`` takes."""
        if not self._jitter_s:
            return self._latency_s
        return self._latency_s + self._draws(page_index)[0] * self._jitter_s

    def will_fail(self, page_index: int) -> bool:
        """Whether fetches of ``page_index`` fail (an injected failure)."""
        if not self._fail_rate:
            return False
        return self._draws(page_index)[1] < self._fail_rate

    async def fetch(self, page_index: int) -> bytes:
        """Sleep the page's latency on the event loop, then return or fail."""
        with self._tracked(page_index) as index:
            delay = self.latency_for(index)
            if delay > 0:
                await self._async_sleep(delay)
            return self._serve(index)

    def fetch_sync(self, page_index: int) -> bytes:
        """Blocking twin of :meth:`fetch` (``time.sleep``); same results."""
        with self._tracked(page_index) as index:
            delay = self.latency_for(index)
            if delay > 0:
                self._sleep(delay)
            return self._serve(index)

    def close(self) -> None:
        """Mark the store closed; later fetches raise :class:`StoreError`."""
        self._closed = True

    def __repr__(self) -> str:
        return (
            f"LatencyStore(latency_s={self._latency_s}, jitter_s={self._jitter_s}, "
            f"fail_rate={self._fail_rate}, seed={self._seed}, page_size={self._page_size}, "
            f"num_pages={self._num_pages})"
        )

    def _draws(self, page_index: int) -> tuple[float, float]:
        """Two uniforms in [0, 1) fixed by (seed, page_index): jitter and failure."""
        digest = hashlib.blake2b(
            f"{self._seed}:{page_index}".encode(), digest_size=16, person=b"vmopt-latency"
        ).digest()
        return (
            int.from_bytes(digest[:8], "little") / _UNIT,
            int.from_bytes(digest[8:], "little") / _UNIT,
        )

    @contextmanager
    def _tracked(self, page_index: int) -> Iterator[int]:
        """Validate the index and count the fetch as in flight for its duration."""
        with self._lock:
            self._fetches += 1
        try:
            if self._closed:
                raise StoreError("store is closed", page_index=page_index)
            index = check_page_index(page_index, self._num_pages)
        except StoreError:
            with self._lock:
                self._failures += 1
            raise
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield index
        except Exception:  # not CancelledError: a cancelled fetch did not fail
            with self._lock:
                self._failures += 1
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve(self, index: int) -> bytes:
        """Return the page's bytes, or raise the page's injected failure."""
        if self.will_fail(index):
            logger.debug("injected failure for page %d (seed %d)", index, self._seed)
            raise StoreError(
                f"injected failure (fail_rate={self._fail_rate}, seed={self._seed})",
                page_index=index,
            )
        page = self._page(index)
        with self._lock:
            self._bytes_served += len(page)
        return page

    def _page(self, index: int) -> bytes:
        ps = self._page_size
        if self._source is not None:
            try:
                raw = self._source(index)
            except VmoptError:
                raise
            except Exception as exc:
                raise StoreError(f"data callable raised {exc!r}", page_index=index) from exc
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise StoreError(
                    f"data callable returned {type(raw).__name__}, expected bytes",
                    page_index=index,
                )
            page = bytes(raw)
            if len(page) != ps:
                raise StoreError(f"data callable returned {len(page)} bytes, expected {ps}", page_index=index)
            return page
        if self._buffer is None:
            return self._zero_page
        start = index * ps
        if start >= len(self._buffer):
            return self._zero_page
        page = self._buffer[start : start + ps]
        if len(page) < ps:
            page += bytes(ps - len(page))
        return page
