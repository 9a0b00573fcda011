"""PhysicalMemory: sparse frames, range checks, the frame allocator and images."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt import ConfigError, OutOfFramesError, PageTable, PhysicalAccessError, PhysicalMemory

MiB, GiB = 1 << 20, 1 << 30


def test_reads_of_untouched_memory_are_zero_and_cost_nothing() -> None:
    mem = PhysicalMemory(64 * GiB)
    assert mem.read(63 * GiB, 16) == bytes(16)
    assert mem.resident_frames() == 0


@settings(max_examples=80, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, 5 * 4096), st.binary(min_size=0, max_size=9000)), max_size=12),
    probe=st.tuples(st.integers(0, 6 * 4096), st.integers(0, 10000)),
)
def test_read_write_agree_with_a_bytearray(writes: list[tuple[int, bytes]], probe: tuple[int, int]) -> None:
    size = 8 * 4096
    mem = PhysicalMemory(size)
    ref = bytearray(size)
    for pa, data in writes:
        if pa + len(data) > size:
            with pytest.raises(PhysicalAccessError):
                mem.write(pa, data)
        else:
            mem.write(pa, data)
            ref[pa : pa + len(data)] = data
    pa, n = probe
    if pa + n > size:
        with pytest.raises(PhysicalAccessError, match="outside memory"):
            mem.read(pa, n)
    else:
        assert mem.read(pa, n) == bytes(ref[pa : pa + n])
    assert mem.read(0, size) == bytes(ref)


def test_out_of_range_write_changes_nothing() -> None:
    mem = PhysicalMemory(2 * 4096)
    with pytest.raises(PhysicalAccessError, match=r"\[0x1ffc, 0x2004\)"):
        mem.write(0x1FFC, b"12345678")
    assert mem.resident_frames() == 0
    assert mem.read(0, 8192) == bytes(8192)


def test_bad_sizes_are_config_errors() -> None:
    for bad in (0, -4096, 4095, "4096"):
        with pytest.raises(ConfigError, match="multiple of 4096"):
            PhysicalMemory(bad)  # type: ignore[arg-type]
    mem = PhysicalMemory(16 * MiB)
    with pytest.raises(ConfigError, match="8192"):
        mem.alloc(8192)


def test_alloc_is_aligned_zeroed_and_exhausts_cleanly() -> None:
    mem = PhysicalMemory(8 * MiB)
    a = mem.alloc(2 * MiB)
    assert a % (2 * MiB) == 0
    mem.write(a, b"junk")
    mem.free(a, 2 * MiB)
    b = mem.alloc(2 * MiB)
    assert mem.read(b, 4) == bytes(4)  # zero-filled on reuse
    blocks = [b] + [mem.alloc(2 * MiB) for _ in range(3)]
    assert len(set(blocks)) == 4
    free = mem.free_bytes
    with pytest.raises(OutOfFramesError) as err:
        mem.alloc(4096)
    assert err.value.size == 4096 and mem.free_bytes == free == 0


def test_gigabyte_blocks_in_a_big_sparse_memory() -> None:
    mem = PhysicalMemory(64 * GiB)
    pa = mem.alloc(GiB)
    assert pa % GiB == 0
    mem.write(pa + GiB - 4, b"tail")
    assert mem.resident_frames() == 1


def test_one_gib_of_4k_pages_in_64_gib_costs_little_host_memory() -> None:
    """Tables for 1 GiB of 4 KiB pages are 2 MiB; everything else must stay under 8 MiB."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        mem = PhysicalMemory(64 * GiB)
        pt = PageTable(mem, "x86_64")
        va, pa = 0x7F00_0000_0000, 32 * GiB
        for off in range(0, GiB, 4096):
            pt.map(va + off, pa + off, 4096, "rw", user=True)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tables = len(pt.table_frames())
    assert tables == 1 + 1 + 1 + 512
    assert pt.walk(va + GiB - 1).pa == pa + GiB - 1
    table_bytes = 512 * 4096
    assert used - base < table_bytes + 8 * MiB, f"{(used - base) / MiB:.1f} MiB"


def test_image_backed_memory(tmp_path: Path) -> None:
    path = tmp_path / "dump.raw"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    with PhysicalMemory.from_file(path) as mem:
        assert mem.size == 16384
        assert mem.read(0x1FF, 2) == bytes([255, 0])
        with pytest.raises(Exception, match="read-only"):
            mem.write(0, b"x")
        with pytest.raises(OutOfFramesError):
            mem.alloc()  # every frame of an image belongs to the guest
        mem.free(0x2000)  # ... until donated
        assert mem.alloc() == 0x2000
    with PhysicalMemory.from_file(path, writable=True) as mem:
        mem.write(1, b"\xaa")
    assert path.read_bytes()[1] == 0xAA
    bad = tmp_path / "odd.raw"
    bad.write_bytes(b"123")
    with pytest.raises(ConfigError, match="multiple of 4096"):
        PhysicalMemory.from_file(bad)
    with pytest.raises(ConfigError, match="cannot open"):
        PhysicalMemory.from_file(tmp_path / "missing.raw")
