"""Batch translation: sequential, concurrent (asyncio) and array (the Rust core's loop) paths."""

from vmopt.batch.concurrency import ConcurrencyConfig
from vmopt.batching import BatchOperationFailed, BatchResult

__all__ = ["BatchOperationFailed", "BatchResult", "ConcurrencyConfig"]
