"""Intel EPT walk, the executable specification (Intel SDM Vol. 3C, "EPT").

Written from the SDM's tables, separately from the core: for each level the
reserved bits of a present entry are listed as the SDM's entry formats give
them, and the checks run in the SDM's order (not present, then
misconfiguration, then the rights after the leaf).
"""

from __future__ import annotations

from typing import Final, Protocol

from vmopt.errors import PhysicalAccessError
from vmopt.paging.types import PageFault, Perm, Translation

__all__ = ["ept_walk"]


class Words(Protocol):
    def read_u64(self, pa: int) -> int: ...
    def write_u64(self, pa: int, value: int) -> None: ...


_NEED: Final = {"r": 0b001, "w": 0b010, "x": 0b100}


def _bits(lo: int, hi: int) -> int:
    """Bits lo..hi inclusive."""
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


def ept_walk(
    mem: Words,
    root: int,
    gpa: int,
    access: str,
    *,
    levels: int = 4,
    maxphyaddr: int = 46,
    ad: bool = False,
    update_ad: bool = False,
) -> Translation:
    """The GPA -> HPA walk; raises ``PageFault`` (cause misconfigured/not_present/protection/...)."""
    if gpa >> (12 + 9 * levels):
        raise PageFault(gpa, access, "non_canonical", None, user=True)
    above = _bits(maxphyaddr, 51) if maxphyaddr < 52 else 0
    addr = _bits(12, maxphyaddr - 1)
    rights = 0b111
    table = root
    refs = 0
    for level in range(levels - 1, -1, -1):
        pte_pa = table + ((gpa >> (12 + 9 * level)) & 511) * 8
        try:
            pte = mem.read_u64(pte_pa)
        except PhysicalAccessError:
            raise PageFault(gpa, access, "table_outside_memory", level, user=True) from None
        refs += 1
        if pte & 0b111 == 0:
            raise PageFault(gpa, access, "not_present", level, user=True)
        large = level in (1, 2) and bool(pte >> 7 & 1)
        is_leaf = level == 0 or large
        if is_leaf:
            reserved = above | (_bits(12, 11 + 9 * level) if level else 0)
        else:
            reserved = above | _bits(3, 7)
        write_only = pte & 0b011 == 0b010
        bad_type = is_leaf and (pte >> 3 & 7) in (2, 3, 7)
        if write_only or pte & reserved or bad_type:
            raise PageFault(gpa, access, "misconfigured", level, user=True)
        rights &= pte & 0b111
        if is_leaf:
            break
        if update_ad and ad and not pte >> 8 & 1:
            mem.write_u64(pte_pa, pte | 1 << 8)
        table = pte & addr
    if access != "p" and not rights & _NEED[access]:
        raise PageFault(gpa, access, "protection", level, user=True)
    if update_ad and ad:
        new = pte | 1 << 8 | (1 << 9 if access == "w" else 0)
        if new != pte:
            mem.write_u64(pte_pa, new)
            pte = new
    size = 1 << (12 + 9 * level)
    perms = Perm((rights & 1) << 2 | (rights & 2) | (rights >> 2))
    return Translation(
        va=gpa,
        pa=(pte & addr & ~(size - 1)) | (gpa & (size - 1)),
        page_size=size,
        perms=perms,
        user=True,
        global_=False,
        dirty=bool(pte >> 9 & 1),
        memory_refs=refs,
        level=level,
        pte_pa=pte_pa,
    )
