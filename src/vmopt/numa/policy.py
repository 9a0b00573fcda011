"""Memory policies with Linux mempolicy semantics (see mm/mempolicy.c and
Documentation/admin-guide/mm/numa_memory_policy.rst).

A policy answers one question: for page ``index`` of a region, touched
first by a vCPU on node ``local``, which nodes to try, in order. ``bind``
never leaves its node set; the others fall back by distance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vmopt.errors import ConfigError

__all__ = ["MODES", "MemPolicy"]

MODES = ("local", "bind", "preferred", "preferred_many", "interleave", "weighted_interleave", "balanced")


def _nodes(nodes: Iterable[int], what: str) -> tuple[int, ...]:
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Iterable):
        raise ConfigError(f"{what} needs a non-empty set of node ids, got {nodes!r}")
    out = tuple(nodes)
    if not out or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in out):
        raise ConfigError(f"{what} needs a non-empty set of node ids, got {out!r}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} lists a node twice: {out!r}")
    return tuple(sorted(out))


@dataclass(frozen=True)
class MemPolicy:
    """A placement rule. Build one with the class methods, as with set_mempolicy(2) modes."""

    mode: str = "local"
    nodes: tuple[int, ...] = ()
    weights: tuple[tuple[int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ConfigError(f"unknown mempolicy mode {self.mode!r}; expected one of {', '.join(MODES)}")

    # -- constructors ----------------------------------------------------------------

    @classmethod
    def local(cls) -> MemPolicy:
        """MPOL_LOCAL: first touch, on the node of the touching vCPU."""
        return cls("local")

    @classmethod
    def bind(cls, nodes: Iterable[int]) -> MemPolicy:
        """MPOL_BIND: only these nodes, nearest to the touching vCPU first; no fallback."""
        return cls("bind", _nodes(nodes, "bind"))

    @classmethod
    def preferred(cls, node: int) -> MemPolicy:
        """MPOL_PREFERRED: this node, then the others by increasing distance from it."""
        return cls("preferred", _nodes([node], "preferred"))

    @classmethod
    def preferred_many(cls, nodes: Iterable[int]) -> MemPolicy:
        """MPOL_PREFERRED_MANY: the nearest of these nodes first, then any node by distance."""
        return cls("preferred_many", _nodes(nodes, "preferred_many"))

    @classmethod
    def interleave(cls, nodes: Iterable[int]) -> MemPolicy:
        """MPOL_INTERLEAVE: page ``i`` of a region goes to ``nodes[i % len(nodes)]``."""
        return cls("interleave", _nodes(nodes, "interleave"))

    @classmethod
    def weighted_interleave(cls, weights: Mapping[int, int]) -> MemPolicy:
        """MPOL_WEIGHTED_INTERLEAVE: node ``n`` gets ``weights[n]`` pages of every round (1..255)."""
        if not isinstance(weights, Mapping):
            raise ConfigError(f"weighted_interleave needs a {{node: weight}} mapping, got {weights!r}")
        nodes = _nodes(weights.keys(), "weighted_interleave")
        for node in nodes:
            w = weights[node]
            if not isinstance(w, int) or not 1 <= w <= 255:
                raise ConfigError(f"weighted_interleave weight of node {node} must be in 1..255, got {w!r}")
        return cls("weighted_interleave", nodes, tuple((n, weights[n]) for n in nodes))

    @classmethod
    def balanced(cls) -> MemPolicy:
        """The design report's rule: the node with the lowest fraction of memory in use."""
        return cls("balanced")

    @classmethod
    def parse(cls, text: str) -> MemPolicy:
        """``'interleave:0,1'``, ``'weighted_interleave:0=3,1=1'``, ``'bind:1'``, ``'local'``..."""
        if not isinstance(text, str):
            raise ConfigError(f"mempolicy must be a string such as 'local' or 'interleave:0,1', got {text!r}")
        mode, _, arg = text.strip().partition(":")
        try:
            if mode in ("local", "balanced") and not arg:
                return cls(mode)
            if mode == "weighted_interleave":
                pairs = [p.split("=") for p in arg.split(",")]
                return cls.weighted_interleave({int(n): int(w) for n, w in pairs})
            nodes = [int(x) for x in arg.split(",")] if arg else []
            if mode == "preferred" and len(nodes) == 1:
                return cls.preferred(nodes[0])
            if mode in ("bind", "preferred_many", "interleave"):
                return getattr(cls, mode)(nodes)  # type: ignore[no-any-return]
        except ValueError as exc:
            raise ConfigError(f"cannot parse mempolicy {text!r}: {exc}") from exc
        raise ConfigError(
            f"cannot parse mempolicy {text!r}; examples: local, bind:0,1, preferred:1,"
            " preferred_many:0,1, interleave:0,1, weighted_interleave:0=3,1=1, balanced"
        )

    def __str__(self) -> str:
        if self.mode == "weighted_interleave":
            return f"{self.mode}:" + ",".join(f"{n}={w}" for n, w in self.weights)
        if self.nodes:
            return f"{self.mode}:" + ",".join(map(str, self.nodes))
        return self.mode

    def check(self, num_nodes: int) -> None:
        """Raise if the policy names a node the topology lacks."""
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
            raise ConfigError(f"mempolicy check: num_nodes must be an int, got {num_nodes!r}")
        bad = [n for n in self.nodes if n >= num_nodes]
        if bad:
            raise ConfigError(f"mempolicy {self} names node(s) {bad}, but the guest has {num_nodes} nodes")

    # -- placement -------------------------------------------------------------------

    @property
    def period(self) -> int | None:
        """Pages after which :meth:`target` repeats for one toucher; None when it follows usage.

        Page ``i`` and page ``i + period`` of a region want the same node
        (balanced placement follows the nodes' usage, so has no period).
        """
        if self.mode == "interleave":
            return len(self.nodes)
        if self.mode == "weighted_interleave":
            return sum(w for _, w in self.weights)
        return None if self.mode == "balanced" else 1

    def target(self, index: int, local: int, usage: Callable[[int], float], num_nodes: int) -> int:
        """The node this policy wants for page ``index`` first touched from node ``local``."""
        mode = self.mode
        if mode == "local":
            return local
        if mode == "preferred":
            return self.nodes[0]
        if mode == "interleave":
            return self.nodes[index % len(self.nodes)]
        if mode == "weighted_interleave":
            total = sum(w for _, w in self.weights)
            slot = index % total
            for node, w in self.weights:
                if slot < w:
                    return node
                slot -= w
            raise AssertionError("unreachable")
        if mode == "balanced":
            return min(range(num_nodes), key=lambda n: (usage(n), n))
        return local  # bind and preferred_many: nearest of the set, resolved by order()

    def order(
        self,
        index: int,
        local: int,
        distances: Sequence[Sequence[int]],
        usage: Callable[[int], float],
        rotation: int,
    ) -> list[int]:
        """Every node to try, in order. Ties in distance rotate by ``rotation``."""
        n = len(distances)
        if self.mode in ("bind", "preferred_many"):
            in_set = _by_distance(local, self.nodes, distances, rotation)
            if self.mode == "bind":
                return in_set
            rest = [x for x in _by_distance(in_set[0], range(n), distances, rotation) if x not in in_set]
            return in_set + rest
        first = self.target(index, local, usage, n)
        return _by_distance(first, range(n), distances, rotation)


def _by_distance(
    origin: int, nodes: Iterable[int], distances: Sequence[Sequence[int]], rotation: int
) -> list[int]:
    """``nodes`` sorted by distance from ``origin``; equal distances rotate round-robin."""
    pool = list(nodes)
    groups: dict[int, list[int]] = {}
    for node in pool:
        groups.setdefault(distances[origin][node], []).append(node)
    out: list[int] = []
    for dist in sorted(groups):
        group = sorted(groups[dist])
        if len(group) > 1:
            k = rotation % len(group)
            group = group[k:] + group[:k]
        out.extend(group)
    return out
