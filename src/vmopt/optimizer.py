"""``MemoryOptimizer``: one guest, made of its address space, its NUMA memory
and one MMU per vCPU.

Regions are reserved by ``allocate`` and populated lazily: the first touch
of a page faults, the fault handler allocates a zeroed frame on the node
the region's policy picks for the touching vCPU, installs the PTE, and the
access restarts, exactly as demand paging works in a kernel.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmopt.batching import (
    Addrs,
    ArrayPath,
    as_addresses,
    check_errors_mode,
    finish,
    record_failure,
    run_sequential,
)
from vmopt.errors import AddressError, ConfigError, MappingError, OutOfFramesError, VmoptError
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.fetching.loader import PageLoader
from vmopt.numa.config import NumaConfig
from vmopt.numa.memory import NumaMemory
from vmopt.numa.policy import MemPolicy
from vmopt.paging.format import PagingFormat
from vmopt.paging.pagetable import PageTable
from vmopt.paging.types import Perm
from vmopt.stores.base import BackingStore
from vmopt.tlb.config import PrefetchConfig, PwcConfig
from vmopt.tlb.mmu import RIGHTS_BIT, FaultHandler, Mmu, TlbSpec
from vmopt.tlb.stats import TlbStats
from vmopt.units import format_size

__all__ = ["MemoryOptimizer", "NodeStats", "Region"]

log = logging.getLogger(__name__)

#: Where the first region goes: canonical and inside every format (Sv39 included).
REGION_BASE = 0x10_0000_0000


@dataclass
class Region:
    """A reserved range of guest-virtual addresses, populated on first touch."""

    va: int
    size: int
    page_size: int
    policy: MemPolicy
    perms: Perm
    user: bool
    store: BackingStore | None = None
    resident: dict[int, int] = field(default_factory=dict)  # page index -> frame pa

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.va + self.size

    @property
    def pages(self) -> int:
        """Pages the region spans."""
        return self.size // self.page_size


@dataclass
class NodeStats:
    """Per-node placement and traffic counters.

    ``local_accesses``/``remote_accesses`` count translated accesses by
    whether the frame sits on the accessing vCPU's node; ``access_cost`` sums
    the SLIT distance of each access (10 per local access).
    """

    node: int
    size: int
    used_bytes: int
    pages: int
    local_accesses: int
    remote_accesses: int
    access_cost: int

    @property
    def percent_used(self) -> float:
        """Used share of the node, in percent."""
        return 100.0 * self.used_bytes / self.size


class MemoryOptimizer:
    """A guest: NUMA physical memory, one address space, an MMU per vCPU.

    ``policy`` is the guest's default mempolicy (set_mempolicy); regions may
    override it (mbind). ``numa_balancing`` enables automatic NUMA
    balancing with Linux's two-stage filter, sampling one access in
    ``balance_period`` per vCPU.
    """

    def __init__(
        self,
        numa: NumaConfig | None = None,
        *,
        paging: str | PagingFormat = "x86_64",
        tlb: TlbSpec = None,
        prefetch: PrefetchConfig | str | None = None,
        pwc: PwcConfig | bool | None = None,
        cpus: int | None = None,
        policy: MemPolicy | None = None,
        numa_balancing: bool = False,
        balance_period: int = 64,
        concurrency: ConcurrencyConfig | None = None,
    ) -> None:
        self.numa = numa or NumaConfig(1, 1 << 30)
        ncpus = 1 if cpus is None else cpus
        if not isinstance(ncpus, int) or ncpus < 1:
            raise ConfigError(f"cpus must be a positive integer, got {cpus!r}")
        if ncpus > self.numa.num_cpus:
            raise ConfigError(
                f"cpus={ncpus} but the NUMA topology places only {self.numa.num_cpus} vCPUs"
                " (raise cpus_per_node or list cpu_nodes)"
            )
        self.policy = policy or MemPolicy.local()
        self.policy.check(self.numa.num_nodes)
        if not isinstance(balance_period, int) or balance_period < 1:
            raise ConfigError(f"balance_period must be a positive integer, got {balance_period!r}")
        self.mem = NumaMemory(self.numa)
        self.page_table = PageTable(self.mem, paging)
        self.cpu_node = [self.numa.node_of_cpu(c) for c in range(ncpus)]
        self.mmus = [
            Mmu(self.page_table, tlb, prefetch, 0, pwc=pwc, fault_handler=self._handler(c))
            for c in range(ncpus)
        ]
        self._lock = threading.RLock()
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self._next_va = REGION_BASE
        n = self.numa.num_nodes
        self._local = [0] * n
        self._remote = [0] * n
        self._cost = [0] * n
        self.bytes_migrated = 0
        self.numa_balancing = numa_balancing
        self.balance_period = balance_period
        self._sample_tick = [0] * ncpus
        self._last_sample: dict[int, int] = {}
        self.balancing_migrations = 0
        self.concurrency = (concurrency or ConcurrencyConfig()).validate()
        self.store_fetches = 0
        self.limit_history: list[tuple[int, int]] = []

    @property
    def cpus(self) -> int:
        """Number of vCPUs."""
        return len(self.mmus)

    def __repr__(self) -> str:
        return f"MemoryOptimizer({self.mem!r}, {self.page_table.fmt.name}, cpus={self.cpus})"

    # -- regions ----------------------------------------------------------------------

    def allocate(
        self,
        size: int,
        *,
        policy: MemPolicy | None = None,
        page_size: int = 4096,
        perms: str = "rw",
        user: bool = True,
        store: BackingStore | None = None,
    ) -> int:
        """Reserve ``size`` bytes of guest-virtual space; pages appear on first touch.

        ``policy`` overrides the guest default for this region (mbind).
        ``store`` serves each page's initial contents (see :mod:`vmopt.stores`).
        """
        if page_size not in (4096, 2 << 20):
            raise ConfigError(f"region page_size must be 4 KiB or 2 MiB, got {page_size!r}")
        if not isinstance(size, int) or size <= 0:
            raise ConfigError(f"region size must be a positive integer, got {size!r}")
        if policy is not None:
            policy.check(self.numa.num_nodes)
        perm = Perm.parse(perms)
        why = self.page_table.fmt.check_perms(perm)
        if why:
            raise ConfigError(f"perms {perms!r}: {why}")
        size = -(-size // page_size) * page_size
        with self._lock:
            align = max(page_size, 2 << 20)
            va = -(-self._next_va // align) * align
            end = va + size
            if not self.page_table.fmt.is_canonical(end - 1) or end >> (self.page_table.fmt.va_bits - 1):
                raise AddressError(
                    f"no room for a {format_size(size)} region in the {self.page_table.fmt.name} user half"
                )
            region = Region(va, size, page_size, policy or self.policy, perm, user, store)
            i = bisect.bisect_left(self._starts, va)
            self._starts.insert(i, va)
            self._regions.insert(i, region)
            self._next_va = end + align  # a guard gap between regions
        log.debug(
            "region %#x+%s (%s pages, policy %s)",
            va,
            format_size(size),
            format_size(page_size),
            region.policy,
        )
        return va

    def region_of(self, va: int) -> Region | None:
        """The region containing ``va``, if any."""
        i = bisect.bisect_right(self._starts, va) - 1
        if i >= 0:
            r = self._regions[i]
            if va < r.end:
                return r
        return None

    def regions(self) -> Iterator[Region]:
        """Every region, in address order."""
        return iter(list(self._regions))

    def free(self, va: int) -> None:
        """Release the region that starts at ``va`` and every frame it holds."""
        with self._lock:
            i = bisect.bisect_left(self._starts, va)
            if i >= len(self._starts) or self._starts[i] != va:
                raise MappingError(f"no region starts at {va:#x}")
            region = self._regions[i]
            for index, pa in sorted(region.resident.items()):
                page_va = region.va + index * region.page_size
                self.page_table.unmap(page_va, region.page_size)
                self.mem.free(pa, region.page_size)
                self._last_sample.pop(page_va, None)
            region.resident.clear()
            del self._starts[i]
            del self._regions[i]

    # -- demand paging ----------------------------------------------------------------------

    def _handler(self, cpu: int) -> FaultHandler:
        def handle(va: int, access: str, user: bool) -> bool:
            return self._demand_fault(va, cpu)

        return handle

    def _demand_fault(self, va: int, cpu: int) -> bool:
        """Populate the page of ``va`` if it lies in a region; False if it does not."""
        with self._lock:
            region = self.region_of(va)
            if region is None:
                return False
            index = (va - region.va) // region.page_size
            if index not in region.resident:  # else another vCPU populated it meanwhile
                self._populate(region, index, cpu, self._fetch(region, index))
            return True

    def _populate(self, region: Region, index: int, cpu: int, data: bytes | None) -> None:
        """Allocate a frame for page ``index`` under the region's policy, fill it, map it."""
        with self._lock:
            if index in region.resident:
                return
            pa = self.mem.alloc_policy(region.page_size, region.policy, index, self.cpu_node[cpu])
            try:
                if data is not None:
                    self.mem.write(pa, data)
                self.page_table.map_trusted(region.va + index * region.page_size, pa, region.page_size,
                                            region.perms, region.user)  # fmt: skip
            except BaseException:
                self.mem.free(pa, region.page_size)
                raise
            region.resident[index] = pa

    def _fetch(self, region: Region, index: int) -> bytes | None:
        """Initial contents of a page: staged by a concurrent batch, else fetched synchronously."""
        if region.store is None:
            return None
        pages_per = region.page_size // 4096
        chunks = [region.store.fetch_sync(index * pages_per + k) for k in range(pages_per)]
        self.store_fetches += pages_per
        return b"".join(chunks)

    # -- translation and access ---------------------------------------------------------

    def _check_cpu(self, cpu: int) -> Mmu:
        if not isinstance(cpu, int) or not 0 <= cpu < len(self.mmus):
            raise ConfigError(f"vCPU {cpu!r} does not exist (0..{len(self.mmus) - 1})")
        return self.mmus[cpu]

    def translate(self, va: int, access: str = "r", cpu: int = 0) -> int:
        """Translate through vCPU ``cpu``'s MMU, demand-paging as needed; count NUMA traffic."""
        mmu = self._check_cpu(cpu)
        pa = mmu.translate(va, access, True)
        self._account(pa, cpu, va)
        return pa

    def _account(self, pa: int, cpu: int, va: int) -> None:
        node = self.mem.node_of(pa)
        home = self.cpu_node[cpu]
        if node == home:
            self._local[node] += 1
        else:
            self._remote[node] += 1
        self._cost[node] += self.numa.distances[home][node]  # type: ignore[index]
        if self.numa_balancing:
            self._sample(va, cpu, node, home)

    def read(self, va: int, n: int, cpu: int = 0) -> bytes:
        """Read ``n`` guest-virtual bytes as vCPU ``cpu``.

        A migration between the translation and the copy would leave this
        read looking at a freed frame; the page table's generation (a
        seqlock) detects that and the read is retried.
        """
        while True:
            generation = self.page_table.generation
            out = bytearray()
            for pa, k in self._pieces(va, n, "r", cpu):
                out += self.mem.read(pa, k)
            if self.page_table.generation == generation:
                return bytes(out)

    def write(self, va: int, data: bytes | bytearray | memoryview, cpu: int = 0) -> None:
        """Write guest-virtual bytes as vCPU ``cpu``; every page is translated before any byte is written.

        Writes exclude migration (they hold the optimizer's lock), so no byte
        lands in a frame that a migration has already copied.
        """
        view = memoryview(data).cast("B")
        with self._lock:
            pos = 0
            for pa, k in self._pieces(va, len(view), "w", cpu):
                self.mem.write(pa, view[pos : pos + k])
                pos += k

    def _pieces(self, va: int, n: int, access: str, cpu: int) -> list[tuple[int, int]]:
        if not isinstance(n, int) or n < 0:
            raise AddressError(f"length must be a non-negative int, got {n!r}")
        pieces = []
        pos = 0
        while pos < n:
            cur = va + pos
            pa = self.translate(cur, access, cpu)
            chunk = min(4096 - (cur & 0xFFF), n - pos)
            pieces.append((pa, chunk))
            pos += chunk
        return pieces

    # -- batches ----------------------------------------------------------------------------

    def batch_access(self, addrs: Addrs, access: str = "r", cpu: int = 0, errors: str = "raise") -> Any:
        """Translate a batch in order; same results and statistics as ``translate`` in a loop.

        A list gives a list; a NumPy integer array gives a uint64 array and
        goes through the core's translate loop (faults, demand paging
        included, are finished one by one as ``translate`` finishes them).
        Faults on store-backed regions are served one after another.
        """
        mmu = self._check_cpu(cpu)
        return run_sequential(
            lambda va: self.translate(va, access, cpu), addrs, errors,
            chunk_size=self.concurrency.chunk_size, array_path=self._array_path(mmu, access, cpu),
        )  # fmt: skip

    def _array_path(self, mmu: Mmu, access: str, cpu: int) -> ArrayPath | None:
        """The core's array loop for this vCPU, with NUMA accounting, or None when it cannot apply."""
        if self.numa_balancing or (access, True) not in RIGHTS_BIT:
            return None  # balancing samples per access; bad arguments fail per index

        def translate(vas: Any, out: Any) -> tuple[int, BaseException | None]:
            done, error = mmu.translate_into(vas, out, access, True)
            if done:
                self._account_array(out[:done], cpu)
            return done, error

        def resume(va: int, error: BaseException) -> int:
            pa = mmu.handle_fault(va, access, True, error)
            self._account(pa, cpu, va)
            return pa

        return ArrayPath(translate, resume)

    def _account_array(self, pas: Any, cpu: int) -> None:
        import numpy as np

        nodes = np.searchsorted(np.asarray(self.mem.node_base, dtype=np.uint64), pas, side="right") - 1
        counts = np.bincount(nodes.astype(np.int64), minlength=self.numa.num_nodes)
        home = self.cpu_node[cpu]
        for node, count in enumerate(counts.tolist()):
            if not count:
                continue
            if node == home:
                self._local[node] += count
            else:
                self._remote[node] += count
            self._cost[node] += count * self.numa.distances[home][node]  # type: ignore[index]

    async def batch_access_concurrent(
        self, addrs: Addrs, access: str = "r", cpu: int = 0, errors: str = "raise"
    ) -> Any:
        """Translate a batch, overlapping the store fetches its faults need.

        At most ``concurrency.max_concurrent`` fetches are in flight;
        duplicate faults on one page share one fetch; results come back in
        input order and equal the sequential path's. Small batches, or a
        disabled config, take the sequential path.
        """
        mode = check_errors_mode(errors)
        self._check_cpu(cpu)
        cfg = self.concurrency
        values, is_array = as_addresses(addrs)
        if not cfg.enabled or len(values) <= cfg.tlb_batch_threshold:
            return self.batch_access(values, access, cpu, errors)
        total = len(values)
        results: Any = [None] * total if not is_array else None
        if is_array:
            import numpy as np

            results = np.zeros(total, dtype=np.uint64)
        failures: dict[int, BaseException] = {}
        for start in range(0, total, cfg.chunk_size):
            chunk = values[start : start + cfg.chunk_size]
            await self._run_concurrent_chunk(chunk, start, access, cpu, results, failures)
        return finish(results, failures, mode, total)

    def _pages_to_fetch(self, chunk: Any) -> list[tuple[Region, int]]:
        """Store-backed, non-resident pages ``chunk`` will fault on, in first-touch order."""
        out: list[tuple[Region, int]] = []
        seen: set[tuple[int, int]] = set()
        last_page = -1
        for va in chunk:
            va = int(va)
            if va >> 12 == last_page:
                continue
            last_page = va >> 12
            region = self.region_of(va)
            if region is None or region.store is None:
                continue
            index = (va - region.va) // region.page_size
            key = (region.va, index)
            if key in seen or index in region.resident:
                continue
            seen.add(key)
            out.append((region, index))
        return out

    async def _run_concurrent_chunk(
        self, chunk: Any, start: int, access: str, cpu: int, results: Any,
        failures: dict[int, BaseException],
    ) -> None:  # fmt: skip
        loader = PageLoader(self.concurrency)

        async def fetch(region: Region, index: int) -> bytes:
            pages_per = region.page_size // 4096
            assert region.store is not None  # _pages_to_fetch plans store-backed pages only
            data = await loader.load(region.store.fetch, index * pages_per, pages_per)
            self.store_fetches += pages_per
            return data

        tasks = {(r.va, i): asyncio.ensure_future(fetch(r, i)) for r, i in self._pages_to_fetch(chunk)}
        installed = 0
        try:
            for k, va in enumerate(chunk):
                va = int(va)
                idx = start + k
                region = self.region_of(va) if tasks else None
                if region is not None:
                    key = (region.va, (va - region.va) // region.page_size)
                    task = tasks.get(key)
                    if task is not None:
                        try:
                            data = await task
                        except VmoptError as exc:
                            record_failure(failures, idx, va, exc)
                            continue
                        # Install in input order, as the sequential path's fault would.
                        try:
                            self._populate(region, key[1], cpu, data)
                        except VmoptError as exc:
                            record_failure(failures, idx, va, exc)
                            continue
                        installed += 1
                        if installed % 4 == 0:
                            # Let finished fetches release their slots so the
                            # next ones start while this loop installs pages.
                            await asyncio.sleep(0)
                try:
                    results[idx] = self.translate(va, access, cpu)
                except VmoptError as exc:
                    record_failure(failures, idx, va, exc)
        finally:
            pending = [t for t in tasks.values() if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if loader.history is not None:
                self.limit_history = loader.history

    # -- statistics -----------------------------------------------------------------------

    def get_tlb_stats(self, cpu: int = 0) -> TlbStats:
        """The whole TLB hierarchy of ``cpu`` as one: lookups asked, hits by any level, misses = walks."""
        return self._check_cpu(cpu).total_stats()

    def process_prefetch(self) -> int:
        """Drain every vCPU's deferred prefetch queue; translations installed."""
        return sum(m.process_prefetch() for m in self.mmus)

    def node_of(self, pa: int) -> int:
        """The NUMA node holding ``pa``."""
        return self.mem.node_of(pa)

    def node_stats(self) -> list[NodeStats]:
        """Per node: size, used bytes, data pages, local/remote accesses, access cost."""
        pages = [0] * self.numa.num_nodes
        for region in self._regions:
            for pa in region.resident.values():
                pages[self.mem.node_of(pa)] += region.page_size // 4096
        return [
            NodeStats(
                n,
                self.numa.node_sizes[n],
                self.mem.used_bytes(n),
                pages[n],
                self._local[n],
                self._remote[n],
                self._cost[n],
            )
            for n in range(self.numa.num_nodes)
        ]

    def access_cost(self) -> int:
        """Distance-weighted cost of every access so far (10 per local access)."""
        return sum(self._cost)

    # -- migration ------------------------------------------------------------------------

    def migrate(self, va: int, length: int, node: int) -> int:
        """Move the resident pages of ``[va, va+length)`` to ``node``; return bytes moved.

        Each page is copied, its PTE repointed and every vCPU's TLB shot down
        before the old frame is freed, so contents are identical byte for
        byte and no stale translation survives. Raises before moving
        anything if ``node`` lacks room for all of it.
        """
        if not isinstance(node, int) or not 0 <= node < self.numa.num_nodes:
            raise ConfigError(f"node {node!r} does not exist (0..{self.numa.num_nodes - 1})")
        with self._lock:
            todo = list(self._resident_in(va, length))
            todo = [(r, i, pa) for r, i, pa in todo if self.mem.node_of(pa) != node]
            need = sum(r.page_size for r, _, _ in todo)
            have = self.mem.nodes[node].free_pages * 4096
            if need > have:
                raise OutOfFramesError(
                    f"node {node}: cannot migrate {format_size(need)}, only {format_size(have)} free",
                    size=need,
                    node=node,
                )
            return sum(self._move(r, i, pa, node) for r, i, pa in todo)

    def _resident_in(self, va: int, length: int) -> Iterator[tuple[Region, int, int]]:
        end = va + length
        for region in list(self._regions):
            if region.end <= va or region.va >= end:
                continue
            for index, pa in sorted(region.resident.items()):
                page_va = region.va + index * region.page_size
                if page_va < end and va < page_va + region.page_size:
                    yield region, index, pa

    def _move(self, region: Region, index: int, old: int, node: int) -> int:
        """Migrate one page, as Linux does with migration entries.

        The PTE goes first (shooting down every vCPU), so an access during
        the copy faults and waits on this optimizer's lock until the new
        frame is mapped; no write can land in the old frame after the copy.
        """
        size = region.page_size
        page_va = region.va + index * size
        with self._lock:
            new = self.mem.alloc(size, node)
            self.page_table.unmap(page_va, size)
            self.mem.write(new, self.mem.read(old, size))
            self.page_table.map_trusted(page_va, new, size, region.perms, region.user)
            region.resident[index] = new
            self.mem.free(old, size)
            self.bytes_migrated += size
        return size

    def rebalance(self) -> int:
        """The report's rebalance, made real: even out node usage; return bytes moved.

        Pages move from the most to the least used node (by fraction in use)
        while that narrows the gap; regions under ``bind`` stay put.
        """
        moved = 0
        with self._lock:
            while True:
                usage = [self.mem.usage(n) for n in range(self.numa.num_nodes)]
                hi = max(range(len(usage)), key=lambda n: (usage[n], -n))
                lo = min(range(len(usage)), key=lambda n: (usage[n], n))
                candidate = self._movable_page(hi)
                if candidate is None:
                    break
                region, index, pa = candidate
                step = region.page_size / 4096
                gap_now = usage[hi] - usage[lo]
                after_hi = usage[hi] - step / self.mem.nodes[hi].total_pages
                after_lo = usage[lo] + step / self.mem.nodes[lo].total_pages
                if abs(after_hi - after_lo) >= gap_now or self.mem.nodes[lo].free_pages < step:
                    break
                moved += self._move(region, index, pa, lo)
        return moved

    def _movable_page(self, node: int) -> tuple[Region, int, int] | None:
        for region in reversed(self._regions):
            if region.policy.mode == "bind":
                continue
            for index, pa in sorted(region.resident.items(), reverse=True):
                if self.mem.node_of(pa) == node:
                    return region, index, pa
        return None

    # -- automatic NUMA balancing -----------------------------------------------------------

    def _sample(self, va: int, cpu: int, node: int, home: int) -> None:
        """Sample one access in ``balance_period``; two consecutive remote samples from one node migrate."""
        tick = self._sample_tick[cpu] = self._sample_tick[cpu] + 1
        if tick % self.balance_period:
            return
        region = self.region_of(va)
        if region is None or region.policy.mode == "bind":
            return
        index = (va - region.va) // region.page_size
        page_va = region.va + index * region.page_size
        last = self._last_sample.get(page_va)
        self._last_sample[page_va] = home
        # Linux's two-stage filter (should_numa_migrate_memory): migrate only
        # when the previous sample of this page came from the same node.
        if home != node and last == home:
            pa = region.resident.get(index)
            if pa is not None and self.mem.nodes[home].free_pages * 4096 >= region.page_size:
                with self._lock:
                    self._move(region, index, pa, home)
                self.balancing_migrations += 1
