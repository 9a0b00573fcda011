"""The simulation driver: play a stream of :class:`TraceChunk` through a :class:`MemoryOptimizer`.

The guest is built with anonymous memory of ``paging.page_size`` (every
canonical page a trace touches is anonymous memory, mapped user ``rwx``
under the configured mempolicy, accessed and dirty from the start); the
driver keeps only what is specific to traces. Per chunk:

1. **First touches.** :meth:`MemoryOptimizer.prefault` maps the chunk's new
   pages in first-touch order, each on the node the policy picks for its
   first toucher's vCPU, before the chunk runs: the kernel's fault work and
   walk are not counted. Every page mapped counts as one demand fault.
2. **vCPU streams.** Each vCPU's accesses go through the core's batch loop
   on its own MMU, each as its kind (:meth:`Mmu.translate_kinds_into`):
   fetches look up the ITLB of a split L1, reads and writes the DTLB, both
   missing into the shared levels; the guest's traffic counter counts the
   NUMA traffic. vCPUs share no TLB state and nothing is unmapped during a
   run, so translating one vCPU's accesses of a chunk together gives the
   same counters as interleaving them. Rights are checked as the hardware
   checks them (a fetch needs execute rights), and every page is mapped
   user ``rwx`` and dirty, so no access faults on rights and a write never
   re-walks to set D: what is measured is TLB reach. An access that cannot
   be translated (a non-canonical address) counts as a failure and the run
   goes on. A chunk with ASIDs (ChampSim cloudsuite, drmemtrace PIDs) runs
   each ASID in its own address space (:meth:`MemoryOptimizer.switch` at
   every change, in trace order; its pages are prefaulted in that space).
3. **Windows.** Counter deltas give one point of the windowed miss-rate and
   traffic series.

:meth:`Simulator.run` plays the chunks through :func:`vmopt.sim.pipeline.play`:
the trace is read on one thread, simulated on another, and Ctrl-C stops
both at a chunk boundary, leaving a consistent partial result.
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
from vmopt.guest import MemoryOptimizer
from vmopt.sim.config import SimConfig
from vmopt.sim.pipeline import DEFAULT_DEPTH, play
from vmopt.tlb.nested import NestedConfig
from vmopt.traces.chunk import AccessKind, KindArray, TraceChunk

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
    #: True when Ctrl-C stopped the run: the counters cover the first ``accesses`` only.
    partial: bool = False


def _nested_args(config: SimConfig) -> dict[str, Any]:
    """The facade's host-stage arguments for ``[paging] nested`` (none when it is "none")."""
    p = config.paging
    if p.nested == "none":
        return {}
    nested = NestedConfig(vmid=1, ntlb_entries=p.nested_tlb_entries, host_pwc=config.pwc.pwc_config())
    return {"nested": p.nested, "nested_page_size": p.nested_page_size, "nested_config": nested}


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
                walk_ref_cycles=config.paging.walk_ref_cycles,
                anonymous_page_size=config.paging.page_size,
                **_nested_args(config),
            )
        except ConfigError as exc:
            raise ConfigError(f"configuration: {exc}") from exc
        nodes = config.numa.nodes
        self.accesses = 0
        self.kinds = [0, 0, 0]
        self.demand_faults = 0
        self.failed = 0
        self.pages = [0] * nodes
        self.windows = Windows()
        self.elapsed = 0.0

    @property
    def local(self) -> list[int]:
        """Local accesses per node so far."""
        return list(self.opt.traffic.local)

    @property
    def remote(self) -> list[int]:
        """Remote accesses per node so far."""
        return list(self.opt.traffic.remote)

    def _play(self, cpu: int, vas: U64, kinds: KindArray) -> None:
        """One vCPU's accesses of a chunk, in order, each as its kind, through the core's batch loop."""
        mmu, home = self.opt.mmus[cpu], self.opt.cpu_node[cpu]
        out = np.empty(len(vas), dtype=np.uint64)
        pos, n = 0, len(vas)
        while pos < n:
            done, error = mmu.translate_kinds_into(vas[pos:], kinds[pos:], out[pos:], True)
            if done:
                self.opt.traffic.count(out[pos : pos + done], home)
            pos += done
            if error is None:
                break
            if not isinstance(error, VmoptError):
                raise error
            # Every page is mapped before the chunk runs, so only an address no page
            # can hold (a non-canonical one) stops the loop: a failure, and the run goes on.
            self.failed += 1
            pos += 1

    def _play_spaces(
        self, cpu: int, vas: U64, kinds: KindArray, asids: npt.NDArray[np.uint16] | None
    ) -> None:
        """:meth:`_play`, switching the vCPU's address space at every change of ASID."""
        if asids is None:
            self.opt.switch(cpu, 0)
            self._play(cpu, vas, kinds)
            return
        cuts = np.flatnonzero(asids[1:] != asids[:-1]) + 1
        for start, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(vas)], strict=True):
            self.opt.switch(cpu, int(asids[start]))
            self._play(cpu, vas[start:stop], kinds[start:stop])

    def _prefault(
        self, addrs: U64, cpus: npt.NDArray[np.integer[Any]] | None, asids: npt.NDArray[np.uint16] | None
    ) -> list[int]:
        """Map the chunk's new anonymous pages, in each address space it touches; pages per node."""
        if asids is None:
            return self.opt.prefault(addrs, cpus)
        placed = [0] * len(self.pages)
        for asid in np.unique(asids).tolist():
            sel = asids == asid
            got = self.opt.prefault(addrs[sel], None if cpus is None else cpus[sel], asid)
            placed = [a + b for a, b in zip(placed, got, strict=True)]
        return placed

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
        kinds = chunk.kinds
        writes = int(np.count_nonzero(kinds == AccessKind.WRITE))
        fetches = int(np.count_nonzero(kinds == AccessKind.FETCH))
        self.kinds[0] += n - writes - fetches
        self.kinds[1] += writes
        self.kinds[2] += fetches
        asids = chunk.asids
        if asids is not None and not asids.any():
            asids = None  # one address space: the guest's own
        placed = self._prefault(addrs, cpus, asids)
        self.demand_faults += sum(placed)
        for node, count in enumerate(placed):
            self.pages[node] += count
        before_l1 = self._l1_misses()
        before_walks = self._sum_walks()
        before_local, before_remote = self.opt.traffic.snapshot()
        if cpus is None or self.cpus == 1:
            self._play_spaces(0, addrs, kinds, asids)
        else:
            for cpu in np.unique(cpus).tolist():
                mine = cpus == cpu
                self._play_spaces(cpu, addrs[mine], kinds[mine], None if asids is None else asids[mine])
        local, remote = self.opt.traffic.snapshot()
        self.accesses += n
        self.windows.add(
            n, self._l1_misses() - before_l1, self._sum_walks() - before_walks,
            [a - b for a, b in zip(local, before_local, strict=True)],
            [a - b for a, b in zip(remote, before_remote, strict=True)],
        )  # fmt: skip
        self.elapsed += time.perf_counter() - t0

    def _l1_misses(self) -> int:
        """Misses of the first level, both sides of a split L1, over every vCPU."""
        return sum(m.dtlb.stats.misses + (m.itlb.stats.misses if m.split_l1 else 0) for m in self.opt.mmus)

    def _sum_walks(self) -> int:
        return sum(m.stats.walks for m in self.opt.mmus)

    def run(
        self,
        chunks: Iterable[TraceChunk],
        progress: Progress | None = None,
        *,
        depth: int | None = DEFAULT_DEPTH,
        close: Callable[[], None] | None = None,
        partial_on_interrupt: bool = False,
    ) -> SimResult:
        """Feed every chunk (the reading time counts in ``elapsed_s``); return the result.

        ``depth`` chunks are read ahead on a reader thread (None: read inline,
        on the simulation thread); ``close`` releases the stream once read
        (see :func:`~vmopt.sim.pipeline.play`). On Ctrl-C both threads stop
        after the chunk in progress; with ``partial_on_interrupt`` the result
        so far comes back marked ``partial``, else the KeyboardInterrupt is
        re-raised.
        """

        def consume(chunk: TraceChunk) -> None:
            self.feed(chunk)
            log.debug("simulated %d accesses", self.accesses)
            if progress is not None:
                progress(len(chunk))

        t0 = time.perf_counter()
        try:
            done = play(
                chunks, consume, depth=depth, close=close,
                on_interrupt="return" if partial_on_interrupt else "raise",
            )  # fmt: skip
        finally:
            self.elapsed = time.perf_counter() - t0
        return self.result(partial=not done)

    def result(self, *, partial: bool = False) -> SimResult:
        """What happened so far (``partial``: the run was interrupted)."""
        return SimResult(
            self.config, self.opt, self.accesses, list(self.kinds), self.demand_faults, self.failed,
            list(self.pages), self.local, self.remote, self.windows, self.elapsed, partial,
        )  # fmt: skip
