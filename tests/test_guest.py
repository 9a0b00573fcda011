"""The guest package: the fault path (one-call install), anonymous memory, traffic accounting, bad input."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt import BatchOperationFailed, BatchResult, ConcurrencyConfig, LatencyStore, MemPolicy, NumaConfig
from vmopt.errors import AddressError, ConfigError, OutOfFramesError, PageFault, VmoptError
from vmopt.guest import MemoryOptimizer, Traffic

PAGE = 4096
MiB = 1 << 20
HIGH = 0x7F00_0000_0000  # canonical, outside every region


# -- PageFault.restartable ----------------------------------------------------------------


def test_the_core_marks_not_present_faults_restartable() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    mmu = opt.mmus[0]
    with pytest.raises(PageFault) as missing:
        mmu.translate(HIGH, "r", True)
    assert missing.value.restartable and missing.value.cause == "not_present"
    with pytest.raises(PageFault) as noncanonical:
        mmu.translate(1 << 63, "r", True)
    assert not noncanonical.value.restartable
    va = opt.allocate(PAGE, perms="r")
    opt.translate(va)
    with pytest.raises(PageFault) as protection:
        opt.translate(va, "w")
    assert not protection.value.restartable
    again = pickle.loads(pickle.dumps(missing.value))
    assert again.restartable and str(again) == str(missing.value)
    assert not PageFault(0, "r", "not_present", 0).restartable


# -- the fault path -------------------------------------------------------------------------


def test_store_pages_install_in_one_call_with_the_sequential_counters() -> None:
    """The concurrent batch's installs (fetched data) count what the sequential faults count."""

    def guest() -> tuple[MemoryOptimizer, int]:
        opt = MemoryOptimizer(NumaConfig(2, 32 * MiB), concurrency=ConcurrencyConfig(4))
        store = LatencyStore(0.0, data=lambda i: bytes([i % 251]) * PAGE)
        return opt, opt.allocate(32 * PAGE, policy=MemPolicy.interleave([0, 1]), store=store)

    addrs_of = [7, 3, 3, 31, 0, 7, 12, 12, 5]
    seq, a = guest()
    conc, b = guest()
    out_seq = seq.batch_access([a + i * PAGE + 8 for i in addrs_of], "w")
    out_conc = asyncio.run(conc.batch_access_concurrent([b + i * PAGE + 8 for i in addrs_of], "w"))
    assert out_seq == out_conc
    assert seq.mmus[0].stats == conc.mmus[0].stats
    assert seq.mmus[0].stats.demand_faults == len(set(addrs_of))
    assert seq.node_stats() == conc.node_stats()
    for opt, va in ((seq, a), (conc, b)):
        assert opt.read(va + 31 * PAGE, 4) == bytes([31]) * 4
        assert opt.read(va + 1 * PAGE, 4) == bytes([1]) * 4  # never batched: a synchronous fetch now


def test_translate_fetched_installs_the_given_bytes_without_fetching() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 16 * MiB))
    store = LatencyStore(0.0, data=lambda i: b"\xee" * PAGE)
    va = opt.allocate(4 * PAGE, policy=MemPolicy.preferred(1), store=store)
    pa = opt.translate_fetched(va + 5, b"\x11" * PAGE, "w")
    assert opt.node_of(pa) == 1 and opt.store_fetches == 0
    assert opt.read(va, 2) == b"\x11\x11"
    assert opt.translate_fetched(va + 5, b"\x22" * PAGE) == pa  # resident: the data is not used
    assert opt.read(va, 1) == b"\x11"


def test_a_failed_restart_still_leaves_the_frame_with_its_region() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    free0 = opt.mem.free_bytes
    va = opt.allocate(2 * PAGE, perms="r")
    with pytest.raises(PageFault) as err:
        opt.write(va, b"x")  # the page goes in, the restarted write faults on the rights
    assert err.value.cause != "not_present"
    region = opt.region_of(va)
    assert region is not None and list(region.resident) == [0]
    assert opt.read(va, 1) == b"\x00"
    opt.free(va)
    assert opt.mem.free_bytes == free0


def test_install_out_of_frames_names_the_policy_and_changes_nothing() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 4 * MiB))
    va = opt.allocate(8 * MiB, policy=MemPolicy.bind([1]))
    used = [opt.mem.used_bytes(n) for n in range(2)]
    n = 0
    with pytest.raises(OutOfFramesError, match=r"node 1 \(policy bind:1\)") as err:
        while True:
            opt.translate(va + n * PAGE)
            n += 1
    assert err.value.node == 1 and err.value.size == PAGE
    assert opt.mem.used_bytes(0) == len(opt.page_table.table_frames()) * PAGE  # bind never falls back
    region = opt.region_of(va)
    assert region is not None and len(region.resident) == n
    assert opt.mem.used_bytes(1) == used[1] + n * PAGE == 4 * MiB


# -- anonymous memory (the trace model) ------------------------------------------------------


def test_without_anonymous_memory_pages_outside_regions_fault() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    with pytest.raises(PageFault, match="not_present"):
        opt.translate(HIGH)
    with pytest.raises(ConfigError, match="anonymous_page_size"):
        opt.prefault(np.array([HIGH], dtype=np.uint64))
    with pytest.raises(ConfigError, match="anonymous_page_size must be"):
        MemoryOptimizer(anonymous_page_size=8192)


@pytest.mark.parametrize("size", [PAGE, 2 * MiB])
def test_anonymous_pages_map_on_first_touch(size: int) -> None:
    opt = MemoryOptimizer(NumaConfig(2, 64 * MiB), cpus=2, anonymous_page_size=size)
    pa = opt.translate(HIGH + 5, "r", cpu=1)
    assert opt.node_of(pa) == 1 and opt.anonymous_pages == 1
    assert opt.mmus[1].stats.demand_faults == 1
    assert opt.translate(HIGH + size - 1, "x", cpu=0) == pa - 5 + size - 1  # same page, rwx
    leaf = opt.page_table.lookup(HIGH)
    assert leaf is not None and leaf.page_size == size and leaf.user and leaf.accessed and leaf.dirty
    with pytest.raises(PageFault):
        opt.translate(1 << 63)  # non-canonical: nothing to map
    assert opt.anonymous_pages == 1
    assert [s.pages for s in opt.node_stats()] == [0, size // PAGE]


def test_prefault_maps_in_first_touch_order_for_the_first_toucher() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 64 * MiB), cpus=2, anonymous_page_size=PAGE)
    region = opt.allocate(4 * PAGE)
    vas = np.array(
        [HIGH + 3 * PAGE, HIGH, 1 << 63, HIGH + 3 * PAGE + 8, region, HIGH + PAGE], dtype=np.uint64
    )
    cpus = np.array([1, 0, 0, 0, 1, 1], dtype=np.uint16)
    assert opt.prefault(vas, cpus) == [1, 2]
    assert opt.anonymous_pages == 3 and opt.region_of(region) is not None
    assert opt.node_of(opt.page_table.translate(HIGH + 3 * PAGE)) == 1  # first touched by vCPU 1
    assert opt.node_of(opt.page_table.translate(HIGH)) == 0
    assert opt.page_table.lookup(region) is None  # region pages are left to their faults
    leaf = opt.page_table.lookup(HIGH + PAGE)
    assert leaf is not None and leaf.accessed and leaf.dirty  # as the kernel leaves a first touch
    assert opt.prefault(vas, cpus) == [0, 0]  # all mapped already
    before = opt.mmus[0].stats
    assert opt.translate(HIGH) == opt.page_table.translate(HIGH)
    assert opt.mmus[0].stats.demand_faults == before.demand_faults  # no fault left to take
    # Interleave places by anonymous page number, as mbind does by page offset.
    inter = MemoryOptimizer(
        NumaConfig(2, 64 * MiB), policy=MemPolicy.interleave([0, 1]), anonymous_page_size=PAGE
    )
    inter.prefault(np.array([HIGH + k * PAGE for k in range(4)], dtype=np.uint64))
    nodes = [inter.node_of(inter.page_table.translate(HIGH + k * PAGE)) for k in range(4)]
    assert nodes == [(HIGH // PAGE + k) % 2 for k in range(4)]


# -- traffic accounting -----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    pas=st.lists(st.integers(0, 3 * 16 * MiB - 1), max_size=40),
    home=st.integers(0, 2),
)
def test_traffic_counts_arrays_as_it_counts_addresses(pas: list[int], home: int) -> None:
    cfg = NumaConfig(3, 16 * MiB)
    bases = [0, 16 * MiB, 32 * MiB]
    one, many = Traffic(bases, cfg.distances), Traffic(bases, cfg.distances)  # type: ignore[arg-type]
    for pa in pas:
        one.count(pa, home)
    many.count(np.array(pas, dtype=np.uint64), home)
    assert (one.local, one.remote, one.cost) == (many.local, many.remote, many.cost)
    nodes = [pa // (16 * MiB) for pa in pas]
    assert one.local == [nodes.count(n) if n == home else 0 for n in range(3)]
    assert one.remote == [0 if n == home else nodes.count(n) for n in range(3)]
    assert sum(one.cost) == sum(cfg.distance(home, n) for n in nodes)


def test_guest_traffic_is_the_sum_of_its_accesses() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 32 * MiB), cpus=2)
    va = opt.allocate(8 * PAGE, policy=MemPolicy.interleave([0, 1]))
    pas = opt.batch_access(np.array([va + k * PAGE for k in range(8)], dtype=np.uint64), cpu=1)
    opt.translate(va, cpu=0)
    assert opt.traffic.local == [1, 4] and opt.traffic.remote == [4, 0]
    assert [opt.node_of(int(p)) for p in pas] == [0, 1] * 4
    assert opt.access_cost() == sum(s.access_cost for s in opt.node_stats()) == 5 * 10 + 4 * 20


# -- bad input (issue 12) -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, 5, "0x1000", b"\x00"])
def test_batch_of_a_non_sequence_names_it(bad: object) -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    with pytest.raises(AddressError, match=repr(bad).replace("\\", "\\\\").replace("(", r"\(")):
        opt.batch_access(bad)  # type: ignore[arg-type]
    with pytest.raises(VmoptError):
        asyncio.run(opt.batch_access_concurrent(bad))  # type: ignore[arg-type]


def test_allocate_with_a_policy_string_names_it() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB))
    with pytest.raises(ConfigError, match="'local'"):
        opt.allocate(PAGE, policy="local")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'bind:0'"):
        MemoryOptimizer(NumaConfig(1, 16 * MiB), policy="bind:0")  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_bad_entry_fails_at_its_index_only(concurrent: bool) -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 * MiB), concurrency=ConcurrencyConfig(4, tlb_batch_threshold=1))
    heap = opt.allocate(4 * PAGE)
    batch = [heap, None, heap + PAGE, True, 2.5]

    def run(errors: str) -> object:
        if concurrent:
            return asyncio.run(opt.batch_access_concurrent(batch, errors=errors))  # type: ignore[arg-type]
        return opt.batch_access(batch, errors=errors)  # type: ignore[arg-type]

    res = run("collect")
    assert isinstance(res, BatchResult)
    assert res.failed == [1, 3, 4] and res.success == 2
    assert res.values[0] == opt.translate(heap) and res.values[2] == opt.translate(heap + PAGE)
    assert isinstance(res.errors[1], AddressError) and "None" in str(res.errors[1])
    assert "index 3" in str(res.errors[3]) and "2.5" in str(res.errors[4])
    assert all(e.__traceback__ is None for e in res.errors.values())  # no cycle through the batch loop
    with pytest.raises(BatchOperationFailed) as err:
        run("raise")
    assert err.value.failed == [1, 3, 4] and err.value.success == 2
