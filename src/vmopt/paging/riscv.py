"""RISC-V Sv39, Sv48 and Sv57 paging (privileged spec, "Virtual-Address Translation Process").

The encoding and the walk run in the core; this class holds its options.

Levels are numbered as in the spec's algorithm: ``i = LEVELS-1`` is the
root, 0 the last. Only the leaf's R/W/X/U bits matter. A leaf above level 0
whose low PPN fields are not zero is a misaligned superpage and faults.

Bits 63:54 are reserved (no Svnapot, Svpbmt or Svrsw60t59b), as are D, A
and U in non-leaf PTEs; any of them set faults, as the spec's step 3 says.
A and D are updated by the walker (Svadu behaviour) unless ``svade`` is
set, in which case a clear A, or a clear D on a write, raises a fault.
"""

from __future__ import annotations

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.paging.format import CoreFormat

__all__ = ["RiscV"]


class RiscV(CoreFormat):
    """Sv39 (3 levels, 39-bit VA), Sv48 (4 levels, 48-bit VA) or Sv57 (5 levels, 57-bit VA).

    ``sum`` is sstatus.SUM (supervisor may read/write U pages); ``mxr`` is
    sstatus.MXR (loads from execute-only pages succeed).
    """

    def __init__(self, levels: int = 3, *, sum: bool = False, mxr: bool = False, svade: bool = False) -> None:
        if type(levels) is not int:  # the core takes plain ints
            raise ConfigError(f"RISC-V paging here is Sv39 (3 levels), Sv48 (4) or Sv57 (5), got {levels!r}")
        self._bind(_core.Format.riscv(levels, bool(sum), bool(mxr), bool(svade)))
        self.sum, self.mxr, self.svade = sum, mxr, svade

    def __repr__(self) -> str:
        return f"RiscV({self.name})"
