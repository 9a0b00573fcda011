"""A set-associative TLB array, and a TLB level made of one or more arrays.

Both wrap the Rust core (``vmopt._core.TlbLevel``): a standalone ``Tlb`` is
a level of one array, and the levels of an :class:`~vmopt.tlb.mmu.Mmu` are
views of the MMU's own. Replacement state lives in the core in the forms
of the reference implementation (a stamp per way and a clock for LRU/FIFO,
tree bits per set for PLRU, an xorshift64 state for random), so both pick
the same victims.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from vmopt import _core
from vmopt.errors import ConfigError, bad_input
from vmopt.tlb._live import LiveTlbStats
from vmopt.tlb.config import TlbConfig, name_levels
from vmopt.tlb.stats import PrefetchStats, TlbStats

__all__ = ["GLOBAL_ASID", "Tlb", "TlbEntry", "TlbLevel", "XorShift64"]

#: ASID code under which global entries are stored; they match every ASID.
GLOBAL_ASID: Final = 1 << 16
_KEY_SHIFT: Final = 17
_MASK64: Final = (1 << 64) - 1

EntryTuple = tuple[int, int, int, int, int, bool, int, bool, bool, int, int, int]


def config_tuple(c: TlbConfig) -> tuple[int, int, str, list[int], int, str, int]:
    """A config as the core takes it (the seed modulo 2^64, as the generator uses it)."""
    return (c.entries, c.ways, c.policy, list(c.page_sizes), c.latency, c.name, c.seed & _MASK64)


class XorShift64:
    """Marsaglia's xorshift64 (13, 7, 17): the seeded generator of the random policy.

    The core runs the same generator; this copy lets callers predict its draws.
    """

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

    An entry read from a TLB is a snapshot of its way, except ``prefetched``,
    ``used`` and ``stamp``, which follow the way for as long as it holds this
    entry. A new entry (built here) is plain data until :meth:`Tlb.insert`.
    """

    __slots__ = (
        "_home", "_prefetched", "_serial", "_stamp", "_used", "asid", "dirty", "level", "page_pa",
        "rights", "set", "shift", "vpn", "way",
    )  # fmt: skip

    def __init__(
        self, vpn: int, shift: int, asid: int, page_pa: int, rights: int, dirty: bool, level: int
    ) -> None:
        self.vpn = vpn
        self.shift = shift
        self.asid = asid
        self.page_pa = page_pa
        self.rights = rights
        self.dirty = dirty
        self.level = level
        self._prefetched = False
        self._used = False
        self._stamp = 0
        self.set = 0
        self.way = 0
        self._home: tuple[Any, int, int] | None = None  # (core level, array, slot)
        self._serial = 0

    @classmethod
    def _from_core(cls, t: EntryTuple, core: Any, array: int, ways: int) -> TlbEntry:
        e = cls(t[0], t[1], t[2], t[3], t[4], t[5], t[6])
        e._attach(t, core, array, ways)
        return e

    def _attach(self, t: EntryTuple, core: Any, array: int, ways: int) -> None:
        self._prefetched, self._used, self._stamp = t[7], t[8], t[9]
        slot = t[10]
        self.set, self.way = divmod(slot, ways)
        self._home = (core, array, slot)
        self._serial = t[11]

    def _flags(self) -> tuple[bool, bool, int]:
        home = self._home
        if home is not None:
            live = home[0].entry_flags(home[1], home[2], self._serial)
            if live is not None:
                self._prefetched, self._used, self._stamp = live
                return live  # type: ignore[no-any-return]
            self._home = None  # the way holds another entry now: keep the last values seen
        return self._prefetched, self._used, self._stamp

    @property
    def prefetched(self) -> bool:
        """Installed by a prefetcher."""
        return self._flags()[0]

    @prefetched.setter
    def prefetched(self, value: bool) -> None:
        self._set_flag("_prefetched", value)

    @property
    def used(self) -> bool:
        """Hit by a demand lookup since it was prefetched."""
        return self._flags()[1]

    @used.setter
    def used(self, value: bool) -> None:
        self._set_flag("_used", value)

    @property
    def stamp(self) -> int:
        """The LRU/FIFO stamp (the array's clock at the last touch or fill)."""
        return self._flags()[2]

    @stamp.setter
    def stamp(self, value: int) -> None:
        self._set_flag("_stamp", value)

    def _set_flag(self, name: str, value: Any) -> None:
        if self._home is not None:
            raise AttributeError("an entry cached in a TLB is read-only; insert a new one")
        object.__setattr__(self, name, value)

    @property
    def key(self) -> int:
        """The lookup key: ``(vpn << 17) | asid``."""
        return (self.vpn << _KEY_SHIFT) | self.asid

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

    ``lookup`` and ``insert`` count no lookups (a :class:`TlbLevel` does, so
    split arrays count a lookup once); fills and invalidations count
    evictions, invalidations and prefetch outcomes in ``stats``. ``stats``
    given here is kept up to date after each call instead of the live one.
    """

    def __init__(self, config: TlbConfig, stats: TlbStats | None = None) -> None:
        if not isinstance(config, TlbConfig) or not (stats is None or isinstance(stats, TlbStats)):
            raise bad_input("Tlb", config=config, stats=stats)
        config = name_levels([[config]])[0][0]
        core = _core.TlbLevel([config_tuple(config)])
        self._setup(config, core, 0, LiveTlbStats(core.name, core.stats))
        self._given = stats
        if stats is not None:
            self.stats = stats
            self._sync()

    @classmethod
    def _view(cls, config: TlbConfig, core: Any, array: int, stats: TlbStats) -> Tlb:
        tlb = cls.__new__(cls)
        tlb._setup(config, core, array, stats)
        tlb._given = None
        return tlb

    def _setup(self, config: TlbConfig, core: Any, array: int, stats: TlbStats) -> None:
        self.config = config
        self.stats = stats
        self.sets = config.sets
        self.ways = config.ways
        self._core = core
        self._array = array
        #: Kept for compatibility: a :class:`PrefetchStats` also told of unused
        #: prefetched entries dropped here (an MMU's arrays count them itself).
        self.prefetch_stats: PrefetchStats | None = None

    def _sync(self) -> None:
        """Copy the core's counters into a caller's ``stats`` / ``prefetch_stats``."""
        values = self._core.stats()
        given = self._given
        if given is not None:
            useless = given.prefetch_useless
            (given.lookups, given.hits, given.misses, given.evictions, given.invalidations, given.cycles,
             given.prefetch_fills, given.prefetch_useful, given.prefetch_useless) = values  # fmt: skip
            if self.prefetch_stats is not None:
                self.prefetch_stats.useless += given.prefetch_useless - useless

    def _entry(self, t: EntryTuple | None) -> TlbEntry | None:
        return None if t is None else TlbEntry._from_core(t, self._core, self._array, self.ways)

    # -- lookup -------------------------------------------------------------------

    def lookup(self, va: int, asid: int) -> TlbEntry | None:
        """The entry covering ``va`` for ``asid`` (or a global one), updating recency."""
        return self._entry(self._core.array_lookup(self._array, va, asid))

    def peek(self, va: int, asid: int) -> TlbEntry | None:
        """Like :meth:`lookup` but without touching replacement state."""
        return self._entry(self._core.array_peek(self._array, va, asid))

    # -- fill -----------------------------------------------------------------------

    def fits(self, page_size: int) -> int | None:
        """The shift this array would cache a page of ``page_size`` at, or None."""
        shift: int | None = self._core.array_fits(self._array, page_size)
        return shift

    def insert(self, entry: TlbEntry) -> TlbEntry | None:
        """Install ``entry``; return the entry it evicted, if any.

        An entry already cached under the same key is replaced in place.
        """
        if not isinstance(entry, TlbEntry):
            raise bad_input("Tlb.insert", entry=entry)
        if entry.shift not in (s.bit_length() - 1 for s in self.config.page_sizes):
            raise KeyError(entry.shift)
        stored, victim = self._core.array_insert(
            self._array, entry.vpn, entry.shift, entry.asid, entry.page_pa, entry.rights, entry.dirty,
            entry.level, entry._prefetched, entry._used, entry._stamp,
        )  # fmt: skip
        entry._attach(stored, self._core, self._array, self.ways)
        old = None
        if victim is not None:
            old = TlbEntry(victim[0], victim[1], victim[2], victim[3], victim[4], victim[5], victim[6])
            old._prefetched, old._used, old._stamp = victim[7], victim[8], victim[9]
            old.set, old.way = divmod(victim[10], self.ways)
        self._sync()
        return old

    # -- invalidation -----------------------------------------------------------------

    def __iter__(self) -> Iterator[TlbEntry]:
        core, array, ways = self._core, self._array, self.ways
        return iter([TlbEntry._from_core(t, core, array, ways) for t in core.entries(array)])

    def __len__(self) -> int:
        n: int = self._core.len(self._array)
        return n

    def flush(self) -> int:
        """Invalidate everything (a CR3 write without PCID, or sfence.vma x0, x0)."""
        n: int = self._core.flush(self._array)
        self._sync()
        return n

    def flush_asid(self, asid: int) -> int:
        """Invalidate the non-global entries of ``asid`` (INVPCID type 1, sfence.vma x0, asid)."""
        n: int = self._core.flush_asid(asid, self._array)
        self._sync()
        return n

    def flush_va(self, va: int, asid: int | None = None) -> int:
        """Invalidate every entry of any size that covers ``va`` (INVLPG, sfence.vma va).

        With ``asid``, only that ASID's entries and global ones go, as INVLPG
        does for the current PCID; ``None`` means every ASID.
        """
        n: int = self._core.flush_va(va, asid, self._array)
        self._sync()
        return n

    def flush_range(self, va: int, size: int, asid: int | None = None) -> int:
        """Invalidate every entry overlapping ``[va, va+size)``."""
        n: int = self._core.flush_range(va, size, asid, self._array)
        self._sync()
        return n

    def state(self) -> list[list[TlbEntry | None]]:
        """The ways of every set (a copy), for inspection and tests."""
        ways = [self._entry(t) for t in self._core.ways(self._array)]
        return [ways[s * self.ways : (s + 1) * self.ways] for s in range(self.sets)]

    def replacement_state(self) -> tuple[int, list[int], int, int]:
        """``(clock, PLRU bits per set, random generator state, global entries)``, for tests."""
        clock, words, rng, globals_ = self._core.replacement(self._array)
        plru = [sum(w << (64 * k) for k, w in enumerate(ws)) for ws in words]
        return clock, plru, rng, globals_


class TlbLevel:
    """One level of the hierarchy: one array, or split arrays probed together.

    A lookup counts once at the level, whichever array answers. Split arrays
    hold disjoint page sizes (as x86's separate 4 KiB / 2 MiB / 1 GiB L1s).
    """

    def __init__(self, configs: TlbConfig | Sequence[TlbConfig]) -> None:
        cfgs = [configs] if isinstance(configs, TlbConfig) else list(configs)
        if not cfgs:
            raise ConfigError("a TLB level needs at least one TlbConfig")
        cfgs = name_levels([cfgs])[0]
        self._setup(_core.TlbLevel([config_tuple(c) for c in cfgs]), cfgs)

    @classmethod
    def from_core(cls, core: Any, configs: Sequence[TlbConfig]) -> TlbLevel:
        """A wrapper of an existing core level (an :class:`~vmopt.tlb.mmu.Mmu`'s), sharing its state."""
        level = cls.__new__(cls)
        level._setup(core, list(configs))
        return level

    def _setup(self, core: Any, cfgs: list[TlbConfig]) -> None:
        self._core = core
        self.name: str = core.name
        self.latency: int = core.latency
        self.stats: TlbStats = LiveTlbStats(self.name, core.stats)
        self.arrays = [Tlb._view(c, core, i, self.stats) for i, c in enumerate(cfgs)]
        self.configs = tuple(cfgs)

    def freeze_stats(self) -> None:
        """Pin the current stats object's values (before a reset of the counters)."""
        if isinstance(self.stats, LiveTlbStats):
            self.stats.freeze()

    def renew_stats(self) -> None:
        """Hand out a fresh live stats object (after a reset of the counters)."""
        self.stats = LiveTlbStats(self.name, self._core.stats)
        for arr in self.arrays:
            arr.stats = self.stats

    def counters(self) -> list[int]:
        """The level's raw counters, indexed by :data:`vmopt.tlb._live.TLB_FIELDS`."""
        values: list[int] = self._core.stats()
        return values

    def _entry(self, found: tuple[int, EntryTuple] | None) -> TlbEntry | None:
        if found is None:
            return None
        array, t = found
        return TlbEntry._from_core(t, self._core, array, self.arrays[array].ways)

    def lookup(self, va: int, asid: int) -> TlbEntry | None:
        """Probe every array, counting one lookup and its latency."""
        return self._entry(self._core.lookup(va, asid))

    def peek(self, va: int, asid: int) -> TlbEntry | None:
        """Probe without counting or touching replacement state."""
        return self._entry(self._core.peek(va, asid))

    def array_for(self, page_size: int) -> tuple[Tlb, int] | None:
        """The array that caches a page of ``page_size``, and the shift it uses."""
        found = self._core.array_for(page_size)
        return None if found is None else (self.arrays[found[0]], found[1])

    def flush(self) -> int:
        """Invalidate everything."""
        n: int = self._core.flush()
        return n

    def flush_asid(self, asid: int) -> int:
        """Invalidate one ASID's non-global entries."""
        n: int = self._core.flush_asid(asid)
        return n

    def flush_va(self, va: int, asid: int | None = None) -> int:
        """Invalidate the entries covering ``va``."""
        n: int = self._core.flush_va(va, asid)
        return n

    def flush_range(self, va: int, size: int, asid: int | None = None) -> int:
        """Invalidate the entries overlapping a range."""
        n: int = self._core.flush_range(va, size, asid)
        return n

    def __len__(self) -> int:
        n: int = self._core.len()
        return n
