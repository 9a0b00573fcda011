"""The batch loop's L1 memo fast path against the reference, case by case.

``Mmu.translate_batch`` answers a hit from L1's lookup memo when the memo
still holds the page's lookup (see ``crates/vmopt-core/src/tlb/level.rs``).
These scenarios drive it through each case against the reference loop and
the scalar core loop (``test_batch_core.run_scenario`` compares results,
counters, every TLB way with its stamps / PLRU bits / random state, the
page-walk cache, the prefetch queue and guest memory after every step):

- memo hits: hot pages looked up again and again within one batch;
- memo invalidated inside a batch: a fill or an eviction between two hits
  of a page (sets conflict in the small TLBs), a dirty re-walk, a fault;
- memo invalidated between batches: invlpg, a shootdown (unmap, protect),
  a flush, an ASID switch and back, a prefetch fill;
- fallbacks: write hits on clean entries, rights faults on hits, first
  hits on prefetched entries, pages of a 2 MiB entry (one entry, many
  memo slots), global entries under two ASIDs.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_batch_core import PAGE, POLICIES, SETTINGS, Scenario, run_scenario, scenarios
from vmopt import PrefetchConfig, PwcConfig

SMALL = 0x4000_0000
BIG = 0x8000_0000


def page(i: int, off: int = 0x10) -> int:
    return SMALL + i * PAGE + off


def hot(pages: list[int], rounds: int) -> list[int]:
    """A hot loop: every page of ``pages`` touched ``rounds`` times, interleaved."""
    return [page(p, 8 * (r % 500)) for r in range(rounds) for p in pages]


def memo_ops() -> list[tuple[Any, ...]]:
    """One pass over every memo case (see the module docstring)."""
    return [
        ("batch", hot([0, 1], 40), "r", True),  # memo hits
        ("batch", hot([0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11], 6), "r", True),  # evictions between hits
        ("batch", [*hot([0], 3), page(3), *hot([0], 3)], "w", True),  # dirty re-walk, then a rights fault
        ("batch", hot([0], 20), "w", True),  # dirty now: write hits from the memo
        ("invlpg", SMALL),
        ("batch", hot([0, 1], 10), "r", True),
        ("unmap", page(1, 0)),  # shootdown
        ("batch", hot([0, 1], 5), "r", True),
        ("protect", page(2, 0), "r"),
        ("batch", hot([2], 4) + hot([0], 4), "w", True),
        ("batch", hot([2, 0], 4), "r", True),
        ("switch", 1),  # globals (pages 0, 5, 10) hit under the new ASID, the others miss
        ("batch", hot([0, 4, 5], 6), "r", True),
        ("switch", 0),
        ("batch", hot([0, 4, 5], 6), "r", True),
        ("batch", [BIG + k * PAGE + 8 for k in range(12)] * 4, "r", True),  # one 2 MiB entry, many pages
        ("scalar", page(6), "r", True),
        ("batch", [BIG + k * PAGE for k in range(12)] + hot([6, 0], 5), "r", True),
        ("flush",),
        ("batch", hot([0, 4], 5), "r", True),
        ("batch", [page(k) for k in range(12)] * 3, "r", True),  # a sweep: prefetched entries' first hits
        ("process",),
        ("batch", hot([6, 7, 8, 0], 5), "x", True),
        ("batch", hot([0, 4], 5), "r", False),  # supervisor reads of user pages
    ]


def memo_scenario(policy: str, hierarchy: str, prefetch: PrefetchConfig | None) -> Scenario:
    pages = [("small", i, "r" if i == 3 else "rwx", True, i % 5 == 0) for i in range(12)]
    pages.append(("big", 0, "rwx", True, False))
    return Scenario(
        fmt="x86_64", hierarchy=hierarchy, policy=policy, seed=1, prefetch=prefetch, pwc=PwcConfig(),
        asid=0, update_ad=True, shootdown=True, demand=False, walk_ref_cycles=5,
        pages=pages, ops=memo_ops(), user=True,
    )  # fmt: skip


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("hierarchy", ["one", "fa", "two", "split"])
@pytest.mark.parametrize("prefetch", [None, PrefetchConfig("next_page", degree=2)], ids=["plain", "prefetch"])
def test_memo_cases_match_the_reference(policy: str, hierarchy: str, prefetch: PrefetchConfig | None) -> None:
    """Every memo case, with every policy and hierarchy, agrees with the reference step by step."""
    sc = memo_scenario(policy, hierarchy, prefetch)
    _, fast = run_scenario(sc)
    total = sum(len(op[1]) for op in sc.ops if op[0] == "batch")
    assert fast.batched >= 0.95 * total  # the batch loop did them, not its stops


def hot_batches(sc: Scenario, rounds: int) -> Scenario:
    """``sc`` with each batch turned into a hot loop: every address repeated, in order, ``rounds`` times."""
    ops = []
    for op in sc.ops:
        if op[0] == "batch" and op[1]:
            op = ("batch", [va for _ in range(rounds) for va in op[1][:12]], *op[2:])
        ops.append(op)
    sc.ops = ops
    return sc


@SETTINGS
@given(scenarios(ops=8), st.integers(2, 6))
def test_hot_batches_match_the_reference(sc: Scenario, rounds: int) -> None:
    """Random scenarios whose batches revisit their pages (the memo's case) agree exactly."""
    run_scenario(hot_batches(sc, rounds))
