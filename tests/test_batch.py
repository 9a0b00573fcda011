"""Batch operations: sequential, concurrent and array paths agree; errors are exact."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt import (
    BatchOperationFailed,
    BatchResult,
    ConcurrencyConfig,
    ConfigError,
    LatencyStore,
    MemoryOptimizer,
    MemPolicy,
    Mmu,
    NumaConfig,
    PageTable,
    PhysicalMemory,
    StoreError,
    TlbConfig,
)

MiB = 1 << 20
PAGE = 4096


def guest(**kw: object) -> MemoryOptimizer:
    return MemoryOptimizer(NumaConfig(2, 64 * MiB), cpus=2, **kw)  # type: ignore[arg-type]


# -- ConcurrencyConfig (the report's three config tests) -----------------------------------


def test_concurrency_config_defaults_and_sequential() -> None:
    cfg = ConcurrencyConfig()
    assert (cfg.max_concurrent, cfg.enabled) == (8, True)
    seq = ConcurrencyConfig.sequential()
    assert (seq.max_concurrent, seq.enabled) == (1, False)
    assert ConcurrencyConfig(16).validate().max_concurrent == 16


def test_concurrency_config_invalid_is_a_config_error(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match="max_concurrent must be >= 1, got 0"):
        ConcurrencyConfig(0)
    with caplog.at_level(logging.WARNING):
        ConcurrencyConfig(1000)
    assert "1000" in caplog.text
    opt = MemoryOptimizer.with_concurrency(NumaConfig(1, 16 * MiB), ConcurrencyConfig(4))
    assert opt.concurrency.max_concurrent == 4


# -- equivalence ------------------------------------------------------------------------------


def _setup(opt: MemoryOptimizer) -> tuple[int, int]:
    a = opt.allocate(64 * PAGE, policy=MemPolicy.interleave([0, 1]))
    b = opt.allocate(
        16 * PAGE, store=LatencyStore(0.0, data=lambda i: bytes([i % 251]) * PAGE, fail_rate=0.2, seed=3)
    )
    return a, b


addr_strategy = st.lists(
    st.one_of(
        st.integers(0, 64 * PAGE - 1).map(lambda o: ("a", o)),
        st.integers(0, 16 * PAGE - 1).map(lambda o: ("b", o)),
        st.integers(0, 1 << 30).map(lambda o: ("x", o)),  # unmapped: faults
    ),
    min_size=0,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(picks=addr_strategy, as_array=st.booleans(), access=st.sampled_from("rw"))
def test_sequential_concurrent_and_loop_agree(
    picks: list[tuple[str, int]], as_array: bool, access: str
) -> None:
    opts = [guest(), guest(), guest(concurrency=ConcurrencyConfig(4))]
    addrs_per = []
    for opt in opts:
        a, b = _setup(opt)
        base = {"a": a, "b": b, "x": 0x7000_0000_0000}
        addrs_per.append([base[k] + off for k, off in picks])
    addrs = addrs_per[0]
    assert all(x == addrs for x in addrs_per)
    # Reference: translate() in a loop.
    ref: list[int | str] = []
    for va in addrs:
        try:
            ref.append(opts[0].translate(va, access, 0))
        except Exception as exc:
            ref.append(type(exc).__name__)
    batch_in = np.array(addrs, dtype=np.uint64) if as_array else addrs
    seq = opts[1].batch_access(batch_in, access, 0, errors="collect")
    conc = asyncio.run(opts[2].batch_access_concurrent(batch_in, access, 0, errors="collect"))
    for res in (seq, conc):
        assert isinstance(res, BatchResult)
        got = [int(res.values[i]) if res.ok[i] else type(res.errors[i]).__name__ for i in range(len(addrs))]
        assert got == ref
    # Sequential stats equal the loop's exactly; placement is identical on all three.
    assert opts[1].get_tlb_stats(0) == opts[0].get_tlb_stats(0)
    assert opts[1].mmus[0].stats == opts[0].mmus[0].stats
    assert opts[1].get_stats() == opts[0].get_stats() == opts[2].get_stats()
    assert [s.local_accesses for s in opts[1].node_stats()] == [
        s.local_accesses for s in opts[0].node_stats()
    ]


def test_lists_give_lists_and_arrays_give_uint64_arrays() -> None:
    opt = guest()
    va = opt.allocate(4 * PAGE)
    out = opt.batch_access([va, va + PAGE])
    assert isinstance(out, list) and out == [opt.translate(va), opt.translate(va + PAGE)]
    arr = opt.batch_access(np.array([va, va + 1], dtype=np.int64))
    assert arr.dtype == np.uint64 and arr[1] == arr[0] + 1
    with pytest.raises(ConfigError, match="negative"):
        opt.batch_access(np.array([-1]))
    with pytest.raises(ConfigError, match="errors must be"):
        opt.batch_access([va], errors="ignore")


# -- errors ------------------------------------------------------------------------------------


def test_batch_operation_failed_counts_are_exact(caplog: pytest.LogCaptureFixture) -> None:
    opt = guest()
    va = opt.allocate(8 * PAGE)
    addrs = [va, 0x1000, va + PAGE, 0x2000, 0x3000, va + 2 * PAGE]
    with caplog.at_level(logging.WARNING), pytest.raises(BatchOperationFailed) as err:
        opt.batch_access(addrs)
    e = err.value
    assert str(e) == "batch operation failed: 3/6 succeeded"
    assert (e.success, e.total, e.failed) == (3, 6, [1, 3, 4])
    assert set(e.errors) == {1, 3, 4}
    summary = [r.getMessage() for r in caplog.records if r.name == "vmopt.batching"]
    assert len(summary) == 1  # one line per batch, not one per failed index
    assert summary[0].startswith("batch: 3 of 6 operations failed (indices 1, 3, 4); first error: ")
    # Successful translations were fully applied.
    assert opt.region_of(va) is not None and len(opt.region_of(va).resident) == 3  # type: ignore[union-attr]


def test_store_errors_fail_only_the_operations_that_needed_the_page() -> None:
    opt = guest(concurrency=ConcurrencyConfig(8))
    store = LatencyStore(0.001, fail_rate=0.5, seed=11)
    va = opt.allocate(32 * PAGE, store=store)
    addrs = [va + (i % 32) * PAGE for i in range(64)]
    res = asyncio.run(opt.batch_access_concurrent(addrs, errors="collect"))
    bad_pages = {i for i in range(32) if store.will_fail(i)}
    assert 0 < len(bad_pages) < 32
    assert res.failed == [i for i in range(64) if i % 32 in bad_pages]
    assert all(isinstance(res.errors[i], StoreError) for i in res.failed)
    region = opt.region_of(va)
    assert region is not None and set(region.resident) == set(range(32)) - bad_pages


# -- where concurrency pays -----------------------------------------------------------------------


def test_concurrent_fetches_overlap_bounded_and_coalesce() -> None:
    opt = guest(concurrency=ConcurrencyConfig(8))
    store = LatencyStore(0.01, data=lambda i: i.to_bytes(8, "little") * 512)
    va = opt.allocate(40 * PAGE, store=store)
    addrs = [va + (i % 40) * PAGE + 8 for i in range(120)]  # every page three times
    pas = asyncio.run(opt.batch_access_concurrent(addrs))
    assert store.stats.fetches == 40  # duplicate faults coalesced
    assert store.stats.max_in_flight == 8  # overlapped, and bounded
    for i in range(40):
        assert opt.read(va + i * PAGE, 8) == i.to_bytes(8, "little")
    assert pas[:40] == pas[40:80]


def test_synchronous_paths_serve_store_faults_too() -> None:
    opt = guest()
    store = LatencyStore(0.0, data=bytes(range(256)) * 16 * 4)
    va = opt.allocate(4 * PAGE, store=store)
    assert opt.read(va + PAGE + 1, 3) == bytes([1, 2, 3])
    opt.batch_access([va + 2 * PAGE, va + 3 * PAGE])
    assert store.stats.fetches == 3


def test_cancellation_leaves_consistent_state_and_later_batches_work() -> None:
    opt = guest(concurrency=ConcurrencyConfig(4))
    finish_first = 10
    calls = 0

    async def gate(delay: float) -> None:
        """The first fetches finish at once; the rest wait until they are cancelled."""
        nonlocal calls
        calls += 1
        if calls > finish_first:
            await asyncio.Event().wait()

    store = LatencyStore(0.05, data=lambda i: bytes([i]) * PAGE, async_sleep=gate)
    va = opt.allocate(64 * PAGE, store=store)
    region = opt.region_of(va)
    assert region is not None

    async def scenario() -> None:
        task = asyncio.create_task(opt.batch_access_concurrent([va + i * PAGE for i in range(64)]))
        # Run the loop until the batch has installed what can finish and every
        # slot holds a fetch that never will: progress, not time, decides.
        while len(region.resident) < finish_first or store.stats.in_flight < 4:
            assert not task.done()
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store.stats.in_flight == 0  # in-flight fetches were cancelled with the batch

    asyncio.run(scenario())
    done = set(region.resident)
    assert done == set(range(finish_first))
    for i in done:  # installed pages are whole and valid
        assert opt.read(va + i * PAGE, PAGE) == bytes([i]) * PAGE
    calls = -(1 << 30)  # every fetch finishes now
    pas = asyncio.run(opt.batch_access_concurrent([va + i * PAGE for i in range(64)]))
    assert len(pas) == 64 and set(region.resident) == set(range(64))


def test_batches_from_several_threads_are_safe() -> None:
    opt = guest(concurrency=ConcurrencyConfig(4))
    va = opt.allocate(128 * PAGE, store=LatencyStore(0.001, data=lambda i: bytes([i % 256]) * PAGE))
    results: dict[int, list[int]] = {}

    def worker(cpu: int) -> None:
        results[cpu] = asyncio.run(opt.batch_access_concurrent([va + i * PAGE for i in range(128)], cpu=cpu))

    threads = [threading.Thread(target=worker, args=(c,)) for c in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
    assert len(set(results[0])) == 128


def test_adaptive_limit_is_reported() -> None:
    opt = guest(concurrency=ConcurrencyConfig(16, adaptive=True))
    va = opt.allocate(64 * PAGE, store=LatencyStore(0.002))
    asyncio.run(opt.batch_access_concurrent([va + i * PAGE for i in range(64)]))
    assert opt.limit_history and all(1 <= lim <= 16 for _, lim in opt.limit_history)


# -- Mmu and PageTable batches ------------------------------------------------------------------------


def test_mmu_and_pagetable_batches() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem)
    for i in range(32):
        pt.map(0x40_0000 + i * PAGE, mem.alloc(), PAGE, "rw")
    a, b = Mmu(pt, TlbConfig(16, 4)), Mmu(pt, TlbConfig(16, 4))
    addrs = [0x40_0000 + (i * 7 % 32) * PAGE for i in range(100)]
    loop = [a.translate(va) for va in addrs]
    assert b.translate_batch(addrs) == loop
    assert b.tlb_stats() == a.tlb_stats()
    c = Mmu(pt, TlbConfig(16, 4))
    assert asyncio.run(c.translate_batch_concurrent(addrs)) == loop
    assert c.tlb_stats() == a.tlb_stats()
    lookups = asyncio.run(pt.batch_lookup_concurrent([0x40_0000, 0x1000] * 10))
    assert lookups == pt.batch_lookup([0x40_0000, 0x1000] * 10)
    assert lookups[0] is not None and lookups[0].page_size == PAGE and lookups[1] is None


def test_async_prefetching_tlb_with_custom_concurrency() -> None:
    """The report's test_tlb_with_custom_concurrency, with real assertions."""
    from vmopt import AsyncPrefetchingTlb

    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem)
    for i in range(64):
        pt.map(0x40_0000 + i * PAGE, mem.alloc(), PAGE, "rw")
    tlb = AsyncPrefetchingTlb.with_concurrency(pt, True, ConcurrencyConfig(16, chunk_size=7))
    assert tlb.concurrency.max_concurrent == 16 and tlb.prefetch_config.mode == "deferred"
    addrs = [0x40_0000 + i * PAGE for i in range(0, 64, 2)]
    ref = [pt.walk(va).pa for va in addrs]
    assert asyncio.run(tlb.translate_batch_concurrent(addrs)) == ref
    assert tlb.pending_prefetches == len(addrs)  # next page of every miss, queued
    assert tlb.process_prefetch() == len(addrs)
    odd = [va + PAGE for va in addrs]
    walks = tlb.stats.walks
    assert asyncio.run(tlb.translate_batch_concurrent(odd)) == [pt.walk(va).pa for va in odd]
    assert tlb.stats.walks == walks  # every odd page was prefetched
    off = AsyncPrefetchingTlb.with_concurrency(pt, False, ConcurrencyConfig.sequential())
    assert off.prefetch_config.kind == "none"
    assert asyncio.run(off.translate_batch_concurrent(addrs)) == ref
    with pytest.raises(ConfigError):
        AsyncPrefetchingTlb.with_concurrency(pt, True, ConcurrencyConfig(0))


def test_collect_logs_one_summary_line_not_one_per_index(caplog: pytest.LogCaptureFixture) -> None:
    opt = guest()
    bad = [0x1000 * k for k in range(1, 21)]  # 20 unmapped addresses
    with caplog.at_level(logging.DEBUG, logger="vmopt.batching"):
        res = opt.batch_access(bad, errors="collect")
    assert res.failed == list(range(20))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("batch: 20 of 20 operations failed (indices 0, 1, 2, 3, 4, ...)")
