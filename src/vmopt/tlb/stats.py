"""Counters a TLB level and an MMU keep, and the ratios derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MmuStats", "PrefetchStats", "TlbStats"]


@dataclass
class TlbStats:
    """Counters of one TLB level.

    ``hits + misses == lookups`` always. ``cycles`` is the modelled lookup
    cost (lookups times the level's latency). Prefetch counters refer to
    entries a prefetcher installed in this level.
    """

    name: str = "tlb"
    lookups: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    cycles: int = 0
    prefetch_fills: int = 0
    prefetch_useful: int = 0
    prefetch_useless: int = 0

    def hit_rate(self) -> float:
        """Hits per lookup as a ratio in [0, 1] (not a percent); 0.0 before any lookup."""
        return self.hits / self.lookups if self.lookups else 0.0

    def miss_rate(self) -> float:
        """Misses per lookup as a ratio in [0, 1]."""
        return self.misses / self.lookups if self.lookups else 0.0

    def avg_latency(self) -> float:
        """Modelled cycles per lookup."""
        return self.cycles / self.lookups if self.lookups else 0.0

    def prefetch_effectiveness(self) -> float:
        """Useful prefetches over resolved ones (useful + useless), a ratio in [0, 1].

        A prefetched entry is useful if a demand lookup hits it before it
        leaves the TLB, useless if it is evicted or invalidated unused.
        Entries still resident and unused count in neither.
        """
        resolved = self.prefetch_useful + self.prefetch_useless
        return self.prefetch_useful / resolved if resolved else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)


@dataclass
class PrefetchStats:
    """What the prefetcher did.

    ``issued`` counts prefetch walks; ``dropped`` those that found no
    mapping (prefetches never fault); ``redundant`` requests skipped because
    the page was already cached; ``useful``/``useless`` as in
    :meth:`TlbStats.prefetch_effectiveness`. ``walk_memory_refs`` are the
    PTE reads of prefetch walks, kept apart from demand walks.
    """

    requested: int = 0
    issued: int = 0
    dropped: int = 0
    redundant: int = 0
    installed: int = 0
    overflowed: int = 0
    useful: int = 0
    useless: int = 0
    walk_memory_refs: int = 0

    def accuracy(self) -> float:
        """Useful over installed, a ratio in [0, 1]."""
        return self.useful / self.installed if self.installed else 0.0


@dataclass
class MmuStats:
    """Whole-MMU counters: translations, walks, faults, shootdowns and cycles.

    ``walks`` counts TLB misses that walked (a walk restarted after a demand
    fault is the same miss); ``demand_faults`` are not-present faults the
    fault handler resolved; ``faults`` counts every fault, resolved or not.
    ``walk_memory_refs`` counts every demand PTE read, restarts included.
    """

    translations: int = 0
    walks: int = 0
    dirty_walks: int = 0
    faults: int = 0
    demand_faults: int = 0
    walk_memory_refs: int = 0
    pwc_lookups: int = 0
    pwc_hits: int = 0
    shootdowns: int = 0
    cycles: int = 0
    prefetch: PrefetchStats = field(default_factory=PrefetchStats)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return asdict(self)
