"""`vmopt simulate`: inputs, formats, options, errors, report consistency, JSON and plots."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from vmopt.cli.main import main
from vmopt.errors import PageFault
from vmopt.sim.config import load_config
from vmopt.sim.driver import MAX_WINDOWS, Simulator, Windows
from vmopt.sim.run import Input, simulate
from vmopt.tlb import DEFAULT_SPLIT_TLB_LEVELS
from vmopt.traces import WORKLOADS, TraceChunk, make_workload

ROOT = Path(__file__).resolve().parent.parent
LACKEY = ROOT / "tests" / "data" / "ls.lackey.gz"
BASE = 0x7F00_0000_0000
TEXT = "R 7f0000001000\nW 0x7f0000002008\n0x7f0000001010\nX 7f0000400000\nL 7f0000001000\nS 7f0000003000\n"


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def run_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    assert main(["simulate", *args, "--no-progress", "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    check_consistent(report)
    return report


def first_level(r: dict[str, Any]) -> dict[str, int]:
    """The L1's counts: the unified L1's, or the ITLB's and DTLB's summed."""
    tlb = r["tlb"]
    sides = [tlb["l1i"], tlb["l1d"]] if "l1i" in tlb else [tlb["l1"]]
    return {k: sum(lv[k] for lv in sides) for k in ("lookups", "hits", "misses")}


def check_consistent(r: dict[str, Any]) -> None:
    tlb = r["tlb"]
    for lv in tlb.values():
        assert lv["hits"] + lv["misses"] == lv["lookups"]
        assert lv["miss_rate"] == (lv["misses"] / lv["lookups"] if lv["lookups"] else 0.0)
    if "l1i" in tlb:  # a split L1: fetches look up the ITLB, reads and writes the DTLB
        assert tlb["l1i"]["side"] == "inst" and tlb["l1d"]["side"] == "data" and "l1" not in tlb
        assert tlb["l1i"]["lookups"] == r["kinds"]["fetch"]
        assert tlb["l1d"]["lookups"] == r["kinds"]["read"] + r["kinds"]["write"]
    levels = [first_level(r), *(lv for name, lv in tlb.items() if name not in ("l1", "l1i", "l1d"))]
    assert levels[0]["lookups"] == r["accesses"]
    for upper, lower in itertools.pairwise(levels):
        assert lower["lookups"] == upper["misses"]
    assert r["page_walks"] == levels[-1]["misses"]
    assert sum(r["kinds"].values()) == r["accesses"] == sum(r["windows"]["accesses"])
    nodes = r["numa"]["nodes"]
    served = sum(n["local_accesses"] + n["remote_accesses"] for n in nodes)
    assert served == r["accesses"] - r["faults"]["failed_accesses"]
    w = r["windows"]
    assert sum(w["page_walks"]) == r["page_walks"] and sum(w["l1_misses"]) == levels[0]["misses"]
    for key in ("local_accesses", "remote_accesses"):
        assert [sum(col) for col in zip(*w[key], strict=True)] == [n[key] for n in nodes]


def sim(tmp_path: Path, args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "simulate", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )


def test_default_workload_report_and_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_json(tmp_path, "--length", "40000")
    out = capsys.readouterr().out
    words_list = ["TLB hierarchy", "hit rate", "page walks", "walk memory refs", "demand faults"]
    words_list += ["prefetch issued", "NUMA", "remote accesses", "cycles per access", "accesses/s"]
    for words in words_list:
        assert words in out
    assert r["schema_version"] == 2
    for key in (
        "accesses",
        "tlb",
        "page_walks",
        "walk_memory_refs",
        "prefetch",
        "numa",
        "config",
        "elapsed_s",
    ):
        assert key in r
    assert list(r["tlb"]) == ["l1i", "l1d", "l2"]  # the default L1 is split
    assert [lv["side"] for lv in r["tlb"].values()] == ["inst", "data", "shared"]
    assert r["tlb"]["l1i"]["lookups"] == 0 and r["kinds"]["fetch"] == 0  # the workload fetches nothing
    for lv in r["tlb"].values():
        assert {"lookups", "hits", "misses", "evictions"} <= set(lv)
    assert {"issued", "useful", "useless"} <= set(r["prefetch"])
    assert r["accesses"] == 40000 and r["cpus"] == 2
    nodes = r["numa"]["nodes"]
    assert len(nodes) == 2 and all(n["pages"] > 0 for n in nodes)
    assert sum(n["remote_accesses"] for n in nodes) > 0  # the shared region is remote for one vCPU
    assert r["config"]["tlb"]["l1d"]["entries"] == DEFAULT_SPLIT_TLB_LEVELS[0].dtlb[0].entries
    assert r["source"]["name"] == "numa_mix" and r["faults"]["demand"] > 0
    assert 0 < r["tlb"]["l2"]["hit_rate"] < 1 and r["cycles"]["per_access"] > 0


def test_lackey_fixture(tmp_path: Path) -> None:
    r = run_json(tmp_path, str(LACKEY))
    assert r["source"]["format"] == "lackey" and r["source"]["compression"] == "gzip"
    assert r["accesses"] == 400 and r["kinds"]["fetch"] > 0 and r["kinds"]["write"] > 0


def test_text_trace_kinds(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text(TEXT)
    r = run_json(tmp_path, str(p))
    assert r["source"]["format"] == "text"
    assert r["kinds"] == {"read": 3, "write": 2, "fetch": 1}
    assert r["faults"]["demand"] == 4  # four distinct 4 KiB pages
    # Data: 7f..1000 (miss) 2008 (miss) 1010 (hit) 1000 (hit) 3000 (miss); the fetch misses its ITLB.
    assert (r["tlb"]["l1d"]["hits"], r["tlb"]["l1i"]["lookups"], r["tlb"]["l1i"]["hits"]) == (2, 1, 0)


@pytest.mark.parametrize("fmt", ["npy", "raw"])
def test_binary_formats(tmp_path: Path, fmt: str) -> None:
    addrs = np.array([BASE + 4096 * (i % 10) for i in range(100)], dtype=np.uint64)
    if fmt == "npy":
        p = tmp_path / "t.npy"
        np.save(p, addrs)
    else:
        p = tmp_path / "t.bin"
        p.write_bytes(addrs.astype("<u8").tobytes())
    r = run_json(tmp_path, str(p))
    assert r["source"]["format"] == fmt and r["accesses"] == 100 and r["faults"]["demand"] == 10


@pytest.mark.parametrize("comp", ["gz", "xz", "zst"])
def test_compressed(tmp_path: Path, comp: str) -> None:
    data = TEXT.encode()
    packed = {"gz": gzip.compress, "xz": lzma.compress, "zst": zstandard.ZstdCompressor().compress}[comp](
        data
    )
    p = tmp_path / f"t.txt.{comp}"
    p.write_bytes(packed)
    r = run_json(tmp_path, str(p))
    assert (
        r["accesses"] == 6 and r["source"]["compression"] == {"gz": "gzip", "xz": "xz", "zst": "zstd"}[comp]
    )


def test_forced_format(tmp_path: Path) -> None:
    p = tmp_path / "addresses.dat"
    p.write_text("7f0000001000\n7f0000002000\n")
    r = run_json(tmp_path, str(p), "--format", "text")
    assert r["source"]["format"] == "text" and r["accesses"] == 2


def test_stdin_and_no_progress_on_a_pipe(tmp_path: Path) -> None:
    p = sim(tmp_path, ["-", "--json", "r.json"], stdin=TEXT.encode())
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # no progress bar on a pipe
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["source"]["name"] == "<stdin>" and r["accesses"] == 6


def test_progress_bar_runs(tmp_path: Path) -> None:
    from vmopt.sim.progress import progress_bar

    buf = io.StringIO()
    with progress_bar(None, {"params": {"length": 10}}, buf) as advance:
        advance(5)
        advance(5)
    cfg = load_config()
    report = simulate(cfg, Input(workload="sequential", params={"length": 1000}), progress=True)
    assert report["accesses"] == 1000


def test_malformed_line_names_file_line_and_content(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_text("7f0000001000\n7f0000002000\nzz-not-an-address\n")
    res = sim(tmp_path, [str(p)])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "bad.txt:3" in res.stderr and "zz-not-an-address" in res.stderr
    r = run_json(tmp_path, str(p), "--skip-bad")
    assert r["accesses"] == 2 and r["source"]["bad_records"] == 1


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.txt"], "missing.txt"),
        ("empty", ["empty.txt"], "empty trace"),
        ("bin", ["junk.npy"], "not a .npy file"),
        (None, ["x.txt", "--format", "elf"], "invalid choice"),
        (None, ["--workload", "nope"], "invalid choice"),
        (None, ["--workload", "zipf", "--param", "bogus=1"], "bogus"),
        (None, ["--workload", "zipf", "--param", "alpha=-1"], "alpha"),
        (None, ["--param", "novalue"], "expected key=value"),
        ("empty", ["empty.txt", "--workload", "zipf"], "not to a TRACE"),
        (None, ["--set", "tlb.l1d.ways=5"], "tlb.l1d.ways"),
        (None, ["--workload", "numa_mix", "--param", "cpus=3", "--param", "burst=1", "--length", "100",
                "--set", "numa.cpus=2"], "numa.cpus"),
    ],
)  # fmt: skip
def test_errors_exit_2_without_traceback(
    tmp_path: Path, setup: str | None, args: list[str], message: str
) -> None:
    if setup == "empty":
        (tmp_path / "empty.txt").write_text("")
    if setup == "bin":
        (tmp_path / "junk.npy").write_bytes(b"\x00\x01garbage")
    res = sim(tmp_path, args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_unreadable_file(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    res = sim(tmp_path, [str(d)])
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_non_canonical_addresses_count_as_faults(tmp_path: Path) -> None:
    p = tmp_path / "nc.txt"
    p.write_text("0x800000000000\n7f0000001000\n0xffff800000000000\n0x1234000000000000\n")
    r = run_json(tmp_path, str(p))
    assert r["accesses"] == 4 and r["faults"]["failed_accesses"] == 2 and r["faults"]["other"] == 2
    assert r["faults"]["demand"] == 2  # the canonical kernel-half address is mapped too


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_with_params_and_seed(tmp_path: Path, name: str) -> None:
    params = {"matmul": ["n=16", "tile=4"], "numa_mix": ["cpus=2", "footprint=1M"]}.get(
        name, ["footprint=1M"]
    )
    args = [
        "--workload",
        name,
        "--seed",
        "3",
        "--length",
        "3000",
        *(a for p in params for a in ("--param", p)),
    ]
    a = run_json(tmp_path, *args)
    b = run_json(tmp_path, *args)
    assert a["accesses"] == 3000
    assert a["tlb"] == b["tlb"] and a["numa"] == b["numa"]  # deterministic with --seed
    assert a["source"]["params"]["seed"] == 3


def test_huge_pages_and_prefetch_and_policy(tmp_path: Path) -> None:
    base = [
        "--workload",
        "sequential",
        "--length",
        "20000",
        "--param",
        "footprint=8M",
        "--param",
        "elem_size=512",
    ]
    small = run_json(tmp_path, *base)
    huge = run_json(tmp_path, *base, "--set", 'paging.page_size="2M"')
    assert huge["faults"]["demand"] == 4 and small["faults"]["demand"] == 2048  # 8 MiB of 4 KiB pages
    assert huge["page_walks"] < small["page_walks"]
    pf = run_json(tmp_path, *base, "--set", "prefetch.kind=next_page", "--set", "prefetch.degree=2")
    assert pf["prefetch"]["issued"] > 0 and pf["prefetch"]["useful"] > 0
    assert pf["page_walks"] < small["page_walks"]
    inter = run_json(tmp_path, *base, "--set", "numa.policy=interleave:0,1")
    assert all(n["pages"] > 0 for n in inter["numa"]["nodes"])
    assert inter["numa"]["nodes"][1]["remote_accesses"] > 0


def test_config_file_and_riscv(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[paging]\nformat = "sv39"\n[tlb.l1]\nentries = 32\nways = 32\n[pwc]\nenabled = false\n')
    r = run_json(tmp_path, "--config", str(cfg), "--workload", "uniform", "--length", "5000",
                 "--param", "base=0x10000000", "--param", "footprint=1M")  # fmt: skip
    assert list(r["tlb"]) == ["l1"] and r["config"]["paging"]["format"] == "sv39"
    assert r["pwc"]["lookups"] == 0 and r["walk_memory_refs"] == 3 * r["page_walks"]
    # the default workload base is above Sv39's 39-bit space: every access faults, none crashes
    r = run_json(tmp_path, "--config", str(cfg), "--workload", "uniform", "--length", "100")
    assert r["faults"]["failed_accesses"] == 100


def test_plots(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    run_json(tmp_path, "--length", "20000", "--plot", str(out))
    for name in ("miss_rate.png", "hit_rates.png", "numa_traffic.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_windows_stay_bounded() -> None:
    w = Windows()
    for i in range(3 * MAX_WINDOWS):
        w.add(10, 1, i % 2, [1, 2], [0, 1])
    assert len(w.accesses) <= MAX_WINDOWS
    assert sum(w.accesses) == 30 * MAX_WINDOWS and sum(w.l1_misses) == 3 * MAX_WINDOWS
    assert sum(x[1] for x in w.local) == 6 * MAX_WINDOWS


@pytest.mark.parametrize(
    "sets",
    [
        ["prefetch.kind=stride", "numa.policy=interleave:0,1"],
        ["paging.page_size=2M", "pwc.enabled=true", "prefetch.kind=next_page"],
    ],
)
def test_driver_matches_scalar_translation(sets: list[str]) -> None:
    """The chunked, per-vCPU driver gives the counters of the guest's translate() in trace order."""
    cfg = load_config(sets=sets)
    chunks = list(make_workload("numa_mix", length=6000, footprint=1 << 20, cpus=2, seed=1, chunk_size=1000))
    chunks.append(TraceChunk(np.array([1 << 63, 0x1000], dtype=np.uint64), np.zeros(2, np.uint8),
                                      np.array([1, 0], dtype=np.uint16)))  # fmt: skip
    fast = Simulator(cfg, 2)
    fast.run(iter(chunks))
    slow = Simulator(cfg, 2)
    failed = 0
    for chunk in chunks:
        slow.opt.prefault(chunk.addrs, chunk.cpus)
        for va, cpu in zip(chunk.addrs.tolist(), chunk.cpus.tolist(), strict=True):
            try:
                slow.opt.translate(va, "r", cpu)
            except PageFault:
                failed += 1
    assert failed == fast.failed == 1  # the non-canonical access
    for a, b in zip(fast.opt.mmus, slow.opt.mmus, strict=True):
        assert [lv.stats for lv in a.levels] == [lv.stats for lv in b.levels]
        assert a.stats == b.stats
    assert fast.local == slow.local and fast.remote == slow.remote
    assert sum(fast.local) + sum(fast.remote) == fast.accesses - fast.failed
    assert len(fast.windows.accesses) == len(chunks)
    assert [sum(col) for col in zip(*fast.windows.local, strict=True)] == fast.local
    assert [sum(col) for col in zip(*fast.windows.remote, strict=True)] == fast.remote
    assert [s.pages for s in fast.opt.node_stats()] == [s.pages for s in slow.opt.node_stats()]
    assert sum(fast.pages) == fast.demand_faults == slow.opt.anonymous_pages
