"""x86-64 4-level and 5-level paging (Intel SDM Vol. 3A, chapter 4.5), run by the core.

Levels are numbered from the leaf: 0 = PT, 1 = PD, 2 = PDPT, 3 = PML4,
4 = PML5. Rights combine over the walk (SDM 4.6): a page is writable only if
R/W is set at every level, user-accessible only if U/S is set at every
level, and not executable if XD is set at any level.

Defaults model a modern OS: EFER.NXE=1 (XD honoured) and CR0.WP=1
(supervisor writes to read-only pages fault). SMEP and SMAP are options.
"""

from __future__ import annotations

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.paging.format import CoreFormat

__all__ = ["X86_64"]


class X86_64(CoreFormat):
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
        # The core takes plain ints; anything else gets the core's words here.
        if type(levels) is not int:
            raise ConfigError(f"x86-64 paging has 4 or 5 levels, got {levels!r}")
        if type(maxphyaddr) is not int and levels in (4, 5):
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self._bind(_core.Format.x86_64(levels, maxphyaddr, bool(nxe), bool(wp), bool(smep), bool(smap)))
        self.nxe, self.wp, self.smep, self.smap = nxe, wp, smep, smap
        addr_mask, rsvd_table, rsvd_large = self.core.x86_masks()
        #: PTE address bits, and reserved bits per level (what the batch kernel needs)
        self._addr_mask: int = addr_mask
        self._rsvd_table: dict[int, int] = dict(enumerate(rsvd_table))
        self._rsvd_large: dict[int, int] = {1: rsvd_large[0], 2: rsvd_large[1]}

    def __repr__(self) -> str:
        return f"X86_64(levels={self.levels}, maxphyaddr={self.pa_bits})"
