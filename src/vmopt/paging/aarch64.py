"""AArch64 stage 1 translation (VMSAv8-64, Arm ARM D8), run by the core.

One VA half: TTBR0_EL1 (``upper=False``) or TTBR1_EL1 (``upper=True``).
The granule (4, 16 or 64 KiB) and TxSZ = 64 - ``va_bits`` give the start
level and the bits each level resolves; blocks are 1 GiB and 2 MiB with 4K,
32 MiB with 16K and 512 MiB with 64K.

Rights: ``user=True`` is EL0, ``False`` EL1. A page's ``user`` is AP[1] and
``w`` is AP[2] clear; EL1 can always read, so ``r`` is always set; ``x`` is
execution at the page's own EL (UXN clear for an EL0 page, PXN clear for an
EL1 page). ``map`` writes AP, PXN/UXN (the other EL's XN is set, as Linux
does), nG from ``global_`` and AttrIndx 0, inner shareable. Table
descriptors' APTable, UXNTable and PXNTable limits combine with the leaf's.

``ha`` (TCR_EL1.HA) makes the walk set AF instead of raising an
access-flag fault; ``hd`` (TCR_EL1.HD, needs ``ha``) makes a write to a
DBM page clear AP[2]. ``tbi`` ignores VA bits 63:56. ``pa_bits``
(TCR_EL1.IPS) bounds output addresses: a higher one is an address-size
fault. Faults carry ``fsc``, the architecture's fault status code. The
details and what is not modelled are in docs/paging.md.
"""

from __future__ import annotations

from typing import Final

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.paging.format import CoreFormat

__all__ = ["AArch64"]

GRANULES: Final = (4096, 16384, 65536)
PA_SIZES: Final = (32, 36, 40, 42, 44, 48)


class AArch64(CoreFormat):
    """VMSAv8-64 stage 1 for one VA half, with a 4K, 16K or 64K granule.

    Immutable once built; every option is validated and a bad one raises
    :class:`~vmopt.errors.ConfigError` naming it.
    """

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
        if type(granule) is not int or granule not in GRANULES:
            raise ConfigError(f"AArch64 granule must be 4096, 16384 or 65536, got {granule!r}")
        if type(va_bits) is not int or not 25 <= va_bits <= 48:
            raise ConfigError(f"AArch64 va_bits (64 - TxSZ) must be in [25, 48], got {va_bits!r}")
        if type(pa_bits) is not int or pa_bits not in PA_SIZES:
            raise ConfigError(
                f"AArch64 pa_bits (TCR_EL1.IPS) must be one of 32, 36, 40, 42, 44, 48, got {pa_bits!r}"
            )
        for name, value in (("upper", upper), ("ha", ha), ("hd", hd), ("tbi", tbi)):
            if not isinstance(value, bool):
                raise ConfigError(f"AArch64 {name} must be a bool, got {value!r}")
        core = _core.Format.aarch64(granule, va_bits, pa_bits, upper, ha, hd, tbi)
        object.__setattr__(self, "_frozen", False)
        self._bind(core)
        self.granule, self.upper, self.ha, self.hd, self.tbi = granule, upper, ha, hd, tbi
        #: the architecture's start level of a walk (0-3)
        self.start_level: int = 4 - self.levels
        self._frozen = True

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"AArch64 formats are immutable; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def is_canonical(self, va: int) -> bool:
        """True if ``va`` lies in this half (VA bits above ``va_bits`` all 0, or all 1 when ``upper``)."""
        return bool(self.core.is_canonical(va))

    def canonicalize(self, va: int) -> int:
        """``va`` with the bits above ``va_bits`` set to the half's."""
        return int(self.core.canonicalize(va))

    def __repr__(self) -> str:
        return (
            f"AArch64(granule={self.granule}, va_bits={self.va_bits}, upper={self.upper}, ha={self.ha},"
            f" hd={self.hd}, tbi={self.tbi}, pa_bits={self.pa_bits})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AArch64) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))
