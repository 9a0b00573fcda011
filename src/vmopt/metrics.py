"""Prometheus metrics of a :class:`~vmopt.MemoryOptimizer`, read live at every scrape.

:class:`GuestCollector` is a ``prometheus_client`` custom collector: it holds
no copies, and each scrape reads the guest's counters (per vCPU and TLB
level, per NUMA node) as they are at that moment. Store fetches are
measured by :class:`FetchMetrics`, fed by stores wrapped with
:func:`instrument`. :func:`serve` starts the HTTP endpoint ``vmopt simulate
--metrics-port`` and ``vmopt sweep --metrics-port`` use.

Names follow the Prometheus conventions: a ``vmopt_`` prefix, ``_total`` on
counters, base units (seconds, bytes). The list is in docs/metrics.md.
``prometheus_client`` is a dependency of vmopt (it is small and pure Python).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from vmopt.errors import ConfigError, VmoptError
from vmopt.guest import MemoryOptimizer
from vmopt.stores.base import BackingStore

__all__ = [
    "FETCH_LATENCY_BUCKETS",
    "FetchMetrics",
    "GuestCollector",
    "InstrumentedStore",
    "MetricsServer",
    "SweepCollector",
    "instrument",
    "serve",
]

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the fetch-latency histogram's buckets: 50 us to 1 s.
FETCH_LATENCY_BUCKETS: tuple[float, ...] = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0,
)  # fmt: skip


class FetchMetrics:
    """Store fetches: in flight now, a latency histogram, and errors by kind. Thread-safe.

    ``clock`` (monotonic seconds) times fetches; tests pass their own.
    """

    def __init__(
        self,
        buckets: Sequence[float] = FETCH_LATENCY_BUCKETS,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        bounds = list(buckets)
        if not bounds or any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise ConfigError(f"buckets must be increasing positive seconds, got {buckets!r}")
        self.buckets = tuple(bounds)
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self._sum = 0.0
        self._in_flight = 0
        self._errors: dict[str, int] = {}

    def started(self) -> float:
        """Count a fetch as in flight; returns its start time for :meth:`finished`."""
        with self._lock:
            self._in_flight += 1
        return self._clock()

    def finished(self, t0: float, error: BaseException | None = None) -> None:
        """A fetch started at ``t0`` ended (with ``error``, if it failed)."""
        elapsed = self._clock() - t0
        with self._lock:
            self._in_flight -= 1
            self._counts[bisect.bisect_left(self.buckets, elapsed)] += 1
            self._sum += elapsed
            if error is not None:
                kind = error_kind(error)
                self._errors[kind] = self._errors.get(kind, 0) + 1

    def snapshot(self) -> tuple[int, list[int], float, dict[str, int]]:
        """``(in_flight, per-bucket counts (+Inf last), latency sum, errors by kind)``."""
        with self._lock:
            return self._in_flight, list(self._counts), self._sum, dict(self._errors)


def error_kind(error: BaseException) -> str:
    """The ``kind`` label of a store error: an NBD error's code (``EIO``), else the class name."""
    code = getattr(error, "code", None)
    return code if isinstance(code, str) else type(error).__name__


class InstrumentedStore:
    """A :class:`~vmopt.stores.BackingStore` that reports every fetch of ``store`` to ``metrics``."""

    def __init__(self, store: BackingStore, metrics: FetchMetrics) -> None:
        if not isinstance(store, BackingStore):
            raise ConfigError(f"store must be a BackingStore, got {store!r}")
        if not isinstance(metrics, FetchMetrics):
            raise ConfigError(f"metrics must be a FetchMetrics, got {metrics!r}")
        self.store = store
        self.metrics = metrics

    @property
    def page_size(self) -> int:
        """The wrapped store's page size."""
        return self.store.page_size

    @property
    def num_pages(self) -> int | None:
        """The wrapped store's page count."""
        return self.store.num_pages

    async def fetch(self, page_index: int) -> bytes:
        """The wrapped store's fetch, timed."""
        t0 = self.metrics.started()
        try:
            data = await self.store.fetch(page_index)
        except VmoptError as exc:
            self.metrics.finished(t0, exc)
            raise
        except BaseException:  # cancelled: it did not fail, but it is no longer in flight
            self.metrics.finished(t0)
            raise
        self.metrics.finished(t0)
        return data

    def fetch_sync(self, page_index: int) -> bytes:
        """The wrapped store's fetch_sync, timed."""
        t0 = self.metrics.started()
        try:
            data = self.store.fetch_sync(page_index)
        except VmoptError as exc:
            self.metrics.finished(t0, exc)
            raise
        except BaseException:
            self.metrics.finished(t0)
            raise
        self.metrics.finished(t0)
        return data

    def close(self) -> None:
        """Close the wrapped store."""
        self.store.close()


def instrument(store: BackingStore, metrics: FetchMetrics) -> InstrumentedStore:
    """``store``, its fetches reported to ``metrics`` (pass the result to ``allocate(store=...)``)."""
    return InstrumentedStore(store, metrics)


class GuestCollector(Collector):
    """Exports one guest's counters at each scrape (see docs/metrics.md for the list).

    ``guest`` may be set later (:meth:`attach`): until then only the fetch
    metrics are exported. ``fetch`` defaults to a fresh :class:`FetchMetrics`.
    """

    def __init__(self, guest: MemoryOptimizer | None = None, fetch: FetchMetrics | None = None) -> None:
        if guest is not None and not isinstance(guest, MemoryOptimizer):
            raise ConfigError(f"guest must be a MemoryOptimizer, got {guest!r}")
        self._guest = guest
        self.fetch = fetch or FetchMetrics()

    def attach(self, guest: MemoryOptimizer) -> None:
        """Export ``guest`` from now on."""
        if not isinstance(guest, MemoryOptimizer):
            raise ConfigError(f"guest must be a MemoryOptimizer, got {guest!r}")
        self._guest = guest

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on the guest (registering must not scrape it)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the guest's counters now."""
        guest = self._guest
        if guest is not None:
            yield from _guest_metrics(guest)
        yield from _fetch_metrics(self.fetch)


def _guest_metrics(opt: MemoryOptimizer) -> Iterator[Metric]:
    tlb = {
        field: CounterMetricFamily(
            f"vmopt_tlb_{field}", f"TLB {field}, per level and vCPU", labels=["level", "cpu"]
        )
        for field in ("lookups", "hits", "misses", "evictions")
    }
    walks = CounterMetricFamily("vmopt_page_walks", "Demand page walks", labels=["cpu"])
    refs = CounterMetricFamily(
        "vmopt_page_walk_memory_refs", "PTE reads of demand walks, after the page-walk cache", labels=["cpu"]
    )
    prefetch = {
        field: CounterMetricFamily(f"vmopt_prefetches_{field}", f"Prefetches {field}", labels=["cpu"])
        for field in ("issued", "useful", "useless")
    }
    other_faults = 0
    for cpu, mmu in enumerate(opt.mmus):
        c = str(cpu)
        for level in mmu.all_levels():  # a split L1's ITLB too
            st = level.stats
            name = level.configs[0].name  # a level is named for its first array ("l1i", "l1d", "l2")
            for field, family in tlb.items():
                family.add_metric([name, c], getattr(st, field))
        ms = mmu.stats
        walks.add_metric([c], ms.walks)
        refs.add_metric([c], ms.walk_memory_refs)
        pf = ms.prefetch
        for field, family in prefetch.items():
            family.add_metric([c], getattr(pf, field))
        other_faults += ms.faults - ms.demand_faults  # faults counts the resolved ones too
    yield from tlb.values()
    yield walks
    yield refs
    yield from prefetch.values()
    faults = CounterMetricFamily(
        "vmopt_page_faults",
        "Page faults by cause: demand (a page mapped on first touch) or other (a walk's fault not resolved)",
        labels=["cause"],
    )
    demand = opt.anonymous_pages + sum(len(r.resident) for r in opt.regions())
    faults.add_metric(["demand"], demand)
    faults.add_metric(["other"], other_faults)
    yield faults
    resident = GaugeMetricFamily(
        "vmopt_numa_resident_bytes", "Bytes of guest data pages on each NUMA node", labels=["node"]
    )
    used = GaugeMetricFamily(
        "vmopt_numa_used_bytes", "Bytes allocated on each node (data and page tables)", labels=["node"]
    )
    size = GaugeMetricFamily("vmopt_numa_size_bytes", "Size of each NUMA node", labels=["node"])
    accesses = CounterMetricFamily(
        "vmopt_numa_accesses", "Accesses served by each node, from a vCPU on it (local) or not (remote)",
        labels=["node", "locality"],
    )  # fmt: skip
    for ns in opt.node_stats():
        n = str(ns.node)
        resident.add_metric([n], ns.pages * 4096)
        used.add_metric([n], ns.used_bytes)
        size.add_metric([n], ns.size)
        accesses.add_metric([n, "local"], ns.local_accesses)
        accesses.add_metric([n, "remote"], ns.remote_accesses)
    yield resident
    yield used
    yield size
    yield accesses


def _fetch_metrics(fetch: FetchMetrics) -> Iterator[Metric]:
    in_flight, counts, total, errors = fetch.snapshot()
    yield GaugeMetricFamily("vmopt_fetches_in_flight", "Store fetches running now", value=in_flight)
    cumulative: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*map(str, fetch.buckets), "+Inf"], counts, strict=True):
        running += count
        cumulative.append((bound, running))
    yield HistogramMetricFamily(
        "vmopt_fetch_latency_seconds", "Store fetch latency", buckets=cumulative, sum_value=total
    )
    errs = CounterMetricFamily("vmopt_store_errors", "Store fetches that failed, by kind", labels=["kind"])
    for kind, count in sorted(errors.items()):
        errs.add_metric([kind], count)
    yield errs


@dataclass
class MetricsServer:
    """A running metrics endpoint: its registry, address and port; :meth:`close` stops it."""

    registry: CollectorRegistry
    host: str
    port: int
    _server: Any
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """The scrape URL."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(port: int, collectors: Sequence[Collector], *, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``collectors`` at ``http://host:port/metrics`` on a daemon thread (port 0: a free port).

    Only these collectors are exported (a private registry: no process or GC metrics).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port must be a port number 0..65535, got {port!r}")
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {host}: {exc.strerror or exc}") from exc
    bound = int(server.server_address[1])
    log.info("serving metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(registry, host, bound, server, thread)


class SweepCollector(Collector):
    """A sweep's progress (points finished, failed, pending) and each finished point's key counters.

    ``point_done`` is called with each point's result as it finishes (any
    engine); the per-point series carry ``input`` and ``point`` labels
    (``point`` is the grid values, ``key=value`` joined by commas).
    """

    def __init__(self, total: int) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ConfigError(f"total must be an int >= 0, got {total!r}")
        self.total = total
        self._lock = threading.Lock()
        self._failed = 0
        self._reports: list[tuple[str, str, dict[str, Any]]] = []

    def point_done(self, result: dict[str, Any]) -> None:
        """Count one finished point (a ``{"report": ...}`` or an ``{"error": ...}`` result)."""
        with self._lock:
            if "report" in result:
                point = ",".join(f"{k}={v}" for k, v in result["params"].items())
                self._reports.append((str(result["input"]), point, result["report"]))
            else:
                self._failed += 1

    def describe(self) -> list[Metric]:
        """Nothing up front (the families are built at each scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The counts and every finished point's counters, now."""
        with self._lock:
            failed, reports = self._failed, list(self._reports)
        points = GaugeMetricFamily("vmopt_sweep_points", "Grid points by state", labels=["state"])
        points.add_metric(["finished"], len(reports))
        points.add_metric(["failed"], failed)
        points.add_metric(["pending"], self.total - len(reports) - failed)
        yield points
        labels = ["input", "point"]
        accesses = CounterMetricFamily("vmopt_sweep_point_accesses", "Accesses a point played", labels=labels)
        misses = CounterMetricFamily(
            "vmopt_sweep_point_tlb_misses", "TLB misses of a point, per level", labels=[*labels, "level"]
        )
        walks = CounterMetricFamily("vmopt_sweep_point_page_walks", "Page walks of a point", labels=labels)
        cycles = GaugeMetricFamily(
            "vmopt_sweep_point_cycles_per_access", "Modelled cycles per access of a point", labels=labels
        )
        for inp, point, rep in reports:
            accesses.add_metric([inp, point], rep["accesses"])
            for level, lv in rep["tlb"].items():
                misses.add_metric([inp, point, level], lv["misses"])
            walks.add_metric([inp, point], rep["page_walks"])
            cycles.add_metric([inp, point], rep["cycles"]["per_access"])
        yield from (accesses, misses, walks, cycles)
