"""TLBs, the page-walk cache, prefetchers and the per-vCPU MMU."""

from vmopt.tlb.config import DEFAULT_TLB, PrefetchConfig, PwcConfig, TlbConfig
from vmopt.tlb.mmu import DEFAULT_TLB_LEVELS, Mmu
from vmopt.tlb.nested import NestedConfig, NestedStats
from vmopt.tlb.stats import MmuStats, PrefetchStats, TlbStats
from vmopt.tlb.tlb import Tlb, TlbEntry, TlbLevel

__all__ = [
    "DEFAULT_TLB",
    "DEFAULT_TLB_LEVELS",
    "Mmu",
    "MmuStats",
    "NestedConfig",
    "NestedStats",
    "PrefetchConfig",
    "PrefetchStats",
    "PwcConfig",
    "Tlb",
    "TlbConfig",
    "TlbEntry",
    "TlbLevel",
    "TlbStats",
]
