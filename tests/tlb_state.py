"""Everything an MMU holds, read the same way from the product (Rust core) and the reference.

The differential tests build one guest of each kind and compare these
snapshots after every step: counters, the TLB way by way with its
replacement state, the page-walk cache's LRU order, the prefetcher's
history, the deferred queue, and guest memory byte for byte (the A/D bits
walks set).
"""

from __future__ import annotations

from typing import Any

PAGE = 4096


def is_product(obj: Any) -> bool:
    """True for a product object (it wraps a ``vmopt._core`` one)."""
    return hasattr(obj, "_core")


def entry_state(e: Any) -> Any:
    """Every field of a TLB entry (None for an invalid way)."""
    if e is None:
        return None
    return (e.vpn, e.shift, e.asid, e.page_pa, e.rights, e.dirty, e.level, e.prefetched, e.used, e.stamp,
            e.set, e.way, e.key)  # fmt: skip


def replacement_state(arr: Any) -> tuple[int, list[int], int, int]:
    """``(clock, PLRU bits per set, random generator state, global entries)`` of one array."""
    if is_product(arr):
        state: tuple[int, list[int], int, int] = arr.replacement_state()
        return state
    return arr._clock, list(arr._plru), arr._rng.state, arr._globals


def array_state(arr: Any) -> dict[str, Any]:
    """One array: its ways, replacement state, length and counters."""
    return {
        "ways": [[entry_state(e) for e in row] for row in arr.state()],
        "replacement": replacement_state(arr),
        "len": len(arr),
        "entries": sorted(entry_state(e) for e in arr),
        "stats": arr.stats.as_dict(),
    }


def queue(mmu: Any) -> list[int]:
    """The deferred prefetch queue, oldest first."""
    if is_product(mmu):
        q: list[int] = mmu._core.queue()
        return q
    return list(mmu._queue)


def prefetcher_history(mmu: Any) -> Any:
    """``(last vpn, stride)`` of a stride prefetcher, None otherwise."""
    if is_product(mmu):
        return mmu._core.prefetcher_history()
    pf = mmu._prefetcher
    if pf is None or not hasattr(pf, "_last_vpn"):
        return None
    return (pf._last_vpn, pf._stride)


def pwc_state(mmu: Any) -> Any:
    """Lookups, hits and each level's LRU order of the page-walk cache."""
    pwc = mmu.pwc
    if pwc is None:
        return None
    if is_product(pwc):
        order = [pwc.order(k) for k in range(1, pwc.levels)]
    else:
        order = [list(pwc._caches[k]) for k in range(1, pwc.levels)]
    return (pwc.lookups, pwc.hits, order)


def memory_state(mem: Any) -> dict[int, bytes]:
    """Every resident frame's bytes."""
    return {pa: mem.read(pa, PAGE) for pa in mem.iter_resident()}


def mmu_state(mmu: Any, mem: Any = None) -> dict[str, Any]:
    """Everything the MMU holds (and, given ``mem``, guest memory)."""
    out: dict[str, Any] = {
        "asid": mmu.asid,
        "stats": mmu.stats.as_dict(),
        "levels": [lv.stats.as_dict() for lv in mmu.all_levels()],
        "names": [lv.name for lv in mmu.all_levels()],
        "total": mmu.total_stats().as_dict(),
        "arrays": [array_state(arr) for lv in mmu.all_levels() for arr in lv.arrays],
        "level_len": [len(lv) for lv in mmu.all_levels()],
        "queue": queue(mmu),
        "pending": mmu.pending_prefetches,
        "prefetcher": prefetcher_history(mmu),
        "pwc": pwc_state(mmu),
        "walk_ref_cycles": mmu.walk_ref_cycles,
    }
    if mem is not None:
        out["memory"] = memory_state(mem)
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any], where: str = "") -> None:
    """Compare two snapshots key by key, naming the first that differs."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], f"{key} differs {where}"


def outcome(fn: Any) -> Any:
    """A call's result, or its exception as (class name, message, cause, level)."""
    try:
        return ("ok", fn())
    except Exception as exc:  # every error is compared, class and message
        return (
            "error",
            type(exc).__name__,
            str(exc),
            getattr(exc, "cause", None),
            getattr(exc, "level", None),
        )
