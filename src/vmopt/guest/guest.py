"""``MemoryOptimizer``: one guest, made of its address space, its NUMA memory and one MMU per vCPU.

Regions are reserved by ``allocate`` and populated lazily: the first touch
of a page faults, and the guest resolves the fault as a kernel's demand
paging does, in one core call (:meth:`vmopt.Mmu.install_page`): a frame on
the first node the region's policy picks for the touching vCPU that has
room, filled with the store's data (or zeros), mapped, and the access
restarted. The MMUs carry no fault handler of their own: faults are
resolved here, on the guest's ``translate`` and batch paths.

With ``anonymous_page_size``, every canonical page outside the regions is
anonymous memory (mapped user ``rwx`` under the guest's policy on first
touch, accessed and dirty from the start, as Linux sets A/D when it
handles an anonymous fault): the model ``vmopt simulate`` plays traces
through. :meth:`MemoryOptimizer.prefault` maps a batch's new anonymous
pages before the batch runs, so their faults cost no walk.

A vCPU runs in one address space at a time (:meth:`MemoryOptimizer.switch`;
see :mod:`vmopt.guest.spaces`): ASID 0 holds the regions, every other ASID
anonymous memory only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from vmopt import _core
from vmopt.batching import (
    Addrs,
    ArrayPath,
    BatchResult,
    as_addresses,
    bad_address,
    check_errors_mode,
    finish,
    is_address,
    record_failure,
    run_sequential,
)
from vmopt.errors import AddressError, ConfigError, PageFault, VmoptError, bad_input
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.fetching.loader import PageLoader
from vmopt.guest.migration import Migrator, NumaBalancer
from vmopt.guest.regions import NodeStats, Region, RegionMap
from vmopt.guest.spaces import CACHE_MASK, AddressSpace
from vmopt.guest.traffic import Traffic
from vmopt.numa.config import NumaConfig
from vmopt.numa.memory import NumaMemory
from vmopt.numa.policy import MemPolicy
from vmopt.paging.format import PagingFormat
from vmopt.paging.pagetable import PageTable
from vmopt.paging.twostage import TwoStage, back_guest_memory
from vmopt.paging.types import Perm
from vmopt.stores.base import BackingStore
from vmopt.tlb.config import PrefetchConfig, PwcConfig
from vmopt.tlb.mmu import ARRAY_CHUNK, RIGHTS_BIT, Mmu, StagedPages, TlbSpec
from vmopt.tlb.nested import NestedConfig
from vmopt.tlb.stats import TlbStats
from vmopt.units import format_size

__all__ = ["ANONYMOUS_PAGE_SIZES", "MemoryOptimizer"]

log = logging.getLogger(__name__)

#: Page sizes anonymous memory may use (4 KiB, 2 MiB, 1 GiB).
ANONYMOUS_PAGE_SIZES = (4096, 2 << 20, 1 << 30)
#: Page sizes a region may use.
REGION_PAGE_SIZES = (4096, 2 << 20)

U64 = npt.NDArray[np.uint64]

#: Anonymous memory's rights.
_RWX = Perm.R | Perm.W | Perm.X


class MemoryOptimizer:
    """A guest: NUMA physical memory, one address space, an MMU per vCPU.

    ``policy`` is the guest's default mempolicy (set_mempolicy); regions may
    override it (mbind). ``numa_balancing`` enables automatic NUMA
    balancing with Linux's two-stage filter, sampling one access in
    ``balance_period`` per vCPU. ``walk_ref_cycles`` is every MMU's cost of
    one PTE read. ``anonymous_page_size`` (None: off) makes every canonical
    page outside the regions anonymous memory of that page size (see the
    module docstring). ``nested`` (a host format: ``"ept"``, ``"ept_5level"``,
    ``"npt"``) puts the guest under a host stage that backs all its memory
    with ``nested_page_size`` pages (:func:`vmopt.paging.back_guest_memory`);
    every vCPU then walks both dimensions with ``nested_config``'s caches.
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
        walk_ref_cycles: int = 20,
        anonymous_page_size: int | None = None,
        nested: str | None = None,
        nested_page_size: int = 2 << 20,
        nested_config: NestedConfig | None = None,
    ) -> None:
        if not (numa is None or isinstance(numa, NumaConfig)):
            raise bad_input("MemoryOptimizer", numa=numa)
        if not (concurrency is None or isinstance(concurrency, ConcurrencyConfig)):
            raise bad_input("MemoryOptimizer", concurrency=concurrency)
        self.numa = numa or NumaConfig(1, 1 << 30)
        ncpus = 1 if cpus is None else cpus
        if not isinstance(ncpus, int) or isinstance(ncpus, bool) or ncpus < 1:
            raise ConfigError(f"cpus must be a positive integer, got {cpus!r}")
        if ncpus > self.numa.num_cpus:
            raise ConfigError(
                f"cpus={ncpus} but the NUMA topology places only {self.numa.num_cpus} vCPUs"
                " (raise cpus_per_node or list cpu_nodes)"
            )
        self.policy = _check_policy(policy, self.numa.num_nodes) or MemPolicy.local()
        if anonymous_page_size is not None and anonymous_page_size not in ANONYMOUS_PAGE_SIZES:
            raise ConfigError(
                f"anonymous_page_size must be 4 KiB, 2 MiB or 1 GiB, got {anonymous_page_size!r}"
            )
        self.anonymous_page_size = anonymous_page_size
        self.mem = NumaMemory(self.numa)
        self.page_table = PageTable(self.mem, paging)
        self.cpu_node = [self.numa.node_of_cpu(c) for c in range(ncpus)]
        self.mmus = [
            Mmu(self.page_table, tlb, prefetch, 0, pwc=pwc, walk_ref_cycles=walk_ref_cycles)
            for _ in range(ncpus)
        ]
        #: The host stage every vCPU walks through, with ``nested`` (a host format name).
        self.two_stage: TwoStage | None = None
        if nested is not None:
            self.two_stage = back_guest_memory(self.page_table, nested, nested_page_size)
            for mmu in self.mmus:
                mmu.set_nested(self.two_stage, nested_config)
        self._lock = threading.RLock()
        self._regions = RegionMap(self.page_table.fmt)
        #: Local/remote accesses and their cost, per node.
        self.traffic = Traffic(self.mem.node_base, self.numa.distances)  # type: ignore[arg-type]
        self.migrator = Migrator(self.mem, self.page_table, self._regions, self._lock)
        self.balancer = NumaBalancer(self.migrator, ncpus, balance_period)
        self.numa_balancing = numa_balancing
        self.concurrency = (concurrency or ConcurrencyConfig()).validate()
        self.store_fetches = 0
        self.limit_history: list[tuple[int, int]] = []
        #: Address spaces by ASID; 0 is the guest's own (its page_table, its regions).
        self._spaces = {0: AddressSpace.new(0, self.page_table, anonymous_page_size is not None)}
        #: The ASID each vCPU runs in.
        self._running = [0] * ncpus

    @property
    def cpus(self) -> int:
        """Number of vCPUs."""
        return len(self.mmus)

    @property
    def balance_period(self) -> int:
        """One access in this many is sampled per vCPU by the NUMA balancer."""
        return self.balancer.period

    @property
    def bytes_migrated(self) -> int:
        """Bytes moved between nodes so far (migrate, rebalance and the balancer)."""
        return self.migrator.bytes_migrated

    @property
    def balancing_migrations(self) -> int:
        """Pages the automatic NUMA balancer moved."""
        return self.balancer.migrations

    @property
    def anonymous_pages(self) -> int:
        """Anonymous pages mapped so far (one demand fault each)."""
        return sum(len(space.anonymous) for space in self._spaces.values())

    @property
    def address_spaces(self) -> int:
        """Address spaces made so far (ASID 0 and every ASID a vCPU was switched to)."""
        return len(self._spaces)

    def switch(self, cpu: int, asid: int) -> None:
        """Run vCPU ``cpu`` in address space ``asid`` (0..65535), made on first use.

        A context switch: the MMU loads the space's page table and tags new
        TLB entries with ``asid``; entries of other spaces stay cached. Any
        ASID but 0 needs anonymous memory (its pages are anonymous).
        """
        mmu = self._check_cpu(cpu)
        if isinstance(asid, bool) or not isinstance(asid, int) or not 0 <= asid <= 0xFFFF:
            raise ConfigError(f"asid must be an integer in [0, 65535], got {asid!r}")
        if self._running[cpu] == asid:
            return
        space = self._space(asid)
        mmu.switch(space.table, asid)
        self._running[cpu] = asid

    def _space(self, asid: int) -> AddressSpace:
        """Address space ``asid``, made on first use."""
        space = self._spaces.get(asid)
        if space is None:
            if self.two_stage is not None:
                raise ConfigError(
                    f"address space {asid}: a nested guest runs in address space 0 only"
                    " (several guest address spaces under one host stage are not modelled)"
                )
            if self.anonymous_page_size is None:
                raise ConfigError(
                    f"address space {asid} needs anonymous memory: build the guest with anonymous_page_size"
                )
            with self._lock:
                space = self._spaces.get(asid)
                if space is None:
                    table = PageTable(self.mem, self.page_table.fmt)
                    space = self._spaces[asid] = AddressSpace.new(asid, table, True)
        return space

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
        if page_size not in REGION_PAGE_SIZES:
            raise ConfigError(f"region page_size must be 4 KiB or 2 MiB, got {page_size!r}")
        if not isinstance(size, int) or size <= 0:
            raise ConfigError(f"region size must be a positive integer, got {size!r}")
        policy = _check_policy(policy, self.numa.num_nodes) or self.policy
        perm = Perm.parse(perms)
        why = self.page_table.fmt.check_perms(perm)
        if why:
            raise ConfigError(f"perms {perms!r}: {why}")
        size = -(-size // page_size) * page_size
        with self._lock:
            region = self._regions.reserve(size, page_size, policy, perm, user, store)
        log.debug(
            "region %#x+%s (%s pages, policy %s)",
            region.va,
            format_size(size),
            format_size(page_size),
            policy,
        )
        return region.va

    def region_of(self, va: int) -> Region | None:
        """The region containing ``va``, if any."""
        _check_int("MemoryOptimizer.region_of", va=va)
        return self._regions.find(va)

    def regions(self) -> Iterator[Region]:
        """Every region, in address order."""
        return iter(self._regions)

    def free(self, va: int) -> None:
        """Release the region that starts at ``va`` and every frame it holds."""
        _check_int("MemoryOptimizer.free", va=va)
        with self._lock:
            region = self._regions.remove(va)
            for index, pa in sorted(region.resident.items()):
                page_va = region.page_va(index)
                self.page_table.unmap(page_va, region.page_size)
                self.mem.free(pa, region.page_size)
                self.balancer.forget(page_va)
            region.resident.clear()

    # -- demand paging ----------------------------------------------------------------

    def _fault(
        self, mmu: Mmu, va: int, access: str, cpu: int, fault: BaseException, data: bytes | None
    ) -> int:
        """Resolve the error of a translation of ``va`` as a kernel's fault handler would; its pa.

        A restartable (not-present) fault in a region installs the page
        (``data``, staged by a concurrent batch, else the store's, else
        zeros); one outside the regions maps an anonymous page when the
        guest has anonymous memory. Anything else is raised.
        """
        if not isinstance(fault, PageFault) or not fault.restartable:
            raise fault
        space = self._spaces[self._running[cpu]]
        region = self._regions.find(va) if space.asid == 0 else None
        if region is None:
            if self.anonymous_page_size is None:
                raise fault
            with self._lock:
                if va // self.anonymous_page_size not in space.anonymous:
                    self._map_anonymous(space, va // self.anonymous_page_size, cpu)
            return mmu.restart(va, access, True)
        with self._lock:
            index = region.index_of(va)
            if index not in region.resident:  # else another vCPU (or a migration) got there first
                if data is None:
                    data = self._fetch(region, index)
                return self._install(mmu, va, access, cpu, region, index, data)
        return mmu.restart(va, access, True)

    def _install(
        self, mmu: Mmu, va: int, access: str, cpu: int, region: Region, index: int, data: bytes | None,
        *, faulted: bool = True,
    ) -> int:  # fmt: skip
        """Page ``index`` of ``region`` in one core call; the pa of ``va`` (caller holds the lock).

        ``faulted``: the translation of ``va`` has already faulted (else the
        core translates first and installs only on a restartable fault).
        """
        size = region.page_size
        page_va = region.page_va(index)
        nodes = self.mem.placement(region.policy, index, self.cpu_node[cpu])
        args = (va, access, True, page_va, size, nodes, data, region.perms, region.user)
        got: tuple[int, tuple[int, int] | None] | None
        try:
            if faulted:
                placed = mmu.install_page(*args)
                got = None if placed is None else (placed[0], placed[1:])
            else:
                got = mmu.translate_or_install(*args)
        except PageFault:
            # The page went in but the restarted access faulted (say, a write to a read-only
            # region): the frame is the region's all the same.
            leaf = self.page_table.lookup(page_va)
            if leaf is not None:
                region.resident[index] = leaf.page_pa
            raise
        if got is None:
            raise self.mem.out_of_frames(nodes, size, region.policy)
        pa, new = got
        if new is not None:
            frame, node = new
            self.mem.placed(nodes, node, size)
            region.resident[index] = frame
        return pa

    def _fetch(self, region: Region, index: int) -> bytes | None:
        """A page's initial contents from its region's store, synchronously (None: zeros)."""
        if region.store is None:
            return None
        pages_per = region.page_size // 4096
        chunks = [region.store.fetch_sync(index * pages_per + k) for k in range(pages_per)]
        self.store_fetches += pages_per
        return b"".join(chunks)

    def _map_anonymous(self, space: AddressSpace, page: int, cpu: int) -> int:
        """Map anonymous page ``page`` of ``space``, first touched by ``cpu``, accessed, dirty; its node."""
        size = self.anonymous_page_size
        assert size is not None  # callers check that the guest has anonymous memory
        va = page * size
        nodes = self.mem.placement(self.policy, page, self.cpu_node[cpu])
        placed = space.table.install(va, size, nodes, None, _RWX, True)
        if placed is None:
            raise self.mem.out_of_frames(nodes, size, self.policy)
        frame, node = placed
        self.mem.placed(nodes, node, size)
        space.table.walk(va, "w", True)  # the OS sets A and D when it handles the first touch
        space.anonymous[page] = frame
        return node

    def prefault(
        self, vas: U64, cpus: npt.NDArray[np.integer[Any]] | None = None, asid: int = 0
    ) -> list[int]:
        """Map the anonymous pages ``vas`` will touch first, in first-touch order, before they run.

        ``cpus[i]`` is the vCPU of access ``i`` (None: vCPU 0); each page goes
        where the guest's policy puts it for its first toucher's node.
        ``asid`` is the address space the accesses run in. Region pages and
        non-canonical addresses are left to the accesses themselves. The
        faults' own walks are not counted (the kernel's work); returns the
        pages mapped per node.
        """
        size = self.anonymous_page_size
        if size is None:
            raise ConfigError("prefault needs anonymous memory: build the guest with anonymous_page_size")
        if isinstance(asid, bool) or not isinstance(asid, int) or not 0 <= asid <= 0xFFFF:
            raise ConfigError(f"asid must be an integer in [0, 65535], got {asid!r}")
        space = self._space(asid)
        placed = [0] * self.numa.num_nodes
        if not len(vas):
            return placed
        # Most accesses touch pages mapped already: the direct-mapped cache of mapped page
        # numbers answers for them in one pass in the core. The rest (cache misses: new
        # pages, collisions, non-canonical addresses) go through the sort below.
        vas = np.ascontiguousarray(vas, dtype=np.uint64)
        shift = size.bit_length() - 1
        misses = _core.page_cache_misses(vas, shift, space.mapped_cache)
        if not len(misses):
            return placed
        pages = vas[misses] >> np.uint64(shift)
        # Misses come in runs on one page: one representative per run (a run shares its
        # page, so its canonicity and its first toucher are those of its first access).
        starts = np.flatnonzero(pages[1:] != pages[:-1])
        starts += 1
        starts = np.concatenate((np.zeros(1, starts.dtype), starts))
        canon = _canonical_mask(vas[misses[starts]], self.page_table.fmt.va_bits)
        if not canon.all():
            starts = starts[canon]
        reps = pages[starts]
        if not len(reps):
            return placed
        ordered = np.sort(reps)
        distinct = np.empty(len(ordered), np.bool_)
        distinct[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=distinct[1:])
        known = space.anonymous
        new: list[int] = []
        mapped: list[int] = []
        for page in ordered[distinct].tolist():
            (mapped if page in known else new).append(page)
        if new:
            runs = np.flatnonzero(np.isin(reps, np.array(new, dtype=np.uint64)))
            new_pages, first = np.unique(reps[runs], return_index=True)
            order = np.argsort(first, kind="stable")
            firsts = misses[starts[runs[first[order]]]]
            with self._lock:
                for page, where in zip(new_pages[order].tolist(), firsts.tolist(), strict=True):
                    if page in known or (asid == 0 and self._regions.find(page * size) is not None):
                        continue
                    placed[self._map_anonymous(space, page, 0 if cpus is None else int(cpus[where]))] += 1
                    mapped.append(page)
        if mapped:
            cached = np.array(mapped, dtype=np.uint64)
            space.mapped_cache[cached & np.uint64(CACHE_MASK)] = cached
        return placed

    # -- translation and access ---------------------------------------------------------

    def _check_cpu(self, cpu: int) -> Mmu:
        if not isinstance(cpu, int) or not 0 <= cpu < len(self.mmus):
            raise ConfigError(f"vCPU {cpu!r} does not exist (0..{len(self.mmus) - 1})")
        return self.mmus[cpu]

    def translate(self, va: int, access: str = "r", cpu: int = 0) -> int:
        """Translate through vCPU ``cpu``'s MMU, demand-paging as needed; count NUMA traffic."""
        return self.translate_fetched(va, None, access, cpu)

    def translate_fetched(self, va: int, data: bytes | None, access: str = "r", cpu: int = 0) -> int:
        """:meth:`translate`, where a first touch of a store-backed page installs ``data``.

        ``data`` is the page's contents fetched ahead (None: fetch it now):
        how a concurrent batch installs the pages it fetched.
        """
        mmu = self._check_cpu(cpu)
        pa = self._translate_fetched(mmu, va, data, access, cpu)
        self._account(pa, cpu, va)
        return pa

    def _translate_fetched(self, mmu: Mmu, va: int, data: bytes | None, access: str, cpu: int) -> int:
        # Regions live in address space 0 only.
        in_regions = data is not None and isinstance(va, int) and self._running[cpu] == 0
        region = self._regions.find(va) if in_regions else None
        if region is not None:
            # A fetched page not yet in: translate and install in one core call.
            with self._lock:
                index = region.index_of(va)
                if index not in region.resident:
                    return self._install(mmu, va, access, cpu, region, index, data, faulted=False)
        try:
            return mmu.translate(va, access, True)
        except PageFault as fault:
            return self._fault(mmu, va, access, cpu, fault, data)

    def _account(self, pa: int, cpu: int, va: int) -> None:
        home = self.cpu_node[cpu]
        self.traffic.count(pa, home)
        if self.numa_balancing:
            self.balancer.sample(va, pa, cpu, home)

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

        Writes exclude migration (they hold the guest's lock), so no byte
        lands in a frame that a migration has already copied.
        """
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise bad_input("MemoryOptimizer.write", "data must be a bytes-like object", data=data) from None
        with self._lock:
            pos = 0
            for pa, k in self._pieces(va, len(view), "w", cpu):
                self.mem.write(pa, view[pos : pos + k])
                pos += k

    def _pieces(self, va: int, n: int, access: str, cpu: int) -> list[tuple[int, int]]:
        _check_int("MemoryOptimizer.read" if access == "r" else "MemoryOptimizer.write", va=va)
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

    @overload
    def batch_access(
        self,
        addrs: Sequence[int],
        access: str = ...,
        cpu: int = ...,
        errors: Literal["raise"] = ...,
        *,
        log_failures: bool = ...,
    ) -> list[int]: ...
    @overload
    def batch_access(
        self,
        addrs: npt.NDArray[np.integer[Any]],
        access: str = ...,
        cpu: int = ...,
        errors: Literal["raise"] = ...,
        *,
        log_failures: bool = ...,
    ) -> U64: ...
    @overload
    def batch_access(
        self,
        addrs: Addrs,
        access: str = ...,
        cpu: int = ...,
        *,
        errors: Literal["collect"],
        log_failures: bool = ...,
    ) -> BatchResult: ...
    @overload
    def batch_access(
        self, addrs: Addrs, access: str = ..., cpu: int = ..., errors: str = ..., *, log_failures: bool = ...
    ) -> list[int] | U64 | BatchResult: ...
    def batch_access(
        self,
        addrs: Addrs,
        access: str = "r",
        cpu: int = 0,
        errors: str = "raise",
        *,
        log_failures: bool = True,
    ) -> list[int] | U64 | BatchResult:
        """Translate a batch in order; same results and statistics as ``translate`` in a loop.

        A list gives a list; a NumPy integer array gives a uint64 array and
        goes through the core's translate loop (faults, demand paging
        included, are finished one by one as ``translate`` finishes them).
        Faults on store-backed regions are served one after another.
        ``log_failures=False`` drops the WARNING a batch with failures logs
        (for callers that expect failures and count them, such as a trace
        replay).
        """
        if not isinstance(access, str):
            raise bad_input("MemoryOptimizer.batch_access", access=access)
        mmu = self._check_cpu(cpu)
        out: list[int] | U64 | BatchResult = run_sequential(
            lambda va: self.translate(va, access, cpu), addrs, errors, chunk_size=ARRAY_CHUNK,
            array_path=self._array_path(mmu, access, cpu), log_failures=log_failures,
        )  # fmt: skip
        return out

    def _array_path(self, mmu: Mmu, access: str, cpu: int) -> ArrayPath | None:
        """The core's array loop for this vCPU, with NUMA accounting, or None when it cannot apply."""
        if self.numa_balancing or not isinstance(access, str) or (access, True) not in RIGHTS_BIT:
            return None  # balancing samples per access; bad arguments fail per index
        home = self.cpu_node[cpu]

        def translate(vas: U64, out: U64) -> tuple[int, BaseException | None]:
            done, error = mmu.translate_into(vas, out, access, True)
            if done:
                self.traffic.count(out[:done], home)
            return done, error

        def resume(va: int, error: BaseException) -> int:
            pa = self._fault(mmu, va, access, cpu, error, None)
            self.traffic.count(pa, home)
            return pa

        return ArrayPath(translate, resume)

    async def batch_access_concurrent(
        self, addrs: Addrs, access: str = "r", cpu: int = 0, errors: str = "raise"
    ) -> list[int] | U64 | BatchResult:
        """Translate a batch, overlapping the store fetches its faults need.

        At most ``concurrency.max_concurrent`` fetches are in flight;
        duplicate faults on one page share one fetch; results come back in
        input order and equal the sequential path's, and so do the
        statistics. Small batches, or a disabled config, take the sequential
        path.
        """
        mode = check_errors_mode(errors)
        self._check_cpu(cpu)
        cfg = self.concurrency
        values, is_array = as_addresses(addrs)
        if not cfg.enabled or len(values) <= cfg.tlb_batch_threshold:
            return self.batch_access(values, access, cpu, errors)
        total = len(values)
        results: Any = np.zeros(total, dtype=np.uint64) if is_array else [None] * total
        failures: dict[int, BaseException] = {}
        for start in range(0, total, cfg.chunk_size):
            chunk = values[start : start + cfg.chunk_size]
            await self._run_concurrent_chunk(chunk, start, access, cpu, results, failures)
        done: list[int] | U64 | BatchResult = finish(results, failures, mode, total)
        return done

    def translate_fetched_batch(
        self, vas: npt.NDArray[np.integer[Any]], fetched: Mapping[int, bytes], access: str = "r",
        cpu: int = 0, errors: str = "raise",
    ) -> U64 | BatchResult:  # fmt: skip
        """Translate ``vas`` in order, installing ``fetched`` pages on their first touch.

        ``fetched`` maps the first virtual address of a region page to its
        contents, fetched ahead. The pages go in inside the core's translate
        loop, one call per run of addresses rather than one per page: how a
        concurrent batch installs what it fetched. Results and statistics
        equal :meth:`translate_fetched` in a loop.
        """
        mode = check_errors_mode(errors)
        mmu = self._check_cpu(cpu)
        name = "MemoryOptimizer.translate_fetched_batch"
        if not isinstance(vas, np.ndarray) or vas.dtype.kind not in "iu" or vas.ndim != 1:
            raise bad_input(name, "vas must be a 1-D integer array", vas=vas)
        if not isinstance(access, str) or (access, True) not in RIGHTS_BIT:
            raise bad_input(name, "access must be 'r', 'w' or 'x'", access=access)
        if not isinstance(fetched, Mapping):
            raise bad_input(name, fetched=fetched)
        values = np.ascontiguousarray(vas, dtype=np.uint64)
        staged: list[tuple[Region, int, bytes]] = []
        append = staged.append
        region: Region | None = None
        lo = hi = mask = shift = 0
        for page_va, data in fetched.items():
            if not (isinstance(page_va, int) and lo <= page_va < hi):
                region = self._regions.find(page_va) if isinstance(page_va, int) else None
                if region is None:
                    lo = hi = 0
                else:
                    lo, hi, mask = region.va, region.end, region.page_size - 1
                    shift = mask.bit_length()
            if region is None or (page_va - lo) & mask:
                shown = hex(page_va) if isinstance(page_va, int) else repr(page_va)
                raise AddressError(f"fetched page {shown} is not the start of a region page")
            append((region, (page_va - lo) >> shift, data))
        out = np.zeros(len(values), dtype=np.uint64)
        failures: dict[int, BaseException] = {}
        if self.numa_balancing:
            # Balancing samples every access: one at a time, as translate_fetched does.
            data_of = {(r.va, index): data for r, index, data in staged}
            for i, va in enumerate(values.tolist()):
                region = self._regions.find(va)
                page = None if region is None else data_of.get((region.va, region.index_of(va)))
                try:
                    out[i] = self.translate_fetched(va, page, access, cpu)
                except VmoptError as exc:
                    record_failure(failures, i, va, exc)
        else:
            self._translate_staged(mmu, values, out, 0, len(values), access, cpu, staged, {}, failures, 0)
        done: U64 | BatchResult = finish(out, failures, mode, len(values))
        return done

    def _staged_vas(self, chunk: Any, access: str) -> U64 | None:
        """``chunk`` as a uint64 array for the staged core loop, or None when that loop cannot apply."""
        if self.numa_balancing or (access, True) not in RIGHTS_BIT:
            return None  # balancing samples per access; bad arguments fail per index
        if isinstance(chunk, np.ndarray):
            return np.ascontiguousarray(chunk, dtype=np.uint64) if chunk.dtype.kind in "iu" else None
        if not all(is_address(va) for va in chunk):
            return None
        try:
            return np.array(chunk, dtype=np.uint64)
        except OverflowError:
            return None  # out-of-range entries fail at their own index

    def _translate_staged(
        self, mmu: Mmu, vas: U64, out: U64, pos: int, end: int, access: str, cpu: int,
        staged: list[tuple[Region, int, bytes]], failed: dict[tuple[int, int], BaseException],
        failures: dict[int, BaseException], base: int,
    ) -> None:  # fmt: skip
        """Translate ``vas[pos:end]`` into ``out``, installing ``staged`` pages on first touch.

        ``staged`` loses the pages that go in (or that are already resident);
        a not-present fault on a page in ``failed`` records that page's fetch
        error; any other stop is finished as :meth:`translate` finishes it.
        Failures go to ``failures`` at ``base + index``, their ``out`` left 0.
        Pages go where :meth:`translate_fetched` would put them: placements
        are computed ahead and again after any install that fell back (which
        moves the tie-breaking rotation), and a region whose policy follows
        usage is installed through the fault path, with its fetched data.
        """
        home = self.cpu_node[cpu]
        if self._running[cpu] != 0:
            staged = []  # regions live in address space 0 only
        with self._lock:
            alive: dict[int, bool] = {}
            live: list[tuple[Region, int, bytes]] = []
            for page in staged:
                region = page[0]
                ok = alive.get(id(region))
                if ok is None:
                    ok = alive[id(region)] = self._regions.find(region.va) is region
                if ok and page[1] not in region.resident:
                    live.append(page)
            held = {(r.va, i): d for r, i, d in live if r.policy.period is None}
            if held:
                live = [s for s in live if s[0].policy.period is not None]
            pages = self._staged_pages(live, home)
            while pos < end:
                done, error, no_room, fell_back, slots, frames, nodes = mmu.translate_staged(
                    vas[pos:end], out[pos:end], access, True, pages
                )
                if slots:
                    for slot, frame in zip(slots, frames, strict=True):
                        region, index, _ = live[slot]
                        region.resident[index] = frame
                    # Only the last page placed can have fallen back (Mmu.translate_staged).
                    wanted = pages.groups[pages.group[slots[-1]]][1]
                    if nodes[-1] != wanted[0]:  # placed() moves the rotation on fallbacks only
                        self.mem.placed(wanted, nodes[-1], live[slots[-1]][0].page_size)
                    if len(slots) == len(live):
                        live = []
                        pages = StagedPages([], [], [], [])
                    else:
                        gone = set(slots)
                        live = [s for k, s in enumerate(live) if k not in gone]
                        pages = pages.without(gone)
                if done:
                    self.traffic.count(out[pos : pos + done], home)
                pos += done
                if fell_back:
                    pages = self._staged_pages(live, home)  # the rotation moved
                    continue
                if pos == end:
                    break
                va = int(vas[pos])
                fallbacks = self.mem.fallbacks
                try:
                    if no_room is not None:
                        region = live[no_room][0]
                        wanted = pages.groups[pages.group[no_room]][1]
                        raise self.mem.out_of_frames(wanted, region.page_size, region.policy)
                    assert error is not None  # the core stopped early for a reason
                    out[pos] = self._resume_staged(mmu, va, access, cpu, error, failed, held)
                except VmoptError as exc:
                    out[pos] = 0
                    record_failure(failures, base + pos, va, exc)
                finally:
                    if self.mem.fallbacks != fallbacks:
                        pages = self._staged_pages(live, home)  # the fault's install moved the rotation
                pos += 1
            if held:
                live += [
                    (r, i, held[(r.va, i)]) for r, i, _ in staged if (r.va, i) in held and i not in r.resident
                ]
            staged[:] = live

    def _staged_pages(self, live: list[tuple[Region, int, bytes]], home: int) -> StagedPages:
        """``live`` as the core's staged pages, each with the nodes :meth:`_install` would try.

        Pages ``period`` apart in a region want the same nodes (see
        :attr:`MemPolicy.period`), so placement runs once per class, and
        the pages of a class share one group.
        """
        vas: list[int] = []
        data: list[bytes | None] = []
        group: list[int] = []
        groups: list[tuple[int, list[int], int, bool]] = []
        classes_of: dict[int, dict[int, int]] = {}
        last: Region | None = None
        va = size = period = 0
        classes: dict[int, int] = {}
        for region, index, page in live:
            if region is not last:
                last = region
                va, size = region.va, region.page_size
                assert region.policy.period is not None  # usage-following regions are not staged
                period = region.policy.period
                classes = classes_of.setdefault(id(region), {})
            g = classes.get(index % period)
            if g is None:
                nodes = self.mem.placement(region.policy, index, home)
                g = classes[index % period] = len(groups)
                groups.append((size, nodes, int(region.perms), region.user))
            vas.append(va + index * size)
            data.append(page)
            group.append(g)
        return StagedPages(vas, data, group, groups)

    def _resume_staged(
        self, mmu: Mmu, va: int, access: str, cpu: int, error: VmoptError,
        failed: dict[tuple[int, int], BaseException], held: dict[tuple[int, int], bytes],
    ) -> int:  # fmt: skip
        """Finish a staged loop's stop at ``va`` as :meth:`translate` would; its pa."""
        data = None
        if isinstance(error, PageFault) and error.restartable:
            region = self._regions.find(va)
            if region is not None:
                key = (region.va, region.index_of(va))
                if key in failed:
                    raise failed[key]
                data = held.get(key)
        pa = self._fault(mmu, va, access, cpu, error, data)
        self._account(pa, cpu, va)
        return pa

    def _pages_to_fetch(self, chunk: Any) -> list[tuple[Region, int, int]]:
        """``(region, index, first touch)`` of the store-backed, non-resident pages ``chunk`` faults on.

        In first-touch order: the index in ``chunk`` of each page's first access.
        """
        out: list[tuple[Region, int, int]] = []
        seen: set[tuple[int, int]] = set()
        last_page = -1
        for k, va in enumerate(chunk):
            if not is_address(va):
                continue
            va = int(va)
            if va >> 12 == last_page:
                continue
            last_page = va >> 12
            region = self._regions.find(va)
            if region is None or region.store is None:
                continue
            index = region.index_of(va)
            key = (region.va, index)
            if key in seen or index in region.resident:
                continue
            seen.add(key)
            out.append((region, index, k))
        return out

    async def _run_concurrent_chunk(
        self, chunk: Any, start: int, access: str, cpu: int, results: Any,
        failures: dict[int, BaseException],
    ) -> None:  # fmt: skip
        loader = PageLoader(self.concurrency)
        plan = self._pages_to_fetch(chunk)
        runs = []
        for region, index, _ in plan:
            assert region.store is not None  # _pages_to_fetch plans store-backed pages only
            pages_per = region.page_size // 4096
            runs.append((region.store.fetch, index * pages_per, pages_per))
        loads = loader.start(runs)
        tasks = {(r.va, i): load for (r, i, _), load in zip(plan, loads, strict=True)}
        try:
            vas = self._staged_vas(chunk, access)
            if vas is None:
                await self._install_per_access(chunk, start, access, cpu, results, failures, tasks)
            else:
                await self._install_staged(vas, plan, loads, start, access, cpu, results, failures)
        finally:
            await loader.stop()
            for load, (_, _, count) in zip(loads, runs, strict=True):
                if load.done() and not load.cancelled() and load.exception() is None:
                    self.store_fetches += count
                else:
                    load.cancel()
            if loader.history is not None:
                self.limit_history = loader.history

    async def _install_staged(
        self, vas: U64, plan: list[tuple[Region, int, int]], order: Sequence[asyncio.Future[bytes]],
        start: int, access: str, cpu: int, results: Any, failures: dict[int, BaseException],
    ) -> None:  # fmt: skip
        """Run ``vas`` through the core in runs that end where a fetch is still in flight.

        Each run installs the pages fetched so far in one core call; between
        runs the loop yields, so finished fetches free their slots for the
        next ones while the installs go on.
        """
        mmu = self.mmus[cpu]
        out = np.zeros(len(vas), dtype=np.uint64)
        staged: list[tuple[Region, int, bytes]] = []
        failed: dict[tuple[int, int], BaseException] = {}
        mine: dict[int, BaseException] = {}
        j = pos = 0
        while pos < len(vas):
            while j < len(plan) and order[j].done():
                region, index, _ = plan[j]
                exc = order[j].exception()
                if exc is None:
                    staged.append((region, index, order[j].result()))
                elif isinstance(exc, VmoptError):
                    failed[(region.va, index)] = exc
                else:
                    raise exc
                j += 1
            end = plan[j][2] if j < len(plan) else len(vas)
            if end == pos:
                await asyncio.wait([order[j]])
                continue
            self._translate_staged(mmu, vas, out, pos, end, access, cpu, staged, failed, mine, start)
            pos = end
            await asyncio.sleep(0)
        if isinstance(results, np.ndarray):
            results[start : start + len(vas)] = out
        else:
            results[start : start + len(vas)] = out.tolist()
            for idx in mine:
                results[idx] = None
        failures.update(mine)

    async def _install_per_access(
        self, chunk: Any, start: int, access: str, cpu: int, results: Any,
        failures: dict[int, BaseException], tasks: Mapping[tuple[int, int], asyncio.Future[bytes]],
    ) -> None:  # fmt: skip
        """The chunk one access at a time (balancing, bad entries): installs in input order."""
        installed = 0
        for k, va in enumerate(chunk):
            idx = start + k
            if not is_address(va):
                record_failure(failures, idx, va, bad_address(idx, va))
                continue
            va = int(va)
            data = None
            region = self._regions.find(va) if tasks else None
            task = None if region is None else tasks.get((region.va, region.index_of(va)))
            if task is not None:
                try:
                    data = await task
                except VmoptError as exc:
                    record_failure(failures, idx, va, exc)
                    continue
            try:
                results[idx] = self.translate_fetched(va, data, access, cpu)
            except VmoptError as exc:
                record_failure(failures, idx, va, exc)
                continue
            if task is not None:
                installed += 1
                if installed % 4 == 0:
                    # Let finished fetches release their slots so the
                    # next ones start while this loop installs pages.
                    await asyncio.sleep(0)

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
        """Per node: size, used bytes, data pages (4 KiB units), local/remote accesses, access cost."""
        pages = [0] * self.numa.num_nodes
        for region in self._regions:
            for pa in region.resident.values():
                pages[self.mem.node_of(pa)] += region.page_size // 4096
        if self.anonymous_page_size is not None:
            for pa in (pa for space in self._spaces.values() for pa in space.anonymous.values()):
                pages[self.mem.node_of(pa)] += self.anonymous_page_size // 4096
        t = self.traffic
        return [
            NodeStats(
                n,
                self.numa.node_sizes[n],
                self.mem.used_bytes(n),
                pages[n],
                t.local[n],
                t.remote[n],
                t.cost[n],
            )
            for n in range(self.numa.num_nodes)
        ]

    def access_cost(self) -> int:
        """Distance-weighted cost of every access so far (10 per local access)."""
        return sum(self.traffic.cost)

    # -- migration ------------------------------------------------------------------------

    def migrate(self, va: int, length: int, node: int) -> int:
        """Move the resident pages of ``[va, va+length)`` to ``node``; return bytes moved.

        Each page is copied, its PTE repointed and every vCPU's TLB shot down
        before the old frame is freed, so contents are identical byte for
        byte and no stale translation survives. Raises before moving
        anything if ``node`` lacks room for all of it.
        """
        _check_int("MemoryOptimizer.migrate", va=va, length=length, node=node)
        return self.migrator.migrate(va, length, node)

    def rebalance(self) -> int:
        """The report's rebalance, made real: even out node usage; return bytes moved.

        Pages move from the most to the least used node (by fraction in use)
        while that narrows the gap; regions under ``bind`` stay put.
        """
        return self.migrator.rebalance()


def _check_policy(policy: object, num_nodes: int) -> MemPolicy | None:
    """``policy`` if it is a MemPolicy valid for ``num_nodes`` nodes (None passes)."""
    if policy is None:
        return None
    if not isinstance(policy, MemPolicy):
        raise ConfigError(f"policy must be a MemPolicy (MemPolicy.parse reads text), got {policy!r}")
    policy.check(num_nodes)
    return policy


def _canonical_mask(addrs: U64, va_bits: int) -> npt.NDArray[np.bool_]:
    """Which of ``addrs`` are canonical for a ``va_bits``-bit format (sign-extended from bit va_bits-1)."""
    top = addrs >> np.uint64(va_bits - 1)
    mask: npt.NDArray[np.bool_] = (top == 0) | (top == np.uint64((1 << (65 - va_bits)) - 1))
    return mask


def _check_int(call: str, **args: object) -> None:
    """Raise the :class:`~vmopt.errors.InputError` of ``call`` unless every argument is an int."""
    if not all(isinstance(v, int) for v in args.values()):
        raise bad_input(call, **args)
