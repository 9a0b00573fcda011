"""Parsers for QEMU's x86-64 HMP output: ``info registers``, ``info mem``, ``info tlb``, ``gva2gpa``.

Test-only and independent of vmopt. The formats are QEMU's ``target/i386``
monitor printers (QEMU 7.2); what they do that a reader must know:

- ``info mem`` walks the *raw* (non sign-extended) address space 0..2^48
  (2^57 with LA57) and merges virtually adjacent pages with equal
  ``user``/``write`` rights, ANDed over every level; physical contiguity,
  NX, global and page size do not split a range. Addresses are printed
  sign-extended, so a range that reaches the top of the address space is
  flushed with an end of exactly ``1 << va_bits`` (printed unextended,
  ``0001000000000000``): :func:`parse_info_mem` reads that end as 2^64.
  Its size column is printed sign-extended too.
- ``info tlb`` prints every leaf with the *leaf's own* U/W bits (not the
  effective ones), its address masked to bits 49:12 (49:21 for 2 MiB,
  49:30 for 1 GiB), and a 4 KiB leaf's bit 7 (PAT) shown cleared.
- ``gva2gpa ADDR`` answers ``gpa: 0x...`` (``gpa: 0`` for address 0: C's
  ``%#x`` prints no ``0x`` for zero) or ``Unmapped`` (non-canonical
  addresses are ``Unmapped``); the capture script saves one
  ``ADDRESS<TAB>answer`` line per address asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CpuRegisters",
    "MemRange",
    "TlbEntry",
    "parse_gva2gpa",
    "parse_info_mem",
    "parse_info_registers",
    "parse_info_tlb",
]

_U64 = (1 << 64) - 1
#: CR4.LA57: 57-bit linear addresses, 5-level paging.
CR4_LA57 = 1 << 12


@dataclass(frozen=True, slots=True)
class CpuRegisters:
    """The control registers of one vCPU from ``info registers``."""

    index: int
    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def la57(self) -> bool:
        """CR4 bit 12: the vCPU runs 5-level paging."""
        return bool(self.cr4 & CR4_LA57)


@dataclass(frozen=True, slots=True)
class MemRange:
    """One ``info mem`` line: [start, end) with its effective rights (end may be 2^64)."""

    start: int
    end: int
    user: bool
    write: bool


@dataclass(frozen=True, slots=True)
class TlbEntry:
    """One ``info tlb`` line: a leaf at ``va`` with the leaf PTE's address field and flags."""

    va: int
    pa: int
    nx: bool
    global_: bool
    pse: bool
    dirty: bool
    accessed: bool
    pcd: bool
    pwt: bool
    user: bool
    write: bool


_CPU_HEADER = re.compile(r"^CPU#(\d+)\s*$", re.M)
_REG = {name: re.compile(rf"(?<![A-Z0-9]){name}=([0-9a-f]+)") for name in ("CR0", "CR3", "CR4", "EFER")}


def parse_info_registers(text: str) -> list[CpuRegisters]:
    """Every vCPU of ``info registers -a`` (one ``CPU#N`` block each), in index order."""
    heads = list(_CPU_HEADER.finditer(text))
    if not heads:
        raise ValueError("no 'CPU#N' block in the info registers text")
    cpus = []
    for i, head in enumerate(heads):
        block = text[head.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        values = {}
        for name, pattern in _REG.items():
            found = pattern.findall(block)
            if len(found) != 1:
                raise ValueError(f"CPU#{head[1]}: expected one {name}= field, found {len(found)}")
            values[name.lower()] = int(found[0], 16)
        cpus.append(CpuRegisters(int(head[1]), **values))
    if [c.index for c in cpus] != list(range(len(cpus))):
        raise ValueError(f"CPU blocks out of order: {[c.index for c in cpus]}")
    return cpus


_MEM_LINE = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) ([-u])r([-w])")


def _canonical(raw: int, va_bits: int) -> int:
    """Sign-extend a ``va_bits``-bit address (QEMU's addr_canonical)."""
    if raw & (1 << (va_bits - 1)):
        raw |= _U64 ^ ((1 << va_bits) - 1)
    return raw


def parse_info_mem(text: str, va_bits: int) -> list[MemRange]:
    """The ranges of ``info mem`` in order, each end made exclusive and unwrapped (see module doc)."""
    out: list[MemRange] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MEM_LINE.fullmatch(line.strip())
        if m is None:
            raise ValueError(f"info mem line {lineno}: unexpected {line!r}")
        start, end, size = (int(m[i], 16) for i in (1, 2, 3))
        if end == 1 << va_bits:  # the final flush at the top of the raw address space
            end = 1 << 64
        raw_len = (end - start) & ((1 << va_bits) - 1) if end != 1 << 64 else (1 << 64) - start
        if size != _canonical(raw_len, va_bits):
            raise ValueError(f"info mem line {lineno}: size {size:#x} is not end - start in {line!r}")
        if end <= start:
            raise ValueError(f"info mem line {lineno}: range crosses the canonical hole: {line!r}")
        if out and start < out[-1].end:
            raise ValueError(f"info mem line {lineno}: ranges out of order at {line!r}")
        out.append(MemRange(start, end, m[4] == "u", m[5] == "w"))
    return out


_TLB_LINE = re.compile(
    r"([0-9a-f]{16}): ([0-9a-f]{16}) ([-X])([-G])([-P])([-D])([-A])([-C])([-T])([-U])([-W])"
)


def parse_info_tlb(text: str) -> list[TlbEntry]:
    """Every leaf line of ``info tlb``, in the order QEMU walked them."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _TLB_LINE.fullmatch(line.strip())
        if m is None:
            raise ValueError(f"info tlb line {lineno}: unexpected {line!r}")
        flags = [m[i] != "-" for i in range(3, 12)]
        out.append(TlbEntry(int(m[1], 16), int(m[2], 16), *flags))
    return out


_GVA_LINE = re.compile(r"([0-9a-f]{16})\t(?:gpa: (0x[0-9a-f]+|0)|(Unmapped))")


def parse_gva2gpa(text: str) -> list[tuple[int, int | None]]:
    """``(va, pa)`` per saved ``gva2gpa`` answer; ``pa`` is None for ``Unmapped``."""
    out: list[tuple[int, int | None]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _GVA_LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"gva2gpa line {lineno}: unexpected {line!r}")
        out.append((int(m[1], 16), None if m[3] else int(m[2], 16)))
    return out
