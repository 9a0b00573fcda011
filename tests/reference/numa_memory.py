"""Guest physical memory laid out node by node, a buddy allocator per node.

Node 0 holds ``[0, size0)``, node 1 the next ``size1`` bytes, and so on:
the layout of an ACPI SRAT with one memory range per node. ``alloc`` walks
a policy's node order until one node has a free block.
"""

from __future__ import annotations

import bisect
import logging
import threading

from reference.memory.buddy import BuddyAllocator
from reference.memory.physical import ALLOC_ORDERS, FRAME_SHIFT, FRAME_SIZE, PhysicalMemory
from vmopt.errors import ConfigError, OutOfFramesError
from vmopt.numa.config import NumaConfig
from vmopt.numa.policy import MemPolicy
from vmopt.units import format_size

__all__ = ["NumaMemory"]

log = logging.getLogger(__name__)


class NumaMemory(PhysicalMemory):
    """:class:`PhysicalMemory` with one buddy allocator per NUMA node."""

    def __init__(self, config: NumaConfig) -> None:
        super().__init__(config.total_memory)
        self.config = config
        self._allocator = None
        self.node_base: list[int] = []
        self.nodes: list[BuddyAllocator] = []
        base = 0
        for node, size in enumerate(config.node_sizes):
            self.node_base.append(base)
            self.nodes.append(BuddyAllocator(base >> FRAME_SHIFT, size >> FRAME_SHIFT, node=node))
            base += size
        self._rotation = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        sizes = ", ".join(format_size(s) for s in self.config.node_sizes)
        return f"NumaMemory({self.config.num_nodes} nodes: {sizes})"

    def node_of(self, pa: int) -> int:
        """The node that holds physical address ``pa``."""
        if not isinstance(pa, int) or not 0 <= pa < self.size:
            raise ConfigError(f"physical address {pa!r} is outside memory [0, {self.size:#x})")
        return bisect.bisect_right(self.node_base, pa) - 1

    @property
    def allocator(self) -> BuddyAllocator:
        """Node 0's allocator (what non-NUMA callers such as page-table code get by default)."""
        return self.nodes[0]

    def used_bytes(self, node: int) -> int:
        """Bytes allocated on ``node``."""
        return self.nodes[node].used_pages << FRAME_SHIFT

    def usage(self, node: int) -> float:
        """Fraction of ``node`` in use, in [0, 1]."""
        a = self.nodes[node]
        return a.used_pages / a.total_pages

    @property
    def free_bytes(self) -> int:
        """Bytes free over all nodes."""
        return sum(a.free_pages for a in self.nodes) << FRAME_SHIFT

    def alloc(self, size: int = FRAME_SIZE, node: int | None = None) -> int:
        """A zeroed block on ``node``, or on the nearest node with room (node 0 when None)."""
        order = self._order(size)
        origin = 0 if node is None else self._check_node(node)
        dist = self.config.distances
        nodes = sorted(range(self.config.num_nodes), key=lambda n: (dist[origin][n], n))  # type: ignore[index]
        return self._alloc_from(nodes, order, size, origin)

    def alloc_policy(self, size: int, policy: MemPolicy, index: int, local: int) -> int:
        """A zeroed block for page ``index`` of a region under ``policy``, first touched from ``local``."""
        order = self._order(size)
        if policy.mode not in ("bind", "preferred_many"):
            # Fast path: the policy's own node has room, so no fallback order is needed.
            first = policy.target(index, local, self.usage, self.config.num_nodes)
            allocator = self.nodes[first]
            if allocator.free_pages >= 1 << order:
                try:
                    pa = allocator.alloc(order) << FRAME_SHIFT
                except OutOfFramesError:
                    pass
                else:
                    self.zero(pa, size)
                    return pa
        with self._lock:
            rotation = self._rotation
        nodes = policy.order(index, local, self.config.distances, self.usage, rotation)  # type: ignore[arg-type]
        pa = self._alloc_from(nodes, order, size, nodes[0], strict=policy.mode == "bind", policy=policy)
        if self.node_of(pa) != nodes[0]:
            with self._lock:
                self._rotation += 1  # ties go round-robin across successive fallbacks
        return pa

    def _alloc_from(
        self, nodes: list[int], order: int, size: int, first: int, *, strict: bool = False,
        policy: MemPolicy | None = None,
    ) -> int:  # fmt: skip
        for node in nodes:
            allocator = self.nodes[node]
            if allocator.free_pages < 1 << order:
                continue
            try:
                pfn = allocator.alloc(order)
            except OutOfFramesError:
                continue
            pa = pfn << FRAME_SHIFT
            self.zero(pa, size)
            if node != first:
                log.debug("fell back from node %d to node %d for a %s block", first, node, format_size(size))
            return pa
        where = f"nodes {nodes}" if len(nodes) > 1 else f"node {nodes[0]}"
        rule = f" (policy {policy})" if policy is not None else ""
        free = ", ".join(
            f"node {n}: {format_size(self.nodes[n].free_pages << FRAME_SHIFT)} free" for n in nodes
        )
        raise OutOfFramesError(
            f"out of memory on {where}{rule}: no free {format_size(size)} block ({free})",
            size=size,
            node=nodes[0] if strict or len(nodes) == 1 else first,
        )

    def free(self, pa: int, size: int = FRAME_SIZE) -> None:
        """Return a block to its node's allocator."""
        order = self._order(size)
        self._check(pa, size)
        self.nodes[self.node_of(pa)].free(pa >> FRAME_SHIFT, order)
        self.zero(pa, size)

    def free_blocks(self) -> list[list[int]]:
        """Per node, the count of free blocks of each order 0..18 (fragmentation, like /proc/buddyinfo)."""
        return [a.free_blocks() for a in self.nodes]

    def _order(self, size: int) -> int:
        order = ALLOC_ORDERS.get(size)
        if order is None:
            raise ConfigError(f"block size must be 4 KiB, 2 MiB or 1 GiB, got {size!r}")
        return order

    def _check_node(self, node: int) -> int:
        if not isinstance(node, int) or not 0 <= node < self.config.num_nodes:
            raise ConfigError(f"node {node!r} does not exist (0..{self.config.num_nodes - 1})")
        return node
