"""Address spaces per ASID: the guest's switch, and traces whose ASIDs select the space.

A trace with ASIDs (ChampSim cloudsuite, drmemtrace PIDs) runs every ASID
in its own page table: the same virtual page in two spaces is two pages,
two faults, two TLB entries told apart by their ASID, and switching
between spaces flushes nothing. The counts are checked against a small
independent model: a set-associative LRU TLB keyed by (ASID, page).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_layouts import CLOUDSUITE_INSTR
from vmopt import MemoryOptimizer, NumaConfig
from vmopt.errors import ConfigError
from vmopt.sim.config import load_config
from vmopt.sim.driver import Simulator
from vmopt.traces.chunk import TraceChunk

PAGE = 4096
L1 = ["tlb.l1d.entries=16", "tlb.l1d.ways=4", "tlb.l1d.policy=lru"]


def lru_misses(keys: list[tuple[int, int]], sets: int, ways: int) -> int:
    """Misses of a ``sets`` x ``ways`` LRU cache of ``(asid, page)`` keys indexed by page."""
    cache = [OrderedDict[tuple[int, int], None]() for _ in range(sets)]
    misses = 0
    for key in keys:
        s = cache[key[1] % sets]
        if key in s:
            s.move_to_end(key)
            continue
        misses += 1
        s[key] = None
        if len(s) > ways:
            s.popitem(last=False)
    return misses


def test_the_same_page_in_two_spaces_is_two_pages() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20), anonymous_page_size=PAGE)
    va = 0x7000_1000
    pa0 = opt.translate(va, "w")
    opt.switch(0, 7)
    pa7 = opt.translate(va, "w")
    assert pa7 != pa0 and opt.anonymous_pages == 2 and opt.address_spaces == 2
    opt.write(va, b"seven")
    opt.switch(0, 0)
    assert opt.translate(va) == pa0 and opt.read(va, 5) == bytes(5)
    opt.switch(0, 7)
    assert opt.read(va, 5) == b"seven"
    # Two walks in all: each space's entry stayed cached across the switches.
    assert opt.mmus[0].stats.walks == 2


def test_regions_live_in_space_zero_only() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20), anonymous_page_size=PAGE)
    region = opt.allocate(4 * PAGE)
    opt.write(region, b"region")
    opt.switch(0, 3)
    assert opt.read(region, 6) == bytes(6)  # anonymous memory of space 3, not the region
    opt.switch(0, 0)
    assert opt.read(region, 6) == b"region"


@pytest.mark.parametrize("asid", [-1, 1 << 16, 1.0, True, "1"])
def test_a_bad_asid_is_named(asid: object) -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20), anonymous_page_size=PAGE)
    with pytest.raises(ConfigError, match="asid"):
        opt.switch(0, asid)  # type: ignore[arg-type]
    assert opt.address_spaces == 1


def test_a_second_space_needs_anonymous_memory() -> None:
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20))
    with pytest.raises(ConfigError, match="anonymous"):
        opt.switch(0, 1)
    opt.switch(0, 0)  # the guest's own space is always there


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), min_size=1, max_size=300))
def test_a_trace_with_asids_counts_as_an_asid_tagged_tlb(accesses: list[tuple[int, int]]) -> None:
    sim = Simulator(load_config(sets=L1))
    asids = np.array([a for a, _ in accesses], dtype=np.uint16)
    addrs = np.array([0x10_0000 + p * PAGE + 8 for _, p in accesses], dtype=np.uint64)
    half = len(addrs) // 2
    for part in (slice(0, half), slice(half, None)):
        sim.feed(TraceChunk(addrs[part], np.zeros(len(addrs[part]), np.uint8), asids=asids[part]))
    keys = [(a, 0x100 + p) for a, p in accesses]
    assert sim.demand_faults == len(set(keys))
    assert sim.opt.mmus[0].levels[0].stats.misses == lru_misses(keys, 4, 4)
    assert sim.opt.address_spaces == 1 + len(set(asids.tolist()) - {0})


def test_a_cloudsuite_trace_runs_each_asid_in_its_own_space(tmp_path: Path) -> None:
    """Two processes touching the same virtual pages fault on them twice."""
    recs = np.zeros(200, dtype=CLOUDSUITE_INSTR)
    recs["ip"] = 0x40_0000 + (np.arange(200) % 10) * 4
    recs["src_mem"][:, 0] = 0x60_0000 + (np.arange(200) % 25) * PAGE
    recs["asid"][:, 0] = np.arange(200) // 50 % 2  # 50 instructions of one process, then the other
    recs["asid"][:, 1] = recs["asid"][:, 0]
    trace = tmp_path / "two.trace"
    recs.tofile(trace)
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "simulate", str(trace), "--format", "champsim-cloudsuite",
         "--json", str(out), "--no-progress"],
        check=True, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    # Per process: one code page and the 25 data pages it touched (each saw all 25).
    assert report["faults"]["demand"] == 2 * (1 + 25)
