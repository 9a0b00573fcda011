"""AArch64 stage 1 through the public API: the format object, faults with FSCs, the MMU and inspect.

The walk itself is checked against Unicorn (test_aarch64_unicorn.py) and
the reference (test_core_paging.py); here, what a user of the API sees.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.paging.aarch64 import AArch64 as RefAArch64
from vmopt import Mmu, PageTable, PhysicalMemory
from vmopt.errors import ConfigError, PageFault
from vmopt.paging import FORMATS, AArch64, Perm
from vmopt.tlb import TlbConfig

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"granule": 8192}, "granule must be 4096, 16384 or 65536, got 8192"),
        ({"granule": 4096.0}, "got 4096.0"),
        ({"va_bits": 49}, "va_bits (64 - TxSZ) must be in [25, 48], got 49"),
        ({"va_bits": 24}, "got 24"),
        ({"pa_bits": 52}, "pa_bits (TCR_EL1.IPS) must be one of 32, 36, 40, 42, 44, 48, got 52"),
        ({"upper": 1}, "upper must be a bool, got 1"),
        ({"hd": True}, "hd (hardware dirty state, TCR_EL1.HD) needs ha (TCR_EL1.HA) set"),
    ],
)
def test_options_are_validated_and_named(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as e:
        AArch64(**kwargs)  # type: ignore[arg-type]
    assert words in str(e.value)


def test_format_is_immutable_and_equal_by_value() -> None:
    fmt = AArch64(16384, va_bits=47, ha=True)
    with pytest.raises(AttributeError, match="immutable"):
        fmt.va_bits = 48
    assert fmt == AArch64(16384, va_bits=47, ha=True) != AArch64(16384, va_bits=47)
    assert len({fmt, AArch64(16384, va_bits=47, ha=True)}) == 1


@pytest.mark.parametrize(
    ("name", "levels", "start", "sizes"),
    [
        ("aarch64", 4, 0, (4 * KiB, 2 * MiB, GiB)),
        ("aarch64_16k", 4, 0, (16 * KiB, 32 * MiB)),
        ("aarch64_64k", 3, 1, (64 * KiB, 512 * MiB)),
    ],
)
def test_registry_names(name: str, levels: int, start: int, sizes: tuple[int, ...]) -> None:
    fmt = FORMATS[name]()
    assert isinstance(fmt, AArch64)
    assert (fmt.name, fmt.levels, fmt.start_level, fmt.page_sizes, fmt.va_bits) == (
        name,
        levels,
        start,
        sizes,
        48,
    )


@settings(max_examples=200, deadline=None)
@given(
    granule=st.sampled_from([4096, 16384, 65536]),
    va_bits=st.integers(25, 48),
    upper=st.booleans(),
    tbi=st.booleans(),
    va=st.integers(0, (1 << 64) - 1),
)
def test_geometry_matches_the_reference(granule: int, va_bits: int, upper: bool, tbi: bool, va: int) -> None:
    """Index, span, entries and range checks of every (granule, TxSZ) equal the spec's arithmetic."""
    fmt = AArch64(granule, va_bits, upper, tbi=tbi)
    ref = RefAArch64(granule, va_bits, upper, tbi=tbi)
    assert (fmt.name, fmt.levels, fmt.leaf_sizes) == (ref.name, ref.levels, ref.leaf_sizes)
    assert fmt.is_canonical(va) == ref.is_canonical(va)
    assert fmt.canonicalize(va) == ref.canonicalize(va)
    for level in range(fmt.levels):
        assert (fmt.index(va, level), fmt.level_span(level), fmt.entries(level)) == (
            ref.index(va, level),
            ref.level_span(level),
            ref.entries(level),
        )
    assert fmt.level_span(fmt.levels - 1) * fmt.entries(fmt.levels - 1) == 1 << va_bits


def test_faults_carry_the_fsc_and_survive_pickling() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "aarch64_16k")
    pt.map(0x4000_0000, 0x10_0000 * 4, 16 * KiB, "r", user=True)
    with pytest.raises(PageFault) as e:
        pt.walk(0x4000_0000, "w", user=True)
    f = e.value
    assert (f.cause, f.level, f.fsc) == ("protection", 0, 0b001111)
    assert str(f) == "page fault: user write of 0x40000000: protection at level 0 (FSC 0b001111)"
    back = pickle.loads(pickle.dumps(f))
    assert (back.cause, back.level, back.fsc, str(back)) == (f.cause, f.level, f.fsc, str(f))
    with pytest.raises(PageFault) as e:
        pt.walk(0x8000_0000, "r")
    assert (e.value.cause, e.value.level, e.value.fsc) == ("not_present", 1, 0b000110)
    # x86 and RISC-V have no FSC.
    with pytest.raises(PageFault) as e:
        PageTable(mem, "sv39").walk(0x1000, "r")
    assert e.value.fsc is None


def test_ha_sets_af_and_hd_clears_ap2_in_memory() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, AArch64(ha=True, hd=True))
    pt.map(0x20_0000, 0x40_0000, 2 * MiB, "rw")
    leaf = pt.lookup(0x20_0000)
    assert leaf is not None
    af, ap2, dbm = 1 << 10, 1 << 7, 1 << 51
    assert leaf.pte & (af | ap2 | dbm) == ap2 | dbm and not leaf.accessed and not leaf.dirty
    assert not pt.walk(0x20_1234, "r").dirty
    assert mem.read_u64(leaf.pte_pa) & (af | ap2) == af | ap2
    assert pt.walk(0x20_1234, "w").dirty
    assert mem.read_u64(leaf.pte_pa) & (af | ap2 | dbm) == af | dbm
    # Without ha a clear AF is an access-flag fault, whatever the access.
    plain = PageTable(mem, "aarch64")
    plain.map(0x20_0000, 0x40_0000, 4096, "rw")
    entry = plain.lookup(0x20_0000)
    assert entry is not None
    mem.write_u64(entry.pte_pa, entry.pte & ~af)
    with pytest.raises(PageFault) as e:
        plain.walk(0x20_0000, "r")
    assert (e.value.cause, e.value.fsc) == ("access_flag", 0b001011)


def test_map_encodes_ap_xn_and_ng() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "aarch64")
    pt.map(0x1000, 0x8000, 4096, "rx", user=True)
    pt.map(0x2000, 0x9000, 4096, "rw", user=False, global_=True)
    user, kernel = pt.lookup(0x1000), pt.lookup(0x2000)
    assert user is not None and kernel is not None
    ap1, ap2, ng, pxn, uxn = 1 << 6, 1 << 7, 1 << 11, 1 << 53, 1 << 54
    assert user.pte & (ap1 | ap2 | ng | pxn | uxn) == ap1 | ap2 | ng | pxn
    assert kernel.pte & (ap1 | ap2 | ng | pxn | uxn) == pxn | uxn
    assert (user.perms, user.user, user.global_) == (Perm.R | Perm.X, True, False)
    assert (kernel.perms, kernel.user, kernel.global_) == (Perm.R | Perm.W, False, True)
    pt.walk(0x1000, "x", user=True)
    for va, access, user_mode in [(0x1000, "x", False), (0x2000, "r", True), (0x1000, "w", True)]:
        with pytest.raises(PageFault):
            pt.walk(va, access, user=user_mode)
    with pytest.raises(ConfigError, match="always readable at EL1"):
        pt.map(0x3000, 0xA000, 4096, "x")
    pt.protect(0x1000, 4096, "rw")
    again = pt.lookup(0x1000)
    assert again is not None and again.pte & (ap1 | ap2 | pxn | uxn) == ap1 | pxn | uxn


def test_tables_and_pages_of_every_granule_are_freed() -> None:
    for name in ("aarch64", "aarch64_16k", "aarch64_64k"):
        mem = PhysicalMemory(4 * GiB)
        free = mem.free_bytes
        pt = PageTable(mem, name)
        sizes = pt.fmt.page_sizes
        for i, size in enumerate(sizes):
            pt.map((i + 1) * GiB, size * 2, size, "rw")
            placed = pt.install((i + 1) * GiB + 4 * size, size, [0], b"x", Perm.R, False)
            assert placed is not None and mem.read(placed[0], 1) == b"x"
        # Every table is one granule, aligned to it.
        assert all(t % sizes[0] == 0 for t in pt.table_frames())
        for i, size in enumerate(sizes):
            pt.unmap((i + 1) * GiB, size)
        assert pt.table_frames() != [pt.root]
        pt.destroy()
        assert mem.free_bytes == free - sum(sizes), name


def test_mmu_tags_non_global_pages_with_the_asid() -> None:
    """nG pages are cached per ASID; global ones survive an ASID switch."""
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "aarch64_64k")
    pt.map(0x10_0000, 0x20_0000, 64 * KiB, "rw", user=True)  # nG
    pt.map(0x20_0000, 0x30_0000, 64 * KiB, "rw", global_=True)
    mmu = Mmu(pt, TlbConfig(16, 4), asid=1)
    assert mmu.translate(0x10_0010, "w", True) == 0x20_0010
    assert mmu.translate(0x20_0010, "r") == 0x30_0010
    mmu.switch(pt, asid=2)
    assert mmu.cached(0x20_0010) and not mmu.cached(0x10_0010)
    mmu.switch(pt, asid=1)
    assert mmu.cached(0x10_0010)
    # A TLB hit that the rights refuse faults with the architecture's FSC.
    with pytest.raises(PageFault) as e:
        mmu.translate(0x20_0010, "r", True)
    assert (e.value.cause, e.value.fsc) == ("protection", 0b001111)


def test_inspect_reads_a_ttbr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmopt.cli.main import main

    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "aarch64", update_ad=False)
    pt.map(0x40_0000, 0x20_0000, 2 * MiB, "rw", user=True)
    pt.map(0x7F_0000_1000, 0x1000, 4096, "rx", global_=True)
    image = tmp_path / "a64.img"
    mem.save(image)
    ttbr = (0x42 << 48) | pt.root
    args = [
        "inspect",
        str(image),
        "--root",
        hex(ttbr),
        "--format",
        "aarch64",
        "--va",
        "0x400010",
        "--va",
        "0x800000",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "aarch64 (4 levels, 48-bit VA)" in out and f"TTBR {ttbr:#x}: ASID 0x42" in out
    assert "0000000000400000-0000000000600000 0000000000200000 rw-u- -> 000000200000 (2M)" in out
    assert "0000007f00001000-0000007f00002000 0000000000001000 r-xsg -> 000000001000 (4K)" in out
    assert "=> pa 0x200010 (2M page at 0x200000, perms rw-, user)" in out
    assert "=> fault: not_present at level 1 (FSC 0b000110)" in out
