"""The batch loop's run fast paths against the reference, case by case.

A one-array LRU L1 answers a batch's addresses from the last four 4 KiB
pages it hit (their stamps deferred) before its lookup memo, and any L1
answers a run of addresses in one page with one memo probe (see
``RecentPages`` and ``TlbLevel::memo_run`` in
``crates/vmopt-core/src/tlb/level.rs``). These scenarios drive both
through their edge cases; ``test_batch_core.run_scenario`` compares the
reference loop, the scalar core loop and the batch after every step
(results, counters, every TLB way with its stamps / PLRU bits / random
state, the page-walk cache, the prefetch queue, guest memory):

- runs of one page interrupted by a fill, and by a fill that evicts a page
  of the window (small sets);
- cycles of 2-3 pages (all in the window) and of 5-9 (the window turns
  over, and the TLB evicts);
- a write run over clean pages (each stops for a dirty re-walk), then
  over dirty ones;
- an invlpg, an unmap and a protect (shootdowns) between batches, and an
  ASID switch and back;
- pages of a 2 MiB entry (one entry for many pages: answered by the memo,
  never held in the window) mixed with 4 KiB ones.

``test_shootdown_from_another_thread_is_never_missed`` runs the window
against a concurrent remapper: no translation after a remap returns uses
the old frame.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_batch_core import PAGE, POLICIES, SETTINGS, Scenario, run_scenario, scenarios
from vmopt import BatchOperationFailed, Mmu, PageTable, PhysicalMemory, TlbConfig

SMALL = 0x4000_0000
BIG = 0x8000_0000


def page(i: int, off: int = 0x10) -> int:
    return SMALL + i * PAGE + off


def runs(spec: list[tuple[int, int]]) -> list[int]:
    """``k`` addresses in page ``i`` for each ``(i, k)``: runs of one page."""
    return [page(i, 8 * j + 8) for i, k in spec for j in range(k)]


def cycle(pages: list[int], rounds: int) -> list[int]:
    """A loop over ``pages`` (code, source, destination...), each visit a run of 1-3 addresses."""
    return [
        page(p, 8 * ((r + j) % 500)) for r in range(rounds) for p in pages for j in range(1 + (r + p) % 3)
    ]


def run_ops() -> list[tuple[Any, ...]]:
    """One pass over every case of the module docstring."""
    return [
        ("batch", runs([(0, 5), (1, 3), (0, 4), (2, 6)]), "r", True),  # runs broken by fills
        ("batch", cycle([0, 1, 2], 30), "r", True),  # the window holds the cycle
        ("batch", cycle([0, 1], 20) + cycle([4, 8, 0], 10), "r", True),
        ("batch", cycle([0, 1, 2, 4, 5], 12), "r", True),  # the window turns over
        ("batch", cycle([0, 4, 8, 1, 5, 9, 2, 6, 10], 6), "r", True),  # TLB evictions mid-run
        ("batch", runs([(0, 4), (6, 1), (0, 4), (7, 1), (0, 3), (8, 1), (9, 1), (11, 1), (0, 2)]), "r", True),
        ("batch", cycle([0, 1, 2], 8), "w", True),  # clean pages: dirty re-walks stop the runs
        ("batch", cycle([0, 1, 2], 8), "w", True),  # dirty now: writes from the window
        ("batch", runs([(3, 4)]) + cycle([0, 3], 3), "w", True),  # a rights fault in a run
        ("invlpg", page(1, 0)),
        ("batch", cycle([0, 1, 2], 10), "r", True),
        ("unmap", page(2, 0)),  # shootdown: page 2 faults now
        ("batch", cycle([0, 1], 5) + cycle([2], 1) + cycle([0, 1], 5), "r", True),
        ("protect", page(0, 0), "r"),
        ("batch", cycle([0, 1], 6), "w", True),  # page 0 read-only now: its write faults
        ("batch", cycle([0, 1], 6), "r", True),
        ("switch", 1),  # globals (pages 0, 5, 10) hit under the new ASID, the others miss
        ("batch", cycle([0, 5, 4], 10), "r", True),
        ("switch", 0),
        ("batch", cycle([0, 5, 4], 10), "r", True),
        ("batch", [BIG + (k % 5) * PAGE + 8 * k for k in range(60)] + cycle([6, 7], 6), "r", True),
        ("batch", [a for k in range(30) for a in (BIG + (k % 3) * PAGE, page(6), page(7, 8 * k))], "r", True),
        ("scalar", page(6), "r", True),
        ("flush",),
        ("batch", cycle([6, 7, 8], 10), "x", True),
        ("batch", cycle([4, 5], 10), "r", False),  # supervisor reads of user pages
    ]


def run_scenario_of(policy: str, hierarchy: str) -> Scenario:
    pages = [("small", i, "r" if i == 3 else "rwx", True, i % 5 == 0) for i in range(12)]
    pages.append(("big", 0, "rwx", True, False))
    return Scenario(
        fmt="x86_64", hierarchy=hierarchy, policy=policy, seed=1, prefetch=None, pwc=None,
        asid=0, update_ad=True, shootdown=True, demand=False, walk_ref_cycles=5,
        pages=pages, ops=run_ops(), user=True,
    )  # fmt: skip


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("hierarchy", ["one", "fa", "two", "split"])
def test_run_cases_match_the_reference(policy: str, hierarchy: str) -> None:
    """Every run case, with every policy and hierarchy, agrees with the reference step by step."""
    sc = run_scenario_of(policy, hierarchy)
    _, fast = run_scenario(sc)
    total = sum(len(op[1]) for op in sc.ops if op[0] == "batch")
    assert fast.batched >= 0.9 * total  # the batch loop did them, not its stops


def with_runs(sc: Scenario, lengths: list[int]) -> Scenario:
    """``sc`` with each batch address repeated as a run in its page, the batch replayed as a loop."""
    ops = []
    for op in sc.ops:
        if op[0] == "batch" and op[1]:
            addrs = [
                (va & ~(PAGE - 1)) | ((va + 8 * j) & (PAGE - 1))
                for i, va in enumerate(op[1][:8])
                for j in range(lengths[i % len(lengths)])
            ]
            op = ("batch", addrs * 3, *op[2:])
        ops.append(op)
    sc.ops = ops
    return sc


@SETTINGS
@given(scenarios(ops=8), st.lists(st.integers(1, 4), min_size=1, max_size=5))
def test_random_runs_match_the_reference(sc: Scenario, lengths: list[int]) -> None:
    """Random scenarios whose batches are loops of same-page runs agree exactly."""
    run_scenario(with_runs(sc, lengths))


def test_shootdown_from_another_thread_is_never_missed() -> None:
    """A batch that starts after a remap returned never uses the frame the remap replaced.

    One thread loops over three pages (held in the window); the main thread
    remaps the middle one to a new frame, then publishes the generation. A
    batch reads the published generation before it starts, so each of its
    translations of that page must be a frame of that generation or later.
    """
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem, "x86_64")
    for i in (0, 2):
        pt.map(page(i, 0), mem.alloc(), PAGE, "rw", user=True)
    frames = [mem.alloc() for _ in range(40)]
    pt.map(page(1, 0), frames[0], PAGE, "rw", user=True)
    mmu = Mmu(pt, TlbConfig(64, 4, "lru"))
    addrs = np.array(cycle([0, 1, 2], 200), dtype=np.uint64)
    middle = (addrs >> np.uint64(12)) == np.uint64(page(1) >> 12)
    published = [0]
    finished = [-1]  # the generation the last completed batch started at
    progress = threading.Condition()
    stop = threading.Event()
    bad: list[str] = []

    def translate() -> None:
        while not stop.is_set():
            gen = published[0]
            try:
                out = mmu.translate_batch(addrs, "r", True)
            except BatchOperationFailed:
                continue  # caught between unmap and map
            seen = {int(pa) & ~(PAGE - 1) for pa in out[middle]}
            allowed = set(frames[gen:])
            if not seen <= allowed:
                bad.append(f"generation {gen}: frames {sorted(seen - allowed)} were replaced")
            with progress:
                finished[0] = gen
                progress.notify()

    worker = threading.Thread(target=translate)
    worker.start()
    try:
        for gen in range(1, len(frames)):
            pt.unmap(page(1, 0), PAGE)
            pt.map(page(1, 0), frames[gen], PAGE, "rw", user=True)
            published[0] = gen
            # The next remap races with a batch that started after this one.
            with progress:
                assert progress.wait_for(lambda g=gen: finished[0] >= g or bool(bad), timeout=60)
    finally:
        stop.set()
        worker.join()
    assert not bad, bad[0]
    assert mmu.translate(page(1), "r", True) == frames[-1] + 0x10


def test_failed_slots_of_a_collected_array_batch_are_zero() -> None:
    """The array path's output starts uninitialised: every failed slot must still read 0."""
    mem = PhysicalMemory(1 << 30)
    pt = PageTable(mem, "x86_64")
    frame = mem.alloc()
    pt.map(page(0, 0), frame, PAGE, "r", user=True)
    mmu = Mmu(pt, TlbConfig(64, 4, "lru"))
    for _ in range(3):  # reuse freed memory, which np.empty does not clear
        junk = np.full(4096, 0xDEAD_BEEF, dtype=np.uint64)
        del junk
        addrs = np.array([page(0), page(5), page(0, 8), page(6), page(0, 16)] * 800, dtype=np.uint64)
        res = mmu.translate_batch(addrs, "r", True, errors="collect")
        failed = ~res.ok
        assert failed.sum() == 1600
        assert not np.asarray(res.values)[failed].any()
        assert (np.asarray(res.values)[res.ok] & ~np.uint64(0xFFF) == np.uint64(frame)).all()
