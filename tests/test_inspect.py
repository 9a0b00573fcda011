"""``vmopt inspect``: page tables built with vmopt, saved as a raw image, listed back from the image."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmopt.cli.main import main
from vmopt.memory.physical import PhysicalMemory
from vmopt.paging import PageFault, PageTable
from vmopt.paging.types import Mapping, page_size_name, perms_str

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
FORMATS = ("x86_64", "x86_64_5level", "sv39", "sv48")
#: Kernel half of each format, 1 GiB aligned (Linux's direct map or the lowest kernel address).
HIGH = {
    "x86_64": 0xFFFF_8880_0000_0000,
    "x86_64_5level": 0xFF11_0000_0000_0000,
    "sv39": 0xFFFF_FFC0_0000_0000,
    "sv48": 0xFFFF_8000_0000_0000,
}
POOL = 0x1000_0000  # 8 MiB reserved for data pages, so their PAs do not depend on the allocator
MEM_SIZE = 1 * GiB
SRC = Path(__file__).resolve().parents[1] / "src"

REGION_RE = re.compile(
    r"^([0-9a-f]{16})-([0-9a-f]{16}) ([0-9a-f]{16}) ([r-][w-][x-])([us])([g-]) -> ([0-9a-f]+) \((\w+)\)$"
)
SUMMARY_RE = re.compile(r"^summary: regions (\d+); pages (.*); mapped .* \((0x[0-9a-f]+) bytes\)$")

Region = tuple[int, int, str, bool, bool, int, str]  # va, size, perms, user, global, pa, page size


@dataclass
class Guest:
    """A saved image and the live page table it was saved from."""

    fmt: str
    path: Path
    pt: PageTable
    expected: list[Region]


def _layout(fmt: str) -> list[tuple[int, int, int, str, bool, bool]]:
    """(va, pa, page_size, perms, user, global) of every page, in no particular order."""
    high = HIGH[fmt]
    data = POOL + 4 * MiB
    return [
        (0x40_0000, POOL, 2 * MiB, "rx", True, False),  # text: two 2 MiB pages, one region
        (0x60_0000, POOL + 2 * MiB, 2 * MiB, "rx", True, False),
        *[(0x80_0000 + i * 4096, data + i * 4096, 4096, "rw", True, False) for i in range(4)],  # heap
        (0x80_4000, data + 0x4000, 4096, "r", True, False),  # contiguous, other perms: own region
        (0x90_0000, data + 0x10000, 4096, "rw", True, False),  # VA-contiguous, PA not: two regions
        (0x90_1000, data + 0x8000, 4096, "rw", True, False),
        (0x7000_0000, data + 0x20000, 4096, "rx", True, True),  # a user page with G set
        (high, 0, 1 * GiB, "rw", False, True),  # direct map of all memory
        (high + GiB, POOL + 6 * MiB, 4096, "rx", False, True),  # kernel text
        (high + GiB + 4096, POOL + 6 * MiB + 4096, 4096, "rx", False, True),
    ]


def _expected(fmt: str) -> list[Region]:
    high = HIGH[fmt]
    data = POOL + 4 * MiB
    return [
        (0x40_0000, 4 * MiB, "r-x", True, False, POOL, "2M"),
        (0x80_0000, 16 * KiB, "rw-", True, False, data, "4K"),
        (0x80_4000, 4 * KiB, "r--", True, False, data + 0x4000, "4K"),
        (0x90_0000, 4 * KiB, "rw-", True, False, data + 0x10000, "4K"),
        (0x90_1000, 4 * KiB, "rw-", True, False, data + 0x8000, "4K"),
        (0x7000_0000, 4 * KiB, "r-x", True, True, data + 0x20000, "4K"),
        (high, 1 * GiB, "rw-", False, True, 0, "1G"),
        (high + GiB, 8 * KiB, "r-x", False, True, POOL + 6 * MiB, "4K"),
    ]


def _build(fmt: str, path: Path) -> Guest:
    mem = PhysicalMemory(MEM_SIZE)
    mem.allocator.alloc_at(POOL >> 12, 11)  # keep the table pages out of the data pool
    pt = PageTable(mem, fmt, update_ad=False)
    for va, pa, size, perms, user, global_ in _layout(fmt):
        pt.map(va, pa, size, perms, user=user, global_=global_)
    mem.save(path)
    return Guest(fmt, path, pt, _expected(fmt))


@pytest.fixture(scope="module")
def guests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Guest]:
    base = tmp_path_factory.mktemp("images")
    return {fmt: _build(fmt, base / f"{fmt}.img") for fmt in FORMATS}


def _as_region(m: Mapping) -> Region:
    return (m.va, m.size, perms_str(m.perms), m.user, m.global_, m.pa, page_size_name(m.page_size))


def _parse(out: str) -> tuple[list[Region], tuple[int, str, int]]:
    """The region lines and the summary (regions, pages, mapped bytes) of inspect's output."""
    regions: list[Region] = []
    summary = None
    for line in out.splitlines():
        if m := REGION_RE.match(line):
            va, end, size = (int(m.group(i), 16) for i in (1, 2, 3))
            assert end - va == size
            regions.append(
                (va, size, m.group(4), m.group(5) == "u", m.group(6) == "g", int(m.group(7), 16), m.group(8))
            )
        elif m := SUMMARY_RE.match(line):
            summary = (int(m.group(1)), m.group(2), int(m.group(3), 16))
    assert summary is not None, out
    return regions, summary


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["inspect", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def _digest(path: Path) -> str:
    """SHA-256 over size, data extents and their bytes (holes skipped via SEEK_DATA when available)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError:  # ENXIO: only a hole is left
                break
            f.seek(start)
            h.update(start.to_bytes(8, "little"))
            for off in range(start, end, 1 << 20):
                h.update(f.read(min(1 << 20, end - off)))
            pos = end
    return h.hexdigest()


# -- listing ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_regions_equal_mappings(
    fmt: str, guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]
) -> None:
    g = guests[fmt]
    out = _inspect(capsys, str(g.path), "--root", hex(g.pt.root), "--format", fmt)
    regions, (count, pages, mapped) = _parse(out)
    assert regions == [_as_region(m) for m in g.pt.mappings()]
    assert regions == g.expected
    assert [line for line in out.splitlines() if REGION_RE.match(line)] == [str(m) for m in g.pt.mappings()]
    assert count == len(g.expected)
    assert pages == "4K: 10, 2M: 2, 1G: 1"
    assert mapped == sum(r[1] for r in g.expected)
    assert f"{fmt} ({g.pt.fmt.levels} levels" in out.splitlines()[0]


def test_default_format_is_x86_64_and_decimal_root(
    guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]
) -> None:
    g = guests["x86_64"]
    out = _inspect(capsys, str(g.path), "--root", str(g.pt.root))
    assert _parse(out)[0] == g.expected
    assert "x86_64 (4 levels, 48-bit VA)" in out


@pytest.mark.parametrize("fmt", ["x86_64", "x86_64_5level"])
@pytest.mark.parametrize("low", [0x123, 0x18, 0xFFF])  # a PCID; PWT|PCD; the largest PCID
def test_cr3_with_pcid_and_noflush(
    fmt: str, low: int, guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]
) -> None:
    g = guests[fmt]
    cr3 = (1 << 63) | g.pt.root | low
    out = _inspect(capsys, str(g.path), "--root", hex(cr3), "--format", fmt)
    assert _parse(out)[0] == g.expected
    header = out.splitlines()[0]
    assert f"root {g.pt.root:#x}" in header and f"PCID/flags {low:#x}" in header and "no-flush" in header


@pytest.mark.parametrize("fmt,mode", [("sv39", 8), ("sv48", 9)])
@pytest.mark.parametrize("explicit", [False, True])
def test_satp_value_selects_root_and_format(
    fmt: str, mode: int, explicit: bool, guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]
) -> None:
    g = guests[fmt]
    satp = (mode << 60) | (0xBEEF << 44) | (g.pt.root >> 12)
    args = [str(g.path), "--root", hex(satp)] + (["--format", fmt] if explicit else [])
    out = _inspect(capsys, *args)
    assert _parse(out)[0] == g.expected
    header = out.splitlines()[0]
    assert f"{fmt} (" in header and f"root {g.pt.root:#x}" in header and "ASID 0xbeef" in header


@pytest.mark.parametrize("only", ["--user-only", "--kernel-only"])
def test_filters(only: str, guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]) -> None:
    g = guests["sv48"]
    out = _inspect(capsys, str(g.path), "--root", hex(g.pt.root), "--format", "sv48", only)
    want_user = only == "--user-only"
    expected = [r for r in g.expected if r[3] == want_user]
    regions, (count, _pages, mapped) = _parse(out)
    assert regions == expected and count == len(expected)
    assert mapped == sum(r[1] for r in expected)


def test_user_and_kernel_only_are_exclusive(guests: dict[str, Guest]) -> None:
    g = guests["x86_64"]
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(g.path), "--root", hex(g.pt.root), "--user-only", "--kernel-only"])
    assert exc.value.code == 2


# -- walks -----------------------------------------------------------------------------


def _walk_block(out: str, va: int) -> list[str]:
    lines = out.splitlines()
    start = lines.index(f"walk {va:#x}:")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


@pytest.mark.parametrize("fmt", FORMATS)
def test_va_walks_pte_by_pte(fmt: str, guests: dict[str, Guest], capsys: pytest.CaptureFixture[str]) -> None:
    g = guests[fmt]
    high = HIGH[fmt]
    text, heap, kernel = 0x40_0123, 0x80_2010, high + 0x1234_5678
    unmapped, non_canonical = 0x1000_0000, 1 << (g.pt.fmt.va_bits - 1)
    vas = [text, heap, kernel, unmapped, non_canonical]
    args = [str(g.path), "--root", hex(g.pt.root), "--format", fmt]
    for va in vas:
        args += ["--va", hex(va)]
    out = _inspect(capsys, *args)
    for va in vas:
        block = _walk_block(out, va)
        path = g.pt.walk_path(va)
        assert block[:-1] == [
            f"  L{lvl} pte@{pa:#011x} {g.pt.fmt.describe(pte, lvl)}" for lvl, pa, pte in path
        ]
        try:
            t = g.pt.walk(va, "p", update_ad=False)
        except PageFault as f:
            assert block[-1].startswith(f"  => fault: {f.cause}")
        else:
            assert block[-1].startswith(f"  => pa {t.pa:#x} ({page_size_name(t.page_size)} page")
    assert _walk_block(out, text)[-1] == f"  => pa {POOL + 0x123:#x} (2M page at {POOL:#x}, perms r-x, user)"
    # One PTE per level down to the 2 MiB leaf (level 1), then the result line.
    assert len(_walk_block(out, text)) == (g.pt.fmt.levels - 1) + 1
    assert _walk_block(out, kernel)[-1].endswith("perms rw-, supervisor, global)")
    assert _walk_block(out, heap)[-1].startswith(f"  => pa {POOL + 4 * MiB + 0x2010:#x} (4K page")
    assert _walk_block(out, unmapped)[-1] == "  => fault: not_present at level 1"
    assert _walk_block(out, non_canonical) == ["  => fault: non_canonical before any table was read"]


def test_table_outside_image_faults_and_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mem = PhysicalMemory(16 * MiB)
    pt = PageTable(mem, "x86_64", update_ad=False)
    pt.map(0x40_0000, mem.alloc(), 4096, "rw", user=True)
    mem.write_u64(pt.root + 5 * 8, pt.fmt.make_table(1 << 40, 3))  # a PML4E pointing past the image
    path = tmp_path / "broken.img"
    mem.save(path)
    out = _inspect(capsys, str(path), "--root", hex(pt.root), "--va", hex(5 << 39))
    assert len(_parse(out)[0]) == 1
    assert _walk_block(out, 5 << 39)[-1] == "  => fault: table_outside_memory at level 2"


# -- JSON --------------------------------------------------------------------------------


def test_json_output(guests: dict[str, Guest], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = guests["sv39"]
    out_path = tmp_path / "regions.json"
    satp = (8 << 60) | (g.pt.root >> 12)
    _inspect(
        capsys, str(g.path), "--root", hex(satp), "--json", str(out_path), "--va", "0x400000", "--va", "0"
    )
    doc = json.loads(out_path.read_text())
    assert doc["format"] == "sv39" and doc["root"] == g.pt.root and doc["root_value"] == satp
    assert doc["image"] == str(g.path) and doc["image_size"] == MEM_SIZE and doc["filter"] == "all"
    assert doc["regions"] == [
        {"va": m.va, "end": m.va + m.size, "size": m.size, "pa": m.pa, "perms": perms_str(m.perms),
         "user": m.user, "global": m.global_, "page_size": m.page_size, "recursive": False}
        for m in g.pt.mappings()
    ]  # fmt: skip
    assert doc["summary"] == {
        "regions": 8,
        "recursive": 0,
        "pages": {"4K": 10, "2M": 2, "1G": 1},
        "mapped_bytes": sum(r[1] for r in g.expected),
    }
    hit, miss = doc["walks"]
    assert hit["translation"]["pa"] == POOL and hit["translation"]["page_size"] == 2 * MiB
    assert [p["level"] for p in hit["path"]] == [2, 1]
    assert miss["va"] == 0 and miss["fault"] == {"cause": "not_present", "level": 1}


# -- read-only -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["x86_64", "sv39"])
def test_image_unchanged_and_ad_bits_clear(
    fmt: str, guests: dict[str, Guest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = guests[fmt]
    before, mtime = _digest(g.path), g.path.stat().st_mtime_ns
    vas = [va + 0x10 for va, *_ in _layout(fmt)] + [0x1000_0000]
    args = [str(g.path), "--root", hex(g.pt.root), "--format", fmt, "--json", str(tmp_path / "o.json")]
    for va in vas:
        args += ["--va", hex(va)]
    _inspect(capsys, *args)
    assert _digest(g.path) == before and g.path.stat().st_mtime_ns == mtime
    a_bit = 1 << 5 if fmt.startswith("x86") else 1 << 6
    with PhysicalMemory.from_file(g.path) as mem:
        pt = PageTable.attach(mem, g.pt.root, fmt)
        for va in vas:
            assert all(not pte & a_bit for _lvl, _pa, pte in pt.walk_path(va))


# -- errors ------------------------------------------------------------------------------


def _error_cases(g: Guest, tmp: Path) -> list[tuple[list[str], str]]:
    img, root = str(g.path), hex(g.pt.root)
    odd = tmp / "odd.img"
    odd.write_bytes(b"\0" * 5000)
    return [
        ([str(tmp / "missing.img"), "--root", root], "missing.img"),
        ([str(tmp), "--root", root], str(tmp)),
        ([str(odd), "--root", "0"], "odd.img"),
        ([img, "--root", "0x1001", "--format", "sv39"], "0x1001"),
        ([img, "--root", "0x80000000"], "0x80000000"),
        ([img, "--root", str(MEM_SIZE), "--format", "sv48"], hex(MEM_SIZE)),
        ([img, "--root", root, "--format", "mips"], "mips"),
        ([img, "--root", "0xZZ"], "0xZZ"),
        ([img, "--root", "-4096"], "-4096"),
        ([img, "--root", "0x1" + "0" * 16], "0x10000000000000000"),
        ([img, "--root", root, "--va", "banana"], "banana"),
        ([img, "--root", hex(10 << 60)], hex(10 << 60)),  # satp MODE 10 (Sv57)
        ([img, "--root", hex((9 << 60) | 1), "--format", "sv39"], hex((9 << 60) | 1)),
        ([img, "--root", root, "--json", str(tmp / "no" / "dir.json")], "dir.json"),
    ]


def test_errors_exit_2_with_one_line(
    guests: dict[str, Guest], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, needle in _error_cases(guests["x86_64"], tmp_path):
        assert main(["inspect", *args]) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("vmopt inspect: error: "), captured.err
        assert needle in lines[0], (needle, lines[0])
        assert "Traceback" not in captured.err
        if "--json" not in args:
            assert captured.out == ""


def test_error_in_subprocess_has_no_traceback(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    missing = tmp_path / "nowhere.img"
    proc = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "inspect", str(missing), "--root", "0x1000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "nowhere.img" in proc.stderr
