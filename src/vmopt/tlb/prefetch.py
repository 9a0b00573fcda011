"""TLB prefetchers: which pages to fetch translations for after a demand miss.

A prefetcher only predicts; the MMU walks, drops what is unmapped and
installs what it finds. Predictions are page-aligned virtual addresses.
The predictors run in the Rust core (an :class:`~vmopt.tlb.mmu.Mmu` builds
its own from its :class:`PrefetchConfig`); these classes are standalone
instances of the same code.
"""

from __future__ import annotations

from typing import Protocol

from vmopt import _core
from vmopt.tlb.config import PrefetchConfig

__all__ = ["NextPagePrefetcher", "Prefetcher", "StridePrefetcher", "make_prefetcher"]


class Prefetcher(Protocol):
    """Given a demand miss, the pages worth prefetching."""

    def on_miss(self, va: int, page_size: int) -> list[int]:
        """Called after each demand miss that the walk resolved."""
        ...

    def reset(self) -> None:
        """Forget the history (context switch, flush)."""
        ...


class _CorePrefetcher:
    _kind = ""

    def __init__(self, degree: int) -> None:
        self.degree = degree
        self._core = _core.Prefetcher(self._kind, degree)

    def on_miss(self, va: int, page_size: int) -> list[int]:
        """The pages to prefetch after a demand miss at ``va`` on a page of ``page_size``."""
        out: list[int] = self._core.on_miss(va, page_size)
        return out

    def reset(self) -> None:
        """Forget the history."""
        self._core.reset()


class NextPagePrefetcher(_CorePrefetcher):
    """The design report's prefetcher: the next ``degree`` pages after a miss."""

    _kind = "next_page"


class StridePrefetcher(_CorePrefetcher):
    """Detects a constant stride (in 4 KiB pages) in the miss stream.

    After two consecutive misses with the same non-zero stride, prefetches
    ``degree`` pages ahead along it: a one-entry reference prediction table,
    since a TLB sees no program counter.
    """

    _kind = "stride"

    def history(self) -> tuple[int | None, int]:
        """``(last 4 KiB page number seen or None, last stride)``."""
        state = self._core.history()
        assert state is not None  # a stride prefetcher keeps a history
        return state


def make_prefetcher(config: PrefetchConfig) -> Prefetcher | None:
    """The prefetcher a config names, or None for "none"."""
    if config.kind == "next_page":
        return NextPagePrefetcher(config.degree)
    if config.kind == "stride":
        return StridePrefetcher(config.degree)
    return None
