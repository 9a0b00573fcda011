"""Tests of ConcurrencyConfig: defaults, presets, validation, warnings."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from vmopt.errors import AddressError, ConfigError
from vmopt.fetching.concurrency import MAX_CONCURRENT_WARN, ConcurrencyConfig
from vmopt.fetching.loader import PageLoader
from vmopt.fetching.scheduler import FairFetchScheduler
from vmopt.stores.base import StoreError

LOGGER = "vmopt.fetching.concurrency"


def test_defaults() -> None:
    cfg = ConcurrencyConfig()
    assert cfg.max_concurrent == 8
    assert cfg.enabled is True
    assert cfg.tlb_batch_threshold == 4
    assert cfg.chunk_size == 10_000
    assert cfg.demand_weight == 4
    assert cfg.adaptive is False
    assert cfg.effective_concurrency == 8
    assert cfg.weights == {"demand": 4}
    assert not hasattr(cfg, "lookup_batch_threshold") and not hasattr(cfg, "prefetch_weight")


def test_sequential() -> None:
    cfg = ConcurrencyConfig.sequential()
    assert cfg.enabled is False
    assert cfg.max_concurrent == 1
    assert cfg.effective_concurrency == 1
    assert cfg == ConcurrencyConfig(enabled=False, max_concurrent=1)


def test_disabled_means_one_at_a_time() -> None:
    assert ConcurrencyConfig(enabled=False, max_concurrent=16).effective_concurrency == 1


def test_frozen_and_hashable() -> None:
    cfg = ConcurrencyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_concurrent = 4  # type: ignore[misc]
    assert hash(cfg) == hash(ConcurrencyConfig())


def test_validate_returns_self() -> None:
    cfg = ConcurrencyConfig(max_concurrent=3)
    assert cfg.validate() is cfg


def test_max_concurrent_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^max_concurrent must be >= 1, got 0$") as info:
        ConcurrencyConfig(max_concurrent=0)
    assert not isinstance(info.value, AddressError)
    assert isinstance(info.value, ValueError)


def test_replace_revalidates() -> None:
    with pytest.raises(ConfigError, match="chunk_size must be >= 1, got 0"):
        dataclasses.replace(ConcurrencyConfig(), chunk_size=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_concurrent": -3}, "max_concurrent must be >= 1, got -3"),
        ({"max_concurrent": 2.0}, "max_concurrent must be an int, got 2.0"),
        ({"max_concurrent": True}, "max_concurrent must be an int, got True"),
        ({"tlb_batch_threshold": 0}, "tlb_batch_threshold must be >= 1, got 0"),
        ({"tlb_batch_threshold": "8"}, "tlb_batch_threshold must be an int, got '8'"),
        ({"chunk_size": 0}, "chunk_size must be >= 1, got 0"),
        ({"demand_weight": 0}, "demand_weight must be >= 1, got 0"),
        ({"demand_weight": None}, "demand_weight must be an int, got None"),
        ({"enabled": 1}, "enabled must be a bool, got 1"),
        ({"adaptive": "yes"}, "adaptive must be a bool, got 'yes'"),
    ],
)
def test_field_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ConcurrencyConfig(**kwargs)


def test_large_max_concurrent_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg = ConcurrencyConfig(max_concurrent=MAX_CONCURRENT_WARN + 1)
    assert cfg.max_concurrent == 513
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "max_concurrent=513" in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cfg.validate()  # the public method warns too
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1


def test_limit_itself_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ConcurrencyConfig(max_concurrent=MAX_CONCURRENT_WARN)
        ConcurrencyConfig()
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_feeds_the_scheduler() -> None:
    cfg = ConcurrencyConfig(max_concurrent=6, demand_weight=3)
    sched = FairFetchScheduler(cfg.effective_concurrency, cfg.weights)
    assert sched.limit == 6
    assert sched.weights == {"demand": 3}


def test_page_loader_caps_loads_in_flight_and_joins_pages() -> None:
    """Loads beyond max_concurrent wait for a slot; each returns its pages in order."""
    loader = PageLoader(ConcurrencyConfig(max_concurrent=2))
    gate = asyncio.Event()
    in_flight = peak = 0

    async def fetch(page: int) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        return bytes([page])

    async def main() -> list[bytes]:
        tasks = [asyncio.ensure_future(loader.load(fetch, 10 * i, 3)) for i in range(5)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert loader.scheduler.in_flight == 2 and loader.scheduler.waiting == 3
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == [bytes([10 * i, 10 * i + 1, 10 * i + 2]) for i in range(5)]
    assert peak == 2
    assert loader.history is None


def test_adaptive_page_loader_feeds_its_limiter_the_injected_clock() -> None:
    ticks = iter(range(1000))
    loader = PageLoader(ConcurrencyConfig(max_concurrent=8, adaptive=True), clock=lambda: next(ticks) * 0.001)
    assert loader.scheduler.limit == 4

    async def fetch(page: int) -> bytes:
        return b"x"

    async def main() -> None:
        for i in range(20):
            await loader.load(fetch, i, 1)

    asyncio.run(main())
    assert loader.limiter is not None and loader.limiter.samples == 20
    assert loader.history is not None and loader.history[0] == (0, 4)


def test_page_loader_start_runs_a_batch_through_max_concurrent_workers_in_order() -> None:
    """start(): loads begin in the order given, at most max_concurrent at once, one future each;
    a failing run fails its own future only, and a future cancelled before its turn is skipped."""
    loader = PageLoader(ConcurrencyConfig(max_concurrent=3))
    gates = [asyncio.Event() for _ in range(8)]
    started: list[int] = []
    in_flight = peak = 0

    async def fetch(page: int) -> bytes:
        nonlocal in_flight, peak
        started.append(page)
        in_flight += 1
        peak = max(peak, in_flight)
        await gates[page // 10].wait()
        in_flight -= 1
        if page == 30:
            raise StoreError("gone", page_index=page)
        return bytes([page])

    async def main() -> list[asyncio.Future[bytes]]:
        futures = loader.start([(fetch, 10 * i, 1) for i in range(8)])
        futures[6].cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert started == [0, 10, 20] and loader.scheduler.waiting == 0
        for i in (2, 0, 1, 3, 4, 5, 7):  # out of order: workers take the next run as they free
            gates[i].set()
            await asyncio.wait([futures[i]])
        await loader.stop()
        return futures

    futures = asyncio.run(main())
    assert started == [0, 10, 20, 30, 40, 50, 70] and peak == 3
    done = [f.result() for k, f in enumerate(futures) if k not in (3, 6)]
    assert done == [bytes([10 * k]) for k in (0, 1, 2, 4, 5, 7)]
    assert isinstance(futures[3].exception(), StoreError) and futures[6].cancelled()


def test_page_loader_stop_cancels_the_runs_not_yet_done() -> None:
    loader = PageLoader(ConcurrencyConfig(max_concurrent=2))
    never = asyncio.Event()

    async def fetch(page: int) -> bytes:
        await never.wait()
        return b""

    async def main() -> list[asyncio.Future[bytes]]:
        futures = loader.start([(fetch, i, 1) for i in range(5)])
        await asyncio.sleep(0)
        await loader.stop()
        assert loader.scheduler.in_flight == 0
        return futures

    futures = asyncio.run(main())
    assert all(f.cancelled() for f in futures)
