"""Backing stores: where store-backed guest pages come from on first touch.

:class:`BackingStore` is the interface; :class:`FileStore` serves a snapshot
file, :class:`NbdStore` an NBD export (nbdkit, qemu-nbd) over the network,
and :class:`LatencyStore` simulates a slow, lossy device for experiments.
"""

from __future__ import annotations

from vmopt.stores.base import DEFAULT_PAGE_SIZE, BackingStore, StoreError
from vmopt.stores.file import FileStore, FileStoreStats
from vmopt.stores.latency import LatencyStore, LatencyStoreStats, PageData
from vmopt.stores.nbd import NbdStore, NbdStoreStats
from vmopt.stores.nbd_proto import NbdError, parse_nbd_uri

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "BackingStore",
    "FileStore",
    "FileStoreStats",
    "LatencyStore",
    "LatencyStoreStats",
    "NbdError",
    "NbdStore",
    "NbdStoreStats",
    "PageData",
    "StoreError",
    "parse_nbd_uri",
]
