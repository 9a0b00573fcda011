"""Drive Unicorn (QEMU's own MMUs) on page tables that vmopt built in guest memory.

Unicorn emulates a CPU with QEMU's TCG, including QEMU's x86-64 and RISC-V
page walkers (``target/i386/excp_helper.c``, ``target/riscv/cpu_helper.c``).
Its ``mem_map`` regions are the guest *physical* address space, so copying
vmopt's resident frames to the same physical addresses and pointing CR3 (or
satp) at vmopt's root gives the emulator exactly the tables vmopt walks.

Each probe runs one real instruction: a load, a store, or a fetch at the
probed address. How the emulator's translation is observed:

- **faults**: Unicorn does not deliver exceptions through the guest's IDT; it
  hands them to a ``UC_HOOK_INTR`` hook (x86: vector 14 #PF, 13 #GP; RISC-V:
  the exception cause). The x86 #PF error code is not exposed as a register,
  so :func:`_calibrate_error_code` finds ``env->error_code`` in the saved CPU
  context once, from faults whose error codes the SDM fixes (hand-built
  tables, independent of vmopt).
- **successes**: the physical address is read back from the data, not from
  any Unicorn API: before a load, every physical data page ``B`` of size
  ``S`` gets a tag at ``B + (va mod S)`` that encodes that physical address;
  a store's value is searched for at those places afterwards; a fetch
  executes an instruction planted there (x86 ``mov eax, imm32``, RISC-V
  ``lui a0, imm``) whose immediate names the place.

Privilege: x86 CPL 3 is entered with SYSRETQ (which loads flat segments
without a GDT) and saved as a context; RISC-V S- and U-mode are set through
Unicorn's ``UC_RISCV_REG_PRIV``.

All helpers live here, not in ``src/``: they exist only to test vmopt.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

import unicorn
from unicorn import riscv_const as rv
from unicorn import x86_const as x86

from vmopt import PageTable, PhysicalMemory

PAGE = 4096
_U64 = struct.Struct("<Q")

# x86-64 architectural bits (SDM Vol. 3A 2.5, 4.5, 4.7).
CR0_PE, CR0_WP, CR0_PG = 1 << 0, 1 << 16, 1 << 31
CR4_PAE, CR4_LA57, CR4_SMEP, CR4_SMAP = 1 << 5, 1 << 12, 1 << 20, 1 << 21
MSR_EFER, MSR_STAR = 0xC0000080, 0xC0000081
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11
PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_ID = 1, 2, 4, 8, 16
VEC_GP, VEC_PF = 13, 14

# RISC-V page-fault exception causes (privileged spec, scause table).
RV_FETCH_PF, RV_LOAD_PF, RV_STORE_PF = 12, 13, 15
RV_PF_CAUSE = {"x": RV_FETCH_PF, "r": RV_LOAD_PF, "w": RV_STORE_PF}

#: tag written at a candidate physical address for loads: TAG | pa (pa < 2**56)
READ_TAG = 0x5A << 56
#: value stored by the store probe
WRITE_VALUE = 0xC3A5_96E1_0F1E_2D3C
#: marker in the immediate of the planted fetch instruction
FETCH_MARK = 0x7E00_0000

# The harness's own pages sit in the last top-level slot, which random tables
# leave alone: the very last pages of the address space.
KCODE_VA = (1 << 64) - 2 * PAGE
UCODE_VA = (1 << 64) - PAGE
STORE_OFFSET = 0x10  # the store stub's offset in a code page


def flush_tlb(uc: Any) -> None:
    """Empty QEMU's TLB, so the next access walks the tables in memory again."""
    uc.ctl(unicorn.UC_CTL_TLB_FLUSH, unicorn.UC_CTL_IO_WRITE)


@dataclass(frozen=True)
class EmuResult:
    """What the emulator did for one probe."""

    pa: int | None = None  # physical address accessed, on success
    vector: int | None = None  # exception vector (x86) or cause (RISC-V) on a fault
    fault_addr: int | None = None  # CR2 for an x86 #PF
    error_code: int | None = None  # x86 #PF error code
    note: str = ""  # why a success could not be attributed to a physical address

    @property
    def faulted(self) -> bool:
        return self.vector is not None


class _Emulator:
    """What the x86 and RISC-V drivers share: memory, tags, one-instruction runs."""

    uc: Any
    _ints: list[int]

    def __init__(self, mem_size: int, base: int) -> None:
        self.mem_size = mem_size
        self.base = base
        self.blocks: list[tuple[int, int]] = []

    # -- memory -------------------------------------------------------------------

    def write_u64(self, pa: int, value: int) -> None:
        self.uc.mem_write(pa, _U64.pack(value))

    def read_u64(self, pa: int) -> int:
        return int(_U64.unpack(self.uc.mem_read(pa, 8))[0])

    def load(self, mem: PhysicalMemory, frames: list[int] | None = None) -> None:
        """Copy vmopt's frames (all resident ones by default) to the same physical addresses."""
        for pa in mem.iter_resident() if frames is None else frames:
            self.uc.mem_write(pa, mem.read(pa, PAGE))

    def frames_differ(self, mem: PhysicalMemory, frames: list[int]) -> list[tuple[int, int, int]]:
        """``[(pa, vmopt word, emulator word)]`` for every 8-byte word that differs."""
        out = []
        for frame in frames:
            ours, theirs = mem.read(frame, PAGE), bytes(self.uc.mem_read(frame, PAGE))
            if ours != theirs:
                for off in range(0, PAGE, 8):
                    a, b = ours[off : off + 8], theirs[off : off + 8]
                    if a != b:
                        out.append((frame + off, _U64.unpack(a)[0], _U64.unpack(b)[0]))
        return out

    def set_data_blocks(self, blocks: list[tuple[int, int]]) -> None:
        """The physical data pages ``[(pa, size)]`` a probe may land in (tags go there)."""
        self.blocks = sorted(blocks)

    def _candidates(self, va: int, align: int) -> list[int]:
        return [b + (va & (s - 1) & ~(align - 1)) for b, s in self.blocks]

    # -- one probe ----------------------------------------------------------------

    def _prepare(self, user: bool) -> None:
        raise NotImplementedError

    def _set_operands(self, va: int) -> None:
        raise NotImplementedError

    def _result_reg(self) -> int:
        raise NotImplementedError

    def _fault(self) -> EmuResult:
        raise NotImplementedError

    @staticmethod
    def _until(user: bool) -> int:
        # Unicorn translates the byte before ``until`` when it starts (to drop
        # cached code there): it must be an address this mode may fetch, or
        # the CPU is left with a swallowed #PF (the next one becomes #DF).
        return (UCODE_VA if user else KCODE_VA) + 0x800

    def _stub(self, access: str, user: bool) -> int:
        base = UCODE_VA if user else KCODE_VA
        return base + (STORE_OFFSET if access == "w" else 0)

    def access(self, va: int, access: str, user: bool) -> EmuResult:
        """Run one load (``'r'``), store (``'w'``) or fetch (``'x'``) of ``va``."""
        if access == "x":
            cands = self._candidates(va, 1)
            for i, p in enumerate(cands):
                self.uc.mem_write(p, self._fetch_insn(i))
            self.uc.ctl_flush_tb()  # the planted code changed under QEMU's TB cache
        else:
            cands = self._candidates(va, 8)
            for p in cands:
                self.write_u64(p, READ_TAG | p if access == "r" else 0)
        self._prepare(user)
        self._set_operands(va)
        start = va if access == "x" else self._stub(access, user)
        self._ints.clear()
        err = None
        try:
            self.uc.emu_start(start, self._until(user), count=1)
        except unicorn.UcError as e:
            err = e
        result: EmuResult
        if self._ints:
            result = self._fault()
        elif err is not None:
            result = EmuResult(vector=-1, note=f"unicorn error: {err}")
        else:
            result = self._identify(access, cands)
        # Leave the data pages clean for the next probe.
        blank = bytes(len(self._fetch_insn(0))) if access == "x" else bytes(8)
        for p in cands:
            self.uc.mem_write(p, blank)
        return result

    def _identify(self, access: str, cands: list[int]) -> EmuResult:
        value = self._result_reg()
        if access == "r":
            if value >> 56 == READ_TAG >> 56:
                return EmuResult(pa=value & ((1 << 56) - 1))
            return EmuResult(note=f"load returned untagged {value:#x}")
        if access == "w":
            hits = [p for p in cands if self.read_u64(p) == WRITE_VALUE]
            if len(hits) == 1:
                return EmuResult(pa=hits[0])
            return EmuResult(note=f"store landed at {len(hits)} tagged places")
        i = self._fetch_index(value)
        if i is not None and i < len(cands):
            return EmuResult(pa=cands[i])
        return EmuResult(note=f"fetch executed something else (result {value:#x})")

    def _fetch_insn(self, i: int) -> bytes:
        """One instruction that leaves a value naming candidate ``i`` in the result register."""
        raise NotImplementedError

    def _fetch_index(self, value: int) -> int | None:
        """The ``i`` whose planted instruction left ``value``, or None."""
        raise NotImplementedError


class X86Emulator(_Emulator):
    """An x86-64 CPU in long mode with 4- or 5-level paging, CPL 0 or 3."""

    def __init__(
        self,
        mem_size: int,
        *,
        base: int = 0,
        levels: int = 4,
        nxe: bool = True,
        wp: bool = True,
        smep: bool = False,
        smap: bool = False,
    ) -> None:
        super().__init__(mem_size, base)
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        # Icelake-Server has SMEP, SMAP, LA57 and 1 GiB pages in its CPUID.
        uc.ctl_set_cpu_model(x86.UC_CPU_X86_ICELAKE_SERVER)
        uc.ctl_set_tlb_mode(unicorn.UC_TLB_CPU)  # QEMU's page walker, not a hook
        uc.mem_map(base, mem_size)
        self.uc = uc
        self.levels = levels
        self._ints = []
        self._ctx = uc.context_save()
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        self.efer = EFER_SCE | EFER_LME | EFER_LMA | (EFER_NXE if nxe else 0)
        self.cr0 = CR0_PE | CR0_PG | (CR0_WP if wp else 0)
        self.cr4_bits = (
            CR4_PAE | (CR4_LA57 if levels == 5 else 0) | (CR4_SMEP if smep else 0) | (CR4_SMAP if smap else 0)
        )
        self.root = 0
        self.error_code_offset: int | None = None
        self._kctx: Any = None
        self._uctx: Any = None

    @staticmethod
    def code_page() -> bytes:
        """The stubs: ``mov rax,[rbx]; hlt`` at 0 and ``mov [rbx],rax; hlt`` at 0x10."""
        page = bytearray(PAGE)
        page[0:4] = bytes.fromhex("488b03f4")
        page[STORE_OFFSET : STORE_OFFSET + 4] = bytes.fromhex("488903f4")
        page[0x20:0x23] = bytes.fromhex("480f07")  # sysretq, to enter CPL 3
        return bytes(page)

    def _fetch_insn(self, i: int) -> bytes:
        return b"\xb8" + struct.pack("<I", FETCH_MARK | i) + b"\xf4"  # mov eax, imm32; hlt

    def _fetch_index(self, value: int) -> int | None:
        value &= 0xFFFF_FFFF
        return value & 0xFFFFFF if value & 0xFF00_0000 == FETCH_MARK else None

    def _on_interrupt(self, uc: Any, intno: int, _data: Any) -> None:
        self._ints.append(intno)
        uc.context_update(self._ctx)
        uc.emu_stop()

    def start(self, root: int) -> None:
        """Turn paging on with CR3 = ``root`` and save CPL-0 and CPL-3 contexts.

        The code pages at ``KCODE_VA`` and ``UCODE_VA`` must already be mapped
        (supervisor and user, executable) and loaded.
        """
        uc = self.uc
        self.root = root
        uc.reg_write(x86.UC_X86_REG_MSR, (MSR_EFER, self.efer))
        uc.reg_write(x86.UC_X86_REG_MSR, (MSR_STAR, 0x10 << 48 | 0x08 << 32))
        cr4 = uc.reg_read(x86.UC_X86_REG_CR4) | self.cr4_bits
        uc.reg_write(x86.UC_X86_REG_CR4, cr4)
        uc.reg_write(x86.UC_X86_REG_CR3, root)
        uc.reg_write(x86.UC_X86_REG_CR0, self.cr0)
        if uc.reg_read(x86.UC_X86_REG_CR4) & self.cr4_bits != self.cr4_bits:
            raise RuntimeError(f"emulator refused CR4 bits {self.cr4_bits:#x}")
        self._kctx = uc.context_save()
        # SYSRET loads a flat CPL-3 code segment without reading a GDT.
        uc.reg_write(x86.UC_X86_REG_RCX, UCODE_VA)
        uc.reg_write(x86.UC_X86_REG_R11, 0x2)
        self._ints.clear()
        uc.emu_start(KCODE_VA + 0x20, self._until(True), count=1)
        if self._ints or uc.reg_read(x86.UC_X86_REG_RIP) != UCODE_VA:
            raise RuntimeError("could not enter CPL 3 with sysretq")
        if uc.reg_read(x86.UC_X86_REG_CS) & 3 != 3:
            raise RuntimeError("sysretq did not give CPL 3")
        self._uctx = uc.context_save()

    def _prepare(self, user: bool) -> None:
        # A fresh context each probe: QEMU remembers the last exception (a second
        # #PF would become #DF) because Unicorn never delivers it.
        self.uc.context_restore(self._uctx if user else self._kctx)
        self.uc.reg_write(x86.UC_X86_REG_CR3, self.root)  # flushes QEMU's TLB
        flush_tlb(self.uc)  # and so does this, to be sure

    def _set_operands(self, va: int) -> None:
        self.uc.reg_write(x86.UC_X86_REG_RBX, va)
        self.uc.reg_write(x86.UC_X86_REG_RAX, WRITE_VALUE)

    def _result_reg(self) -> int:
        return int(self.uc.reg_read(x86.UC_X86_REG_RAX))

    def _fault(self) -> EmuResult:
        vector = self._ints[0]
        if vector != VEC_PF:
            return EmuResult(vector=vector)
        code = None
        if self.error_code_offset is not None:
            raw = ctypes.string_at(self._ctx.context, self._ctx.size)
            code = struct.unpack_from("<i", raw, self.error_code_offset)[0]
        return EmuResult(
            vector=vector,
            fault_addr=int(self._ctx.reg_read(x86.UC_X86_REG_CR2)),
            error_code=code,
        )


def _calibrate_error_code(mem_size: int = 16 << 20) -> int:
    """Find ``env->error_code`` in Unicorn's saved x86 context.

    Hand-built tables (no vmopt code) give faults whose error codes the SDM
    fixes (4.7); the one 32-bit field that holds each of them is it.
    """
    emu = X86Emulator(mem_size)
    p, rw, us, xd = 1, 2, 4, 1 << 63
    w = emu.write_u64
    # PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000, all granting everything;
    # the code pages at the top of the address space use PML4[511] -> 0x5000 -> ...
    w(0x1000, 0x2000 | p | rw | us)
    w(0x2000, 0x3000 | p | rw | us)
    w(0x3000, 0x4000 | p | rw | us)
    w(0x1000 + 511 * 8, 0x5000 | p | rw | us)
    w(0x5000 + 511 * 8, 0x6000 | p | rw | us)
    w(0x6000 + 511 * 8, 0x7000 | p | rw | us)
    w(0x7000 + 510 * 8, 0x10000 | p)  # KCODE
    w(0x7000 + 511 * 8, 0x11000 | p | us)  # UCODE
    emu.uc.mem_write(0x10000, X86Emulator.code_page())
    emu.uc.mem_write(0x11000, X86Emulator.code_page())
    w(0x4000 + 1 * 8, 0x20000 | p)  # 0x1000: supervisor, read-only
    w(0x4000 + 2 * 8, 0x21000 | p | us | xd)  # 0x2000: user, read-only, XD
    w(0x4000 + 3 * 8, 0x22000 | p | rw | us | (1 << 45))  # 0x3000: reserved bit 45
    emu.start(0x1000)
    cases = [  # (va, access, user, error code per SDM 4.7)
        (0x9000, "r", False, 0),
        (0x9000, "w", True, PFEC_W | PFEC_U),
        (0x1000, "w", False, PFEC_P | PFEC_W),
        (0x1000, "r", True, PFEC_P | PFEC_U),
        (0x2000, "x", True, PFEC_P | PFEC_U | PFEC_ID),
        (0x3000, "w", False, PFEC_P | PFEC_W | PFEC_RSVD),
        (0x3000, "x", True, PFEC_P | PFEC_U | PFEC_RSVD | PFEC_ID),
    ]
    raws = []
    for va, acc, user, code in cases:
        res = emu.access(va, acc, user)
        if res.vector != VEC_PF or res.fault_addr != va:
            raise RuntimeError(f"calibration probe {va:#x} {acc} user={user} gave {res}")
        raws.append((ctypes.string_at(emu._ctx.context, emu._ctx.size), code))
    size = len(raws[0][0])
    offsets = [
        off
        for off in range(0, size - 3, 4)
        if all(struct.unpack_from("<i", raw, off)[0] == code for raw, code in raws)
    ]
    if len(offsets) != 1:
        raise RuntimeError(f"cannot locate the #PF error code in Unicorn's context: {offsets}")
    return offsets[0]


_ERROR_CODE_OFFSET: int | None = None


def error_code_offset() -> int:
    """The calibrated offset (computed once per process)."""
    global _ERROR_CODE_OFFSET
    if _ERROR_CODE_OFFSET is None:
        _ERROR_CODE_OFFSET = _calibrate_error_code()
    return _ERROR_CODE_OFFSET


def install_x86_harness(pt: PageTable) -> tuple[int, int]:
    """Map the two code pages into ``pt`` (they come from its memory); return their frames."""
    mem = pt.mem
    kframe, uframe = mem.alloc(PAGE), mem.alloc(PAGE)
    mem.write(kframe, X86Emulator.code_page())
    mem.write(uframe, X86Emulator.code_page())
    pt.map(KCODE_VA, kframe, PAGE, "rx", user=False)
    pt.map(UCODE_VA, uframe, PAGE, "rx", user=True)
    # Walk them once so their A bits are set: the emulator's stub fetches then
    # change nothing that vmopt's walks would not.
    pt.walk(KCODE_VA, "x")
    pt.walk(UCODE_VA, "x", user=True)
    return kframe, uframe


# -- RISC-V -----------------------------------------------------------------------

SATP_MODE = {3: 8, 4: 9, 5: 10}  # Sv39, Sv48, Sv57
MSTATUS_SUM, MSTATUS_MXR = 1 << 18, 1 << 19


class RiscVEmulator(_Emulator):
    """An RV64 hart in S-mode or U-mode with Sv39, Sv48 or Sv57 translation."""

    def __init__(
        self,
        mem_size: int,
        *,
        base: int = 0,
        levels: int = 3,
        sum: bool = False,
        mxr: bool = False,
    ) -> None:
        super().__init__(mem_size, base)
        uc = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
        uc.ctl_set_tlb_mode(unicorn.UC_TLB_CPU)
        uc.mem_map(base, mem_size)
        self.uc = uc
        self.levels = levels
        self._ints = []
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        self.satp = 0
        self.mstatus_bits = (MSTATUS_SUM if sum else 0) | (MSTATUS_MXR if mxr else 0)

    @staticmethod
    def code_page() -> bytes:
        """``ld a0,0(a1)`` at 0 and ``sd a2,0(a1)`` at 0x10 (a0=x10, a1=x11, a2=x12)."""
        page = bytearray(PAGE)
        ld = (0 << 20) | (11 << 15) | (3 << 12) | (10 << 7) | 0x03
        sd = (12 << 20) | (11 << 15) | (3 << 12) | (0 << 7) | 0x23
        page[0:4] = struct.pack("<I", ld)
        page[STORE_OFFSET : STORE_OFFSET + 4] = struct.pack("<I", sd)
        return bytes(page)

    def _fetch_insn(self, i: int) -> bytes:
        # lui a0, (FETCH_MARK >> 12) | i: a0 = FETCH_MARK | i << 12 (one instruction,
        # as only one runs)
        return struct.pack("<I", ((FETCH_MARK >> 12 | i) << 12) | (10 << 7) | 0x37)

    def _fetch_index(self, value: int) -> int | None:
        if value >> 24 != FETCH_MARK >> 24:
            return None
        return (value >> 12) & 0xFFF

    def _on_interrupt(self, uc: Any, intno: int, _data: Any) -> None:
        self._ints.append(intno)
        uc.emu_stop()

    def start(self, root: int) -> None:
        uc = self.uc
        self.satp = (SATP_MODE[self.levels] << 60) | (root >> 12)
        ms = uc.reg_read(rv.UC_RISCV_REG_MSTATUS)
        uc.reg_write(rv.UC_RISCV_REG_MSTATUS, ms | self.mstatus_bits)
        uc.reg_write(rv.UC_RISCV_REG_SATP, self.satp)
        if uc.reg_read(rv.UC_RISCV_REG_SATP) != self.satp:
            raise RuntimeError("emulator refused satp")

    def _prepare(self, user: bool) -> None:
        self.uc.reg_write(rv.UC_RISCV_REG_PRIV, 0 if user else 1)
        flush_tlb(self.uc)

    def _set_operands(self, va: int) -> None:
        self.uc.reg_write(rv.UC_RISCV_REG_A1, va)
        self.uc.reg_write(rv.UC_RISCV_REG_A2, WRITE_VALUE)
        self.uc.reg_write(rv.UC_RISCV_REG_A0, 0)

    def _result_reg(self) -> int:
        return int(self.uc.reg_read(rv.UC_RISCV_REG_A0))

    def _fault(self) -> EmuResult:
        return EmuResult(vector=self._ints[0])


def install_riscv_harness(pt: PageTable) -> tuple[int, int]:
    """Map RISC-V code pages at ``KCODE_VA`` (S) and ``UCODE_VA`` (U) into ``pt``."""
    mem = pt.mem
    kframe, uframe = mem.alloc(PAGE), mem.alloc(PAGE)
    mem.write(kframe, RiscVEmulator.code_page())
    mem.write(uframe, RiscVEmulator.code_page())
    pt.map(KCODE_VA, kframe, PAGE, "rx", user=False)
    pt.map(UCODE_VA, uframe, PAGE, "rx", user=True)
    pt.walk(KCODE_VA, "x")
    pt.walk(UCODE_VA, "x", user=True)
    return kframe, uframe
