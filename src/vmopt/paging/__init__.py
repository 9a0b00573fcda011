"""Page tables in real formats: x86-64 (4/5-level), RISC-V Sv39/Sv48/Sv57, AArch64 stage 1, and
the host formats EPT, NPT, the RISC-V G-stage and AArch64 stage 2 with two-stage walks over them,
run by the Rust core."""

from vmopt.paging.aarch64 import AArch64
from vmopt.paging.format import PagingFormat
from vmopt.paging.guestmem import GuestMemory
from vmopt.paging.hostfmt import AArch64Stage2, Ept, GStage, Npt
from vmopt.paging.pagetable import FORMATS, PageTable, make_format
from vmopt.paging.riscv import RiscV
from vmopt.paging.twostage import HOST_FORMATS, TwoStage, back_guest_memory
from vmopt.paging.types import Leaf, Mapping, NestedTranslation, PageFault, Perm, Translation
from vmopt.paging.x86 import X86_64

__all__ = [
    "FORMATS",
    "HOST_FORMATS",
    "X86_64",
    "AArch64",
    "AArch64Stage2",
    "Ept",
    "GStage",
    "GuestMemory",
    "Leaf",
    "Mapping",
    "NestedTranslation",
    "Npt",
    "PageFault",
    "PageTable",
    "PagingFormat",
    "Perm",
    "RiscV",
    "Translation",
    "TwoStage",
    "back_guest_memory",
    "make_format",
]
