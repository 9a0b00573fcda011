"""Backing stores: where store-backed guest pages come from on first touch.

:class:`BackingStore` is the interface; :class:`FileStore` serves a snapshot
file and :class:`LatencyStore` simulates a slow, lossy device for experiments.
"""

from __future__ import annotations

from vmopt.stores.base import DEFAULT_PAGE_SIZE, BackingStore, StoreError
from vmopt.stores.file import FileStore, FileStoreStats
from vmopt.stores.latency import LatencyStore, LatencyStoreStats, PageData

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "BackingStore",
    "FileStore",
    "FileStoreStats",
    "LatencyStore",
    "LatencyStoreStats",
    "PageData",
    "StoreError",
]
