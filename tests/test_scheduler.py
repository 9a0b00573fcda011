"""Tests of FairFetchScheduler: limit, weighted fairness, FIFO, cancellation.

Fairness is checked on the order of admissions, never on timing: with the
slots held, waiters queue up, and releases admit them one at a time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.errors import ConfigError
from vmopt.fetching.scheduler import FairFetchScheduler
from vmopt.stores import LatencyStore

T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with a watchdog: a leaked slot fails the test, not hangs it."""
    return asyncio.run(asyncio.wait_for(main, timeout=30))


async def _settle(n: int = 20) -> None:
    """Let every ready task run (each wake-up takes a loop iteration or two)."""
    for _ in range(n):
        await asyncio.sleep(0)


def _ordered_admissions(weights: Mapping[str, int], arrivals: Sequence[str], *, limit: int = 1) -> list[str]:
    """Queue ``arrivals`` behind ``limit`` held slots, then admit them all.

    Each admitted operation finishes at once, so with ``limit=1`` the result
    is the exact order in which the scheduler picked waiters.
    """

    async def main() -> list[str]:
        sched = FairFetchScheduler(limit, weights)
        order: list[str] = []
        for _ in range(limit):
            await sched.acquire(next(iter(weights)))

        async def op(cls: str) -> None:
            async with sched.slot(cls):
                order.append(cls)
                await asyncio.sleep(0)

        tasks = [asyncio.ensure_future(op(c)) for c in arrivals]
        await _settle()
        assert order == []
        assert sched.waiting == len(arrivals)
        for _ in range(limit):
            sched.release()
        await asyncio.gather(*tasks)
        assert sched.in_flight == 0
        return order

    return _run(main())


def _lag_ok(order: Sequence[str], weights: Mapping[str, int], counts: Mapping[str, int]) -> None:
    """While every class is still backlogged, each is within SFQ's lag bound.

    For ``m`` classes backlogged together, a class's admissions after ``n``
    picks lie in ``(share*n - m, share*n + 1]`` (start-time fair queueing).
    """
    total_w = sum(weights.values())
    m = len(weights)
    remaining = dict(counts)
    got = dict.fromkeys(weights, 0)
    for n, cls in enumerate(order, start=1):
        if any(remaining[c] == 0 for c in weights):
            break  # some class drained: the backlogged interval is over
        got[cls] += 1
        remaining[cls] -= 1
        for c, w in weights.items():
            ideal = n * w / total_w
            assert ideal - m < got[c] <= ideal + 1, (n, c, got, order[:n])


# ---------------------------------------------------------------- basics


def test_never_more_than_limit_in_flight() -> None:
    async def main() -> tuple[int, FairFetchScheduler]:
        sched = FairFetchScheduler(4)
        running = peak = 0

        async def op(i: int) -> None:
            nonlocal running, peak
            async with sched.slot("demand" if i % 3 else "prefetch"):
                running += 1
                peak = max(peak, running)
                assert running <= sched.limit
                for _ in range(i % 4 + 1):
                    await asyncio.sleep(0)
                running -= 1

        await asyncio.gather(*(op(i) for i in range(60)))
        return peak, sched

    peak, sched = _run(main())
    assert peak == 4
    stats = sched.stats
    assert stats.peak_in_flight == 4
    assert stats.in_flight == 0
    assert dict(stats.admitted) == {"demand": 40, "prefetch": 20}
    assert dict(stats.waiting) == {"demand": 0, "prefetch": 0}


def test_store_in_flight_equals_limit() -> None:
    store = LatencyStore(0.002)

    async def main() -> None:
        sched = FairFetchScheduler(5)

        async def fetch(i: int) -> bytes:
            async with sched.slot("prefetch" if i % 4 == 0 else "demand"):
                return await store.fetch(i)

        pages = await asyncio.gather(*(fetch(i) for i in range(50)))
        assert all(p == bytes(4096) for p in pages)

    _run(main())
    assert store.stats.max_in_flight == 5
    assert store.stats.fetches == 50


def test_fast_path_does_not_yield() -> None:
    async def main() -> None:
        sched = FairFetchScheduler(2)
        await sched.acquire("demand")
        await sched.acquire("prefetch")
        assert sched.in_flight == 2
        sched.release()
        sched.release()
        with pytest.raises(RuntimeError, match="no slot held"):
            sched.release()

    _run(main())


def test_weighted_split_4_to_1() -> None:
    arrivals = ["demand", "prefetch"] * 40  # interleaved arrival
    order = _ordered_admissions({"demand": 4, "prefetch": 1}, arrivals)
    # While both are backlogged (first 50 picks): exactly 4 demand per prefetch.
    first50 = order[:50]
    assert first50.count("demand") == 40
    assert first50.count("prefetch") == 10
    for k in range(0, 50, 5):
        assert sorted(first50[k : k + 5]) == ["demand"] * 4 + ["prefetch"]
    assert order[50:] == ["prefetch"] * 30
    _lag_ok(order, {"demand": 4, "prefetch": 1}, {"demand": 40, "prefetch": 40})


def test_prefetch_first_arrivals_do_not_jump_the_share() -> None:
    # All prefetches arrive before any demand: arrival order gives no priority.
    arrivals = ["prefetch"] * 30 + ["demand"] * 30
    order = _ordered_admissions({"demand": 4, "prefetch": 1}, arrivals)
    assert order[:25].count("prefetch") == 5
    _lag_ok(order, {"demand": 4, "prefetch": 1}, {"demand": 30, "prefetch": 30})


def test_prefetch_not_starved_by_continuous_demand() -> None:
    async def main() -> list[str]:
        sched = FairFetchScheduler(1)
        order: list[str] = []
        stop = False

        async def demand_stream() -> None:
            # Always keeps demand backlogged: a new demand arrives per admission.
            while not stop:
                async with sched.slot("demand"):
                    order.append("demand")
                    await asyncio.sleep(0)

        async def prefetch(i: int) -> None:
            async with sched.slot("prefetch"):
                order.append(f"prefetch{i}")
                await asyncio.sleep(0)

        streams = [asyncio.ensure_future(demand_stream()) for _ in range(8)]
        await _settle()
        prefetches = [asyncio.ensure_future(prefetch(i)) for i in range(10)]
        await asyncio.gather(*prefetches)
        stop = True
        await asyncio.gather(*streams)
        return order

    order = _run(main())
    picks = [i for i, c in enumerate(order) if c.startswith("prefetch")]
    # FIFO within the class, and every prefetch within a few picks of its share.
    assert [order[i] for i in picks] == [f"prefetch{i}" for i in range(10)]
    gaps = [b - a for a, b in itertools.pairwise(picks)]
    assert all(g <= 6 for g in gaps), gaps


def test_fifo_within_class() -> None:
    async def main() -> list[int]:
        sched = FairFetchScheduler(1, {"a": 1})
        order: list[int] = []
        await sched.acquire("a")

        async def op(i: int) -> None:
            async with sched.slot("a"):
                order.append(i)

        tasks = [asyncio.ensure_future(op(i)) for i in range(20)]
        await _settle()
        sched.release()
        await asyncio.gather(*tasks)
        return order

    assert _run(main()) == list(range(20))


def test_newcomer_does_not_overtake_waiters() -> None:
    async def main() -> list[str]:
        sched = FairFetchScheduler(1)
        order: list[str] = []
        await sched.acquire("demand")

        async def op(name: str) -> None:
            async with sched.slot("demand"):
                order.append(name)

        waiter = asyncio.ensure_future(op("waiter"))
        await _settle()
        sched.release()  # slot handed to the waiter, which has not run yet
        late = asyncio.ensure_future(op("late"))
        await asyncio.gather(waiter, late)
        return order

    assert _run(main()) == ["waiter", "late"]


def test_three_classes() -> None:
    weights = {"demand": 3, "prefetch": 2, "scrub": 1}
    arrivals = ["scrub", "prefetch", "demand"] * 20
    order = _ordered_admissions(weights, arrivals)
    assert order[:30].count("demand") == 15
    assert order[:30].count("prefetch") == 10
    assert order[:30].count("scrub") == 5
    _lag_ok(order, weights, dict.fromkeys(weights, 20))


# ---------------------------------------------------------- cancellation


def test_cancelled_waiter_leaves_cleanly() -> None:
    async def main() -> FairFetchScheduler:
        sched = FairFetchScheduler(1)
        order: list[str] = []
        await sched.acquire("demand")

        async def op(name: str, cls: str) -> None:
            async with sched.slot(cls):
                order.append(name)

        a = asyncio.ensure_future(op("a", "prefetch"))
        b = asyncio.ensure_future(op("b", "prefetch"))
        c = asyncio.ensure_future(op("c", "demand"))
        await _settle()
        assert sched.stats.waiting == {"demand": 1, "prefetch": 2}
        a.cancel()
        await _settle()
        assert a.cancelled()
        assert sched.stats.waiting == {"demand": 1, "prefetch": 1}
        assert sched.stats.cancelled == 1
        sched.release()
        await asyncio.gather(b, c)
        # The holder's demand admission already used demand's turn (SFQ tags),
        # so the surviving prefetch goes first; the cancelled one never runs.
        assert order == ["b", "c"]
        assert sched.in_flight == 0
        # The scheduler still works at full capacity afterwards.
        await sched.acquire("prefetch")
        assert sched.in_flight == 1
        sched.release()
        return sched

    sched = _run(main())
    assert sched.stats.admitted == {"demand": 2, "prefetch": 2}


def test_cancel_after_grant_passes_slot_on() -> None:
    async def main() -> None:
        sched = FairFetchScheduler(1)
        order: list[str] = []
        await sched.acquire("demand")

        async def op(name: str) -> None:
            async with sched.slot("demand"):
                order.append(name)

        a = asyncio.ensure_future(op("a"))
        b = asyncio.ensure_future(op("b"))
        await _settle()
        sched.release()  # grants the slot to a's future ...
        a.cancel()  # ... but a is cancelled before it resumes
        await _settle()
        assert a.cancelled()
        await b
        assert order == ["b"]
        assert sched.in_flight == 0
        assert sched.waiting == 0

    _run(main())


def test_cancel_of_future_then_release_in_same_step() -> None:
    """A cancelled future still queued is skipped, never granted."""

    async def main() -> None:
        sched = FairFetchScheduler(1)
        order: list[str] = []
        await sched.acquire("demand")

        async def op(name: str) -> None:
            async with sched.slot("demand"):
                order.append(name)

        a = asyncio.ensure_future(op("a"))
        b = asyncio.ensure_future(op("b"))
        await _settle()
        a.cancel()  # a's future is cancelled now, its cleanup runs later
        sched.release()  # dispatch must skip a's dead future and pick b
        await _settle()
        await b
        assert a.cancelled()
        assert order == ["b"]
        assert sched.in_flight == 0
        assert sched.waiting == 0
        assert sched.stats.cancelled == 1

    _run(main())


# ------------------------------------------------------------ set_limit


def test_set_limit_up_and_down() -> None:
    async def main() -> None:
        sched = FairFetchScheduler(1)
        release = asyncio.Event()
        running = 0

        async def op() -> None:
            nonlocal running
            async with sched.slot("demand"):
                running += 1
                await release.wait()
                running -= 1

        tasks = [asyncio.ensure_future(op()) for _ in range(10)]
        await _settle()
        assert running == 1
        sched.set_limit(6)
        await _settle()
        assert running == 6
        assert sched.in_flight == 6
        sched.set_limit(2)
        await _settle()
        assert running == 6  # running operations are not preempted
        release.set()
        await asyncio.gather(*tasks)
        assert sched.stats.peak_in_flight == 6

    _run(main())


def test_lowered_limit_admits_nobody_until_below_it() -> None:
    async def main() -> None:
        sched = FairFetchScheduler(3)
        for _ in range(3):
            await sched.acquire("demand")
        waiter = asyncio.ensure_future(sched.acquire("demand"))
        await _settle()
        sched.set_limit(1)
        sched.release()
        sched.release()
        await _settle()
        assert not waiter.done()  # 1 in flight, limit 1
        sched.release()
        await _settle()
        assert waiter.done()
        assert sched.in_flight == 1
        sched.release()

    _run(main())


# ----------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0,), "max_in_flight must be an int >= 1, got 0"),
        ((True,), "max_in_flight must be an int >= 1, got True"),
        ((2, {}), "weights must be a non-empty mapping"),
        ((2, {"demand": 0}), "weight of class 'demand' must be an int >= 1, got 0"),
        ((2, {"demand": 1.5}), "weight of class 'demand' must be an int >= 1, got 1.5"),
        ((2, {"": 1}), "class names must be non-empty strings"),
    ],
)
def test_constructor_validation(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FairFetchScheduler(*args)  # type: ignore[arg-type]


def test_unknown_class_and_bad_limit() -> None:
    sched = FairFetchScheduler(2)
    with pytest.raises(ConfigError, match="unknown traffic class 'bulk'; known classes: "):
        sched.slot("bulk")
    with pytest.raises(ConfigError, match="limit must be an int >= 1, got 0"):
        sched.set_limit(0)
    assert sched.limit == 2
    assert sched.weights == {"demand": 4, "prefetch": 1}
    assert "limit=2" in repr(sched)


def test_usable_across_event_loops() -> None:
    sched = FairFetchScheduler(1)

    async def main() -> None:
        async def op() -> None:
            async with sched.slot("demand"):
                await asyncio.sleep(0)

        await asyncio.gather(*(op() for _ in range(5)))

    _run(main())
    _run(main())  # a fresh loop: futures come from the running loop
    assert sched.stats.admitted["demand"] == 10


# ----------------------------------------------------- property-based


@settings(max_examples=150, deadline=None)
@given(
    weights=st.dictionaries(st.sampled_from(["demand", "prefetch", "scrub"]), st.integers(1, 8), min_size=1),
    data=st.data(),
)
def test_sfq_lag_bound(weights: dict[str, int], data: st.DataObject) -> None:
    counts = {c: data.draw(st.integers(1, 25), label=f"n_{c}") for c in weights}
    arrivals = data.draw(st.permutations([c for c, n in counts.items() for _ in range(n)]))
    order = _ordered_admissions(weights, arrivals)
    assert sorted(order) == sorted(arrivals)
    _lag_ok(order, weights, counts)


@dataclass
class _Model:
    """Bookkeeping for the random-operation test."""

    arrivals: dict[str, list[int]] = field(default_factory=lambda: {"demand": [], "prefetch": []})
    admitted: dict[str, list[int]] = field(default_factory=lambda: {"demand": [], "prefetch": []})
    cancelled: set[int] = field(default_factory=set)
    inside: set[int] = field(default_factory=set)


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from(["demand", "prefetch"])),
        st.tuples(st.just("finish"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("limit"), st.integers(1, 6)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, limit=st.integers(1, 4))
def test_random_operations_keep_invariants(ops: list[tuple[str, str | int]], limit: int) -> None:
    """Random arrivals, completions, cancellations and limit changes.

    After every step: no slot leaked or invented (in_flight == operations
    inside), no admission above the limit, work conservation (a free slot
    means nobody waits), FIFO within each class; at the end, a clean state.
    """

    async def main() -> None:
        sched = FairFetchScheduler(limit)
        model = _Model()
        done: dict[int, asyncio.Event] = {}
        tasks: dict[int, asyncio.Task[None]] = {}

        async def op(i: int, cls: str) -> None:
            async with sched.slot(cls):
                model.admitted[cls].append(i)
                model.inside.add(i)
                try:
                    await done[i].wait()
                finally:
                    model.inside.discard(i)

        def live() -> list[int]:
            return sorted(i for i, t in tasks.items() if not t.done())

        for kind, arg in ops:
            before = sched.in_flight
            if kind == "arrive":
                assert isinstance(arg, str)
                i = len(tasks)
                model.arrivals[arg].append(i)
                done[i] = asyncio.Event()
                tasks[i] = asyncio.ensure_future(op(i, arg))
            elif kind == "finish":
                assert isinstance(arg, int)
                inside = sorted(model.inside)
                if inside:
                    done[inside[arg % len(inside)]].set()
            elif kind == "cancel":
                assert isinstance(arg, int)
                alive = live()
                if alive:
                    victim = alive[arg % len(alive)]
                    if victim not in model.inside:
                        model.cancelled.add(victim)
                    tasks[victim].cancel()
            else:
                assert isinstance(arg, int)
                sched.set_limit(arg)
            await _settle()
            assert sched.in_flight == len(model.inside)
            assert sched.in_flight <= max(sched.limit, before)
            if sched.in_flight < sched.limit:
                assert sched.waiting == 0

        for ev in done.values():
            ev.set()
        sched.set_limit(max(sched.limit, 1))
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        assert sched.in_flight == 0
        assert sched.waiting == 0
        stats = sched.stats
        for cls in ("demand", "prefetch"):
            expected = [i for i in model.arrivals[cls] if i not in model.cancelled]
            # Cancelling an operation already inside its slot does not undo
            # its admission; it is in both lists and keeps its FIFO place.
            assert model.admitted[cls] == expected
            assert stats.admitted[cls] == len(expected)
        assert stats.cancelled == len(model.cancelled)

    _run(main())
