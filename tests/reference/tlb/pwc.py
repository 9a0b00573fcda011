"""Page-walk cache: recently used non-leaf PTEs, per upper level.

The walk itself always reads the real tables (so it stays exact); the PWC
decides how many of those reads a hardware walker would have skipped. That
is sound because the PWC is flushed whenever its ASID's tables change
(shootdown or explicit invalidation), so a PWC hit always holds the value
memory holds.
"""

from __future__ import annotations

from collections import OrderedDict

from vmopt.tlb.config import PwcConfig

__all__ = ["PageWalkCache"]


class PageWalkCache:
    """Per level (1 .. top), an LRU set of ``(asid, va prefix)`` tags."""

    def __init__(self, config: PwcConfig, levels: int) -> None:
        self.config = config
        self.levels = levels
        self._caches: dict[int, OrderedDict[tuple[int, int], None]] = {
            lvl: OrderedDict() for lvl in range(1, levels)
        }
        self.lookups = 0
        self.hits = 0

    def skipped_refs(self, va: int, asid: int, stop_level: int) -> int:
        """Table reads a walk of ``va`` ending at ``stop_level`` can skip, then fill.

        The deepest cached non-leaf entry at level k > ``stop_level`` lets the
        walker start at level k-1, skipping the reads of levels top..k.
        """
        top = self.levels - 1
        self.lookups += 1
        skip = 0
        for k in range(stop_level + 1, top + 1):
            cache = self._caches[k]
            tag = (asid, va >> (12 + 9 * k))
            if tag in cache:
                cache.move_to_end(tag)
                skip = top - k + 1
                break
        if skip:
            self.hits += 1
        for k in range(stop_level + 1, top + 1):
            cache = self._caches[k]
            tag = (asid, va >> (12 + 9 * k))
            cache[tag] = None
            cache.move_to_end(tag)
            if len(cache) > self.config.entries:
                cache.popitem(last=False)
        return skip

    def flush(self, asid: int | None = None) -> None:
        """Drop every entry (of one ASID, or all)."""
        for cache in self._caches.values():
            if asid is None:
                cache.clear()
            else:
                for tag in [t for t in cache if t[0] == asid]:
                    del cache[tag]
