"""Translate a NumPy array of addresses through an ``Mmu`` in compiled code.

:func:`translate_array` gives exactly what ``mmu.translate(int(va), access,
user)`` in a loop gives: the same physical addresses, every counter of
``MmuStats``, ``PrefetchStats``, each level's ``TlbStats`` and the page-walk
cache, the same TLB contents way by way with the same replacement state
(LRU/FIFO stamps and clocks, PLRU tree bits, the random policy's xorshift
state), the same page-walk cache order, prefetcher history and deferred
queue, and the same accessed/dirty bits in guest memory. Only the speed
differs: the per-address loop runs in a Numba kernel (``_kernel.py``), about
0.1 µs per address instead of several.

How:

- **TLB state** lives, per ``Mmu``, in a mirror of flat arrays the kernel
  works on (:class:`_Mirror`). Each call re-reads only what the scalar path
  changed since the last one and writes back only the ways the kernel
  changed (as new ``TlbEntry`` objects, as ``insert`` makes them).
- **Page tables** in guest memory are not read by the kernel. The regions a batch needs (a
  leaf page, or the span of the entry a walk faults at) are resolved lazily,
  a window of addresses at a time in first-touch order, stopping at the
  first fault, by a compiled copy of the format's walk (x86-64 4/5-level,
  Sv39/Sv48) over a snapshot of the page-table frames it reads, checked
  against ``fmt.walk`` by the tests. The kernel walks a missing page
  itself when the snapshot holds its frames, and otherwise asks for the
  missing regions (its own page, or prefetch targets) and resumes.
- **Hits**: when the first level is one array of 4 KiB entries, the
  kernel memoizes its hits and runs them in a tight loop that does just
  what such a hit does (see :func:`vmopt.batch._kernel.run`).
- **A/D bits**: the walks the kernel simulated are replayed on the snapshot
  afterwards and what changed is written back compare-and-set style, so
  memory ends bit for bit as the scalar loop leaves it.
- **Faults**: the kernel commits nothing of an address before it knows the
  address cannot fault, so it can stop right before one (see the contract
  in :func:`translate_array`). When calls keep stopping after a few
  addresses (first touches), the sure-to-succeed prefix (first-level hits
  with the rights) goes through ``mmu.translate`` itself, which beats a
  kernel round trip for so few addresses.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from itertools import chain, repeat
from operator import ne
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from vmopt.batch import _kernel as K
from vmopt.memory.physical import PhysicalMemory
from vmopt.paging.pagetable import PageTable
from vmopt.paging.riscv import RiscV
from vmopt.paging.types import PageFault, Perm
from vmopt.paging.x86 import X86_64
from vmopt.tlb.mmu import RIGHTS_BIT, Mmu
from vmopt.tlb.prefetch import NextPagePrefetcher, StridePrefetcher
from vmopt.tlb.pwc import PageWalkCache
from vmopt.tlb.tlb import GLOBAL_ASID, Tlb, TlbEntry, TlbLevel

__all__ = ["translate_array", "unsupported_reason"]

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_POLICY: Final = {"lru": K.POL_LRU, "fifo": K.POL_FIFO, "random": K.POL_RANDOM, "plru": K.POL_PLRU}
#: Mmu methods whose behaviour the kernel reproduces; a subclass overriding one falls back.
_MMU_METHODS: Final = (
    "translate", "_hit_fault", "_dirty_rewalk", "_miss", "_walk", "_pwc_skip", "_rights",
    "_fill_all", "_fill", "_request_prefetch", "_prefetch",
)  # fmt: skip
#: Paging formats whose walks the kernel reproduces.
_FORMATS: Final = (X86_64, RiscV)
#: PhysicalMemory methods the compiled walker stands in for.
_MEM_METHODS: Final = ("read", "read_u64", "write", "write_u64", "contains")
_FIRST_WINDOW: Final = 64
#: Runs between faults shorter than this go through ``_safe_prefix`` instead of the kernel.
_SHORT_RUN: Final = 48
_MASK64: Final = (1 << 64) - 1
_MAX_WINDOW: Final = 1 << 20
_LOOKAHEAD: Final = 16  # extra pages resolved along a prefetch stride when the kernel asks for one


def unsupported_reason(mmu: Mmu, access: str = "r", user: bool = False) -> str | None:
    """Why :func:`translate_array` would hand ``mmu`` back to the scalar path at once, or None."""
    return _static_reason(mmu, access, user) or _dynamic_reason(mmu)


def _static_key(mmu: Mmu) -> tuple[object, ...]:
    """The objects :func:`_static_reason`'s verdict depends on (compared by identity)."""
    pt = mmu.page_table
    return (type(mmu), pt, pt.fmt, pt.mem, mmu._prefetcher, mmu.pwc, mmu.stats.prefetch,
            *(level.stats for level in mmu.levels))  # fmt: skip


def _dynamic_reason(mmu: Mmu) -> str | None:
    """The checks of :func:`unsupported_reason` on state that changes as the MMU runs."""
    if not 0 <= mmu.asid < GLOBAL_ASID:
        return f"asid {mmu.asid!r} out of range"
    pf = mmu._prefetcher
    if isinstance(pf, StridePrefetcher) and pf._last_vpn is not None and not 0 <= pf._last_vpn < K.VPN_LIMIT:
        return "stride prefetcher history out of range"
    if mmu._queue:
        if any(t & 0xFFF or not 0 <= t < 1 << 64 for t in mmu._queue):
            return "deferred prefetch queue holds unaligned targets"
        if len(mmu._queue) > mmu.prefetch_config.queue_limit:
            return "deferred prefetch queue longer than its limit"
    return None


def _static_reason(mmu: Mmu, access: str, user: bool) -> str | None:
    """The checks of :func:`unsupported_reason` on the MMU's make-up (see :func:`_static_key`)."""
    if RIGHTS_BIT.get((access, user)) is None:
        return f"access {access!r} / user {user!r} is not a valid pair"
    if not isinstance(mmu, Mmu):
        return f"{type(mmu).__name__} is not an Mmu"
    for name in _MMU_METHODS:
        if getattr(type(mmu), name) is not getattr(Mmu, name):
            return f"{type(mmu).__name__} overrides Mmu.{name}"
    fmt = mmu.page_table.fmt
    if type(fmt) not in _FORMATS:
        return f"paging format {type(fmt).__name__} is not compiled"
    mem = mmu.page_table.mem
    if not isinstance(mem, PhysicalMemory) or any(
        getattr(type(mem), name) is not getattr(PhysicalMemory, name) for name in _MEM_METHODS
    ):
        return f"{type(mem).__name__} overrides PhysicalMemory access"
    if mem.base & 0xFFF or mem.end & 0xFFF:
        return "memory bounds are not frame-aligned"
    if isinstance(fmt, RiscV) and fmt.svade:
        return "RISC-V Svade faults on clear A bits"
    for level in mmu.levels:
        if type(level) is not TlbLevel:
            return f"TLB level {level.name} is a {type(level).__name__}"
        for arr in level.arrays:
            if type(arr) is not Tlb or arr.stats is not level.stats:
                return f"TLB array {arr.config.name} is not a plain Tlb of its level"
            if arr.config.policy not in _POLICY:
                return f"policy {arr.config.policy!r}"
            if arr.config.policy == "plru" and arr.ways > 64:
                return "tree PLRU with more than 64 ways"
            pf_stats = getattr(arr, "prefetch_stats", None)
            if pf_stats is not None and pf_stats is not mmu.stats.prefetch:
                return f"TLB array {arr.config.name} reports prefetches to a foreign PrefetchStats"
    pf = mmu._prefetcher
    if pf is not None:
        if type(pf) not in (NextPagePrefetcher, StridePrefetcher):
            return f"prefetcher {type(pf).__name__}"
        assert isinstance(pf, NextPagePrefetcher | StridePrefetcher)
        if not 1 <= pf.degree <= 1024:
            return f"prefetch degree {pf.degree}"
    pwc = mmu.pwc
    if pwc is not None and (type(pwc) is not PageWalkCache or pwc.levels != fmt.levels):
        return "page-walk cache does not match the page table"
    return None


# -- TLB state <-> arrays ----------------------------------------------------------------------


def _rights_lut(mmu: Mmu) -> I64:
    """The MMU's rights mask of every (perms, user) pair, indexed perms * 2 + user."""
    return np.array([mmu._rights((Perm(c >> 1), bool(c & 1))) for c in range(16)], dtype=np.int64)


def _entry_row(e: TlbEntry | None) -> tuple[int, ...]:
    """An entry's columns ``S_VPN .. S_STAMP`` (an empty way has vpn -1)."""
    if e is None:
        return (-1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return (e.vpn, e.shift, e.asid, e.page_pa, e.rights, e.dirty, e.level, e.prefetched, e.used, e.stamp)


class _Mirror:
    """The MMU's TLB arrays as the kernel's tables, kept between calls.

    Exporting every way costs microseconds per entry in Python, so the
    tables persist (per ``Mmu``) and :meth:`sync` only re-reads what the
    scalar path changed since the last call. Entries are never edited in
    place except ``stamp`` (which only moves with the array's clock) and
    ``used`` (which only flips with the level's ``prefetch_useful``), so:
    sets whose ways hold other ``TlbEntry`` objects are re-read way by way
    (one list comparison per set finds them); an LRU array's stamps are
    re-read whole only if its clock moved by more than its new entries
    explain (a hit touched an old one); ``used`` flags only if the counter
    moved; clocks, PLRU bits and RNGs always (they are small).
    """

    def __init__(self, mmu: Mmu) -> None:
        self.levels = list(mmu.levels)
        self.arrays: list[Tlb] = [arr for level in self.levels for arr in level.arrays]
        index = {id(arr): i for i, arr in enumerate(self.arrays)}
        nslots = sum(arr.sets * arr.ways for arr in self.arrays)
        self.ar: I64 = np.zeros((len(self.arrays), K.A_NCOL), dtype=np.int64)
        self.sl: I64 = np.zeros((K.S_NCOL, nslots), dtype=np.int64)
        self.sl[K.S_VPN] = -1
        #: per array, per set: the entry objects the tables describe
        self.rows: list[list[list[TlbEntry | None]]] = [
            [[None] * arr.ways for _ in range(arr.sets)] for arr in self.arrays
        ]
        #: per level: (stats object, prefetch_useful) when ``used`` flags were last read
        self.useful: list[tuple[object, int]] = [(None, -1)] * len(self.levels)
        self.lut_fmt: object = None
        self.lut: I64 = np.zeros(16, dtype=np.int64)
        self.regions: _Regions | None = None  # reused call after call
        #: the last call stopped at a fault after a short run: try _safe_prefix first
        self.short_runs = False
        #: what unsupported_reason last approved: _static_key objects, (access, user)
        self.key: tuple[object, ...] = ()
        self.checked: tuple[str, bool] | None = None
        base = plru = 0
        i = 0
        for j, level in enumerate(self.levels):
            for arr in level.arrays:
                row = self.ar[i]
                row[K.A_LEVEL], row[K.A_SETS], row[K.A_WAYS], row[K.A_BASE] = j, arr.sets, arr.ways, base
                row[K.A_POLICY] = _POLICY[arr.config.policy]
                row[K.A_NSHIFT] = len(arr._shifts)
                row[K.A_SHIFT0 : K.A_SHIFT0 + len(arr._shifts)] = arr._shifts
                row[K.A_PLRU] = plru
                row[K.A_CLOCK] = -1  # forces the first sync to read every stamp
                self.sl[K.S_ARR, base : base + arr.sets * arr.ways] = i
                base += arr.sets * arr.ways
                plru += arr.sets
                i += 1
        self.plru: U64 = np.zeros(plru, dtype=np.uint64)
        self.rng: U64 = np.zeros(len(self.arrays), dtype=np.uint64)
        self.lv: I64 = np.full((len(self.levels), K.L_NCOL), -1, dtype=np.int64)
        a0 = 0
        for j, level in enumerate(self.levels):
            self.lv[j, K.L_FIRST], self.lv[j, K.L_NARR] = a0, len(level.arrays)
            self.lv[j, K.L_LAT] = level.latency
            a0 += len(level.arrays)
            for p in range(4):
                found = level.array_for(1 << (12 + 9 * p))
                if found is not None:
                    self.lv[j, K.L_FILL + 2 * p] = index[id(found[0])]
                    self.lv[j, K.L_FILL + 2 * p + 1] = found[1]

    def matches(self, mmu: Mmu) -> bool:
        """True if ``mmu`` still has the levels and arrays this mirror was built for."""
        if len(mmu.levels) != len(self.levels) or any(
            a is not b for a, b in zip(mmu.levels, self.levels, strict=True)
        ):
            return False
        now = [arr for level in mmu.levels for arr in level.arrays]
        return len(now) == len(self.arrays) and all(a is b for a, b in zip(now, self.arrays, strict=True))

    def rights_lut(self, mmu: Mmu) -> I64:
        """:func:`_rights_lut`, cached while the paging format stays the same."""
        fmt = mmu.page_table.fmt
        if fmt is not self.lut_fmt:
            self.lut = _rights_lut(mmu)
            self.lut_fmt = fmt
        return self.lut

    def sync(self, mmu: Mmu) -> None:
        """Bring the tables up to date with the Python objects."""
        ar, sl, arrays = self.ar, self.sl, self.arrays
        for i, arr in enumerate(arrays):
            table, rows, ways = arr._table, self.rows[i], arr.ways
            b = int(ar[i, K.A_BASE])
            clock = int(ar[i, K.A_CLOCK])
            ticked = 0  # new entries stamped since the last sync
            for s in [s for s, differ in enumerate(map(ne, table, rows)) if differ]:
                now, was = table[s], rows[s]
                for w in range(ways):
                    e = now[w]
                    if e is not was[w]:
                        sl[: K.S_MOD, b + s * ways + w] = _entry_row(e)
                        if e is not None and e.stamp > clock:
                            ticked += 1
                rows[s] = list(now)
            if arr._clock != clock:
                if arr.config.policy == "lru" and arr._clock - clock != ticked:
                    flat = chain.from_iterable(table)
                    m = arr.sets * ways
                    sl[K.S_STAMP, b : b + m] = np.fromiter(
                        map(getattr, flat, repeat("stamp"), repeat(0)), dtype=np.int64, count=m
                    )
                ar[i, K.A_CLOCK] = arr._clock
        for j, level in enumerate(self.levels):
            seen_stats, seen_useful = self.useful[j]
            if seen_stats is not level.stats or seen_useful != level.stats.prefetch_useful:
                a0, na = int(self.lv[j, K.L_FIRST]), int(self.lv[j, K.L_NARR])
                for i in range(a0, a0 + na):
                    b, ways = int(ar[i, K.A_BASE]), self.arrays[i].ways
                    part = sl[:, b : b + self.arrays[i].sets * ways]
                    for k in np.flatnonzero((part[K.S_PREF] != 0) & (part[K.S_USED] == 0)).tolist():
                        e = self.rows[i][k // ways][k % ways]
                        if e is not None and e.used:
                            part[K.S_USED, k] = 1
                self.useful[j] = (level.stats, level.stats.prefetch_useful)
        shared = mmu.stats.prefetch
        ar[:, K.A_GLOBALS] = [arr._globals for arr in arrays]
        ar[:, K.A_PFSHARED] = [getattr(arr, "prefetch_stats", None) is shared for arr in arrays]
        self.plru[:] = list(chain.from_iterable(arr._plru for arr in arrays))
        self.rng[:] = [arr._rng.state for arr in arrays]
        sl[K.S_MOD] = 0

    def write_back(self) -> None:
        """Turn changed ways into entries and restore clocks, PLRU bits and RNG states."""
        ar, sl = self.ar, self.sl
        changed = np.flatnonzero(sl[K.S_MOD])
        new: list[tuple[Tlb, TlbEntry]] = []
        for k, row in zip(changed.tolist(), sl[:, changed].T.tolist(), strict=True):
            i = row[K.S_ARR]
            arr = self.arrays[i]
            s, w = divmod(k - int(ar[i, K.A_BASE]), arr.ways)
            old = self.rows[i][s][w]
            if row[K.S_MOD] & 2 or old is None:
                if old is not None:
                    m = arr._maps[old.shift]
                    if m.get(old.key) is old:
                        del m[old.key]
                e = TlbEntry(row[K.S_VPN], row[K.S_SHIFT], row[K.S_ASID], row[K.S_PA], row[K.S_RIGHTS],
                             bool(row[K.S_DIRTY]), row[K.S_LEVEL])  # fmt: skip
                e.prefetched, e.used, e.stamp = bool(row[K.S_PREF]), bool(row[K.S_USED]), row[K.S_STAMP]
                e.set, e.way = s, w
                arr._table[s][w] = e
                self.rows[i][s][w] = e
                new.append((arr, e))
            else:
                old.stamp, old.used = row[K.S_STAMP], bool(row[K.S_USED])
        for arr, e in new:
            arr._maps[e.shift][e.key] = e
        plru = self.plru.tolist()
        for i, arr in enumerate(self.arrays):
            arr._clock = int(ar[i, K.A_CLOCK])
            arr._globals = int(ar[i, K.A_GLOBALS])
            pb = int(ar[i, K.A_PLRU])
            arr._plru = plru[pb : pb + arr.sets]
            arr._rng.state = int(self.rng[i])

    def note_counters(self) -> None:
        """Record the levels' ``prefetch_useful`` after this call's own deltas were added."""
        self.useful = [(level.stats, level.stats.prefetch_useful) for level in self.levels]


_MIRRORS: weakref.WeakKeyDictionary[Mmu, _Mirror] = weakref.WeakKeyDictionary()


@dataclass
class _Call:
    """Per-call kernel inputs besides the TLB tables: constants, PWC, prefetcher, counters."""

    cfg: I64
    misc: I64
    pwc_asid: I64
    pwc_tag: I64
    pwc_stamp: I64
    queue: I64
    need: I64
    targets: I64
    ls: I64
    ms: I64
    mc: I64


#: Rows of the kernel's memo of first-level hits (a power of two).
_MEMO_ROWS: Final = 256


def _export_call(mmu: Mmu, access: str, user: bool) -> _Call:
    """The page-walk cache, prefetcher, deferred queue and constants as arrays."""
    fmt = mmu.page_table.fmt
    top = fmt.levels - 1
    cfg = np.zeros(K.C_NCFG, dtype=np.int64)
    cfg[K.C_BIT] = RIGHTS_BIT[(access, user)]
    cfg[K.C_WRITE] = access == "w"
    cfg[K.C_ASID] = mmu.asid
    cfg[K.C_UPDATE_AD] = mmu.page_table.update_ad
    cfg[K.C_WRC] = mmu.walk_ref_cycles
    cfg[K.C_TOP] = top
    cfg[K.C_NLEV] = len(mmu.levels)
    misc = np.zeros(K.X_NCOL, dtype=np.int64)
    pwc = mmu.pwc
    entries = 1
    if pwc is not None:
        entries = pwc.config.entries
        cfg[K.C_PWC], cfg[K.C_PWC_LAT], cfg[K.C_PWC_ENTRIES] = 1, pwc.config.latency, entries
    pwc_asid = np.zeros((top + 1, entries), dtype=np.int64)
    pwc_tag = np.zeros((top + 1, entries), dtype=np.int64)
    pwc_stamp = np.zeros((top + 1, entries), dtype=np.int64)
    if pwc is not None:
        clock = 0
        for k, cache in pwc._caches.items():
            for j, (asid, tag) in enumerate(cache):
                clock += 1
                pwc_asid[k, j], pwc_tag[k, j], pwc_stamp[k, j] = asid, tag, clock
        misc[K.X_PWC_CLOCK] = clock
    pf = mmu._prefetcher
    degree = 1
    if isinstance(pf, NextPagePrefetcher | StridePrefetcher):
        degree = pf.degree
        cfg[K.C_PF_KIND] = 1 if isinstance(pf, NextPagePrefetcher) else 2
        cfg[K.C_PF_DEGREE] = degree
        if isinstance(pf, StridePrefetcher):
            if pf._last_vpn is not None:
                misc[K.X_HAS_LAST], misc[K.X_LAST] = 1, pf._last_vpn
            misc[K.X_STRIDE] = pf._stride
    deferred = mmu.prefetch_config.mode == "deferred"
    cfg[K.C_PF_DEFERRED] = deferred
    limit = mmu.prefetch_config.queue_limit
    cfg[K.C_QLIMIT] = limit
    queue = np.zeros(limit if deferred else 1, dtype=np.int64)
    if deferred and mmu._queue:
        queue[: len(mmu._queue)] = [t >> 12 for t in mmu._queue]
        misc[K.X_QCOUNT] = len(mmu._queue)
    return _Call(
        cfg=cfg,
        misc=misc,
        pwc_asid=pwc_asid,
        pwc_tag=pwc_tag,
        pwc_stamp=pwc_stamp,
        queue=queue,
        need=np.zeros(2 * degree, dtype=np.int64),
        targets=np.zeros(degree, dtype=np.int64),
        ls=np.zeros((len(mmu.levels), K.T_NCOL), dtype=np.int64),
        ms=np.zeros(K.M_NCOL, dtype=np.int64),
        mc=np.empty((_MEMO_ROWS, 4), dtype=np.int64),
    )


def _import_call(mmu: Mmu, c: _Call) -> None:
    """Add the kernel's counter deltas; restore the PWC, prefetcher and deferred queue."""
    for level, d in zip(mmu.levels, c.ls.tolist(), strict=True):
        s = level.stats
        s.lookups += d[K.T_LOOKUPS]
        s.hits += d[K.T_HITS]
        s.misses += d[K.T_MISSES]
        s.evictions += d[K.T_EVICTIONS]
        s.cycles += d[K.T_CYCLES]
        s.prefetch_fills += d[K.T_PF_FILLS]
        s.prefetch_useful += d[K.T_PF_USEFUL]
        s.prefetch_useless += d[K.T_PF_USELESS]
    m = c.ms.tolist()
    ms = mmu.stats
    ms.translations += m[K.M_TRANSLATIONS]
    ms.walks += m[K.M_WALKS]
    ms.dirty_walks += m[K.M_DIRTY_WALKS]
    ms.walk_memory_refs += m[K.M_WALK_REFS]
    ms.pwc_lookups += m[K.M_PWC_LOOKUPS]
    ms.pwc_hits += m[K.M_PWC_HITS]
    ms.cycles += m[K.M_CYCLES]
    pf = ms.prefetch
    pf.requested += m[K.M_PF_REQUESTED]
    pf.issued += m[K.M_PF_ISSUED]
    pf.dropped += m[K.M_PF_DROPPED]
    pf.redundant += m[K.M_PF_REDUNDANT]
    pf.installed += m[K.M_PF_INSTALLED]
    pf.overflowed += m[K.M_PF_OVERFLOWED]
    pf.useful += m[K.M_PF_USEFUL]
    pf.useless += m[K.M_PF_USELESS]
    pf.walk_memory_refs += m[K.M_PF_WALK_REFS]
    pwc = mmu.pwc
    if pwc is not None:
        pwc.lookups += m[K.M_PWC_LOOKUPS]
        pwc.hits += m[K.M_PWC_HITS]
        for k in pwc._caches:
            stamps = c.pwc_stamp[k]
            order = [j for j in np.argsort(stamps, kind="stable").tolist() if stamps[j]]
            pwc._caches[k] = OrderedDict(((int(c.pwc_asid[k, j]), int(c.pwc_tag[k, j])), None) for j in order)
    pfr = mmu._prefetcher
    if isinstance(pfr, StridePrefetcher):
        pfr._last_vpn = int(c.misc[K.X_LAST]) if c.misc[K.X_HAS_LAST] else None
        pfr._stride = int(c.misc[K.X_STRIDE])
    if c.cfg[K.C_PF_DEFERRED]:
        head, count, cap = int(c.misc[K.X_QHEAD]), int(c.misc[K.X_QCOUNT]), len(c.queue)
        q = c.queue.tolist()
        mmu._queue = deque(q[(head + j) % cap] << 12 for j in range(count))


# -- page-table regions ------------------------------------------------------------------------


class _Regions:
    """Resolved page-table regions (``pstart``/``pinfo`` rows and their hash index ``hidx``).

    A region is a leaf page, or the whole span of the entry a walk faults
    at: every address in it walks the same PTEs with the same outcome. The
    walks run compiled over a snapshot of the page-table frames they touch,
    taken during one call (:meth:`reset` starts the next one; the buffers
    are kept, per MMU, to spare the allocations).
    """

    _EMPTY_HIDX: Final = 128
    _EMPTY_FIDX: Final = 16

    def __init__(self, mmu: Mmu, bit: int, lut: I64 | None = None) -> None:
        self.n = 0
        self.pstart: I64 = np.zeros(64, dtype=np.int64)
        self.pinfo: I64 = np.zeros((64, K.P_NCOL), dtype=np.int64)
        self.hidx: I64 = np.full((self._EMPTY_HIDX, 2), -1, dtype=np.int64)
        self.nframes = 0
        self.frames: U64 = np.zeros((8, 512), dtype=np.uint64)
        self.frames0: U64 = np.zeros((8, 512), dtype=np.uint64)
        self.fpfn: list[int] = []
        self.fidx: I64 = np.full((self._EMPTY_FIDX, 2), -1, dtype=np.int64)
        self.counts: I64 = np.zeros(3, dtype=np.int64)
        self.seen: I64 = np.empty(1024, dtype=np.int64)  # resolve_pages' scratch
        self.res: I64 = np.zeros(K.P_NCOL, dtype=np.int64)
        self.wc: I64 = np.zeros(K.W_NCOL, dtype=np.int64)
        self.wm: U64 = np.zeros(K.WM_NCOL, dtype=np.uint64)
        self.pt: PageTable | None = None
        self.reset(mmu, bit, _rights_lut(mmu) if lut is None else lut)

    def reset(self, mmu: Mmu, bit: int, lut: I64) -> None:
        """Forget every region and frame: a new call, on ``mmu``'s current page table."""
        self.mmu: Mmu | None = mmu
        self.bit, self.lut = bit, lut
        if self.n:
            if len(self.hidx) > self._EMPTY_HIDX:
                self.hidx = np.full((self._EMPTY_HIDX, 2), -1, dtype=np.int64)
            else:
                self.hidx.fill(-1)
            self.n = 0
        if self.nframes:
            if len(self.fidx) > self._EMPTY_FIDX:
                self.fidx = np.full((self._EMPTY_FIDX, 2), -1, dtype=np.int64)
            else:
                self.fidx.fill(-1)
            self.nframes = 0
            self.fpfn = []
        pt = mmu.page_table
        if pt is self.pt:
            return
        self.pt = pt
        fmt = pt.fmt
        self.top = fmt.levels - 1
        mem = pt.mem
        self.wc[:] = 0
        self.wm[:] = 0
        self.wc[K.W_KIND] = 0 if isinstance(fmt, X86_64) else 1
        self.wc[K.W_LEVELS], self.wc[K.W_VA_BITS], self.wc[K.W_ROOT] = fmt.levels, fmt.va_bits, pt.root
        self.wc[K.W_BASE_PFN], self.wc[K.W_END_PFN] = mem.base >> 12, mem.end >> 12
        if isinstance(fmt, X86_64):
            self.wc[K.W_NXE] = fmt.nxe
            self.wm[K.WM_ADDR] = fmt._addr_mask
            for lvl, m in fmt._rsvd_table.items():
                self.wm[K.WM_RSVD_TABLE + lvl] = m
            for lvl, m in fmt._rsvd_large.items():
                self.wm[K.WM_RSVD_LARGE + lvl] = m

    def _reserve(self, more: int) -> None:
        """Room for ``more`` rows, with the index at most half full."""
        need = self.n + more
        if need > len(self.pstart):
            cap = max(need, 2 * len(self.pstart))
            self.pstart = np.concatenate([self.pstart[: self.n], np.zeros(cap - self.n, dtype=np.int64)])
            grown = np.zeros((cap, K.P_NCOL), dtype=np.int64)
            grown[: self.n] = self.pinfo[: self.n]
            self.pinfo = grown
        if 2 * need > len(self.hidx):
            size = len(self.hidx)
            while size < 2 * need:
                size *= 2
            self.hidx = np.full((size, 2), -1, dtype=np.int64)
            K.build_index(self.pstart[: self.n], self.pinfo[: self.n], self.hidx)

    def _add_frame(self, pfn: int) -> None:
        """Copy one 4 KiB frame of guest memory into the snapshot."""
        assert self.pt is not None
        row = self.nframes
        if row == len(self.frames):
            self.frames = np.concatenate([self.frames, np.zeros_like(self.frames)])
            self.frames0 = np.concatenate([self.frames0, np.zeros_like(self.frames0)])
        if 2 * (row + 1) > len(self.fidx):
            self.fidx = np.full((2 * len(self.fidx), 2), -1, dtype=np.int64)
            for r, p in enumerate(self.fpfn):
                K.index_insert(self.fidx, p, r)
        self.frames[row] = np.frombuffer(self.pt.mem.read(pfn << 12, 4096), dtype="<u8")
        self.frames0[row] = self.frames[row]
        self.fpfn.append(pfn)
        K.index_insert(self.fidx, pfn, row)
        self.nframes = row + 1

    def uncovered(self, vpns: I64) -> npt.NDArray[np.bool_]:
        """Which of ``vpns`` no resolved region holds."""
        rows = np.empty(len(vpns), dtype=np.int64)
        K.find_pages(np.ascontiguousarray(vpns, dtype=np.int64), self.hidx, self.top, rows)
        missing: npt.NDArray[np.bool_] = rows < 0
        return missing

    def resolve(
        self, vpns: I64, *, stop_at_fault: bool = False, next_page: int = 0, window: _Mirror | None = None
    ) -> None:
        """Resolve the regions holding ``vpns``, in order.

        ``stop_at_fault``: stop after the first page the batch's access would
        fault on (the kernel stops there too). ``next_page``: also resolve the
        next-page prefetch targets of the new regions. ``window``: ``vpns``
        are addresses (as int64) and pages the mirrored TLB holds now (but
        the first address's) do not stop the resolution: a hit cannot fault,
        and they are resolved for when an eviction makes the kernel walk them.
        """
        if not len(vpns):
            return
        self._reserve(len(vpns))
        tbuf = np.zeros(len(vpns) * next_page, dtype=np.int64)
        self.counts[0], self.counts[1] = self.n, 0
        stop_bit = self.bit if stop_at_fault else 0
        tlb = window if window is not None else _NO_TLB
        asid = self.mmu.asid if self.mmu is not None else 0
        pos = 0
        while True:
            code, pos = K.resolve_pages(
                vpns, pos, stop_bit, next_page, self.wc, self.wm, self.frames, self.fidx, self.lut,
                self.pstart, self.pinfo, self.counts, self.hidx, tbuf, self.res,
                tlb.lv, tlb.ar, tlb.sl, asid, window is not None, self.seen,
            )  # fmt: skip
            self.n = int(self.counts[0])
            if code != K.WALK_NEED_FRAME:
                break
            self._add_frame(int(self.counts[2]))
        targets = tbuf[: int(self.counts[1])]
        if len(targets):
            targets = np.unique(targets)
            self.resolve(targets[self.uncovered(targets)])

    def replay_ad(self) -> None:
        """Set the A/D bits the kernel's simulated walks would have set, as the real walks would.

        The walks are replayed on the snapshot, and what they changed is
        written back compare-and-set style: a frame still as snapshotted is
        written whole; otherwise only the words nobody changed meanwhile get
        their bits (a concurrent unmap is never undone).
        """
        assert self.pt is not None
        if not self.pt.update_ad or not self.n:
            return
        K.replay_ad(self.pstart, self.pinfo, self.n, self.wc, self.wm, self.frames, self.fidx, self.res)
        n = self.nframes
        changed = np.flatnonzero((self.frames[:n] != self.frames0[:n]).any(axis=1))
        mem = self.pt.mem
        for row in changed.tolist():
            pa = self.fpfn[row] << 12
            now = np.frombuffer(mem.read(pa, 4096), dtype="<u8")
            if np.array_equal(now, self.frames0[row]):
                mem.write(pa, self.frames[row].astype("<u8").tobytes())
                continue
            for j in np.flatnonzero(self.frames[row] != self.frames0[row]).tolist():
                if mem.read_u64(pa + 8 * j) == int(self.frames0[row, j]):
                    mem.write_u64(pa + 8 * j, int(self.frames[row, j]))


class _NoTlb:
    """Empty TLB tables for resolutions that do not skip cached pages."""

    lv: I64 = np.zeros((0, K.L_NCOL), dtype=np.int64)
    ar: I64 = np.zeros((0, K.A_NCOL), dtype=np.int64)
    sl: I64 = np.zeros((K.S_NCOL, 0), dtype=np.int64)


_NO_TLB: Final = _NoTlb()


# -- the entry point -----------------------------------------------------------------------------


def translate_array(
    mmu: Mmu, addrs: npt.NDArray[np.integer[Any]] | Any, access: str = "r", user: bool = False
) -> tuple[U64, int]:
    """Translate ``addrs`` in order through ``mmu``; return ``(physical addresses, n_done)``.

    Contract: addresses are processed in order and the call stops right
    before the first one that faults (``translate`` would raise, or run the
    fault handler: unmapped page, rights violation, non-canonical address),
    before a negative address, and at once (``n_done == 0``) for input that
    is not a 1-D integer array or a configuration the kernel does not model
    (:func:`unsupported_reason` says which). ``result[:n_done]`` are the
    translations of ``addrs[:n_done]`` and the MMU (TLBs, page-walk cache,
    prefetcher, deferred queue, every statistic) and guest memory (A/D
    bits) are exactly as after
    ``for va in addrs[:n_done]: mmu.translate(int(va), access, user)``.
    The caller passes ``addrs[n_done]`` to ``mmu.translate`` (which raises
    the fault or demand-pages) and calls again with ``addrs[n_done + 1:]``.
    Entries of the result from ``n_done`` on are zero. Holds the MMU's lock
    for the call, as ``translate`` does; a uint64 array is not copied.
    """
    arr = np.asarray(addrs)
    if arr.ndim != 1:
        return np.zeros(arr.size, dtype=np.uint64), 0
    n = len(arr)
    out = np.zeros(n, dtype=np.uint64)
    if n == 0 or arr.dtype.kind not in "iu":
        return out, 0
    limit = n
    if arr.dtype.kind == "i":
        negative = np.flatnonzero(arr < 0)
        if len(negative):
            limit = int(negative[0])
    if limit == 0:
        return out, 0
    # As int64, without a copy when the input is already a contiguous 64-bit array.
    vas: I64 = np.ascontiguousarray(arr[:limit]).astype(np.uint64, copy=False).view(np.int64)
    # The MMU's lock only, as translate() takes it: the table's lock would invert
    # the order a fault handler's map() takes them in.
    with mmu._lock:
        mirror = _MIRRORS.get(mmu)
        key = _static_key(mmu)
        fresh = (
            mirror is not None
            and mirror.checked == (access, user)
            and len(key) == len(mirror.key)
            and all(a is b for a, b in zip(key, mirror.key, strict=True))
        )
        why = _dynamic_reason(mmu) if fresh else unsupported_reason(mmu, access, user)
        if why is not None:
            log.debug("translate_array falls back to the scalar path: %s", why)
            return out, 0
        if mirror is None or not mirror.matches(mmu):
            mirror = _MIRRORS[mmu] = _Mirror(mmu)
        mirror.key, mirror.checked = key, (access, user)
        # Short runs between faults (first touches): a kernel round trip costs
        # tens of microseconds, so take the prefix the scalar path surely
        # finishes without faulting, address by address, and stop at a fault.
        start = 0
        if mirror.short_runs:
            start, stopped = _safe_prefix(mmu, vas, out, access, user)
            if stopped or start == len(vas):
                mirror.short_runs = start < _SHORT_RUN
                return out, start
        elif _faults_first(mmu, int(vas[0]) & _MASK64, access, user):
            mirror.short_runs = True
            return out, 0
        try:
            mirror.sync(mmu)
            c = _export_call(mmu, access, user)
            pos = start + _run(mmu, mirror, c, vas[start:], out[start:], user)
        except BaseException:
            _MIRRORS.pop(mmu, None)
            raise
        mirror.short_runs = pos < len(vas) and pos < _SHORT_RUN
    return out, pos


def _safe_prefix(mmu: Mmu, vas: I64, out: U64, access: str, user: bool) -> tuple[int, bool]:
    """Translate, with ``mmu.translate`` itself, the leading addresses that surely do not fault.

    An address is sure when the first level holds an entry for it whose
    rights allow the access and that needs no dirty re-walk: ``translate``
    then hits that entry (``peek`` finds what ``lookup`` finds) and returns.
    Returns ``(done, stopped)``; ``stopped``: the next address faults.
    """
    l1 = mmu.levels[0]
    asid = mmu.asid
    bit = RIGHTS_BIT[(access, user)]
    write = access == "w"
    translate = mmu.translate
    n = min(len(vas), _SHORT_RUN)
    for i, va in enumerate(vas[:n].tolist()):
        va &= _MASK64
        e = l1.peek(va, asid)
        if e is None or not e.rights & bit or (write and not e.dirty):
            return i, _faults_first(mmu, va, access, user)
        out[i] = translate(va, access, user)
    return n, False


def _faults_first(mmu: Mmu, va: int, access: str, user: bool) -> bool:
    """True if ``va`` is cached nowhere and its walk faults: the batch stops before it.

    Batches that fault on every address (first touches of fresh pages) then
    cost a peek and a walk per call instead of a kernel round trip.
    """
    asid = mmu.asid
    if any(level.peek(va, asid) is not None for level in mmu.levels):
        return False
    try:
        mmu.page_table.walk(va, access, user, update_ad=False)
    except PageFault:
        return True
    return False


def _run(mmu: Mmu, mirror: _Mirror, c: _Call, vas: I64, out: U64, user: bool) -> int:
    """Drive the kernel, resolving pages when it asks, then write everything back."""
    regions = mirror.regions
    bit = int(c.cfg[K.C_BIT])
    if regions is None:
        regions = mirror.regions = _Regions(mmu, bit, mirror.rights_lut(mmu))
    else:
        regions.reset(mmu, bit, mirror.rights_lut(mmu))
    next_page = int(c.cfg[K.C_PF_DEGREE]) if c.cfg[K.C_PF_KIND] == 1 and not c.cfg[K.C_PF_DEFERRED] else 0
    out64 = out.view(np.int64)
    window = _FIRST_WINDOW
    pos = 0
    while True:
        regions.counts[0] = regions.n
        code, pos = K.run(
            vas, pos, out64, c.cfg, mirror.lv, mirror.ar, mirror.sl, mirror.plru, mirror.rng,
            c.ls, c.ms, c.misc, c.pwc_asid, c.pwc_tag, c.pwc_stamp, c.queue,
            regions.pinfo, regions.hidx, c.need, c.targets, c.mc, regions.wc, regions.wm,
            regions.frames, regions.fidx, regions.lut, regions.pstart, regions.counts, regions.res,
        )  # fmt: skip
        regions.n = int(regions.counts[0])  # the kernel walks pages whose frames are at hand
        if code == K.NEED_OWN:
            regions.resolve(vas[pos : pos + window], stop_at_fault=True, next_page=next_page, window=mirror)
            window = min(window * 2, _MAX_WINDOW)
        elif code == K.NEED_MORE:
            pairs = c.need[: 2 * int(c.misc[K.X_NEED])].reshape(-1, 2)
            ahead = np.arange(_LOOKAHEAD + 1, dtype=np.int64)
            cand = np.unique((pairs[:, :1] + pairs[:, 1:] * ahead).ravel())
            cand = cand[(cand >= 0) & (cand < K.VPN_LIMIT)]
            regions.resolve(cand[regions.uncovered(cand)], next_page=next_page)
        else:
            break
    mirror.write_back()
    _import_call(mmu, c)
    mirror.note_counters()
    regions.replay_ad()
    regions.mmu = None  # the mirror lives in a WeakKeyDictionary keyed by the MMU
    return int(pos)
