"""vmopt: the memory system of a virtual machine, modelled for real.

Layers, bottom up: guest physical memory (:mod:`vmopt.memory`), page tables
in real formats (:mod:`vmopt.paging`), TLBs and the per-vCPU MMU
(:mod:`vmopt.tlb`), NUMA placement (:mod:`vmopt.numa`), batch translation
(:mod:`vmopt.batch`), backing stores (:mod:`vmopt.stores`) and the guest
facade over them all (:mod:`vmopt.guest`).
The design report's names live in :mod:`vmopt.compat`.
"""

from vmopt.batch import BatchOperationFailed, BatchResult, ConcurrencyConfig
from vmopt.compat import AsyncPrefetchingTlb
from vmopt.errors import (
    AddressError,
    ConfigError,
    InputError,
    MappingError,
    OutOfFramesError,
    PhysicalAccessError,
    ReadOnlyMemoryError,
    VmoptError,
)
from vmopt.guest import MemoryOptimizer
from vmopt.memory import PhysicalMemory
from vmopt.numa import MemPolicy, NumaConfig, NumaMemory
from vmopt.paging import Mapping, PageFault, PageTable, Perm, Translation
from vmopt.stores import FileStore, LatencyStore, NbdStore, StoreError
from vmopt.tlb import (
    Mmu,
    PrefetchConfig,
    PwcConfig,
    SplitL1,
    Tlb,
    TlbConfig,
    TlbStats,
)

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "AsyncPrefetchingTlb",
    "BatchOperationFailed",
    "BatchResult",
    "ConcurrencyConfig",
    "ConfigError",
    "FileStore",
    "InputError",
    "LatencyStore",
    "Mapping",
    "MappingError",
    "MemPolicy",
    "MemoryOptimizer",
    "Mmu",
    "NbdStore",
    "NumaConfig",
    "NumaMemory",
    "OutOfFramesError",
    "PageFault",
    "PageTable",
    "Perm",
    "PhysicalAccessError",
    "PhysicalMemory",
    "PrefetchConfig",
    "PwcConfig",
    "ReadOnlyMemoryError",
    "SplitL1",
    "StoreError",
    "Tlb",
    "TlbConfig",
    "TlbStats",
    "Translation",
    "VmoptError",
    "__version__",
]
