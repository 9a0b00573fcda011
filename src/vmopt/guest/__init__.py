"""The guest facade: :class:`MemoryOptimizer` and its parts.

- :mod:`~vmopt.guest.regions`: regions (reserved guest-virtual ranges) and per-node statistics;
- :mod:`~vmopt.guest.guest`: the guest itself: construction, translate/read/write, batches,
  the fault handler and demand paging;
- :mod:`~vmopt.guest.traffic`: NUMA traffic accounting (local/remote per node);
- :mod:`~vmopt.guest.migration`: migrate, rebalance and the automatic NUMA balancer.
"""

from vmopt.guest.guest import ANONYMOUS_PAGE_SIZES, MemoryOptimizer
from vmopt.guest.regions import NodeStats, Region
from vmopt.guest.traffic import Traffic

__all__ = ["ANONYMOUS_PAGE_SIZES", "MemoryOptimizer", "NodeStats", "Region", "Traffic"]
