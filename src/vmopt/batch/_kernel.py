"""The compiled translation loop behind :mod:`vmopt.batch.vectorized`.

Everything here works on flat int64 tables that ``vectorized.py`` exports
from (and imports back into) the Python ``Mmu``; the layouts are the
constants below. The loop replays, address by address, exactly what
``Mmu.translate`` does (lookups, touches, fills, victims, the page-walk
cache, prefetchers, every counter), but it only *commits* an address once
it knows the address cannot fault and every page it needs is resolved, so
it can stop before any address and leave the state as if the scalar loop
had stopped there.

Return codes of :func:`run`: ``DONE`` (all translated), ``STOP`` (the
address at ``pos`` must go through the scalar path: a fault), ``NEED_OWN``
(the page of address ``pos`` is not in the page table), ``NEED_MORE`` (a
prefetch target is not; ``need`` lists ``(vpn, step)`` pairs). ``targets`` is
scratch space for ``degree`` prefetch targets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import numpy as np
from numba import njit

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    """Compile ``fn`` in nopython mode, cached on disk, without the GIL and without NRT.

    No NRT: nothing here allocates, and with it every helper call would
    increment and decrement the reference count of every array it is passed
    (that alone tripled the cost of a translation).
    """
    return njit(cache=True, nogil=True, _nrt=False)(fn)  # type: ignore[no-any-return,call-overload]


# -- return codes -----------------------------------------------------------------------
DONE: Final = 0
STOP: Final = 1
NEED_OWN: Final = 2
NEED_MORE: Final = 3

GLOBAL: Final = 1 << 16
VPN_LIMIT: Final = 1 << 52  # 4 KiB page numbers of a 64-bit address space
VPN_MASK: Final = VPN_LIMIT - 1

# -- cfg: per-call constants ----------------------------------------------------------------
C_BIT: Final = 0  # RIGHTS_BIT of (access, user)
C_WRITE: Final = 1  # access == "w"
C_ASID: Final = 2
C_UPDATE_AD: Final = 3  # walks set A/D in memory (so a write walk makes the leaf dirty)
C_WRC: Final = 4  # walk_ref_cycles
C_PWC: Final = 5  # 1 if a page-walk cache is configured
C_PWC_LAT: Final = 6
C_PWC_ENTRIES: Final = 7
C_TOP: Final = 8  # top page-table level (levels - 1)
C_PF_KIND: Final = 9  # 0 none, 1 next_page, 2 stride
C_PF_DEGREE: Final = 10
C_PF_DEFERRED: Final = 11
C_QLIMIT: Final = 12
C_NLEV: Final = 13
C_NCFG: Final = 14

# -- lv: one row per TLB level ------------------------------------------------------------
L_FIRST: Final = 0  # first array index
L_NARR: Final = 1
L_LAT: Final = 2
L_FILL: Final = 3  # then (array, shift) for page shifts 12, 21, 30, 39: columns 3..10
L_NCOL: Final = 11

# -- ar: one row per set-associative array ---------------------------------------------------
A_LEVEL: Final = 0
A_SETS: Final = 1
A_WAYS: Final = 2
A_BASE: Final = 3  # first slot
A_POLICY: Final = 4  # 0 lru, 1 fifo, 2 random, 3 plru
A_NSHIFT: Final = 5
A_SHIFT0: Final = 6  # shifts ascending, columns 6..8
A_PLRU: Final = 9  # first index into plru
A_CLOCK: Final = 10  # Tlb._clock (mutable)
A_GLOBALS: Final = 11  # Tlb._globals (mutable)
A_PFSHARED: Final = 12  # Tlb.prefetch_stats is the MMU's PrefetchStats
A_NCOL: Final = 13

POL_LRU: Final = 0
POL_FIFO: Final = 1
POL_RANDOM: Final = 2
POL_PLRU: Final = 3

# -- sl: one row per field, one column per way -------------------------------------------------
S_VPN: Final = 0  # -1 when the way is empty
S_SHIFT: Final = 1
S_ASID: Final = 2
S_PA: Final = 3
S_RIGHTS: Final = 4
S_DIRTY: Final = 5
S_LEVEL: Final = 6
S_PREF: Final = 7
S_USED: Final = 8
S_STAMP: Final = 9
S_MOD: Final = 10  # 1: stamp/used changed, 2: a new entry
S_ARR: Final = 11
S_NCOL: Final = 12

# -- ls: per-level counter deltas (TlbStats fields) -------------------------------------------
T_LOOKUPS: Final = 0
T_HITS: Final = 1
T_MISSES: Final = 2
T_EVICTIONS: Final = 3
T_CYCLES: Final = 4
T_PF_FILLS: Final = 5
T_PF_USEFUL: Final = 6
T_PF_USELESS: Final = 7
T_NCOL: Final = 8

# -- ms: MMU counter deltas ------------------------------------------------------------------
M_TRANSLATIONS: Final = 0
M_WALKS: Final = 1
M_DIRTY_WALKS: Final = 2
M_WALK_REFS: Final = 3
M_PWC_LOOKUPS: Final = 4
M_PWC_HITS: Final = 5
M_CYCLES: Final = 6
M_PF_REQUESTED: Final = 7
M_PF_ISSUED: Final = 8
M_PF_DROPPED: Final = 9
M_PF_REDUNDANT: Final = 10
M_PF_INSTALLED: Final = 11
M_PF_OVERFLOWED: Final = 12
M_PF_USEFUL: Final = 13
M_PF_USELESS: Final = 14
M_PF_WALK_REFS: Final = 15
M_NCOL: Final = 16

# -- misc: small mutable state ---------------------------------------------------------------
X_HAS_LAST: Final = 0  # stride prefetcher: _last_vpn is not None
X_LAST: Final = 1
X_STRIDE: Final = 2
X_PWC_CLOCK: Final = 3
X_QHEAD: Final = 4  # deferred prefetch ring buffer
X_QCOUNT: Final = 5
X_NEED: Final = 6  # pairs written to need
X_NCOL: Final = 7

# -- pinfo: one row per resolved page-table region (a leaf page or a faulting entry) ----------
P_NPAGES: Final = 0  # 4 KiB pages it spans (512**level; pstart holds the first one)
P_FAULT: Final = 1  # 1: a probe walk faults here; 2: the walk raised something else
P_REFS: Final = 2  # PTE reads of a walk (a fault's reads for faulting regions)
P_LEVEL: Final = 3  # leaf level
P_PA: Final = 4  # page_pa
P_RIGHTS: Final = 5
P_GLOBAL: Final = 6
P_DIRTY: Final = 7  # the leaf's D bit (mutable: write walks set it)
P_WALKED: Final = 8  # 1 walked, 2 walked for a write, 4 probed (faulting): A/D replay
P_PTE: Final = 9  # leaf PTE address
P_NCOL: Final = 10


#: Fibonacci hashing multiplier (0x9E3779B97F4A7C15 as a signed 64-bit value).
_HASH_MUL: Final = -7046029254386353131


@_jit
def _hash(key: int, mask: int) -> int:
    """Slot of ``key`` in an open-addressing table of ``mask + 1`` slots."""
    x = key * _HASH_MUL
    return (x ^ (x >> 31)) & mask


@_jit
def _find_page(hidx: np.ndarray, top: int, vpn: int) -> int:
    """Row of the region holding 4 KiB page ``vpn``, or -1.

    ``hidx`` is an open-addressing table of ``(start << 6 | level, row)``: a
    region spanning ``512**level`` pages from ``start``. One probe per level
    that may hold the page, smallest first.
    """
    mask = hidx.shape[0] - 1
    for lvl in range(top + 1):
        key = (((vpn >> (9 * lvl)) << (9 * lvl)) << 6) | lvl
        h = _hash(key, mask)
        while True:
            k = hidx[h, 0]
            if k == key:
                row: int = hidx[h, 1]
                return row
            if k < 0:
                break
            h = (h + 1) & mask
    return -1


@_jit
def build_index(pstart: np.ndarray, pinfo: np.ndarray, hidx: np.ndarray) -> None:
    """Fill ``hidx`` (a power-of-two table, at most half full) with every region."""
    mask = hidx.shape[0] - 1
    for h in range(hidx.shape[0]):
        hidx[h, 0] = -1
    for r in range(pstart.shape[0]):
        lvl = 0
        span = pinfo[r, P_NPAGES]
        while span > 1:
            span >>= 9
            lvl += 1
        key = (pstart[r] << 6) | lvl
        h = _hash(key, mask)
        while hidx[h, 0] >= 0:
            h = (h + 1) & mask
        hidx[h, 0] = key
        hidx[h, 1] = r


@_jit
def find_pages(vpns: np.ndarray, hidx: np.ndarray, top: int, rows: np.ndarray) -> None:
    """``rows[j]`` = the region holding page ``vpns[j]``, or -1."""
    for j in range(vpns.shape[0]):
        rows[j] = _find_page(hidx, top, vpns[j])


@_jit
def _find(sl: np.ndarray, ar: np.ndarray, a: int, vpn: int, shift: int, asid: int) -> int:
    """Slot of array ``a`` caching (vpn, shift, asid), or -1: one dict probe of ``Tlb._maps``."""
    ways = ar[a, A_WAYS]
    k0 = ar[a, A_BASE] + (vpn & (ar[a, A_SETS] - 1)) * ways
    for k in range(k0, k0 + ways):
        if sl[S_VPN, k] == vpn and sl[S_ASID, k] == asid and sl[S_SHIFT, k] == shift:
            return k
    return -1


@_jit
def _array_find(sl: np.ndarray, ar: np.ndarray, a: int, vpn12: int, asid: int, peek: bool) -> int:
    """``Tlb.lookup`` (or ``peek``) without touching: per size, own ASID first, then global."""
    for j in range(ar[a, A_NSHIFT]):
        shift = ar[a, A_SHIFT0 + j]
        vpn = vpn12 >> (shift - 12)
        k = _find(sl, ar, a, vpn, shift, asid)
        if k < 0 and (peek or ar[a, A_GLOBALS] > 0):
            k = _find(sl, ar, a, vpn, shift, GLOBAL)
        if k >= 0:
            return k
    return -1


@_jit
def _level_find(
    lv: np.ndarray, ar: np.ndarray, sl: np.ndarray, lvl: int, vpn12: int, asid: int, peek: bool
) -> int:
    """``TlbLevel.lookup``/``peek`` without side effects: the slot that answers, or -1."""
    a0 = lv[lvl, L_FIRST]
    for a in range(a0, a0 + lv[lvl, L_NARR]):
        k = _array_find(sl, ar, a, vpn12, asid, peek)
        if k >= 0:
            return k
    return -1


@_jit
def _plru_touch(plru: np.ndarray, idx: int, ways: int, way: int) -> None:
    """``Tlb._plru_touch``: point every tree node on ``way``'s path away from it."""
    bits = plru[idx]
    one = np.uint64(1)
    node = 1
    half = ways >> 1
    lo = 0
    while half:
        if way >= lo + half:
            bits &= ~(one << np.uint64(node))
            lo += half
            node = 2 * node + 1
        else:
            bits |= one << np.uint64(node)
            node = 2 * node
        half >>= 1
    plru[idx] = bits


@_jit
def _touch(ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, k: int) -> None:
    """``Tlb._touch``: LRU restamps, PLRU flips tree bits, FIFO/random do nothing."""
    a = sl[S_ARR, k]
    pol = ar[a, A_POLICY]
    if pol == POL_LRU:
        ar[a, A_CLOCK] += 1
        sl[S_STAMP, k] = ar[a, A_CLOCK]
        sl[S_MOD, k] |= 1
    elif pol == POL_PLRU:
        ways = ar[a, A_WAYS]
        rel = k - ar[a, A_BASE]
        _plru_touch(plru, ar[a, A_PLRU] + rel // ways, ways, rel % ways)


@_jit
def _victim(
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, a: int, k0: int, s: int
) -> int:
    """``Tlb._victim``: the way to evict from a full set."""
    ways = ar[a, A_WAYS]
    pol = ar[a, A_POLICY]
    if pol in (POL_LRU, POL_FIFO):
        best = 0
        stamp = sl[S_STAMP, k0]
        for w in range(1, ways):
            st = sl[S_STAMP, k0 + w]
            if st < stamp:
                best = w
                stamp = st
        return best
    if pol == POL_RANDOM:
        x = rng[a]
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
        rng[a] = x
        way = np.int64(x % np.uint64(ways))
        return int(way)
    bits = plru[ar[a, A_PLRU] + s]
    one = np.uint64(1)
    node = 1
    half = ways >> 1
    lo = 0
    while half:
        if (bits >> np.uint64(node)) & one:
            lo += half
            node = 2 * node + 1
        else:
            node = 2 * node
        half >>= 1
    return lo


@_jit
def _insert(
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, ls: np.ndarray, ms: np.ndarray,
    mc: np.ndarray, a: int, shift: int, vpn: int, asid: int, pa: int, rights: int,
    dirty: int, level: int, pref: int, absent: bool,
) -> None:  # fmt: skip
    """``Tlb.insert``: update in place, or fill the first empty way, or evict a victim.

    ``absent``: the caller's lookup just proved the key is not cached here.
    ``mc``: the first level's memo of hits (see :func:`run`); the entries
    this insert may change the answer for are dropped from it.
    """
    ways = ar[a, A_WAYS]
    s = vpn & (ar[a, A_SETS] - 1)
    k0 = ar[a, A_BASE] + s * ways
    if ar[a, A_LEVEL] == 0:
        mc[vpn & (mc.shape[0] - 1), 0] = -1
    for k in range(k0, k0 + (0 if absent else ways)):
        if sl[S_VPN, k] == vpn and sl[S_ASID, k] == asid and sl[S_SHIFT, k] == shift:
            # In place: keeps the old entry's prefetched/used flags and stamp, then a touch.
            sl[S_PA, k] = pa
            sl[S_RIGHTS, k] = rights
            sl[S_DIRTY, k] = dirty
            sl[S_LEVEL, k] = level
            sl[S_MOD, k] |= 2
            _touch(ar, sl, plru, k)
            return
    way = -1
    for w in range(ways):
        if sl[S_VPN, k0 + w] < 0:
            way = w
            break
    lvl = ar[a, A_LEVEL]
    if way < 0:
        way = _victim(ar, sl, plru, rng, a, k0, s)
        k = k0 + way
        if lvl == 0:
            mc[sl[S_VPN, k] & (mc.shape[0] - 1), 0] = -1
        if sl[S_ASID, k] == GLOBAL:
            ar[a, A_GLOBALS] -= 1
        if sl[S_PREF, k] != 0 and sl[S_USED, k] == 0:
            ls[lvl, T_PF_USELESS] += 1
            if ar[a, A_PFSHARED]:
                ms[M_PF_USELESS] += 1
        ls[lvl, T_EVICTIONS] += 1
    k = k0 + way
    sl[S_VPN, k] = vpn
    sl[S_SHIFT, k] = shift
    sl[S_ASID, k] = asid
    sl[S_PA, k] = pa
    sl[S_RIGHTS, k] = rights
    sl[S_DIRTY, k] = dirty
    sl[S_LEVEL, k] = level
    sl[S_PREF, k] = pref
    sl[S_USED, k] = 0
    sl[S_STAMP, k] = 0
    sl[S_MOD, k] |= 2
    if asid == GLOBAL:
        ar[a, A_GLOBALS] += 1
    if pref:
        ls[lvl, T_PF_FILLS] += 1
    pol = ar[a, A_POLICY]
    if pol in (POL_LRU, POL_FIFO):
        ar[a, A_CLOCK] += 1
        sl[S_STAMP, k] = ar[a, A_CLOCK]
    elif pol == POL_PLRU:
        _plru_touch(plru, ar[a, A_PLRU] + s, ways, way)


@_jit
def _fill(
    lv: np.ndarray, ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray,
    ls: np.ndarray, ms: np.ndarray, mc: np.ndarray, l0: int, l1: int, page_pa: int,
    page_shift: int, vpn12: int, asid: int, rights: int, dirty: int,
    level: int, pref: int, absent: bool,
) -> None:  # fmt: skip
    """``Mmu._fill`` over levels ``l0..l1-1``: each level caches the page at the size it holds.

    ``absent``: lookups just missed in all those levels, so no update in place is possible.
    """
    pidx = (page_shift - 12) // 9
    page_mask = (1 << (page_shift - 12)) - 1
    for lvl in range(l0, l1):
        a = lv[lvl, L_FILL + 2 * pidx]
        if a < 0:
            continue
        shift = lv[lvl, L_FILL + 2 * pidx + 1]
        sub = shift - 12
        pa = page_pa + ((((vpn12 & page_mask) >> sub) << sub) << 12)
        _insert(ar, sl, plru, rng, ls, ms, mc, a, shift, vpn12 >> sub, asid, pa, rights, dirty, level,
                pref, absent)  # fmt: skip


@_jit
def _pwc_skip(
    cfg: np.ndarray, ms: np.ndarray, misc: np.ndarray, pwc_asid: np.ndarray, pwc_tag: np.ndarray,
    pwc_stamp: np.ndarray, vpn12: int, stop: int,
) -> int:  # fmt: skip
    """``Mmu._pwc_skip`` + ``PageWalkCache.skipped_refs``: reads the PWC lets a walk skip."""
    if cfg[C_PWC] == 0:
        return 0
    ms[M_PWC_LOOKUPS] += 1
    ms[M_CYCLES] += cfg[C_PWC_LAT]
    top = cfg[C_TOP]
    asid = cfg[C_ASID]
    n = cfg[C_PWC_ENTRIES]
    skip = 0
    for k in range(stop + 1, top + 1):
        tag = vpn12 >> (9 * k)
        for j in range(n):
            if pwc_stamp[k, j] != 0 and pwc_tag[k, j] == tag and pwc_asid[k, j] == asid:
                misc[X_PWC_CLOCK] += 1
                pwc_stamp[k, j] = misc[X_PWC_CLOCK]
                skip = top - k + 1
                break
        if skip:
            break
    if skip:
        ms[M_PWC_HITS] += 1
    for k in range(stop + 1, top + 1):
        tag = vpn12 >> (9 * k)
        found = -1
        oldest = 0
        for j in range(n):
            st = pwc_stamp[k, j]
            if st != 0 and pwc_tag[k, j] == tag and pwc_asid[k, j] == asid:
                found = j
                break
            if st < pwc_stamp[k, oldest]:
                oldest = j
        if found < 0:
            # Insert; a full cache drops its least recently used tag (OrderedDict.popitem(last=False)).
            found = oldest
            pwc_tag[k, found] = tag
            pwc_asid[k, found] = asid
        misc[X_PWC_CLOCK] += 1
        pwc_stamp[k, found] = misc[X_PWC_CLOCK]
    return skip


@_jit
def _walk(
    cfg: np.ndarray, ms: np.ndarray, misc: np.ndarray, pinfo: np.ndarray, pwc_asid: np.ndarray,
    pwc_tag: np.ndarray, pwc_stamp: np.ndarray, p: int, vpn12: int, write: bool,
) -> None:  # fmt: skip
    """``Mmu._walk`` of a walk known to succeed: counts its reads, sets D on writes."""
    refs = pinfo[p, P_REFS] - _pwc_skip(cfg, ms, misc, pwc_asid, pwc_tag, pwc_stamp, vpn12, pinfo[p, P_LEVEL])
    ms[M_WALK_REFS] += refs
    ms[M_CYCLES] += refs * cfg[C_WRC]
    if write:
        if cfg[C_UPDATE_AD]:
            pinfo[p, P_DIRTY] = 1
        pinfo[p, P_WALKED] |= 2
    else:
        pinfo[p, P_WALKED] |= 1


@_jit
def run(
    addrs: np.ndarray, start: int, out: np.ndarray, cfg: np.ndarray, lv: np.ndarray,
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, ls: np.ndarray,
    ms: np.ndarray, misc: np.ndarray, pwc_asid: np.ndarray, pwc_tag: np.ndarray,
    pwc_stamp: np.ndarray, queue: np.ndarray, pinfo: np.ndarray, hidx: np.ndarray,
    need: np.ndarray, targets: np.ndarray, mc: np.ndarray, wc: np.ndarray, wm: np.ndarray,
    frames: np.ndarray, fidx: np.ndarray, lut: np.ndarray, pstart: np.ndarray, counts: np.ndarray,
    res: np.ndarray,
) -> tuple[int, int]:  # fmt: skip
    """Translate addresses ``start..`` into ``out`` until done or one needs Python.

    ``addrs`` and ``out`` are uint64 arrays viewed as int64 (no copies).
    Returns ``(code, pos)``; nothing of address ``pos`` has been
    applied when the code is not ``DONE``. A page missing from the regions
    is walked here when the snapshot holds its page-table frames and the
    tables have room (``counts[0]`` rows used); else ``NEED_OWN``.

    ``mc`` (``(2**k, 4)`` scratch) memoizes first-level hits when the first
    level is one array of 4 KiB entries: row ``vpn & mask`` holds ``(vpn,
    slot, translated page base, -)`` of a page whose lookup hit ``slot``
    with the rights and no dirty re-walk due. Such a hit changes nothing a
    lookup reads, and every insert into the first level drops the rows it
    may change (:func:`_insert`), so while a row is there the page's lookup
    answers ``slot`` again, with the same outcome: the tight loop below then
    does only what that hit does (counters, the touch) and the full path
    runs for everything else. The memo is cleared on entry (the TLB may
    have changed between calls).
    """
    n = addrs.shape[0]
    top = cfg[C_TOP]
    nlev = cfg[C_NLEV]
    last = nlev - 1
    bit = cfg[C_BIT]
    write = cfg[C_WRITE] != 0
    asid = cfg[C_ASID]
    pf_kind = cfg[C_PF_KIND]
    degree = cfg[C_PF_DEGREE]
    deferred = cfg[C_PF_DEFERRED] != 0
    misc[X_NEED] = 0
    mc_mask = mc.shape[0] - 1
    for h in range(mc.shape[0]):
        mc[h, 0] = -1
    a0 = lv[0, L_FIRST] if nlev > 0 else 0
    use_mc = nlev > 0 and lv[0, L_NARR] == 1 and ar[a0, A_NSHIFT] == 1 and ar[a0, A_SHIFT0] == 12
    lru0 = use_mc and ar[a0, A_POLICY] == POL_LRU
    lat0 = lv[0, L_LAT] if nlev > 0 else 0
    i = start
    while i < n:
        if use_mc:
            # -- memoized first-level hits: counters in locals, written back once -----------
            j = i
            if lru0:
                clock = ar[a0, A_CLOCK]
                while j < n:
                    va = addrs[j]
                    vpn12 = (va >> 12) & VPN_MASK
                    h = vpn12 & mc_mask
                    if mc[h, 0] != vpn12:
                        break
                    clock += 1
                    sl[S_STAMP, mc[h, 1]] = clock
                    out[j] = mc[h, 2] | (va & 0xFFF)
                    j += 1
                ar[a0, A_CLOCK] = clock
            else:
                while j < n:
                    va = addrs[j]
                    vpn12 = (va >> 12) & VPN_MASK
                    h = vpn12 & mc_mask
                    if mc[h, 0] != vpn12:
                        break
                    _touch(ar, sl, plru, mc[h, 1])
                    out[j] = mc[h, 2] | (va & 0xFFF)
                    j += 1
            if j > i:
                d = j - i
                ms[M_TRANSLATIONS] += d
                ls[0, T_LOOKUPS] += d
                ls[0, T_HITS] += d
                ls[0, T_CYCLES] += d * lat0
                i = j
                if i >= n:
                    break
        vpn12 = (addrs[i] >> 12) & VPN_MASK
        off12 = addrs[i] & 0xFFF
        hit_lvl = -1
        k = -1
        for lvl in range(nlev):
            k = _level_find(lv, ar, sl, lvl, vpn12, asid, False)
            if k >= 0:
                hit_lvl = lvl
                break
        if hit_lvl >= 0:
            # -- a hit: check everything before changing anything ------------------------
            if sl[S_RIGHTS, k] & bit == 0:
                return STOP, i
            rewalk = write and sl[S_DIRTY, k] == 0
            p = -1
            if rewalk:
                p = _find_page(hidx, top, vpn12)
                if p < 0:
                    p = _resolve_one(vpn12, top, wc, wm, frames, fidx, lut, pstart, pinfo, counts, hidx, res)
                if p < 0:
                    return NEED_OWN, i
                if pinfo[p, P_FAULT] != 0 or pinfo[p, P_RIGHTS] & bit == 0:
                    return STOP, i
            ms[M_TRANSLATIONS] += 1
            for lvl in range(hit_lvl + 1):
                ls[lvl, T_LOOKUPS] += 1
                ls[lvl, T_CYCLES] += lv[lvl, L_LAT]
                if lvl < hit_lvl:
                    ls[lvl, T_MISSES] += 1
            ls[hit_lvl, T_HITS] += 1
            _touch(ar, sl, plru, k)
            if sl[S_PREF, k] != 0 and sl[S_USED, k] == 0:
                sl[S_USED, k] = 1
                sl[S_MOD, k] |= 1
                ls[hit_lvl, T_PF_USEFUL] += 1
                ms[M_PF_USEFUL] += 1
            if rewalk:
                ms[M_DIRTY_WALKS] += 1
                _walk(cfg, ms, misc, pinfo, pwc_asid, pwc_tag, pwc_stamp, p, vpn12, True)
                page_shift = 12 + 9 * pinfo[p, P_LEVEL]
                e_asid = GLOBAL if pinfo[p, P_GLOBAL] else asid
                _fill(lv, ar, sl, plru, rng, ls, ms, mc, 0, nlev, pinfo[p, P_PA], page_shift, vpn12, e_asid,
                      pinfo[p, P_RIGHTS], pinfo[p, P_DIRTY], pinfo[p, P_LEVEL], 0, False)  # fmt: skip
                mask = (1 << (page_shift - 12)) - 1
                out[i] = pinfo[p, P_PA] | ((vpn12 & mask) << 12) | off12
                i += 1
                continue
            e_shift = sl[S_SHIFT, k]
            e_pa = sl[S_PA, k]
            if hit_lvl > 0:
                _fill(lv, ar, sl, plru, rng, ls, ms, mc, 0, hit_lvl, e_pa, e_shift, vpn12, sl[S_ASID, k],
                      sl[S_RIGHTS, k], sl[S_DIRTY, k], sl[S_LEVEL, k], 0, True)  # fmt: skip
            mask = (1 << (e_shift - 12)) - 1
            page = e_pa | ((vpn12 & mask) << 12)
            out[i] = page | off12
            if hit_lvl == 0 and use_mc:
                h = vpn12 & mc_mask
                mc[h, 0] = vpn12
                mc[h, 1] = k
                mc[h, 2] = page
            i += 1
            continue
        # -- a miss everywhere: the walk must succeed and its prefetches be resolvable ---------
        p = _find_page(hidx, top, vpn12)
        if p < 0:
            p = _resolve_one(vpn12, top, wc, wm, frames, fidx, lut, pstart, pinfo, counts, hidx, res)
        if p < 0:
            return NEED_OWN, i
        if pinfo[p, P_FAULT] != 0 or pinfo[p, P_RIGHTS] & bit == 0:
            return STOP, i
        page_shift = 12 + 9 * pinfo[p, P_LEVEL]
        npages = 1 << (page_shift - 12)
        nt = 0
        step = 0
        if pf_kind == 1:
            step = npages
            base = vpn12 & ~(npages - 1)
            for j in range(1, degree + 1):
                tv = base + j * npages
                if tv < VPN_LIMIT:
                    targets[nt] = tv
                    nt += 1
        elif pf_kind == 2 and misc[X_HAS_LAST] != 0:
            step = vpn12 - misc[X_LAST]
            if step != 0 and step == misc[X_STRIDE]:
                for j in range(1, degree + 1):
                    tv = vpn12 + j * step
                    if 0 <= tv < VPN_LIMIT:
                        targets[nt] = tv
                        nt += 1
        if nt and not deferred:
            missing = 0
            for j in range(nt):
                q = _find_page(hidx, top, targets[j])
                if q >= 0 and pinfo[q, P_FAULT] == 2:
                    return STOP, i
                if q < 0:
                    need[2 * missing] = targets[j]
                    need[2 * missing + 1] = step
                    missing += 1
            if missing:
                misc[X_NEED] = missing
                return NEED_MORE, i
        ms[M_TRANSLATIONS] += 1
        for lvl in range(nlev):
            ls[lvl, T_LOOKUPS] += 1
            ls[lvl, T_MISSES] += 1
            ls[lvl, T_CYCLES] += lv[lvl, L_LAT]
        ms[M_WALKS] += 1
        _walk(cfg, ms, misc, pinfo, pwc_asid, pwc_tag, pwc_stamp, p, vpn12, write)
        e_asid = GLOBAL if pinfo[p, P_GLOBAL] else asid
        _fill(lv, ar, sl, plru, rng, ls, ms, mc, 0, nlev, pinfo[p, P_PA], page_shift, vpn12, e_asid,
              pinfo[p, P_RIGHTS], pinfo[p, P_DIRTY], pinfo[p, P_LEVEL], 0, True)  # fmt: skip
        if pf_kind == 2:
            if misc[X_HAS_LAST] != 0:
                misc[X_STRIDE] = vpn12 - misc[X_LAST]
            misc[X_LAST] = vpn12
            misc[X_HAS_LAST] = 1
        if nt:
            ms[M_PF_REQUESTED] += nt
            for j in range(nt):
                tv = targets[j]
                if deferred:
                    cap = cfg[C_QLIMIT]
                    if misc[X_QCOUNT] >= cap:
                        misc[X_QHEAD] = (misc[X_QHEAD] + 1) % cap
                        misc[X_QCOUNT] -= 1
                        ms[M_PF_OVERFLOWED] += 1
                    queue[(misc[X_QHEAD] + misc[X_QCOUNT]) % cap] = tv
                    misc[X_QCOUNT] += 1
                    continue
                # Mmu._prefetch: skip cached pages, probe-walk, install in the last level.
                if _level_find(lv, ar, sl, last, tv, asid, True) >= 0:
                    ms[M_PF_REDUNDANT] += 1
                    continue  # (the target loop)
                ms[M_PF_ISSUED] += 1
                q = _find_page(hidx, top, tv)
                ms[M_PF_WALK_REFS] += pinfo[q, P_REFS]
                if pinfo[q, P_FAULT] != 0:
                    ms[M_PF_DROPPED] += 1
                    pinfo[q, P_WALKED] |= 4
                    continue
                pinfo[q, P_WALKED] |= 1
                q_asid = GLOBAL if pinfo[q, P_GLOBAL] else asid
                q_shift = 12 + 9 * pinfo[q, P_LEVEL]
                _fill(lv, ar, sl, plru, rng, ls, ms, mc, last, nlev, pinfo[q, P_PA], q_shift, tv, q_asid,
                      pinfo[q, P_RIGHTS], pinfo[q, P_DIRTY], pinfo[q, P_LEVEL], 1, True)  # fmt: skip
                ms[M_PF_INSTALLED] += 1
        mask = npages - 1
        out[i] = pinfo[p, P_PA] | ((vpn12 & mask) << 12) | off12
        i += 1
    return DONE, n


# -- page walks over a snapshot of the page-table frames -----------------------------------------
#
# ``frames[row]`` holds the 512 PTEs of one 4 KiB frame of guest memory;
# ``fidx`` maps frame numbers to rows (same open addressing as ``hidx``).
# The walks below are ``X86_64.walk`` and ``RiscV.walk`` in probe mode
# (access "p", no rights check), line for line, reading PTEs from the
# snapshot; with ``set_ad`` they also set the accessed/dirty bits there that
# the real walk would set in memory.

# wc: walker constants (int64)
W_KIND: Final = 0  # 0 x86-64, 1 RISC-V
W_LEVELS: Final = 1
W_VA_BITS: Final = 2
W_ROOT: Final = 3
W_NXE: Final = 4
W_BASE_PFN: Final = 5  # memory is frames [base, end)
W_END_PFN: Final = 6
W_NCOL: Final = 7
# wm: x86-64 masks (uint64): address mask, reserved bits of table entries per level, of large leaves
WM_ADDR: Final = 0
WM_RSVD_TABLE: Final = 1  # + level (0..4)
WM_RSVD_LARGE: Final = 6  # + level (1, 2)
WM_NCOL: Final = 9

# walk results
WALK_OK: Final = 0
WALK_FAULT: Final = 1
WALK_NEED_FRAME: Final = 2

_U0: Final = np.uint64(0)
_X86_P: Final = np.uint64(1)
_X86_RW: Final = np.uint64(1 << 1)
_X86_US: Final = np.uint64(1 << 2)
_X86_A: Final = np.uint64(1 << 5)
_X86_D: Final = np.uint64(1 << 6)
_X86_PS: Final = np.uint64(1 << 7)
_X86_G: Final = np.uint64(1 << 8)
_X86_XD: Final = np.uint64(1 << 63)
_RV_V: Final = np.uint64(1 << 0)
_RV_R: Final = np.uint64(1 << 1)
_RV_W: Final = np.uint64(1 << 2)
_RV_X: Final = np.uint64(1 << 3)
_RV_U: Final = np.uint64(1 << 4)
_RV_G: Final = np.uint64(1 << 5)
_RV_A: Final = np.uint64(1 << 6)
_RV_D: Final = np.uint64(1 << 7)
_RV_RSVD: Final = np.uint64(((1 << 64) - 1) & ~((1 << 54) - 1))
_RV_NONLEAF_RSVD: Final = np.uint64((((1 << 64) - 1) & ~((1 << 54) - 1)) | (1 << 6) | (1 << 7) | (1 << 4))
_RV_PPN: Final = np.uint64(((1 << 44) - 1) << 10)


@_jit
def _frame_row(fidx: np.ndarray, pfn: int) -> int:
    """Row of frame ``pfn`` in the snapshot, or -1."""
    mask = fidx.shape[0] - 1
    h = _hash(pfn, mask)
    while True:
        k = fidx[h, 0]
        if k == pfn:
            row: int = fidx[h, 1]
            return row
        if k < 0:
            return -1
        h = (h + 1) & mask


@_jit
def index_insert(idx: np.ndarray, key: int, row: int) -> None:
    """Add ``key -> row`` to an open-addressing table (the caller keeps it at most half full)."""
    mask = idx.shape[0] - 1
    h = _hash(key, mask)
    while idx[h, 0] >= 0:
        h = (h + 1) & mask
    idx[h, 0] = key
    idx[h, 1] = row


@_jit
def _pt_walk(
    vpn: int, wc: np.ndarray, wm: np.ndarray, frames: np.ndarray, fidx: np.ndarray,
    res: np.ndarray, set_ad: bool, write: bool,
) -> int:  # fmt: skip
    """Probe-walk page ``vpn``; fill ``res`` like a ``pinfo`` row (rights = perms * 2 + user).

    Returns ``WALK_OK``, ``WALK_FAULT`` (``res[P_LEVEL]`` = fault level, -1
    for a non-canonical address) or ``WALK_NEED_FRAME`` (``res[0]`` = the
    frame to add to the snapshot).
    """
    va_bits = wc[W_VA_BITS]
    top = vpn >> (va_bits - 13)
    if top != 0 and top != (1 << (65 - va_bits)) - 1:
        res[P_LEVEL] = -1
        return WALK_FAULT
    x86 = wc[W_KIND] == 0
    table = wc[W_ROOT]
    level = wc[W_LEVELS] - 1
    refs = 0
    writable = True
    usermode = True
    nx = False
    global_ = False
    pte = _U0
    pte_pa = 0
    row = -1
    while True:
        pte_pa = table + ((vpn >> (9 * level)) & 0x1FF) * 8
        pfn = pte_pa >> 12
        if pfn < wc[W_BASE_PFN] or pfn >= wc[W_END_PFN]:
            res[P_LEVEL] = level  # a table outside memory: "reserved" in both formats
            return WALK_FAULT
        row = _frame_row(fidx, pfn)
        if row < 0:
            res[0] = pfn
            return WALK_NEED_FRAME
        pte = frames[row, (pte_pa >> 3) & 511]
        refs += 1
        if x86:
            if not pte & _X86_P:
                res[P_LEVEL] = level
                return WALK_FAULT
            if level > 0 and pte & _X86_PS and level < 3:
                if pte & wm[WM_RSVD_LARGE + level]:
                    res[P_LEVEL] = level
                    return WALK_FAULT
                leaf = True
            else:
                if pte & wm[WM_RSVD_TABLE + level]:
                    res[P_LEVEL] = level
                    return WALK_FAULT
                leaf = level == 0
            if not pte & _X86_RW:
                writable = False
            if not pte & _X86_US:
                usermode = False
            if pte & _X86_XD:
                nx = True
            if leaf:
                break
            if set_ad and not pte & _X86_A:
                frames[row, (pte_pa >> 3) & 511] = pte | _X86_A
            table = np.int64(pte & wm[WM_ADDR])
            level -= 1
        else:
            if not pte & _RV_V:
                res[P_LEVEL] = level
                return WALK_FAULT
            if (pte & _RV_W and not pte & _RV_R) or pte & _RV_RSVD:
                res[P_LEVEL] = level
                return WALK_FAULT
            if pte & _RV_G:
                global_ = True
            if pte & (_RV_R | _RV_X):
                break
            if pte & _RV_NONLEAF_RSVD or level == 0:
                res[P_LEVEL] = level
                return WALK_FAULT
            table = np.int64((pte & _RV_PPN) << np.uint64(2))
            level -= 1
    size_pages = 1 << (9 * level)
    if x86:
        nx = nx and wc[W_NXE] != 0
        perms = 4 | (2 if writable else 0) | (0 if nx else 1)
        user = usermode
        page_pa = np.int64(pte & wm[WM_ADDR]) & ~((size_pages << 12) - 1)
        global_ = (pte & _X86_G) != _U0
        a_bit = _X86_A
        d_bit = _X86_D
    else:
        v = np.int64((pte >> np.uint64(1)) & np.uint64(7))
        perms = (4 if v & 1 else 0) | (2 if v & 2 else 0) | (1 if v & 4 else 0)
        user = (pte & _RV_U) != _U0
        ppn = np.int64((pte & _RV_PPN) >> np.uint64(10))
        if ppn & (size_pages - 1):
            res[P_LEVEL] = level  # misaligned superpage
            return WALK_FAULT
        page_pa = ppn << 12
        a_bit = _RV_A
        d_bit = _RV_D
    if set_ad:
        new = pte | a_bit
        if write:
            new |= d_bit
        if new != pte:
            frames[row, (pte_pa >> 3) & 511] = new
            pte = new
    res[P_NPAGES] = size_pages
    res[P_FAULT] = 0
    res[P_REFS] = refs
    res[P_LEVEL] = level
    res[P_PA] = page_pa
    res[P_RIGHTS] = perms * 2 + (1 if user else 0)
    res[P_GLOBAL] = 1 if global_ else 0
    res[P_DIRTY] = 1 if pte & d_bit else 0
    res[P_WALKED] = 0
    res[P_PTE] = pte_pa
    return WALK_OK


@_jit
def _add_region(
    vpn: int, code: int, top: int, lut: np.ndarray, pstart: np.ndarray, pinfo: np.ndarray,
    counts: np.ndarray, hidx: np.ndarray, res: np.ndarray,
) -> int:  # fmt: skip
    """Append (row ``counts[0]``) and index the region ``_pt_walk`` found for ``vpn``; its row."""
    r: int = counts[0]
    if code == WALK_FAULT:
        lvl = res[P_LEVEL]
        span = 1 if lvl < 0 else 1 << (9 * lvl)
        for c in range(P_NCOL):
            pinfo[r, c] = 0
        pinfo[r, P_NPAGES] = span
        pinfo[r, P_FAULT] = 1
        pinfo[r, P_REFS] = 0 if lvl < 0 else top - lvl + 1
        pinfo[r, P_LEVEL] = lvl
    else:
        span = res[P_NPAGES]
        for c in range(P_NCOL):
            pinfo[r, c] = res[c]
        pinfo[r, P_RIGHTS] = lut[res[P_RIGHTS]]
    first = vpn & ~(span - 1)
    pstart[r] = first
    counts[0] = r + 1
    lvl = 0
    s = span
    while s > 1:
        s >>= 9
        lvl += 1
    index_insert(hidx, (first << 6) | lvl, r)
    return r


@_jit
def _resolve_one(
    vpn: int, top: int, wc: np.ndarray, wm: np.ndarray, frames: np.ndarray, fidx: np.ndarray,
    lut: np.ndarray, pstart: np.ndarray, pinfo: np.ndarray, counts: np.ndarray, hidx: np.ndarray,
    res: np.ndarray,
) -> int:  # fmt: skip
    """Resolve page ``vpn``'s region from the kernel: its row, or -1 (a frame is missing, or no room)."""
    r = counts[0]
    if r >= pinfo.shape[0] or 2 * (r + 1) > hidx.shape[0]:
        return -1
    code = _pt_walk(vpn, wc, wm, frames, fidx, res, False, False)
    if code == WALK_NEED_FRAME:
        return -1
    return _add_region(vpn, code, top, lut, pstart, pinfo, counts, hidx, res)


@_jit
def resolve_pages(
    vpns: np.ndarray, start: int, stop_bit: int, degree: int, wc: np.ndarray, wm: np.ndarray,
    frames: np.ndarray, fidx: np.ndarray, lut: np.ndarray, pstart: np.ndarray, pinfo: np.ndarray,
    counts: np.ndarray, hidx: np.ndarray, tbuf: np.ndarray, res: np.ndarray,
    tlb_lv: np.ndarray, tlb_ar: np.ndarray, tlb_sl: np.ndarray, asid: int, skip_cached: bool,
    seen: np.ndarray,
) -> tuple[int, int]:  # fmt: skip
    """Resolve the regions of ``vpns[start:]`` in order, appending rows and indexing them.

    ``vpns`` are 4 KiB page numbers, or (``skip_cached``) addresses viewed as
    int64: then pages some TLB level holds now, except the first one's, are
    resolved too (a later eviction may make the kernel walk them) but never
    stop the resolution (a hit does not fault). ``counts`` = [rows, prefetch targets written to ``tbuf``,
    frame needed]. ``stop_bit``: stop after the first page an access needing
    that rights bit faults on (0: never). ``degree``: next-page targets per
    new region. ``lut`` maps perms * 2 + user to the MMU's rights mask.
    Returns ``(WALK_OK, len)``, ``(WALK_FAULT, j)`` after stopping at
    ``vpns[j]``, or ``(WALK_NEED_FRAME, j)`` with the frame in ``counts[2]``.
    ``seen`` (a power-of-two scratch array) remembers, direct-mapped, pages
    found resolved, which spares most index probes over long windows.
    """
    top = wc[W_LEVELS] - 1
    nlev = tlb_lv.shape[0]
    smask = seen.shape[0] - 1
    for h in range(seen.shape[0]):
        seen[h] = -1
    for j in range(start, vpns.shape[0]):
        vpn = vpns[j]
        if skip_cached:
            vpn = (vpn >> 12) & VPN_MASK
        if seen[vpn & smask] == vpn:
            continue
        if _find_page(hidx, top, vpn) >= 0:
            seen[vpn & smask] = vpn
            continue
        cached = False
        if skip_cached and j > 0:
            for lvl in range(nlev):
                if _level_find(tlb_lv, tlb_ar, tlb_sl, lvl, vpn, asid, True) >= 0:
                    cached = True
                    break
        code = _pt_walk(vpn, wc, wm, frames, fidx, res, False, False)
        if code == WALK_NEED_FRAME:
            counts[2] = res[0]
            return WALK_NEED_FRAME, j
        r = _add_region(vpn, code, top, lut, pstart, pinfo, counts, hidx, res)
        span = pinfo[r, P_NPAGES]
        first = pstart[r]
        if code == WALK_OK:
            for k in range(1, degree + 1):
                t = first + k * span
                if t < VPN_LIMIT:
                    tbuf[counts[1]] = t
                    counts[1] += 1
        if stop_bit and not cached and (code == WALK_FAULT or pinfo[r, P_RIGHTS] & stop_bit == 0):
            return WALK_FAULT, j
    return WALK_OK, vpns.shape[0]


@_jit
def replay_ad(
    pstart: np.ndarray, pinfo: np.ndarray, n: int, wc: np.ndarray, wm: np.ndarray,
    frames: np.ndarray, fidx: np.ndarray, res: np.ndarray,
) -> None:  # fmt: skip
    """Set in the snapshot the A/D bits of every walk the kernel simulated (``P_WALKED``)."""
    for r in range(n):
        flags = pinfo[r, P_WALKED]
        if flags:
            _pt_walk(pstart[r], wc, wm, frames, fidx, res, True, (flags & 2) != 0)
