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
prefetch target is not; ``need`` lists ``(vpn, step)`` pairs).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numba import njit

# -- return codes -----------------------------------------------------------------------
DONE: Final = 0
STOP: Final = 1
NEED_OWN: Final = 2
NEED_MORE: Final = 3

GLOBAL: Final = 1 << 16
VPN_LIMIT: Final = 1 << 52  # 4 KiB page numbers of a 64-bit address space

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

# -- sl: one row per way ---------------------------------------------------------------------
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
P_NPAGES: Final = 0  # 4 KiB pages it spans (pstart holds its first 4 KiB page number)
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


@njit(cache=True, nogil=True)
def _find_page(pstart: np.ndarray, pinfo: np.ndarray, vpn: int) -> int:
    """Row of the region holding 4 KiB page ``vpn``, or -1 (binary search)."""
    lo = 0
    hi = pstart.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if pstart[mid] <= vpn:
            lo = mid + 1
        else:
            hi = mid
    r = lo - 1
    if r >= 0 and vpn < pstart[r] + pinfo[r, P_NPAGES]:
        return r
    return -1


@njit(cache=True, nogil=True)
def _find(sl: np.ndarray, ar: np.ndarray, a: int, vpn: int, shift: int, asid: int) -> int:
    """Slot of array ``a`` caching (vpn, shift, asid), or -1: one dict probe of ``Tlb._maps``."""
    ways = ar[a, A_WAYS]
    k0 = ar[a, A_BASE] + (vpn & (ar[a, A_SETS] - 1)) * ways
    for k in range(k0, k0 + ways):
        if sl[k, S_VPN] == vpn and sl[k, S_ASID] == asid and sl[k, S_SHIFT] == shift:
            return k
    return -1


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _touch(ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, k: int) -> None:
    """``Tlb._touch``: LRU restamps, PLRU flips tree bits, FIFO/random do nothing."""
    a = sl[k, S_ARR]
    pol = ar[a, A_POLICY]
    if pol == POL_LRU:
        ar[a, A_CLOCK] += 1
        sl[k, S_STAMP] = ar[a, A_CLOCK]
        sl[k, S_MOD] |= 1
    elif pol == POL_PLRU:
        ways = ar[a, A_WAYS]
        rel = k - ar[a, A_BASE]
        _plru_touch(plru, ar[a, A_PLRU] + rel // ways, ways, rel % ways)


@njit(cache=True, nogil=True)
def _victim(
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, a: int, k0: int, s: int
) -> int:
    """``Tlb._victim``: the way to evict from a full set."""
    ways = ar[a, A_WAYS]
    pol = ar[a, A_POLICY]
    if pol in (POL_LRU, POL_FIFO):
        best = 0
        stamp = sl[k0, S_STAMP]
        for w in range(1, ways):
            st = sl[k0 + w, S_STAMP]
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


@njit(cache=True, nogil=True)
def _insert(
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, ls: np.ndarray, ms: np.ndarray,
    a: int, shift: int, vpn: int, asid: int, pa: int, rights: int,
    dirty: int, level: int, pref: int,
) -> None:  # fmt: skip
    """``Tlb.insert``: update in place, or fill the first empty way, or evict a victim."""
    ways = ar[a, A_WAYS]
    s = vpn & (ar[a, A_SETS] - 1)
    k0 = ar[a, A_BASE] + s * ways
    for k in range(k0, k0 + ways):
        if sl[k, S_VPN] == vpn and sl[k, S_ASID] == asid and sl[k, S_SHIFT] == shift:
            # In place: keeps the old entry's prefetched/used flags and stamp, then a touch.
            sl[k, S_PA] = pa
            sl[k, S_RIGHTS] = rights
            sl[k, S_DIRTY] = dirty
            sl[k, S_LEVEL] = level
            sl[k, S_MOD] |= 2
            _touch(ar, sl, plru, k)
            return
    way = -1
    for w in range(ways):
        if sl[k0 + w, S_VPN] < 0:
            way = w
            break
    lvl = ar[a, A_LEVEL]
    if way < 0:
        way = _victim(ar, sl, plru, rng, a, k0, s)
        k = k0 + way
        if sl[k, S_ASID] == GLOBAL:
            ar[a, A_GLOBALS] -= 1
        if sl[k, S_PREF] != 0 and sl[k, S_USED] == 0:
            ls[lvl, T_PF_USELESS] += 1
            if ar[a, A_PFSHARED]:
                ms[M_PF_USELESS] += 1
        ls[lvl, T_EVICTIONS] += 1
    k = k0 + way
    sl[k, S_VPN] = vpn
    sl[k, S_SHIFT] = shift
    sl[k, S_ASID] = asid
    sl[k, S_PA] = pa
    sl[k, S_RIGHTS] = rights
    sl[k, S_DIRTY] = dirty
    sl[k, S_LEVEL] = level
    sl[k, S_PREF] = pref
    sl[k, S_USED] = 0
    sl[k, S_STAMP] = 0
    sl[k, S_MOD] |= 2
    if asid == GLOBAL:
        ar[a, A_GLOBALS] += 1
    if pref:
        ls[lvl, T_PF_FILLS] += 1
    pol = ar[a, A_POLICY]
    if pol in (POL_LRU, POL_FIFO):
        ar[a, A_CLOCK] += 1
        sl[k, S_STAMP] = ar[a, A_CLOCK]
    elif pol == POL_PLRU:
        _plru_touch(plru, ar[a, A_PLRU] + s, ways, way)


@njit(cache=True, nogil=True)
def _fill(
    lv: np.ndarray, ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray,
    ls: np.ndarray, ms: np.ndarray, l0: int, l1: int, page_pa: int,
    page_shift: int, vpn12: int, asid: int, rights: int, dirty: int,
    level: int, pref: int,
) -> None:  # fmt: skip
    """``Mmu._fill`` over levels ``l0..l1-1``: each level caches the page at the size it holds."""
    pidx = (page_shift - 12) // 9
    page_mask = (1 << (page_shift - 12)) - 1
    for lvl in range(l0, l1):
        a = lv[lvl, L_FILL + 2 * pidx]
        if a < 0:
            continue
        shift = lv[lvl, L_FILL + 2 * pidx + 1]
        sub = shift - 12
        pa = page_pa + ((((vpn12 & page_mask) >> sub) << sub) << 12)
        _insert(ar, sl, plru, rng, ls, ms, a, shift, vpn12 >> sub, asid, pa, rights, dirty, level, pref)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def run(
    vpns: np.ndarray, offs: np.ndarray, start: int, out: np.ndarray, cfg: np.ndarray, lv: np.ndarray,
    ar: np.ndarray, sl: np.ndarray, plru: np.ndarray, rng: np.ndarray, ls: np.ndarray,
    ms: np.ndarray, misc: np.ndarray, pwc_asid: np.ndarray, pwc_tag: np.ndarray,
    pwc_stamp: np.ndarray, queue: np.ndarray, pstart: np.ndarray, pinfo: np.ndarray,
    need: np.ndarray,
) -> tuple[int, int]:  # fmt: skip
    """Translate addresses ``start..`` into ``out`` until done or one needs Python.

    An address is given as its 4 KiB page number ``vpns[i]`` and offset
    ``offs[i]``. Returns ``(code, pos)``; nothing of address ``pos`` has been
    applied when the code is not ``DONE``.
    """
    n = vpns.shape[0]
    nlev = cfg[C_NLEV]
    last = nlev - 1
    bit = cfg[C_BIT]
    write = cfg[C_WRITE] != 0
    asid = cfg[C_ASID]
    pf_kind = cfg[C_PF_KIND]
    degree = cfg[C_PF_DEGREE]
    deferred = cfg[C_PF_DEFERRED] != 0
    targets = np.empty(max(degree, 1), dtype=np.int64)
    misc[X_NEED] = 0
    for i in range(start, n):
        vpn12 = vpns[i]
        off12 = offs[i]
        hit_lvl = -1
        k = -1
        for lvl in range(nlev):
            k = _level_find(lv, ar, sl, lvl, vpn12, asid, False)
            if k >= 0:
                hit_lvl = lvl
                break
        if hit_lvl >= 0:
            # -- a hit: check everything before changing anything ------------------------
            if sl[k, S_RIGHTS] & bit == 0:
                return STOP, i
            rewalk = write and sl[k, S_DIRTY] == 0
            p = -1
            if rewalk:
                p = _find_page(pstart, pinfo, vpn12)
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
            if sl[k, S_PREF] != 0 and sl[k, S_USED] == 0:
                sl[k, S_USED] = 1
                sl[k, S_MOD] |= 1
                ls[hit_lvl, T_PF_USEFUL] += 1
                ms[M_PF_USEFUL] += 1
            if rewalk:
                ms[M_DIRTY_WALKS] += 1
                _walk(cfg, ms, misc, pinfo, pwc_asid, pwc_tag, pwc_stamp, p, vpn12, True)
                page_shift = 12 + 9 * pinfo[p, P_LEVEL]
                e_asid = GLOBAL if pinfo[p, P_GLOBAL] else asid
                _fill(lv, ar, sl, plru, rng, ls, ms, 0, nlev, pinfo[p, P_PA], page_shift, vpn12, e_asid,
                      pinfo[p, P_RIGHTS], pinfo[p, P_DIRTY], pinfo[p, P_LEVEL], 0)  # fmt: skip
                mask = (1 << (page_shift - 12)) - 1
                out[i] = pinfo[p, P_PA] | ((vpn12 & mask) << 12) | off12
                continue
            e_shift = sl[k, S_SHIFT]
            e_pa = sl[k, S_PA]
            if hit_lvl > 0:
                _fill(lv, ar, sl, plru, rng, ls, ms, 0, hit_lvl, e_pa, e_shift, vpn12, sl[k, S_ASID],
                      sl[k, S_RIGHTS], sl[k, S_DIRTY], sl[k, S_LEVEL], 0)  # fmt: skip
            mask = (1 << (e_shift - 12)) - 1
            out[i] = e_pa | ((vpn12 & mask) << 12) | off12
            continue
        # -- a miss everywhere: the walk must succeed and its prefetches be resolvable ---------
        p = _find_page(pstart, pinfo, vpn12)
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
                q = _find_page(pstart, pinfo, targets[j])
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
        _fill(lv, ar, sl, plru, rng, ls, ms, 0, nlev, pinfo[p, P_PA], page_shift, vpn12, e_asid,
              pinfo[p, P_RIGHTS], pinfo[p, P_DIRTY], pinfo[p, P_LEVEL], 0)  # fmt: skip
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
                    continue
                ms[M_PF_ISSUED] += 1
                q = _find_page(pstart, pinfo, tv)
                ms[M_PF_WALK_REFS] += pinfo[q, P_REFS]
                if pinfo[q, P_FAULT] != 0:
                    ms[M_PF_DROPPED] += 1
                    pinfo[q, P_WALKED] |= 4
                    continue
                pinfo[q, P_WALKED] |= 1
                q_asid = GLOBAL if pinfo[q, P_GLOBAL] else asid
                _fill(lv, ar, sl, plru, rng, ls, ms, last, nlev, pinfo[q, P_PA], 12 + 9 * pinfo[q, P_LEVEL],
                      tv, q_asid, pinfo[q, P_RIGHTS], pinfo[q, P_DIRTY], pinfo[q, P_LEVEL], 1)  # fmt: skip
                ms[M_PF_INSTALLED] += 1
        mask = npages - 1
        out[i] = pinfo[p, P_PA] | ((vpn12 & mask) << 12) | off12
    return DONE, n


@njit(cache=True, nogil=True)
def cached_mask(
    vpns: np.ndarray, lv: np.ndarray, ar: np.ndarray, sl: np.ndarray, asid: int, mask: np.ndarray
) -> None:
    """``mask[j]`` = some level holds a translation of page ``vpns[j]`` (no side effects)."""
    nlev = lv.shape[0]
    for j in range(vpns.shape[0]):
        hit = False
        for lvl in range(nlev):
            if _level_find(lv, ar, sl, lvl, vpns[j], asid, True) >= 0:
                hit = True
                break
        mask[j] = hit
