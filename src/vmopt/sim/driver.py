"""The simulation driver: play a stream of :class:`TraceChunk` through a :class:`MemoryOptimizer`.

Per chunk:

1. **Demand paging.** Pages first touched in the chunk (at any canonical
   address) are mapped in first-touch order, before the chunk is
   translated: a frame comes from ``mem.alloc_policy`` under the configured
   mempolicy, seen from the touching vCPU's node, and is mapped user
   ``rwx`` with the page size of ``[paging]``. Like Linux for anonymous
   memory (which sets A/D itself when it handles the first fault), the PTE
   starts accessed and dirty. Every first touch counts as one demand fault.
   Pages inside regions reserved with ``MemoryOptimizer.allocate`` are left
   to the optimizer's own fault handler.
2. **Translation.** Each vCPU's accesses go through its own MMU with the
   core's array loop (:meth:`vmopt.Mmu.translate_into`); vCPUs share no TLB
   state and nothing is unmapped during a run, so translating one vCPU's
   accesses of a chunk together gives the same counters as interleaving
   them. Because every page is ``rwx`` and already dirty, a read, a write
   and a fetch take the same path through TLBs and walker, so all are
   translated as reads; the kinds are counted separately. Where the loop
   stops (a fault: a non-canonical address, or a first touch of a region
   the optimizer demand-pages), the access is finished as ``translate``
   would finish it and a failure is counted.
3. **Accounting.** Each physical address's NUMA node gives local/remote
   traffic; counter deltas give one point of the windowed miss-rate series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vmopt.errors import ConfigError, VmoptError
from vmopt.optimizer import MemoryOptimizer
from vmopt.paging.types import PageFault
from vmopt.sim.config import SimConfig
from vmopt.tlb.mmu import Mmu
from vmopt.traces.chunk import TraceChunk

__all__ = ["MAX_WINDOWS", "Progress", "SimResult", "Simulator", "Windows"]

log = logging.getLogger(__name__)

#: The miss-rate series keeps at most this many windows (adjacent ones merge).
MAX_WINDOWS = 2000

Progress = Callable[[int], None]
U64 = npt.NDArray[np.uint64]


@dataclass
class Windows:
    """A bounded series of (accesses, L1 misses, page walks) per window of the trace."""

    accesses: list[int] = field(default_factory=list)
    l1_misses: list[int] = field(default_factory=list)
    walks: list[int] = field(default_factory=list)
    local: list[list[int]] = field(default_factory=list)
    remote: list[list[int]] = field(default_factory=list)

    def add(self, accesses: int, l1_misses: int, walks: int, local: list[int], remote: list[int]) -> None:
        """Append one window; merge neighbours pairwise when the series grows past MAX_WINDOWS."""
        self.accesses.append(accesses)
        self.l1_misses.append(l1_misses)
        self.walks.append(walks)
        self.local.append(local)
        self.remote.append(remote)
        if len(self.accesses) > MAX_WINDOWS:
            self._halve()

    def _halve(self) -> None:
        def pairs(xs: list[int]) -> list[int]:
            return [sum(xs[i : i + 2]) for i in range(0, len(xs), 2)]

        def vpairs(xs: list[list[int]]) -> list[list[int]]:
            return [[sum(v) for v in zip(*xs[i : i + 2], strict=True)] for i in range(0, len(xs), 2)]

        self.accesses = pairs(self.accesses)
        self.l1_misses = pairs(self.l1_misses)
        self.walks = pairs(self.walks)
        self.local = vpairs(self.local)
        self.remote = vpairs(self.remote)


@dataclass
class SimResult:
    """Raw outcome of a run; :mod:`vmopt.sim.report` turns it into the report."""

    config: SimConfig
    opt: MemoryOptimizer
    accesses: int
    kinds: list[int]
    demand_faults: int
    failed_accesses: int
    pages: list[int]
    local: list[int]
    remote: list[int]
    windows: Windows
    elapsed_s: float


def _canonical_mask(addrs: U64, va_bits: int) -> npt.NDArray[np.bool_]:
    top = addrs >> np.uint64(va_bits - 1)
    mask: npt.NDArray[np.bool_] = (top == 0) | (top == np.uint64((1 << (65 - va_bits)) - 1))
    return mask


class Simulator:
    """One simulated guest, fed chunk by chunk (see the module docstring)."""

    def __init__(self, config: SimConfig, cpus: int = 1) -> None:
        if cpus < 1:
            raise ConfigError(f"numa.cpus: need at least one vCPU, got {cpus}")
        self.config = config
        self.cpus = cpus
        try:
            self.opt = MemoryOptimizer(
                config.numa.numa_config(cpus),
                paging=config.paging.format,
                tlb=config.tlb_levels(),
                prefetch=config.prefetch.prefetch_config(),
                pwc=config.pwc.pwc_config(),
                cpus=cpus,
                policy=config.numa.mempolicy(),
                concurrency=config.concurrency,
            )
        except ConfigError as exc:
            raise ConfigError(f"configuration: {exc}") from exc
        for mmu in self.opt.mmus:
            mmu.walk_ref_cycles = config.paging.walk_ref_cycles
        fmt = self.opt.page_table.fmt
        self.va_bits = fmt.va_bits
        self.page_size = config.paging.page_size
        self.shift = self.page_size.bit_length() - 1
        nodes = config.numa.nodes
        self.node_base = np.asarray(self.opt.mem.node_base, dtype=np.uint64)
        self.mapped: set[int] = set()
        self.accesses = 0
        self.kinds = [0, 0, 0]
        self.demand_faults = 0
        self.failed = 0
        self.pages = [0] * nodes
        self.local = [0] * nodes
        self.remote = [0] * nodes
        self.windows = Windows()
        self.elapsed = 0.0
        #: The array translator (None: ``Mmu.translate`` per access, the reference).
        self._kernel: Callable[[Mmu, U64, U64], tuple[int, BaseException | None]] | None = (
            lambda mmu, vas, out: mmu.translate_into(vas, out, "r", True)
        )

    # -- demand paging ------------------------------------------------------------------------

    def _map_new_pages(self, addrs: U64, cpus: npt.NDArray[np.uint16] | None, canon: Any) -> None:
        idx = np.flatnonzero(canon) if not canon.all() else None
        vas = addrs if idx is None else addrs[idx]
        if not len(vas):
            return
        pages, first = np.unique(vas >> np.uint64(self.shift), return_index=True)
        order = np.argsort(first, kind="stable")
        mapped = self.mapped
        opt = self.opt
        pt = opt.page_table
        policy = opt.policy
        size = self.page_size
        for page, f in zip(pages[order].tolist(), first[order].tolist(), strict=True):
            if page in mapped:
                continue
            mapped.add(page)
            va = page << self.shift
            if opt.region_of(va) is not None:
                continue  # the optimizer's own regions demand-page themselves
            where = f if idx is None else int(idx[f])
            cpu = 0 if cpus is None else int(cpus[where])
            node = opt.cpu_node[cpu]
            pa = opt.mem.alloc_policy(size, policy, page, node)
            pt.map(va, pa, size, "rwx", user=True)
            pt.walk(va, "w", True)  # the OS sets A and D when it handles the first touch
            self.demand_faults += 1
            self.pages[opt.mem.node_of(pa)] += 1

    # -- translation ------------------------------------------------------------------------------

    def _translate(self, mmu: Mmu, vas: U64) -> tuple[U64, list[int]]:
        """Physical addresses of ``vas``, and the indices whose access faulted."""
        n = len(vas)
        out = np.zeros(n, dtype=np.uint64)
        bad: list[int] = []
        kernel = self._kernel
        vas = np.ascontiguousarray(vas, dtype=np.uint64)
        pos = 0
        while pos < n:
            error: BaseException | None = None
            va = int(vas[pos])
            if kernel is None:
                try:
                    out[pos] = mmu.translate(va, "r", True)
                except VmoptError as exc:
                    error = exc
            else:
                done, error = kernel(mmu, vas[pos:], out[pos:])
                pos += done
                if error is None:
                    break
                va = int(vas[pos])
                try:
                    out[pos] = mmu.handle_fault(va, "r", True, error)
                    error = None
                except VmoptError as exc:
                    error = exc
            if error is not None:
                if not isinstance(error, PageFault):
                    log.debug("access %#x failed: %s", va, error)
                bad.append(pos)
            pos += 1
        self.failed += len(bad)
        return out, bad

    def _account(self, done: tuple[U64, list[int]], cpu: int, local: list[int], remote: list[int]) -> None:
        pas, bad = done
        if bad:
            pas = np.delete(pas, bad)
        if not len(pas):
            return
        nodes = np.searchsorted(self.node_base, pas, side="right") - 1
        counts = np.bincount(nodes, minlength=len(local)).tolist()
        home = self.opt.cpu_node[cpu]
        for node, count in enumerate(counts):
            if node == home:
                local[node] += count
            else:
                remote[node] += count

    def feed(self, chunk: TraceChunk) -> None:
        """Play one chunk."""
        n = len(chunk)
        if not n:
            return
        t0 = time.perf_counter()
        addrs, cpus = chunk.addrs, chunk.cpus
        if cpus is not None:
            top = int(cpus.max())
            if top >= self.cpus:
                raise ConfigError(
                    f"numa.cpus: the trace uses vCPU {top} but the simulation has {self.cpus} vCPUs"
                )
        counts = np.bincount(chunk.kinds, minlength=3).tolist()
        for k in range(3):
            self.kinds[k] += counts[k]
        canon = _canonical_mask(addrs, self.va_bits)
        self._map_new_pages(addrs, cpus, canon)
        before_l1 = self._sum_level(0, "misses")
        before_walks = self._sum_walks()
        nodes = len(self.local)
        local, remote = [0] * nodes, [0] * nodes
        if cpus is None or self.cpus == 1:
            self._account(self._translate(self.opt.mmus[0], addrs), 0, local, remote)
        else:
            for cpu in np.unique(cpus).tolist():
                sel = np.flatnonzero(cpus == cpu)
                self._account(self._translate(self.opt.mmus[cpu], addrs[sel]), cpu, local, remote)
        for i in range(nodes):
            self.local[i] += local[i]
            self.remote[i] += remote[i]
        self.accesses += n
        self.windows.add(
            n, self._sum_level(0, "misses") - before_l1, self._sum_walks() - before_walks, local, remote
        )
        self.elapsed += time.perf_counter() - t0

    def _sum_level(self, index: int, attr: str) -> int:
        return sum(int(getattr(m.levels[index].stats, attr)) for m in self.opt.mmus)

    def _sum_walks(self) -> int:
        return sum(m.stats.walks for m in self.opt.mmus)

    def run(self, chunks: Iterable[TraceChunk], progress: Progress | None = None) -> SimResult:
        """Feed every chunk (the reading time counts in ``elapsed_s``); return the result."""
        t0 = time.perf_counter()
        for chunk in chunks:
            self.feed(chunk)
            if progress is not None:
                progress(len(chunk))
        self.elapsed = time.perf_counter() - t0
        return self.result()

    def result(self) -> SimResult:
        """What happened so far."""
        return SimResult(
            self.config, self.opt, self.accesses, list(self.kinds), self.demand_faults, self.failed,
            list(self.pages), list(self.local), list(self.remote), self.windows, self.elapsed,
        )  # fmt: skip
