"""Prometheus metrics: scraped over HTTP on loopback mid-run and at the end, checked against the JSON report.

The mid-run scrape happens while the simulation thread waits in the
driver's chunk hook (events, not timing); the report's per-window series
say what the counters must have been at that point.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vmopt import ConcurrencyConfig, LatencyStore, MemoryOptimizer, NumaConfig
from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.metrics import (
    FETCH_LATENCY_BUCKETS,
    FetchMetrics,
    GuestCollector,
    SweepCollector,
    instrument,
    serve,
)
from vmopt.sim.config import load_config
from vmopt.sim.driver import Simulator
from vmopt.sim.run import Input, MetricsObserver, simulate
from vmopt.sim.sweep import run_sweep, write_results
from vmopt.units import parse_size

WAIT = 60.0  # bound on every event wait (the run itself takes well under a second)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """Every sample of the endpoint by (name, sorted labels), and each family's type."""
    with urllib.request.urlopen(url, timeout=WAIT) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of ``name``'s samples whose labels include ``match``."""
    return sum(v for (n, labels), v in samples.items() if n == name and match.items() <= dict(labels).items())


class PauseAt(MetricsObserver):
    """Attach the collector, then hold the simulation thread after chunk ``at`` until released."""

    def __init__(self, collector: GuestCollector, at: int) -> None:
        super().__init__(collector)
        self.at = at
        self.chunks = 0
        self.paused = threading.Event()
        self.go = threading.Event()

    def chunk_done(self, sim: Simulator) -> None:
        self.chunks += 1
        if self.chunks == self.at:
            self.paused.set()
            assert self.go.wait(WAIT), "the test never released the run"


@pytest.fixture
def endpoint() -> Iterator[tuple[GuestCollector, str]]:
    collector = GuestCollector()
    server = serve(0, [collector])
    try:
        yield collector, server.url
    finally:
        server.close()


def test_scrapes_mid_run_and_at_the_end_match_the_report(endpoint: tuple[GuestCollector, str]) -> None:
    collector, url = endpoint
    config = load_config(None, ['prefetch.kind="next_page"', "numa.nodes=2"])
    inp = Input(workload="numa_mix", params={"cpus": 2, "footprint": 4 << 20, "length": 300_000, "seed": 3})
    observer = PauseAt(collector, at=2)
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.update(report=simulate(config, inp, observer=observer)))
    runner.start()
    try:
        assert observer.paused.wait(WAIT)
        mid, types = scrape(url)
    finally:
        observer.go.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    report = out["report"]
    end, _ = scrape(url)

    # Mid-run: the counters after two chunks are the report's first two windows.
    w = report["windows"]
    assert len(w["accesses"]) >= 4  # so the pause really was mid-run
    # The L1 the workload's reads and writes go through (a split L1's DTLB; it has no fetches).
    first_level = "l1d" if "l1d" in report["tlb"] else next(iter(report["tlb"]))
    assert total(mid, "vmopt_tlb_lookups_total", level=first_level) == sum(w["accesses"][:2])
    assert total(mid, "vmopt_tlb_misses_total", level=first_level) == sum(w["l1_misses"][:2])
    assert total(mid, "vmopt_page_walks_total") == sum(w["page_walks"][:2])
    for n in range(2):
        local = sum(x[n] for x in w["local_accesses"][:2])
        remote = sum(x[n] for x in w["remote_accesses"][:2])
        assert total(mid, "vmopt_numa_accesses_total", node=str(n), locality="local") == local
        assert total(mid, "vmopt_numa_accesses_total", node=str(n), locality="remote") == remote
    assert total(mid, "vmopt_tlb_lookups_total", level=first_level) < report["accesses"]

    # The end: every exported counter against the JSON report.
    for level, lv in report["tlb"].items():
        for field in ("lookups", "hits", "misses", "evictions"):
            assert total(end, f"vmopt_tlb_{field}_total", level=level) == lv[field], (level, field)
    assert {dict(k[1])["cpu"] for k in end if k[0] == "vmopt_tlb_lookups_total"} == {"0", "1"}
    assert total(end, "vmopt_page_walks_total") == report["page_walks"]
    assert total(end, "vmopt_page_walk_memory_refs_total") == report["walk_memory_refs"]
    assert total(end, "vmopt_page_faults_total", cause="demand") == report["faults"]["demand"]
    assert total(end, "vmopt_page_faults_total", cause="other") == report["faults"]["other"]
    for field in ("issued", "useful", "useless"):
        assert total(end, f"vmopt_prefetches_{field}_total") == report["prefetch"][field]
    assert report["prefetch"]["issued"] > 0
    page = parse_size(report["config"]["paging"]["page_size"])
    for node in report["numa"]["nodes"]:
        n = str(node["node"])
        assert total(end, "vmopt_numa_resident_bytes", node=n) == node["pages"] * page
        assert total(end, "vmopt_numa_used_bytes", node=n) == node["used_bytes"]
        assert total(end, "vmopt_numa_size_bytes", node=n) == node["size_bytes"]
        assert total(end, "vmopt_numa_accesses_total", node=n, locality="local") == node["local_accesses"]
        assert total(end, "vmopt_numa_accesses_total", node=n, locality="remote") == node["remote_accesses"]

    # Conventions: the prefix, _total on counters, base units.
    assert all(name.startswith("vmopt_") for name in types)
    counters = [name for name, kind in types.items() if kind == "counter"]
    assert len(counters) >= 10
    for (sample, _), _v in end.items():
        family = next(n for n in types if sample == n or sample.startswith(n + "_"))
        if family in counters:
            assert sample == f"{family}_total", sample
    assert types["vmopt_fetch_latency_seconds"] == "histogram"
    assert types["vmopt_fetches_in_flight"] == "gauge"


def test_fetch_metrics_latency_histogram_and_errors_by_kind() -> None:
    """Sequential faults through an instrumented store, timed by a clock the test drives."""
    store = LatencyStore(0.0, fail_rate=0.3, seed=5, num_pages=64)
    # Each fetch reads the clock twice (start, end): fetch k lasts durations[k].
    durations = [FETCH_LATENCY_BUCKETS[k % 5] * 0.9 for k in range(64)]
    ticks = iter(t for d in durations for t in (0.0, d))
    metrics = FetchMetrics(clock=lambda: next(ticks))
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20))
    va = opt.allocate(64 * 4096, store=instrument(store, metrics))
    res = opt.batch_access([va + p * 4096 for p in range(64)], errors="collect")
    failing = [p for p in range(64) if store.will_fail(p)]
    assert 0 < len(failing) < 64 and res.total - res.success == len(failing)

    samples = {}
    for family in GuestCollector(opt, metrics).collect():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert total(samples, "vmopt_store_errors_total", kind="StoreError") == len(failing)
    assert total(samples, "vmopt_fetch_latency_seconds_count") == 64
    assert total(samples, "vmopt_fetch_latency_seconds_sum") == pytest.approx(sum(durations))
    for k, bound in enumerate(FETCH_LATENCY_BUCKETS[:5]):
        want = sum(1 for d in durations if d <= bound)
        assert total(samples, "vmopt_fetch_latency_seconds_bucket", le=str(bound)) == want, k
    assert total(samples, "vmopt_page_faults_total", cause="demand") == 64 - len(failing)
    assert total(samples, "vmopt_fetches_in_flight") == 0


def test_fetches_in_flight_while_a_batch_waits() -> None:
    metrics = FetchMetrics()
    collector = GuestCollector(fetch=metrics)

    async def run() -> float:
        release = asyncio.Event()

        async def held(_: float) -> None:
            await release.wait()

        store = LatencyStore(0.001, async_sleep=held)
        opt = MemoryOptimizer(NumaConfig(1, 16 << 20), concurrency=ConcurrencyConfig(max_concurrent=6))
        collector.attach(opt)
        va = opt.allocate(40 * 4096, store=instrument(store, metrics))
        task = asyncio.ensure_future(opt.batch_access_concurrent([va + p * 4096 for p in range(40)]))
        for _ in range(1000):
            if metrics.snapshot()[0] == 6:
                break
            await asyncio.sleep(0)
        during = [
            s.value for f in collector.collect() if f.name == "vmopt_fetches_in_flight" for s in f.samples
        ]
        release.set()
        await task
        return during[0]

    assert asyncio.run(run()) == 6
    assert metrics.snapshot()[0] == 0


def test_bad_ports_and_arguments() -> None:
    with pytest.raises(ConfigError, match="metrics-port"):
        serve(70000, [])
    with pytest.raises(ConfigError, match="MemoryOptimizer"):
        GuestCollector("guest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="buckets"):
        FetchMetrics([0.2, 0.1])


def test_cli_simulate_serves_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    argv = ["simulate", "--workload", "sequential", "--length", "5000", "--metrics-port", "0",
            "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert re.search(r"serving metrics on http://127\.0\.0\.1:\d+/metrics", capsys.readouterr().err)
    assert json.loads(out.read_text())["accesses"] == 5000


def test_cli_port_in_use_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    collector = GuestCollector()
    server = serve(0, [collector])
    try:
        argv = ["simulate", "--workload", "sequential", "--length", "100", "--metrics-port", str(server.port)]
        assert main(argv) == 2
        assert "--metrics-port" in capsys.readouterr().err
    finally:
        server.close()


def test_sweep_metrics_after_each_point_and_at_the_end(tmp_path: Path) -> None:
    """Scraped from the result callback (a known point: n points finished), then against sweep.json."""
    grid = [("tlb.l1d.entries", [48, 192]), ("prefetch.kind", ["none", "next_page"])]
    collector = SweepCollector(4)
    server = serve(0, [collector])
    seen: list[Samples] = []

    def on_result(result: dict[str, Any]) -> None:
        collector.point_done(result)
        seen.append(scrape(server.url)[0])

    try:
        inp = Input(workload="strided", params={"length": 4000})
        outcome = run_sweep(grid, [inp], workers=1, on_result=on_result)
        end, _ = scrape(server.url)
    finally:
        server.close()
    assert [total(m, "vmopt_sweep_points", state="finished") for m in seen] == [1, 2, 3, 4]
    assert [total(m, "vmopt_sweep_points", state="pending") for m in seen] == [3, 2, 1, 0]
    write_results(outcome, [k for k, _ in grid], tmp_path)
    doc = json.loads((tmp_path / "sweep.json").read_text())
    for run in doc["runs"]:
        point = ",".join(f"{k}={v}" for k, v in run["params"].items())
        rep = run["report"]
        assert total(end, "vmopt_sweep_point_accesses_total", point=point) == rep["accesses"]
        assert total(end, "vmopt_sweep_point_page_walks_total", point=point) == rep["page_walks"]
        for level, lv in rep["tlb"].items():
            got = total(end, "vmopt_sweep_point_tlb_misses_total", point=point, level=level)
            assert got == lv["misses"]


def test_store_faults_resolved_by_the_guest_are_demand_not_other() -> None:
    store = LatencyStore(0.0, num_pages=32)
    opt = MemoryOptimizer(NumaConfig(1, 16 << 20), concurrency=ConcurrencyConfig(max_concurrent=4))
    va = opt.allocate(32 * 4096, store=store)
    addrs = [va + p * 4096 for p in range(32)] + [1 << 62]
    asyncio.run(opt.batch_access_concurrent(addrs, errors="collect"))
    samples = {}
    for family in GuestCollector(opt).collect():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert total(samples, "vmopt_page_faults_total", cause="demand") == 32
    assert total(samples, "vmopt_page_faults_total", cause="other") == 1  # the non-canonical address
