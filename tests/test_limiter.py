"""Tests of the adaptive concurrency limits, in pure simulation (no sleeps).

The simulated store has capacity ``C``: latency is flat up to ``C`` requests
in flight and grows linearly beyond (``base * max(1, in_flight / C)``). The
client is saturated, so in flight always equals the current limit.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.errors import ConfigError
from vmopt.fetching.limiter import AdaptiveLimit, AimdLimit
from vmopt.fetching.scheduler import FairFetchScheduler
from vmopt.stores import LatencyStore

BASE = 0.010


def _latency(in_flight: int, capacity: int) -> float:
    return BASE * max(1.0, in_flight / capacity)


def _simulate(limiter: AimdLimit, capacity: int, steps: int) -> list[int]:
    """Run the control loop; return the limit after every sample."""
    limits = []
    for _ in range(steps):
        in_flight = limiter.limit
        limits.append(limiter.on_sample(_latency(in_flight, capacity), in_flight))
    return limits


def _make(initial: int, **kw: int | None) -> AimdLimit:
    return AimdLimit(initial, max_limit=1000, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------- convergence


@pytest.mark.parametrize("capacity", [2, 4, 16, 64, 200])
@pytest.mark.parametrize("initial", [1, 10, 500])
def test_converges_near_capacity(capacity: int, initial: int) -> None:
    limiter = _make(initial)
    limits = _simulate(limiter, capacity, 3000)
    assert all(1 <= x <= 1000 for x in limits)
    tail = limits[-1000:]
    # Periodic no-load probes dip to min_limit for a few samples; otherwise
    # the limit stays in the band.
    in_band = sum(capacity / 2 <= x <= 2 * capacity for x in tail)
    assert in_band >= 0.95 * len(tail), (min(tail), max(tail), in_band)


@pytest.mark.parametrize("capacity", [3, 16, 100])
def test_without_probes_settles_for_good(capacity: int) -> None:
    limiter = _make(1, probe_interval=None)
    limits = _simulate(limiter, capacity, 2000)
    assert all(capacity / 2 <= x <= 2 * capacity for x in limits[-500:])
    assert limiter.rtt_noload == pytest.approx(BASE)


def test_aimd_capacity_one() -> None:
    # Starting above capacity, the no-load estimate is only right after the
    # first probe (window 1000); from then on the limit stays at 1-2.
    limits = _simulate(AimdLimit(5, max_limit=64), 1, 2000)
    assert all(1 <= x <= 2 for x in limits[-500:])


def test_probes_recover_from_an_overloaded_start() -> None:
    # Starting far above capacity, the first latencies are all inflated, so the
    # no-load estimate is wrong until a probe re-measures it at low concurrency.
    capacity = 16
    limiter = AimdLimit(1000, max_limit=1000, probe_interval=100)
    limits = _simulate(limiter, capacity, 600)
    assert limiter.rtt_noload == pytest.approx(BASE)
    in_band = sum(capacity / 2 <= x <= 2 * capacity for x in limits[-300:])
    assert in_band >= 0.9 * 300


# ----------------------------------------------------- algorithm details


def test_aimd_additive_increase_and_backoff() -> None:
    lim = AimdLimit(10, max_limit=100, latency_threshold_factor=None, probe_interval=None)
    assert lim.on_sample(0.01, in_flight=10) == 11
    assert lim.on_sample(0.01, in_flight=11) == 12
    assert lim.on_sample(0.01, in_flight=12, dropped=True) == 10  # int(12 * 0.9)
    assert lim.on_sample(0.01, in_flight=2) == 10  # app-limited: no growth
    small = AimdLimit(3, latency_threshold_factor=None)
    assert small.on_sample(0.01, 3, dropped=True) == 2  # at least -1
    assert small.on_sample(0.01, 2, dropped=True) == 1
    assert small.on_sample(0.01, 1, dropped=True) == 1  # min_limit


def test_aimd_latency_and_timeout_congestion() -> None:
    lim = AimdLimit(20, latency_threshold_factor=2.0, probe_interval=None)
    lim.on_sample(0.010, 20)  # no-load 10 ms
    assert lim.limit == 21
    assert lim.on_sample(0.019, 21) == 22  # below 2x
    assert lim.on_sample(0.021, 22) == 19  # above 2x: back off
    timed = AimdLimit(20, latency_threshold_factor=None, timeout_s=0.5)
    assert timed.on_sample(0.6, 20) == 18


def test_probe_cycle() -> None:
    lim = AimdLimit(
        10, max_limit=100, probe_interval=5, probe_limit=2, probe_samples=3, latency_threshold_factor=None
    )
    for _ in range(4):
        lim.on_sample(0.05, lim.limit)
    assert lim.limit == 14 and not lim.probing
    lim.on_sample(0.05, 14)  # fifth window: grows to 15, then the probe starts
    assert lim.probing
    assert lim.limit == 2
    # Stragglers admitted before the probe (in flight > 2) do not count ...
    for _ in range(5):
        lim.on_sample(0.09, 14)
    assert lim.probing
    # ... samples at probe concurrency do.
    lim.on_sample(0.03, 2)
    lim.on_sample(0.02, 2)
    lim.on_sample(0.04, 1)
    assert not lim.probing
    assert lim.limit == 15  # the pre-probe limit is restored
    assert lim.rtt_noload == pytest.approx(0.02)


def test_probe_ends_even_if_concurrency_never_drops() -> None:
    lim = AimdLimit(5, probe_interval=1, probe_samples=2, probe_limit=1)
    lim.on_sample(0.01, 5)
    assert lim.probing
    restored_after = 0
    while lim.probing:
        lim.on_sample(0.5, 50)  # a caller ignoring the limit
        restored_after += 1
    assert restored_after <= 2 + 6  # probe_samples + the limit it deferred
    assert lim.rtt_noload == pytest.approx(0.01)  # nothing trustworthy measured: kept


def test_window_aggregates_samples() -> None:
    lim = AimdLimit(10, window=4, latency_threshold_factor=None, probe_interval=None)
    for _ in range(3):
        assert lim.on_sample(0.01, 10) == 10
    assert lim.on_sample(0.01, 10) == 11
    for _ in range(3):
        lim.on_sample(0.01, 11)
    assert lim.on_sample(0.01, 11, dropped=False) == 12
    assert lim.samples == 8


def test_history_records_changes() -> None:
    lim = AimdLimit(4, max_limit=6, latency_threshold_factor=None, probe_interval=None)
    for _ in range(5):
        lim.on_sample(0.01, lim.limit)
    assert lim.history == [(0, 4), (1, 5), (2, 6)]
    short = AimdLimit(4, max_limit=100, history_size=3, latency_threshold_factor=None)
    for _ in range(10):
        short.on_sample(0.01, short.limit)
    assert short.history == [(8, 12), (9, 13), (10, 14)]


def test_protocol_and_properties() -> None:
    for lim in (AimdLimit(),):
        assert isinstance(lim, AdaptiveLimit)
        assert lim.limit == 10
        assert (lim.min_limit, lim.max_limit) == (1, 512)
        assert lim.rtt_noload is None
        assert "limit=10" in repr(lim)


@settings(max_examples=100, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.floats(0, 10, allow_nan=False), st.integers(0, 2000), st.booleans()),
        max_size=300,
    ),
    bounds=st.tuples(st.integers(1, 50), st.integers(0, 500)),
)
def test_limit_always_within_bounds(samples: list[tuple[float, int, bool]], bounds: tuple[int, int]) -> None:
    lo, extra = bounds
    lim = AimdLimit(lo, min_limit=lo, max_limit=lo + extra, probe_interval=7)
    for latency, in_flight, dropped in samples:
        assert lo <= lim.on_sample(latency, in_flight, dropped) <= lo + extra
    assert all(lo <= limit <= lo + extra for _, limit in lim.history)


# ------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"initial": 0}, "initial must be >= 1, got 0"),
        ({"initial": 600}, r"initial must be in \[1, 512\], got 600"),
        ({"min_limit": 0}, "min_limit must be >= 1, got 0"),
        ({"min_limit": 8, "max_limit": 4, "initial": 4}, r"max_limit \(4\) must be >= min_limit"),
        ({"backoff": 1.0}, r"backoff must be in \[0.5, 1.0\), got 1.0"),
        ({"backoff": 0.3}, r"backoff must be in \[0.5, 1.0\), got 0.3"),
        ({"increase": 0}, "increase must be >= 1, got 0"),
        ({"latency_threshold_factor": 1.0}, "latency_threshold_factor must be > 1, got 1.0"),
        ({"timeout_s": 0}, "timeout_s must be finite and > 0, got 0"),
        ({"probe_interval": 0}, "probe_interval must be >= 1, got 0"),
        ({"probe_limit": 600}, r"probe_limit must be in \[1, 512\], got 600"),
        ({"window": 0}, "window must be >= 1, got 0"),
        ({"initial": 2.5}, "initial must be an int, got 2.5"),
    ],
)
def test_aimd_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AimdLimit(**kwargs)  # type: ignore[arg-type]


def test_sample_validation() -> None:
    lim = AimdLimit()
    with pytest.raises(ConfigError, match="latency_s must be finite and >= 0, got nan"):
        lim.on_sample(float("nan"), 1)
    with pytest.raises(ConfigError, match="latency_s must be finite and >= 0, got -1"):
        lim.on_sample(-1, 1)
    with pytest.raises(ConfigError, match="in_flight must be >= 0, got -1"):
        lim.on_sample(0.01, -1)
    assert lim.samples == 0
    lim.on_sample(0.0, 10)  # a zero latency is legal and leaves the limit alone
    assert lim.limit >= 10


# ----------------------------------------------------------- integration


def test_limiter_drives_scheduler() -> None:
    """Wire limiter -> scheduler -> store; in flight never exceeds the limits set."""
    store = LatencyStore(0.001, jitter_s=0.001, seed=3)
    limiter = AimdLimit(2, max_limit=8, latency_threshold_factor=None, probe_interval=None)

    async def main() -> FairFetchScheduler:
        sched = FairFetchScheduler(limiter.limit)

        async def fetch(i: int) -> None:
            async with sched.slot("demand"):
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await store.fetch(i)
                sched.set_limit(limiter.on_sample(loop.time() - t0, sched.in_flight))

        await asyncio.gather(*(fetch(i) for i in range(200)))
        return sched

    sched = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert limiter.limit == 8  # no congestion signal: grows to max
    assert store.stats.max_in_flight <= max(limit for _, limit in limiter.history)
    assert sched.stats.peak_in_flight == store.stats.max_in_flight
    assert store.stats.max_in_flight >= 2


def test_limit_moves_up_under_clean_samples_and_down_under_drops() -> None:
    """A limiter that never moves would pass the bounds property above; this one would not."""
    lim = AimdLimit(8, min_limit=1, max_limit=64, probe_interval=None)
    for _ in range(300):
        lim.on_sample(0.001, lim.limit, False)
    up = lim.limit
    assert up > 8
    for _ in range(20):
        lim.on_sample(0.001, lim.limit, True)
    assert lim.limit < up
    assert [limit for _, limit in lim.history][-1] == lim.limit
