"""NUMA topology: node sizes, SLIT distances and which vCPUs sit where."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmopt.errors import ConfigError
from vmopt.units import format_size

__all__ = ["LOCAL_DISTANCE", "MAX_CPUS", "MAX_NODES", "MAX_NODE_MEMORY", "REMOTE_DISTANCE", "NumaConfig"]

log = logging.getLogger(__name__)

LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20
#: Most NUMA nodes (Linux's x86-64 default MAX_NUMNODES is 64 with NODES_SHIFT 6).
MAX_NODES = 64
#: Most vCPUs a topology places (KVM's KVM_MAX_VCPUS on x86-64 is 4096).
MAX_CPUS = 4096
#: Most memory per node: 64 TiB (guest memory is sparse, but the allocator covers it all).
MAX_NODE_MEMORY = 64 << 40


@dataclass(frozen=True)
class NumaConfig:
    """A guest's NUMA topology.

    ``mem_per_node`` is one size for every node or one size per node (bytes,
    multiples of 4 KiB). ``distances`` is the ACPI SLIT matrix: 10 on the
    diagonal, more than 10 elsewhere; the default is 10 local, 20 remote.
    vCPU ``c`` sits on node ``c // cpus_per_node`` unless ``cpu_nodes`` lists
    the node of each vCPU explicitly.
    """

    num_nodes: int
    mem_per_node: int | Sequence[int]
    distances: Sequence[Sequence[int]] | None = None
    cpus_per_node: int = 1
    cpu_nodes: Sequence[int] | None = None

    def __post_init__(self) -> None:
        n = self.num_nodes
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"num_nodes must be a positive integer, got {n!r}", field="nodes")
        if n > MAX_NODES:
            raise ConfigError(f"num_nodes must be at most {MAX_NODES}, got {n:,}", field="nodes")
        per = self.mem_per_node
        if isinstance(per, int):
            sizes = [per] * n
        elif isinstance(per, Sequence) and not isinstance(per, str | bytes):
            sizes = list(per)
        else:
            raise ConfigError(
                f"mem_per_node must be a size in bytes or a list of sizes, got {per!r}", field="mem_per_node"
            )
        if len(sizes) != n:
            raise ConfigError(
                f"mem_per_node lists {len(sizes)} sizes for {n} nodes: {self.mem_per_node!r}",
                field="mem_per_node",
            )
        for i, size in enumerate(sizes):
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % 4096:
                raise ConfigError(
                    f"node {i} memory must be a positive multiple of 4096, got {size!r}", field="mem_per_node"
                )
            if size > MAX_NODE_MEMORY:
                raise ConfigError(
                    f"node {i} memory must be at most {format_size(MAX_NODE_MEMORY)}, got {size:,} bytes",
                    field="mem_per_node",
                )
        object.__setattr__(self, "mem_per_node", tuple(sizes))
        if self.distances is None:
            dist = tuple(
                tuple(LOCAL_DISTANCE if i == j else REMOTE_DISTANCE for j in range(n)) for i in range(n)
            )
        else:
            rows = self.distances
            if not isinstance(rows, Sequence) or not all(isinstance(r, Sequence) for r in rows):
                raise ConfigError(f"distances must be a {n}x{n} matrix, got {rows!r}", field="distances")
            dist = tuple(tuple(row) for row in rows)
            if len(dist) != n or any(len(row) != n for row in dist):
                raise ConfigError(
                    f"distances must be a {n}x{n} matrix, got {self.distances!r}", field="distances"
                )
            for i, row in enumerate(dist):
                for j, d in enumerate(row):
                    at = f"distances[{i}][{j}]"
                    if not isinstance(d, int) or isinstance(d, bool):
                        raise ConfigError(f"distance [{i}][{j}] must be an integer, got {d!r}", field=at)
                    if i == j and d != LOCAL_DISTANCE:
                        raise ConfigError(
                            f"distance [{i}][{i}] must be {LOCAL_DISTANCE} (local), got {d}", field=at
                        )
                    if i != j and d <= LOCAL_DISTANCE:
                        raise ConfigError(
                            f"distance [{i}][{j}] must be greater than {LOCAL_DISTANCE}, got {d}", field=at
                        )
        object.__setattr__(self, "distances", dist)
        if (
            not isinstance(self.cpus_per_node, int)
            or isinstance(self.cpus_per_node, bool)
            or self.cpus_per_node < 1
        ):
            raise ConfigError(f"cpus_per_node must be a positive integer, got {self.cpus_per_node!r}")
        if self.cpu_nodes is None and n * self.cpus_per_node > MAX_CPUS:
            raise ConfigError(
                f"{n} nodes x {self.cpus_per_node} cpus_per_node is more than {MAX_CPUS} vCPUs",
                field="cpus_per_node",
            )
        if self.cpu_nodes is not None:
            if not isinstance(self.cpu_nodes, Sequence):
                raise ConfigError(f"cpu_nodes must list node ids in [0, {n}), got {self.cpu_nodes!r}")
            if len(self.cpu_nodes) > MAX_CPUS:
                raise ConfigError(f"cpu_nodes places {len(self.cpu_nodes):,} vCPUs; at most {MAX_CPUS}")
            nodes = tuple(self.cpu_nodes)
            if not nodes or any(not isinstance(x, int) or not 0 <= x < n for x in nodes):
                raise ConfigError(f"cpu_nodes must list node ids in [0, {n}), got {self.cpu_nodes!r}")
            object.__setattr__(self, "cpu_nodes", nodes)

    @property
    def node_sizes(self) -> tuple[int, ...]:
        """Bytes of memory on each node."""
        return tuple(self.mem_per_node)  # type: ignore[arg-type]

    @property
    def total_memory(self) -> int:
        """Bytes over all nodes."""
        return sum(self.node_sizes)

    @property
    def num_cpus(self) -> int:
        """vCPUs the topology places."""
        return len(self.cpu_nodes) if self.cpu_nodes is not None else self.num_nodes * self.cpus_per_node

    def node_of_cpu(self, cpu: int) -> int:
        """The node vCPU ``cpu`` sits on."""
        if not isinstance(cpu, int) or cpu < 0 or cpu >= self.num_cpus:
            raise ConfigError(f"vCPU {cpu!r} is not in this topology (0..{self.num_cpus - 1})")
        if self.cpu_nodes is not None:
            return self.cpu_nodes[cpu]
        return cpu // self.cpus_per_node

    def distance(self, a: int, b: int) -> int:
        """SLIT distance from node ``a`` to node ``b``."""
        n = self.num_nodes
        if not all(isinstance(x, int) and 0 <= x < n for x in (a, b)):
            raise ConfigError(f"distance({a!r}, {b!r}): nodes must be in [0, {n})")
        return self.distances[a][b]  # type: ignore[index]

    def describe(self) -> str:
        """One line per node, for reports."""
        lines = []
        for i, size in enumerate(self.node_sizes):
            cpus = [c for c in range(self.num_cpus) if self.node_of_cpu(c) == i]
            lines.append(f"node {i}: {format_size(size)}, cpus {cpus}, distances {list(self.distances[i])}")  # type: ignore[index]
        return "\n".join(lines)

    @classmethod
    def from_host(cls, root: str | os.PathLike[str] = "/sys/devices/system/node") -> NumaConfig:
        """The host's topology from sysfs; one node of the host's memory where that fails."""
        if not isinstance(root, str | os.PathLike):
            raise ConfigError(f"from_host: root must be a path, got {root!r}")
        base = Path(root)
        try:
            dirs = sorted(
                (p for p in base.iterdir() if p.name.startswith("node") and p.name[4:].isdigit()),
                key=lambda p: int(p.name[4:]),
            )
            if not dirs:
                raise OSError(f"no node directories under {base}")
            sizes, dists, cpu_nodes = [], [], []
            for i, d in enumerate(dirs):
                sizes.append(_meminfo_total(d / "meminfo"))
                dists.append([int(x) for x in (d / "distance").read_text().split()])
                for cpu in _cpulist((d / "cpulist").read_text()):
                    cpu_nodes.append((cpu, i))
            cpu_nodes.sort()
            return cls(len(dirs), sizes, dists, cpu_nodes=[node for _, node in cpu_nodes] or None)
        except (OSError, ValueError, ConfigError) as exc:
            log.info("host NUMA topology unavailable (%s); using one node", exc)
            pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 1 << 18
            return cls(1, max(pages, 1) * 4096, cpus_per_node=os.cpu_count() or 1)


def _meminfo_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if "MemTotal:" in line:
            kib = int(line.split("MemTotal:")[1].split()[0])
            return kib * 1024 // 4096 * 4096
    raise ValueError(f"no MemTotal in {path}")


def _cpulist(text: str) -> list[int]:
    """``'0-3,8'`` -> ``[0, 1, 2, 3, 8]``."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus
