"""vmopt's page walker against an independent emulator: Unicorn, i.e. QEMU's MMU (issue 2).

"A real CPU or emulator pointed at the same memory and root must translate
every address exactly as vmopt does." Random page tables with 4 KiB, 2 MiB
and 1 GiB pages, mixed rights, user/supervisor and global pages, and some
PTEs corrupted afterwards (rights cleared in upper levels, reserved bits,
cleared present bits, misaligned superpages) are copied into Unicorn's
physical memory; Unicorn's CPU then runs a real load, store or fetch of each
probe address, in supervisor and in user mode, and must agree with
``PageTable.walk``: the same physical address on success, a fault on a fault.

For x86-64 the #PF error code must match vmopt's cause (SDM Vol. 3A 4.7):
``not_present`` <-> P=0; ``protection`` <-> P=1, RSVD=0; ``reserved`` <->
P=1, RSVD=1; and W, U/S and I/D must describe the access. A non-canonical
address raises #GP (vector 13) in the emulator. CR2 must be the address.

For RISC-V the exception cause must be the page fault of the access kind
(12 fetch, 13 load, 15 store); the spec gives no finer reason to compare.

MAXPHYADDR: QEMU's TCG x86 walker treats PTE address bits 40..51 as
reserved (``TCG_PHYS_ADDR_BITS`` = 40, also what CPUID 0x80000008 reports),
so vmopt's format here is ``X86_64(levels, maxphyaddr=40)`` (its default is
46). Half the tables live in memory just below 2**40 (RISC-V: 2**56) so that
every address bit a PTE may hold is used.

The emulated CPU is Icelake-Server, whose CPUID has 1 GiB pages, LA57, SMEP
and SMAP, so 5-level paging and both protections are tested too.

Not compared, on purpose:

- the accessed bits of a walk that faults: QEMU sets A in every upper-level
  entry it reads even when the walk then faults; vmopt sets none. The SDM
  (4.8) ties A to entries "used as part of linear-address translation" and
  does not settle the faulting case, and the issue asks for translations and
  faults. After a successful access the tables must be identical.
- a table that lies outside physical memory: QEMU reads zeros (x86: #PF with
  P=0; RISC-V: page fault), vmopt reports ``table_outside_memory`` (real x86 buses read
  all-ones; RISC-V's spec wants an access fault). Platform behaviour.
- RISC-V encodings newer than QEMU 5.0 (the base of Unicorn 2): PTE bits
  63:54 and D/A/U in non-leaf PTEs are reserved by the current privileged
  spec, so vmopt faults, while QEMU 5.0 ignores them.
- turning a pointer into a large leaf (x86 PS, RISC-V R/X on a non-leaf
  entry): the "page" would be page-table frames, where probe tags cannot go.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest

import unicorn_harness as uh
from vmopt import MappingError, PageFault, PageTable, PhysicalMemory
from vmopt.paging import X86_64, RiscV

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MEM_SIZE = 4 * GiB
#: memory based here puts PTE address bits 32..39 to work (x86: MAXPHYADDR 40)
X86_HIGH_BASE = (1 << 40) - MEM_SIZE
#: and here bits 32..55 for RISC-V (56-bit physical addresses)
RV_HIGH_BASE = (1 << 56) - (1 << 48)
MAXPHYADDR = 40

PF_P, PF_W, PF_U, PF_RSVD, PF_ID = uh.PFEC_P, uh.PFEC_W, uh.PFEC_U, uh.PFEC_RSVD, uh.PFEC_ID


@dataclass
class Space:
    """A random address space: the table, its data pages and its probe addresses."""

    pt: PageTable
    pages: list[tuple[int, int]] = field(default_factory=list)  # (va, size) as mapped
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (pa, size) data pages
    table_frames: list[int] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)


# -- building random tables --------------------------------------------------------

# Index choices per level: few, so that pages share tables and sit next to each
# other (boundaries between page sizes, and between mapped and unmapped, get probed).
TOP_SLOTS = (0, 1, 2, 255, 256, 257, 400, 510)  # 511 is the harness's
LOW_SLOTS = (0, 1, 2, 3, 100, 254, 255, 256, 510, 511)


def _va(fmt: X86_64 | RiscV, indices: list[int]) -> int:
    """The canonical VA whose table indices, from the root down, are ``indices``."""
    va = 0
    for k, ix in enumerate(indices):
        va |= ix << (12 + 9 * (fmt.levels - 1 - k))
    return fmt.canonicalize(va)


def _top_slot(fmt: X86_64 | RiscV, va: int) -> int:
    return (va >> (12 + 9 * (fmt.levels - 1))) & 0x1FF


def build_space(rng: random.Random, pt: PageTable, perm_choices: tuple[str, ...]) -> Space:
    fmt, mem = pt.fmt, pt.mem
    space = Space(pt)
    plan = [(GiB, rng.randint(1, 2)), (2 * MiB, rng.randint(3, 8)), (4 * KiB, rng.randint(12, 30))]
    for size, count in plan:
        level = fmt.level_of_size(size)
        assert level is not None
        for _ in range(count):
            indices = [rng.choice(TOP_SLOTS)]
            indices += [rng.choice(LOW_SLOTS) for _ in range(fmt.levels - 2 - level + 1)]
            va = _va(fmt, indices)
            pa = mem.alloc(size)
            try:
                pt.map(va, pa, size, rng.choice(perm_choices), rng.random() < 0.5, rng.random() < 0.3)
            except MappingError:  # overlaps a page mapped before
                mem.free(pa, size)
                continue
            space.pages.append((va, size))
            space.blocks.append((pa, size))
    space.table_frames = pt.table_frames()
    return space


def entries(space: Space) -> list[tuple[int, int, int, bool]]:
    """Every valid PTE outside the harness's slot: (level, pte_pa, pte, is_leaf)."""
    fmt, mem = space.pt.fmt, space.pt.mem
    out = []

    def visit(table: int, level: int) -> None:
        for idx in range(512):
            if level == fmt.levels - 1 and idx == 511:
                continue
            pte_pa = table + idx * 8
            pte = mem.read_u64(pte_pa)
            if not fmt.is_valid(pte):
                continue
            leaf = fmt.is_leaf(pte, level)
            out.append((level, pte_pa, pte, leaf))
            if not leaf and level > 0:
                visit(fmt.table_pa(pte), level - 1)

    visit(space.pt.root, fmt.levels - 1)
    return out


# x86 PTE bits (SDM Vol. 3A, tables 4-15 to 4-20)
P, RW, US, PWT, PCD, A, D, PS, G = 1, 2, 4, 8, 16, 32, 64, 128, 256
XD = 1 << 63
IGNORED = (9, 10, 11, 52, 53, 54, 55, 56, 57, 58)  # bits no walker may look at (PKE is off)


def mutate_x86(rng: random.Random, space: Space, rate: float) -> None:
    """Corrupt some PTEs directly in memory, as a buggy or hostile guest would."""
    fmt = space.pt.fmt
    assert isinstance(fmt, X86_64)
    mem = space.pt.mem
    for level, pte_pa, pte, leaf in entries(space):
        if rng.random() >= rate:
            continue
        choices = ["clear_p", "high_rsvd", "flip_rw", "flip_us", "flip_xd", "ignored", "ad"]
        if not leaf and (level == fmt.levels - 1 or (fmt.levels == 5 and level == 3)):
            choices.append("ps_top")  # PS must be 0 in a PML5E/PML4E
        if leaf and level > 0:
            choices += ["large_rsvd", "pat"]
        kind = rng.choice(choices)
        if kind == "clear_p":
            new = pte & ~P
        elif kind == "high_rsvd":
            new = pte | 1 << rng.randrange(MAXPHYADDR, 52)
        elif kind == "flip_rw":
            new = pte ^ RW
        elif kind == "flip_us":
            new = pte ^ US
        elif kind == "flip_xd":
            new = pte ^ XD  # reserved when EFER.NXE=0
        elif kind == "ignored":
            new = pte | 1 << rng.choice(IGNORED) | rng.choice((0, PWT, PCD))
        elif kind == "ad":
            new = pte | rng.choice((A, D, A | D))  # D in a non-leaf entry is ignored
        elif kind == "ps_top":
            new = pte | PS
        elif kind == "large_rsvd":  # bits 13..20 of a PDE, 13..29 of a PDPTE
            new = pte | 1 << rng.randrange(13, 21 if level == 1 else 30)
        else:  # "pat": bit 12 of a large leaf is PAT, not an address bit
            new = pte | 1 << 12
        mem.write_u64(pte_pa, new)
        space.mutations.append(f"L{level}{'leaf' if leaf else ''} {kind} @{pte_pa:#x}")


RV_V, RV_R, RV_W, RV_X, RV_U, RV_G, RV_A, RV_D = (1 << i for i in range(8))


def mutate_riscv(rng: random.Random, space: Space, rate: float) -> None:
    """Corrupt some PTEs in ways both the current spec and QEMU 5.0 define alike."""
    mem = space.pt.mem
    for level, pte_pa, pte, leaf in entries(space):
        if rng.random() >= rate:
            continue
        choices = ["clear_v", "rsw", "g"]
        if leaf:
            choices += ["flip_r", "flip_w", "flip_x", "flip_u", "ad"]
            if level > 0:
                choices.append("misaligned")
            else:
                choices.append("pointer")  # R=W=X=0 at the last level: no table below
        kind = rng.choice(choices)
        if kind == "clear_v":
            new = pte & ~RV_V
        elif kind == "rsw":
            new = pte | rng.choice((1 << 8, 1 << 9))  # reserved for software: ignored
        elif kind == "g":
            new = pte | RV_G
        elif kind == "flip_r":
            new = pte ^ RV_R  # may leave W without R, a reserved encoding
        elif kind == "flip_w":
            new = pte ^ RV_W
        elif kind == "flip_x":
            new = pte ^ RV_X
        elif kind == "flip_u":
            new = pte ^ RV_U
        elif kind == "ad":
            new = pte | rng.choice((RV_A, RV_D, RV_A | RV_D))
        elif kind == "pointer":
            new = pte & ~(RV_R | RV_W | RV_X)
        else:  # a PPN bit below the superpage's alignment
            new = pte | 1 << (10 + rng.randrange(9 * level))
        if new & (RV_R | RV_W | RV_X) == 0 and leaf and level > 0:
            new |= RV_X  # stay a leaf: a leaf turned pointer would walk data as a table
        mem.write_u64(pte_pa, new)
        space.mutations.append(f"L{level}{'leaf' if leaf else ''} {kind} @{pte_pa:#x}")


# -- probes ------------------------------------------------------------------------


def probe_addresses(rng: random.Random, space: Space) -> list[int]:
    fmt = space.pt.fmt
    out: set[int] = set()
    for va, size in space.pages:
        out.update({va, va + size - 8, va + rng.randrange(0, size, 8)})
        out.update({(va - 8) % (1 << 64), (va + size) % (1 << 64)})
    for _ in range(40):  # near mapped regions, mostly unmapped
        depth = rng.randrange(1, fmt.levels + 1)
        idx = [rng.choice(TOP_SLOTS)] + [rng.choice(LOW_SLOTS) for _ in range(depth - 1)]
        idx += [rng.randrange(512) for _ in range(fmt.levels - depth)]
        out.add(_va(fmt, idx) | rng.randrange(0, 4096, 8))
    for _ in range(10):
        out.add(fmt.canonicalize(rng.randrange(0, 1 << fmt.va_bits, 8)))
    # Non-canonical: just past each half, a high bit flipped, and for 4 levels an
    # address that would be canonical with 5.
    vb = fmt.va_bits
    out.update({1 << (vb - 1), (1 << 64) - (1 << (vb - 1)) - 8, 1 << 63, 0x00FF_0000_0000_0000})
    out.update({fmt.canonicalize(rng.randrange(1 << vb)) ^ (1 << rng.randrange(vb, 64))})
    # The harness's slot is not part of the test.
    return sorted(va for va in out if not (fmt.is_canonical(va) and _top_slot(fmt, va) == 511))


def vmopt_result(pt: PageTable, va: int, access: str, user: bool) -> int | PageFault:
    try:
        return pt.walk(va, access, user).pa
    except PageFault as fault:
        return fault


def describe(space: Space, va: int, access: str, user: bool) -> str:
    pt = space.pt
    path = "\n".join(
        f"    L{level} @{pte_pa:#x}: {pt.fmt.describe(pte, level)}" for level, pte_pa, pte in pt.walk_path(va)
    )
    mode = "user" if user else "supervisor"
    return f"{pt.fmt!r} {mode} {access} of {va:#x}; walk path:\n{path}"


def expected_x86_error_code(fmt: X86_64, cause: str, access: str, user: bool) -> int:
    """SDM Vol. 3A 4.7 (figure 4-12), for the cause vmopt reports."""
    code = 0 if cause == "not_present" else PF_P
    if cause == "reserved":
        code |= PF_RSVD
    if access == "w":
        code |= PF_W
    if user:
        code |= PF_U
    if access == "x" and (fmt.nxe or fmt.smep):
        code |= PF_ID
    return code


class Tally:
    """Counts of what was compared, so a test can insist it covered every case."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def check_success(
    space: Space,
    emu: uh.X86Emulator | uh.RiscVEmulator,
    ours: int,
    theirs: uh.EmuResult,
    where: Callable[[], str],
) -> None:
    """Same physical address, and afterwards the same A/D bits in every table."""
    assert not theirs.faulted, f"vmopt: pa {ours:#x}, emulator: {theirs}\n{where()}"
    assert theirs.pa == ours, f"vmopt: pa {ours:#x}, emulator: {theirs}\n{where()}"
    diff = emu.frames_differ(space.pt.mem, space.table_frames)
    assert not diff, (
        "accessed/dirty bits differ after a successful access: "
        + ", ".join(f"{pa:#x}: vmopt {a:#x} emulator {b:#x}" for pa, a, b in diff)
        + f"\n{where()}"
    )


def compare_x86(space: Space, emu: uh.X86Emulator, va: int, access: str, user: bool, tally: Tally) -> None:
    pt, fmt = space.pt, space.pt.fmt
    assert isinstance(fmt, X86_64)
    ours = vmopt_result(pt, va, access, user)
    theirs = emu.access(va, access, user)
    where = partial(describe, space, va, access, user)
    if not isinstance(ours, PageFault):
        tally.add("ok")
        check_success(space, emu, ours, theirs, where)
        return
    tally.add(ours.cause)
    assert theirs.faulted, f"vmopt: {ours.cause} fault, emulator: success {theirs}\n{where()}"
    if ours.cause == "non_canonical":
        assert theirs.vector == uh.VEC_GP, f"vmopt: non-canonical, emulator: {theirs}\n{where()}"
    else:
        assert theirs.vector == uh.VEC_PF, f"vmopt: {ours.cause}, emulator: {theirs}\n{where()}"
        assert theirs.fault_addr == va, f"CR2 {theirs.fault_addr:#x}\n{where()}"
        want = expected_x86_error_code(fmt, ours.cause, access, user)
        assert theirs.error_code == want, (
            f"vmopt: {ours.cause} (error code {want:#x} per SDM 4.7),"
            f" emulator: error code {theirs.error_code:#x}\n{where()}"
        )
    # QEMU sets the A bit of each upper-level entry it reads, even when the walk
    # then faults (vmopt does not); start the next probe from vmopt's tables again.
    emu.load(pt.mem, space.table_frames)


def compare_riscv(
    space: Space, emu: uh.RiscVEmulator, va: int, access: str, user: bool, tally: Tally
) -> None:
    pt = space.pt
    ours = vmopt_result(pt, va, access, user)
    theirs = emu.access(va, access, user)
    where = partial(describe, space, va, access, user)
    if not isinstance(ours, PageFault):
        tally.add("ok")
        check_success(space, emu, ours, theirs, where)
        return
    tally.add(ours.cause)
    assert theirs.vector == uh.RV_PF_CAUSE[access], f"vmopt: {ours.cause}, emulator: {theirs}\n{where()}"
    emu.load(pt.mem, space.table_frames)


# -- the tests ------------------------------------------------------------------------

# (levels, nxe, wp, smep, smap, high memory)
X86_CONFIGS = [
    (4, True, True, False, False, False),
    (4, True, True, False, False, True),
    (5, True, True, False, False, False),
    (5, True, True, False, False, True),
    (4, False, True, False, False, False),
    (4, True, False, False, False, True),
    (4, True, True, True, True, False),
    (5, True, False, True, False, True),
    (4, True, True, False, True, True),
    (5, False, False, True, True, False),
]
X86_SEEDS = range(len(X86_CONFIGS) * 2)


@pytest.fixture(scope="module")
def error_code_offset() -> int:
    return uh.error_code_offset()


def make_x86(seed: int, error_code_offset: int) -> tuple[Space, uh.X86Emulator, random.Random]:
    levels, nxe, wp, smep, smap, high = X86_CONFIGS[seed % len(X86_CONFIGS)]
    rng = random.Random(seed)
    base = X86_HIGH_BASE if high else 0
    mem = PhysicalMemory(MEM_SIZE, base=base)
    fmt = X86_64(levels, maxphyaddr=MAXPHYADDR, nxe=nxe, wp=wp, smep=smep, smap=smap)
    pt = PageTable(mem, fmt)
    uh.install_x86_harness(pt)
    perms = ("r", "rw", "rx", "rwx") if nxe else ("rx", "rwx")
    space = build_space(rng, pt, perms)
    mutate_x86(rng, space, rate=0.12)
    emu = uh.X86Emulator(MEM_SIZE, base=base, levels=levels, nxe=nxe, wp=wp, smep=smep, smap=smap)
    emu.error_code_offset = error_code_offset
    emu.load(mem)
    emu.set_data_blocks(space.blocks)
    emu.start(pt.root)
    return space, emu, rng


@pytest.mark.parametrize("seed", X86_SEEDS)
def test_x86_walks_agree_with_unicorn(seed: int, error_code_offset: int) -> None:
    space, emu, rng = make_x86(seed, error_code_offset)
    tally = Tally()
    for va in probe_addresses(rng, space):
        for access in "rwx":
            for user in (False, True):
                compare_x86(space, emu, va, access, user, tally)
    # Every seed must exercise successes and the common faults.
    for key in ("ok", "not_present", "protection", "non_canonical"):
        assert tally.counts.get(key), f"seed {seed} compared no {key}: {tally.counts}"


def test_x86_every_reserved_bit_kind() -> None:
    """Directed: each reserved-bit rule of SDM tables 4-15..4-20, at each level it applies to."""
    offset = uh.error_code_offset()
    for levels in (4, 5):
        for nxe in (True, False):
            mem = PhysicalMemory(MEM_SIZE, base=X86_HIGH_BASE)
            fmt = X86_64(levels, maxphyaddr=MAXPHYADDR, nxe=nxe)
            pt = PageTable(mem, fmt)
            uh.install_x86_harness(pt)
            space = Space(pt)
            perms = "rwx" if not nxe else "rw"
            for va, size in ((0x4000_0000, GiB), (0x20_0000, 2 * MiB), (0x1000, 4 * KiB)):
                pa = mem.alloc(size)
                pt.map(va, pa, size, perms, user=True)
                space.pages.append((va, size))
                space.blocks.append((pa, size))
            space.table_frames = pt.table_frames()
            emu = uh.X86Emulator(MEM_SIZE, base=X86_HIGH_BASE, levels=levels, nxe=nxe)
            emu.error_code_offset = offset
            emu.load(mem)
            emu.set_data_blocks(space.blocks)
            emu.start(pt.root)
            tally = Tally()
            for level, pte_pa, pte, leaf in entries(space):
                bits = [*range(MAXPHYADDR, 52), 63]  # reserved anywhere; 63 unless NXE
                if not leaf and level >= 3:
                    bits.append(7)  # PS in a PML4E or PML5E
                elif leaf and level:
                    bits += range(12, 21 if level == 1 else 30)  # PAT, then reserved
                elif leaf:
                    bits.append(7)  # PAT of a 4 KiB PTE: not reserved
                for bit in bits:
                    mem.write_u64(pte_pa, pte | 1 << bit)
                    emu.load(mem, [pte_pa & ~0xFFF])
                    for va, _size in space.pages:
                        for access in "rwx":
                            compare_x86(space, emu, va + 0x18, access, False, tally)
                    mem.write_u64(pte_pa, pte)
                    emu.load(mem, [pte_pa & ~0xFFF])
            assert tally.counts.get("reserved", 0) > 50, tally.counts


# (levels, sum, mxr, high memory)
RV_CONFIGS = [
    (3, False, False, False),
    (4, False, False, True),
    (3, True, False, True),
    (4, False, True, False),
    (3, True, True, False),
    (4, True, True, True),
    (5, False, False, True),
    (5, True, True, False),
]
RV_SEEDS = range(100, 100 + len(RV_CONFIGS) * 2)


def make_riscv(seed: int) -> tuple[Space, uh.RiscVEmulator, random.Random]:
    levels, sum_, mxr, high = RV_CONFIGS[seed % len(RV_CONFIGS)]
    rng = random.Random(seed)
    base = RV_HIGH_BASE if high else 0
    mem = PhysicalMemory(MEM_SIZE, base=base)
    pt = PageTable(mem, RiscV(levels, sum=sum_, mxr=mxr))
    uh.install_riscv_harness(pt)
    space = build_space(rng, pt, ("r", "rw", "x", "rx", "rwx"))
    mutate_riscv(rng, space, rate=0.2)
    emu = uh.RiscVEmulator(MEM_SIZE, base=base, levels=levels, sum=sum_, mxr=mxr)
    emu.load(mem)
    emu.set_data_blocks(space.blocks)
    emu.start(pt.root)
    return space, emu, rng


@pytest.mark.parametrize("seed", RV_SEEDS)
def test_riscv_walks_agree_with_unicorn(seed: int) -> None:
    space, emu, rng = make_riscv(seed)
    tally = Tally()
    for va in probe_addresses(rng, space):
        for access in "rwx":
            for user in (False, True):
                compare_riscv(space, emu, va, access, user, tally)
    for key in ("ok", "not_present", "protection", "non_canonical"):
        assert tally.counts.get(key), f"seed {seed} compared no {key}: {tally.counts}"


# -- the harness itself ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "sv39"])
def test_emulator_rewalks_after_a_pte_change(arch: str) -> None:
    """QEMU's TLB must not hide a PTE change between probes (or nothing here is tested)."""
    mem = PhysicalMemory(64 * MiB)
    emu: uh.X86Emulator | uh.RiscVEmulator
    if arch == "x86_64":
        pt = PageTable(mem, X86_64(4, maxphyaddr=MAXPHYADDR))
        uh.install_x86_harness(pt)
        emu = uh.X86Emulator(64 * MiB)
        emu.error_code_offset = uh.error_code_offset()
    else:
        pt = PageTable(mem, "sv39")
        uh.install_riscv_harness(pt)
        emu = uh.RiscVEmulator(64 * MiB, levels=3)
    frame = mem.alloc()
    pt.map(0x7000, frame, 4096, "rw")
    emu.load(mem)
    emu.set_data_blocks([(frame, 4096)])
    emu.start(pt.root)
    assert emu.access(0x7008, "r", False).pa == frame + 8
    leaf = pt.lookup(0x7000)
    assert leaf is not None
    emu.write_u64(leaf.pte_pa, 0)  # unmapped behind the emulator's back
    assert emu.access(0x7008, "r", False).faulted
    assert emu.access(0x7008, "w", False).faulted


def test_error_code_calibration_is_unique() -> None:
    assert uh.error_code_offset() > 0


def test_sv57_worked_walk_matches_the_spec_and_unicorn() -> None:
    """A five-level chain written PTE by PTE from the privileged spec (Sv57, section 12.6), walked by both.

    VA 0x00ff_ffff_ffff_f018 has VPN[4..0] = 255, 511, 511, 511, 511 and bit 56
    clear (canonical: bits 63:57 equal bit 56). Each non-leaf PTE is
    ``PPN << 10 | V``; the leaf ``PPN << 10 | D A R V`` (0xc3). A leaf in the
    root (level 4) maps a 256 TiB superpage, which needs PPN[3:0] = 0.
    """
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv57", update_ad=False)
    uh.install_riscv_harness(pt)
    frame = mem.alloc()
    tables = [pt.root] + [mem.alloc() for _ in range(4)]
    va = 0x00FF_FFFF_FFFF_F018
    assert [(va >> (12 + 9 * i)) & 0x1FF for i in (4, 3, 2, 1, 0)] == [255, 511, 511, 511, 511]
    for parent, child, index in zip(tables[:-1], tables[1:], (255, 511, 511, 511), strict=True):
        mem.write_u64(parent + index * 8, (child >> 12) << 10 | 0x1)
    mem.write_u64(tables[4] + 511 * 8, (frame >> 12) << 10 | 0xC3)
    # A 256 TiB superpage at PA 0 in root slot 1, and a misaligned one (PPN 1) in slot 2.
    mem.write_u64(pt.root + 1 * 8, 0xC7)
    mem.write_u64(pt.root + 2 * 8, 1 << 10 | 0xC7)
    emu = uh.RiscVEmulator(64 * MiB, levels=5)
    emu.load(mem)
    emu.set_data_blocks([(frame, uh.PAGE)])
    emu.start(pt.root)

    t = pt.walk(va, "r")
    assert (t.pa, t.memory_refs, t.level, t.page_size) == (frame + 0x18, 5, 0, uh.PAGE)
    assert emu.access(va, "r", False).pa == frame + 0x18
    assert emu.access(va, "w", False).faulted
    with pytest.raises(PageFault) as fault:
        pt.walk(va, "w")
    assert (fault.value.cause, fault.value.level) == ("protection", 0)

    big = (1 << 48) + frame + 0x18
    t = pt.walk(big, "w")
    assert (t.pa, t.memory_refs, t.level, t.page_size) == (frame + 0x18, 1, 4, 256 << 40)
    assert emu.access(big, "w", False).pa == frame + 0x18
    with pytest.raises(PageFault) as fault:
        pt.walk((2 << 48) + 0x18, "r")
    assert (fault.value.cause, fault.value.level) == ("misaligned", 4)
    assert emu.access((2 << 48) + 0x18, "r", False).faulted
    # Bit 56 set with bits 63:57 clear is not canonical; sign-extended it is the upper half.
    with pytest.raises(PageFault) as fault:
        pt.walk(1 << 56, "r")
    assert (fault.value.cause, fault.value.level) == ("non_canonical", None)
    assert emu.access(1 << 56, "r", False).faulted
    assert pt.fmt.canonicalize(1 << 56) == 0xFF00_0000_0000_0000
