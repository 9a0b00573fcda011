"""Split L1 TLBs: an ITLB for instruction fetches and a DTLB for reads and writes over a shared STLB.

- the product (Rust core) against the reference MMU (``tests/reference``) on
  random mixed read/write/fetch streams, scalar and batch: the same results
  and the same counters per level and per side;
- ITLB counts against an independent set-associative LRU model;
- ``SplitL1`` and the wrapper's per-side view;
- ``vmopt simulate`` on Lackey traces with ``I`` lines: the ITLB sees
  exactly the fetches (counted from the text, not by the reader), the DTLB
  exactly the data accesses, and a trace without fetches counts what a
  unified L1 of the DTLB's geometry counts;
- the text report and the JSON.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging.pagetable import PageTable as RefPageTable
from reference.tlb.mmu import Mmu as RefMmu
from tlb_state import mmu_state, outcome
from vmopt import ConfigError, Mmu, PageTable, PhysicalMemory, SplitL1, TlbConfig
from vmopt.cli.main import main
from vmopt.sim.report import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
LACKEY = ROOT / "tests" / "data" / "ls.lackey.gz"
PAGE = 4096
CODE = 0x40_0000  # 24 pages: even ones rwx, odd ones rx; the last four rw (a fetch faults)
DATA = 0x80_0000  # 16 pages rw
BIG = 0x4000_0000  # one 2 MiB page rwx
KINDS = "rwx"  # TraceChunk kinds 0, 1, 2


def guest(product: bool) -> tuple[Any, Any]:
    mem = (PhysicalMemory if product else RefMemory)(256 << 20)
    pt = (PageTable if product else RefPageTable)(mem, "x86_64")
    for i in range(24):
        perms = "rw" if i >= 20 else ("rwx" if i % 2 == 0 else "rx")
        pt.map(CODE + i * PAGE, mem.alloc(), PAGE, perms, user=True)
    for i in range(16):
        pt.map(DATA + i * PAGE, mem.alloc(), PAGE, "rw", user=True)
    pt.map(BIG, mem.alloc(2 << 20), 2 << 20, "rwx", user=True)
    return mem, pt


def hierarchy(layout: str, policy: str) -> list[Any]:
    itlb = [TlbConfig(4, 2, policy, (PAGE,), 1, seed=3), TlbConfig(2, 2, policy, (2 << 20,), 1, seed=4)]
    dtlb = TlbConfig(8, 2, policy, (PAGE, 2 << 20), 1, seed=5)
    l2 = TlbConfig(16, 4, policy, (PAGE, 2 << 20), 7, seed=6)
    if layout == "split_only":
        return [SplitL1(itlb, dtlb)]
    if layout == "unified":
        return [dtlb, l2]
    return [SplitL1(itlb, dtlb), l2]


addr_st = st.one_of(
    st.integers(0, 24 * PAGE - 1).map(lambda o: CODE + o),
    st.integers(0, 17 * PAGE - 1).map(lambda o: DATA + o),  # the 17th page is unmapped
    st.integers(0, (2 << 20) - 1).map(lambda o: BIG + o),
)
ops_st = st.lists(st.tuples(addr_st, st.sampled_from([0, 1, 2, 2, 2])), min_size=1, max_size=150)


@settings(max_examples=60, deadline=None)
@given(
    layout=st.sampled_from(["split", "split", "split_only", "unified"]),
    policy=st.sampled_from(["lru", "fifo", "random", "plru"]),
    ops=ops_st,
    batch=st.booleans(),
)
def test_mixed_streams_count_as_the_reference_per_level_and_side(
    layout: str, policy: str, ops: list[tuple[int, int]], batch: bool
) -> None:
    _, pt = guest(True)
    _, ref_pt = guest(False)
    mmu = Mmu(pt, hierarchy(layout, policy), pwc=True)
    ref = RefMmu(ref_pt, hierarchy(layout, policy), pwc=True)
    want = [outcome(lambda va=va, k=k: ref.translate(va, KINDS[k], True)) for va, k in ops]
    if batch:
        vas = np.array([va for va, _ in ops], dtype=np.uint64)
        kinds = np.array([k for _, k in ops], dtype=np.uint8)
        out = np.zeros(len(ops), dtype=np.uint64)
        got: list[Any] = []
        pos = 0
        while pos < len(ops):
            done, error = mmu.translate_kinds_into(vas[pos:], kinds[pos:], out[pos:], True)
            got += [("ok", int(pa)) for pa in out[pos : pos + done]]
            pos += done
            if error is not None:
                got.append(outcome(lambda e=error: (_ for _ in ()).throw(e)))
                pos += 1
    else:
        got = [outcome(lambda va=va, k=k: mmu.translate(va, KINDS[k], True)) for va, k in ops]
    assert got == want
    assert mmu_state(mmu) == mmu_state(ref)
    fetches = sum(1 for _, k in ops if k == 2)
    if mmu.split_l1:  # every access looks up its side's L1 once, faulting or not
        assert (mmu.itlb.stats.lookups, mmu.dtlb.stats.lookups) == (fetches, len(ops) - fetches)
    else:
        assert mmu.itlb is mmu.dtlb and mmu.dtlb.stats.lookups == len(ops)


class LruSet:
    """An independent set-associative LRU TLB of 4 KiB pages: misses of a page stream."""

    def __init__(self, entries: int, ways: int) -> None:
        self.sets = [OrderedDict[int, None]() for _ in range(entries // ways)]
        self.ways = ways
        self.misses = 0

    def access(self, page: int) -> None:
        s = self.sets[page % len(self.sets)]
        if page in s:
            s.move_to_end(page)
            return
        self.misses += 1
        if len(s) == self.ways:
            s.popitem(last=False)
        s[page] = None


def test_itlb_and_dtlb_misses_equal_an_independent_lru_model() -> None:
    _, pt = guest(True)
    rng = np.random.default_rng(7)
    pages = rng.integers(0, 20, 5000)
    kinds = rng.choice([0, 1, 2], 5000, p=[0.3, 0.1, 0.6]).astype(np.uint8)
    vas = np.where(kinds == 2, CODE + pages * PAGE, DATA + (pages % 16) * PAGE).astype(np.uint64)
    levels = [SplitL1(TlbConfig(8, 2), TlbConfig(4, 4)), TlbConfig(64, 4, latency=7)]
    mmu = Mmu(pt, levels)
    out = np.empty_like(vas)
    fetch_pages = (vas[kinds == 2] // PAGE).tolist()
    data_pages = (vas[kinds != 2] // PAGE).tolist()
    # Odd code pages are rx: reads of them never happen here, and fetches of every code page are allowed.
    assert mmu.translate_kinds_into(vas, kinds, out, True) == (5000, None)
    itlb, dtlb = LruSet(8, 2), LruSet(4, 4)
    for p in fetch_pages:
        itlb.access(p)
    for p in data_pages:
        dtlb.access(p)
    assert mmu.itlb.stats.misses == itlb.misses and mmu.itlb.stats.lookups == len(fetch_pages)
    assert mmu.dtlb.stats.misses == dtlb.misses and mmu.dtlb.stats.lookups == len(data_pages)
    assert mmu.levels[1].stats.lookups == itlb.misses + dtlb.misses  # both sides miss into the STLB
    assert mmu.stats.walks == 36  # each of the 20 code and 16 data pages walked once: the STLB holds all


def test_split_l1_config_and_the_wrappers_view() -> None:
    _, pt = guest(True)
    mmu = Mmu(pt, [SplitL1(TlbConfig(4, 2), [TlbConfig(4, 4), TlbConfig(2, 2, page_sizes=(2 << 20,))]),
                   TlbConfig(16, 4)])  # fmt: skip
    assert mmu.split_l1 and [lv.name for lv in mmu.all_levels()] == ["l1i", "l1d+l1d_2", "l2"]
    assert mmu.itlb is not mmu.dtlb and mmu.levels[0] is mmu.dtlb
    mmu.translate(CODE, "x", True)
    mmu.translate(CODE, "r", True)  # misses the DTLB, hits the STLB: fills the DTLB only
    mmu.translate(CODE, "x", True)
    assert [(s.lookups, s.hits) for s in mmu.tlb_stats()] == [(2, 1), (1, 0), (2, 1)]
    assert mmu.total_stats().misses == mmu.stats.walks == 1
    mmu.invlpg(CODE)  # reaches both L1s
    assert not mmu.cached(CODE) and len(mmu.itlb) == len(mmu.dtlb) == 0
    with pytest.raises(ConfigError, match="only the first TLB level can be a SplitL1"):
        Mmu(pt, [TlbConfig(4, 4), SplitL1(TlbConfig(4, 4), TlbConfig(4, 4))])
    with pytest.raises(ConfigError, match=r"SplitL1\.itlb must be a TlbConfig"):
        SplitL1([], TlbConfig(4, 4))
    with pytest.raises(ConfigError, match=r"SplitL1\.dtlb must be a TlbConfig"):
        SplitL1(TlbConfig(4, 4), "l1d")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="names must be distinct"):
        Mmu(pt, [SplitL1(TlbConfig(4, 4, name="x"), TlbConfig(4, 4, name="x"))])
    alone = Mmu(pt, [SplitL1(TlbConfig(4, 4), TlbConfig(4, 4))])  # no STLB: walks = both L1s' misses
    alone.translate(CODE, "x", True)
    alone.translate(DATA, "w", True)
    assert alone.total_stats().misses == alone.stats.walks == 2
    unified = Mmu(pt, TlbConfig(4, 4))
    assert not unified.split_l1 and unified.itlb is unified.dtlb and unified.all_levels() == unified.levels


# -- vmopt simulate --------------------------------------------------------------------------------


def lackey_counts(path: Path) -> dict[str, int]:
    """Lackey records counted from the text (independently of the trace reader)."""
    counts = {"I": 0, "L": 0, "S": 0, "M": 0}
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
        for line in fh:
            m = re.match(r"^(I| L| S| M) +[0-9a-fA-F]+,\d+$", line.rstrip("\n"))
            if m:
                counts[m.group(1).strip()] += 1
    return counts


def run_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    assert main(["simulate", *args, "--no-progress", "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_a_lackey_trace_sends_its_fetches_to_the_itlb(tmp_path: Path) -> None:
    counts = lackey_counts(LACKEY)
    assert counts["I"] > 0 and counts["L"] + counts["S"] + counts["M"] > 0
    r = run_json(tmp_path, str(LACKEY))
    tlb = r["tlb"]
    assert tlb["l1i"]["lookups"] == counts["I"] == r["kinds"]["fetch"]
    assert tlb["l1d"]["lookups"] == counts["L"] + counts["S"] + counts["M"]
    assert tlb["l2"]["lookups"] == tlb["l1i"]["misses"] + tlb["l1d"]["misses"]
    assert r["page_walks"] == tlb["l2"]["misses"] and r["faults"]["other"] == 0  # no fetch faults on rights


def test_a_trace_of_only_fetches_leaves_the_dtlb_unused(tmp_path: Path) -> None:
    fetches = tmp_path / "i.lackey"
    with gzip.open(LACKEY, "rt") as src:
        fetches.write_text("".join(line for line in src if line.startswith(("==", "I "))))
    n = lackey_counts(fetches)["I"]
    r = run_json(tmp_path, str(fetches))
    assert r["accesses"] == n and r["tlb"]["l1i"]["lookups"] == n
    assert r["tlb"]["l1d"]["lookups"] == 0 and r["tlb"]["l1d"]["misses"] == 0


def test_a_trace_without_fetches_counts_as_a_unified_l1_of_the_dtlbs_geometry(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pages = rng.zipf(1.3, 30000) % 600
    lines = [
        f"{'RW'[w]} {0x7F00_0000_0000 + p * PAGE + 8:x}\n"
        for p, w in zip(pages.tolist(), (rng.random(30000) < 0.3).tolist(), strict=True)
    ]
    trace = tmp_path / "data.txt"
    trace.write_text("".join(lines))
    split = run_json(tmp_path, str(trace))
    unified = tmp_path / "unified.toml"
    raw = split["config"]["tlb"]
    # The DTLB's arrays as a unified [tlb.l1], the same STLB.
    dtlb = {k: v for k, v in raw["l1d"].items()}
    body = ["[tlb.l1]"] + [f"{k} = {json.dumps(v)}" for k, v in dtlb.items() if not isinstance(v, dict)]
    for sub, arr in ((k, v) for k, v in dtlb.items() if isinstance(v, dict)):
        body += [f"[tlb.l1.{sub}]", *(f"{k} = {json.dumps(v)}" for k, v in arr.items())]
    l2 = raw["l2"]
    body += ["[tlb.l2]"] + [f"{k} = {json.dumps(v)}" for k, v in l2.items() if not isinstance(v, dict)]
    for sub, arr in ((k, v) for k, v in l2.items() if isinstance(v, dict)):
        body += [f"[tlb.l2.{sub}]", *(f"{k} = {json.dumps(v)}" for k, v in arr.items())]
    unified.write_text("\n".join(body) + "\n")
    one = run_json(tmp_path, str(trace), "--config", str(unified))
    assert list(one["tlb"]) == ["l1", "l2"] and one["tlb"]["l1"]["side"] == "shared"
    assert split["tlb"]["l1i"]["lookups"] == 0
    keys = ("lookups", "hits", "misses", "evictions")
    assert {k: split["tlb"]["l1d"][k] for k in keys} == {k: one["tlb"]["l1"][k] for k in keys}
    assert split["tlb"]["l2"] == one["tlb"]["l2"] and split["page_walks"] == one["page_walks"]
    assert split["tlb"]["l1d"]["misses"] > 0 and split["tlb"]["l2"]["misses"] > 0


def test_report_and_json_show_each_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_json(tmp_path, str(LACKEY))
    text = capsys.readouterr().out
    assert r["schema_version"] == SCHEMA_VERSION == 2
    rows = {m.group(1): m.group(0) for m in re.finditer(r"│ (l1i|l1d|l2) .*│", text)}
    for name, serves in (("l1i", "fetches"), ("l1d", "data"), ("l2", "all")):
        lv = r["tlb"][name]
        cells = [c.strip() for c in rows[name].strip("│").split("│")]
        assert cells[:5] == [name, serves, f"{lv['lookups']:,}", f"{lv['hits']:,}", f"{lv['misses']:,}"]
        assert cells[-1] == f"{100 * lv['miss_rate']:.2f}%"
        assert lv["miss_rate"] == lv["misses"] / lv["lookups"]
        assert lv["arrays"][0] == name
    assert [lv["side"] for lv in r["tlb"].values()] == ["inst", "data", "shared"]
    assert sum(r["windows"]["l1_misses"]) == r["tlb"]["l1i"]["misses"] + r["tlb"]["l1d"]["misses"]
