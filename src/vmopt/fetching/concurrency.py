"""Concurrency settings for batch operations over store-backed memory.

A Python rendering of the design report's ``ConcurrencyConfig`` struct: how
many page fetches a batch may overlap, when a batch is large enough to be
worth splitting, and whether a latency-driven limit moves the cap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Self

from vmopt.errors import ConfigError

__all__ = ["MAX_CONCURRENT_WARN", "ConcurrencyConfig"]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_WARN = 512
"""Above this many concurrent fetches a warning is logged (legal, but unusual)."""

_INT_FIELDS = (
    "max_concurrent",
    "tlb_batch_threshold",
    "chunk_size",
    "demand_weight",
)
_BOOL_FIELDS = ("enabled", "adaptive")


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """How batches overlap store fetches. Validated on construction.

    ``max_concurrent`` caps fetches in flight; ``enabled=False`` runs batches
    sequentially. Batches of ``tlb_batch_threshold`` or fewer addresses skip
    the concurrent path, whose overhead they would not repay; large batches
    are processed in chunks of ``chunk_size``. ``demand_weight`` is the
    weight of demand fetches in the :class:`FairFetchScheduler`, and
    ``adaptive`` lets a latency-driven limiter move the cap at run time within
    ``[1, max_concurrent]``.
    """

    max_concurrent: int = 8
    enabled: bool = True
    tlb_batch_threshold: int = 4
    chunk_size: int = 10_000
    demand_weight: int = 4
    adaptive: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def sequential(cls) -> Self:
        """A configuration that runs everything one fetch at a time."""
        return cls(enabled=False, max_concurrent=1)

    def validate(self) -> Self:
        """Check every field; raise :class:`ConfigError` naming the bad one.

        Returns ``self`` so calls can be chained. A ``max_concurrent`` above
        :data:`MAX_CONCURRENT_WARN` is allowed but logs a warning: that many
        overlapping fetches usually means a misconfiguration.
        """
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an int, got {value!r}", field=name)
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}", field=name)
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be a bool, got {value!r}", field=name)
        if self.max_concurrent > MAX_CONCURRENT_WARN:
            logger.warning(
                "max_concurrent=%d is above %d; that many overlapping fetches is unusual",
                self.max_concurrent,
                MAX_CONCURRENT_WARN,
            )
        return self

    @property
    def effective_concurrency(self) -> int:
        """Fetches a batch may really overlap: ``max_concurrent``, or 1 if disabled."""
        return self.max_concurrent if self.enabled else 1

    @property
    def weights(self) -> dict[str, int]:
        """Per-class weights in the form ``FairFetchScheduler`` takes."""
        return {"demand": self.demand_weight}
