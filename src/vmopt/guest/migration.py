"""Page migration for one guest: move a range to a node, even out the nodes, balance automatically.

Every move is Linux's: the PTE goes first (the page table shoots down every
vCPU), so an access during the copy faults and waits on the guest's lock
until the new frame is mapped; the old frame is freed last. ``bind``
regions never move by rebalance or by the balancer.
"""

from __future__ import annotations

import logging
import threading

from vmopt.errors import ConfigError, OutOfFramesError
from vmopt.guest.regions import Region, RegionMap
from vmopt.numa.memory import NumaMemory
from vmopt.paging.pagetable import PageTable
from vmopt.units import format_size

__all__ = ["Migrator", "NumaBalancer"]

log = logging.getLogger(__name__)


class Migrator:
    """Moves the resident pages of ``regions`` between the nodes of ``mem``, under ``lock``."""

    def __init__(
        self, mem: NumaMemory, page_table: PageTable, regions: RegionMap, lock: threading.RLock
    ) -> None:
        self.mem = mem
        self.page_table = page_table
        self.regions = regions
        self.lock = lock
        #: Bytes moved so far (by every path).
        self.bytes_migrated = 0

    def migrate(self, va: int, length: int, node: int) -> int:
        """Move the resident pages of ``[va, va+length)`` to ``node``; return bytes moved.

        Raises before moving anything if ``node`` lacks room for all of it.
        """
        nodes = self.mem.config.num_nodes
        if not isinstance(node, int) or not 0 <= node < nodes:
            raise ConfigError(f"node {node!r} does not exist (0..{nodes - 1})")
        with self.lock:
            todo = [
                (r, i, pa)
                for r, i, pa in self.regions.resident_in(va, length)
                if self.mem.node_of(pa) != node
            ]
            need = sum(r.page_size for r, _, _ in todo)
            have = self.mem.nodes[node].free_pages * 4096
            if need > have:
                raise OutOfFramesError(
                    f"node {node}: cannot migrate {format_size(need)}, only {format_size(have)} free",
                    size=need,
                    node=node,
                )
            return sum(self.move(r, i, pa, node) for r, i, pa in todo)

    def move(self, region: Region, index: int, old: int, node: int) -> int:
        """Migrate page ``index`` of ``region`` from frame ``old`` to ``node``; bytes moved."""
        size = region.page_size
        page_va = region.page_va(index)
        with self.lock:
            new = self.mem.alloc(size, node)
            self.page_table.unmap(page_va, size)
            self.mem.write(new, self.mem.read(old, size))
            self.page_table.map_trusted(page_va, new, size, region.perms, region.user)
            region.resident[index] = new
            self.mem.free(old, size)
            self.bytes_migrated += size
        return size

    def rebalance(self) -> int:
        """Even out node usage; return bytes moved.

        Pages move from the most to the least used node (by fraction in use)
        while that narrows the gap; regions under ``bind`` stay put.
        """
        mem = self.mem
        moved = 0
        with self.lock:
            while True:
                usage = [mem.usage(n) for n in range(mem.config.num_nodes)]
                hi = max(range(len(usage)), key=lambda n: (usage[n], -n))
                lo = min(range(len(usage)), key=lambda n: (usage[n], n))
                candidate = self._movable_page(hi)
                if candidate is None:
                    break
                region, index, pa = candidate
                step = region.page_size / 4096
                gap_now = usage[hi] - usage[lo]
                after_hi = usage[hi] - step / mem.nodes[hi].total_pages
                after_lo = usage[lo] + step / mem.nodes[lo].total_pages
                if abs(after_hi - after_lo) >= gap_now or mem.nodes[lo].free_pages < step:
                    break
                moved += self.move(region, index, pa, lo)
        return moved

    def _movable_page(self, node: int) -> tuple[Region, int, int] | None:
        for region in reversed(list(self.regions)):
            if region.policy.mode == "bind":
                continue
            for index, pa in sorted(region.resident.items(), reverse=True):
                if self.mem.node_of(pa) == node:
                    return region, index, pa
        return None


class NumaBalancer:
    """Automatic NUMA balancing: sample one access in ``period`` per vCPU; two consecutive
    remote samples of a page from one node move it there (Linux's two-stage filter,
    ``should_numa_migrate_memory``)."""

    def __init__(self, migrator: Migrator, cpus: int, period: int) -> None:
        if not isinstance(period, int) or period < 1:
            raise ConfigError(f"balance_period must be a positive integer, got {period!r}")
        self.migrator = migrator
        self.period = period
        self._tick = [0] * cpus
        self._last: dict[int, int] = {}
        #: Pages the balancer moved.
        self.migrations = 0

    def sample(self, va: int, pa: int, cpu: int, home: int) -> None:
        """Note that vCPU ``cpu`` (on node ``home``) reached frame ``pa`` through ``va``."""
        tick = self._tick[cpu] = self._tick[cpu] + 1
        if tick % self.period:
            return
        mig = self.migrator
        region = mig.regions.find(va)
        if region is None or region.policy.mode == "bind":
            return
        index = region.index_of(va)
        page_va = region.page_va(index)
        last = self._last.get(page_va)
        self._last[page_va] = home
        if home != mig.mem.node_of(pa) and last == home:
            frame = region.resident.get(index)
            if frame is not None and mig.mem.nodes[home].free_pages * 4096 >= region.page_size:
                mig.move(region, index, frame, home)
                self.migrations += 1

    def forget(self, page_va: int) -> None:
        """Drop the sample history of a page that is gone."""
        self._last.pop(page_va, None)
