"""vmopt against QEMU's own page walks on real Linux guest dumps (tests/data/dumps).

Each capture is a Debian 6.1 kernel booted under QEMU TCG and stopped at a
marker line (tools/capture-dumps/capture.py; how is in
tests/data/dumps/README.md). For every capture and vCPU, the page-table root
is CR3 from QEMU's ``info registers`` and the paging mode CR4.LA57, and
vmopt's raw-image path (``PageTable.attach`` on ``guest.raw``, and
``vmopt inspect``) must give exactly QEMU's answers:

- every saved ``gva2gpa`` line: the same physical address, or a PageFault
  for ``Unmapped``;
- ``info mem``: vmopt's coalesced listing, merged by QEMU's rule (see
  tests/qemu_monitor.py), equals it range for range;
- ``info tlb``: vmopt's leaves are QEMU's leaves, PTE flag for PTE flag.

The ELF dump's PT_LOAD bytes must equal the raw image's bytes, read with a
small test-only ELF parser (struct), so the formats of one capture carry
identical bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import lzma
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from qemu_monitor import (
    CpuRegisters,
    MemRange,
    TlbEntry,
    parse_gva2gpa,
    parse_info_mem,
    parse_info_registers,
    parse_info_tlb,
)
from vmopt import PageFault, PageTable, PhysicalMemory
from vmopt.cli.main import main as vmopt_main

#: Every test but the parser ones unpacks ~1.1 GB once (20-30 s on a loaded 2-core machine).
dumps = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "dumps"
ARCHIVE = DATA / "dumps.tar.xz"
CAPTURES = sorted(p.parent.name for p in DATA.glob("*/capture.json"))
#: CR3 bits 51:12 hold the root table's address (the rest: PCID/PWT/PCD, LAM, no-flush).
CR3_ADDRESS = ((1 << 52) - 1) & ~0xFFF

#: The PTE bits info tlb prints, in its order: NX, G, PS, D, A, PCD, PWT, U, W.
_TLB_BITS = (1 << 63, 1 << 8, 1 << 7, 1 << 6, 1 << 5, 1 << 4, 1 << 3, 1 << 2, 1 << 1)
_PS = 1 << 7
#: info tlb's address masks per leaf level (bits 49:12, 49:21, 49:30): QEMU reads 50-bit addresses.
_QEMU_PA_MASK = {0: 0x3FFFFFFFFF000, 1: 0x3FFFFFFE00000, 2: 0x3FFFFC0000000}


@dataclass(frozen=True)
class Capture:
    """One capture's metadata, QEMU text outputs and the path of its unpacked dumps."""

    name: str
    meta: dict[str, object]
    dumps: Path

    def text(self, name: str) -> str:
        return lzma.decompress((DATA / self.name / f"{name}.xz").read_bytes()).decode()

    @property
    def cpus(self) -> list[CpuRegisters]:
        return parse_info_registers(self.text("info-registers.txt"))

    @property
    def raw(self) -> Path:
        return self.dumps / "guest.raw"

    @property
    def elf(self) -> Path:
        return self.dumps / "guest.elf"


def _dumppack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dumppack", DATA / "dumppack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dump archive, decompressed and its ELF/kdump files rebuilt once per session (~1.1 GB)."""
    out = tmp_path_factory.mktemp("qemu-dumps")
    _dumppack().unpack_archive(ARCHIVE, out)
    return out


@pytest.fixture(scope="session", params=CAPTURES)
def capture(request: pytest.FixtureRequest, unpacked: Path) -> Capture:
    name: str = request.param
    meta = json.loads((DATA / name / "capture.json").read_text())
    return Capture(name, meta, unpacked / name)


def _fmt(cpu: CpuRegisters) -> str:
    return "x86_64_5level" if cpu.la57 else "x86_64"


def _va_bits(cpu: CpuRegisters) -> int:
    return 57 if cpu.la57 else 48


@cache
def _open(raw: Path) -> PhysicalMemory:
    return PhysicalMemory.from_file(raw, writable=False)


def _table(cap: Capture, cpu: CpuRegisters) -> PageTable:
    return PageTable.attach(_open(cap.raw), cpu.cr3 & CR3_ADDRESS, _fmt(cpu), update_ad=False)


def _cpu_ids(cap: Capture) -> list[int]:
    """The vCPUs whose info mem was saved (info-mem.cpuN.txt.xz)."""
    names = (p.name for p in (DATA / cap.name).glob("info-mem.cpu*.txt.xz"))
    return sorted(int(n.removeprefix("info-mem.cpu").removesuffix(".txt.xz")) for n in names)


def test_every_capture_is_present() -> None:
    """The four captures the README lists, and the archive holding their dumps."""
    assert CAPTURES == [
        "x86_64-4level-kaslr",
        "x86_64-4level-nokaslr",
        "x86_64-5level-kaslr",
        "x86_64-5level-nokaslr",
    ]
    assert ARCHIVE.is_file()


@dumps
def test_paging_mode_is_the_one_asked_for(capture: Capture) -> None:
    """CR4.LA57 on every vCPU is what the capture booted with; long mode and paging are on."""
    cpus = capture.cpus
    assert len(cpus) == 2
    for cpu in cpus:
        assert cpu.la57 == capture.meta["la57"], (capture.name, cpu)
        assert cpu.cr0 >> 31 & 1, "CR0.PG"
        assert cpu.efer >> 10 & 1, "EFER.LMA"
    assert _cpu_ids(capture) == [c.index for c in cpus]


@dumps
def test_gva2gpa_agrees(capture: Capture) -> None:
    """Every address QEMU translated: vmopt's walk finds the same PA; every Unmapped one faults."""
    checked = 0
    for cpu in capture.cpus:
        pt = _table(capture, cpu)
        answers = parse_gva2gpa(capture.text(f"gva2gpa.cpu{cpu.index}.txt"))
        assert len(answers) > 200
        assert sum(pa is None for _, pa in answers) > 30, "some unmapped addresses were asked"
        for va, pa in answers:
            try:
                got: int | None = pt.walk(va, "p", update_ad=False).pa
            except PageFault:
                got = None
            assert got == pa, f"{capture.name} cpu{cpu.index} va {va:#x}: QEMU {pa}, vmopt {got}"
            checked += 1
    assert checked > 400


def _qemu_merge(ranges: Iterable[tuple[int, int, bool, bool]]) -> list[MemRange]:
    """Merge [start, end) runs the way QEMU's info mem does: adjacent and equal user/write."""
    out: list[MemRange] = []
    for start, end, user, write in ranges:
        last = out[-1] if out else None
        if last is not None and last.end == start and (last.user, last.write) == (user, write):
            out[-1] = MemRange(last.start, end, user, write)
        else:
            out.append(MemRange(start, end, user, write))
    return out


def _vmopt_ranges(pt: PageTable) -> list[MemRange]:
    regions = pt.mappings()
    merged = _qemu_merge((m.va, m.va + m.size, m.user, bool(m.perms & 2)) for m in regions)
    assert not regions.truncated
    return merged


def _tlb_ranges(entries: list[TlbEntry]) -> list[MemRange]:
    """QEMU's info tlb leaves merged like info mem, with each leaf's own U/W and a 'P' leaf as 2 MiB.

    Right for these Linux tables, whose upper levels grant U and W wherever a
    leaf does and which have no 1 GiB leaf with 128 MiB of RAM;
    test_info_tlb_ranges_are_info_mem checks that on the 4-level captures.
    """
    return _qemu_merge((e.va, e.va + (2 << 20 if e.pse else 4096), e.user, e.write) for e in entries)


@dumps
def test_info_mem_agrees(capture: Capture) -> None:
    """vmopt's listing, merged by QEMU's rule, is QEMU's info mem range for range.

    QEMU 7.2's ``info mem`` is broken under LA57: its mem_info_la57 tests the
    PDPE and PDE present bits inverted (``if (pdpe & PG_PRESENT_MASK) { prot = 0; ... continue; }``),
    so every present PDPE is skipped as unmapped and it prints nothing. For
    the 5-level captures the test checks that it printed nothing and compares
    with QEMU's ``info tlb`` walk merged the same way instead (see _tlb_ranges).
    """
    for cpu in capture.cpus:
        qemu = parse_info_mem(capture.text(f"info-mem.cpu{cpu.index}.txt"), _va_bits(cpu))
        if cpu.la57:
            assert qemu == [], "QEMU's la57 info mem prints ranges now: compare with it directly"
            qemu = _tlb_ranges(parse_info_tlb(capture.text(f"info-tlb.cpu{cpu.index}.txt")))
        ours = _vmopt_ranges(_table(capture, cpu))
        assert len(qemu) > 10
        assert ours == qemu, f"{capture.name} cpu{cpu.index}: first difference at {_first_diff(ours, qemu)}"


@dumps
def test_info_tlb_ranges_are_info_mem(capture: Capture) -> None:
    """Where QEMU's info mem works (4-level), its info tlb merged by _tlb_ranges gives the same ranges."""
    for cpu in capture.cpus:
        tlb = _tlb_ranges(parse_info_tlb(capture.text(f"info-tlb.cpu{cpu.index}.txt")))
        if cpu.la57:
            assert tlb, "info tlb lists leaves under LA57"
            continue
        assert tlb == parse_info_mem(capture.text(f"info-mem.cpu{cpu.index}.txt"), _va_bits(cpu))


def _first_diff(a: list[MemRange] | list[TlbEntry], b: list[MemRange] | list[TlbEntry]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"#{i}: vmopt {x} / qemu {y}"
    return f"lengths {len(a)} / {len(b)}"


def _as_qemu_tlb(va: int, pte: int, level: int) -> TlbEntry:
    """What QEMU's info tlb prints for a leaf PTE (its own bits; a 4 KiB leaf's bit 7 cleared)."""
    if level == 0:
        pte &= ~_PS
    return TlbEntry(
        va,
        pte & _QEMU_PA_MASK[level],
        *(bool(pte & bit) for bit in _TLB_BITS),
    )


@dumps
def test_info_tlb_agrees(capture: Capture) -> None:
    """vmopt's leaves, in VA order, are QEMU's info tlb lines: address, PA and every flag."""
    for cpu in capture.cpus:
        qemu = parse_info_tlb(capture.text(f"info-tlb.cpu{cpu.index}.txt"))
        leaves = _table(capture, cpu).leaves()
        ours = [_as_qemu_tlb(va, leaf.pte, leaf.level) for va, leaf, _perms, _user, _g in leaves]
        assert not leaves.truncated
        assert len(qemu) > 1000
        assert ours == qemu, f"{capture.name} cpu{cpu.index}: first difference at {_first_diff(ours, qemu)}"


@dumps
def test_inspect_cli_agrees(capture: Capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vmopt inspect RAW --root CR3 --format ...`` lists what QEMU walks (vCPU 0)."""
    cpu = capture.cpus[0]
    out = tmp_path / "regions.json"
    args = ["inspect", str(capture.raw), "--root", f"{cpu.cr3:#x}", "--format", _fmt(cpu), "--json", str(out)]
    assert vmopt_main(args) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["root"] == cpu.cr3 & CR3_ADDRESS
    assert doc["format"] == _fmt(cpu)
    assert not doc["truncated"]
    ours = _qemu_merge((r["va"], r["end"], r["user"], "w" in r["perms"]) for r in doc["regions"])
    if cpu.la57:
        qemu = _tlb_ranges(parse_info_tlb(capture.text("info-tlb.cpu0.txt")))
    else:
        qemu = parse_info_mem(capture.text("info-mem.cpu0.txt"), _va_bits(cpu))
    assert ours == qemu


# -- the ELF dump carries the raw image's bytes ---------------------------------------------------

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD, _PT_NOTE = 1, 4


@dataclass(frozen=True)
class Segment:
    kind: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def elf_segments(data: bytes | memoryview) -> list[Segment]:
    """The program headers of a little-endian ELF64 core file (test-only, independent of vmopt)."""
    ident, e_type, machine, _v, _entry, phoff, shoff, _fl, ehsize, phentsize, phnum, *_ = _EHDR.unpack_from(
        data
    )
    assert ident[:4] == b"\x7fELF" and ident[4] == 2 and ident[5] == 1, "ELF64 little-endian"
    assert (e_type, machine, phentsize) == (4, 62, _PHDR.size), "ET_CORE, EM_X86_64"
    # QEMU 7.2 writes e_ehsize = 8, sizeof a pointer, for its 64-byte header: readers must not insist on 64.
    assert ehsize in (8, _EHDR.size)
    if phnum == 0xFFFF:  # PN_XNUM: the real count is section header 0's sh_info
        (phnum,) = struct.unpack_from("<I", data, shoff + 44)
    out = []
    for i in range(phnum):
        kind, _flags, offset, vaddr, paddr, filesz, memsz, _align = _PHDR.unpack_from(
            data, phoff + i * _PHDR.size
        )
        assert offset + filesz <= len(data), f"segment {i} runs past the file"
        out.append(Segment(kind, offset, vaddr, paddr, filesz, memsz))
    return out


@dumps
def test_elf_loads_equal_raw(capture: Capture) -> None:
    """Every PT_LOAD's bytes are the raw image's bytes at p_paddr; the loads cover all of RAM."""
    raw = capture.raw.read_bytes()
    elf = memoryview(capture.elf.read_bytes())
    segs = elf_segments(elf)
    assert sum(s.kind == _PT_NOTE for s in segs) == 1
    loads = [s for s in segs if s.kind == _PT_LOAD]
    assert loads
    ram = capture.meta["ram_bytes"]
    assert len(raw) == ram
    covered = 0
    for s in loads:
        assert s.filesz == s.memsz, "QEMU writes every byte of a non-paging dump"
        if s.paddr >= ram:
            continue
        assert s.paddr + s.filesz <= ram, f"PT_LOAD at {s.paddr:#x} runs past the RAM"
        assert elf[s.offset : s.offset + s.filesz] == raw[s.paddr : s.paddr + s.filesz], f"{s.paddr:#x}"
        covered += s.filesz
    assert covered == ram, "the PT_LOADs below 4 GiB cover all of the RAM"
    # The one segment past the RAM: the 256 KiB BIOS flash at 4 GiB - 256 KiB (not in pmemsave's range).
    beyond = [(s.paddr, s.filesz) for s in loads if s.paddr >= ram]
    assert beyond == [(0xFFFC0000, 0x40000)]


def _elf_notes(elf: memoryview, segs: list[Segment]) -> list[tuple[bytes, int, memoryview]]:
    """(name, type, desc) of every note in the PT_NOTE segment (4-byte aligned fields)."""
    (note,) = [s for s in segs if s.kind == _PT_NOTE]
    out = []
    pos, end = note.offset, note.offset + note.filesz
    while pos < end:
        namesz, descsz, kind = struct.unpack_from("<III", elf, pos)
        name_at = pos + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        out.append(
            (bytes(elf[name_at : name_at + namesz]).rstrip(b"\0"), kind, elf[desc_at : desc_at + descsz])
        )
        pos = desc_at + (descsz + 3) // 4 * 4
    return out


@dumps
def test_elf_cpu_notes_hold_the_registers(capture: Capture) -> None:
    """Each vCPU's "QEMU" note (QEMUCPUState) carries the CR3 and CR4 that info registers shows."""
    elf = memoryview(capture.elf.read_bytes())
    notes = _elf_notes(elf, elf_segments(elf))
    states = [desc for name, _kind, desc in notes if name == b"QEMU"]
    assert sum(name == b"CORE" for name, _k, _d in notes) == len(capture.cpus)
    assert len(states) == len(capture.cpus)
    for cpu, desc in zip(capture.cpus, states, strict=True):
        _version, size = struct.unpack_from("<II", desc)
        assert size == len(desc) and size in (432, 440)
        cr0, _cr1, _cr2, cr3, cr4 = struct.unpack_from("<5Q", desc, 392)
        assert (cr0, cr3, cr4) == (cpu.cr0, cpu.cr3, cpu.cr4), f"cpu{cpu.index}"


@dumps
def test_rebuilt_files_are_qemus(capture: Capture) -> None:
    """The unpacked dump files are QEMU's originals: the SHA-256s recorded at capture time."""
    files = capture.meta["files"]
    assert isinstance(files, dict)
    assert {"guest.raw", "guest.elf", "guest.kdump"} <= set(files)
    for name, want in files.items():
        data = (capture.dumps / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (want["bytes"], want["sha256"]), name


@dumps
def test_kdump_pages_equal_raw(capture: Capture) -> None:
    """Every RAM page is in the kdump-zlib file, as the raw image's page (zlib or stored as is)."""
    import zlib

    dp = _dumppack()
    raw = capture.raw.read_bytes()
    image = dp.flat_image((capture.dumps / "guest.kdump").read_bytes())
    seen = 0
    ram_pages = len(raw) // 4096
    for pfn, off, size, flags in dp.kdump_pages(image):
        if pfn >= ram_pages:
            assert pfn >= 0xFFFC0000 >> 12, f"pfn {pfn:#x} past the RAM is not the BIOS flash"
            continue
        payload = bytes(image[off : off + size])
        page = zlib.decompress(payload) if flags == 1 else payload
        assert flags in (0, 1), f"pfn {pfn:#x}: flags {flags:#x}"
        assert page == raw[pfn * 4096 : (pfn + 1) * 4096], f"pfn {pfn:#x}"
        seen += 1
    assert seen == ram_pages


def _sign_extend(va: int, bits: int) -> int:
    va &= (1 << bits) - 1
    return va | ((1 << 64) - (1 << bits)) if va >> (bits - 1) else va


@dumps
def test_paging_elf_agrees(unpacked: Path) -> None:
    """``dump-guest-memory -p``: each PT_LOAD maps p_vaddr to p_paddr in a vCPU's tables, with raw's bytes.

    QEMU builds these virtual addresses with every bit above the top level's
    index set (``0xffff << 48`` for 4-level), user half included: the test
    sign-extends the low 48 bits instead. QEMU merges the mappings of all
    vCPUs, so each page must be mapped so by some vCPU's tables; where the
    two vCPUs map a page to different frames, its list can mix their address
    spaces (seen once: va 0x5e4000, 2 pages, mapped by neither as written).
    """
    name = "x86_64-4level-nokaslr"  # the one capture with a paging ELF
    capture = Capture(name, json.loads((DATA / name / "capture.json").read_text()), unpacked / name)
    elf = memoryview((capture.dumps / "guest-paging.elf").read_bytes())
    raw = capture.raw.read_bytes()
    segs = elf_segments(elf)
    loads = [s for s in segs if s.kind == _PT_LOAD]
    assert len(loads) > 10_000  # PN_XNUM: the count from section 0, not e_phnum
    tables = [_table(capture, cpu) for cpu in capture.cpus]
    bits = _va_bits(capture.cpus[0])

    def pa_of(pt: PageTable, va: int) -> int | None:
        try:
            return pt.walk(va, "p", update_ad=False).pa
        except PageFault:
            return None

    mixed = []
    for s in loads:
        va = _sign_extend(s.vaddr, bits)
        assert s.filesz % 4096 == 0 and s.filesz == s.memsz
        for k in range(0, s.filesz, 4096):
            want = s.paddr + k
            got = [pa_of(pt, va + k) for pt in tables]
            if want in got:
                continue
            # Where both vCPUs map the page, to different frames, QEMU's merged list can mix
            # their address spaces: one 2-page segment in this capture. Anywhere else: a failure.
            assert None not in got and len(set(got)) == len(got), f"PT_LOAD page {va + k:#x} -> {want:#x}"
            mixed.append(va + k)
        if s.paddr + s.filesz <= len(raw):
            assert elf[s.offset : s.offset + s.filesz] == raw[s.paddr : s.paddr + s.filesz], f"{va:#x}"
    assert len(mixed) <= 4, [hex(v) for v in mixed]


# -- the monitor parsers on the cases the captures do not show ------------------------------------


def test_info_mem_parser_reads_the_top_flush_and_refuses_bad_lines() -> None:
    """A range reaching 2^64 is printed with end 2^va_bits; a wrong size or order is an error."""
    top4 = "ffffffffffe00000-0001000000000000 0000000000200000 -rw\n"
    assert parse_info_mem(top4, 48) == [MemRange(0xFFFFFFFFFFE00000, 1 << 64, False, True)]
    top5 = "ffffffffffe00000-0200000000000000 0000000000200000 ur-\n"
    assert parse_info_mem(top5, 57) == [MemRange(0xFFFFFFFFFFE00000, 1 << 64, True, False)]
    with pytest.raises(ValueError, match="size"):
        parse_info_mem("0000000000400000-0000000000401000 0000000000002000 ur-\n", 48)
    with pytest.raises(ValueError, match="order"):
        parse_info_mem(
            "0000000000400000-0000000000402000 0000000000002000 ur-\n"
            "0000000000401000-0000000000403000 0000000000002000 ur-\n",
            48,
        )
    with pytest.raises(ValueError, match="unexpected"):
        parse_info_mem("0000000000400000-0000000000401000 0000000000001000 uw-\n", 48)


def test_gva2gpa_parser_reads_address_zero() -> None:
    """QEMU prints physical address 0 as ``gpa: 0`` (``%#x`` of zero has no 0x)."""
    text = "ffff888000000000\tgpa: 0\nffff888000001234\tgpa: 0x1234\n0000000000000000\tUnmapped\n"
    assert parse_gva2gpa(text) == [(0xFFFF888000000000, 0), (0xFFFF888000001234, 0x1234), (0, None)]
    with pytest.raises(ValueError, match="line 1"):
        parse_gva2gpa("ffff888000000000\tgpa: 1234\n")


@dumps
def test_the_dump_readers_agree_with_qemu(
    capture: Capture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """QEMU's own ELF and kdump files through vmopt.dumps and ``vmopt inspect DUMP``, exactly.

    :func:`test_dumps_qemu.check_capture` on vCPU 0's monitor output: the
    vCPU registers from the dump's notes, ``info mem`` and ``info tlb`` line
    for line, every ``gva2gpa`` answer, and the same bytes in every format.
    """
    from test_dumps_qemu import MEM_LINE, check_capture, parse_lines

    cap = tmp_path / "capture"
    cap.mkdir()
    for name in ("guest.elf", "guest.kdump", "guest.raw"):
        (cap / name).symlink_to(capture.dumps / name)
    (cap / "info-registers.txt").write_text(capture.text("info-registers.txt"))
    for kind in ("info-mem", "info-tlb"):
        (cap / f"{kind}.txt").write_text(capture.text(f"{kind}.cpu0.txt"))
    # The saved answers, as the monitor session printed them (one question, one answer).
    answers = parse_gva2gpa(capture.text("gva2gpa.cpu0.txt"))
    (cap / "gva2gpa.txt").write_text(
        "".join(f"(qemu) gva2gpa {va:#x}\n" + ("Unmapped" if pa is None else f"gpa: {pa:#x}") + "\n"
                for va, pa in answers)
    )  # fmt: skip
    counts = check_capture(cap, tmp_path)
    assert counts["gva2gpa"] == len(answers)
    assert counts["formats"] == 3 and counts["cpus"] == 2
    assert counts["tlb_lines"] > 100 and counts["gva2gpa"] > 100
    # The command a user runs: the root and the paging mode from the dump itself.
    for name in ("guest.elf", "guest.kdump"):
        assert vmopt_main(["inspect", str(cap / name), "--info", "mem"]) == 0
        got = parse_lines(capsys.readouterr().out, MEM_LINE)
        assert got == parse_lines(capture.text("info-mem.cpu0.txt"), MEM_LINE), name
