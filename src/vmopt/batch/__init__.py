"""Batch translation's public names.

The loop is :mod:`vmopt.batching`; fetch admission control is :mod:`vmopt.fetching`.
"""

from vmopt.batching import BatchOperationFailed, BatchResult
from vmopt.fetching.concurrency import ConcurrencyConfig

__all__ = ["BatchOperationFailed", "BatchResult", "ConcurrencyConfig"]
