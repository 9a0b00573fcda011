"""The design report's names, kept as API: each is defined here, once.

These are the report's vocabulary, not the toolkit's own: they keep code
written against the report working, with the same behaviour.

- :class:`AsyncPrefetchingTlb`: an :class:`~vmopt.Mmu` with a deferred
  next-page prefetcher and a :class:`~vmopt.ConcurrencyConfig`. It is
  neither a TLB nor asynchronous; ``Mmu(pt, prefetch=PrefetchConfig(...))``
  is the toolkit's spelling.
- ``Mmu.translate_batch_concurrent`` and ``PageTable.batch_lookup_concurrent``:
  the report's "concurrent" batches. Resident translations are CPU-bound, so
  they run in order and only yield to the event loop between chunks
  (:meth:`vmopt.MemoryOptimizer.batch_access_concurrent` is the batch that
  really overlaps store fetches).
- ``MemoryOptimizer.with_concurrency`` (the constructor with a concurrency
  setting) and ``MemoryOptimizer.get_stats`` (``node_stats`` as tuples).

The methods are attached to their classes when :mod:`vmopt` is imported
(this module sits above the layers it extends, so they cannot import it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vmopt.batching import Addrs, as_addresses, run_chunked_async
from vmopt.errors import bad_input
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.guest import MemoryOptimizer
from vmopt.numa.config import NumaConfig
from vmopt.paging.pagetable import PageTable
from vmopt.paging.types import Leaf
from vmopt.tlb.config import PrefetchConfig
from vmopt.tlb.mmu import Mmu, TlbSpec

__all__ = [
    "AsyncPrefetchingTlb",
    "batch_lookup_concurrent",
    "get_stats",
    "optimizer_with_concurrency",
    "translate_batch_concurrent",
]


async def translate_batch_concurrent(
    mmu: Mmu, addrs: Addrs, access: str = "r", user: bool = False, errors: str = "raise",
    *, threshold: int = 4, chunk_size: int = 10_000,
) -> Any:  # fmt: skip
    """The report's concurrent batch (``Mmu.translate_batch_concurrent``).

    Resident translations are CPU-bound, so this runs them in order, yielding
    to the event loop between chunks; batches of ``threshold`` or fewer take
    the sequential path.
    """
    values, _ = as_addresses(addrs)
    if len(values) <= threshold:
        return mmu.translate_batch(addrs, access, user, errors)
    return await run_chunked_async(
        lambda va: mmu.translate(va, access, user), addrs, errors, chunk_size=chunk_size
    )


async def batch_lookup_concurrent(
    pt: PageTable, vaddrs: Sequence[int], *, threshold: int = 8, chunk_size: int = 10_000
) -> list[Leaf | None]:
    """The report's concurrent lookup (``PageTable.batch_lookup_concurrent``).

    CPU-bound, so in order, yielding between chunks; batches of ``threshold``
    or fewer take :meth:`PageTable.batch_lookup` directly.
    """
    values = list(vaddrs)
    if len(values) <= threshold:
        return pt.batch_lookup(values)
    out: list[Leaf | None] = []
    for start in range(0, len(values), chunk_size):
        out.extend(pt.batch_lookup(values[start : start + chunk_size]))
        await asyncio.sleep(0)
    return out


def optimizer_with_concurrency(
    cls: type[MemoryOptimizer], /, numa: NumaConfig, concurrency: ConcurrencyConfig, **kwargs: Any
) -> MemoryOptimizer:
    """The report's constructor (``MemoryOptimizer.with_concurrency``): a guest with a concurrency setting."""
    if not isinstance(concurrency, ConcurrencyConfig):
        raise bad_input("MemoryOptimizer.with_concurrency", concurrency=concurrency)
    return cls(numa, concurrency=concurrency, **kwargs)


def get_stats(opt: MemoryOptimizer) -> list[tuple[int, int, float]]:
    """The report's view (``MemoryOptimizer.get_stats``): ``(node, used bytes, percent used)`` per node."""
    return [(s.node, s.used_bytes, s.percent_used) for s in opt.node_stats()]


class AsyncPrefetchingTlb(Mmu):
    """The design report's name: an MMU with a next-page prefetcher in deferred mode.

    Requests queue on misses; :meth:`process_prefetch` installs them.
    ``concurrency`` (a :class:`vmopt.ConcurrencyConfig`) sets how
    :meth:`translate_batch_concurrent` batches: disabled or small batches
    (``tlb_batch_threshold``) go sequentially, large ones in ``chunk_size``
    chunks.
    """

    def __init__(
        self,
        page_table: PageTable,
        tlb: TlbSpec = None,
        prefetch: PrefetchConfig | str | None = None,
        asid: int = 0,
        *,
        concurrency: ConcurrencyConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if prefetch is None:
            prefetch = PrefetchConfig("next_page", degree=1, mode="deferred")
        super().__init__(page_table, tlb, prefetch, asid, **kwargs)
        self.concurrency = (concurrency or ConcurrencyConfig()).validate()

    @classmethod
    def with_concurrency(
        cls, page_table: PageTable, prefetch_enabled: bool, config: ConcurrencyConfig, **kwargs: Any
    ) -> AsyncPrefetchingTlb:
        """The report's constructor: prefetching on or off, and a concurrency setting."""
        if not isinstance(config, ConcurrencyConfig):
            raise bad_input("AsyncPrefetchingTlb.with_concurrency", config=config)
        prefetch = None if prefetch_enabled else PrefetchConfig("none")
        return cls(page_table, prefetch=prefetch, concurrency=config.validate(), **kwargs)

    async def translate_batch_concurrent(
        self, addrs: Addrs, access: str = "r", user: bool = False, errors: str = "raise",
        *, threshold: int | None = None, chunk_size: int | None = None,
    ) -> Any:  # fmt: skip
        """As ``Mmu.translate_batch_concurrent``, with this TLB's concurrency setting."""
        cfg = self.concurrency
        if not cfg.enabled:
            return self.translate_batch(addrs, access, user, errors)
        return await translate_batch_concurrent(
            self, addrs, access, user, errors,
            threshold=cfg.tlb_batch_threshold if threshold is None else threshold,
            chunk_size=cfg.chunk_size if chunk_size is None else chunk_size,
        )  # fmt: skip


def _attach() -> None:
    """Give the classes the report's method names (the functions above, not copies)."""
    setattr(Mmu, "translate_batch_concurrent", translate_batch_concurrent)  # noqa: B010
    setattr(PageTable, "batch_lookup_concurrent", batch_lookup_concurrent)  # noqa: B010
    setattr(MemoryOptimizer, "with_concurrency", classmethod(optimizer_with_concurrency))  # noqa: B010
    setattr(MemoryOptimizer, "get_stats", get_stats)  # noqa: B010


_attach()
