"""RISC-V Sv39, Sv48 and Sv57 paging (privileged spec, "Virtual-Address Translation Process").

Levels are numbered as in the spec's algorithm: ``i = LEVELS-1`` is the
root, 0 the last. Only the leaf's R/W/X/U bits matter. A leaf above level 0
whose low PPN fields are not zero is a misaligned superpage and faults.

Bits 63:54 are reserved (no Svnapot, Svpbmt or Svrsw60t59b), as are D, A
and U in non-leaf PTEs; any of them set faults, as the spec's step 3 says.
A and D are updated by the walker (Svadu behaviour) unless ``svade`` is
set, in which case a clear A, or a clear D on a write, raises a fault.
"""

from __future__ import annotations

from typing import Final

from reference.memory.physical import PhysicalMemory
from reference.paging.format import LeafInfo, PagingFormat
from vmopt.errors import ConfigError
from vmopt.paging.types import PageFault, Perm, Translation

__all__ = ["RiscV"]

V: Final = 1 << 0
R: Final = 1 << 1
W: Final = 1 << 2
X: Final = 1 << 3
U: Final = 1 << 4
G: Final = 1 << 5
A: Final = 1 << 6
D: Final = 1 << 7
_RSVD: Final = ((1 << 64) - 1) & ~((1 << 54) - 1)
_NONLEAF_RSVD: Final = _RSVD | A | D | U
_PPN_MASK: Final = ((1 << 44) - 1) << 10
#: Perm for the PTE's X W R bits (bits 3:1) read as a 3-bit number.
_PERMS: Final = tuple(
    (Perm.R if v & 1 else Perm.NONE) | (Perm.W if v & 2 else Perm.NONE) | (Perm.X if v & 4 else Perm.NONE)
    for v in range(8)
)
_BIT_NAMES: Final = ((V, "V"), (R, "R"), (W, "W"), (X, "X"), (U, "U"), (G, "G"), (A, "A"), (D, "D"))


class RiscV(PagingFormat):
    """Sv39 (3 levels, 39-bit VA), Sv48 (4 levels, 48-bit VA) or Sv57 (5 levels, 57-bit VA).

    ``sum`` is sstatus.SUM (supervisor may read/write U pages); ``mxr`` is
    sstatus.MXR (loads from execute-only pages succeed).
    """

    def __init__(self, levels: int = 3, *, sum: bool = False, mxr: bool = False, svade: bool = False) -> None:
        if levels not in (3, 4, 5):
            raise ConfigError(f"RISC-V paging here is Sv39 (3 levels), Sv48 (4) or Sv57 (5), got {levels!r}")
        self.name = {3: "sv39", 4: "sv48", 5: "sv57"}[levels]
        self.levels = levels
        self.va_bits = 12 + 9 * levels
        self.pa_bits = 56
        self.leaf_sizes = {lvl: 1 << (12 + 9 * lvl) for lvl in range(levels)}
        self.sum, self.mxr, self.svade = sum, mxr, svade

    def __repr__(self) -> str:
        return f"RiscV({self.name})"

    def check_perms(self, perm: Perm) -> str | None:
        if not perm:
            return "a RISC-V leaf needs at least one of r, w, x"
        if perm & Perm.W and not perm & Perm.R:
            return "RISC-V reserves writable pages that are not readable (W=1, R=0)"
        return None

    # -- encoding -----------------------------------------------------------------

    def is_valid(self, pte: int) -> bool:
        return bool(pte & V)

    def is_leaf(self, pte: int, level: int) -> bool:
        return bool(pte & V) and bool(pte & (R | X))

    def table_pa(self, pte: int) -> int:
        return (pte & _PPN_MASK) << 2

    def make_table(self, table_pa: int, level: int) -> int:
        return (table_pa >> 2) | V

    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        pte = (page_pa >> 2) | V | self._perm_bits(perms)
        if user:
            pte |= U
        if global_:
            pte |= G
        return pte

    @staticmethod
    def _perm_bits(perms: Perm) -> int:
        return (R if perms & Perm.R else 0) | (W if perms & Perm.W else 0) | (X if perms & Perm.X else 0)

    @staticmethod
    def _perms(pte: int) -> Perm:
        return _PERMS[(pte >> 1) & 7]

    def decode_leaf(self, pte: int, level: int) -> LeafInfo:
        return LeafInfo(
            page_pa=(pte & _PPN_MASK) << 2,
            perms=self._perms(pte),
            user=bool(pte & U),
            global_=bool(pte & G),
            accessed=bool(pte & A),
            dirty=bool(pte & D),
        )

    def set_perms(self, pte: int, level: int, perms: Perm) -> int:
        return (pte & ~(R | W | X)) | self._perm_bits(perms)

    def table_rights(self, pte: int) -> tuple[Perm, bool, bool]:
        return Perm.R | Perm.W | Perm.X, True, bool(pte & G)

    def describe(self, pte: int, level: int) -> str:
        names = [name for bit, name in _BIT_NAMES if pte & bit]
        return f"{pte:#018x} [{' '.join(names) or '-'}] -> {self.table_pa(pte):#x}"

    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        """Step 5 of the spec's algorithm: may this access use a leaf with these bits?"""
        if access == "x":
            ok = bool(perms & Perm.X)
        elif access == "r":
            ok = bool(perms & Perm.R) or (self.mxr and bool(perms & Perm.X))
        else:
            ok = bool(perms & Perm.W)
        if user:
            return ok and page_user
        if page_user:
            return ok and access != "x" and self.sum
        return ok

    # -- walk ---------------------------------------------------------------------

    def walk(
        self,
        mem: PhysicalMemory,
        root: int,
        va: int,
        access: str,
        user: bool,
        update_ad: bool,
    ) -> Translation:
        if not self.is_canonical(va):
            raise PageFault(va, access, "non_canonical", None, user=user)
        read = mem.read_u64
        a = root
        refs = 0
        global_ = False
        i = self.levels - 1
        while True:
            pte_pa = a + ((va >> (12 + 9 * i)) & 0x1FF) * 8
            if not mem.contains(pte_pa, 8):
                raise PageFault(va, access, "table_outside_memory", i, user=user)  # access fault in hardware
            pte = read(pte_pa)
            refs += 1
            # Step 3.
            if not pte & V:
                raise PageFault(va, access, "not_present", i, user=user)
            if (pte & W and not pte & R) or pte & _RSVD:
                raise PageFault(va, access, "reserved", i, user=user)
            global_ = global_ or bool(pte & G)
            # Step 4.
            if pte & (R | X):
                break
            if pte & _NONLEAF_RSVD or i == 0:
                raise PageFault(va, access, "reserved", i, user=user)
            a = (pte & _PPN_MASK) << 2
            i -= 1
        # Step 5: leaf permissions.
        perms = self._perms(pte)
        if access != "p" and not self.allows(perms, bool(pte & U), access, user):
            raise PageFault(va, access, "protection", i, user=user)
        # Step 6: misaligned superpage.
        size = 1 << (12 + 9 * i)
        ppn = (pte & _PPN_MASK) >> 10
        if ppn & ((size >> 12) - 1):
            raise PageFault(va, access, "misaligned", i, user=user)
        # Step 7: accessed and dirty.
        if not pte & A or (access == "w" and not pte & D):
            # A probe (access "p", used by prefetchers) sets A like any walk.
            if self.svade:
                raise PageFault(va, access, "protection", i, user=user)
            if update_ad:
                new = pte | A | (D if access == "w" else 0)
                mem.write_u64(pte_pa, new)
                pte = new
        return Translation(
            va=va,
            pa=(ppn << 12) | (va & (size - 1)),
            page_size=size,
            perms=perms,
            user=bool(pte & U),
            global_=global_,
            dirty=bool(pte & D),
            memory_refs=refs,
            level=i,
            pte_pa=pte_pa,
        )
