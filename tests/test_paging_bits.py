"""PTE bit patterns worked out by hand from the Intel SDM and the RISC-V privileged spec."""

from __future__ import annotations

import pytest

from vmopt import AddressError, ConfigError, MappingError, PageFault, PageTable, PhysicalMemory

MiB = 1 << 20
GiB = 1 << 30


def idx(va: int, level: int) -> int:
    return (va >> (12 + 9 * level)) & 511


def test_x86_4k_leaf_and_tables_bit_exact() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    va = 0x7F12_3456_7000
    pt.map(va, 0x0123_4000, 4096, "rw", user=True)
    # Walk the tree by hand.
    pml4e = mem.read_u64(pt.root + idx(va, 3) * 8)
    assert pml4e & 0xFFF == 0x007  # P | RW | US, A still clear
    pdpt = pml4e & ~0xFFF
    pdpte = mem.read_u64(pdpt + idx(va, 2) * 8)
    pd = pdpte & ~0xFFF
    pde = mem.read_u64(pd + idx(va, 1) * 8)
    ptab = pde & ~0xFFF
    pte_pa = ptab + idx(va, 0) * 8
    # P(0) RW(1) US(2), XD(63) because the page is not executable.
    assert mem.read_u64(pte_pa) == 0x8000_0000_0123_4007
    t = pt.walk(va + 0x123, "r", user=True)
    assert t.pa == 0x0123_4123 and t.memory_refs == 4 and t.pte_pa == pte_pa
    assert mem.read_u64(pte_pa) == 0x8000_0000_0123_4027  # A (bit 5) set by the walk
    assert mem.read_u64(pt.root + idx(va, 3) * 8) & 0x20  # upper levels get A too
    pt.walk(va, "w", user=True)
    assert mem.read_u64(pte_pa) == 0x8000_0000_0123_4067  # D (bit 6) on a write


def test_x86_large_pages_bit_exact() -> None:
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, "x86_64")
    pt.map(0x4000_0000, 0x0060_0000, 2 * MiB, "rx", global_=True)
    pt.map(0x80_0000_0000, GiB, GiB, "rwx")
    va2 = 0x4000_0000
    pdpt = mem.read_u64(pt.root + idx(va2, 3) * 8) & ~0xFFF
    pd = mem.read_u64(pdpt + idx(va2, 2) * 8) & ~0xFFF
    # P | PS(7) | G(8); RW clear; executable so XD clear.
    assert mem.read_u64(pd + idx(va2, 1) * 8) == 0x0060_0000 | 0x181
    va1 = 0x80_0000_0000
    pdpt1 = mem.read_u64(pt.root + idx(va1, 3) * 8) & ~0xFFF
    assert mem.read_u64(pdpt1 + idx(va1, 2) * 8) == GiB | 0x83  # P | RW | PS
    t = pt.walk(va1 + 0x1234_5678, "x")
    assert (t.pa, t.page_size, t.memory_refs, t.level) == (GiB + 0x1234_5678, GiB, 2, 2)


def test_x86_5level_uses_57_bit_addresses() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64_5level")
    va = 0x00FF_0000_0000_0000 - 0x1000  # needs bits above 47
    pt.map(va, 0x5000, 4096, "r")
    t = pt.walk(va)
    assert t.pa == 0x5000 and t.memory_refs == 5
    pt4 = PageTable(mem, "x86_64")
    with pytest.raises(PageFault) as err:
        pt4.walk(va)
    assert err.value.cause == "non_canonical" and err.value.level is None


def test_x86_reserved_bits_fault() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    va = 0x1000
    pt.map(va, 0x8000, 4096, "rw")
    leaf = pt.lookup(va)
    assert leaf is not None
    # Bit 50 is above MAXPHYADDR (46) and so reserved.
    mem.write_u64(leaf.pte_pa, leaf.pte | 1 << 50)
    with pytest.raises(PageFault) as err:
        pt.walk(va)
    assert (err.value.cause, err.value.level) == ("reserved", 0)
    # PS in a PML4E is reserved.
    pml4e_pa = pt.root + idx(va, 3) * 8
    mem.write_u64(leaf.pte_pa, leaf.pte)
    mem.write_u64(pml4e_pa, mem.read_u64(pml4e_pa) | 0x80)
    with pytest.raises(PageFault) as err:
        pt.walk(va)
    assert (err.value.cause, err.value.level) == ("reserved", 3)


def test_x86_2m_page_reserved_low_bits() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    pt.map(0x20_0000, 0x40_0000, 2 * MiB, "rw")
    leaf = pt.lookup(0x20_0000)
    assert leaf is not None
    mem.write_u64(leaf.pte_pa, leaf.pte | 1 << 13)  # bits 20:13 of a 2 MiB PDE are reserved
    with pytest.raises(PageFault) as err:
        pt.walk(0x20_0000)
    assert err.value.cause == "reserved"
    mem.write_u64(leaf.pte_pa, leaf.pte | 1 << 12)  # bit 12 is PAT: allowed, not part of the address
    assert pt.walk(0x20_0010).pa == 0x40_0010


def test_x86_rights_combine_over_levels() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    va = 0x1000
    pt.map(va, 0x8000, 4096, "rwx", user=True)
    assert pt.walk(va, "w", user=True).pa == 0x8000
    pml4e_pa = pt.root + idx(va, 3) * 8
    pml4e = mem.read_u64(pml4e_pa)
    mem.write_u64(pml4e_pa, pml4e & ~0x2)  # clear R/W above: the page becomes read-only
    for user in (True, False):  # CR0.WP=1: supervisor writes fault too
        with pytest.raises(PageFault) as err:
            pt.walk(va, "w", user=user)
        assert err.value.cause == "protection"
    mem.write_u64(pml4e_pa, pml4e & ~0x4)  # clear U/S above: supervisor-only
    with pytest.raises(PageFault):
        pt.walk(va, "r", user=True)
    assert pt.walk(va, "w").pa == 0x8000
    mem.write_u64(pml4e_pa, pml4e | 1 << 63)  # XD above: no fetch
    with pytest.raises(PageFault):
        pt.walk(va, "x")
    assert pt.walk(va, "r").perms == 0b110


def test_x86_supervisor_may_read_user_pages_without_smap() -> None:
    mem = PhysicalMemory(16 * MiB)
    pt = PageTable(mem, "x86_64")
    pt.map(0x1000, 0x8000, 4096, "rx", user=True)
    assert pt.walk(0x1000, "r").pa == 0x8000
    assert pt.walk(0x1000, "x").pa == 0x8000
    with pytest.raises(PageFault) as err:
        pt.walk(0x1000, "w")
    assert err.value.cause == "protection" and err.value.access == "w"


def test_sv39_leaf_bit_exact() -> None:
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, "sv39")
    va = 0x12_3456_7000
    pt.map(va, 0x8020_0000, 4096, "rwx", user=True)
    l2 = mem.read_u64(pt.root + idx(va, 2) * 8)
    assert l2 & 0x3FF == 0x001  # V only: a pointer
    t1 = (l2 >> 10) << 12
    l1 = mem.read_u64(t1 + idx(va, 1) * 8)
    t0 = (l1 >> 10) << 12
    pte_pa = t0 + idx(va, 0) * 8
    # PPN 0x80200 in bits 53:10; V R W X U = 0x1F.
    assert mem.read_u64(pte_pa) == (0x80200 << 10) | 0x1F == 0x2008_001F
    t = pt.walk(va + 8, "r", user=True)
    assert t.pa == 0x8020_0008 and t.memory_refs == 3
    assert mem.read_u64(pte_pa) == 0x2008_005F  # A (bit 6)
    pt.walk(va, "w", user=True)
    assert mem.read_u64(pte_pa) == 0x2008_00DF  # D (bit 7)


def test_sv39_supervisor_and_sum() -> None:
    mem = PhysicalMemory(16 * MiB)
    pt = PageTable(mem, "sv39")
    pt.map(0x1000, 0x8000, 4096, "rw", user=True)
    with pytest.raises(PageFault) as err:
        pt.walk(0x1000, "r", user=False)
    assert err.value.cause == "protection"
    from vmopt.paging import RiscV

    pt_sum = PageTable.attach(mem, pt.root, RiscV(3, sum=True))
    assert pt_sum.walk(0x1000, "r").pa == 0x8000


def test_sv39_misaligned_superpage_faults() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv39")
    pt.map(0x20_0000, 0x40_0000, 2 * MiB, "rw")
    leaf = pt.lookup(0x20_0000)
    assert leaf is not None
    mem.write_u64(leaf.pte_pa, leaf.pte | (1 << 10))  # PPN[0] = 1 in a megapage
    with pytest.raises(PageFault) as err:
        pt.walk(0x20_0000)
    assert (err.value.cause, err.value.level) == ("misaligned", 1)


def test_sv39_reserved_encodings_fault() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv39")
    pt.map(0x1000, 0x8000, 4096, "r")
    leaf = pt.lookup(0x1000)
    assert leaf is not None
    mem.write_u64(leaf.pte_pa, (leaf.pte & ~0b1110) | 0b0100)  # W=1, R=0
    with pytest.raises(PageFault) as err:
        pt.walk(0x1000)
    assert err.value.cause == "reserved"
    mem.write_u64(leaf.pte_pa, leaf.pte | 1 << 60)  # bits 63:54 reserved
    with pytest.raises(PageFault) as err:
        pt.walk(0x1000)
    assert err.value.cause == "reserved"


def test_sv39_non_canonical() -> None:
    pt = PageTable(PhysicalMemory(16 * MiB), "sv39")
    with pytest.raises(PageFault) as err:
        pt.walk(1 << 40)
    assert err.value.cause == "non_canonical"
    with pytest.raises(AddressError, match="not canonical"):
        pt.map(1 << 40, 0x1000)


def test_sv48_gigapage_and_canonical_high_half() -> None:
    mem = PhysicalMemory(2 * GiB)
    pt = PageTable(mem, "sv48")
    va = 0xFFFF_8000_0000_0000
    pt.map(va, GiB, GiB, "r", global_=True)
    t = pt.walk(va + 0x100)
    assert (t.pa, t.page_size, t.memory_refs, t.global_) == (GiB + 0x100, GiB, 2, True)
    (m,) = list(pt.mappings())
    assert (m.va, m.pa, m.size) == (va, GiB, GiB)


def test_sv57_five_levels_and_canonical_high_half() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv57")
    va = 0xFF60_0000_0000_0000  # needs bits above 47; canonical for 57-bit addresses
    pt.map(va, 0x20_0000, 2 * MiB, "rw", global_=True)
    pt.map(0x0100_0000_0000_0000 - 0x1000, 0x5000, 4096, "r", user=True)
    root_entry = mem.read_u64(pt.root + idx(va, 4) * 8)
    assert root_entry & 0x3FF == 0x001  # a pointer: V only
    t = pt.walk(va + 0x1234, "w")
    assert (t.pa, t.page_size, t.memory_refs, t.level, t.global_) == (0x20_1234, 2 * MiB, 4, 1, True)
    leaf = pt.lookup(va)
    assert leaf is not None and leaf.pte == (0x20_0000 >> 2) | 0xE7  # V R W G A D
    assert pt.walk(0x00FF_FFFF_FFFF_F008, "r", user=True).memory_refs == 5
    with pytest.raises(PageFault) as err:
        pt.walk(1 << 56)
    assert err.value.cause == "non_canonical"
    with pytest.raises(PageFault) as err:
        PageTable.attach(mem, pt.root, "sv48").walk(va)
    assert err.value.cause == "non_canonical"


@pytest.mark.parametrize("fmt", ["x86_64", "x86_64_5level", "sv39", "sv48", "sv57"])
def test_bad_input_is_rejected_and_changes_nothing(fmt: str) -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, fmt)
    pt.map(0x20_0000, 0x40_0000, 2 * MiB, "rw")
    before = list(pt.mappings())
    frames = mem.resident_frames()
    cases: list[tuple[type[Exception], str, dict[str, object]]] = [
        (AddressError, "aligned", {"va": 0x1001, "pa": 0x1000}),
        (AddressError, "aligned", {"va": 0x1000, "pa": 0x1800}),
        (MappingError, "inside the 2 MiB page", {"va": 0x20_1000, "pa": 0x1000}),
        (MappingError, "already mapped", {"va": 0x20_0000, "pa": 0x60_0000, "size": 2 * MiB}),
        (AddressError, "outside memory", {"va": 0x1000, "pa": 128 * MiB}),
        (ConfigError, "perms", {"va": 0x1000, "pa": 0x1000, "perms": "rq"}),
        (ConfigError, "page size", {"va": 0x1000, "pa": 0x1000, "size": 8192}),
        (AddressError, "canonical", {"va": 1 << 60, "pa": 0x1000}),
    ]
    for exc, match, kw in cases:
        with pytest.raises(exc, match=match):
            pt.map(**kw)  # type: ignore[arg-type]
    with pytest.raises(MappingError, match="split"):
        pt.unmap(0x20_0000, 4096)
    with pytest.raises(MappingError, match="not mapped"):
        pt.unmap(0x1000)
    with pytest.raises(MappingError, match="not mapped"):
        pt.protect(0x20_0000, 4 * MiB, "r")  # second half unmapped
    assert list(pt.mappings()) == before
    assert mem.resident_frames() == frames


def test_empty_tables_return_to_allocator() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    free0 = mem.free_bytes
    pt.map(0x7F00_0000_0000, 0x1000)
    assert mem.free_bytes == free0 - 3 * 4096  # PDPT, PD, PT
    pt.unmap(0x7F00_0000_0000)
    assert mem.free_bytes == free0
    assert pt.table_frames() == [pt.root]
    assert mem.read(pt.root, 4096) == bytes(4096)


def test_virtual_access_crosses_pages_and_faults_before_writing() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "x86_64")
    pt.map(0x1000, 0x9000, 4096, "rw")
    pt.map(0x2000, 0x5000, 4096, "rw")
    pt.map(0x3000, 0x7000, 4096, "r")
    pt.write_virt(0x1FFC, b"abcdefgh")
    assert mem.read(0x9FFC, 4) == b"abcd" and mem.read(0x5000, 4) == b"efgh"
    assert pt.read_virt(0x1FFC, 8) == b"abcdefgh"
    with pytest.raises(PageFault) as err:
        pt.write_virt(0x2FFE, b"XXXX")  # second page is read-only
    assert err.value.va == 0x3000 and err.value.cause == "protection"
    assert mem.read(0x5FFE, 2) == b"\0\0"  # nothing written


def test_attach_and_image_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv48")
    pt.map(0x40_0000, 0x20_0000, 2 * MiB, "rx", user=True)
    pt.map(0x1000, 0x3000, 4096, "rw")
    mem.write(0x3000, b"hello")
    image = tmp_path / "guest.img"
    mem.save(image)
    with PhysicalMemory.from_file(image) as dump:
        view = PageTable.attach(dump, pt.root, "sv48")
        assert list(view.mappings()) == list(pt.mappings())
        assert view.read_virt(0x1000, 5) == b"hello"
        assert not view.update_ad  # read-only image: inspection mode
        with pytest.raises(Exception, match="read-only"):
            dump.write(0, b"x")
