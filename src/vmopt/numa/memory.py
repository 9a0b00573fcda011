"""Guest physical memory laid out node by node, a buddy allocator per node.

Node 0 holds ``[0, size0)``, node 1 the next ``size1`` bytes, and so on:
the layout of an ACPI SRAT with one memory range per node. The frames and
allocators live in the Rust core (``PhysMem.new_numa``); the policy
decisions stay here: ``alloc`` walks a policy's node order and the core
takes the block from the first node that has one.
"""

from __future__ import annotations

import logging
import math
import threading

from vmopt import _core
from vmopt.errors import AddressError, ConfigError, OutOfFramesError, bad_input
from vmopt.memory.buddy import BuddyAllocator
from vmopt.memory.physical import FRAME_SHIFT, FRAME_SIZE, PhysicalMemory, block_size
from vmopt.numa.config import NumaConfig
from vmopt.numa.policy import MemPolicy
from vmopt.units import format_size

__all__ = ["NumaMemory"]

log = logging.getLogger(__name__)


class NumaMemory(PhysicalMemory):
    """:class:`PhysicalMemory` with one buddy allocator per NUMA node.

    Page-table pages (and :meth:`alloc` without a node) come from node 0,
    else the nearest node with room.
    """

    def __init__(self, config: NumaConfig) -> None:
        if not isinstance(config, NumaConfig):
            raise bad_input("NumaMemory", config=config)
        try:
            core = _core.PhysMem.new_numa(list(config.node_sizes))
        except OverflowError:  # a node past 2**64
            raise ConfigError(
                f"frames [0x0, {config.total_memory >> FRAME_SHIFT:#x}) exceed the 64-bit physical space"
            ) from None
        self._attach(core)
        self.config = config
        n = config.num_nodes
        #: Per origin node, every node by distance from it (ties by number).
        self._nearest = [_by_distance(config, origin) for origin in range(n)]
        core.set_table_order(self._nearest[0])
        self.node_base: list[int] = core.node_bases()
        self.nodes: list[BuddyAllocator] = [BuddyAllocator.from_core(core.allocator(i)) for i in range(n)]
        self._allocator = self.nodes[0]
        self._rotation = 0
        #: Rotations repeat with this period (every tie group has at most n nodes).
        self._period = math.lcm(*range(1, n + 1))
        self._orders: dict[tuple[int, int], list[int]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        sizes = ", ".join(format_size(s) for s in self.config.node_sizes)
        return f"NumaMemory({self.config.num_nodes} nodes: {sizes})"

    def node_of(self, pa: int) -> int:
        """The node that holds physical address ``pa``."""
        if isinstance(pa, int) and pa >= 0:
            try:
                node = self.core.node_of(pa)
            except OverflowError:
                node = None
            if node is not None:
                return node
        raise AddressError(f"physical address {pa!r} is outside memory [0, {self.size:#x})")

    @property
    def allocator(self) -> BuddyAllocator:
        """Node 0's allocator (what non-NUMA callers such as page-table code get by default)."""
        return self.nodes[0]

    def used_bytes(self, node: int) -> int:
        """Bytes allocated on ``node``."""
        return self.nodes[self._check_node(node)].used_pages << FRAME_SHIFT

    def usage(self, node: int) -> float:
        """Fraction of ``node`` in use, in [0, 1]."""
        a = self.nodes[self._check_node(node)]
        return a.used_pages / a.total_pages

    def alloc(self, size: int = FRAME_SIZE, node: int | None = None) -> int:
        """A zeroed block on ``node``, or on the nearest node with room (node 0 when None)."""
        size = block_size(size, "block")
        origin = 0 if node is None else self._check_node(node)
        return self._alloc_from(self._nearest[origin], size)[0]

    def alloc_policy(self, size: int, policy: MemPolicy, index: int, local: int) -> int:
        """A zeroed block for page ``index`` of a region under ``policy``, first touched from ``local``."""
        size = block_size(size, "block")
        if not isinstance(policy, MemPolicy):
            raise bad_input("alloc_policy", policy=policy)
        if not (isinstance(index, int) and isinstance(local, int)):
            raise bad_input("alloc_policy", index=index, local=local)
        self._check_node(local)
        nodes = self.placement(policy, index, local)
        got = self.core.try_alloc_on(nodes, size)
        if got is None:
            raise self.out_of_frames(nodes, size, policy)
        self.placed(nodes, got[1], size)
        return got[0]

    def placement(self, policy: MemPolicy, index: int, local: int) -> list[int]:
        """The nodes to try, in order, for page ``index`` of a region under ``policy`` first
        touched from node ``local``: what :meth:`alloc_policy` tries (and a one-call install
        such as ``Mmu.install_page`` is given)."""
        if not isinstance(policy, MemPolicy) or not (isinstance(index, int) and isinstance(local, int)):
            raise bad_input("NumaMemory.placement", policy=policy, index=index, local=local)
        self._check_node(local)
        rotation = self._rotation % self._period  # an int read needs no lock
        if policy.mode in ("bind", "preferred_many"):
            return policy.order(index, local, self.config.distances, self.usage, rotation)  # type: ignore[arg-type]
        # Every other mode falls back by distance from its target: cache that order.
        first = policy.target(index, local, self.usage, self.config.num_nodes)
        key = (first, rotation)
        order = self._orders.get(key)
        if order is None:
            distances = self.config.distances
            assert distances is not None  # NumaConfig fills the default matrix
            order = self._orders[key] = MemPolicy.preferred(first).order(
                index, first, distances, self.usage, rotation
            )
        return order

    @property
    def fallbacks(self) -> int:
        """Blocks so far that landed past the first of their nodes: each moves the rotation
        that breaks distance ties, so a placement computed before a fallback may be stale."""
        return self._rotation

    def placed(self, nodes: list[int], node: int, size: int) -> None:
        """Note that a block for :meth:`placement`'s ``nodes`` landed on ``node``.

        A fallback (not the first node) moves the round-robin rotation that
        breaks distance ties for the next one; a block on the first node
        changes nothing, so a batch may report its fallbacks only.
        """
        if not (type(nodes) is list and nodes and isinstance(node, int) and isinstance(size, int)):
            raise bad_input("NumaMemory.placed", nodes=nodes, node=node, size=size)
        if node != nodes[0]:
            log.debug("fell back from node %d to node %d for a %s block", nodes[0], node, format_size(size))
            with self._lock:
                self._rotation += 1

    def out_of_frames(self, nodes: list[int], size: int, policy: MemPolicy | None = None) -> OutOfFramesError:
        """The error for no free ``size`` block on any of ``nodes`` (``policy`` named when given)."""
        if not (_is_node_list(nodes) and isinstance(size, int)):
            raise bad_input("NumaMemory.out_of_frames", nodes=nodes, size=size)
        if not (policy is None or isinstance(policy, MemPolicy)):
            raise bad_input("NumaMemory.out_of_frames", policy=policy)
        where = f"nodes {nodes}" if len(nodes) > 1 else f"node {nodes[0]}"
        rule = f" (policy {policy})" if policy is not None else ""
        free = ", ".join(
            f"node {n}: {format_size(self.nodes[n].free_pages << FRAME_SHIFT)} free" for n in nodes
        )
        return OutOfFramesError(
            f"out of memory on {where}{rule}: no free {format_size(size)} block ({free})",
            size=size,
            node=nodes[0],
        )

    def _alloc_from(self, nodes: list[int], size: int) -> tuple[int, int]:
        """``(pa, node)`` of a zeroed block from the first of ``nodes`` with room."""
        got = self.core.try_alloc_on(nodes, size)
        if got is None:
            raise self.out_of_frames(nodes, size)
        if got[1] != nodes[0]:
            log.debug("fell back from node %d to node %d for a %s block", nodes[0], got[1], format_size(size))
        return got

    def free(self, pa: int, size: int = FRAME_SIZE) -> None:
        """Return a block to its node's allocator."""
        super().free(pa, block_size(size, "block"))

    def free_blocks(self) -> list[list[int]]:
        """Per node, the count of free blocks of each order 0..18 (fragmentation, like /proc/buddyinfo)."""
        return [a.free_blocks() for a in self.nodes]

    def _check_node(self, node: int) -> int:
        if not isinstance(node, int) or not 0 <= node < self.config.num_nodes:
            raise ConfigError(f"node {node!r} does not exist (0..{self.config.num_nodes - 1})")
        return node


def _by_distance(config: NumaConfig, origin: int) -> list[int]:
    """Every node, nearest to ``origin`` first; equal distances by node number."""
    return sorted(range(config.num_nodes), key=lambda node: (config.distance(origin, node), node))


def _is_node_list(nodes: object) -> bool:
    """Whether ``nodes`` is a non-empty list of node numbers (ints)."""
    return isinstance(nodes, list) and bool(nodes) and all(isinstance(n, int) for n in nodes)
