"""``vmopt.dumps``: every reader against dumps written from the documented layouts (tests/dump_layouts.py).

Page tables are built with vmopt in sparse memory, written out in each
format, and must list back exactly; bytes must be the same through every
reader; QEMU's monitor listings must match a transcription of QEMU's C.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dump_layouts import (
    PAGE,
    Cpu,
    Guest,
    avml_bytes,
    compress_page,
    flatten,
    guest_from_memory,
    kdump_bytes,
    lime_bytes,
    qemu_info_mem,
    qemu_info_tlb,
    write_all,
    write_elf,
)
from vmopt.dumps import DUMP_FORMATS, Dump, DumpError, info_mem, info_tlb, open_dump
from vmopt.errors import ConfigError, PhysicalAccessError, VmoptError
from vmopt.memory.physical import PhysicalMemory
from vmopt.paging import PageTable

MiB, GiB = 1 << 20, 1 << 30
HIGH = {"x86_64": 0xFFFF_8880_0000_0000, "x86_64_5level": 0xFF11_0000_0000_0000}
READERS = ("elf", "raw", "kdump", "kdump-flat", "lime", "avml")


def build_guest(fmt: str) -> tuple[Guest, PageTable, list[object]]:
    """A guest with 4 KiB, 2 MiB and 1 GiB pages, user and kernel, data in its pages; the live tables.

    Memory is 1 GiB (sparse) so the direct map can be one 1 GiB page; the
    RAM written out is the low 8 MiB that holds every table and data page.
    """
    mem = PhysicalMemory(GiB)
    pt = PageTable(mem, fmt)
    text = mem.alloc(2 * MiB)
    pt.map(0x40_0000, text, 2 * MiB, "rx", user=True)
    for i in range(6):
        pa = mem.alloc(PAGE)
        pt.map(0x7FFF_0000_0000 + i * PAGE, pa, PAGE, "rw" if i % 3 else "r", user=True)
        mem.write(pa, bytes([i + 1]) * PAGE)
    pt.map(HIGH[fmt], 0, GiB, "rw", global_=True)  # direct map
    pt.map(HIGH[fmt] + GiB, mem.alloc(2 * MiB), 2 * MiB, "rx", global_=True)
    mem.write(text + 0x123, b"hello, dump")
    top = max(mem.iter_resident()) + PAGE
    assert top <= 8 * MiB
    la57 = 1 << 12 if fmt == "x86_64_5level" else 0
    cpus = [
        Cpu(cr3=pt.root | 0x5, cr4=0x3406E0 | la57),
        Cpu(cr3=pt.root, cr4=0x3406E0 | la57, state_size=432),
    ]
    guest = guest_from_memory(mem, [(0, 0xA0000), (0x100000, 8 * MiB)], cpus)
    return guest, pt, list(pt.mappings())


@pytest.fixture(scope="module", params=["x86_64", "x86_64_5level"])
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    fmt = request.param
    guest, pt, mappings = build_guest(fmt)
    d = tmp_path_factory.mktemp(fmt)
    return fmt, guest, pt, mappings, write_all(guest, d)


def test_every_reader_lists_the_tables_it_was_written_from(written: tuple) -> None:
    fmt, _guest, pt, mappings, paths = written
    for name in READERS:
        with open_dump(paths[name]) as dump:
            assert dump.format == name
            t = PageTable.attach(dump.memory, pt.root, fmt)
            assert list(t.mappings()) == mappings, name
            pa = t.walk(0x40_0123, "r", user=True).pa
            assert pa == pt.walk(0x40_0123, "r", user=True).pa
            assert dump.memory.read(pa, 11) == b"hello, dump"


def test_vcpu_state_from_the_notes(written: tuple) -> None:
    fmt, _guest, pt, _mappings, paths = written
    for name in ("elf", "kdump", "kdump-flat"):
        dump = open_dump(paths[name])
        assert [c.cr3 for c in dump.cpus] == [pt.root | 0x5, pt.root]
        assert all(c.la57 == (fmt == "x86_64_5level") for c in dump.cpus)
        assert dump.cpus[0].get("kernel_gs_base") is not None  # a 440-byte QEMUCPUState
        assert dump.cpus[1].get("kernel_gs_base") is None  # a 432-byte one
        assert dump.cpus[0].cr0 == 0x80050033 and dump.cpus[0].get("rip") == 0xFFFFFFFF81000000
        assert dump.cpus[1].get("pid") == 2
    for name in ("raw", "lime", "avml"):
        assert open_dump(paths[name]).cpus == ()


def test_qemu_listings_match_qemus_algorithm(written: tuple) -> None:
    fmt, guest, pt, _mappings, paths = written
    la57 = fmt == "x86_64_5level"
    want_mem = qemu_info_mem(guest, pt.root, la57, as_qemu=False)
    want_tlb = qemu_info_tlb(guest, pt.root, la57)
    assert len(want_tlb) == 1 + 6 + 1 + 1 and want_mem
    # QEMU's own 5-level walk (its inverted PDPT/PD test) reads 512^3 entries here: capped on both sides.
    want_quirk = qemu_info_mem(guest, pt.root, la57, max_tables=300)
    for name in READERS:
        mem = open_dump(paths[name]).memory
        got = info_mem(mem, pt.root, la57=la57, as_qemu=False)
        assert [line.text for line in got.lines] == want_mem and not got.truncated, name
        assert [line.text for line in info_tlb(mem, pt.root, la57=la57).lines] == want_tlb, name
        quirk = info_mem(mem, pt.root, la57=la57, max_tables=300)
        assert [line.text for line in quirk.lines] == want_quirk, name
        assert quirk.truncated == la57  # the 4-level walk is the same either way, and small
    # The ranges merge by rights alone: user r, user rw, user r again, as QEMU prints them.
    assert any(line.endswith(" ur-") for line in want_mem) and any(line.endswith(" urw") for line in want_mem)


def test_compressors_really_compress() -> None:
    # The kdump writer uses each method for some pages (else the reader's path would go untested).
    uniform = b"\x07" * PAGE
    for how in ("zlib", "zstd", "snappy", "lzo"):
        packed = compress_page(uniform, how)
        assert packed is not None and len(packed) < 256, how


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    how=st.sampled_from(["zlib", "lzo", "snappy", "zstd", "none"]),
    nranges=st.integers(1, 3),
)
def test_bytes_are_the_same_through_every_reader(
    data: st.DataObject, how: str, nranges: int, tmp_path: Path
) -> None:
    ranges, pos = [], 0
    for _ in range(nranges):
        start = pos + data.draw(st.integers(0, 4)) * PAGE
        end = start + data.draw(st.integers(1, 24)) * PAGE
        ranges.append((start, end))
        pos = end + PAGE
    pages: dict[int, bytes] = {}
    for s, e in ranges:
        for pa in range(s, e, PAGE):
            kind = data.draw(st.sampled_from(["zero", "fill", "random"]))
            if kind == "fill":
                pages[pa] = bytes([data.draw(st.integers(1, 255))]) * PAGE
            elif kind == "random":
                pages[pa] = random.Random(data.draw(st.integers(0, 1 << 32))).randbytes(PAGE)
    guest = Guest(ranges=ranges, pages=pages)
    d = tmp_path / f"g{len(os.listdir(tmp_path))}"
    d.mkdir()
    paths = write_all(guest, d, kdump=how)
    pa = data.draw(st.sampled_from(ranges))[0]
    n = data.draw(st.integers(1, 3 * PAGE))
    for name in READERS:
        mem = open_dump(paths[name]).memory
        inside = any(s <= pa and pa + n <= e for s, e in ranges)
        if name == "raw":
            inside = pa + n <= ranges[-1][1]
        if inside:
            assert mem.read(pa, n) == guest.read(pa, n), (name, hex(pa), n)
        else:
            with pytest.raises(PhysicalAccessError):
                mem.read(pa, n)
        assert mem.contains(pa, n) == inside


def test_paging_true_elf_reads_physical_and_keeps_virtual_addresses(tmp_path: Path) -> None:
    guest = Guest(ranges=[(0, 0x10000)], pages={0x3000: b"\x5a" * PAGE})
    path = tmp_path / "paging.elf"
    write_elf(guest, path, virtual=[(0xFFFF888000003000, 0x3000, PAGE), (0xFFFFFFFF81000000, 0x3000, PAGE)])
    dump = open_dump(path)
    assert dump.memory.read(0x3000, 4) == b"\x5a" * 4
    assert dump.virtual_segments == ((0xFFFF888000003000, 0x3000, PAGE), (0xFFFFFFFF81000000, 0x3000, PAGE))
    assert dump.ranges() == [(0x3000, 0x4000)]


def test_kernel_root_from_vmcoreinfo(tmp_path: Path) -> None:
    vmci = b"OSRELEASE=6.12.0\nSYMBOL(swapper_pg_dir)=ffffffffb2a0c000\nNUMBER(phys_base)=-1040187392\n"
    vmci += b"NUMBER(pgtable_l5_enabled)=0\nKERNELOFFSET=30000000\n"
    guest = Guest(ranges=[(0, 0x10000)], vmcoreinfo=vmci)
    write_elf(guest, tmp_path / "g.elf")
    dump = open_dump(tmp_path / "g.elf")
    assert dump.cpus == () and dump.vmcoreinfo is not None
    assert dump.vmcoreinfo.kernel_offset == 0x30000000 and dump.vmcoreinfo.pgtable_l5_enabled is False
    assert dump.phys_base == (-1040187392) % (1 << 64)
    root = dump.kernel_root()
    assert root.pa == (0xFFFFFFFFB2A0C000 - 0xFFFFFFFF80000000 - 1040187392) % (1 << 64)
    assert "phys_base" in root.how and root.five_level is False
    (tmp_path / "k.kdump").write_bytes(kdump_bytes(guest, phys_base=0x1000000))
    k = open_dump(tmp_path / "k.kdump")
    assert k.kdump is not None and k.kdump["phys_base"] == 0x1000000
    assert k.kernel_root().pa == 0xB2A0C000 - 0x80000000 + 0x1000000
    bare = Guest(ranges=[(0, 0x10000)])
    write_elf(bare, tmp_path / "bare.elf")
    with pytest.raises(DumpError, match="no VMCOREINFO"):
        open_dump(tmp_path / "bare.elf").kernel_root()


def test_format_is_forced_and_detection_by_magic(written: tuple, tmp_path: Path) -> None:
    _fmt, _guest, _pt, _mappings, paths = written
    assert open_dump(paths["elf"], "raw").format == "raw"
    with pytest.raises(DumpError) as err:
        open_dump(paths["elf"], "lime")
    assert err.value.field == "range 0 magic (at offset 0x0)" and err.value.value == 0x464C457F
    with pytest.raises(ConfigError, match="qcow2"):
        open_dump(paths["elf"], "qcow2")
    assert set(DUMP_FORMATS) == set(READERS)


@pytest.mark.parametrize("bad", [None, 3, 1.5, ["x"], b"\xff" * 3])
def test_bad_arguments_are_vmopt_errors(bad: object, tmp_path: Path) -> None:
    with pytest.raises(VmoptError):
        open_dump(bad)  # type: ignore[arg-type]
    with pytest.raises(VmoptError):
        Dump(tmp_path, bad)  # type: ignore[arg-type]
    mem = PhysicalMemory(1 << 20)
    with pytest.raises(VmoptError):
        info_mem(bad, 0)  # type: ignore[arg-type]
    if not isinstance(bad, int):
        with pytest.raises(VmoptError):
            info_tlb(mem, bad)  # type: ignore[arg-type]
    with pytest.raises(VmoptError):
        info_tlb(mem, 0, max_tables=-1)


def test_dump_memory_is_read_only(written: tuple) -> None:
    paths = written[4]
    mem = open_dump(paths["kdump"]).memory
    with pytest.raises(VmoptError):
        mem.write(0, b"x")
    with pytest.raises(VmoptError):
        mem.write_u64(0, 1)


def test_lime_and_avml_headers(tmp_path: Path) -> None:
    guest = Guest(ranges=[(0x1000, 0x3000)], pages={0x1000: b"\x01" * PAGE})
    lime, avml = lime_bytes(guest), avml_bytes(guest)
    assert lime[:4] == b"EMiL" and int.from_bytes(lime[16:24], "little") == 0x2FFF  # inclusive end
    assert avml[:4] == b"AVML" and int.from_bytes(avml[4:8], "little") == 2
    flat = flatten(kdump_bytes(guest))
    assert flat[:12] == b"makedumpfile" and flat[-16:] == b"\xff" * 16
