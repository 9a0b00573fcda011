"""Open a guest memory dump: its format, vCPU states, VMCOREINFO and read-only physical memory.

A thin wrapper over the Rust core's readers (``vmopt._core.Dump``): raw
images, QEMU ``dump-guest-memory`` ELF cores, kdump files (raw or
flattened; zlib, LZO, snappy or zstd pages), LiME and AVML v2. The file is
mapped, never loaded; compressed pages are decompressed on demand.
:attr:`Dump.memory` is a :class:`~vmopt.memory.physical.PhysicalMemory`,
so :meth:`PageTable.attach <vmopt.paging.pagetable.PageTable.attach>` walks
and lists the tables inside a dump as it does any memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from vmopt import _core
from vmopt.errors import ConfigError, bad_input
from vmopt.memory.physical import PhysicalMemory

__all__ = [
    "DUMP_FORMATS",
    "LA57",
    "CpuState",
    "Dump",
    "DumpMemory",
    "KernelRoot",
    "VmcoreInfo",
    "open_dump",
]

log = logging.getLogger(__name__)

#: The readers ``format=`` (and ``vmopt inspect --format``) can force.
DUMP_FORMATS: Final[tuple[str, ...]] = tuple(_core.DUMP_FORMATS)
#: CR4.LA57: 5-level paging.
LA57: Final = 1 << 12


@dataclass(frozen=True, slots=True)
class CpuState:
    """One vCPU's registers as the dump recorded them (QEMU's QEMUCPUState and NT_PRSTATUS)."""

    index: int
    registers: Mapping[str, int]

    def get(self, name: str) -> int | None:
        """The value of register ``name`` (``cr3``, ``rip``, ``cs_base``...), or None."""
        return self.registers.get(name)

    @property
    def cr0(self) -> int | None:
        """CR0, if recorded."""
        return self.registers.get("cr0")

    @property
    def cr3(self) -> int | None:
        """CR3, if recorded."""
        return self.registers.get("cr3")

    @property
    def cr4(self) -> int | None:
        """CR4, if recorded."""
        return self.registers.get("cr4")

    @property
    def la57(self) -> bool:
        """True if CR4.LA57 (bit 12) is set: 5-level paging."""
        return bool((self.cr4 or 0) & LA57)


@dataclass(frozen=True, slots=True)
class VmcoreInfo:
    """The kernel's VMCOREINFO lines (``SYMBOL(swapper_pg_dir)=...``, ``KERNELOFFSET=...``)."""

    entries: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The raw value of ``key``, or None."""
        return next((v for k, v in self.entries if k == key), None)

    def symbol(self, name: str) -> int | None:
        """``SYMBOL(name)``, a hex address, or None."""
        return _hex(self.get(f"SYMBOL({name})"))

    def number(self, name: str) -> int | None:
        """``NUMBER(name)``: decimal, or hex with ``0x``; None if absent or unparsable."""
        v = self.get(f"NUMBER({name})")
        if v is None:
            return None
        try:
            return int(v, 16) if v.startswith("0x") else int(v)
        except ValueError:
            return None

    @property
    def kernel_offset(self) -> int | None:
        """``KERNELOFFSET``, the KASLR slide, or None."""
        return _hex(self.get("KERNELOFFSET"))

    @property
    def pgtable_l5_enabled(self) -> bool | None:
        """``NUMBER(pgtable_l5_enabled)`` as a bool, or None."""
        n = self.number("pgtable_l5_enabled")
        return None if n is None else n != 0


def _hex(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v.removeprefix("0x"), 16)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class KernelRoot:
    """The kernel's top-level page table found from VMCOREINFO, and the arithmetic used."""

    pa: int
    five_level: bool | None
    how: str


class DumpMemory(PhysicalMemory):
    """The read-only guest-physical memory of a dump; holes between its ranges are outside memory."""

    def __init__(self, core: _core.PhysMem, ranges: list[tuple[int, int]]) -> None:
        self._attach(core)
        self.ranges: tuple[tuple[int, int], ...] = tuple(ranges)
        """The covered physical ranges ``(start, end)``, sorted."""

    def contains(self, pa: int, n: int = 1) -> bool:
        """True if every byte of ``[pa, pa+n)`` is in one of the dump's ranges."""
        if not (isinstance(pa, int) and isinstance(n, int)):
            raise bad_input("contains", pa=pa, n=n)
        return any(s <= pa and pa + n <= e for s, e in self.ranges)


class Dump:
    """An opened dump. ``format=None`` detects the reader by magic (anything else is a raw image)."""

    def __init__(self, path: str | os.PathLike[str], format: str | None = None) -> None:
        if not isinstance(path, str | os.PathLike):
            raise bad_input("Dump", path=path)
        if format is not None and format not in DUMP_FORMATS:
            raise ConfigError(f"unknown dump format {format!r}; expected one of {', '.join(DUMP_FORMATS)}")
        self.path: str = os.fspath(path)
        if not isinstance(self.path, str):
            raise bad_input("Dump", path=path)
        core = _core.Dump.open(self.path, format)
        self.core = core
        self.format: str = core.format
        self.machine: str | None = core.machine
        self.cpus: tuple[CpuState, ...] = tuple(
            CpuState(i, MappingProxyType(dict(regs))) for i, regs in enumerate(core.cpus)
        )
        info = core.vmcoreinfo
        self.vmcoreinfo: VmcoreInfo | None = None if info is None else VmcoreInfo(tuple(info))
        self.virtual_segments: tuple[tuple[int, int, int], ...] = tuple(core.virtual_segments)
        self.kdump: dict[str, int] | None = core.kdump
        self.phys_base: int | None = core.phys_base
        self.memory = DumpMemory(core.memory, core.ranges())
        log.debug("opened %s as %s: %d vCPU(s)", self.path, self.format, len(self.cpus))

    def __repr__(self) -> str:
        return f"Dump({self.path!r}, {self.format}, {len(self.cpus)} vCPU(s))"

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the mapping once nothing built on :attr:`memory` still holds it."""
        self.memory.close()

    def ranges(self) -> list[tuple[int, int]]:
        """The covered physical ranges ``(start, end)``."""
        return list(self.core.ranges())

    def kernel_root(self) -> KernelRoot:
        """The kernel's root table from VMCOREINFO's ``SYMBOL(swapper_pg_dir)`` (see docs/inspect.md)."""
        pa, five, how = self.core.kernel_root()
        return KernelRoot(pa, five, how)


def open_dump(path: str | os.PathLike[str], format: str | None = None) -> Dump:
    """Open the dump at ``path`` (``format``: one of :data:`DUMP_FORMATS`, or None to detect)."""
    return Dump(path, format)
