"""The MMU of one virtual CPU: TLB hierarchy, then page walk, then fill.

Lookups go L1 first. An L(n) hit fills the levels above it; a miss
everywhere walks the page table and fills every level (non-inclusive, as on
most x86 cores: evictions are not propagated). A prefetched translation is
installed in the last level only, marked as prefetched until its first
demand hit. Rights are checked on hits too, from a mask the paging format
computes at fill time, and a write hit on a clean entry re-walks to set D.

A :class:`SplitL1` first level is an ITLB and a DTLB: a fetch ("x") walks
the path ITLB, L2, ...; a read or write DTLB, L2, .... Each path is the
hierarchy above for its accesses (an L(n) hit fills the path's levels
above n, a walk fills the whole path), so a fill reaches the L1 of the
side that missed only. Invalidations, faults' drops and counter resets
reach both L1s. Prefetches go to the last level (the DTLB when a split L1
is the only level).

Every MMU subscribes to its page table, so unmap/protect/remap remove
stale entries (TLB, page-walk cache, queued prefetches) from every vCPU
before they return: the shootdown an OS does with IPIs. With
``shootdown=False`` that is left to the caller, as on real hardware.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from reference.tlb.prefetch import make_prefetcher
from reference.tlb.pwc import PageWalkCache
from reference.tlb.tlb import GLOBAL_ASID, TlbEntry, TlbLevel
from vmopt.errors import ConfigError
from vmopt.paging.types import PageFault, Perm, Translation
from vmopt.tlb.config import DEFAULT_TLB, PrefetchConfig, PwcConfig, SplitL1, TlbConfig, name_levels
from vmopt.tlb.stats import MmuStats, TlbStats

if TYPE_CHECKING:
    from vmopt.batch.concurrency import ConcurrencyConfig

#: Any page table with ``walk``, ``subscribe`` and ``fmt`` (the product's or the reference's).
PageTable = Any

__all__ = ["RIGHTS_BIT", "AsyncPrefetchingTlb", "Mmu", "TlbSpec"]

log = logging.getLogger(__name__)

#: Bit of an entry's rights mask for each (access, user) pair.
RIGHTS_BIT: Final = {
    ("r", False): 1, ("w", False): 2, ("x", False): 4,
    ("r", True): 8, ("w", True): 16, ("x", True): 32,
}  # fmt: skip

TlbSpec = TlbConfig | Sequence[TlbConfig | Sequence[TlbConfig] | SplitL1] | None

#: ``handler(va, access, user) -> bool``: called on a not-present fault; True
#: if it mapped the page (demand paging), so the walk is retried once.
FaultHandler = Callable[[int, str, bool], bool]


def _levels(spec: TlbSpec) -> tuple[TlbLevel | None, list[TlbLevel]]:
    """``(ITLB or None, levels)``; with a split L1, ``levels[0]`` is the DTLB."""
    if spec is None:
        spec = DEFAULT_TLB_LEVELS
    if isinstance(spec, TlbConfig):
        return None, [TlbLevel(spec)]
    items = list(spec)
    itlb = None
    first = "l1"
    if items and isinstance(items[0], SplitL1):
        split = items[0].named()
        itlb = TlbLevel(list(split.itlb))
        items[0] = list(split.dtlb)
        first = "l1d"
    if any(isinstance(item, SplitL1) for item in items):
        raise ConfigError("only the first TLB level can be a SplitL1")
    # Unnamed arrays are named by position (l1, l2, ...; issue 11).
    configs = name_levels([[item] if isinstance(item, TlbConfig) else list(item) for item in items], first)
    levels = [TlbLevel(item) for item in configs]
    names = [lv.name for lv in ([itlb] if itlb else []) + levels]
    if len(set(names)) != len(names):
        raise ConfigError(f"TLB level names must be distinct, got {names}")
    return itlb, levels


#: Default hierarchy: split L1 (4 KiB / 2 MiB / 1 GiB) and a unified L2.
DEFAULT_TLB_LEVELS: Final = [
    [DEFAULT_TLB[0], DEFAULT_TLB[1], TlbConfig(4, 4, "lru", (1 << 30,), 1, "l1_1g")],
    [DEFAULT_TLB[2], TlbConfig(16, 4, "lru", (1 << 30,), 8, "l2_1g")],
]


class Mmu:
    """Address translation for one vCPU over ``page_table``.

    ``tlb`` is a TlbConfig, or a list of levels, L1 first, each a TlbConfig
    or a list of split arrays. ``prefetch`` is a PrefetchConfig, or a kind
    name ("none", "next_page", "stride"). ``pwc`` enables a page-walk cache.
    ``walk_ref_cycles`` is the modelled cost of one PTE read.
    """

    def __init__(
        self,
        page_table: PageTable,
        tlb: TlbSpec = None,
        prefetch: PrefetchConfig | str | None = None,
        asid: int = 0,
        *,
        pwc: PwcConfig | bool | None = None,
        shootdown: bool = True,
        walk_ref_cycles: int = 20,
        fault_handler: FaultHandler | None = None,
    ) -> None:
        self._check_asid(asid)
        if isinstance(prefetch, str):
            prefetch = PrefetchConfig(prefetch)
        self.prefetch_config = prefetch or PrefetchConfig()
        self.itlb, self.levels = _levels(tlb)
        #: The lookup path of fetches: the ITLB of a split L1, then the shared levels.
        self._inst_path = self.levels if self.itlb is None else [self.itlb, *self.levels[1:]]
        self.pwc = PageWalkCache(PwcConfig() if pwc is True else pwc, page_table.fmt.levels) if pwc else None
        if not isinstance(walk_ref_cycles, int) or walk_ref_cycles < 0:
            raise ConfigError(f"walk_ref_cycles must be a non-negative integer, got {walk_ref_cycles!r}")
        self.walk_ref_cycles = walk_ref_cycles
        self.stats = MmuStats()
        self._share_prefetch_stats()
        self.fault_handler = fault_handler
        self.shootdown = shootdown
        self._lock = threading.RLock()
        self._prefetcher = make_prefetcher(self.prefetch_config)
        self._queue: deque[int] = deque()
        self._rights_cache: dict[tuple[int, bool], int] = {}
        self.page_table = page_table
        self.asid = asid
        self._last = self.levels[-1]
        self._subscribed: weakref.WeakSet[PageTable] = weakref.WeakSet()
        if shootdown:
            self._subscribe(page_table)

    def _subscribe(self, page_table: PageTable) -> None:
        # Tables stay subscribed after a switch away: their ASID's entries stay
        # cached, so their unmaps must still shoot this MMU down.
        if page_table not in self._subscribed:
            self._subscribed.add(page_table)
            page_table.subscribe(self._on_invalidate)

    def all_levels(self) -> list[TlbLevel]:
        """Every level, the ITLB of a split L1 first."""
        return self.levels if self.itlb is None else [self.itlb, *self.levels]

    def _path(self, access: str) -> list[TlbLevel]:
        """The levels ``access`` looks up, L1 first."""
        return self._inst_path if access == "x" else self.levels

    def _share_prefetch_stats(self) -> None:
        for level in self.all_levels():
            for arr in level.arrays:
                arr.prefetch_stats = self.stats.prefetch

    @staticmethod
    def _check_asid(asid: int) -> None:
        if not isinstance(asid, int) or not 0 <= asid < GLOBAL_ASID:
            raise ConfigError(f"asid must be an integer in [0, 65535], got {asid!r}")

    def __repr__(self) -> str:
        return f"Mmu({self.page_table!r}, asid={self.asid}, levels={[lv.name for lv in self.levels]})"

    # -- context switch -----------------------------------------------------------

    def switch(self, page_table: PageTable, asid: int | None = None, *, flush: bool = False) -> None:
        """Load a new address space (a CR3 or satp write).

        Entries of other ASIDs stay cached, as with PCIDs; pass ``flush=True``
        (or reuse an ASID) to drop the old ones.
        """
        self._check_asid(self.asid if asid is None else asid)
        if self.shootdown:
            # Outside self._lock: PageTable.unmap holds the table's lock while it
            # calls _on_invalidate, which takes ours.
            self._subscribe(page_table)
        with self._lock:
            new_asid = self.asid if asid is None else asid
            if flush or new_asid == self.asid:
                self.flush_asid(new_asid)
            self.page_table = page_table
            self.asid = new_asid
            self._queue.clear()
            if self._prefetcher is not None:
                self._prefetcher.reset()

    # -- translation ----------------------------------------------------------------

    def translate(self, va: int, access: str = "r", user: bool = False) -> int:
        """The physical address of ``va``; raises :class:`PageFault`."""
        bit = RIGHTS_BIT.get((access, user))
        if bit is None:
            from vmopt.paging.types import parse_access

            parse_access(access)
            raise ConfigError(f"user must be a bool, got {user!r}")
        with self._lock:
            stats = self.stats
            stats.translations += 1
            asid = self.asid
            i = 0
            path = self._path(access)
            for level in path:
                e = level.lookup(va, asid)
                if e is None:
                    i += 1
                    continue
                if e.prefetched and not e.used:
                    e.used = True
                    level.stats.prefetch_useful += 1
                    stats.prefetch.useful += 1
                if not e.rights & bit:
                    self._hit_fault(va, access, user, e)
                if access == "w" and not e.dirty:
                    return self._dirty_rewalk(va, user)
                if i:
                    self._fill(path[:i], e.page_pa, 1 << e.shift, e, va)
                return e.page_pa | (va & ((1 << e.shift) - 1))
            try:
                return self._miss(va, access, user).pa
            except PageFault as exc:
                handler = self.fault_handler
                if exc.cause != "not_present" or handler is None:
                    raise
                fault = exc
        # Demand paging: the OS's handler runs without this MMU's lock, as a
        # kernel's fault path runs with interrupts on, so a shootdown from a
        # thread that holds the OS's locks can still reach this vCPU.
        if not handler(va, access, user):
            raise fault
        with self._lock:
            # The access restarts: it walks again (the same TLB miss, counted once).
            self.stats.demand_faults += 1
            t = self._walk(va, access, user, restart=True)
            self._after_walk(t, va, access)
            return t.pa

    def _hit_fault(self, va: int, access: str, user: bool, e: TlbEntry) -> None:
        # x86 and RISC-V both drop the entry that caused a fault.
        self.stats.faults += 1
        for level in self.all_levels():
            level.flush_va(va, self.asid)
        raise PageFault(va, access, "protection", e.level, user=user)

    def _dirty_rewalk(self, va: int, user: bool) -> int:
        self.stats.dirty_walks += 1
        # Not a TLB miss: counted in dirty_walks only, so walks == misses.
        t = self._walk(va, "w", user, restart=True)
        self._fill_all(t, va, "w")
        return t.pa

    def _miss(self, va: int, access: str, user: bool) -> Translation:
        t = self._walk(va, access, user)
        self._after_walk(t, va, access)
        return t

    def _after_walk(self, t: Translation, va: int, access: str) -> None:
        """Fill ``access``'s path with a demand walk's result and let the prefetcher react."""
        self._fill_all(t, va, access)
        if self._prefetcher is not None:
            targets = self._prefetcher.on_miss(va, t.page_size)
            if targets:
                self._request_prefetch(targets)

    def _walk(self, va: int, access: str, user: bool, *, restart: bool = False) -> Translation:
        stats = self.stats
        if not restart:
            stats.walks += 1
        top = self.page_table.fmt.levels - 1
        try:
            t = self.page_table.walk(va, access, user)
        except PageFault as fault:
            stats.faults += 1
            if fault.level is not None:
                refs = top - fault.level + 1 - self._pwc_skip(va, fault.level)
                stats.walk_memory_refs += refs
                stats.cycles += refs * self.walk_ref_cycles
            raise
        refs = t.memory_refs - self._pwc_skip(va, t.level)
        stats.walk_memory_refs += refs
        stats.cycles += refs * self.walk_ref_cycles
        return t

    def _pwc_skip(self, va: int, stop_level: int) -> int:
        pwc = self.pwc
        if pwc is None:
            return 0
        self.stats.pwc_lookups += 1
        skip = pwc.skipped_refs(va, self.asid, stop_level)
        if skip:
            self.stats.pwc_hits += 1
        self.stats.cycles += pwc.config.latency
        return skip

    def _rights(self, t: Translation | tuple[Perm, bool]) -> int:
        perms, page_user = (t.perms, t.user) if isinstance(t, Translation) else t
        key = (int(perms), page_user)
        mask = self._rights_cache.get(key)
        if mask is None:
            allows = self.page_table.fmt.allows
            mask = 0
            for (access, user), bit in RIGHTS_BIT.items():
                if allows(perms, page_user, access, user):
                    mask |= bit
            self._rights_cache[key] = mask
        return mask

    def _fill_all(self, t: Translation, va: int, access: str) -> None:
        entry = TlbEntry(0, 12, 0, t.page_pa, self._rights(t), t.dirty, t.level)
        entry.asid = GLOBAL_ASID if t.global_ else self.asid
        self._fill(self._path(access), t.page_pa, t.page_size, entry, va)

    def _fill(
        self, levels: Sequence[TlbLevel], page_pa: int, page_size: int, proto: TlbEntry, va: int,
        *, prefetched: bool = False,
    ) -> None:  # fmt: skip
        """Install a translation of ``va``'s page in ``levels`` (splintering as each level needs)."""
        for level in levels:
            found = level.array_for(page_size)
            if found is None:
                continue
            arr, shift = found
            size = 1 << shift
            pa = page_pa + (va & (page_size - 1) & ~(size - 1))
            e = TlbEntry(va >> shift, shift, proto.asid, pa, proto.rights, proto.dirty, proto.level)
            e.prefetched = prefetched
            arr.insert(e)

    # -- batches ---------------------------------------------------------------------

    def translate_batch(
        self, addrs: Any, access: str = "r", user: bool = False, errors: str = "raise"
    ) -> Any:
        """Translate a batch in order (see :mod:`vmopt.batch.engine`): ``translate`` in a loop."""
        from vmopt.batch.engine import run_sequential

        return run_sequential(lambda va: self.translate(va, access, user), addrs, errors)

    async def translate_batch_concurrent(
        self, addrs: Any, access: str = "r", user: bool = False, errors: str = "raise",
        *, threshold: int = 4, chunk_size: int = 10_000,
    ) -> Any:  # fmt: skip
        """The report's concurrent batch: resident translations are CPU-bound, so this runs
        them in order, yielding to the event loop between chunks; batches of
        ``threshold`` or fewer take the sequential path."""
        from vmopt.batch.engine import as_addresses, run_chunked_async

        values, _ = as_addresses(addrs)
        if len(values) <= threshold:
            return self.translate_batch(addrs, access, user, errors)
        return await run_chunked_async(
            lambda va: self.translate(va, access, user), addrs, errors, chunk_size=chunk_size
        )

    # -- prefetching ---------------------------------------------------------------

    def _request_prefetch(self, targets: list[int]) -> None:
        pf = self.stats.prefetch
        pf.requested += len(targets)
        if self.prefetch_config.mode == "immediate":
            for target in targets:
                self._prefetch(target)
            return
        limit = self.prefetch_config.queue_limit
        for target in targets:
            if len(self._queue) >= limit:
                self._queue.popleft()
                pf.overflowed += 1
            self._queue.append(target)

    def _prefetch(self, va: int) -> bool:
        pf = self.stats.prefetch
        asid = self.asid
        if self._last.peek(va, asid) is not None:
            pf.redundant += 1
            return False
        pf.issued += 1
        top = self.page_table.fmt.levels - 1
        try:
            t = self.page_table.walk(va, "p")
        except PageFault as fault:
            pf.dropped += 1
            if fault.level is not None:
                pf.walk_memory_refs += top - fault.level + 1
            return False
        pf.walk_memory_refs += t.memory_refs
        entry = TlbEntry(
            0, 12, GLOBAL_ASID if t.global_ else asid, t.page_pa, self._rights(t), t.dirty, t.level
        )
        self._fill([self._last], t.page_pa, t.page_size, entry, va, prefetched=True)
        pf.installed += 1
        return True

    def process_prefetch(self) -> int:
        """Drain the deferred prefetch queue; return how many translations were installed."""
        with self._lock:
            installed = 0
            while self._queue:
                if self._prefetch(self._queue.popleft()):
                    installed += 1
            return installed

    @property
    def pending_prefetches(self) -> int:
        """Requests waiting in the deferred queue."""
        return len(self._queue)

    # -- invalidation ---------------------------------------------------------------

    def _on_invalidate(self, va: int, size: int) -> None:
        """Shootdown from the page table: drop every trace of the range, every ASID."""
        with self._lock:
            self.stats.shootdowns += 1
            for level in self.all_levels():
                level.flush_range(va, size, None)
            if self.pwc is not None:
                self.pwc.flush()
            if self._queue:
                end = va + size
                self._queue = deque(t for t in self._queue if not va <= t < end)

    def flush(self) -> None:
        """Invalidate every TLB and PWC entry (a CR3 write without PCIDs)."""
        with self._lock:
            for level in self.all_levels():
                level.flush()
            if self.pwc is not None:
                self.pwc.flush()

    def flush_asid(self, asid: int) -> None:
        """Invalidate one ASID's non-global entries (INVPCID single-context)."""
        with self._lock:
            for level in self.all_levels():
                level.flush_asid(asid)
            if self.pwc is not None:
                self.pwc.flush(asid)

    def invlpg(self, va: int) -> None:
        """Invalidate the translations of ``va`` for the current ASID, and global ones (INVLPG)."""
        with self._lock:
            for level in self.all_levels():
                level.flush_va(va, self.asid)
            if self.pwc is not None:
                self.pwc.flush(self.asid)

    def flush_range(self, va: int, size: int, asid: int | None = None) -> None:
        """Invalidate ``[va, va+size)`` for ``asid`` (None: every ASID), like sfence.vma per page."""
        with self._lock:
            for level in self.all_levels():
                level.flush_range(va, size, asid)
            if self.pwc is not None:
                self.pwc.flush(asid)

    def cached(self, va: int) -> bool:
        """True if any level holds a translation of ``va`` for the current ASID."""
        with self._lock:
            return any(level.peek(va, self.asid) is not None for level in self.all_levels())

    # -- statistics -----------------------------------------------------------------

    def tlb_stats(self) -> list[TlbStats]:
        """One :class:`TlbStats` per level, as :meth:`all_levels` (live objects)."""
        return [level.stats for level in self.all_levels()]

    def total_stats(self) -> TlbStats:
        """The hierarchy as one TLB: lookups = translations, hits = served by any level, misses = walks.

        Dirty re-walks are hits (the TLB had the entry); they show in
        ``stats.dirty_walks``. ``cycles`` includes lookups, walks and the PWC.
        """
        s = self.stats
        levels = self.tlb_stats()
        # The last level of each path: the shared one, or both L1s when they are all.
        last = levels[-2:] if self.itlb is not None and len(self.levels) == 1 else levels[-1:]
        misses = sum(lv.misses for lv in last)
        total = TlbStats(name="total", lookups=s.translations, hits=s.translations - misses, misses=misses)
        total.evictions = sum(lv.evictions for lv in levels)
        total.invalidations = sum(lv.invalidations for lv in levels)
        total.cycles = sum(lv.cycles for lv in levels) + s.cycles
        total.prefetch_fills = sum(lv.prefetch_fills for lv in levels)
        total.prefetch_useful = sum(lv.prefetch_useful for lv in levels)
        total.prefetch_useless = sum(lv.prefetch_useless for lv in levels)
        return total

    def reset_stats(self) -> None:
        """Zero every counter (TLB contents stay)."""
        with self._lock:
            self.stats = MmuStats()
            for level in self.all_levels():
                fresh = TlbStats(name=level.name)
                level.stats = fresh
                for arr in level.arrays:
                    arr.stats = fresh
            self._share_prefetch_stats()


class AsyncPrefetchingTlb(Mmu):
    """The design report's name: an MMU with a next-page prefetcher in deferred mode.

    Requests queue on misses; :meth:`process_prefetch` installs them.
    ``concurrency`` (a :class:`vmopt.ConcurrencyConfig`) sets how
    :meth:`translate_batch_concurrent` batches: disabled or small batches
    (``tlb_batch_threshold``) go sequentially, large ones in ``chunk_size``
    chunks.
    """

    def __init__(
        self,
        page_table: PageTable,
        tlb: TlbSpec = None,
        prefetch: PrefetchConfig | str | None = None,
        asid: int = 0,
        *,
        concurrency: ConcurrencyConfig | None = None,
        **kwargs: Any,
    ) -> None:
        from vmopt.batch.concurrency import ConcurrencyConfig

        if prefetch is None:
            prefetch = PrefetchConfig("next_page", degree=1, mode="deferred")
        super().__init__(page_table, tlb, prefetch, asid, **kwargs)
        self.concurrency = (concurrency or ConcurrencyConfig()).validate()

    @classmethod
    def with_concurrency(
        cls, page_table: PageTable, prefetch_enabled: bool, config: ConcurrencyConfig, **kwargs: Any
    ) -> AsyncPrefetchingTlb:
        """The report's constructor: prefetching on or off, and a concurrency setting."""
        prefetch = None if prefetch_enabled else PrefetchConfig("none")
        return cls(page_table, prefetch=prefetch, concurrency=config.validate(), **kwargs)

    async def translate_batch_concurrent(
        self, addrs: Any, access: str = "r", user: bool = False, errors: str = "raise",
        *, threshold: int | None = None, chunk_size: int | None = None,
    ) -> Any:  # fmt: skip
        """As :meth:`Mmu.translate_batch_concurrent`, with this TLB's concurrency setting."""
        cfg = self.concurrency
        if not cfg.enabled:
            return self.translate_batch(addrs, access, user, errors)
        return await super().translate_batch_concurrent(
            addrs, access, user, errors,
            threshold=cfg.tlb_batch_threshold if threshold is None else threshold,
            chunk_size=cfg.chunk_size if chunk_size is None else chunk_size,
        )  # fmt: skip
