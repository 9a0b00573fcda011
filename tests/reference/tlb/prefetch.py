"""TLB prefetchers: which pages to fetch translations for after a demand miss.

A prefetcher only predicts; the MMU walks, drops what is unmapped and
installs what it finds. Predictions are page-aligned virtual addresses.
"""

from __future__ import annotations

from typing import Protocol

from vmopt.tlb.config import PrefetchConfig

__all__ = ["NextPagePrefetcher", "Prefetcher", "StridePrefetcher", "make_prefetcher"]

_VA_LIMIT = 1 << 64


class Prefetcher(Protocol):
    """Given a demand miss, the pages worth prefetching."""

    def on_miss(self, va: int, page_size: int) -> list[int]:
        """Called after each demand miss that the walk resolved."""
        ...

    def reset(self) -> None:
        """Forget the history (context switch, flush)."""
        ...


class NextPagePrefetcher:
    """The design report's prefetcher: the next ``degree`` pages after a miss."""

    def __init__(self, degree: int) -> None:
        self.degree = degree

    def on_miss(self, va: int, page_size: int) -> list[int]:
        base = va & ~(page_size - 1)
        out = []
        for k in range(1, self.degree + 1):
            target = base + k * page_size
            if target < _VA_LIMIT:
                out.append(target)
        return out

    def reset(self) -> None:
        pass


class StridePrefetcher:
    """Detects a constant stride (in 4 KiB pages) in the miss stream.

    After two consecutive misses with the same non-zero stride, prefetches
    ``degree`` pages ahead along it: a one-entry reference prediction table,
    since a TLB sees no program counter.
    """

    def __init__(self, degree: int) -> None:
        self.degree = degree
        self._last_vpn: int | None = None
        self._stride = 0

    def on_miss(self, va: int, page_size: int) -> list[int]:
        vpn = va >> 12
        out: list[int] = []
        if self._last_vpn is not None:
            stride = vpn - self._last_vpn
            if stride and stride == self._stride:
                for k in range(1, self.degree + 1):
                    target = (vpn + k * stride) << 12
                    if 0 <= target < _VA_LIMIT:
                        out.append(target)
            self._stride = stride
        self._last_vpn = vpn
        return out

    def reset(self) -> None:
        self._last_vpn = None
        self._stride = 0


def make_prefetcher(config: PrefetchConfig) -> Prefetcher | None:
    """The prefetcher a config names, or None for "none"."""
    if config.kind == "next_page":
        return NextPagePrefetcher(config.degree)
    if config.kind == "stride":
        return StridePrefetcher(config.degree)
    return None
