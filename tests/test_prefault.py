"""``MemoryOptimizer.prefault`` (the trace path's first touches) against first touches made one by one."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.errors import PageFault
from vmopt.guest import MemoryOptimizer
from vmopt.numa.config import NumaConfig
from vmopt.numa.policy import MemPolicy

MiB = 1 << 20
HIGH = 0x7F00_0000_0000
PAGE = 4096

# Addresses over a few pages, in runs, with some non-canonical ones mixed in; pages 2**16
# apart share a slot of prefault's cache of mapped pages.
page = st.tuples(st.integers(0, 12), st.integers(0, 2)).map(lambda pq: HIGH + (pq[0] + (pq[1] << 16)) * PAGE)
access = st.tuples(st.one_of(page, st.just(1 << 63)), st.integers(0, 1))
runs = st.lists(st.tuples(access, st.integers(1, 4), st.integers(0, PAGE - 1)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(trace=runs, cut=st.integers(1, 50), interleave=st.booleans())
def test_prefault_places_pages_as_first_touches_one_by_one(
    trace: list[tuple[tuple[int, int], int, int]], cut: int, interleave: bool
) -> None:
    vas: list[int] = []
    cpus: list[int] = []
    for (va, cpu), repeat, offset in trace:
        vas += [va + (offset if va != 1 << 63 else 0)] * repeat
        cpus += [cpu] * repeat
    policy = MemPolicy.interleave([0, 1]) if interleave else None

    def guest() -> MemoryOptimizer:
        return MemoryOptimizer(NumaConfig(2, 32 * MiB), cpus=2, policy=policy, anonymous_page_size=PAGE)

    model = guest()
    for va, cpu in zip(vas, cpus, strict=True):
        try:
            model.translate(va, "r", cpu)
        except PageFault:
            assert va == 1 << 63
    fast = guest()
    placed = [0, 0]
    a = np.array(vas, dtype=np.uint64)
    c = np.array(cpus, dtype=np.uint16)
    for start in range(0, len(vas), cut):  # in chunks, so later ones meet pages already known
        for node, k in enumerate(fast.prefault(a[start : start + cut], c[start : start + cut])):
            placed[node] += k
    assert placed == [s.pages for s in model.node_stats()]
    assert fast.anonymous_pages == model.anonymous_pages == sum(placed)
    for page in {va // PAGE for va in vas if va != 1 << 63}:
        want, got = model.page_table.lookup(page * PAGE), fast.page_table.lookup(page * PAGE)
        assert want is not None and got is not None and got.page_pa == want.page_pa
    assert fast.page_table.table_frames() == model.page_table.table_frames()
