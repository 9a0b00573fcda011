"""Hostile memory images: self-maps, shared-subtree bombs, tables outside memory, random bytes.

Every listing, walk and lookup of any image must end in bounded time and
memory and raise nothing but :class:`~vmopt.errors.VmoptError`. The fuzz
tests replay the seeds in ``tests/corpus/images`` first, then run a few
seconds of hypothesis examples (``VMOPT_FUZZ_EXAMPLES`` runs more locally).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmopt import Mmu, TlbConfig
from vmopt.errors import VmoptError
from vmopt.memory.physical import FRAME_SIZE, PhysicalMemory
from vmopt.paging import FORMATS, PageFault, PageTable, Perm, make_format

CORPUS = Path(__file__).parent / "corpus" / "images"
FUZZ_EXAMPLES = int(os.environ.get("VMOPT_FUZZ_EXAMPLES", "40"))
#: Work caps the fuzz listing runs under (inspect's defaults are larger, and as bounded).
MAX_TABLES = 4096
MAX_REGIONS = 20_000


def _self_map(path: Path, fmt: str, size: int = 128 << 10) -> Path:
    """An image whose root (frame 0) points at itself from every entry."""
    mem = PhysicalMemory(size)
    f = PageTable(mem, fmt).fmt
    for idx in range(f.entries(f.levels - 1)):
        mem.write_u64(idx * 8, f.make_table(0, f.levels - 1))
    mem.save(path)
    return path


def _bomb(path: Path) -> Path:
    """x86-64: a chain of tables, each entry of each pointing at the next, ending in 512 leaves.

    Listed naively that is 512**4 regions (and a naive table walker visits 512**3 tables).
    """
    mem = PhysicalMemory(16 << 10)
    f = PageTable(mem, "x86_64").fmt
    for frame, level in ((0, 3), (1, 2), (2, 1)):
        for idx in range(512):
            mem.write_u64(frame * FRAME_SIZE + idx * 8, f.make_table((frame + 1) * FRAME_SIZE, level))
    for idx in range(512):
        mem.write_u64(
            3 * FRAME_SIZE + idx * 8, f.make_leaf(idx * 2 * FRAME_SIZE, 0, Perm.R | Perm.W, True, False)
        )
    mem.save(path)
    return path


def _inspect(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- issue 12 item 1: self-referencing tables ---------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_self_mapped_root_is_listed_once_per_entry_not_descended(tmp_path: Path, fmt: str) -> None:
    image = _self_map(tmp_path / "self.img", fmt)
    with PhysicalMemory.from_file(image) as mem:
        pt = PageTable.attach(mem, 0, fmt, update_ad=False)
        # Capped, so a regression fails instead of walking 512**levels leaves.
        regions = list(itertools.islice(pt.mappings(max_tables=100_000), 10_000))
        top = pt.fmt.levels - 1
        span = pt.fmt.level_span(top)
        assert len(regions) == pt.fmt.entries(top)
        assert all(m.recursive and m.pa == 0 and m.size == span for m in regions)
        assert "recursive" in str(regions[0])
        assert (
            list(itertools.islice(pt.leaves(max_tables=100_000), 10)) == []
        )  # self-map entries are not leaves
        assert pt.table_frames() == [0]


def test_inspect_of_a_self_mapped_image_ends_quickly(tmp_path: Path) -> None:
    image = _self_map(tmp_path / "self.img", "x86_64")
    proc = _inspect(str(image), "--root", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum("(recursive: table on its own path)" in line for line in lines) == 512
    assert "regions 512, 512 recursive" in lines[-1]


def test_inspect_streams_and_caps_a_shared_subtree_bomb(tmp_path: Path) -> None:
    image = _bomb(tmp_path / "bomb.img")
    proc = _inspect(str(image), "--root", "0", "--max-regions", "7")
    assert proc.returncode == 0, proc.stderr
    regions = [line for line in proc.stdout.splitlines() if "->" in line]
    assert len(regions) == 7
    assert "stopped after 7 regions (--max-regions)" in proc.stderr
    proc = _inspect(str(image), "--root", "0", "--max-tables", "50", "--max-regions", "100000000")
    assert proc.returncode == 0, proc.stderr
    assert "stopped after reading 50 page tables (--max-tables)" in proc.stderr
    regions = [line for line in proc.stdout.splitlines() if "->" in line]
    assert 0 < len(regions) <= 50 * 512


def test_inspect_caps_are_validated(tmp_path: Path) -> None:
    image = _self_map(tmp_path / "self.img", "x86_64")
    proc = _inspect(str(image), "--root", "0", "--max-regions", "0")
    assert proc.returncode == 2 and "--max-regions must be >= 1, got 0" in proc.stderr
    with PhysicalMemory.from_file(image) as mem:
        pt = PageTable.attach(mem, 0, "x86_64", update_ad=False)
        with pytest.raises(VmoptError, match="max_tables"):
            pt.mappings(max_tables=0)


def test_the_table_cap_is_reported_by_the_iterator(tmp_path: Path) -> None:
    with PhysicalMemory.from_file(_bomb(tmp_path / "bomb.img")) as mem:
        pt = PageTable.attach(mem, 0, "x86_64", update_ad=False)
        it = pt.mappings(max_tables=10)
        n = sum(1 for _ in it)
        assert it.truncated and it.tables == 10
        assert n == 512 * 7  # tables 4..10 are the leaf table, entered 7 times
        assert pt.table_frames() == [0, 4096, 8192, 12288]


# -- issue 12 item 19: a table outside memory has its own cause ----------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_table_pointer_outside_memory_is_its_own_fault_cause(fmt: str) -> None:
    mem = PhysicalMemory(1 << 20)
    pt = PageTable(mem, fmt)
    top = pt.fmt.levels - 1
    mem.write_u64(pt.root, pt.fmt.make_table(1 << 40, top))
    with pytest.raises(PageFault) as err:
        pt.walk(0, "r")
    assert (err.value.cause, err.value.level) == ("table_outside_memory", top - 1)
    mem.write_u64(pt.root, 0)
    with pytest.raises(PageFault) as err:
        pt.walk(0, "r")
    assert err.value.cause == "not_present"


# -- issue 12 item 23: fuzzing images -----------------------------------------------------


def _exercise(image: Path, fmt: str, root: int, vas: list[int]) -> None:
    """Attach, list, walk and look up; only VmoptError may escape, and the work is capped."""
    try:
        mem = PhysicalMemory.from_file(image)
    except VmoptError:
        return
    with mem:
        # A root holds its entries (a G-stage or concatenated root more than a frame) and,
        # for the roots of these frame-aligned images, is aligned to that size.
        fmt_obj = make_format(fmt)
        root_bytes = max(FRAME_SIZE, fmt_obj.entries(fmt_obj.levels - 1) * 8, fmt_obj.root_bytes)
        if not mem.contains(root, root_bytes) or root % root_bytes:
            with pytest.raises(VmoptError):
                PageTable.attach(mem, root, fmt, update_ad=False)
            return
        pt = PageTable.attach(mem, root, fmt, update_ad=False)
        it = pt.mappings(max_tables=MAX_TABLES)
        for m in itertools.islice(it, MAX_REGIONS):
            assert m.size > 0 and (m.recursive or m.size % m.page_size == 0)
        assert it.tables <= MAX_TABLES
        leaves = pt.leaves(max_tables=MAX_TABLES)
        for _ in zip(range(MAX_REGIONS), leaves, strict=False):
            pass
        frames = pt.table_frames()
        assert len(frames) == len(set(frames)) <= mem.size // FRAME_SIZE
        mmu = Mmu(pt, TlbConfig(16, 4))
        for va in vas:
            assert len(pt.walk_path(va)) <= pt.fmt.levels
            pt.lookup(va)
            for access in ("r", "w", "x", "p"):
                with contextlib.suppress(VmoptError):
                    pt.walk(va, access, update_ad=False)
            with contextlib.suppress(VmoptError):
                mmu.translate(va, "r")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("seed", sorted(CORPUS.glob("*.img")), ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_corpus_images_replay_cleanly(seed: Path, fmt: str) -> None:
    vas = [0, 0x1000, 0x7FFF_FFFF_F000, 0xFFFF_8000_0000_0000, (1 << 64) - 4096]
    start = time.monotonic()
    _exercise(seed, fmt, 0, vas)
    assert time.monotonic() - start < 30


def _random_image(rng: np.random.Generator, frames: int, density: float, fmt: str) -> bytes:
    """Words that are mostly valid PTEs pointing inside the image (structured), with noise."""
    words = rng.integers(0, 1 << 63, size=frames * 512, dtype=np.uint64)
    structured = rng.random(frames * 512) < density
    targets = rng.integers(0, frames, size=frames * 512, dtype=np.uint64) << np.uint64(12)
    flags = rng.integers(0, 1 << 12, size=frames * 512, dtype=np.uint64) | np.uint64(1)
    if fmt.startswith("sv"):
        ptes = (targets >> np.uint64(2)) | (flags & np.uint64(0x3FF))
    else:
        ptes = targets | flags
    out: np.ndarray = np.where(structured, ptes, words)
    return out.astype("<u8").tobytes()


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    frames=st.integers(1, 16),
    density=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    fmt=st.sampled_from(list(FORMATS)),
    root_frame=st.integers(0, 17),
    vas=st.lists(st.integers(0, (1 << 64) - 1), max_size=4),
)
def test_random_and_structured_images_never_crash_or_hang(
    tmp_path: Path, seed: int, frames: int, density: float, fmt: str, root_frame: int, vas: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    image = _write(tmp_path / "fuzz.img", _random_image(rng, frames, density, fmt))
    start = time.monotonic()
    _exercise(image, fmt, root_frame * FRAME_SIZE, [*vas, 0, int(rng.integers(0, 1 << 48))])
    assert time.monotonic() - start < 30


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(data=st.binary(min_size=0, max_size=5000), fmt=st.sampled_from(list(FORMATS)))
def test_raw_bytes_of_any_length_attach_or_fail_cleanly(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, fmt: str
) -> None:
    image = _write(tmp_path_factory.mktemp("raw") / "raw.img", data)
    _exercise(image, fmt, 0, [0, 0x40_0000])
