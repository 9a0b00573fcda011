"""TLB, page-walk cache and prefetcher configuration (frozen, validated at construction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from vmopt.errors import ConfigError

__all__ = [
    "DEFAULT_SPLIT_TLB_LEVELS",
    "DEFAULT_TLB",
    "DEFAULT_TLB_LEVELS",
    "MAX_LATENCY",
    "MAX_PREFETCH_DEGREE",
    "MAX_PREFETCH_QUEUE",
    "MAX_PWC_ENTRIES",
    "MAX_TLB_ENTRIES",
    "MAX_TLB_WAYS",
    "POLICIES",
    "PREFETCHERS",
    "PrefetchConfig",
    "PwcConfig",
    "SplitL1",
    "TlbConfig",
    "name_levels",
]

POLICIES: Final = ("lru", "fifo", "random", "plru")
PREFETCHERS: Final = ("none", "next_page", "stride")
PAGE_SIZES: Final = (4096, 2 << 20, 1 << 30)

# Upper bounds, checked before anything is allocated (docs/configuration.md; the core checks the same).
#: Entries of one TLB array (real second-level TLBs hold a few thousand).
MAX_TLB_ENTRIES: Final = 1 << 20
#: Ways of one TLB array (a lookup scans every way of its set).
MAX_TLB_WAYS: Final = 1 << 12
#: Entries per level of a page-walk cache.
MAX_PWC_ENTRIES: Final = 1 << 16
#: Pages one miss may prefetch (one page table's worth).
MAX_PREFETCH_DEGREE: Final = 512
#: Requests the deferred prefetch queue may hold.
MAX_PREFETCH_QUEUE: Final = 1 << 20
#: Cycles of one lookup.
MAX_LATENCY: Final = 1 << 20


def _positive_int(name: str, value: object, field: str, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", field=field)
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:,}, got {value:,}", field=field)
    return value


@dataclass(frozen=True)
class TlbConfig:
    """One TLB level.

    ``sets = entries / ways`` must be a power of two; the set index is the
    virtual page number (in units of the entry's page size) modulo ``sets``.
    ``ways == entries`` is fully associative. ``page_sizes`` lists what the
    level holds; a larger page is cached as the largest listed size that fits
    inside it (splintered), as hardware does. ``latency`` is the lookup cost
    in cycles. ``seed`` seeds the "random" policy. ``name`` left empty is
    given by position (see :func:`name_levels`): ``l1``, ``l2``, ...
    """

    entries: int
    ways: int
    policy: str = "lru"
    page_sizes: tuple[int, ...] = (4096,)
    latency: int = 1
    name: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int("entries", self.entries, "entries", MAX_TLB_ENTRIES)
        _positive_int("ways", self.ways, "ways", MAX_TLB_WAYS)
        if self.entries % self.ways:
            raise ConfigError(
                f"entries ({self.entries}) must be a multiple of ways ({self.ways})", field="ways"
            )
        sets = self.entries // self.ways
        if sets & (sets - 1):
            raise ConfigError(
                f"sets = entries / ways = {sets} must be a power of two"
                f" (entries={self.entries}, ways={self.ways})",
                field="ways",
            )
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(
                f"unknown TLB policy {self.policy!r}; expected one of {', '.join(POLICIES)}", field="policy"
            )
        if self.policy == "plru" and self.ways & (self.ways - 1):
            raise ConfigError(f"tree PLRU needs a power-of-two number of ways, got {self.ways}", field="ways")
        raw = self.page_sizes
        sizes = tuple(raw) if isinstance(raw, Sequence) and not isinstance(raw, str | bytes) else ()
        if (
            not sizes
            or any(isinstance(s, bool) or not isinstance(s, int) or s not in PAGE_SIZES for s in sizes)
            or len(set(sizes)) != len(sizes)
        ):
            raise ConfigError(
                f"page_sizes must be distinct values of 4096, 2 MiB, 1 GiB; got {self.page_sizes!r}",
                field="page_sizes",
            )
        object.__setattr__(self, "page_sizes", tuple(sorted(sizes)))
        if not isinstance(self.latency, int) or isinstance(self.latency, bool) or self.latency < 0:
            raise ConfigError(
                f"latency must be a non-negative integer, got {self.latency!r}", field="latency"
            )
        if self.latency > MAX_LATENCY:
            raise ConfigError(
                f"latency must be at most {MAX_LATENCY:,} cycles, got {self.latency:,}", field="latency"
            )
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string, got {self.name!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @property
    def sets(self) -> int:
        """Number of sets."""
        return self.entries // self.ways


def name_levels(levels: Sequence[Sequence[TlbConfig]], first: str = "l1") -> list[list[TlbConfig]]:
    """The hierarchy with its unnamed arrays named by position.

    Level ``i``'s first array becomes ``l{i+1}``, its ``k``-th
    ``l{i+1}_{k+1}`` (split arrays); named arrays keep their names. ``first``
    replaces ``l1`` for level 0 (``l1d`` for the DTLB of a split L1).
    """

    def level_name(i: int) -> str:
        return first if i == 0 else f"l{i + 1}"

    return [
        [
            c if c.name else replace(c, name=level_name(i) if k == 0 else f"{level_name(i)}_{k + 1}")
            for k, c in enumerate(level)
        ]
        for i, level in enumerate(levels)
    ]


def _side(name: str, value: object) -> tuple[TlbConfig, ...]:
    """One side of a :class:`SplitL1`: a TlbConfig or a non-empty sequence of them."""
    if isinstance(value, TlbConfig):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        cfgs = tuple(value)
        if cfgs and all(isinstance(c, TlbConfig) for c in cfgs):
            return cfgs
    raise ConfigError(
        f"SplitL1.{name} must be a TlbConfig or a non-empty list of them, got {value!r}", field=name
    )


@dataclass(frozen=True)
class SplitL1:
    """A first TLB level split by access side, as on real x86 and Arm cores.

    Instruction fetches look up ``itlb``, reads and writes ``dtlb``; both
    miss into the next level (the shared STLB) and below. A miss that the
    STLB or a walk answers fills the L1 of the side that missed only, so
    each L1 holds what its side touched; no level is inclusive of another.
    Each side is one array or split arrays of disjoint page sizes, as any
    level; unnamed arrays are named ``l1i``/``l1d`` (``l1i_2``, ... after
    the first). Give it as the first level of a hierarchy:
    ``[SplitL1(itlb, dtlb), l2]``.
    """

    itlb: tuple[TlbConfig, ...]
    dtlb: tuple[TlbConfig, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "itlb", _side("itlb", self.itlb))
        object.__setattr__(self, "dtlb", _side("dtlb", self.dtlb))

    def named(self) -> SplitL1:
        """This split with its unnamed arrays named ``l1i``, ``l1i_2``, ... and ``l1d``, ..."""
        return SplitL1(tuple(name_levels([self.itlb], "l1i")[0]), tuple(name_levels([self.dtlb], "l1d")[0]))


@dataclass(frozen=True)
class PwcConfig:
    """A page-walk cache: per upper level, ``entries`` LRU slots of non-leaf PTEs.

    A hit at level k lets the walker skip the reads of levels top..k, like
    Intel's paging-structure caches (PML4E, PDPTE and PDE caches).
    """

    entries: int = 32
    latency: int = 1

    def __post_init__(self) -> None:
        _positive_int("pwc entries", self.entries, "entries", MAX_PWC_ENTRIES)
        if not isinstance(self.latency, int) or isinstance(self.latency, bool) or self.latency < 0:
            raise ConfigError(
                f"pwc latency must be a non-negative integer, got {self.latency!r}", field="latency"
            )
        if self.latency > MAX_LATENCY:
            raise ConfigError(
                f"pwc latency must be at most {MAX_LATENCY:,} cycles, got {self.latency:,}", field="latency"
            )


@dataclass(frozen=True)
class PrefetchConfig:
    """A TLB prefetcher.

    ``kind``: "none", "next_page" (on a miss, the next ``degree`` pages) or
    "stride" (after two equal strides in the miss stream, ``degree`` pages
    ahead along it). ``mode``: "immediate" installs at once; "deferred"
    queues requests until :meth:`Mmu.process_prefetch`. ``queue_limit``
    bounds the deferred queue (the oldest requests are dropped).
    """

    kind: str = "none"
    degree: int = 1
    mode: str = "immediate"
    queue_limit: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in PREFETCHERS:
            raise ConfigError(
                f"unknown prefetcher {self.kind!r}; expected one of {', '.join(PREFETCHERS)}", field="kind"
            )
        _positive_int("prefetch degree", self.degree, "degree", MAX_PREFETCH_DEGREE)
        if not isinstance(self.mode, str) or self.mode not in ("immediate", "deferred"):
            raise ConfigError(
                f"prefetch mode must be 'immediate' or 'deferred', got {self.mode!r}", field="mode"
            )
        _positive_int("prefetch queue_limit", self.queue_limit, "queue_limit", MAX_PREFETCH_QUEUE)

    @property
    def enabled(self) -> bool:
        """True unless the kind is "none"."""
        return self.kind != "none"


#: The default hierarchy of an :class:`~vmopt.tlb.Mmu`: a unified L1 of the
#: pre-Golden Cove DTLB's geometry (Skylake to Ice Lake: 64-entry 4-way for
#: 4 KiB pages, 32-entry 4-way for 2 MiB, 4 entries for 1 GiB, split by page
#: size) and a 2048-entry 16-way STLB for 4 KiB and 2 MiB pages beside 16
#: entries for 1 GiB. ``vmopt simulate`` defaults to
#: :data:`DEFAULT_SPLIT_TLB_LEVELS` instead. Sources: Intel 64 and IA-32
#: Optimization Reference Manual, table "TLB parameters"; see docs/design.md.
#: Every default TLB number is stated here only.
DEFAULT_TLB_LEVELS: Final = (
    (
        TlbConfig(64, 4, "lru", (4096,), 1, "l1"),
        TlbConfig(32, 4, "lru", (2 << 20,), 1, "l1_2m"),
        TlbConfig(4, 4, "lru", (1 << 30,), 1, "l1_1g"),
    ),
    (
        TlbConfig(2048, 16, "lru", (4096, 2 << 20), 8, "l2"),
        TlbConfig(16, 4, "lru", (1 << 30,), 8, "l2_1g"),
    ),
)

#: The hierarchy of ``vmopt simulate``'s default configuration: an Intel Golden
#: Cove core (Alder Lake P-core, Sapphire Rapids), whose L1 is split into an
#: ITLB and a DTLB over a shared STLB. Source: *Intel 64 and IA-32 Architectures
#: Optimization Reference Manual*, Golden Cove microarchitecture section, "TLB
#: parameters" table (docs/configuration.md says which rows are modelled):
#: ITLB 256 entries 8-way for 4 KiB pages and 32 entries 8-way for 2M/4M;
#: DTLB (loads) 96 entries 6-way for 4 KiB, 32 entries 4-way for 2M/4M and 8
#: fully associative entries for 1 GiB; STLB 2048 entries 16-way for 4 KiB and
#: 2M/4M pages, and 1024 entries 8-way for 1 GiB. The ITLB holds no 1 GiB
#: entries: a 1 GiB code page is cached as 2 MiB pieces.
DEFAULT_SPLIT_TLB_LEVELS: Final = (
    SplitL1(
        (
            TlbConfig(256, 8, "lru", (4096,), 1, "l1i"),
            TlbConfig(32, 8, "lru", (2 << 20,), 1, "l1i_2m"),
        ),
        (
            TlbConfig(96, 6, "lru", (4096,), 1, "l1d"),
            TlbConfig(32, 4, "lru", (2 << 20,), 1, "l1d_2m"),
            TlbConfig(8, 8, "lru", (1 << 30,), 1, "l1d_1g"),
        ),
    ),
    (
        TlbConfig(2048, 16, "lru", (4096, 2 << 20), 8, "l2"),
        TlbConfig(1024, 8, "lru", (1 << 30,), 8, "l2_1g"),
    ),
)

#: The 4 KiB and 2 MiB arrays of the default hierarchy: L1 4 KiB, L1 2 MiB, L2.
DEFAULT_TLB: Final = (DEFAULT_TLB_LEVELS[0][0], DEFAULT_TLB_LEVELS[0][1], DEFAULT_TLB_LEVELS[1][0])
