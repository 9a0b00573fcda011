"""vmopt against QEMU's own walks on real captured dumps, exactly.

A capture directory holds ``guest.elf``, ``guest.kdump`` and ``guest.raw``
(each may be ``.xz``, ``.gz`` or ``.zst`` compressed) from one stopped
guest, with the monitor's output of that moment: ``info-registers.txt``,
``info-mem.txt``, ``info-tlb.txt`` and ``gva2gpa.txt``. For each capture
:func:`check_capture` requires, in every dump format: the vCPU control
registers equal ``info registers``; :func:`vmopt.dumps.info_mem` and
``info_tlb`` print QEMU's lines exactly; every ``gva2gpa`` answer equals
vmopt's walk; and the physical bytes are identical across the formats.

Captures live under tests/data/dumps (the directory itself, or one
subdirectory per capture); with none there the test skips. The helper is
also run here on a capture synthesized from the layouts, monitor text
included, so it is tested before real data arrives.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from dump_layouts import kdump_bytes, qemu_info_mem, qemu_info_tlb, write_elf, write_raw
from test_dumps import build_guest
from vmopt.dumps import Dump, info_mem, info_tlb, open_dump
from vmopt.paging import PageFault, PageTable

DATA = Path(__file__).resolve().parent / "data" / "dumps"
DUMPS = ("guest.elf", "guest.kdump", "guest.raw")
MONITOR = ("info-registers.txt", "info-mem.txt", "info-tlb.txt", "gva2gpa.txt")
MEM_LINE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16} [0-9a-f]{16} [u-]r[w-]$")
TLB_LINE = re.compile(r"^[0-9a-f]{16}: [0-9a-f]{16} [X-][G-][P-][D-][A-][C-][T-][U-][W-]$")
CR_LINE = re.compile(r"CR0=([0-9a-f]+) CR2=([0-9a-f]+) CR3=([0-9a-f]+) CR4=([0-9a-f]+)")
GVA = re.compile(r"gva2gpa\s+(0x[0-9a-fA-F]+|[0-9]+)")
ANSWER = re.compile(r"(?:(0x[0-9a-fA-F]+)\s+)?(?:gpa:\s*(0x[0-9a-fA-F]+)|(Unmapped))")
CHUNK = 1 << 20


def captures() -> list[Path]:
    """The capture directories under :data:`DATA`."""
    if not DATA.is_dir():
        return []
    dirs = [DATA, *sorted(p for p in DATA.iterdir() if p.is_dir())]
    return [d for d in dirs if any(_find(d, name) for name in DUMPS)]


def _find(directory: Path, name: str) -> Path | None:
    for suffix in ("", ".xz", ".gz", ".zst"):
        if (directory / (name + suffix)).is_file():
            return directory / (name + suffix)
    return None


def materialize(directory: Path, name: str, tmp: Path) -> Path | None:
    """``name`` in ``directory``, decompressed into ``tmp`` if it is stored compressed."""
    path = _find(directory, name)
    if path is None or path.suffix not in (".xz", ".gz", ".zst"):
        return path
    out = tmp / name
    with open(out, "wb") as dst:
        if path.suffix == ".zst":
            with open(path, "rb") as src:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
        else:
            opener = lzma.open if path.suffix == ".xz" else gzip.open
            with opener(path, "rb") as src:
                shutil.copyfileobj(src, dst, CHUNK)
    return out


def parse_registers(text: str) -> list[dict[str, int]]:
    """``info registers`` (one block per vCPU): CR0, CR2, CR3, CR4 of each."""
    return [
        {"cr0": int(m[1], 16), "cr2": int(m[2], 16), "cr3": int(m[3], 16), "cr4": int(m[4], 16)}
        for m in CR_LINE.finditer(text)
    ]


def parse_lines(text: str, pattern: re.Pattern[str]) -> list[str]:
    """The listing lines of a monitor transcript (prompts and echoes dropped)."""
    return [line.rstrip() for line in text.splitlines() if pattern.match(line.rstrip())]


def parse_gva2gpa(text: str) -> list[tuple[int, int | None]]:
    """``(va, pa or None)`` per ``gva2gpa`` answer: ``gpa: 0x...`` or ``Unmapped``."""
    out: list[tuple[int, int | None]] = []
    va: int | None = None
    for line in text.splitlines():
        asked = GVA.search(line)
        if asked:
            va = int(asked[1], 0)
            line = line[asked.end() :]
        answer = ANSWER.search(line)
        if answer is None:
            continue
        if answer[1] is not None:
            va = int(answer[1], 16)
        if va is None:
            continue
        out.append((va, None if answer[3] else int(answer[2], 16)))
        va = None
    return out


def _chunks(dump: Dump, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    for pa in range(start, end, CHUNK):
        yield pa, dump.memory.read(pa, min(CHUNK, end - pa))


def check_capture(directory: Path, tmp: Path, *, as_qemu: bool = True) -> dict[str, int]:
    """Check every dump of one capture against QEMU's monitor output; counts of what was compared.

    ``as_qemu`` compares ``info mem`` of a 5-level guest with QEMU's own
    walk, its inverted PDPT/PD present test included (see docs/inspect.md).
    """
    paths = {name: materialize(directory, name, tmp) for name in DUMPS}
    dumps = {name: open_dump(path) for name, path in paths.items() if path is not None}
    assert dumps, f"{directory}: no dump"
    text = {name: (directory / name).read_text() for name in MONITOR if (directory / name).is_file()}
    regs = parse_registers(text.get("info-registers.txt", ""))
    assert regs, f"{directory}: no CR0..CR4 in info-registers.txt"
    counts = {"cpus": len(regs)}
    for name, dump in dumps.items():
        if name != "guest.raw":
            got = [{k: c.get(k) for k in ("cr0", "cr3", "cr4")} for c in dump.cpus]
            assert got == [{k: r[k] for k in ("cr0", "cr3", "cr4")} for r in regs], name
    cr3, la57 = regs[0]["cr3"], bool(regs[0]["cr4"] >> 12 & 1)
    want_mem = parse_lines(text.get("info-mem.txt", ""), MEM_LINE)
    want_tlb = parse_lines(text.get("info-tlb.txt", ""), TLB_LINE)
    answers = parse_gva2gpa(text.get("gva2gpa.txt", ""))
    counts.update(mem_lines=len(want_mem), tlb_lines=len(want_tlb), gva2gpa=len(answers))
    fmt = "x86_64_5level" if la57 else "x86_64"
    for name, dump in dumps.items():
        mem = dump.memory
        if "info-mem.txt" in text:
            listing = info_mem(mem, cr3, la57=la57, as_qemu=as_qemu, max_tables=1 << 22, max_lines=1 << 22)
            assert not listing.truncated, f"{name}: info mem needs more than 2^22 tables"
            assert [line.text for line in listing.lines] == want_mem, name
        if "info-tlb.txt" in text:
            assert [line.text for line in info_tlb(mem, cr3, la57=la57).lines] == want_tlb, name
        pt = PageTable.attach(mem, cr3 & 0x000F_FFFF_FFFF_F000, fmt, update_ad=False)
        for va, pa in answers:
            try:
                got: int | None = pt.walk(va, "p", update_ad=False).pa
            except PageFault:
                got = None
            assert got == pa, (name, hex(va), pa, got)
    # The same physical bytes through every reader, range by range.
    names = sorted(dumps)
    ref = dumps[names[0]]
    for name in names[1:]:
        other = dumps[name]
        ours = [(max(s1, s2), min(e1, e2)) for s1, e1 in ref.ranges() for s2, e2 in other.ranges()]
        for s, e in (r for r in ours if r[0] < r[1]):
            for pa, chunk in _chunks(ref, s, e):
                assert other.memory.read(pa, len(chunk)) == chunk, (names[0], name, hex(pa))
    counts["formats"] = len(dumps)
    return counts


@pytest.mark.parametrize("directory", captures() or [None], ids=lambda d: d.name if d else "none")
def test_real_captures_agree_with_qemu(directory: Path | None, tmp_path: Path) -> None:
    if directory is None:
        pytest.skip(f"no captured dumps under {DATA} yet")
    counts = check_capture(directory, tmp_path)
    assert counts["formats"] >= 2 and counts["mem_lines"] > 0


@pytest.mark.parametrize("fmt", ["x86_64", "x86_64_5level"])
def test_the_checker_on_a_synthesized_capture(fmt: str, tmp_path: Path) -> None:
    guest, pt, _mappings = build_guest(fmt)
    cap = tmp_path / "cap"
    cap.mkdir()
    write_elf(guest, cap / "guest.elf")
    (cap / "guest.kdump.zst").write_bytes(zstandard.ZstdCompressor().compress(kdump_bytes(guest, "zlib")))
    write_raw(guest, tmp_path / "guest.raw")
    with open(tmp_path / "guest.raw", "rb") as src, lzma.open(cap / "guest.raw.xz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    la57 = fmt == "x86_64_5level"
    regs = "\n".join(
        f"CPU#{i}\nRAX=0 RBX=0\nCR0={c.cr0:08x} CR2=0000000000000000 CR3={c.cr3:016x} CR4={c.cr4:08x}\n"
        for i, c in enumerate(guest.cpus)
    )
    (cap / "info-registers.txt").write_text(regs)
    cr3 = guest.cpus[0].cr3
    mem_text = "\n".join(qemu_info_mem(guest, cr3, la57, as_qemu=not la57))
    (cap / "info-mem.txt").write_text("(qemu) info mem\n" + mem_text + "\n")
    (cap / "info-tlb.txt").write_text("(qemu) info tlb\n" + "\n".join(qemu_info_tlb(guest, cr3, la57)) + "\n")
    vas = [0x40_0123, 0x7FFF_0000_2010, 0x1000, 0xFFFF_FFFF_FFFF_F000]
    lines = []
    for va in vas:
        try:
            answer = f"gpa: {pt.walk(va, 'p', update_ad=False).pa:#x}"
        except PageFault:
            answer = "Unmapped"
        lines += [f"(qemu) gva2gpa {va:#x}", answer]
    (cap / "gva2gpa.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "work"
    out.mkdir()
    counts = check_capture(cap, out, as_qemu=not la57)
    assert counts == {"cpus": 2, "mem_lines": counts["mem_lines"], "tlb_lines": 9, "gva2gpa": 4, "formats": 3}
    assert parse_gva2gpa((cap / "gva2gpa.txt").read_text())[2] == (0x1000, None)
    # A disagreement is caught: one changed monitor line fails the check.
    good = (cap / "info-tlb.txt").read_text()
    bad = good.replace(" --P", " X-P", 1)
    assert bad != good
    (cap / "info-tlb.txt").write_text(bad)
    with pytest.raises(AssertionError):
        check_capture(cap, out, as_qemu=not la57)
