"""A set-associative TLB array, and a TLB level made of one or more arrays.

This is the reference implementation: plain Python, one dict probe per
page size on a hit. Replacement state is kept in forms that map one-to-one
onto arrays (a stamp per way for LRU/FIFO, tree bits per set for PLRU, an
xorshift64 state for random), so a compiled path can take it over exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Final

from vmopt.tlb.config import TlbConfig, name_levels
from vmopt.tlb.stats import PrefetchStats, TlbStats

__all__ = ["GLOBAL_ASID", "Tlb", "TlbEntry", "TlbLevel", "XorShift64"]

log = logging.getLogger(__name__)

#: ASID code under which global entries are stored; they match every ASID.
GLOBAL_ASID: Final = 1 << 16
_KEY_SHIFT: Final = 17
_MASK64: Final = (1 << 64) - 1


class XorShift64:
    """Marsaglia's xorshift64 (13, 7, 17): the seeded generator of the random policy."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        # splitmix64 of the seed, so seeds 0, 1, 2... give unrelated, nonzero states.
        z = (seed + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        self.state = (z ^ (z >> 31)) or 1

    def next(self) -> int:
        """The next 64-bit value."""
        x = self.state
        x ^= (x << 13) & _MASK64
        x ^= x >> 7
        x ^= (x << 17) & _MASK64
        self.state = x
        return x


class TlbEntry:
    """One cached translation.

    ``page_pa`` is the physical address of the entry's page (of
    ``1 << shift`` bytes). ``rights`` is a bitmask of the (access, mode)
    pairs the page allows, computed at fill time by the paging format.
    ``level`` is the leaf level the walk found (for fault reports).
    """

    __slots__ = (
        "asid", "dirty", "key", "level", "page_pa", "prefetched", "rights", "set", "shift",
        "stamp", "used", "vpn", "way",
    )  # fmt: skip

    def __init__(
        self, vpn: int, shift: int, asid: int, page_pa: int, rights: int, dirty: bool, level: int
    ) -> None:
        self.vpn = vpn
        self.shift = shift
        self.asid = asid
        self.key = (vpn << _KEY_SHIFT) | asid
        self.page_pa = page_pa
        self.rights = rights
        self.dirty = dirty
        self.level = level
        self.prefetched = False
        self.used = False
        self.stamp = 0
        self.set = 0
        self.way = 0

    @property
    def global_(self) -> bool:
        """True for an entry that matches every ASID."""
        return self.asid == GLOBAL_ASID

    @property
    def va(self) -> int:
        """First virtual address the entry covers."""
        return self.vpn << self.shift

    @property
    def size(self) -> int:
        """Bytes the entry covers."""
        return 1 << self.shift

    def __repr__(self) -> str:
        asid = "G" if self.global_ else str(self.asid)
        return f"TlbEntry(va={self.va:#x}, size={self.size:#x}, asid={asid}, pa={self.page_pa:#x})"


class Tlb:
    """One set-associative array (see :class:`TlbConfig`).

    ``lookup`` and ``insert`` do not count statistics by themselves except
    evictions and prefetch outcomes; :class:`TlbLevel` counts lookups, so
    split arrays of one level count a lookup once.
    """

    def __init__(self, config: TlbConfig, stats: TlbStats | None = None) -> None:
        config = name_levels([[config]])[0][0]  # an unnamed array is "l1" (issue 11)
        self.config = config
        self.stats = stats if stats is not None else TlbStats(name=config.name)
        self.sets = config.sets
        self.ways = config.ways
        self._set_mask = self.sets - 1
        self._shifts = tuple(size.bit_length() - 1 for size in config.page_sizes)
        self._maps: dict[int, dict[int, TlbEntry]] = {s: {} for s in self._shifts}
        self._table: list[list[TlbEntry | None]] = [[None] * self.ways for _ in range(self.sets)]
        self._policy = config.policy
        self._lru = config.policy == "lru"
        self._plru_on = config.policy == "plru"
        self._probe = tuple(self._maps.items())
        self._clock = 0
        self._plru = [0] * self.sets
        self._rng = XorShift64(config.seed)
        self._globals = 0
        #: The MMU's PrefetchStats, to count prefetched entries dropped unused there too.
        self.prefetch_stats: PrefetchStats | None = None

    # -- lookup -------------------------------------------------------------------

    def lookup(self, va: int, asid: int) -> TlbEntry | None:
        """The entry covering ``va`` for ``asid`` (or a global one), updating recency."""
        # The hot path of every translation: one dict probe per page size.
        for shift, entries in self._probe:
            vpn_key = (va >> shift) << _KEY_SHIFT
            e = entries.get(vpn_key | asid)
            if e is None:
                if not self._globals:
                    continue
                e = entries.get(vpn_key | GLOBAL_ASID)
                if e is None:
                    continue
            if self._lru:
                self._clock += 1
                e.stamp = self._clock
            elif self._plru_on:
                self._plru_touch(e.set, e.way)
            return e
        return None

    def peek(self, va: int, asid: int) -> TlbEntry | None:
        """Like :meth:`lookup` but without touching replacement state."""
        for shift, entries in self._maps.items():
            vpn = va >> shift
            e = entries.get((vpn << _KEY_SHIFT) | asid) or entries.get((vpn << _KEY_SHIFT) | GLOBAL_ASID)
            if e is not None:
                return e
        return None

    def _touch(self, e: TlbEntry) -> None:
        policy = self._policy
        if policy == "lru":
            self._clock += 1
            e.stamp = self._clock
        elif policy == "plru":
            self._plru_touch(e.set, e.way)

    # -- replacement ----------------------------------------------------------------

    def _plru_touch(self, s: int, way: int) -> None:
        """Point every tree node on ``way``'s path away from it."""
        bits = self._plru[s]
        node = 1
        half = self.ways >> 1
        lo = 0
        while half:
            right = way >= lo + half
            if right:
                bits &= ~(1 << node)  # point left, away from the right half
                lo += half
                node = 2 * node + 1
            else:
                bits |= 1 << node  # point right
                node = 2 * node
            half >>= 1
        self._plru[s] = bits

    def _victim(self, s: int) -> int:
        row = self._table[s]
        policy = self._policy
        if policy == "lru" or policy == "fifo":
            best = 0
            stamp = row[0].stamp  # type: ignore[union-attr]
            for w in range(1, self.ways):
                st = row[w].stamp  # type: ignore[union-attr]
                if st < stamp:
                    best, stamp = w, st
            return best
        if policy == "random":
            return self._rng.next() % self.ways
        bits = self._plru[s]
        node = 1
        half = self.ways >> 1
        lo = 0
        while half:
            if bits >> node & 1:
                lo += half
                node = 2 * node + 1
            else:
                node = 2 * node
            half >>= 1
        return lo

    # -- fill -----------------------------------------------------------------------

    def fits(self, page_size: int) -> int | None:
        """The shift this array would cache a page of ``page_size`` at, or None."""
        best = None
        for shift in self._shifts:
            if 1 << shift <= page_size:
                best = shift
        return best

    def insert(self, entry: TlbEntry) -> TlbEntry | None:
        """Install ``entry``; return the entry it evicted, if any.

        An entry already cached under the same key is replaced in place.
        """
        entries = self._maps[entry.shift]
        old = entries.get(entry.key)
        if old is not None:
            entry.set, entry.way = old.set, old.way
            self._table[old.set][old.way] = entry
            entries[entry.key] = entry
            entry.prefetched, entry.used = old.prefetched, old.used
            # An update in place (a dirty re-walk) is a use, not a new allocation:
            # LRU and PLRU count it as a touch; FIFO keeps the way's fill order.
            entry.stamp = old.stamp
            self._touch(entry)
            return None
        s = entry.vpn & self._set_mask
        row = self._table[s]
        victim = None
        try:
            way = row.index(None)
        except ValueError:
            way = self._victim(s)
            victim = row[way]
            assert victim is not None
            self._drop(victim)
            self.stats.evictions += 1
        entry.set, entry.way = s, way
        row[way] = entry
        entries[entry.key] = entry
        if entry.asid == GLOBAL_ASID:
            self._globals += 1
        if entry.prefetched:
            self.stats.prefetch_fills += 1
        self._fill_stamp(entry)
        return victim

    def _fill_stamp(self, e: TlbEntry) -> None:
        if self._policy in ("lru", "fifo"):
            self._clock += 1
            e.stamp = self._clock
        elif self._policy == "plru":
            self._plru_touch(e.set, e.way)

    def _drop(self, e: TlbEntry) -> None:
        """Remove ``e`` from the lookup maps (its way is overwritten or cleared by the caller)."""
        del self._maps[e.shift][e.key]
        if e.asid == GLOBAL_ASID:
            self._globals -= 1
        if e.prefetched and not e.used:
            self.stats.prefetch_useless += 1
            if self.prefetch_stats is not None:
                self.prefetch_stats.useless += 1

    def _remove(self, e: TlbEntry) -> None:
        self._drop(e)
        self._table[e.set][e.way] = None
        self.stats.invalidations += 1

    # -- invalidation -----------------------------------------------------------------

    def __iter__(self) -> Iterator[TlbEntry]:
        for entries in self._maps.values():
            yield from list(entries.values())

    def __len__(self) -> int:
        return sum(len(m) for m in self._maps.values())

    def flush(self) -> int:
        """Invalidate everything (a CR3 write without PCID, or sfence.vma x0, x0)."""
        n = 0
        for e in list(self):
            self._remove(e)
            n += 1
        return n

    def flush_asid(self, asid: int) -> int:
        """Invalidate the non-global entries of ``asid`` (INVPCID type 1, sfence.vma x0, asid)."""
        n = 0
        for e in list(self):
            if e.asid == asid:
                self._remove(e)
                n += 1
        return n

    def flush_va(self, va: int, asid: int | None = None) -> int:
        """Invalidate every entry of any size that covers ``va`` (INVLPG, sfence.vma va).

        With ``asid``, only that ASID's entries and global ones go, as INVLPG
        does for the current PCID; ``None`` means every ASID.
        """
        n = 0
        for shift, entries in self._maps.items():
            vpn = va >> shift
            if asid is None:
                victims = [e for e in entries.values() if e.vpn == vpn] if entries else []
            else:
                victims = [
                    e
                    for key in ((vpn << _KEY_SHIFT) | asid, (vpn << _KEY_SHIFT) | GLOBAL_ASID)
                    if (e := entries.get(key)) is not None
                ]
            for e in victims:
                self._remove(e)
                n += 1
        return n

    def flush_range(self, va: int, size: int, asid: int | None = None) -> int:
        """Invalidate every entry overlapping ``[va, va+size)``."""
        end = va + size
        if size >> 12 <= 64:
            n = 0
            for page in range(va & ~0xFFF, end, 4096):
                n += self.flush_va(page, asid)
            return n
        n = 0
        for e in list(self):
            if e.va < end and va < e.va + e.size and (asid is None or e.asid in (asid, GLOBAL_ASID)):
                self._remove(e)
                n += 1
        return n

    def state(self) -> list[list[TlbEntry | None]]:
        """The ways of every set (a copy), for inspection and tests."""
        return [list(row) for row in self._table]


class TlbLevel:
    """One level of the hierarchy: one array, or split arrays probed together.

    A lookup counts once at the level, whichever array answers. Split arrays
    hold disjoint page sizes (as x86's separate 4 KiB / 2 MiB / 1 GiB L1s).
    """

    def __init__(self, configs: TlbConfig | Sequence[TlbConfig]) -> None:
        cfgs = [configs] if isinstance(configs, TlbConfig) else list(configs)
        if not cfgs:
            from vmopt.errors import ConfigError

            raise ConfigError("a TLB level needs at least one TlbConfig")
        seen: set[int] = set()
        for c in cfgs:
            overlap = seen.intersection(c.page_sizes)
            if overlap:
                from vmopt.errors import ConfigError

                raise ConfigError(
                    f"split arrays of one TLB level must hold disjoint page sizes; {sorted(overlap)}"
                    f" appears twice (arrays {', '.join(x.name for x in cfgs)})"
                )
            seen.update(c.page_sizes)
        cfgs = name_levels([cfgs])[0]  # unnamed arrays named by position (issue 11)
        self.name = cfgs[0].name if len(cfgs) == 1 else "+".join(c.name for c in cfgs)
        self.latency = max(c.latency for c in cfgs)
        self.stats = TlbStats(name=self.name)
        self.arrays = [Tlb(c, self.stats) for c in cfgs]
        self.configs = tuple(cfgs)

    def lookup(self, va: int, asid: int) -> TlbEntry | None:
        """Probe every array, counting one lookup and its latency."""
        stats = self.stats
        stats.lookups += 1
        stats.cycles += self.latency
        for arr in self.arrays:
            e = arr.lookup(va, asid)
            if e is not None:
                stats.hits += 1
                return e
        stats.misses += 1
        return None

    def peek(self, va: int, asid: int) -> TlbEntry | None:
        """Probe without counting or touching replacement state."""
        for arr in self.arrays:
            e = arr.peek(va, asid)
            if e is not None:
                return e
        return None

    def array_for(self, page_size: int) -> tuple[Tlb, int] | None:
        """The array that caches a page of ``page_size``, and the shift it uses."""
        best: tuple[Tlb, int] | None = None
        for arr in self.arrays:
            shift = arr.fits(page_size)
            if shift is not None and (best is None or shift > best[1]):
                best = (arr, shift)
        return best

    def flush(self) -> int:
        """Invalidate everything."""
        return sum(a.flush() for a in self.arrays)

    def flush_asid(self, asid: int) -> int:
        """Invalidate one ASID's non-global entries."""
        return sum(a.flush_asid(asid) for a in self.arrays)

    def flush_va(self, va: int, asid: int | None = None) -> int:
        """Invalidate the entries covering ``va``."""
        return sum(a.flush_va(va, asid) for a in self.arrays)

    def flush_range(self, va: int, size: int, asid: int | None = None) -> int:
        """Invalidate the entries overlapping a range."""
        return sum(a.flush_range(va, size, asid) for a in self.arrays)

    def __len__(self) -> int:
        return sum(len(a) for a in self.arrays)
