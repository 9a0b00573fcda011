"""Guest memory dumps: raw, QEMU ELF, kdump (raw and flattened), LiME and AVML.

:func:`open_dump` gives a :class:`Dump` with its vCPU states
(:class:`CpuState`: CR0/CR3/CR4 and the rest), :class:`VmcoreInfo`, and
read-only :attr:`Dump.memory` for :class:`~vmopt.paging.pagetable.PageTable`;
:func:`info_mem` and :func:`info_tlb` list tables exactly as QEMU's monitor
does. Malformed files raise :class:`DumpError` naming the field and value.
"""

from vmopt.dumps.dump import DUMP_FORMATS, LA57, CpuState, Dump, DumpMemory, KernelRoot, VmcoreInfo, open_dump
from vmopt.dumps.errors import DumpError
from vmopt.dumps.monitor import MemLine, MonitorListing, TlbLine, info_mem, info_tlb

__all__ = [
    "DUMP_FORMATS",
    "LA57",
    "CpuState",
    "Dump",
    "DumpError",
    "DumpMemory",
    "KernelRoot",
    "MemLine",
    "MonitorListing",
    "TlbLine",
    "VmcoreInfo",
    "info_mem",
    "info_tlb",
    "open_dump",
]
