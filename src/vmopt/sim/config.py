"""Simulation configuration: TOML file + ``--set`` overrides -> a validated, frozen ``SimConfig``.

The raw form is a nested dict exactly as TOML holds it. :func:`load_config`
starts from :func:`default_raw`, merges a file (a file's ``[tlb]`` table
replaces the default hierarchy as a whole), applies ``--set`` overrides and
validates. The first TLB level is either a unified ``[tlb.l1]`` or an
``[tlb.l1i]`` ITLB (instruction fetches) beside an ``[tlb.l1d]`` DTLB (reads
and writes), both missing into ``[tlb.l2]`` and below; the default is split.
Every error names the offending key (``tlb.l1d.ways: entries (96) must be
a multiple of ways (5)``). The sections hold the domain configs
(TlbConfig, PrefetchConfig, PwcConfig, NumaConfig, ConcurrencyConfig): their
rules and defaults are those configs', their errors come back under the
dotted key. See docs/configuration.md for where the defaults come from.
"""

from __future__ import annotations

import copy
import logging
import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from vmopt.errors import ConfigError
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.numa.config import LOCAL_DISTANCE, MAX_CPUS, MAX_NODES, NumaConfig
from vmopt.numa.policy import MemPolicy
from vmopt.paging import FORMATS, HOST_FORMATS, make_format
from vmopt.tlb.config import DEFAULT_SPLIT_TLB_LEVELS, PrefetchConfig, PwcConfig, SplitL1, TlbConfig
from vmopt.units import parse_size

__all__ = [
    "NumaSection",
    "PagingSection",
    "PrefetchSection",
    "PwcSection",
    "SimConfig",
    "TlbArraySection",
    "TlbLevelSection",
    "apply_set",
    "default_raw",
    "load_config",
    "parse_value",
    "size_name",
    "to_toml",
]

log = logging.getLogger(__name__)

PAGE_SIZES: Final = {4096: "4K", 2 << 20: "2M", 1 << 30: "1G"}
#: Most TLB levels ([tlb.l1] .. [tlb.l8]; a split L1, [tlb.l1i] and [tlb.l1d], is one).
MAX_TLB_LEVELS: Final = 8
#: The sections of a split first level, ITLB then DTLB.
SPLIT_L1: Final = ("l1i", "l1d")
#: Most cycles of a modelled cost (one PTE read, one lookup).
MAX_CYCLES: Final = 1 << 20
ARRAY_KEYS: Final = ("entries", "ways", "policy", "page_sizes", "latency")
#: A TLB array's defaults (entries and ways have none).
_ARRAY: Final = TlbConfig(1, 1)


def default_raw() -> dict[str, Any]:
    """The default configuration in raw (TOML) form: one current x86-64 core, a 2-socket host.

    Every value comes from the default it stands for: the TLB hierarchy from
    :data:`vmopt.tlb.config.DEFAULT_SPLIT_TLB_LEVELS`, the prefetcher, page-walk cache
    and concurrency from their configs' defaults, the rest from the sections'.
    """
    paging, pwc, numa = PagingSection(), PwcSection(), NumaSection()
    return {
        "paging": {
            "format": paging.format,
            "page_size": size_name(paging.page_size),
            "walk_ref_cycles": paging.walk_ref_cycles,
        },
        "tlb": _hierarchy_raw(DEFAULT_SPLIT_TLB_LEVELS),
        "prefetch": _fields_raw(PrefetchConfig()),
        "pwc": {"enabled": pwc.enabled, **_fields_raw(PwcConfig())},
        "numa": {
            "nodes": numa.nodes,
            "mem_per_node": _size_text(numa.mem_per_node[0]),
            "distances": [list(r) for r in numa.numa_config(1).distances],  # type: ignore[union-attr]
            "policy": numa.policy,
            "cpus": numa.cpus,
        },
        "concurrency": _fields_raw(ConcurrencyConfig()),
    }


def _fields_raw(config: Any) -> dict[str, Any]:
    """A config dataclass's fields, as a raw table."""
    return {f.name: getattr(config, f.name) for f in fields(config)}


def _array_raw(c: TlbConfig) -> dict[str, Any]:
    return {
        "entries": c.entries, "ways": c.ways, "policy": c.policy,
        "page_sizes": [size_name(s) for s in c.page_sizes], "latency": c.latency,
    }  # fmt: skip


def _level_raw(level: Iterable[TlbConfig]) -> dict[str, Any]:
    """A hierarchy level as a raw table: its first array's keys, then ``[lN.SUFFIX]`` per split array."""
    first, *split = level
    raw = _array_raw(first)
    for c in split:
        raw[str(c.name).partition("_")[2]] = _array_raw(c)
    return raw


def _hierarchy_raw(levels: Iterable[SplitL1 | Iterable[TlbConfig]]) -> dict[str, Any]:
    """A hierarchy as the raw ``[tlb]`` table: ``l1`` (or ``l1i`` and ``l1d``), ``l2``, ..."""
    out: dict[str, Any] = {}
    for i, level in enumerate(levels):
        if isinstance(level, SplitL1):
            out[SPLIT_L1[0]], out[SPLIT_L1[1]] = _level_raw(level.itlb), _level_raw(level.dtlb)
        else:
            out[f"l{i + 1}"] = _level_raw(level)
    return out


@contextmanager
def _keyed(prefix: str) -> Iterator[None]:
    """Re-raise a domain config's ConfigError under the dotted key of the value at fault."""
    try:
        yield
    except ConfigError as exc:
        key = prefix if exc.field is None else f"{prefix}.{exc.field}"
        raise ConfigError(f"{key}: {exc}") from exc


# -- small validators -------------------------------------------------------------------------


def _int(key: str, value: Any, minimum: int | None = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key}: must be at most {maximum:,}, got {value:,}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _str(key: str, value: Any, choices: Iterable[str] | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (expected one of {', '.join(choices)})")
    return value


def _size(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: expected a size (bytes or '4K', '2M', '16G'), got {value!r}")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: cannot parse size {value!r}") from exc
    if size <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return size


def _page_size(key: str, value: Any) -> int:
    size = _size(key, value)
    if size not in PAGE_SIZES:
        raise ConfigError(f"{key}: {value!r} is not a page size (expected 4K, 2M or 1G)")
    return size


def size_name(size: int) -> str:
    """``4096 -> '4K'``; other sizes as plain integers' text."""
    return PAGE_SIZES.get(size, str(size))


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {value!r}")
    return value


def _check_keys(prefix: str, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for k in table:
        if k not in allowed:
            raise ConfigError(f"{prefix}.{k}: unknown key (expected one of {', '.join(allowed)})")


# -- sections ---------------------------------------------------------------------------------


#: Guest formats (the host formats translate guest-physical addresses, set by ``paging.nested``).
GUEST_FORMATS: Final = tuple(f for f in FORMATS if f not in HOST_FORMATS)
#: ``paging.nested`` values: no host stage, or a host format.
NESTED_CHOICES: Final = ("none", *HOST_FORMATS)
#: Host format name prefix -> the guest formats (by name prefix) it can be the host stage of.
NESTED_GUESTS: Final = {
    "ept": "x86_64", "npt": "x86_64", "sv39x4": "sv", "sv48x4": "sv", "aarch64_s2": "aarch64",
}  # fmt: skip
#: Guest format name prefix -> its architecture's name and article, for messages.
NESTED_ARCH: Final = {"x86_64": ("x86", "an"), "sv": ("RISC-V", "a"), "aarch64": ("AArch64", "an")}
#: Most host pages the guest facade maps up front (guest memory / paging.nested_page_size).
MAX_HOST_PAGES: Final = 1 << 20
#: Most entries of the nested TLB.
MAX_NTLB_ENTRIES: Final = 1 << 16
PAGING_KEYS: Final = (
    "format",
    "page_size",
    "walk_ref_cycles",
    "nested",
    "nested_page_size",
    "nested_tlb_entries",
)


@dataclass(frozen=True)
class PagingSection:
    """[paging]: page-table format, the page size demand paging maps, cycles per PTE read.

    ``nested`` (``"none"``; ``"ept"``, ``"ept_5level"``, ``"npt"`` under an x86
    guest; ``"sv39x4"``, ``"sv48x4"`` under a RISC-V one; ``"aarch64_s2"``,
    ``"aarch64_s2_16k"``, ``"aarch64_s2_64k"`` under an AArch64 one) puts the
    guest under a host stage: every vCPU walks both dimensions, the host
    backing guest memory with pages of ``nested_page_size``, a nested TLB of
    ``nested_tlb_entries`` caching GPA->HPA, and a host page-walk cache
    shaped like ``[pwc]`` when it is enabled.
    """

    format: str = "x86_64"
    page_size: int = 4096
    walk_ref_cycles: int = 20
    nested: str = "none"
    nested_page_size: int = 2 << 20
    nested_tlb_entries: int = 16

    def __post_init__(self) -> None:
        _str("paging.format", self.format, GUEST_FORMATS)
        _page_size("paging.page_size", self.page_size)
        _int("paging.walk_ref_cycles", self.walk_ref_cycles, 0, MAX_CYCLES)
        _str("paging.nested", self.nested, NESTED_CHOICES)
        if self.nested.startswith("aarch64_s2"):
            # The 16K and 64K granules' pages (16K, 32M; 64K, 512M): checked against the format below.
            _size("paging.nested_page_size", self.nested_page_size)
        else:
            _page_size("paging.nested_page_size", self.nested_page_size)
        _int("paging.nested_tlb_entries", self.nested_tlb_entries, 0, MAX_NTLB_ENTRIES)
        guests = next((g for h, g in NESTED_GUESTS.items() if self.nested.startswith(h)), None)
        if guests is not None and not self.format.startswith(guests):
            arch, article = {"x86_64": ("x86", "an"), "sv": ("RISC-V", "a"), "aarch64": ("AArch64", "an")}[
                guests
            ]
            raise ConfigError(
                f"paging.nested: {self.nested!r} is {article} {arch} host stage;"
                f" paging.format {self.format!r} is not {arch}"
            )
        host_sizes = make_format(self.nested).page_sizes if self.nested != "none" else ()
        if self.nested != "none" and self.nested_page_size not in host_sizes:
            raise ConfigError(
                f"paging.nested_page_size: {_size_text(self.nested_page_size)} is not a page size of"
                f" {self.nested!r} (it has {', '.join(_size_text(s) for s in host_sizes)})"
            )

    def to_raw(self) -> dict[str, Any]:
        """The section in raw form; the nested keys only when a host stage is set."""
        raw: dict[str, Any] = {
            "format": self.format,
            "page_size": size_name(self.page_size),
            "walk_ref_cycles": self.walk_ref_cycles,
        }
        if self.nested != "none":
            raw["nested"] = self.nested
            raw["nested_page_size"] = size_name(self.nested_page_size)
            raw["nested_tlb_entries"] = self.nested_tlb_entries
        return raw


@dataclass(frozen=True)
class TlbArraySection:
    """One set-associative TLB array (``key`` is its dotted config name, for messages).

    Its rules are :class:`TlbConfig`'s, whose errors come back under ``key``.
    """

    key: str
    entries: int
    ways: int
    policy: str = "lru"
    page_sizes: tuple[int, ...] = (4096,)
    latency: int = 1

    def __post_init__(self) -> None:
        self.tlb_config(self.key.rpartition(".")[2])

    def tlb_config(self, name: str) -> TlbConfig:
        """The :class:`TlbConfig` this array stands for."""
        with _keyed(self.key):
            return TlbConfig(self.entries, self.ways, self.policy, self.page_sizes, self.latency, name)

    def to_raw(self) -> dict[str, Any]:
        """TOML form."""
        return _array_raw(self.tlb_config(self.key))


@dataclass(frozen=True)
class TlbLevelSection:
    """[tlb.lN]: the level's main array plus optional split arrays ([tlb.lN.NAME])."""

    name: str
    main: TlbArraySection
    split: tuple[tuple[str, TlbArraySection], ...] = ()

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for arr in (self.main, *(a for _, a in self.split)):
            for s in arr.page_sizes:
                if s in seen:
                    raise ConfigError(
                        f"{arr.key}.page_sizes: {size_name(s)} is already held by {seen[s]}"
                        " (split arrays of one level hold disjoint page sizes)"
                    )
                seen[s] = arr.key

    def tlb_configs(self) -> list[TlbConfig]:
        """The level as the MMU takes it: one or more arrays."""
        out = [self.main.tlb_config(self.name)]
        out += [arr.tlb_config(f"{self.name}_{sub}") for sub, arr in self.split]
        return out

    def to_raw(self) -> dict[str, Any]:
        """TOML form."""
        raw = self.main.to_raw()
        for sub, arr in self.split:
            raw[sub] = arr.to_raw()
        return raw


_PREFETCH, _PWC = PrefetchConfig(), PwcConfig()


@dataclass(frozen=True)
class PrefetchSection:
    """[prefetch]: TLB prefetcher kind, degree and mode (a :class:`PrefetchConfig`'s rules and defaults)."""

    kind: str = _PREFETCH.kind
    degree: int = _PREFETCH.degree
    mode: str = _PREFETCH.mode
    queue_limit: int = _PREFETCH.queue_limit

    def __post_init__(self) -> None:
        self.prefetch_config()

    def prefetch_config(self) -> PrefetchConfig:
        """As the MMU takes it."""
        with _keyed("prefetch"):
            return PrefetchConfig(self.kind, self.degree, self.mode, self.queue_limit)


@dataclass(frozen=True)
class PwcSection:
    """[pwc]: the page-walk (paging-structure) cache (a :class:`PwcConfig`'s rules and defaults)."""

    enabled: bool = True
    entries: int = _PWC.entries
    latency: int = _PWC.latency

    def __post_init__(self) -> None:
        _bool("pwc.enabled", self.enabled)
        with _keyed("pwc"):
            PwcConfig(self.entries, self.latency)

    def pwc_config(self) -> PwcConfig | None:
        """As the MMU takes it (None when disabled)."""
        return PwcConfig(self.entries, self.latency) if self.enabled else None


@dataclass(frozen=True)
class NumaSection:
    """[numa]: nodes, memory per node, SLIT distances, default mempolicy, vCPU count (0 = auto).

    vCPU ``c`` sits on node ``c % nodes``.
    """

    nodes: int = 2
    mem_per_node: tuple[int, ...] = (16 << 30, 16 << 30)
    #: A two-socket host's SLIT (remote 21, as two-socket Xeon firmware reports); None: NumaConfig's.
    distances: tuple[tuple[int, ...], ...] | None = ((LOCAL_DISTANCE, 21), (21, LOCAL_DISTANCE))
    policy: str = "local"
    cpus: int = 0

    def __post_init__(self) -> None:
        _int("numa.nodes", self.nodes, 1, MAX_NODES)
        _int("numa.cpus", self.cpus, 0, MAX_CPUS)
        self.numa_config(1)
        try:
            MemPolicy.parse(_str("numa.policy", self.policy)).check(self.nodes)
        except ConfigError as exc:
            raise ConfigError(f"numa.policy: {exc}") from exc
        _int("numa.cpus", self.cpus)

    def numa_config(self, cpus: int) -> NumaConfig:
        """The topology for ``cpus`` vCPUs (:class:`NumaConfig`'s rules; errors under ``numa``)."""
        with _keyed("numa"):
            return NumaConfig(
                self.nodes, self.mem_per_node, self.distances, cpu_nodes=[c % self.nodes for c in range(cpus)]
            )

    def mempolicy(self) -> MemPolicy:
        """The default mempolicy."""
        return MemPolicy.parse(self.policy)


@dataclass(frozen=True)
class SimConfig:
    """The whole effective configuration of one simulation (frozen, validated).

    ``tlb`` is the hierarchy's sections in order: ``l1`` or ``l1i`` and
    ``l1d`` (a split L1), then ``l2``, ...
    """

    paging: PagingSection
    tlb: tuple[TlbLevelSection, ...]
    prefetch: PrefetchSection
    pwc: PwcSection
    numa: NumaSection
    concurrency: ConcurrencyConfig

    def __post_init__(self) -> None:
        if not self.tlb:
            raise ConfigError("tlb: at least one level ([tlb.l1], or [tlb.l1i] and [tlb.l1d]) is required")
        page = self.paging.page_size
        names = [level.name for level in self.tlb]
        first = 2 if names[:2] == list(SPLIT_L1) else 1
        expected = (list(SPLIT_L1) if first == 2 else ["l1"]) + [
            f"l{i + 2}" for i in range(len(names) - first)
        ]
        for level, want in zip(self.tlb, expected, strict=True):
            if level.name != want:
                raise ConfigError(
                    f"tlb.{level.name}: levels must be l1 (or l1i and l1d), l2, ... in order, got {names}"
                )
        for level in self.tlb:
            arrays = (level.main, *(a for _, a in level.split))
            if not any(size <= page for arr in arrays for size in arr.page_sizes):
                held = sorted({size_name(size) for arr in arrays for size in arr.page_sizes})
                raise ConfigError(
                    f"tlb.{level.name}.page_sizes: {held} can never hold the {size_name(page)} pages"
                    f" paging.page_size maps (a page is cached as a listed size no larger than it),"
                    f" so every lookup would miss; add {size_name(page)!r}"
                )

        if self.paging.nested != "none":
            host_page = self.paging.nested_page_size
            for size in self.numa.mem_per_node:
                if size % host_page:
                    raise ConfigError(
                        f"paging.nested_page_size: {size_name(host_page)} host pages cannot back a"
                        f" {_size_text(size)} NUMA node exactly (numa.mem_per_node)"
                    )
            pages = sum(self.numa.mem_per_node) // host_page
            if pages > MAX_HOST_PAGES:
                raise ConfigError(
                    f"paging.nested_page_size: {size_name(host_page)} host pages would take {pages:,}"
                    f" mappings to back {_size_text(sum(self.numa.mem_per_node))} of guest memory"
                    f" (at most {MAX_HOST_PAGES:,}); use larger host pages or less numa.mem_per_node"
                )

    @property
    def split_l1(self) -> bool:
        """True when the first level is an ITLB ([tlb.l1i]) and a DTLB ([tlb.l1d])."""
        return self.tlb[0].name == SPLIT_L1[0]

    def tlb_levels(self) -> list[SplitL1 | list[TlbConfig]]:
        """The hierarchy as :class:`~vmopt.tlb.Mmu` takes it (a :class:`SplitL1` first when split)."""
        levels: list[SplitL1 | list[TlbConfig]] = [level.tlb_configs() for level in self.tlb]
        if self.split_l1:
            itlb, dtlb = self.tlb[0].tlb_configs(), self.tlb[1].tlb_configs()
            levels[:2] = [SplitL1(tuple(itlb), tuple(dtlb))]
        return levels

    def to_raw(self) -> dict[str, Any]:
        """The effective configuration in raw (TOML/JSON) form; loading it gives this config back."""
        numa: dict[str, Any] = {
            "nodes": self.numa.nodes,
            "mem_per_node": [_size_text(s) for s in self.numa.mem_per_node],
            "distances": [list(r) for r in self.numa.numa_config(1).distances],  # type: ignore[union-attr]
            "policy": self.numa.policy,
            "cpus": self.numa.cpus,
        }
        return {
            "paging": self.paging.to_raw(),
            "tlb": {level.name: level.to_raw() for level in self.tlb},
            "prefetch": _fields_raw(self.prefetch),
            "pwc": _fields_raw(self.pwc),
            "numa": numa,
            "concurrency": _fields_raw(self.concurrency),
        }


def _size_text(n: int) -> str:
    for unit, suffix in ((1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# -- raw -> SimConfig ---------------------------------------------------------------------------


def _array(key: str, raw: Mapping[str, Any]) -> TlbArraySection:
    for required in ("entries", "ways"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}: missing (every TLB array needs entries and ways)")
    sizes = raw.get("page_sizes", [size_name(s) for s in _ARRAY.page_sizes])
    if not isinstance(sizes, list):
        sizes = [sizes]
    return TlbArraySection(
        key,
        _int(f"{key}.entries", raw["entries"], None),
        _int(f"{key}.ways", raw["ways"], None),
        _str(f"{key}.policy", raw.get("policy", _ARRAY.policy)),
        tuple(_page_size(f"{key}.page_sizes", s) for s in sizes),
        _int(f"{key}.latency", raw.get("latency", _ARRAY.latency), None),
    )


def _level(name: str, raw: Mapping[str, Any]) -> TlbLevelSection:
    key = f"tlb.{name}"
    main: dict[str, Any] = {}
    split: list[tuple[str, TlbArraySection]] = []
    for k, v in raw.items():
        if isinstance(v, dict):
            _check_keys(f"{key}.{k}", v, ARRAY_KEYS)
            split.append((k, _array(f"{key}.{k}", v)))
        elif k in ARRAY_KEYS:
            main[k] = v
        else:
            raise ConfigError(f"{key}.{k}: unknown key (expected one of {', '.join(ARRAY_KEYS)} or a table)")
    return TlbLevelSection(name, _array(key, main), tuple(split))


def _level_order(name: str) -> tuple[int, int]:
    """Where a level section sorts: by number, ``l1i`` before ``l1d``."""
    if name in SPLIT_L1:
        return 1, 1 + SPLIT_L1.index(name)
    return int(name[1:]), 0


def _level_names(tlb: Mapping[str, Any]) -> list[str]:
    """The ``[tlb]`` table's level sections in order, checked: ``l1`` or ``l1i`` + ``l1d``, ``l2``, ..."""
    for n in tlb:
        if not (n in SPLIT_L1 or (n.startswith("l") and n[1:].isdigit() and n[1:] == str(int(n[1:])))):
            raise ConfigError(f"tlb.{n}: unknown key (TLB levels are named l1 (or l1i and l1d), l2, ...)")
    split = [n for n in SPLIT_L1 if n in tlb]
    if split and "l1" in tlb:
        raise ConfigError(
            f"tlb.l1: a unified [tlb.l1] and a split L1 ([tlb.{'], [tlb.'.join(split)}])"
            " cannot both be given;"
            " set the split L1's keys as tlb.l1i.KEY / tlb.l1d.KEY (the default L1 is split), or give a"
            " [tlb] table with a unified [tlb.l1] in --config"
        )
    if len(split) == 1:
        missing = SPLIT_L1[1 - SPLIT_L1.index(split[0])]
        raise ConfigError(f"tlb.{missing}: missing (a split L1 needs both [tlb.l1i] and [tlb.l1d])")
    levels = len(tlb) - (1 if split else 0)
    if levels > MAX_TLB_LEVELS:
        raise ConfigError(f"tlb: at most {MAX_TLB_LEVELS} levels, got {levels}")
    return sorted(tlb, key=_level_order)


def _section(raw: Mapping[str, Any], name: str, allowed: Iterable[str]) -> dict[str, Any]:
    table = _table(name, raw.get(name, {}))
    _check_keys(name, table, allowed)
    return table


def from_raw(raw: Mapping[str, Any]) -> SimConfig:
    """Validate a raw configuration (defaults NOT merged in)."""
    sections = ("paging", "tlb", "prefetch", "pwc", "numa", "concurrency")
    for k in raw:
        if k not in sections:
            raise ConfigError(f"{k}: unknown section (expected one of {', '.join(sections)})")
    p = _section(raw, "paging", PAGING_KEYS)
    dp = PagingSection()
    paging = PagingSection(
        _str("paging.format", p.get("format", dp.format), GUEST_FORMATS),
        _page_size("paging.page_size", p.get("page_size", dp.page_size)),
        _int("paging.walk_ref_cycles", p.get("walk_ref_cycles", dp.walk_ref_cycles), 0, MAX_CYCLES),
        _str("paging.nested", p.get("nested", dp.nested), NESTED_CHOICES),
        _size("paging.nested_page_size", p.get("nested_page_size", dp.nested_page_size)),
        _int(
            "paging.nested_tlb_entries",
            p.get("nested_tlb_entries", dp.nested_tlb_entries),
            0,
            MAX_NTLB_ENTRIES,
        ),
    )
    t = _table("tlb", raw.get("tlb", {}))
    levels = tuple(_level(n, _table(f"tlb.{n}", t[n])) for n in _level_names(t))
    f = _section(raw, "prefetch", ("kind", "degree", "mode", "queue_limit"))
    prefetch = PrefetchSection(**f)
    w = _section(raw, "pwc", ("enabled", "entries", "latency"))
    pwc = PwcSection(**w)
    m = _section(raw, "numa", ("nodes", "mem_per_node", "distances", "policy", "cpus"))
    dn = NumaSection()
    nodes = _int("numa.nodes", m.get("nodes", dn.nodes), 1, MAX_NODES)
    mem = m.get("mem_per_node", dn.mem_per_node[0])
    mem_list = [_size("numa.mem_per_node", x) for x in mem] if isinstance(mem, list) else [
        _size("numa.mem_per_node", mem)] * nodes  # fmt: skip
    dist = m.get("distances")
    if dist is not None:
        if not isinstance(dist, list) or not all(isinstance(r, list) for r in dist):
            raise ConfigError(f"numa.distances: expected a matrix (array of arrays), got {dist!r}")
        if len(dist) != nodes:
            raise ConfigError(f"numa.distances: expected a {nodes}x{nodes} matrix for {nodes} nodes")
        dist = tuple(tuple(r) for r in dist)
    numa = NumaSection(
        nodes,
        tuple(mem_list),
        dist,
        _str("numa.policy", m.get("policy", dn.policy)),
        _int("numa.cpus", m.get("cpus", dn.cpus), 0, MAX_CPUS),
    )
    cfields = [fl.name for fl in fields(ConcurrencyConfig)]
    c = _section(raw, "concurrency", cfields)
    with _keyed("concurrency"):
        concurrency = ConcurrencyConfig(**c)
    return SimConfig(paging, levels, prefetch, pwc, numa, concurrency)


# -- loading, overrides, output ----------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``64``, ``true``, ``["4K", "2M"]``, ``"lru"``) or a bare string."""
    if text.count("[") + text.count("{") > MAX_CONFIG_NESTING:
        raise ConfigError(f"value {text[:40]!r}...: arrays or tables nested deeper than {MAX_CONFIG_NESTING}")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


def apply_set(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override to ``raw`` in place."""
    path, eq, value = assignment.partition("=")
    path = path.strip()
    parts = path.split(".")
    if not eq or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a table")
        node = nxt
    node[parts[-1]] = parse_value(value)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> None:
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


#: Largest configuration file read (a real one is a few KiB).
MAX_CONFIG_BYTES: Final = 1 << 20
#: Deepest nesting of ``[`` and ``{`` a configuration file may have (tomllib recurses per level).
MAX_CONFIG_NESTING: Final = 32


def _read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file at ``path``; every failure is a ConfigError naming the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--config {str(path)!r}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {str(path)!r}: larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--config {str(path)!r}: not UTF-8 text (byte {exc.start}: {raw[exc.start]:#04x})"
        ) from exc
    depth = most = 0
    for ch in text:  # brackets inside strings count too: a bound, not a parser
        if ch in "[{":
            depth += 1
            most = max(most, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    if most > MAX_CONFIG_NESTING:
        raise ConfigError(f"--config {str(path)!r}: arrays or tables nested deeper than {MAX_CONFIG_NESTING}")
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def load_raw(path: str | Path | None = None, sets: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, merged with the file at ``path`` (its ``[tlb]`` replaces the default), then ``sets``."""
    raw = default_raw()
    if path is not None:
        data = _read_toml(path)
        if "tlb" in data:
            raw["tlb"] = {}
        if "numa" in data and "nodes" in data["numa"] and "distances" not in data["numa"]:
            del raw["numa"]["distances"]  # the default matrix fits 2 nodes only
        _merge(raw, data)
    for s in sets:
        if (
            s.strip().startswith("numa.nodes")
            and "distances" in raw.get("numa", {})
            and not any(x.strip().startswith("numa.distances") for x in sets)
        ):
            del raw["numa"]["distances"]
        apply_set(raw, s)
    return raw


def load_config(path: str | Path | None = None, sets: Iterable[str] = ()) -> SimConfig:
    """The effective, validated configuration."""
    sets = list(sets)
    return from_raw(load_raw(path, sets))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(raw: Mapping[str, Any], prefix: str = "") -> str:
    """Write a nested dict as TOML (tables after plain keys)."""
    lines: list[str] = []
    plain = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in raw.items() if isinstance(v, dict)}
    if prefix and (plain or not tables):
        lines.append(f"[{prefix}]")
    for k, v in plain.items():
        lines.append(f"{k} = {_toml_value(v)}")
    if plain:
        lines.append("")
    for k, v in tables.items():
        lines.append(to_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines).rstrip("\n") + "\n"
