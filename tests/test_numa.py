"""NUMA placement, mempolicies, migration and the MemoryOptimizer facade."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt import (
    AddressError,
    ConfigError,
    MappingError,
    MemoryOptimizer,
    MemPolicy,
    NumaConfig,
    NumaMemory,
    OutOfFramesError,
    PageFault,
)

MiB = 1 << 20
PAGE = 4096


def nodes_of_region(opt: MemoryOptimizer, va: int) -> Counter[int]:
    region = opt.region_of(va)
    assert region is not None
    return Counter(opt.node_of(pa) for pa in region.resident.values())


def touch(opt: MemoryOptimizer, va: int, pages: int, cpu: int = 0, page_size: int = PAGE) -> None:
    for i in range(pages):
        opt.translate(va + i * page_size, "w", cpu)


# -- topology -------------------------------------------------------------------------


def test_config_validation_names_the_value() -> None:
    with pytest.raises(ConfigError, match=r"\[0\]\[0\] must be 10"):
        NumaConfig(2, MiB, distances=[[11, 20], [20, 10]])
    with pytest.raises(ConfigError, match=r"\[0\]\[1\] must be greater than 10, got 10"):
        NumaConfig(2, MiB, distances=[[10, 10], [20, 10]])
    with pytest.raises(ConfigError, match="2x2"):
        NumaConfig(2, MiB, distances=[[10]])
    with pytest.raises(ConfigError, match="3 sizes for 2 nodes"):
        NumaConfig(2, [MiB, MiB, MiB])
    with pytest.raises(ConfigError, match="multiple of 4096, got 1000"):
        NumaConfig(1, 1000)
    cfg = NumaConfig(2, [MiB, 2 * MiB], cpus_per_node=2)
    assert cfg.node_sizes == (MiB, 2 * MiB) and cfg.distances[0][1] == 20
    assert [cfg.node_of_cpu(c) for c in range(4)] == [0, 0, 1, 1]


def test_layout_is_node_by_node() -> None:
    mem = NumaMemory(NumaConfig(3, [4 * MiB, 8 * MiB, 4 * MiB]))
    assert [mem.node_of(pa) for pa in (0, 4 * MiB - 1, 4 * MiB, 12 * MiB - 1, 12 * MiB)] == [0, 0, 1, 1, 2]
    pa = mem.alloc(2 * MiB, node=1)
    assert mem.node_of(pa) == 1 and pa % (2 * MiB) == 0
    for bad in (-1, 16 * MiB):  # runtime input, not configuration
        with pytest.raises(AddressError, match="is outside memory"):
            mem.node_of(bad)


def test_from_host_reads_sysfs(tmp_path: Path) -> None:
    for i, (kib, dist, cpus) in enumerate([(1048576, "10 21", "0-1"), (2097152, "21 10", "2-3")]):
        d = tmp_path / f"node{i}"
        d.mkdir()
        (d / "meminfo").write_text(f"Node {i} MemTotal:       {kib} kB\nNode {i} MemFree: 1 kB\n")
        (d / "distance").write_text(dist + "\n")
        (d / "cpulist").write_text(cpus + "\n")
    cfg = NumaConfig.from_host(tmp_path)
    assert cfg.num_nodes == 2 and cfg.node_sizes == (1 << 30, 2 << 30)
    assert cfg.distances[0][1] == 21 and [cfg.node_of_cpu(c) for c in range(4)] == [0, 0, 1, 1]
    fallback = NumaConfig.from_host(tmp_path / "missing")
    assert fallback.num_nodes == 1


# -- policies -----------------------------------------------------------------------


@pytest.mark.parametrize("pages", [2, 64, 100])
def test_interleave_splits_exactly_in_half(pages: int) -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB))
    va = opt.allocate(pages * PAGE, policy=MemPolicy.interleave([0, 1]))
    touch(opt, va, pages)
    assert nodes_of_region(opt, va) == {0: pages // 2, 1: pages // 2}
    region = opt.region_of(va)
    assert region is not None
    for index, pa in region.resident.items():  # page i -> node i % 2
        assert opt.node_of(pa) == index % 2


def test_weighted_interleave_is_exactly_three_to_one() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB))
    va = opt.allocate(400 * PAGE, policy=MemPolicy.weighted_interleave({0: 3, 1: 1}))
    touch(opt, va, 400)
    assert nodes_of_region(opt, va) == {0: 300, 1: 100}
    with pytest.raises(ConfigError, match=r"1\.\.255, got 256"):
        MemPolicy.weighted_interleave({0: 256})


def test_local_is_first_touch_by_the_touching_vcpu() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB), cpus=2)
    va = opt.allocate(10 * PAGE)
    for i in range(10):
        opt.translate(va + i * PAGE, "r", cpu=1 if i < 7 else 0)
    assert nodes_of_region(opt, va) == {1: 7, 0: 3}
    # Later touches by the other vCPU do not move the page; they are remote.
    opt.translate(va, "r", cpu=0)
    stats = opt.node_stats()
    assert stats[1].remote_accesses == 1 and stats[1].local_accesses == 7


def test_fallback_follows_distances_with_round_robin_ties() -> None:
    dist = [[10, 30, 20, 20], [30, 10, 20, 20], [20, 20, 10, 30], [20, 20, 30, 10]]
    cfg = NumaConfig(4, 16 * PAGE, distances=dist)
    opt = MemoryOptimizer(cfg)
    # Fill node 0 (the root table page also lives there).
    hog = opt.allocate(16 * PAGE, policy=MemPolicy.bind([0]))
    with pytest.raises(OutOfFramesError):
        touch(opt, hog, 16)
    va = opt.allocate(8 * PAGE, policy=MemPolicy.preferred(0))
    touch(opt, va, 8)
    region = opt.region_of(va)
    assert region is not None
    order = [opt.node_of(region.resident[i]) for i in range(8)]
    # Nodes 2 and 3 are nearer (20) than node 1 (30); ties alternate.
    assert set(order) == {2, 3}
    assert order == [2, 3, 2, 3, 2, 3, 2, 3]


def test_preferred_spills_to_the_nearest_node() -> None:
    dist = [[10, 40, 15], [40, 10, 40], [15, 40, 10]]
    opt = MemoryOptimizer(NumaConfig(3, 8 * PAGE, distances=dist))
    va = opt.allocate(12 * PAGE, policy=MemPolicy.preferred(0))
    touch(opt, va, 12)
    counts = nodes_of_region(opt, va)
    free0 = opt.mem.nodes[0].free_pages
    assert free0 == 0 and counts[1] == 0 and counts[0] + counts[2] == 12


def test_bind_raises_out_of_memory_and_leaves_state_unchanged() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 8 * PAGE))
    va = opt.allocate(20 * PAGE, policy=MemPolicy.bind([1]))
    touch(opt, va, 8)
    before = (opt.get_stats(), list(opt.page_table.mappings()), opt.mem.free_blocks())
    with pytest.raises(OutOfFramesError, match="node 1") as err:
        opt.translate(va + 8 * PAGE, "w")
    assert err.value.node == 1 and err.value.size == PAGE
    assert (opt.get_stats(), list(opt.page_table.mappings()), opt.mem.free_blocks()) == before
    assert nodes_of_region(opt, va) == {1: 8}


def test_balanced_picks_the_least_used_node() -> None:
    opt = MemoryOptimizer(NumaConfig(2, [64 * PAGE, 32 * PAGE]))
    va = opt.allocate(48 * PAGE, policy=MemPolicy.balanced())
    touch(opt, va, 48)
    used = [opt.mem.usage(n) for n in range(2)]
    assert abs(used[0] - used[1]) <= 1 / 32 + 1e-9


def test_preferred_many_and_default_policy() -> None:
    opt = MemoryOptimizer(NumaConfig(3, 16 * MiB), cpus=1, policy=MemPolicy.interleave([1, 2]))
    va = opt.allocate(4 * PAGE)  # guest default (set_mempolicy)
    touch(opt, va, 4)
    assert nodes_of_region(opt, va) == {1: 2, 2: 2}
    vb = opt.allocate(4 * PAGE, policy=MemPolicy.preferred_many([2]))
    touch(opt, vb, 4)
    assert nodes_of_region(opt, vb) == {2: 4}
    assert str(MemPolicy.parse("weighted_interleave:0=3,1=1")) == "weighted_interleave:0=3,1=1"
    with pytest.raises(ConfigError, match="names node"):
        opt.allocate(PAGE, policy=MemPolicy.bind([5]))


def test_two_mib_regions_get_huge_pages() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 64 * MiB))
    va = opt.allocate(8 * MiB, page_size=2 * MiB, policy=MemPolicy.interleave([0, 1]))
    touch(opt, va, 4, page_size=2 * MiB)
    assert nodes_of_region(opt, va) == {0: 2, 1: 2}
    t = opt.page_table.walk(va + 3 * MiB)
    assert t.page_size == 2 * MiB


# -- facade -------------------------------------------------------------------------


def test_pages_are_zero_filled_and_free_releases_frames() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    free0 = opt.mem.free_bytes
    va = opt.allocate(3 * PAGE)
    assert opt.read(va, 3 * PAGE) == bytes(3 * PAGE)
    opt.write(va + PAGE - 2, b"spans")
    assert opt.read(va + PAGE - 2, 5) == b"spans"
    opt.free(va)
    assert opt.mem.free_bytes == free0
    with pytest.raises(PageFault):
        opt.translate(va)
    with pytest.raises(MappingError, match="no region"):
        opt.free(va)


def test_tlb_stats_cover_the_hierarchy() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    va = opt.allocate(4 * PAGE)
    for _ in range(3):
        touch(opt, va, 4)
    s = opt.get_tlb_stats()
    mmu = opt.mmus[0]
    assert s.lookups == 12 == mmu.stats.translations
    assert s.misses == mmu.stats.walks == 4 and s.hits == 8
    assert s.hits + s.misses == s.lookups


# -- migration ------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=16),
    target=st.integers(0, 1),
    huge=st.booleans(),
)
def test_migration_keeps_every_byte(data: list[bytes], target: int, huge: bool) -> None:
    page = 2 * MiB if huge else PAGE
    opt = MemoryOptimizer(NumaConfig(2, 64 * MiB))
    va = opt.allocate(len(data) * page, page_size=page, policy=MemPolicy.interleave([0, 1]))
    for i, chunk in enumerate(data):
        off = page - len(chunk) // 2 - 1 if i < len(data) - 1 else 0  # cross pages where we can
        opt.write(va + i * page + off, chunk)
    image = opt.read(va, len(data) * page)
    moved = opt.migrate(va, len(data) * page, target)
    expected_moves = sum(1 for i in range(len(data)) if i % 2 != target)
    assert moved == expected_moves * page == opt.bytes_migrated
    assert opt.read(va, len(data) * page) == image
    assert set(nodes_of_region(opt, va)) == {target}


def test_migration_shoots_down_every_vcpu() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB, cpus_per_node=2), cpus=4)
    va = opt.allocate(8 * PAGE, policy=MemPolicy.bind([0, 1]))
    for cpu in range(4):
        touch(opt, va, 8, cpu)
    old = {cpu: [opt.translate(va + i * PAGE, "r", cpu) for i in range(8)] for cpu in range(4)}
    opt.migrate(va, 8 * PAGE, 1)
    for cpu in range(4):
        new = [opt.translate(va + i * PAGE, "r", cpu) for i in range(8)]
        for i in range(8):
            assert opt.node_of(new[i]) == 1
            if opt.node_of(old[cpu][i]) == 0:
                assert new[i] != old[cpu][i]
    assert all(m.stats.shootdowns > 0 for m in opt.mmus)


def test_migration_under_concurrent_readers_never_sees_stale_data() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB, cpus_per_node=2), cpus=3)
    va = opt.allocate(16 * PAGE, policy=MemPolicy.bind([0]))
    for i in range(16):
        opt.write(va + i * PAGE, bytes([i]) * 8)
    stop = threading.Event()
    errors: list[str] = []

    def reader(cpu: int) -> None:
        while not stop.is_set():
            for i in range(16):
                got = opt.read(va + i * PAGE, 8, cpu)
                if got != bytes([i]) * 8:
                    errors.append(f"cpu {cpu} page {i}: {got!r}")

    threads = [threading.Thread(target=reader, args=(c,)) for c in (1, 2)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            opt.migrate(va, 16 * PAGE, (round_ + 1) % 2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


def test_migrate_without_room_changes_nothing() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * PAGE))
    va = opt.allocate(12 * PAGE, policy=MemPolicy.bind([0]))
    touch(opt, va, 12)
    region = opt.region_of(va)
    assert region is not None
    before = dict(region.resident)
    big = opt.allocate(14 * PAGE, policy=MemPolicy.bind([1]))
    touch(opt, big, 14)
    with pytest.raises(OutOfFramesError, match="node 1"):
        opt.migrate(va, 12 * PAGE, 1)
    assert region.resident == before


def test_rebalance_evens_out_usage() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 256 * PAGE))
    va = opt.allocate(100 * PAGE, policy=MemPolicy.preferred(0))
    opt.write(va, b"keep me")
    touch(opt, va, 100)
    moved = opt.rebalance()
    used = [opt.mem.used_bytes(n) for n in range(2)]
    assert moved > 0 and abs(used[0] - used[1]) <= PAGE
    assert opt.read(va, 7) == b"keep me"


def test_automatic_numa_balancing_two_stage_filter() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB), cpus=2, numa_balancing=True, balance_period=1)
    va = opt.allocate(PAGE, policy=MemPolicy.preferred(0))
    opt.translate(va, "w", cpu=0)
    assert nodes_of_region(opt, va) == {0: 1}
    opt.translate(va, "r", cpu=1)  # first remote sample: stage one only
    assert nodes_of_region(opt, va) == {0: 1}
    opt.translate(va, "r", cpu=1)  # second consecutive sample from node 1: migrate
    assert nodes_of_region(opt, va) == {1: 1} and opt.balancing_migrations == 1


def test_migration_under_concurrent_writers_loses_no_write() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB, cpus_per_node=2), cpus=3)
    va = opt.allocate(8 * PAGE, policy=MemPolicy.bind([0, 1]))
    last: dict[int, int] = {}
    stop = threading.Event()

    def writer(cpu: int, pages: range) -> None:
        n = 0
        while not stop.is_set():
            for i in pages:
                n += 1
                opt.write(va + i * PAGE + 16, n.to_bytes(8, "little"), cpu)
                last[i] = n

    threads = [
        threading.Thread(target=writer, args=(1, range(0, 4))),
        threading.Thread(target=writer, args=(2, range(4, 8))),
    ]
    for t in threads:
        t.start()
    try:
        for round_ in range(8):
            opt.migrate(va, 8 * PAGE, round_ % 2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    for i, n in last.items():
        assert opt.read(va + i * PAGE + 16, 8) == n.to_bytes(8, "little")
