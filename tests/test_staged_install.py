"""Installing fetched pages inside the core's translate loop equals installing them one by one.

``MemoryOptimizer.batch_access_concurrent`` fetches a batch's store-backed
pages ahead and installs them in runs, one core call per run
(``Mmu.translate_staged``). These tests hold it, and
``MemoryOptimizer.translate_fetched_batch``, to the sequential path on
random guests: the same physical addresses, the same failures at the same
indices, the same statistics, the same frames per node and the same bytes,
with failing fetches, read-only regions, anonymous memory and memory that
runs out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmopt import BatchResult, LatencyStore, MemoryOptimizer, MemPolicy, NumaConfig
from vmopt.errors import AddressError, InputError, PageFault
from vmopt.fetching.concurrency import ConcurrencyConfig

PAGE = 4096


def data_of(index: int) -> bytes:
    return bytes([index & 0xFF, (index * 7) & 0xFF]) * (PAGE // 2)


POLICIES = {
    "interleave": MemPolicy.interleave([0, 1]),
    "balanced": MemPolicy.balanced(),
    "preferred": MemPolicy.preferred(1),
    "weighted": MemPolicy.weighted_interleave({0: 2, 1: 1}),
}


def guest(
    seed: int, frames: int, anonymous: bool, chunk: int, inflight: int, balancing: bool = False,
    nodes: int = 2, policy: str = "interleave",
) -> tuple[MemoryOptimizer, list[int]]:  # fmt: skip
    """A guest with a failing store region, a read-only store region, a zero region.

    With 3 nodes every remote distance ties, so where a fallback lands
    depends on the rotation that earlier fallbacks moved.
    """
    opt = MemoryOptimizer(
        NumaConfig(nodes, frames * PAGE),
        numa_balancing=balancing,
        balance_period=1,
        concurrency=ConcurrencyConfig(inflight, tlb_batch_threshold=1, chunk_size=chunk),
        anonymous_page_size=PAGE if anonymous else None,
    )
    failing = LatencyStore(0.0, data=data_of, fail_rate=0.3, seed=seed, num_pages=16)
    plain = LatencyStore(0.0, data=data_of, num_pages=8)
    bases = [
        opt.allocate(16 * PAGE, policy=POLICIES[policy], store=failing),
        opt.allocate(8 * PAGE, perms="r", store=plain),
        opt.allocate(8 * PAGE, policy=MemPolicy.preferred(1)),
    ]
    return opt, bases


def addresses(bases: list[int], picks: list[tuple[int, int, int]]) -> list[int]:
    """Region (3 = outside every region), page and offset picks as addresses."""
    out = []
    for region, page, offset in picks:
        base = bases[region] if region < 3 else 0x7F00_0000_0000
        out.append(base + (page % 8 if region else page) * PAGE + offset)
    return out


def outcome(opt: MemoryOptimizer, res: Any) -> tuple[Any, ...]:
    assert isinstance(res, BatchResult)
    errors = {i: type(e).__name__ for i, e in res.errors.items()}
    values = [None if i in res.errors else int(v) for i, v in enumerate(res.values)]
    resident = sorted((r.va, i, opt.read(r.va + i * PAGE, 8)) for r in opt._regions for i in r.resident)
    return values, errors, opt.mmus[0].stats, opt.node_stats(), opt.mem.free_bytes, resident


picks = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 15), st.sampled_from([0, 8, PAGE - 1])), max_size=60
)


@settings(max_examples=60, deadline=None)
@given(
    picks=picks,
    seed=st.integers(0, 50),
    frames=st.sampled_from([12, 24, 256]),
    anonymous=st.booleans(),
    chunk=st.sampled_from([3, 7, 10_000]),
    inflight=st.sampled_from([1, 4, 64]),
    access=st.sampled_from(["r", "w"]),
    as_array=st.booleans(),
    nodes=st.sampled_from([2, 3]),
    policy=st.sampled_from(sorted(POLICIES)),
)
# An anonymous page's fault between two staged installs falls back and moves the
# tie-breaking rotation: the second staged page must be placed after it.
@example(
    picks=[(0, 0, 0)] * 12 + [(0, 1, 0), (3, 1, 0), (1, 1, 0), (3, 0, 0), (1, 0, 0)],
    seed=0, frames=12, anonymous=True, chunk=7, inflight=1, access="r", as_array=False, nodes=3,
    policy="weighted",
)  # fmt: skip
def test_the_concurrent_batch_equals_the_sequential_one(
    picks: list[tuple[int, int, int]], seed: int, frames: int, anonymous: bool, chunk: int,
    inflight: int, access: str, as_array: bool, nodes: int, policy: str,
) -> None:  # fmt: skip
    seq, bases = guest(seed, frames, anonymous, chunk, inflight, nodes=nodes, policy=policy)
    conc, _ = guest(seed, frames, anonymous, chunk, inflight, nodes=nodes, policy=policy)
    vas: Any = addresses(bases, picks)
    if as_array:
        vas = np.array(vas, dtype=np.uint64)
    want = seq.batch_access(vas, access, errors="collect", log_failures=False)
    got = asyncio.run(conc.batch_access_concurrent(vas, access, errors="collect"))
    assert outcome(conc, got) == outcome(seq, want)


@settings(max_examples=40, deadline=None)
@given(
    picks=picks,
    frames=st.sampled_from([8, 12, 256]),
    anonymous=st.booleans(),
    access=st.sampled_from(["r", "w"]),
    balancing=st.booleans(),
    nodes=st.sampled_from([2, 3]),
    policy=st.sampled_from(sorted(POLICIES)),
)
def test_translate_fetched_batch_equals_translate_fetched_in_a_loop(
    picks: list[tuple[int, int, int]], frames: int, anonymous: bool, access: str, balancing: bool,
    nodes: int, policy: str,
) -> None:  # fmt: skip
    loop, bases = guest(0, frames, anonymous, 10_000, 8, balancing, nodes, policy)
    batch, _ = guest(0, frames, anonymous, 10_000, 8, balancing, nodes, policy)
    vas = addresses(bases, picks)
    fetched = {bases[0] + p * PAGE: data_of(1000 + p) for p in range(16)}
    fetched.update({bases[2] + p * PAGE: data_of(2000 + p) for p in range(0, 8, 2)})
    values: list[int | None] = []
    errors: dict[int, str] = {}
    for i, va in enumerate(vas):
        page_va = va & ~(PAGE - 1)
        try:
            values.append(loop.translate_fetched(va, fetched.get(page_va), access))
        except (PageFault, AddressError) as exc:
            values.append(None)
            errors[i] = type(exc).__name__
        except Exception as exc:
            values.append(None)
            errors[i] = type(exc).__name__
    res = batch.translate_fetched_batch(np.array(vas, dtype=np.uint64), fetched, access, errors="collect")
    assert isinstance(res, BatchResult)
    got_errors = {i: type(e).__name__ for i, e in res.errors.items()}
    got_values = [None if i in res.errors else int(v) for i, v in enumerate(res.values)]
    assert (got_values, got_errors) == (values, errors)
    assert batch.mmus[0].stats == loop.mmus[0].stats
    assert batch.node_stats() == loop.node_stats() and batch.store_fetches == loop.store_fetches
    assert batch.balancer.migrations == loop.balancer.migrations


def test_a_fetched_page_goes_in_from_its_data_once() -> None:
    opt, bases = guest(0, 256, False, 10_000, 8)
    va = bases[2]  # no store: only the staged data can fill the page
    res = opt.translate_fetched_batch(
        np.array([va, va + 8, va + PAGE], dtype=np.uint64), {va: b"\x5a" * PAGE}, "w"
    )
    assert isinstance(res, np.ndarray) and res[1] == res[0] + 8
    assert opt.read(va, 4) == b"\x5a" * 4 and opt.read(va + PAGE, 4) == bytes(4)
    assert opt.mmus[0].stats.demand_faults == 2 and opt.store_fetches == 0


@pytest.mark.parametrize("bad", [[1, 2], np.array([1.5]), "x"])
def test_translate_fetched_batch_wants_an_integer_array(bad: object) -> None:
    opt, _ = guest(0, 256, False, 10_000, 8)
    with pytest.raises(InputError, match="integer array"):
        opt.translate_fetched_batch(bad, {})  # type: ignore[arg-type]


def test_a_fetched_page_must_start_a_region_page() -> None:
    opt, bases = guest(0, 256, False, 10_000, 8)
    with pytest.raises(AddressError, match=hex(bases[0] + 8)):
        opt.translate_fetched_batch(np.array([bases[0]], dtype=np.uint64), {bases[0] + 8: bytes(PAGE)})


def test_fallbacks_in_one_batch_rotate_between_tied_nodes_as_one_by_one_installs_do() -> None:
    """Node 1 fills; the rest fall back to nodes 0 and 2 (equally far) in turn, in both paths."""

    def run(batch: bool) -> list[int]:
        opt = MemoryOptimizer(NumaConfig(3, 8 * PAGE))
        va = opt.allocate(16 * PAGE, policy=MemPolicy.preferred(1))
        vas = np.arange(va, va + 16 * PAGE, PAGE, dtype=np.uint64)
        if batch:
            res = opt.translate_fetched_batch(
                vas, {int(v): bytes([k]) * PAGE for k, v in enumerate(vas)}, "w"
            )
            pas = [int(pa) for pa in res]
        else:
            pas = [opt.translate_fetched(int(v), bytes([k]) * PAGE, "w") for k, v in enumerate(vas)]
        return [opt.node_of(pa) for pa in pas]

    nodes = run(batch=False)
    assert nodes[8:] != [nodes[8]] * 8  # the ties really rotate
    assert run(batch=True) == nodes
