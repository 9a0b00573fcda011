"""Host (stage-2) formats for two-stage translation: Intel EPT, AMD NPT, the RISC-V G-stage and
AArch64 stage 2, run by the core.

EPT (Intel SDM Vol. 3C, "EPT"): R/W/X in bits 2:0, the memory type in 5:3
and ignore-PAT in 6 on leaves, a large page in 7, accessed/dirty in 8/9
when EPTP bit 6 (``ad``) enables them. A W-only or WX-only entry, a reserved
memory type (2, 3, 7) or a reserved bit is a misconfiguration (fault cause
``"misconfigured"``); an entry that is not present or lacks the right is a
violation (``"not_present"``, ``"protection"``). GPAs are zero-extended.

NPT (AMD APM Vol. 2, "Nested Paging"): the long-mode format, and every
nested walk is a user access, so host leaves are always user pages.

G-stage (RISC-V privileged spec, hypervisor extension): Sv39x4/Sv48x4, the
Sv39/Sv48 entries with a 16 KiB root and GPAs 2 bits wider; every access is
a U-mode access, so leaves need U. ``PageTable`` builds, edits, lists and
frees its tables like any other: the root is one 16 KiB (order-2) block,
16 KiB aligned (``attach`` requires that), with 2048 entries.

AArch64 stage 2 (Arm ARM D8, VTTBR_EL2/VTCR_EL2): S2AP[7:6] (bit 6 reads,
bit 7 writes, so a W-only page is legal), XN[54] (FEAT_XNX's bit 53 is not
modelled: ignored), AF (a clear one is an access-flag fault unless ``ha``),
DBM with ``hd``; MemAttr and SH are written as Normal write-back, inner
shareable. The start level follows from the granule, ``ipa_bits`` and
``pa_bits`` (VTCR_EL2.PS); where the architecture forbids stage 1's start
level the walk starts a level lower on up to 16 concatenated tables.
Faults carry stage 1's ``fsc``; in a two-stage walk they are host faults.
"""

from __future__ import annotations

from typing import Final

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.paging.format import CoreFormat

__all__ = ["AArch64Stage2", "Ept", "GStage", "HostFormat", "Npt"]

#: AArch64 stage-2 translation granules, and VTCR_EL2.PS output sizes.
S2_GRANULES: Final = (4096, 16384, 65536)
S2_PA_SIZES: Final = (32, 36, 40, 42, 44, 48)


class HostFormat(CoreFormat):
    """A stage-2 format: GPAs are not sign-extended, so canonical means below ``2**va_bits``."""

    def is_canonical(self, va: int) -> bool:
        return isinstance(va, int) and 0 <= va < 1 << 64 and bool(self.core.is_canonical(va))

    def canonicalize(self, va: int) -> int:
        return int(self.core.canonicalize(va & ((1 << 64) - 1)))


class Ept(HostFormat):
    """Intel EPT with 4 (``"ept"``, 48-bit GPAs) or 5 (``"ept_5level"``, 57-bit) levels.

    ``maxphyaddr`` bounds host-physical addresses (bits above it are
    reserved: a misconfiguration); ``ad`` is EPTP bit 6: walks set A and D,
    and guest page-table reads count as host writes, as the SDM says.
    """

    def __init__(self, levels: int = 4, *, maxphyaddr: int = 46, ad: bool = False) -> None:
        if type(levels) is not int:
            raise ConfigError(f"EPT has 4 or 5 levels, got {levels!r}")
        if type(maxphyaddr) is not int:
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self._bind(_core.Format.ept(levels, maxphyaddr, bool(ad)))
        self.ad = bool(ad)

    def __repr__(self) -> str:
        return f"Ept(levels={self.levels}, maxphyaddr={self.pa_bits}, ad={self.ad})"


class Npt(HostFormat):
    """AMD nested paging: 4-level long-mode entries, every walk a user access, GPAs below 2**47."""

    def __init__(self, *, maxphyaddr: int = 46) -> None:
        if type(maxphyaddr) is not int:
            raise ConfigError(f"maxphyaddr must be in [36, 52], got {maxphyaddr!r}")
        self._bind(_core.Format.npt(maxphyaddr))

    def __repr__(self) -> str:
        return f"Npt(maxphyaddr={self.pa_bits})"


class GStage(HostFormat):
    """The RISC-V G-stage: Sv39x4 (``levels=3``, 41-bit GPAs) or Sv48x4 (``levels=4``, 50-bit GPAs)."""

    def __init__(self, levels: int = 3, *, svade: bool = False) -> None:
        if type(levels) is not int:
            raise ConfigError(f"the RISC-V G-stage here is Sv39x4 (3 levels) or Sv48x4 (4), got {levels!r}")
        self._bind(_core.Format.gstage(levels, bool(svade)))
        self.svade = bool(svade)

    def root_index(self, gpa: int) -> int:
        """Index of ``gpa`` in the 2048-entry root table (``index`` gives the 9-bit ones below it)."""
        return (gpa >> (12 + 9 * (self.levels - 1))) & 0x7FF

    def __repr__(self) -> str:
        return f"GStage({self.name})"


class AArch64Stage2(HostFormat):
    """VMSAv8-64 stage 2 (IPA -> PA) with a 4K, 16K or 64K granule.

    ``ipa_bits`` is 64 - VTCR_EL2.T0SZ (25 to 48, at most ``pa_bits``);
    ``ha``/``hd`` are VTCR_EL2.HA/HD (``hd`` needs ``ha``); ``pa_bits`` is
    VTCR_EL2.PS. ``start_level`` (0-3), ``sl0`` (its VTCR_EL2.SL0 encoding)
    and ``concatenated`` (tables at the start level) follow from them.
    Stage-2 accesses have no EL: ``user`` is ignored, and every combination
    of ``r``, ``w``, ``x`` can be mapped. Immutable once built.
    """

    def __init__(
        self,
        granule: int = 4096,
        ipa_bits: int = 40,
        ha: bool = False,
        hd: bool = False,
        *,
        pa_bits: int = 48,
    ) -> None:
        if type(granule) is not int or granule not in S2_GRANULES:
            raise ConfigError(f"AArch64 stage 2 granule must be 4096, 16384 or 65536, got {granule!r}")
        if type(ipa_bits) is not int or not 25 <= ipa_bits <= 48:
            raise ConfigError(
                f"AArch64 stage 2 ipa_bits (64 - VTCR_EL2.T0SZ) must be in [25, 48], got {ipa_bits!r}"
            )
        if type(pa_bits) is not int or pa_bits not in S2_PA_SIZES:
            raise ConfigError(
                f"AArch64 stage 2 pa_bits (VTCR_EL2.PS) must be one of {', '.join(map(str, S2_PA_SIZES))},"
                f" got {pa_bits!r}"
            )
        for name, value in (("ha", ha), ("hd", hd)):
            if not isinstance(value, bool):
                raise ConfigError(f"AArch64 stage 2 {name} must be a bool, got {value!r}")
        core = _core.Format.aarch64_stage2(granule, ipa_bits, ha, hd, pa_bits)
        object.__setattr__(self, "_frozen", False)
        self._bind(core)
        self.granule, self.ipa_bits, self.ha, self.hd = granule, ipa_bits, ha, hd
        #: the architecture's start level of a walk (0-3)
        self.start_level: int = 4 - self.levels
        #: VTCR_EL2.SL0: 4K counts down from level 2, 16K and 64K from level 3
        self.sl0: int = (2 if granule == 4096 else 3) - self.start_level
        #: tables concatenated at the start level (1: the root is one table or less)
        self.concatenated: int = max(1, self.entries(self.levels - 1) * 8 // granule)
        self._frozen = True

    def __setattr__(self, name: str, value: object) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"AArch64Stage2 formats are immutable; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return (
            f"AArch64Stage2(granule={self.granule}, ipa_bits={self.ipa_bits}, ha={self.ha}, hd={self.hd},"
            f" pa_bits={self.pa_bits})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AArch64Stage2) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))
