"""AArch64 stage 1 translation (VMSAv8-64, Arm ARM D8), one VA half: the executable specification.

Levels are vmopt's (0 = the last level); the architecture's level is
``3 - level``. Each level resolves ``log2(granule) - 3`` VA bits; the start
level resolves what is left of ``va_bits``. A walk, in the architecture's
order of checks:

1. a VA outside the half (bits above ``va_bits`` not all equal to the
   half's; bits 63:56 ignored with ``tbi``): translation fault, level 0;
2. per descriptor: bit 0 clear, bits[1:0] = 01 at the last level, or a
   block where the granule has none: translation fault; an output address
   bit at or above ``pa_bits``: address-size fault; a table descriptor
   ORs its APTable/UXNTable/PXNTable into the limits and the walk descends;
3. at the leaf: AF clear without ``ha``: access-flag fault; then the
   rights (AP[2:1], UXN, PXN with the table limits): permission fault;
4. with ``update_ad``: ``ha`` sets AF, ``hd`` clears AP[2] on a write to
   a DBM page.

vmopt's view of a page: ``user`` = AP[1] (after APTable[0]); ``w`` =
AP[2] clear (or DBM under ``hd``) and no APTable[1]; ``r`` always; ``x`` =
execution at the page's own EL (UXN for an EL0 page, PXN for an EL1 page,
with the table's XN).
"""

from __future__ import annotations

from typing import Final

from reference.memory.physical import PhysicalMemory
from reference.paging.format import LeafInfo, PagingFormat
from vmopt.errors import ConfigError
from vmopt.paging.types import PageFault, Perm, Translation

__all__ = ["AArch64"]

VALID: Final = 1 << 0
TABLE: Final = 1 << 1
AP1: Final = 1 << 6  # EL0 access
AP2: Final = 1 << 7  # read-only
SH_INNER: Final = 0b11 << 8
AF: Final = 1 << 10
NG: Final = 1 << 11
DBM: Final = 1 << 51
CONT: Final = 1 << 52
PXN: Final = 1 << 53
UXN: Final = 1 << 54
PXN_TABLE: Final = 1 << 59
UXN_TABLE: Final = 1 << 60
APT0: Final = 1 << 61  # no EL0 below
APT1: Final = 1 << 62  # no writes below
_ADDR48: Final = (1 << 48) - 1
_NAMES: Final = (
    (VALID, "V"), (TABLE, "T"), (AP1, "AP1"), (AP2, "AP2"), (AF, "AF"), (NG, "nG"), (DBM, "DBM"),
    (CONT, "Cont"), (PXN, "PXN"), (UXN, "UXN"), (PXN_TABLE, "PXNTable"), (UXN_TABLE, "UXNTable"),
    (APT0, "APTable0"), (APT1, "APTable1"), (1 << 63, "NSTable"),
)  # fmt: skip
_FSC_KIND: Final = {
    "address_size": 0b0000,
    "not_present": 0b0001,
    "access_flag": 0b0010,
    "protection": 0b0011,
    "table_outside_memory": 0b0101,
}


class AArch64(PagingFormat):
    """VMSAv8-64 stage 1 with a 4K, 16K or 64K granule (see the module docstring)."""

    def __init__(
        self,
        granule: int = 4096,
        va_bits: int = 48,
        upper: bool = False,
        ha: bool = False,
        hd: bool = False,
        tbi: bool = False,
        *,
        pa_bits: int = 48,
    ) -> None:
        if granule not in (4096, 16384, 65536):
            raise ConfigError(f"AArch64 granule must be 4096, 16384 or 65536, got {granule!r}")
        if not 25 <= va_bits <= 48:
            raise ConfigError(f"AArch64 va_bits (64 - TxSZ) must be in [25, 48], got {va_bits!r}")
        if pa_bits not in (32, 36, 40, 42, 44, 48):
            raise ConfigError(
                f"AArch64 pa_bits (TCR_EL1.IPS) must be one of 32, 36, 40, 42, 44, 48, got {pa_bits!r}"
            )
        if hd and not ha:
            raise ConfigError("AArch64 hd (hardware dirty state, TCR_EL1.HD) needs ha (TCR_EL1.HA) set")
        self.granule_bits = granule.bit_length() - 1
        self.stride = self.granule_bits - 3
        self.levels = -(-(va_bits - self.granule_bits) // self.stride)
        self.va_bits, self.pa_bits = va_bits, pa_bits
        self.upper, self.ha, self.hd, self.tbi = upper, ha, hd, tbi
        blocks = (1, 2) if granule == 4096 else (1,)
        self.leaf_sizes = {0: granule} | {b: self.level_span(b) for b in blocks if b < self.levels}
        suffix = {4096: "", 16384: "_16k", 65536: "_64k"}[granule]
        self.name = (
            "aarch64" + suffix + ("" if va_bits == 48 else f"_va{va_bits}") + ("_upper" if upper else "")
        )

    def __repr__(self) -> str:
        return f"AArch64({self.name})"

    # -- geometry -----------------------------------------------------------------

    def index(self, va: int, level: int) -> int:  # type: ignore[override]
        return (va >> (self.granule_bits + self.stride * level)) & (self.entries(level) - 1)

    def level_span(self, level: int) -> int:  # type: ignore[override]
        return 1 << (self.granule_bits + self.stride * level)

    def entries(self, level: int) -> int:
        """Entries of a table at ``level``: the start level holds what is left of ``va_bits``."""
        if level == self.levels - 1:
            return 1 << (self.va_bits - self.granule_bits - self.stride * level)
        return 1 << self.stride

    def is_canonical(self, va: int) -> bool:
        top = 56 if self.tbi else 64
        bits = (va >> self.va_bits) & ((1 << (top - self.va_bits)) - 1)
        return bits == ((1 << (top - self.va_bits)) - 1 if self.upper else 0)

    def same_half(self, va: int, last: int) -> bool:
        """No address between ``va`` and ``last`` leaves the half (only the tag can change)."""
        return not self.tbi or va >> 56 == last >> 56

    def canonicalize(self, va: int) -> int:
        mask = (1 << self.va_bits) - 1
        return (va | ((1 << 64) - 1) ^ mask) if self.upper else va & mask

    def check_perms(self, perm: Perm) -> str | None:
        if not perm & Perm.R:
            return "AArch64 pages are always readable at EL1 (AP[2:1] has no no-read encoding)"
        return None

    def fsc(self, cause: str, level: int | None) -> int | None:
        """The 6-bit FSC of a fault: the kind, then the architecture's level (3 = last)."""
        kind = _FSC_KIND.get(cause)
        return None if kind is None else kind << 2 | (0 if level is None else 3 - level)

    # -- descriptors --------------------------------------------------------------

    def is_valid(self, pte: int) -> bool:
        return bool(pte & VALID)

    def is_leaf(self, pte: int, level: int) -> bool:
        return bool(pte & VALID) and bool(pte & TABLE) == (level == 0)

    def table_pa(self, pte: int) -> int:
        return pte & _ADDR48 & ~((1 << self.granule_bits) - 1)

    def make_table(self, table_pa: int, level: int) -> int:
        return table_pa | TABLE | VALID

    def _perm_bits(self, perms: Perm, user: bool) -> int:
        bits = 0
        if not perms & Perm.W:
            bits |= AP2
        elif self.hd:
            bits |= AP2 | DBM
        bits |= PXN if user else UXN
        if not perms & Perm.X:
            bits |= UXN if user else PXN
        return bits

    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        pte = page_pa | VALID | SH_INNER | self._perm_bits(perms, user)
        pte |= (TABLE if level == 0 else 0) | (AP1 if user else 0) | (0 if global_ else NG)
        return pte | (0 if self.ha else AF)

    def _view(self, pte: int, ro: bool, no_el0: bool, uxn: bool, pxn: bool) -> tuple[Perm, bool]:
        el0 = bool(pte & AP1) and not no_el0
        writable = not ro and (not pte & AP2 or (self.hd and bool(pte & DBM)))
        execute = not (pte & UXN or uxn) if el0 else not (pte & PXN or pxn)
        return Perm.R | (Perm.W if writable else Perm.NONE) | (Perm.X if execute else Perm.NONE), el0

    def decode_leaf(self, pte: int, level: int) -> LeafInfo:
        perms, user = self._view(pte, False, False, False, False)
        page_pa = pte & _ADDR48 & ~(self.level_span(level) - 1)
        return LeafInfo(page_pa, perms, user, not pte & NG, bool(pte & AF), not pte & AP2)

    def set_perms(self, pte: int, level: int, perms: Perm) -> int:
        return (pte & ~(AP2 | DBM | UXN | PXN)) | self._perm_bits(perms, bool(pte & AP1))

    def table_rights(self, pte: int) -> tuple[Perm, bool, bool]:
        """The limits as rights: ``r`` = no UXNTable, ``w`` = no APTable[1], ``x`` = no PXNTable."""
        perms = Perm.NONE
        perms |= Perm.NONE if pte & UXN_TABLE else Perm.R
        perms |= Perm.NONE if pte & APT1 else Perm.W
        perms |= Perm.NONE if pte & PXN_TABLE else Perm.X
        return perms, not pte & APT0, False

    def effective(self, pte: int, level: int, perms: Perm, user: bool) -> tuple[Perm, bool]:
        """The leaf's view under table limits accumulated as :meth:`table_rights` encodes them."""
        return self._view(pte, not perms & Perm.W, not user, not perms & Perm.R, not perms & Perm.X)

    def describe(self, pte: int, level: int) -> str:
        names = " ".join(name for bit, name in _NAMES if pte & bit) or "-"
        if not pte & VALID:
            kind = "invalid"
        elif pte & TABLE:
            kind = "page" if level == 0 else "table"
        else:
            kind = "reserved" if level == 0 else "block"
        return f"{pte:#018x} {kind} [{names}] attr {(pte >> 2) & 7} -> {self.table_pa(pte):#x}"

    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        if access == "r":
            return not user or page_user
        if access == "w":
            return bool(perms & Perm.W) and (not user or page_user)
        if access == "x":
            return bool(perms & Perm.X) and user == page_user
        return True

    # -- walk ---------------------------------------------------------------------

    def _fault(self, va: int, access: str, cause: str, level: int | None, user: bool) -> PageFault:
        return PageFault(va, access, cause, level, user=user, fsc=self.fsc(cause, level))

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
            raise self._fault(va, access, "not_present", None, user)
        if root >> self.pa_bits:
            raise self._fault(va, access, "address_size", None, user)
        granule_mask = ~((1 << self.granule_bits) - 1)
        ro = no_el0 = uxn = pxn = False
        table, refs, level = root, 0, self.levels - 1
        while True:
            pte_pa = table + self.index(va, level) * 8
            if not mem.contains(pte_pa, 8):
                raise self._fault(va, access, "table_outside_memory", level, user)
            pte = mem.read_u64(pte_pa)
            refs += 1
            is_table = bool(pte & TABLE)
            if not pte & VALID or (level == 0 and not is_table):
                raise self._fault(va, access, "not_present", level, user)
            if not is_table and level not in self.leaf_sizes:
                raise self._fault(va, access, "not_present", level, user)
            if (pte & _ADDR48 & granule_mask) >> self.pa_bits:
                raise self._fault(va, access, "address_size", level, user)
            if level == 0 or not is_table:
                break
            ro, no_el0 = ro or bool(pte & APT1), no_el0 or bool(pte & APT0)
            uxn, pxn = uxn or bool(pte & UXN_TABLE), pxn or bool(pte & PXN_TABLE)
            table = pte & _ADDR48 & granule_mask
            level -= 1
        if not pte & AF and not self.ha:
            raise self._fault(va, access, "access_flag", level, user)
        perms, el0 = self._view(pte, ro, no_el0, uxn, pxn)
        if access != "p" and not self.allows(perms, el0, access, user):
            raise self._fault(va, access, "protection", level, user)
        new = pte | (AF if self.ha else 0)
        if access == "w" and self.hd and pte & DBM:
            new &= ~AP2
        if update_ad and new != pte:
            mem.write_u64(pte_pa, new)
            pte = new
        size = self.level_span(level)
        return Translation(
            va=va,
            pa=(pte & _ADDR48 & ~(size - 1)) | (va & (size - 1)),
            page_size=size,
            perms=perms,
            user=el0,
            global_=not pte & NG,
            dirty=not pte & AP2,
            memory_refs=refs,
            level=level,
            pte_pa=pte_pa,
        )
