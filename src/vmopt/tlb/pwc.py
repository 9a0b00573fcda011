"""Page-walk cache: recently used non-leaf PTEs, per upper level.

The walk itself always reads the real tables (so it stays exact); the PWC
decides how many of those reads a hardware walker would have skipped. That
is sound because the PWC is flushed whenever its ASID's tables change
(shootdown or explicit invalidation), so a PWC hit always holds the value
memory holds. The cache lives in the Rust core: standalone here, or as a
view of an :class:`~vmopt.tlb.mmu.Mmu`'s own (``Mmu.pwc``).
"""

from __future__ import annotations

from typing import Any

from vmopt import _core
from vmopt.tlb.config import PwcConfig

__all__ = ["PageWalkCache"]


class PageWalkCache:
    """Per level (1 .. top), an LRU set of ``(asid, va prefix)`` tags."""

    def __init__(self, config: PwcConfig, levels: int) -> None:
        self._setup(_core.PageWalkCache(config.entries, config.latency, levels), config, levels)

    @classmethod
    def from_core(cls, core: Any, config: PwcConfig, levels: int) -> PageWalkCache:
        """A wrapper of an existing core cache (an :class:`~vmopt.tlb.mmu.Mmu`'s), sharing its state."""
        pwc = cls.__new__(cls)
        pwc._setup(core, config, levels)
        return pwc

    def _setup(self, core: Any, config: PwcConfig, levels: int) -> None:
        self._core = core
        self.config = config
        self.levels = levels

    @property
    def lookups(self) -> int:
        """Lookups since the cache was built (``reset_stats`` leaves it)."""
        n: int = self._core.counters()[0]
        return n

    @property
    def hits(self) -> int:
        """Lookups that let the walker skip reads."""
        n: int = self._core.counters()[1]
        return n

    def skipped_refs(self, va: int, asid: int, stop_level: int) -> int:
        """Table reads a walk of ``va`` ending at ``stop_level`` can skip, then fill.

        The deepest cached non-leaf entry at level k > ``stop_level`` lets the
        walker start at level k-1, skipping the reads of levels top..k.
        """
        n: int = self._core.skipped_refs(va, asid, stop_level)
        return n

    def flush(self, asid: int | None = None) -> None:
        """Drop every entry (of one ASID, or all)."""
        self._core.flush(asid)

    def order(self, level: int) -> list[tuple[int, int]]:
        """Level ``level``'s ``(asid, prefix)`` tags, least recently used first."""
        tags: list[tuple[int, int]] = self._core.order(level)
        return tags
