"""Adaptive concurrency limits: find how many fetches a store can overlap.

A store has some capacity ``C``: up to ``C`` concurrent fetches cost no more
than one, beyond it requests queue and latency grows with the excess. The
limits here watch per-fetch latency (and drops) and move a concurrency limit
toward that knee, in the style of Netflix's ``concurrency-limits`` library
and Envoy's adaptive-concurrency filter. Feed each completed fetch to
:meth:`on_sample` and apply the returned limit, e.g. with
``FairFetchScheduler.set_limit``.

The limit compares latency against a *no-load* latency ``rtt_noload``,
the lowest latency seen. A minimum only falls, so one taken while the store
was already overloaded would stay too high; every ``probe_interval`` windows
the limit therefore drops to ``probe_limit`` (default ``min_limit``) until
``probe_samples`` samples at that concurrency have re-measured it, then the
previous limit is restored. That is Envoy's periodic minRTT measurement
(``min_concurrency``, ``request_count``); Netflix ``GradientLimit`` probes
similarly but restarts from a low limit instead of restoring the old one.
Samples from operations admitted before the probe (``in_flight`` above
``probe_limit``) do not count toward it.
"""

from __future__ import annotations

import abc
import logging
import math
from collections import deque
from typing import Protocol, runtime_checkable

from vmopt.errors import ConfigError

__all__ = ["AdaptiveLimit", "AimdLimit"]

logger = logging.getLogger(__name__)


@runtime_checkable
class AdaptiveLimit(Protocol):
    """A concurrency limit driven by latency samples."""

    @property
    def limit(self) -> int:
        """The current limit."""
        ...

    @property
    def history(self) -> list[tuple[int, int]]:
        """``(sample_no, limit)`` at start and at every change."""
        ...

    def on_sample(self, latency_s: float, in_flight: int, dropped: bool = False) -> int:
        """Record one completed operation; return the (possibly new) limit."""
        ...


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_float(name: str, value: object, low: float, high: float, *, open_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = low <= v < high if open_high else low <= v <= high
    if not ok:  # also rejects NaN
        bracket = ")" if open_high else "]"
        raise ConfigError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return v


class _WindowedLimit(abc.ABC):
    """Shared machinery: validation, windowing, no-load RTT, probes, history.

    Samples are aggregated over ``window`` completions (mean latency, max in
    flight, any drop) before the algorithm's ``_update`` runs, like Netflix's
    ``WindowedLimit``; ``window=1`` updates on every sample.
    """

    def __init__(
        self,
        initial: int,
        *,
        min_limit: int,
        max_limit: int,
        probe_interval: int | None,
        probe_limit: int | None,
        probe_samples: int,
        window: int,
        history_size: int,
    ) -> None:
        self._min = _check_int("min_limit", min_limit, 1)
        self._max = _check_int("max_limit", max_limit, 1)
        if self._max < self._min:
            raise ConfigError(f"max_limit ({max_limit}) must be >= min_limit ({min_limit})")
        initial = _check_int("initial", initial, 1)
        if not self._min <= initial <= self._max:
            raise ConfigError(f"initial must be in [{min_limit}, {max_limit}], got {initial}")
        if probe_interval is not None:
            _check_int("probe_interval", probe_interval, 1)
        self._probe_interval = probe_interval
        if probe_limit is None:
            probe_limit = self._min
        _check_int("probe_limit", probe_limit, 1)
        if not self._min <= probe_limit <= self._max:
            raise ConfigError(f"probe_limit must be in [{min_limit}, {max_limit}], got {probe_limit}")
        self._probe_limit = probe_limit
        self._probe_samples = _check_int("probe_samples", probe_samples, 1)
        self._window = _check_int("window", window, 1)
        _check_int("history_size", history_size, 1)
        self._estimate = float(initial)
        self._samples = 0
        self._rtt_noload: float | None = None
        # Window aggregation.
        self._win_n = 0
        self._win_sum = 0.0
        self._win_in_flight = 0
        self._win_dropped = False
        # Probing: windows since the last probe; during a probe, the limit to
        # restore afterwards and the low-concurrency samples gathered so far.
        self._since_probe = 0
        self._deferred: float | None = None
        self._probe_seen = 0
        self._probe_good = 0
        self._probe_min = math.inf
        self._probe_min_any = math.inf
        self._history: deque[tuple[int, int]] = deque([(0, initial)], maxlen=history_size)

    @property
    def limit(self) -> int:
        """The current limit, in ``[min_limit, max_limit]``."""
        return int(self._estimate)

    @property
    def min_limit(self) -> int:
        """Lowest limit the algorithm may choose."""
        return self._min

    @property
    def max_limit(self) -> int:
        """Highest limit the algorithm may choose."""
        return self._max

    @property
    def samples(self) -> int:
        """Samples seen so far."""
        return self._samples

    @property
    def probing(self) -> bool:
        """Whether a no-load probe is running (the limit is ``probe_limit``)."""
        return self._deferred is not None

    @property
    def rtt_noload(self) -> float | None:
        """Current no-load latency estimate (seconds); ``None`` before any sample."""
        return self._rtt_noload

    @property
    def history(self) -> list[tuple[int, int]]:
        """``(sample_no, limit)`` at start and whenever the limit changed (bounded)."""
        return list(self._history)

    def on_sample(self, latency_s: float, in_flight: int, dropped: bool = False) -> int:
        """Record one completed operation and return the (possibly new) limit.

        ``latency_s`` is the operation's latency, ``in_flight`` how many
        operations were in flight with it, ``dropped`` whether it failed or
        timed out (a congestion signal regardless of latency).
        """
        if isinstance(latency_s, bool) or not isinstance(latency_s, int | float):
            raise ConfigError(f"latency_s must be a number, got {latency_s!r}")
        if not math.isfinite(latency_s) or latency_s < 0:
            raise ConfigError(f"latency_s must be finite and >= 0, got {latency_s!r}")
        _check_int("in_flight", in_flight, 0)
        self._samples += 1
        before = self.limit
        if self._deferred is not None:
            self._probe_sample(float(latency_s), in_flight)
        else:
            self._window_sample(float(latency_s), in_flight, bool(dropped))
        after = self.limit
        if after != before:
            self._history.append((self._samples, after))
        return after

    def _window_sample(self, latency: float, in_flight: int, dropped: bool) -> None:
        self._win_n += 1
        self._win_sum += latency
        self._win_in_flight = max(self._win_in_flight, in_flight)
        self._win_dropped = self._win_dropped or dropped
        if self._win_n < self._window:
            return
        rtt = self._win_sum / self._win_n
        peak, drop = self._win_in_flight, self._win_dropped
        self._win_n, self._win_sum, self._win_in_flight, self._win_dropped = 0, 0.0, 0, False
        if rtt > 0 and (self._rtt_noload is None or rtt < self._rtt_noload):
            self._rtt_noload = rtt
        noload = self._rtt_noload if self._rtt_noload is not None else rtt
        new = self._update(rtt, noload, peak, drop)
        self._estimate = min(float(self._max), max(float(self._min), new))
        self._since_probe += 1
        if self._probe_interval is not None and self._since_probe >= self._probe_interval:
            self._start_probe()

    def _start_probe(self) -> None:
        """Drop to ``probe_limit`` to re-measure the no-load latency (Envoy minRTT)."""
        self._deferred = self._estimate
        self._since_probe = 0
        self._probe_seen = self._probe_good = 0
        self._probe_min = self._probe_min_any = math.inf
        self._estimate = float(self._probe_limit)
        logger.debug("probe: limit %d -> %d", int(self._deferred), self._probe_limit)

    def _probe_sample(self, latency: float, in_flight: int) -> None:
        # Operations admitted before the probe still complete for a while with
        # queueing in their latency: only samples at probe concurrency count.
        # If they never come (stragglers that do not drain), the probe gives
        # up after probe_samples + the deferred limit samples.
        assert self._deferred is not None
        self._probe_seen += 1
        if latency > 0:
            self._probe_min_any = min(self._probe_min_any, latency)
            if in_flight <= self._probe_limit:
                self._probe_good += 1
                self._probe_min = min(self._probe_min, latency)
        straggler_budget = self._probe_samples + int(self._deferred)
        if self._probe_good < self._probe_samples and self._probe_seen < straggler_budget:
            return
        if self._probe_good:
            self._rtt_noload = self._probe_min
        elif math.isfinite(self._probe_min_any):
            # No sample ran at probe concurrency (the caller ignores the
            # limit): nothing trustworthy was measured, so only a lower
            # latency may replace the old estimate.
            old = self._rtt_noload
            self._rtt_noload = self._probe_min_any if old is None else min(old, self._probe_min_any)
        self._estimate = self._deferred
        self._deferred = None
        logger.debug("probe done: rtt_noload=%s, limit back to %d", self._rtt_noload, self.limit)

    @abc.abstractmethod
    def _update(self, rtt: float, rtt_noload: float, in_flight: int, dropped: bool) -> float:
        """Return the new (unclamped) limit estimate for one window."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(limit={self.limit}, min_limit={self._min}, "
            f"max_limit={self._max}, rtt_noload={self._rtt_noload}, samples={self._samples})"
        )


class AimdLimit(_WindowedLimit):
    """Additive increase, multiplicative decrease (Netflix ``AIMDLimit``).

    Follows Netflix concurrency-limits' ``AIMDLimit``: on congestion the limit
    becomes ``max(1, min(limit - 1, int(limit * backoff)))``; otherwise it
    grows by ``increase`` when the limit is being used (``in_flight * 2 >=
    limit``) and stays put when the caller is app-limited. Netflix counts a
    drop or an RTT above a fixed timeout as congestion; this version also
    counts latency above ``latency_threshold_factor * rtt_noload`` (queueing
    detected relative to the no-load latency), so it works on latency alone.
    Against a store of capacity ``C`` the limit saw-tooths just below
    ``latency_threshold_factor * C``.
    """

    def __init__(
        self,
        initial: int = 10,
        *,
        min_limit: int = 1,
        max_limit: int = 512,
        backoff: float = 0.9,
        increase: int = 1,
        latency_threshold_factor: float | None = 1.5,
        timeout_s: float | None = None,
        probe_interval: int | None = 1000,
        probe_limit: int | None = None,
        probe_samples: int = 10,
        window: int = 1,
        history_size: int = 10_000,
    ) -> None:
        super().__init__(
            initial,
            min_limit=min_limit,
            max_limit=max_limit,
            probe_interval=probe_interval,
            probe_limit=probe_limit,
            probe_samples=probe_samples,
            window=window,
            history_size=history_size,
        )
        self._backoff = _check_float("backoff", backoff, 0.5, 1.0, open_high=True)
        self._increase = _check_int("increase", increase, 1)
        self._factor: float | None = None
        if latency_threshold_factor is not None:
            if isinstance(latency_threshold_factor, bool) or not isinstance(
                latency_threshold_factor, int | float
            ):
                raise ConfigError(
                    f"latency_threshold_factor must be a number, got {latency_threshold_factor!r}"
                )
            if not (math.isfinite(latency_threshold_factor) and latency_threshold_factor > 1.0):
                raise ConfigError(f"latency_threshold_factor must be > 1, got {latency_threshold_factor!r}")
            self._factor = float(latency_threshold_factor)
        self._timeout: float | None = None
        if timeout_s is not None:
            if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
                raise ConfigError(f"timeout_s must be a number, got {timeout_s!r}")
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise ConfigError(f"timeout_s must be finite and > 0, got {timeout_s!r}")
            self._timeout = float(timeout_s)

    def _update(self, rtt: float, rtt_noload: float, in_flight: int, dropped: bool) -> float:
        limit = int(self._estimate)
        congested = (
            dropped
            or (self._timeout is not None and rtt > self._timeout)
            or (self._factor is not None and rtt > self._factor * rtt_noload)
        )
        if congested:
            return float(max(1, min(limit - 1, int(limit * self._backoff))))
        if in_flight * 2 >= limit:
            return float(limit + self._increase)
        return self._estimate
