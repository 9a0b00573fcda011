"""Tests of ConcurrencyConfig: defaults, presets, validation, warnings."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from vmopt.batch.concurrency import MAX_CONCURRENT_WARN, ConcurrencyConfig
from vmopt.batch.scheduler import FairFetchScheduler
from vmopt.errors import AddressError, ConfigError

LOGGER = "vmopt.batch.concurrency"


def test_defaults() -> None:
    cfg = ConcurrencyConfig()
    assert cfg.max_concurrent == 8
    assert cfg.enabled is True
    assert cfg.tlb_batch_threshold == 4
    assert cfg.lookup_batch_threshold == 8
    assert cfg.chunk_size == 10_000
    assert cfg.prefetch_weight == 1
    assert cfg.demand_weight == 4
    assert cfg.adaptive is False
    assert cfg.effective_concurrency == 8
    assert cfg.weights == {"demand": 4, "prefetch": 1}


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
        ({"lookup_batch_threshold": -1}, "lookup_batch_threshold must be >= 1, got -1"),
        ({"lookup_batch_threshold": "8"}, "lookup_batch_threshold must be an int, got '8'"),
        ({"chunk_size": 0}, "chunk_size must be >= 1, got 0"),
        ({"prefetch_weight": 0}, "prefetch_weight must be >= 1, got 0"),
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
    cfg = ConcurrencyConfig(max_concurrent=6, demand_weight=3, prefetch_weight=2)
    sched = FairFetchScheduler(cfg.effective_concurrency, cfg.weights)
    assert sched.limit == 6
    assert sched.weights == {"demand": 3, "prefetch": 2}
