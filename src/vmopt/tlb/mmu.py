"""The MMU of one virtual CPU: TLB hierarchy, then page walk, then fill.

Lookups go L1 first. An L(n) hit fills the levels above it; a miss
everywhere walks the page table and fills every level (non-inclusive, as on
most x86 cores: evictions are not propagated). A :class:`SplitL1` first level
sends instruction fetches to an ITLB and reads and writes to a DTLB, both
missing into the shared levels below; fills go to the side that missed. A prefetched translation is
installed in the last level only, marked as prefetched until its first
demand hit. Rights are checked on hits too, from a mask the paging format
computes at fill time, and a write hit on a clean entry re-walks to set D.

Every MMU subscribes to its page table, so unmap/protect/remap remove
stale entries (TLB, page-walk cache, queued prefetches) from every vCPU
before they return: the shootdown an OS does with IPIs. With
``shootdown=False`` that is left to the caller, as on real hardware.

The state and the translate loop live in the Rust core (``vmopt._core.Mmu``);
this class keeps the configuration objects and the fault handler. A
not-present fault of a miss walk comes back from the core with no lock
held; the handler runs, and if it mapped the page the core re-walks (the
same TLB miss, counted once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from vmopt import _core
from vmopt.batching import Addrs, ArrayPath, BatchResult, run_sequential
from vmopt.errors import ConfigError, PageFault, VmoptError, bad_input
from vmopt.paging.types import Perm
from vmopt.tlb._live import MMU_FIELDS, TLB_FIELDS, LiveMmuStats
from vmopt.tlb.config import DEFAULT_TLB_LEVELS, PrefetchConfig, PwcConfig, SplitL1, TlbConfig, name_levels
from vmopt.tlb.nested import NestedConfig, NestedStats
from vmopt.tlb.pwc import PageWalkCache
from vmopt.tlb.stats import MmuStats, TlbStats
from vmopt.tlb.tlb import GLOBAL_ASID, TlbLevel, config_tuple

if TYPE_CHECKING:
    from vmopt.paging.pagetable import PageTable
    from vmopt.paging.twostage import TwoStage

__all__ = ["ARRAY_CHUNK", "DEFAULT_TLB_LEVELS", "RIGHTS_BIT", "Mmu", "StagedPages", "StagedResult", "TlbSpec"]

log = logging.getLogger(__name__)

#: Bit of an entry's rights mask for each (access, user) pair.
RIGHTS_BIT: Final = {
    ("r", False): 1, ("w", False): 2, ("x", False): 4,
    ("r", True): 8, ("w", True): 16, ("x", True): 32,
}  # fmt: skip

#: Addresses per core call of an array batch (the core holds no GIL meanwhile).
ARRAY_CHUNK: Final = 1 << 20

TlbSpec = TlbConfig | Sequence[TlbConfig | Sequence[TlbConfig] | SplitL1] | None

#: ``handler(va, access, user) -> bool``: called on a not-present fault; True
#: if it mapped the page (demand paging), so the walk is retried once.
FaultHandler = Callable[[int, str, bool], bool]

U64 = npt.NDArray[np.uint64]


class StagedPages(NamedTuple):
    """Pages fetched ahead for :meth:`Mmu.translate_staged`, column by column.

    Page ``k`` starts at ``vas[k]``, holds ``data[k]`` and goes in as
    ``groups[group[k]]``: ``(size, nodes, perms, page_user)``, shared by the
    pages that want the same nodes (columns, so a batch of thousands of
    pages costs no object per page).
    """

    vas: list[int]
    data: list[bytes | None]
    group: list[int]
    groups: list[tuple[int, list[int], int, bool]]

    def without(self, gone: set[int]) -> StagedPages:
        """These pages but those at the indices in ``gone``, in order, in the same groups."""
        keep = [k for k in range(len(self.vas)) if k not in gone]
        vas, data, group = self.vas, self.data, self.group
        return StagedPages(
            [vas[k] for k in keep], [data[k] for k in keep], [group[k] for k in keep], self.groups
        )


#: :meth:`Mmu.translate_staged`'s answer: ``(done, error, no_room, fell_back, slots, frames, nodes)``.
StagedResult = tuple[int, "VmoptError | None", "int | None", bool, list[int], list[int], list[int]]


def _level_configs(spec: TlbSpec) -> tuple[list[TlbConfig] | None, list[list[TlbConfig]]]:
    """``(ITLB arrays or None, levels)`` of a spec; with a split L1, ``levels[0]`` is the DTLB."""
    if spec is None:
        spec = DEFAULT_TLB_LEVELS
    if isinstance(spec, TlbConfig):
        return None, name_levels([[spec]])
    if isinstance(spec, str | bytes) or not isinstance(spec, Sequence):
        raise bad_input("Mmu", tlb=spec)
    levels = []
    itlb: list[TlbConfig] | None = None
    for index, item in enumerate(spec):
        if isinstance(item, SplitL1):
            if index:
                raise ConfigError(
                    f"only the first TLB level can be a SplitL1 (ITLB and DTLB), got one at level {index + 1}"
                )
            split = item.named()
            itlb = list(split.itlb)
            cfgs = list(split.dtlb)
        elif isinstance(item, TlbConfig):
            cfgs = [item]
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
            cfgs = list(item)
        else:
            raise bad_input("Mmu", tlb=spec)
        if not cfgs:
            raise ConfigError("a TLB level needs at least one TlbConfig")
        if not all(isinstance(c, TlbConfig) for c in cfgs):
            raise bad_input("Mmu", tlb=spec)
        levels.append(cfgs)
    return itlb, name_levels(levels)


def _check_asid(asid: int) -> None:
    if not isinstance(asid, int) or not 0 <= asid < GLOBAL_ASID:
        raise ConfigError(f"asid must be an integer in [0, 65535], got {asid!r}")


class Mmu:
    """Address translation for one vCPU over ``page_table``.

    ``tlb`` is a TlbConfig, or a list of levels, L1 first, each a TlbConfig
    or a list of split arrays; the first may be a :class:`SplitL1` (an ITLB
    for fetches and a DTLB for reads and writes). ``prefetch`` is a
    PrefetchConfig, or a kind name ("none", "next_page", "stride"). ``pwc``
    enables a page-walk cache. ``walk_ref_cycles`` is the modelled cost of
    one PTE read.

    Per-side counters, pycachesim style: ``mmu.itlb.stats`` and
    ``mmu.dtlb.stats`` (lookups, hits, misses, ...) are the L1 that serves
    fetches and the one that serves reads and writes, the same level when
    the L1 is unified (``split_l1`` False); ``levels`` is the data side's
    path, L1 (the DTLB) first, then the shared levels.
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
        from vmopt.paging.pagetable import PageTable

        if not isinstance(page_table, PageTable):
            raise bad_input("Mmu", page_table=page_table)
        _check_asid(asid)
        if not (prefetch is None or isinstance(prefetch, str | PrefetchConfig)):
            raise bad_input("Mmu", prefetch=prefetch)
        if not (pwc is None or isinstance(pwc, bool | PwcConfig)):
            raise bad_input("Mmu", pwc=pwc)
        if fault_handler is not None and not callable(fault_handler):
            raise bad_input("Mmu", fault_handler=fault_handler)
        if isinstance(prefetch, str):
            prefetch = PrefetchConfig(prefetch)
        self.prefetch_config = prefetch or PrefetchConfig()
        itlb_configs, configs = _level_configs(tlb)
        pwc_config = (PwcConfig() if pwc is True else pwc) if pwc else None
        bad_cycles = not isinstance(walk_ref_cycles, int) or walk_ref_cycles < 0
        pf = self.prefetch_config
        self._core = _core.Mmu(
            page_table.core,
            [[config_tuple(c) for c in level] for level in configs],
            (pf.kind, pf.degree, pf.mode, pf.queue_limit),
            None if pwc_config is None else (pwc_config.entries, pwc_config.latency),
            asid,
            bool(shootdown),
            0 if bad_cycles else walk_ref_cycles,
            None if itlb_configs is None else [config_tuple(c) for c in itlb_configs],
        )
        if bad_cycles:
            raise ConfigError(f"walk_ref_cycles must be a non-negative integer, got {walk_ref_cycles!r}")
        #: The core's translate, bound once: the hit path is this one call.
        self._translate = self._core.translate
        self.levels = [TlbLevel.from_core(self._core.level(i), cfgs) for i, cfgs in enumerate(configs)]
        #: True when the L1 is split into an ITLB and a DTLB.
        self.split_l1 = itlb_configs is not None
        #: The L1 that serves instruction fetches (the ITLB, or the unified L1).
        self.itlb = (
            self.levels[0] if itlb_configs is None else TlbLevel.from_core(self._core.itlb(), itlb_configs)
        )
        #: The L1 that serves reads and writes (the DTLB, or the unified L1).
        self.dtlb = self.levels[0]
        self.stats: MmuStats = LiveMmuStats(self._core.stats)
        self.pwc = (
            None
            if pwc_config is None
            else PageWalkCache.from_core(self._core.pwc(), pwc_config, page_table.fmt.levels)
        )
        self.fault_handler = fault_handler
        self.shootdown = shootdown
        self.page_table = page_table
        #: The two-stage translation and its cost model, once set_nested was called.
        self.nested: tuple[TwoStage, NestedConfig] | None = None

    def __repr__(self) -> str:
        return f"Mmu({self.page_table!r}, asid={self.asid}, levels={[lv.name for lv in self.all_levels()]})"

    def all_levels(self) -> list[TlbLevel]:
        """Every TLB level: the ITLB of a split L1 first, then :attr:`levels`."""
        return [self.itlb, *self.levels] if self.split_l1 else list(self.levels)

    @property
    def asid(self) -> int:
        """The current ASID (PCID / satp.ASID)."""
        asid: int = self._core.asid
        return asid

    # -- two-stage translation -------------------------------------------------

    def set_nested(self, two_stage: TwoStage, config: NestedConfig | None = None) -> None:
        """Translate through ``two_stage`` from now on (its guest must be this MMU's table).

        Walks go through both stages, their host walks through the nested
        TLB and host page-walk cache of ``config``; TLB entries cache
        GVA->HPA tagged with its VMID. Every cached translation is dropped.
        With shootdowns, changes to the host table drop the VM's entries.
        """
        from vmopt.paging.twostage import TwoStage

        if not isinstance(two_stage, TwoStage):
            raise bad_input("Mmu.set_nested", two_stage=two_stage)
        if two_stage.guest is not self.page_table:
            raise ConfigError("the two-stage translation's guest table must be the MMU's current table")
        config = NestedConfig() if config is None else config
        if not isinstance(config, NestedConfig):
            raise bad_input("Mmu.set_nested", config=config)
        pwc = config.host_pwc
        host_pwc = None if pwc is None else (pwc.entries, pwc.latency)
        self._core.set_nested(two_stage.core, config.vmid, config.ntlb_entries, host_pwc)
        self.nested = (two_stage, config)

    @property
    def nested_stats(self) -> NestedStats | None:
        """Counters of the nested cost model (guest and host references apart), or None."""
        values = self._core.nested_stats()
        return None if values is None else NestedStats(*values)

    @property
    def walk_ref_cycles(self) -> int:
        """Modelled cycles of one PTE read."""
        cycles: int = self._core.walk_ref_cycles
        return cycles

    @walk_ref_cycles.setter
    def walk_ref_cycles(self, cycles: int) -> None:
        if not isinstance(cycles, int) or cycles < 0:
            raise ConfigError(f"walk_ref_cycles must be a non-negative integer, got {cycles!r}")
        self._core.walk_ref_cycles = cycles

    # -- context switch -----------------------------------------------------------

    def switch(self, page_table: PageTable, asid: int | None = None, *, flush: bool = False) -> None:
        """Load a new address space (a CR3 or satp write).

        Entries of other ASIDs stay cached, as with PCIDs; pass ``flush=True``
        (or reuse an ASID) to drop the old ones.
        """
        from vmopt.paging.pagetable import PageTable

        if not isinstance(page_table, PageTable):
            raise bad_input("Mmu.switch", page_table=page_table)
        _check_asid(self.asid if asid is None else asid)
        self._core.switch(page_table.core, asid, bool(flush))
        self.page_table = page_table

    # -- translation ----------------------------------------------------------------

    def translate(self, va: int, access: str = "r", user: bool = False) -> int:
        """The physical address of ``va``; raises :class:`PageFault`."""
        try:
            pa: int = self._translate(va, access, user)
            return pa
        except PageFault as fault:
            if self.fault_handler is None:
                raise  # as the core raised it: the caller resolves faults itself
            return self.handle_fault(va, access, user, fault)

    def handle_fault(self, va: int, access: str, user: bool, error: BaseException) -> int:
        """What :meth:`translate` does with an error of the core's translate of ``va``.

        A not-present fault of a miss walk goes to the fault handler (with no
        lock held, as a kernel's fault path runs with interrupts on, so a
        shootdown from a thread that holds the OS's locks can still reach this
        vCPU); if it mapped the page, the access restarts: the walk runs
        again, the same TLB miss, counted once. Anything else is raised.
        """
        if not isinstance(error, BaseException):
            raise bad_input("Mmu.handle_fault", error=error)
        handler = self.fault_handler
        if handler is None or not isinstance(error, PageFault) or not error.restartable:
            raise error
        if not handler(va, access, user):
            raise error
        return self.restart(va, access, user)

    def restart(self, va: int, access: str, user: bool) -> int:
        """Walk ``va`` again after a :attr:`~vmopt.PageFault.restartable` fault was resolved.

        For a caller that resolved the fault itself (mapped the page, or found
        it mapped meanwhile by another vCPU): counts one demand fault and
        walks again, the same TLB miss, then fills the TLB, as a fault
        handler's True does.
        """
        pa: int = self._core.translate_restart(va, access, user)
        return pa

    def install_page(
        self, va: int, access: str, user: bool, page_va: int, size: int, nodes: list[int],
        data: bytes | None, perms: Perm, page_user: bool,
    ) -> tuple[int, int, int] | None:  # fmt: skip
        """Resolve a not-present fault at ``va`` in one core call.

        Allocates a zeroed ``size`` block on the first of ``nodes`` with room,
        copies ``data`` into it, maps it at ``page_va`` in the current table
        (as :meth:`PageTable.install`: ``perms`` are trusted, overlap is
        refused) and restarts the access as a fault handler's True does (one
        demand fault, the same TLB miss walked again, the TLB filled).
        Returns ``(pa of va, frame, node)``, or None when no node has room
        (nothing changed).
        """
        placed: tuple[int, int, int] | None = self._install_call(
            self._core.install_page, va, access, user, page_va, size, nodes, data, perms, page_user
        )
        return placed

    def translate_or_install(
        self, va: int, access: str, user: bool, page_va: int, size: int, nodes: list[int],
        data: bytes | None, perms: Perm, page_user: bool,
    ) -> tuple[int, tuple[int, int] | None] | None:  # fmt: skip
        """:meth:`translate` ``va`` and, on a restartable fault, :meth:`install_page` at once.

        What a fault handler that already holds the page's contents does,
        without the fault leaving the core (no exception is built). Counts
        exactly what the two calls count. Returns ``(pa, None)`` when ``va``
        was mapped, ``(pa, (frame, node))`` when the page went in, None when
        no node of ``nodes`` has room (nothing changed); any other fault is
        raised as :meth:`translate` raises it (the fault handler is not
        called).
        """
        resolved: tuple[int, tuple[int, int] | None] | None = self._install_call(
            self._core.translate_or_install, va, access, user, page_va, size, nodes, data, perms, page_user
        )
        return resolved

    @staticmethod
    def _install_call(
        call: Callable[..., Any], va: int, access: str, user: bool, page_va: int, size: int,
        nodes: list[int], data: bytes | None, perms: Perm, page_user: bool,
    ) -> Any:  # fmt: skip
        """One of the core's install calls, with a wrong-typed argument as an InputError."""
        try:
            return call(va, access, user, page_va, size, nodes, data, int(perms), page_user)
        except (TypeError, OverflowError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input(
                call.__name__, va=va, page_va=page_va, size=size, nodes=nodes, perms=perms
            ) from None

    def translate_into(
        self, vas: U64, out: U64, access: str = "r", user: bool = False
    ) -> tuple[int, VmoptError | None]:
        """Translate a uint64 array in order into ``out``, without the GIL, in the core.

        Stops at the first address whose translation raises: returns how many
        were done and that address's error (already counted as a faulting
        ``translate`` counts it; :meth:`handle_fault` finishes it as
        ``translate`` would). ``vas`` and ``out`` must be contiguous.
        """
        done: int
        stop: VmoptError | None
        try:
            done, stop = self._core.translate_batch(vas, out, access, user)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("translate_into", exc, vas=vas, out=out) from None
        return done, stop

    def translate_staged(
        self, vas: U64, out: U64, access: str, user: bool, pages: StagedPages
    ) -> StagedResult:
        """:meth:`translate_into`, installing staged pages on their first touch, in one core call.

        ``pages`` are distinct pages whose contents were fetched ahead. A
        restartable fault inside one is resolved as
        :meth:`translate_or_install` resolves it; each is installed at most
        once. Returns ``(done, error, no_room, fell_back, slots, frames,
        nodes)``: addresses done; the error that stopped the batch (counted
        as :meth:`translate_into` counts it) or None; the index in ``pages``
        of a page no node of its group had room for (the batch stopped at its
        first touch, nothing changed) or None; True if the batch stopped
        after an install that fell back past the first of its group's nodes
        (a caller whose placements depend on that recomputes them); and the
        index in ``pages``, frame and node of each page that went in, also
        when the restarted access then faulted. An install that falls back
        ends the call, so only the last page placed can have fallen back.
        """
        try:
            result: StagedResult = self._core.translate_batch_staged(vas, out, access, user, *pages)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("translate_staged", exc, vas=vas, out=out) from None
        return result

    def translate_kinds_into(
        self, vas: U64, kinds: npt.NDArray[np.uint8], out: U64, user: bool = False
    ) -> tuple[int, VmoptError | None]:
        """:meth:`translate_into` with each address's own access: ``kinds[i]`` is 0
        (read), 1 (write) or 2 (fetch), the values of ``TraceChunk.kinds``.

        Fetches look up the ITLB of a split L1. Stops at the first address
        whose translation raises, as :meth:`translate_into` does; a byte that
        is no kind stops there with a :class:`ConfigError`.
        """
        done: int
        stop: VmoptError | None
        try:
            done, stop = self._core.translate_batch_kinds(vas, kinds, out, user)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("translate_kinds_into", exc, vas=vas, kinds=kinds, out=out) from None
        return done, stop

    # -- batches ---------------------------------------------------------------------

    @overload
    def translate_batch(
        self, addrs: Sequence[int], access: str = ..., user: bool = ..., errors: Literal["raise"] = ...
    ) -> list[int]: ...
    @overload
    def translate_batch(
        self, addrs: npt.NDArray[np.integer[Any]], access: str = ..., user: bool = ...,
        errors: Literal["raise"] = ...,
    ) -> U64: ...  # fmt: skip
    @overload
    def translate_batch(
        self, addrs: Addrs, access: str = ..., user: bool = ..., *, errors: Literal["collect"]
    ) -> BatchResult: ...
    @overload
    def translate_batch(
        self, addrs: Addrs, access: str = ..., user: bool = ..., errors: str = ...
    ) -> list[int] | U64 | BatchResult: ...
    def translate_batch(
        self, addrs: Addrs, access: str = "r", user: bool = False, errors: str = "raise"
    ) -> list[int] | U64 | BatchResult:
        """Translate a batch in order (see :mod:`vmopt.batching`); arrays go through the core's loop.

        A list gives a list of physical addresses, an integer array a uint64
        array; ``errors="collect"`` returns a :class:`~vmopt.BatchResult`.
        """
        if not isinstance(addrs, Iterable) or isinstance(addrs, str | bytes | dict):
            raise bad_input("translate_batch", addrs=addrs)
        if not isinstance(errors, str) or not isinstance(access, str):
            raise bad_input("translate_batch", access=access, errors=errors)
        if not isinstance(user, bool | int | np.bool_):
            raise bad_input("translate_batch", user=user)
        path = None
        if (access, user) in RIGHTS_BIT:
            path = ArrayPath(
                lambda vas, out: self.translate_into(vas, out, access, user),
                lambda va, error: self.handle_fault(va, access, user, error),
            )
        # The core releases the GIL for the whole call: big chunks keep the per-call cost negligible.
        out: list[int] | U64 | BatchResult = run_sequential(
            lambda va: self.translate(va, access, user),
            addrs,
            errors,
            chunk_size=ARRAY_CHUNK,
            array_path=path,
        )
        return out

    # -- prefetching ---------------------------------------------------------------

    def process_prefetch(self) -> int:
        """Drain the deferred prefetch queue; return how many translations were installed."""
        n: int = self._core.process_prefetch()
        return n

    @property
    def pending_prefetches(self) -> int:
        """Requests waiting in the deferred queue."""
        n: int = self._core.pending_prefetches
        return n

    # -- invalidation ---------------------------------------------------------------

    def flush(self) -> None:
        """Invalidate every TLB and PWC entry (a CR3 write without PCIDs)."""
        self._core.flush()

    def flush_asid(self, asid: int) -> None:
        """Invalidate one ASID's non-global entries (INVPCID single-context)."""
        try:
            self._core.flush_asid(asid)
        except (TypeError, OverflowError):
            raise bad_input("Mmu.flush_asid", asid=asid) from None

    def invlpg(self, va: int) -> None:
        """Invalidate the translations of ``va`` for the current ASID, and global ones (INVLPG)."""
        try:
            self._core.invlpg(va)
        except (TypeError, OverflowError):
            raise bad_input("Mmu.invlpg", va=va) from None

    def flush_range(self, va: int, size: int, asid: int | None = None) -> None:
        """Invalidate ``[va, va+size)`` for ``asid`` (None: every ASID), like sfence.vma per page."""
        try:
            self._core.flush_range(va, size, asid)
        except (TypeError, OverflowError):
            raise bad_input("Mmu.flush_range", va=va, size=size, asid=asid) from None

    def cached(self, va: int) -> bool:
        """True if any level holds a translation of ``va`` for the current ASID."""
        try:
            hit: bool = self._core.cached(va)
        except (TypeError, OverflowError):
            raise bad_input("Mmu.cached", va=va) from None
        return hit

    # -- statistics -----------------------------------------------------------------

    def tlb_stats(self) -> list[TlbStats]:
        """One :class:`TlbStats` per level, as :meth:`all_levels` (live objects)."""
        return [level.stats for level in self.all_levels()]

    def total_stats(self) -> TlbStats:
        """The hierarchy as one TLB: lookups = translations, hits = served by any level, misses = walks.

        Dirty re-walks are hits (the TLB had the entry); they show in
        ``stats.dirty_walks``. ``cycles`` includes lookups, walks and the PWC.
        """
        mmu, _ = self._core.stats()
        translations, cycles = mmu[MMU_FIELDS["translations"]], mmu[MMU_FIELDS["cycles"]]
        levels = [level.counters() for level in self.all_levels()]
        # The last level of each side's path: the shared one, or both L1s when they are all.
        last = levels[-2:] if self.split_l1 and len(self.levels) == 1 else levels[-1:]
        misses = sum(lv[TLB_FIELDS["misses"]] for lv in last)

        def total(field: str) -> int:
            return sum(lv[TLB_FIELDS[field]] for lv in levels)

        return TlbStats(
            name="total", lookups=translations, hits=translations - misses, misses=misses,
            evictions=total("evictions"), invalidations=total("invalidations"),
            cycles=total("cycles") + cycles, prefetch_fills=total("prefetch_fills"),
            prefetch_useful=total("prefetch_useful"), prefetch_useless=total("prefetch_useless"),
        )  # fmt: skip

    def reset_stats(self) -> None:
        """Zero every counter (TLB contents stay).

        The statistics objects handed out before keep the values they had.
        """
        old = self.stats
        if isinstance(old, LiveMmuStats):
            old.freeze()
        for level in self.all_levels():
            level.freeze_stats()
        self._core.reset_stats()
        self.stats = LiveMmuStats(self._core.stats)
        for level in self.all_levels():
            level.renew_stats()
