"""Simulation configuration: TOML file + ``--set`` overrides -> a validated, frozen ``SimConfig``.

The raw form is a nested dict exactly as TOML holds it. :func:`load_config`
starts from :func:`default_raw`, merges a file (a file's ``[tlb]`` table
replaces the default hierarchy as a whole), applies ``--set`` overrides and
validates. Every error names the offending key (``tlb.l1.ways: 3 does not
divide entries 64``). See docs/configuration.md for where the defaults come from.
"""

from __future__ import annotations

import copy
import logging
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from vmopt.errors import ConfigError
from vmopt.fetching.concurrency import ConcurrencyConfig
from vmopt.numa.config import LOCAL_DISTANCE, NumaConfig
from vmopt.numa.policy import MemPolicy
from vmopt.paging import FORMATS
from vmopt.tlb.config import POLICIES, PREFETCHERS, PrefetchConfig, PwcConfig, TlbConfig
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
ARRAY_KEYS: Final = ("entries", "ways", "policy", "page_sizes", "latency")


def default_raw() -> dict[str, Any]:
    """The default configuration in raw (TOML) form: one current x86-64 core, a 2-socket host.

    TLB: Intel Golden Cove (Alder Lake P-core / Sapphire Rapids) data TLBs,
    from Intel's Optimization Reference Manual, table "TLB parameters".
    """
    return {
        "paging": {"format": "x86_64", "page_size": "4K", "walk_ref_cycles": 20},
        "tlb": {
            "l1": {
                "entries": 64,
                "ways": 4,
                "policy": "lru",
                "page_sizes": ["4K"],
                "latency": 1,
                "2m": {"entries": 32, "ways": 4, "policy": "lru", "page_sizes": ["2M"], "latency": 1},
                "1g": {"entries": 4, "ways": 4, "policy": "lru", "page_sizes": ["1G"], "latency": 1},
            },
            "l2": {
                "entries": 2048,
                "ways": 16,
                "policy": "lru",
                "page_sizes": ["4K", "2M"],
                "latency": 8,
                "1g": {"entries": 16, "ways": 4, "policy": "lru", "page_sizes": ["1G"], "latency": 8},
            },
        },
        "prefetch": {"kind": "none", "degree": 1, "mode": "immediate", "queue_limit": 1024},
        "pwc": {"enabled": True, "entries": 32, "latency": 1},
        "numa": {
            "nodes": 2,
            "mem_per_node": "16G",
            "distances": [[10, 21], [21, 10]],
            "policy": "local",
            "cpus": 0,
        },
        "concurrency": {f.name: getattr(ConcurrencyConfig(), f.name) for f in fields(ConcurrencyConfig)},
    }


# -- small validators -------------------------------------------------------------------------


def _int(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key}: must be >= {minimum}, got {value}")
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


@dataclass(frozen=True)
class PagingSection:
    """[paging]: page-table format, the page size demand paging maps, cycles per PTE read."""

    format: str = "x86_64"
    page_size: int = 4096
    walk_ref_cycles: int = 20

    def __post_init__(self) -> None:
        _str("paging.format", self.format, FORMATS)
        _page_size("paging.page_size", self.page_size)
        _int("paging.walk_ref_cycles", self.walk_ref_cycles)


@dataclass(frozen=True)
class TlbArraySection:
    """One set-associative TLB array (``key`` is its dotted config name, for messages)."""

    key: str
    entries: int
    ways: int
    policy: str = "lru"
    page_sizes: tuple[int, ...] = (4096,)
    latency: int = 1

    def __post_init__(self) -> None:
        k = self.key
        _int(f"{k}.entries", self.entries, 1)
        _int(f"{k}.ways", self.ways, 1)
        if self.entries % self.ways:
            raise ConfigError(f"{k}.ways: {self.ways} does not divide entries {self.entries}")
        sets = self.entries // self.ways
        if sets & (sets - 1):
            raise ConfigError(
                f"{k}.ways: entries {self.entries} / ways {self.ways} = {sets} sets, not a power of two"
            )
        _str(f"{k}.policy", self.policy, POLICIES)
        if self.policy == "plru" and self.ways & (self.ways - 1):
            raise ConfigError(f"{k}.ways: tree PLRU needs a power-of-two number of ways, got {self.ways}")
        if not self.page_sizes or len(set(self.page_sizes)) != len(self.page_sizes):
            raise ConfigError(f"{k}.page_sizes: must list distinct page sizes, got {self.page_sizes!r}")
        for s in self.page_sizes:
            _page_size(f"{k}.page_sizes", s)
        _int(f"{k}.latency", self.latency)

    def tlb_config(self, name: str) -> TlbConfig:
        """The :class:`TlbConfig` this array stands for."""
        return TlbConfig(self.entries, self.ways, self.policy, self.page_sizes, self.latency, name)

    def to_raw(self) -> dict[str, Any]:
        """TOML form."""
        return {
            "entries": self.entries, "ways": self.ways, "policy": self.policy,
            "page_sizes": [size_name(s) for s in self.page_sizes], "latency": self.latency,
        }  # fmt: skip


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


@dataclass(frozen=True)
class PrefetchSection:
    """[prefetch]: TLB prefetcher kind, degree and mode."""

    kind: str = "none"
    degree: int = 1
    mode: str = "immediate"
    queue_limit: int = 1024

    def __post_init__(self) -> None:
        _str("prefetch.kind", self.kind, PREFETCHERS)
        _int("prefetch.degree", self.degree, 1)
        _str("prefetch.mode", self.mode, ("immediate", "deferred"))
        _int("prefetch.queue_limit", self.queue_limit, 1)

    def prefetch_config(self) -> PrefetchConfig:
        """As the MMU takes it."""
        return PrefetchConfig(self.kind, self.degree, self.mode, self.queue_limit)


@dataclass(frozen=True)
class PwcSection:
    """[pwc]: the page-walk (paging-structure) cache."""

    enabled: bool = True
    entries: int = 32
    latency: int = 1

    def __post_init__(self) -> None:
        _bool("pwc.enabled", self.enabled)
        _int("pwc.entries", self.entries, 1)
        _int("pwc.latency", self.latency)

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
    distances: tuple[tuple[int, ...], ...] | None = None
    policy: str = "local"
    cpus: int = 0

    def __post_init__(self) -> None:
        _int("numa.nodes", self.nodes, 1)
        if len(self.mem_per_node) != self.nodes:
            raise ConfigError(
                f"numa.mem_per_node: lists {len(self.mem_per_node)} sizes for {self.nodes} nodes"
            )
        for s in self.mem_per_node:
            if s % 4096:
                raise ConfigError(f"numa.mem_per_node: {s} is not a multiple of 4096")
        if self.distances is not None:
            n = self.nodes
            if len(self.distances) != n or any(len(r) != n for r in self.distances):
                raise ConfigError(f"numa.distances: expected a {n}x{n} matrix, got {self.distances!r}")
            for i, row in enumerate(self.distances):
                for j, d in enumerate(row):
                    _int(f"numa.distances[{i}][{j}]", d)
                    if (i == j) != (d == LOCAL_DISTANCE) or d < LOCAL_DISTANCE:
                        raise ConfigError(
                            f"numa.distances[{i}][{j}]: {d} (the diagonal is {LOCAL_DISTANCE}, "
                            f"other entries are greater)"
                        )
        try:
            MemPolicy.parse(_str("numa.policy", self.policy)).check(self.nodes)
        except ConfigError as exc:
            raise ConfigError(f"numa.policy: {exc}") from exc
        _int("numa.cpus", self.cpus)

    def numa_config(self, cpus: int) -> NumaConfig:
        """The topology for ``cpus`` vCPUs."""
        return NumaConfig(
            self.nodes, self.mem_per_node, self.distances, cpu_nodes=[c % self.nodes for c in range(cpus)]
        )

    def mempolicy(self) -> MemPolicy:
        """The default mempolicy."""
        return MemPolicy.parse(self.policy)


@dataclass(frozen=True)
class SimConfig:
    """The whole effective configuration of one simulation (frozen, validated)."""

    paging: PagingSection
    tlb: tuple[TlbLevelSection, ...]
    prefetch: PrefetchSection
    pwc: PwcSection
    numa: NumaSection
    concurrency: ConcurrencyConfig

    def __post_init__(self) -> None:
        if not self.tlb:
            raise ConfigError("tlb: at least one level ([tlb.l1]) is required")
        for i, level in enumerate(self.tlb):
            if level.name != f"l{i + 1}":
                raise ConfigError(f"tlb.{level.name}: levels must be named l1, l2, ... in order")

    def tlb_levels(self) -> list[list[TlbConfig]]:
        """The hierarchy as :class:`~vmopt.tlb.Mmu` takes it."""
        return [level.tlb_configs() for level in self.tlb]

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
            "paging": {
                "format": self.paging.format,
                "page_size": size_name(self.paging.page_size),
                "walk_ref_cycles": self.paging.walk_ref_cycles,
            },
            "tlb": {level.name: level.to_raw() for level in self.tlb},
            "prefetch": {
                "kind": self.prefetch.kind,
                "degree": self.prefetch.degree,
                "mode": self.prefetch.mode,
                "queue_limit": self.prefetch.queue_limit,
            },
            "pwc": {"enabled": self.pwc.enabled, "entries": self.pwc.entries, "latency": self.pwc.latency},
            "numa": numa,
            "concurrency": {f.name: getattr(self.concurrency, f.name) for f in fields(ConcurrencyConfig)},
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
    sizes = raw.get("page_sizes", ["4K"])
    if not isinstance(sizes, list):
        sizes = [sizes]
    return TlbArraySection(
        key,
        _int(f"{key}.entries", raw["entries"], 1),
        _int(f"{key}.ways", raw["ways"], 1),
        _str(f"{key}.policy", raw.get("policy", "lru"), POLICIES),
        tuple(_page_size(f"{key}.page_sizes", s) for s in sizes),
        _int(f"{key}.latency", raw.get("latency", 1)),
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
    p = _section(raw, "paging", ("format", "page_size", "walk_ref_cycles"))
    paging = PagingSection(
        _str("paging.format", p.get("format", "x86_64"), FORMATS),
        _page_size("paging.page_size", p.get("page_size", 4096)),
        _int("paging.walk_ref_cycles", p.get("walk_ref_cycles", 20)),
    )
    t = _table("tlb", raw.get("tlb", {}))
    names = sorted(t, key=lambda n: (len(n), n))
    for n in names:
        if not (n.startswith("l") and n[1:].isdigit()):
            raise ConfigError(f"tlb.{n}: unknown key (TLB levels are named l1, l2, ...)")
    levels = tuple(_level(n, _table(f"tlb.{n}", t[n])) for n in names)
    f = _section(raw, "prefetch", ("kind", "degree", "mode", "queue_limit"))
    prefetch = PrefetchSection(
        _str("prefetch.kind", f.get("kind", "none"), PREFETCHERS),
        _int("prefetch.degree", f.get("degree", 1), 1),
        _str("prefetch.mode", f.get("mode", "immediate"), ("immediate", "deferred")),
        _int("prefetch.queue_limit", f.get("queue_limit", 1024), 1),
    )
    w = _section(raw, "pwc", ("enabled", "entries", "latency"))
    pwc = PwcSection(
        _bool("pwc.enabled", w.get("enabled", True)),
        _int("pwc.entries", w.get("entries", 32), 1),
        _int("pwc.latency", w.get("latency", 1)),
    )
    m = _section(raw, "numa", ("nodes", "mem_per_node", "distances", "policy", "cpus"))
    nodes = _int("numa.nodes", m.get("nodes", 1), 1)
    mem = m.get("mem_per_node", "16G")
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
        _str("numa.policy", m.get("policy", "local")),
        _int("numa.cpus", m.get("cpus", 0)),
    )
    cfields = [fl.name for fl in fields(ConcurrencyConfig)]
    c = _section(raw, "concurrency", cfields)
    try:
        concurrency = ConcurrencyConfig(**c)
    except ConfigError as exc:
        raise ConfigError(f"concurrency.{exc}") from exc
    return SimConfig(paging, levels, prefetch, pwc, numa, concurrency)


# -- loading, overrides, output ----------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML value (``64``, ``true``, ``["4K", "2M"]``, ``"lru"``) or a bare string."""
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


def load_raw(path: str | Path | None = None, sets: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, merged with the file at ``path`` (its ``[tlb]`` replaces the default), then ``sets``."""
    raw = default_raw()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
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
