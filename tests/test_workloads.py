"""Tests for vmopt.traces.workloads: determinism, shapes and parameter checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vmopt.errors import ConfigError
from vmopt.traces import (
    DEFAULT_BASE,
    WORKLOADS,
    AccessKind,
    TraceChunk,
    concat_chunks,
    make_workload,
    matmul_length,
)

FOOTPRINT_WORKLOADS = ["sequential", "strided", "uniform", "zipf", "pointer_chase", "numa_mix"]
RANDOM_WORKLOADS = ["sequential", "strided", "uniform", "zipf", "pointer_chase", "numa_mix"]


def run(name: str, **params: Any) -> TraceChunk:
    return concat_chunks(list(make_workload(name, **params)))


def test_registry_is_complete_and_read_only() -> None:
    assert set(WORKLOADS) == {*FOOTPRINT_WORKLOADS, "matmul"}
    with pytest.raises(TypeError):
        WORKLOADS["mine"] = WORKLOADS["uniform"]  # type: ignore[index]
    for factory in WORKLOADS.values():
        assert factory.__doc__ and len(factory.__doc__) > 40


@pytest.mark.parametrize("name", FOOTPRINT_WORKLOADS)
def test_length_bounds_and_dtypes(name: str) -> None:
    base, footprint = 0x1000_0000, 1 << 20  # a low base, as for RISC-V Sv39
    chunks = list(make_workload(name, length=100_003, footprint=footprint, base=base, chunk_size=7_000))
    assert [len(c) for c in chunks[:-1]] == [7_000] * (len(chunks) - 1)
    assert 0 < len(chunks[-1]) <= 7_000
    trace = concat_chunks(chunks)
    assert len(trace) == 100_003
    assert trace.addrs.dtype == np.uint64 and trace.kinds.dtype == np.uint8
    assert int(trace.addrs.min()) >= base
    assert int(trace.addrs.max()) < base + footprint
    assert set(np.unique(trace.kinds).tolist()) <= {AccessKind.READ, AccessKind.WRITE}
    assert (trace.cpus is not None) == (name == "numa_mix")


@pytest.mark.parametrize("name", FOOTPRINT_WORKLOADS)
def test_default_base_and_footprint(name: str) -> None:
    trace = run(name, length=1000)
    assert int(trace.addrs.min()) >= DEFAULT_BASE
    assert int(trace.addrs.max()) < DEFAULT_BASE + (64 << 20)


@pytest.mark.parametrize("name", RANDOM_WORKLOADS)
def test_deterministic_per_seed_and_independent_of_chunk_size(name: str) -> None:
    a = run(name, length=150_000, seed=7)
    b = run(name, length=150_000, seed=7, chunk_size=1_234)
    c = run(name, length=150_000, seed=8)
    np.testing.assert_array_equal(a.addrs, b.addrs)
    np.testing.assert_array_equal(a.kinds, b.kinds)
    if a.cpus is not None:
        assert b.cpus is not None
        np.testing.assert_array_equal(a.cpus, b.cpus)
    differs = not np.array_equal(a.addrs, c.addrs) or not np.array_equal(a.kinds, c.kinds)
    assert differs


@pytest.mark.parametrize("name", ["sequential", "strided", "uniform", "zipf", "numa_mix"])
def test_write_ratio(name: str) -> None:
    default = run(name, length=200_000)
    assert abs(float((default.kinds == AccessKind.WRITE).mean()) - 0.25) < 0.01
    none = run(name, length=10_000, write_ratio=0.0)
    assert (none.kinds == AccessKind.READ).all()
    every = run(name, length=10_000, write_ratio=1.0)
    assert (every.kinds == AccessKind.WRITE).all()


def test_sequential_scans_and_wraps() -> None:
    trace = run("sequential", length=300, footprint=1024, elem_size=8, base=0x1000)
    expected = 0x1000 + (np.arange(300) % 128) * 8
    np.testing.assert_array_equal(trace.addrs, expected.astype(np.uint64))


def test_strided_formula() -> None:
    trace = run("strided", length=5000, footprint=1 << 20, base=0)
    expected = (np.arange(5000, dtype=np.uint64) * np.uint64(4096 + 64)) % np.uint64(1 << 20)
    np.testing.assert_array_equal(trace.addrs, expected)
    # Every access lands on a different 4 KiB page until the pattern wraps.
    pages = trace.addrs[: (1 << 20) // 4160] >> np.uint64(12)
    assert len(np.unique(pages)) == len(pages)


def test_strided_large_footprint_offsets_stay_exact() -> None:
    footprint, stride = 1 << 47, (1 << 46) + 4160
    trace = run("strided", length=70_000, footprint=footprint, stride=stride, base=0)
    expected = [(i * stride) % footprint for i in range(70_000)]
    assert trace.addrs.tolist() == expected


def test_uniform_alignment_and_spread() -> None:
    trace = run("uniform", length=100_000, footprint=1 << 20, base=0, elem_size=16)
    assert (trace.addrs % np.uint64(16) == 0).all()
    assert len(np.unique(trace.addrs >> np.uint64(12))) == 256  # every page touched


def test_zipf_is_skewed_and_bounded() -> None:
    footprint = 4096 * 1000
    trace = run("zipf", length=200_000, footprint=footprint, base=0, alpha=1.1)
    pages = (trace.addrs >> np.uint64(12)).astype(np.int64)
    assert pages.max() < 1000
    counts = np.bincount(pages, minlength=1000)
    top, median = int(counts.max()), float(np.median(counts))
    assert top > 20 * max(median, 1.0)
    # The most popular page gets about 1 / H(1000, 1.1) of the accesses.
    h = float((np.arange(1, 1001, dtype=np.float64) ** -1.1).sum())
    assert abs(top / len(trace) - 1 / h) < 0.01
    # Higher alpha, more skew.
    steep = run("zipf", length=200_000, footprint=footprint, base=0, alpha=2.0)
    assert np.bincount((steep.addrs >> np.uint64(12)).astype(np.int64)).max() > top


def test_zipf_rejects_too_many_pages() -> None:
    with pytest.raises(ConfigError, match="use a larger page_size"):
        make_workload("zipf", footprint=1 << 40, page_size=4096)


def test_pointer_chase_is_one_cycle_over_all_nodes() -> None:
    footprint, line = 64 * 5000, 64
    nodes = footprint // line
    trace = run("pointer_chase", length=3 * nodes + 17, footprint=footprint, base=0)
    assert (trace.kinds == AccessKind.READ).all()
    idx = (trace.addrs // np.uint64(line)).astype(np.int64)
    assert (trace.addrs % np.uint64(line) == 0).all()
    # Every window of `nodes` consecutive accesses visits each node exactly once.
    for start in (0, 1, nodes - 1, nodes + 5, 2 * nodes + 17):
        window = idx[start : start + nodes]
        assert np.array_equal(np.sort(window), np.arange(nodes))
    # Following the pointers is a function: each node always leads to the same next node.
    succ = np.full(nodes, -1)
    succ[idx[:-1]] = idx[1:]
    assert np.array_equal(succ[idx[:-1]], idx[1:])
    # ... and that function is a single cycle of length `nodes`.
    node, seen = int(idx[0]), 0
    while True:
        node = int(succ[node])
        seen += 1
        if node == idx[0]:
            break
    assert seen == nodes
    # Not a trivial sequential order.
    assert np.mean(np.diff(idx) == 1) < 0.01


@pytest.mark.parametrize(("n", "tile"), [(8, 4), (10, 3), (7, 7), (5, 1), (33, 8), (64, 32)])
def test_matmul_access_count(n: int, tile: int) -> None:
    trace = run("matmul", n=n, tile=tile)
    k_tiles = -(-n // tile)
    assert len(trace) == matmul_length(n, tile) == 2 * n * n * (n + k_tiles)
    writes = int((trace.kinds == AccessKind.WRITE).sum())
    assert writes == n * n * k_tiles
    assert int(trace.addrs.min()) == DEFAULT_BASE
    assert int(trace.addrs.max()) == DEFAULT_BASE + 24 * n * n - 8


def _matmul_reference(n: int, tile: int, base: int) -> tuple[list[int], list[int]]:
    a, b, c = base, base + 8 * n * n, base + 16 * n * n
    addrs: list[int] = []
    kinds: list[int] = []
    for ii in range(0, n, tile):
        for jj in range(0, n, tile):
            for kk in range(0, n, tile):
                for i in range(ii, min(ii + tile, n)):
                    for j in range(jj, min(jj + tile, n)):
                        addrs.append(c + 8 * (i * n + j))
                        kinds.append(AccessKind.READ)
                        for k in range(kk, min(kk + tile, n)):
                            addrs += [a + 8 * (i * n + k), b + 8 * (k * n + j)]
                            kinds += [AccessKind.READ, AccessKind.READ]
                        addrs.append(c + 8 * (i * n + j))
                        kinds.append(AccessKind.WRITE)
    return addrs, kinds


@pytest.mark.parametrize(("n", "tile"), [(6, 4), (9, 3), (5, 5)])
def test_matmul_loop_order_matches_naive_loops(n: int, tile: int) -> None:
    trace = run("matmul", n=n, tile=tile, base=0x4000, chunk_size=17)
    addrs, kinds = _matmul_reference(n, tile, 0x4000)
    assert trace.addrs.tolist() == addrs
    assert trace.kinds.tolist() == kinds


def test_matmul_large_tile_is_split_into_bounded_pieces() -> None:
    n = 300  # one (i, j) row of the k loop is 602 accesses; a full tile is 54M
    pieces = list(make_workload("matmul", n=n, tile=n, length=500_000, chunk_size=1 << 20))
    assert sum(len(p) for p in pieces) == 500_000
    head = run("matmul", n=n, tile=n, length=2000)
    c0 = DEFAULT_BASE + 16 * n * n
    assert int(head.addrs[0]) == c0
    assert int(head.addrs[1]) == DEFAULT_BASE  # A[0][0]
    assert int(head.addrs[2]) == DEFAULT_BASE + 8 * n * n  # B[0][0]
    assert int(head.addrs[4]) == DEFAULT_BASE + 8 * n * n + 8 * n  # B[1][0]


def test_matmul_length_truncates_and_repeats() -> None:
    full = run("matmul", n=6, tile=4)
    short = run("matmul", n=6, tile=4, length=100)
    np.testing.assert_array_equal(short.addrs, full.addrs[:100])
    long = run("matmul", n=6, tile=4, length=2 * len(full) + 5)
    np.testing.assert_array_equal(long.addrs, np.concatenate([full.addrs] * 3)[: len(long)])


def test_numa_mix_regions_bursts_and_cpus() -> None:
    footprint, base = 1 << 22, 0x10_0000
    trace = run("numa_mix", length=200_000, footprint=footprint, base=base, cpus=4, burst=16, seed=3)
    assert trace.cpus is not None and trace.cpus.dtype == np.uint16
    expected_cpu = (np.arange(200_000) // 16) % 4
    np.testing.assert_array_equal(trace.cpus, expected_cpu)
    shared_bytes = int(footprint * 0.2) // 4096 * 4096
    private_bytes = (footprint - shared_bytes) // 4 // 4096 * 4096
    offsets = trace.addrs.astype(np.int64) - base
    shared = offsets < shared_bytes
    assert abs(float(shared.mean()) - 0.2) < 0.01
    region = (offsets[~shared] - shared_bytes) // private_bytes
    np.testing.assert_array_equal(region, trace.cpus[~shared])
    # Each vCPU touches the shared region.
    assert set(trace.cpus[shared].tolist()) == {0, 1, 2, 3}


def test_numa_mix_without_sharing() -> None:
    trace = run("numa_mix", length=10_000, footprint=1 << 20, base=0, shared_fraction=0.0)
    assert trace.cpus is not None
    half = (1 << 20) // 2
    assert ((trace.addrs >= half) == (trace.cpus == 1)).all()


def test_numa_mix_too_small() -> None:
    with pytest.raises(ConfigError, match="too small"):
        make_workload("numa_mix", footprint=8192, cpus=4)


# -- parameter validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "needle"),
    [
        ("sequential", {"length": 0}, "length must be an integer >= 1, got 0"),
        ("sequential", {"length": 1.5}, "length must be an integer >= 1, got 1.5"),
        ("sequential", {"length": True}, "length must be an integer >= 1, got True"),
        ("uniform", {"footprint": 0}, "footprint must be an integer >= 1 and <= 140737488355328"),
        ("uniform", {"footprint": 1 << 48}, "footprint must be"),
        ("uniform", {"base": -1}, "base must be an integer >= 0"),
        ("uniform", {"base": 2**64 - 4096}, "base must be an integer >= 0 and <= "),
        ("uniform", {"seed": -3}, "seed must be an integer >= 0, got -3"),
        ("uniform", {"elem_size": 0}, "elem_size must be"),
        ("sequential", {"write_ratio": 1.5}, "write_ratio must be a number >= 0.0 and <= 1.0"),
        ("sequential", {"write_ratio": float("nan")}, "write_ratio must be"),
        ("sequential", {"write_ratio": "0.3"}, "write_ratio must be a number"),
        ("strided", {"stride": 0}, "stride must be an integer >= 1, got 0"),
        ("zipf", {"alpha": 0}, "alpha must be a number > 0.0, got 0"),
        ("zipf", {"alpha": -1.0}, "alpha must be a number > 0.0, got -1.0"),
        ("zipf", {"page_size": 0}, "page_size must be"),
        ("pointer_chase", {"line_size": 0}, "line_size must be"),
        ("matmul", {"n": 0}, "n must be an integer >= 1"),
        ("matmul", {"n": 8, "tile": 9}, "tile must be an integer >= 1 and <= 8, got 9"),
        ("matmul", {"length": 0}, "length must be an integer >= 1, got 0"),
        ("numa_mix", {"cpus": 0}, "cpus must be an integer >= 1 and <= 65536, got 0"),
        ("numa_mix", {"shared_fraction": 1.0}, "shared_fraction must be a number >= 0.0 and < 1.0"),
        ("numa_mix", {"burst": 0}, "burst must be an integer >= 1, got 0"),
        ("numa_mix", {"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0"),
    ],
)
def test_bad_parameters_name_parameter_and_value(name: str, params: dict[str, Any], needle: str) -> None:
    # Raised when the workload is created, not on first next().
    with pytest.raises(ConfigError) as info:
        make_workload(name, **params)
    assert needle in str(info.value)
    assert str(info.value).startswith(name)
    assert isinstance(info.value, ValueError)


def test_unknown_workload_lists_names() -> None:
    with pytest.raises(ConfigError, match="unknown workload 'zipff'") as info:
        make_workload("zipff")
    for name in WORKLOADS:
        assert name in str(info.value)


def test_unknown_parameter_lists_accepted() -> None:
    with pytest.raises(ConfigError) as info:
        make_workload("zipf", alhpa=1.2, length=10)
    message = str(info.value)
    assert "'alhpa'" in message
    assert "alpha" in message and "page_size" in message


def test_matmul_rejects_footprint() -> None:
    with pytest.raises(ConfigError, match="'footprint'"):
        make_workload("matmul", footprint=1 << 20)


def test_numpy_integers_are_accepted() -> None:
    trace = run("uniform", length=np.int64(10), footprint=np.uint32(4096), seed=np.int32(1))
    assert len(trace) == 10
