"""Admission control for asynchronous page fetches, generic over the fetch function.

:class:`ConcurrencyConfig` (how many fetches a batch may overlap), the
adaptive limits, the weighted-fair :class:`FairFetchScheduler` and the
:class:`PageLoader` that combines them. Nothing here knows the guest: the
caller passes callables.
"""

from vmopt.fetching.concurrency import MAX_CONCURRENT_WARN, ConcurrencyConfig
from vmopt.fetching.limiter import AdaptiveLimit, AimdLimit
from vmopt.fetching.loader import PageLoader
from vmopt.fetching.scheduler import DEFAULT_WEIGHTS, FairFetchScheduler, SchedulerStats

__all__ = [
    "DEFAULT_WEIGHTS",
    "MAX_CONCURRENT_WARN",
    "AdaptiveLimit",
    "AimdLimit",
    "ConcurrencyConfig",
    "FairFetchScheduler",
    "PageLoader",
    "SchedulerStats",
]
