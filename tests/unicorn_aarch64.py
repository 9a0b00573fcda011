"""Ask Unicorn's AArch64 CPU (QEMU 5.0's ``get_phys_addr_lpae``) to translate through vmopt's tables.

Unicorn has no VA->PA call, but its CPU implements the address translation
instructions AT S1E1R, S1E1W, S1E0R and S1E0W, which are system-register
writes: :meth:`AtOracle.at` writes the VA to the instruction's encoding
through ``reg_write(UC_ARM64_REG_CP_REG, ...)`` (Unicorn calls QEMU's
``ats_write64``) and reads the result from PAR_EL1. No guest code runs.

Set-up, in this order: SCR_EL3 = RW | NS and HCR_EL2.RW, else EL1 is
AArch32 and AT reports in the 32-bit PAR format; then TCR_EL1 (TxSZ,
granule, IPS, TBI, one half's walks disabled with EPDn), MAIR_EL1,
TTBR0/1_EL1, and SCTLR_EL1.M. vmopt's resident frames are copied to the
same physical addresses of Unicorn's ``mem_map`` space, so both walk the
same bytes.

PAR_EL1 (64-bit format): F (bit 0) = 0 gives PA[47:12] in bits 47:12; F = 1
gives the fault status code in bits 6:1.

Stage 2 (:class:`S12Oracle`): HCR_EL2.VM turns on the IPA -> PA stage,
VTCR_EL2 (T0SZ, SL0, TG0, PS, walk attributes) and VTTBR_EL2 (VMID 0,
BADDR) describe it, and AT S12E1R/W and S12E0R/W (SYS #4, C7, C8, #4..7;
QEMU's ``ats_write64`` runs them as the ``E10_1``/``E10_0`` regimes: stage 1,
its table reads through stage 2, then stage 2 of the output) translate a VA
through both. A stage-2 fault sets PAR.S (bit 9), and PAR.PTW (bit 8) when
it hit a stage-1 table read. Guest (stage-1) tables live at guest-physical
addresses; their frames are copied to the host-physical addresses the
stage-2 tables give them, and the stage-2 tables to their own addresses.

All of this exists only to test vmopt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import unicorn
from unicorn import arm64_const as a64

from vmopt import PageTable, PhysicalMemory
from vmopt.errors import PageFault
from vmopt.paging import AArch64, AArch64Stage2

# System registers as (op0, op1, CRn, CRm, op2) (Arm ARM, C5.3).
SCR_EL3 = (3, 6, 1, 1, 0)
HCR_EL2 = (3, 4, 1, 1, 0)
SCTLR_EL1 = (3, 0, 1, 0, 0)
TTBR0_EL1 = (3, 0, 2, 0, 0)
TTBR1_EL1 = (3, 0, 2, 0, 1)
TCR_EL1 = (3, 0, 2, 0, 2)
MAIR_EL1 = (3, 0, 10, 2, 0)
PAR_EL1 = (3, 0, 7, 4, 0)
#: AT instructions (SYS #op1, C7, C8, #op2): (access, EL0) -> encoding
AT_OPS = {
    ("r", False): (1, 0, 7, 8, 0),  # AT S1E1R
    ("w", False): (1, 0, 7, 8, 1),  # AT S1E1W
    ("r", True): (1, 0, 7, 8, 2),  # AT S1E0R
    ("w", True): (1, 0, 7, 8, 3),  # AT S1E0W
}
VTTBR_EL2 = (3, 4, 2, 1, 0)
VTCR_EL2 = (3, 4, 2, 1, 2)
#: Stage 1 and 2 AT instructions (SYS #4, C7, C8, #op2): (access, EL0) -> encoding
AT_S12_OPS = {
    ("r", False): (1, 4, 7, 8, 4),  # AT S12E1R
    ("w", False): (1, 4, 7, 8, 5),  # AT S12E1W
    ("r", True): (1, 4, 7, 8, 6),  # AT S12E0R
    ("w", True): (1, 4, 7, 8, 7),  # AT S12E0W
}
HCR_VM = 1 << 0
PAR_PTW, PAR_S = 1 << 8, 1 << 9
#: VTCR_EL2: IRGN0/ORGN0 write-back write-allocate, SH0 inner shareable; bit 31 is RES1.
VTCR_WALK_ATTRS = (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 31)

SCR_NS, SCR_RW = 1 << 0, 1 << 10
HCR_RW = 1 << 31
SCTLR_M = 1 << 0
#: TCR_EL1.TG0 and TG1 encodings of each granule
TG0 = {4096: 0b00, 65536: 0b01, 16384: 0b10}
TG1 = {16384: 0b01, 4096: 0b10, 65536: 0b11}
IPS = {32: 0b000, 36: 0b001, 40: 0b010, 42: 0b011, 44: 0b100, 48: 0b101}
TCR_EPD0, TCR_EPD1 = 1 << 7, 1 << 23
TCR_TBI0, TCR_TBI1 = 1 << 37, 1 << 38
#: Inner/outer write-back write-allocate, inner shareable walks (IRGN, ORGN, SH of each half).
TCR_WALK_ATTRS = (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (0b01 << 24) | (0b01 << 26) | (0b11 << 28)


@dataclass(frozen=True)
class AtResult:
    """What one AT instruction reported: the PA, or the fault status code (and, for a
    stage 1 and 2 AT, whether stage 2 faulted and whether on a stage-1 table read)."""

    pa: int | None
    fsc: int | None
    stage2: bool = False
    ptw: bool = False


def vtcr_for(fmt: AArch64Stage2) -> int:
    """VTCR_EL2 that makes QEMU walk stage 2 as ``fmt`` does (no hardware AF/dirty update)."""
    vtcr = (64 - fmt.ipa_bits) | fmt.sl0 << 6 | VTCR_WALK_ATTRS
    return vtcr | TG0[fmt.granule] << 14 | IPS[fmt.pa_bits] << 16


def decode_par(par: int, va: int) -> AtResult:
    """PAR_EL1 (64-bit format) as an AtResult."""
    if par & 1:
        return AtResult(None, (par >> 1) & 0x3F, bool(par & PAR_S), bool(par & PAR_PTW))
    return AtResult((par & ((1 << 48) - 1) & ~0xFFF) | (va & 0xFFF), None)


def tcr_for(fmt: AArch64) -> int:
    """TCR_EL1 that makes QEMU walk ``fmt``'s half as vmopt does (the other half disabled)."""
    txsz = 64 - fmt.va_bits
    tcr = txsz | (txsz << 16) | TCR_WALK_ATTRS
    tcr |= TG0[fmt.granule] << 14 | TG1[fmt.granule] << 30 | IPS[fmt.pa_bits] << 32
    tcr |= TCR_EPD0 if fmt.upper else TCR_EPD1
    if fmt.tbi:
        tcr |= TCR_TBI1 if fmt.upper else TCR_TBI0
    return tcr


class AtOracle:
    """A Unicorn AArch64 CPU set up to translate ``fmt``'s half with its tables at ``root``."""

    def __init__(self, mem: PhysicalMemory, fmt: AArch64, root: int) -> None:
        self.uc: Any = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self.uc.mem_map(mem.base, mem.size)
        for frame in mem.iter_resident():
            self.uc.mem_write(frame, mem.read(frame, 4096))
        self.write(SCR_EL3, SCR_RW | SCR_NS)
        self.write(HCR_EL2, HCR_RW)
        self.write(TCR_EL1, tcr_for(fmt))
        self.write(MAIR_EL1, 0xFF)
        self.write(TTBR1_EL1 if fmt.upper else TTBR0_EL1, root)
        self.write(SCTLR_EL1, self.read(SCTLR_EL1) | SCTLR_M)

    def write(self, reg: tuple[int, int, int, int, int], value: int) -> None:
        op0, op1, crn, crm, op2 = reg
        self.uc.reg_write(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2, value))

    def read(self, reg: tuple[int, int, int, int, int]) -> int:
        op0, op1, crn, crm, op2 = reg
        value: int = self.uc.reg_read(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2))
        return value

    def store(self, pa: int, data: bytes) -> None:
        """Write guest-physical bytes (a descriptor vmopt changed) into Unicorn's memory."""
        self.uc.mem_write(pa, data)

    def at(self, va: int, access: str, el0: bool) -> AtResult:
        """Run AT S1E{0,1}{R,W} on ``va`` and decode PAR_EL1."""
        self.write(AT_OPS[access, el0], va)
        return decode_par(self.read(PAR_EL1), va)


class S12Oracle:
    """A Unicorn AArch64 CPU translating through ``guest`` (stage 1, over guest-physical
    memory) and ``host`` (stage 2), as a hypervisor at EL2 would have set it up.

    Each resident guest frame is copied to the host-physical address stage 2
    gives it when the oracle is built (a frame it does not map is left out: its
    reads fault at stage 2 in both walks); ValueError if two guest frames,
    resident or not, would share one, or one would land on the host tables, above
    44 bits or under a block whose RES0 output bits are set.
    """

    def __init__(self, guest: PageTable, host: PageTable) -> None:
        gfmt, hfmt = guest.fmt, host.fmt
        assert isinstance(gfmt, AArch64) and not gfmt.upper and isinstance(hfmt, AArch64Stage2)
        self.uc: Any = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        hmem = host.mem
        self.uc.mem_map(hmem.base, hmem.size)
        for frame in hmem.iter_resident():
            self.uc.mem_write(frame, hmem.read(frame, 4096))
        mapped: set[int] = set()
        frames: dict[int, int] = {}
        resident = set(guest.mem.iter_resident())
        for gpa in range(guest.mem.base, guest.mem.end, 4096):
            try:
                hpa = host.walk(gpa, "p", update_ad=False).pa
            except PageFault:
                continue
            if hpa in frames or hmem.base - 0x10000 < hpa < hmem.end or hpa >> 44:
                raise ValueError(f"guest frame {gpa:#x} cannot be copied to {hpa:#x}")
            level, _pte_pa, pte = host.walk_path(gpa)[-1]
            if level and pte & (hfmt.level_span(level) - 1) & ~(hfmt.granule - 1):
                # QEMU keeps a block's RES0 output bits: it would read this frame elsewhere.
                raise ValueError(f"guest frame {gpa:#x} is under a block with RES0 bits set")
            frames[hpa] = gpa
            if gpa not in resident:
                continue  # zeros in both: Unicorn's unwritten memory reads as zeros
            chunk = hpa & ~0xFFFF
            if chunk not in mapped:
                self.uc.mem_map(chunk, 0x10000)
                mapped.add(chunk)
            self.uc.mem_write(hpa, guest.mem.read(gpa, 4096))
        self.write(SCR_EL3, SCR_RW | SCR_NS)
        self.write(HCR_EL2, HCR_RW | HCR_VM)
        self.write(VTCR_EL2, vtcr_for(hfmt))
        self.write(VTTBR_EL2, host.root)
        self.write(TCR_EL1, tcr_for(gfmt))
        self.write(MAIR_EL1, 0xFF)
        self.write(TTBR0_EL1, guest.root)
        self.write(SCTLR_EL1, self.read(SCTLR_EL1) | SCTLR_M)

    def write(self, reg: tuple[int, int, int, int, int], value: int) -> None:
        op0, op1, crn, crm, op2 = reg
        self.uc.reg_write(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2, value))

    def read(self, reg: tuple[int, int, int, int, int]) -> int:
        op0, op1, crn, crm, op2 = reg
        value: int = self.uc.reg_read(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2))
        return value

    def at(self, va: int, access: str, el0: bool) -> AtResult:
        """Run AT S12E{0,1}{R,W} on ``va`` and decode PAR_EL1."""
        self.write(AT_S12_OPS[access, el0], va)
        return decode_par(self.read(PAR_EL1), va)


class S2Oracle:
    """A Unicorn CPU with stage 1 off (SCTLR_EL1.M = 0: VA = IPA) and stage 2 on, so AT S12E1R/W
    walk only the stage-2 tables of ``fmt`` at ``root`` in ``mem``: any root, concatenated too."""

    def __init__(self, mem: PhysicalMemory, fmt: AArch64Stage2, root: int) -> None:
        self.uc: Any = unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)
        self.uc.mem_map(mem.base, mem.size)
        for frame in mem.iter_resident():
            self.uc.mem_write(frame, mem.read(frame, 4096))
        self.write(SCR_EL3, SCR_RW | SCR_NS)
        self.write(HCR_EL2, HCR_RW | HCR_VM)
        self.write(VTCR_EL2, vtcr_for(fmt))
        self.write(VTTBR_EL2, root)
        self.write(SCTLR_EL1, self.read(SCTLR_EL1) & ~SCTLR_M)

    def write(self, reg: tuple[int, int, int, int, int], value: int) -> None:
        op0, op1, crn, crm, op2 = reg
        self.uc.reg_write(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2, value))

    def read(self, reg: tuple[int, int, int, int, int]) -> int:
        op0, op1, crn, crm, op2 = reg
        value: int = self.uc.reg_read(a64.UC_ARM64_REG_CP_REG, (crn, crm, op0, op1, op2))
        return value

    def at(self, ipa: int, access: str) -> AtResult:
        """Run AT S12E1{R,W} on ``ipa`` and decode PAR_EL1."""
        self.write(AT_S12_OPS[access, False], ipa)
        return decode_par(self.read(PAR_EL1), ipa)
