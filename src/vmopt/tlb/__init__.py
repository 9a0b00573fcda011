"""TLBs, the page-walk cache, prefetchers and the per-vCPU MMU."""

from vmopt.tlb.config import (
    DEFAULT_SPLIT_TLB_LEVELS,
    DEFAULT_TLB,
    PrefetchConfig,
    PwcConfig,
    SplitL1,
    TlbConfig,
)
from vmopt.tlb.mmu import DEFAULT_TLB_LEVELS, Mmu
from vmopt.tlb.nested import NestedConfig, NestedStats
from vmopt.tlb.stats import MmuStats, PrefetchStats, TlbStats
from vmopt.tlb.tlb import Tlb, TlbEntry, TlbLevel

__all__ = [
    "DEFAULT_SPLIT_TLB_LEVELS",
    "DEFAULT_TLB",
    "DEFAULT_TLB_LEVELS",
    "Mmu",
    "MmuStats",
    "NestedConfig",
    "NestedStats",
    "PrefetchConfig",
    "PrefetchStats",
    "PwcConfig",
    "SplitL1",
    "Tlb",
    "TlbConfig",
    "TlbEntry",
    "TlbLevel",
    "TlbStats",
]
