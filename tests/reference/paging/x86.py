"""x86-64 4-level and 5-level paging (Intel SDM Vol. 3A, chapter 4.5).

Levels are numbered from the leaf: 0 = PT, 1 = PD, 2 = PDPT, 3 = PML4,
4 = PML5. Rights combine over the walk (SDM 4.6): a page is writable only if
R/W is set at every level, user-accessible only if U/S is set at every
level, and not executable if XD is set at any level.

Defaults model a modern OS: EFER.NXE=1 (XD honoured) and CR0.WP=1
(supervisor writes to read-only pages fault). SMEP and SMAP are options.
"""

from __future__ import annotations

from typing import Final

from reference.memory.physical import PhysicalMemory
from reference.paging.format import LeafInfo, PagingFormat
from vmopt.errors import ConfigError, PhysicalAccessError
from vmopt.paging.types import PageFault, Perm, Translation

__all__ = ["X86_64"]

P: Final = 1 << 0
RW: Final = 1 << 1
US: Final = 1 << 2
PWT: Final = 1 << 3
PCD: Final = 1 << 4
A: Final = 1 << 5
D: Final = 1 << 6
PS: Final = 1 << 7
G: Final = 1 << 8
XD: Final = 1 << 63

_ACCESS_BIT: Final = {"r": Perm.R, "w": Perm.W, "x": Perm.X}
#: Effective rights from (writable at every level, XD at some level).
_PERMS: Final = {
    (True, False): Perm.R | Perm.W | Perm.X, (True, True): Perm.R | Perm.W,
    (False, False): Perm.R | Perm.X, (False, True): Perm.R,
}  # fmt: skip
_BIT_NAMES: Final = ((P, "P"), (RW, "RW"), (US, "US"), (PWT, "PWT"), (PCD, "PCD"), (A, "A"),
                     (D, "D"), (PS, "PS"), (G, "G"), (XD, "XD"))  # fmt: skip


class X86_64(PagingFormat):
    """x86-64 paging with 4 (48-bit VA) or 5 (57-bit VA) levels.

    ``maxphyaddr`` is CPUID's MAXPHYADDR: address bits above it in a PTE are
    reserved and fault. 4 KiB, 2 MiB and 1 GiB pages are supported.
    """

    def __init__(
        self,
        levels: int = 4,
        *,
        maxphyaddr: int = 46,
        nxe: bool = True,
        wp: bool = True,
        smep: bool = False,
        smap: bool = False,
    ) -> None:
        if levels not in (4, 5):
            raise ConfigError(f"x86-64 paging has 4 or 5 levels, got {levels!r}")
        if not 36 <= maxphyaddr <= 52:
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self.name = "x86_64" if levels == 4 else "x86_64_5level"
        self.levels = levels
        self.va_bits = 48 if levels == 4 else 57
        self.pa_bits = maxphyaddr
        self.leaf_sizes = {0: 4096, 1: 2 << 20, 2: 1 << 30}
        self.nxe, self.wp, self.smep, self.smap = nxe, wp, smep, smap
        addr_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
        self._addr_mask = addr_mask
        # Reserved bits of a present entry, per level (SDM tables 4-15..4-20).
        high = ((1 << 52) - 1) ^ ((1 << maxphyaddr) - 1)
        if not nxe:
            high |= XD
        self._rsvd_table = {lvl: high for lvl in range(levels)}
        self._rsvd_table[levels - 1] |= PS  # PML4E/PML5E: PS must be 0
        if levels == 5:
            self._rsvd_table[3] |= PS
        self._rsvd_large = {1: high | (((1 << 21) - 1) & ~0x1FFF), 2: high | (((1 << 30) - 1) & ~0x1FFF)}

    def __repr__(self) -> str:
        return f"X86_64(levels={self.levels}, maxphyaddr={self.pa_bits})"

    def check_perms(self, perm: Perm) -> str | None:
        if not perm & Perm.R:
            return "x86-64 pages are always readable; perms must include 'r'"
        if not self.nxe and not perm & Perm.X:
            return "with EFER.NXE=0 every page is executable; perms must include 'x'"
        return None

    # -- encoding -----------------------------------------------------------------

    def is_valid(self, pte: int) -> bool:
        return bool(pte & P)

    def is_leaf(self, pte: int, level: int) -> bool:
        return bool(pte & P) and (level == 0 or (level in (1, 2) and bool(pte & PS)))

    def table_pa(self, pte: int) -> int:
        return pte & self._addr_mask

    def make_table(self, table_pa: int, level: int) -> int:
        # As Linux does: upper levels grant everything, the leaf decides.
        return table_pa | P | RW | US

    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        pte = page_pa | P
        if level:
            pte |= PS
        if perms & Perm.W:
            pte |= RW
        if user:
            pte |= US
        if global_:
            pte |= G
        if self.nxe and not perms & Perm.X:
            pte |= XD
        return pte

    def decode_leaf(self, pte: int, level: int) -> LeafInfo:
        mask = self._addr_mask if level == 0 else self._addr_mask & ~(self.leaf_sizes[level] - 1)
        return LeafInfo(
            page_pa=pte & mask,
            perms=self._rights(pte),
            user=bool(pte & US),
            global_=bool(pte & G),
            accessed=bool(pte & A),
            dirty=bool(pte & D),
        )

    def _rights(self, pte: int) -> Perm:
        perms = Perm.R
        if pte & RW:
            perms |= Perm.W
        if not (self.nxe and pte & XD):
            perms |= Perm.X
        return perms

    def set_perms(self, pte: int, level: int, perms: Perm) -> int:
        pte &= ~(RW | XD)
        if perms & Perm.W:
            pte |= RW
        if self.nxe and not perms & Perm.X:
            pte |= XD
        return pte

    def table_rights(self, pte: int) -> tuple[Perm, bool, bool]:
        return self._rights(pte), bool(pte & US), False

    def describe(self, pte: int, level: int) -> str:
        names = [name for bit, name in _BIT_NAMES if pte & bit and not (bit == PS and level == 0)]
        if level == 0 and pte & PS:
            names.append("PAT")
        if self.is_leaf(pte, level):
            addr = self.decode_leaf(pte, level).page_pa
        else:
            addr = self.table_pa(pte)
        return f"{pte:#018x} [{' '.join(names) or '-'}] -> {addr:#x}"

    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        """SDM 4.6: may an access of this kind and mode use a page with these rights?"""
        if user:
            return page_user and (access == "r" or bool(perms & _ACCESS_BIT[access]))
        if access == "r":
            return not (self.smap and page_user)
        if access == "w":
            return (bool(perms & Perm.W) or not self.wp) and not (self.smap and page_user)
        return bool(perms & Perm.X) and not (self.smep and page_user)

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
        table = root
        writable = usermode = True
        nx = False
        refs = 0
        level = self.levels - 1
        rsvd_table, rsvd_large = self._rsvd_table, self._rsvd_large
        while True:
            pte_pa = table + ((va >> (12 + 9 * level)) & 0x1FF) * 8
            try:
                pte = read(pte_pa)
            except PhysicalAccessError:
                # A table outside memory: real buses return garbage; fault instead.
                raise PageFault(va, access, "table_outside_memory", level, user=user) from None
            refs += 1
            if not pte & P:
                raise PageFault(va, access, "not_present", level, user=user)
            if level and pte & PS and level < 3:
                if pte & rsvd_large[level]:
                    raise PageFault(va, access, "reserved", level, user=user)
                leaf = True
            else:
                if pte & rsvd_table[level]:
                    raise PageFault(va, access, "reserved", level, user=user)
                leaf = level == 0
            if not pte & RW:
                writable = False
            if not pte & US:
                usermode = False
            if pte & XD:
                nx = True
            if leaf:
                break
            # A table entry is "used" once the walk passes it: its A bit is set
            # even if the walk later faults (as QEMU's walker does).
            if update_ad and not pte & A:
                mem.write_u64(pte_pa, pte | A)
            table = pte & self._addr_mask
            level -= 1
        size = 1 << (12 + 9 * level)
        nx = nx and self.nxe
        perms = _PERMS[writable, nx]
        if access != "p" and not self.allows(perms, usermode, access, user):
            raise PageFault(va, access, "protection", level, user=user)
        leaf_pte_pa, leaf_pte = pte_pa, pte
        if update_ad:
            new = leaf_pte | A
            if access == "w":
                new |= D
            if new != leaf_pte:
                mem.write_u64(leaf_pte_pa, new)
                leaf_pte = new
        mask = self._addr_mask & ~(size - 1)
        return Translation(
            va=va,
            pa=(leaf_pte & mask) | (va & (size - 1)),
            page_size=size,
            perms=perms,
            user=usermode,
            global_=bool(leaf_pte & G),
            dirty=bool(leaf_pte & D),
            memory_refs=refs,
            level=level,
            pte_pa=leaf_pte_pa,
        )
