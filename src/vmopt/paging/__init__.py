"""Page tables in real formats (x86-64 4/5-level, RISC-V Sv39/48/57, AArch64 stage 1), run by the core."""

from vmopt.paging.aarch64 import AArch64
from vmopt.paging.format import PagingFormat
from vmopt.paging.pagetable import FORMATS, PageTable, make_format
from vmopt.paging.riscv import RiscV
from vmopt.paging.types import Leaf, Mapping, PageFault, Perm, Translation
from vmopt.paging.x86 import X86_64

__all__ = [
    "FORMATS",
    "X86_64",
    "AArch64",
    "Leaf",
    "Mapping",
    "PageFault",
    "PageTable",
    "PagingFormat",
    "Perm",
    "RiscV",
    "Translation",
    "make_format",
]
