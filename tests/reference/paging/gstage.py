"""The RISC-V G-stage, Sv39x4 and Sv48x4 (privileged spec, hypervisor extension, "Two-Stage
Address Translation"), the executable specification.

Written from the spec's text, not from the core:

- hgatp.MODE 8 (Sv39x4) or 9 (Sv48x4): the guest-physical address is 41 or
  50 bits wide, "zero-extended"; any higher bit set raises a guest-page
  fault before any table is read.
- The root table is 16 KiB and must be 16 KiB aligned: VPN[LEVELS-1] is two
  bits wider than in Sv39/Sv48 (GPA[40:30] or GPA[49:39]), 2048 entries.
- "All memory accesses [of G-stage translation] are considered to be
  user-level accesses as though executed in U-mode": a leaf must have U,
  whatever the guest's privilege; sstatus.SUM and MXR do not apply.
- Otherwise the PTEs and the walk are those of Sv39/Sv48 (the spec's
  algorithm with LEVELS 3 or 4): reserved bits, W without R, misaligned
  superpages and the A/D rules are the same; G is not used (written 0).
"""

from __future__ import annotations

from typing import Final

from reference.memory.physical import PhysicalMemory
from reference.paging.riscv import _PPN_MASK, _RSVD, A, D, G, R, RiscV, U, V, W, X
from vmopt.errors import ConfigError
from vmopt.paging.types import PageFault, Perm, Translation

__all__ = ["GStage"]

_NONLEAF_RSVD: Final = _RSVD | A | D | U
ROOT_ENTRIES: Final = 2048


class GStage(RiscV):
    """Sv39x4 (``levels=3``) or Sv48x4 (``levels=4``)."""

    #: Bytes of the root table (and its alignment).
    root_bytes = 16 << 10

    def __init__(self, levels: int = 3, *, svade: bool = False) -> None:
        if levels not in (3, 4):
            raise ConfigError(f"the RISC-V G-stage here is Sv39x4 (3 levels) or Sv48x4 (4), got {levels!r}")
        super().__init__(levels, svade=svade)
        self.name = {3: "sv39x4", 4: "sv48x4"}[levels]
        self.va_bits = 12 + 9 * levels + 2

    def __repr__(self) -> str:
        return f"GStage({self.name})"

    # -- geometry -----------------------------------------------------------------

    def index(self, va: int, level: int) -> int:  # type: ignore[override]
        """VPN[level]; the root's is 11 bits."""
        width = 0x7FF if level == self.levels - 1 else 0x1FF
        return (va >> (12 + 9 * level)) & width

    def entries(self, level: int) -> int:
        return ROOT_ENTRIES if level == self.levels - 1 else 512

    def is_canonical(self, va: int) -> bool:
        return 0 <= va < 1 << self.va_bits

    def same_half(self, va: int, last: int) -> bool:
        return True

    def canonicalize(self, va: int) -> int:
        return va & ((1 << self.va_bits) - 1)

    # -- encoding -----------------------------------------------------------------

    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        """Every G-stage leaf a hypervisor writes is a U page; G is not used."""
        return (page_pa >> 2) | V | U | self._perm_bits(perms)

    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        """A U-mode check: the leaf needs U, then the right itself (no MXR, no SUM)."""
        if not page_user:
            return False
        need = {"r": Perm.R, "w": Perm.W, "x": Perm.X}[access]
        return bool(perms & need)

    # -- walk -----------------------------------------------------------------------

    def walk(
        self,
        mem: PhysicalMemory,
        root: int,
        va: int,
        access: str,
        user: bool,
        update_ad: bool,
    ) -> Translation:
        gpa = va
        if not self.is_canonical(gpa):
            raise PageFault(gpa, access, "non_canonical", None, user=True)
        a = root
        refs = 0
        global_ = False
        i = self.levels - 1
        while True:
            pte_pa = a + self.index(gpa, i) * 8
            if not mem.contains(pte_pa, 8):
                raise PageFault(gpa, access, "table_outside_memory", i, user=True)
            pte = mem.read_u64(pte_pa)
            refs += 1
            if not pte & V:
                raise PageFault(gpa, access, "not_present", i, user=True)
            if (pte & W and not pte & R) or pte & _RSVD:
                raise PageFault(gpa, access, "reserved", i, user=True)
            global_ = global_ or bool(pte & G)
            if pte & (R | X):
                break
            if pte & _NONLEAF_RSVD or i == 0:
                raise PageFault(gpa, access, "reserved", i, user=True)
            a = (pte & _PPN_MASK) << 2
            i -= 1
        perms = self._perms(pte)
        if access != "p" and not self.allows(perms, bool(pte & U), access, True):
            raise PageFault(gpa, access, "protection", i, user=True)
        size = 1 << (12 + 9 * i)
        ppn = (pte & _PPN_MASK) >> 10
        if ppn & ((size >> 12) - 1):
            raise PageFault(gpa, access, "misaligned", i, user=True)
        if not pte & A or (access == "w" and not pte & D):
            if self.svade:
                raise PageFault(gpa, access, "protection", i, user=True)
            if update_ad:
                new = pte | A | (D if access == "w" else 0)
                mem.write_u64(pte_pa, new)
                pte = new
        return Translation(
            va=gpa,
            pa=(ppn << 12) | (gpa & (size - 1)),
            page_size=size,
            perms=perms,
            user=bool(pte & U),
            global_=global_,
            dirty=bool(pte & D),
            memory_refs=refs,
            level=i,
            pte_pa=pte_pa,
        )
