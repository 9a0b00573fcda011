"""QEMU's ``info mem`` and ``info tlb`` over page tables in any memory, line for line as QEMU prints them.

The walks run in the Rust core (``vmopt._core.info_mem``/``info_tlb``), by
QEMU's own rules (see docs/inspect.md): ``info mem`` merges ranges by
user/write rights only, ``info tlb`` prints each leaf with nine flag letters.
Both stop after ``max_tables`` tables or ``max_lines`` lines and say so.
QEMU's 5-level ``info mem`` inverts the present test at the PDPT and PD
levels; ``as_qemu=True`` (the default) follows it, so the text diffs equal,
``as_qemu=False`` walks those levels the way the 4-level listing does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from vmopt import _core
from vmopt.errors import bad_input
from vmopt.memory.physical import PhysicalMemory

__all__ = ["MemLine", "MonitorListing", "TlbLine", "info_mem", "info_tlb"]

_U64 = (1 << 64) - 1
T = TypeVar("T")


class MemLine(NamedTuple):
    """One ``info mem`` line: ``start-end size`` and rights (``u``ser, ``w``rite)."""

    text: str
    start: int
    end: int
    size: int
    user: bool
    write: bool


class TlbLine(NamedTuple):
    """One ``info tlb`` line: the page, the frame QEMU prints (``pte & mask``), the PTE and the page size."""

    text: str
    va: int
    frame: int
    pte: int
    page_size: int


@dataclass(frozen=True, slots=True)
class MonitorListing(Generic[T]):
    """The lines of one listing, and whether a cap stopped it."""

    lines: list[T]
    truncated: bool


def _args(call: str, mem: object, cr3: object, max_tables: object, max_lines: object) -> None:
    ok = isinstance(mem, PhysicalMemory) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _U64
        for v in (cr3, max_tables, max_lines)
    )
    if not ok:
        raise bad_input(call, mem=mem, cr3=cr3, max_tables=max_tables, max_lines=max_lines)


def info_mem(
    mem: PhysicalMemory,
    cr3: int,
    *,
    la57: bool = False,
    as_qemu: bool = True,
    max_tables: int = 1 << 20,
    max_lines: int = 1 << 20,
) -> MonitorListing[MemLine]:
    """``info mem`` of the x86-64 tables at ``cr3`` (5-level if ``la57``; QEMU's quirk if ``as_qemu``)."""
    _args("info_mem", mem, cr3, max_tables, max_lines)
    how = "la48" if not la57 else "la57-qemu" if as_qemu else "la57"
    rows, cut = _core.info_mem(mem.core, cr3, how, max_tables, max_lines)
    return MonitorListing([MemLine(*r) for r in rows], cut)


def info_tlb(
    mem: PhysicalMemory, cr3: int, *, la57: bool = False, max_tables: int = 1 << 20, max_lines: int = 1 << 20
) -> MonitorListing[TlbLine]:
    """``info tlb`` of the x86-64 tables at ``cr3`` (5-level if ``la57``)."""
    _args("info_tlb", mem, cr3, max_tables, max_lines)
    rows, cut = _core.info_tlb(mem.core, cr3, bool(la57), max_tables, max_lines)
    return MonitorListing([TlbLine(*r) for r in rows], cut)
