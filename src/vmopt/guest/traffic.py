"""NUMA traffic accounting: which node each access reached, local or remote to the accessing vCPU.

One function, :meth:`Traffic.count`, for one physical address (the
facade's ``translate``) and for arrays of them (its batches, and so
``vmopt simulate``): an access to a frame on the accessing vCPU's node is
local, any other is remote to the frame's node, and each adds its SLIT
distance to that node's cost.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Traffic"]

U64 = npt.NDArray[np.uint64]


class Traffic:
    """Per-node access counters of one guest whose node ``i`` starts at ``node_base[i]``.

    ``local[n]`` counts accesses to node ``n`` from vCPUs on ``n``,
    ``remote[n]`` those from other nodes, ``cost[n]`` their summed
    ``distances[from][n]``.
    """

    def __init__(self, node_base: Sequence[int], distances: Sequence[Sequence[int]]) -> None:
        self._bases = list(node_base)
        self._base_array = np.asarray(node_base, dtype=np.uint64)
        self.distances = distances
        n = len(node_base)
        self.local = [0] * n
        self.remote = [0] * n
        self.cost = [0] * n

    def count(self, pas: int | U64, home: int) -> None:
        """Count accesses to ``pas`` (one physical address or an array) from a vCPU on node ``home``."""
        if isinstance(pas, int):
            counts: Sequence[int] | None = None
            nodes = [bisect.bisect_right(self._bases, pas) - 1]
        else:
            # Accesses at or above each node's base, one comparison pass per node
            # (nodes are few; a searchsorted plus bincount costs several times more).
            at_or_above = [int(pas.shape[0])]
            at_or_above += [int(np.count_nonzero(pas >= base)) for base in self._base_array[1:]]
            at_or_above.append(0)
            counts = [a - b for a, b in itertools.pairwise(at_or_above)]
            nodes = [n for n, c in enumerate(counts) if c]
        row = self.distances[home]
        for node in nodes:
            k = 1 if counts is None else counts[node]
            if node == home:
                self.local[node] += k
            else:
                self.remote[node] += k
            self.cost[node] += k * row[node]

    def snapshot(self) -> tuple[list[int], list[int]]:
        """Copies of ``(local, remote)``, for per-window deltas."""
        return list(self.local), list(self.remote)
