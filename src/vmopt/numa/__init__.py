"""NUMA topology, per-node frame allocation and Linux-style memory policies."""

from vmopt.numa.config import NumaConfig
from vmopt.numa.memory import NumaMemory
from vmopt.numa.policy import MemPolicy

__all__ = ["MemPolicy", "NumaConfig", "NumaMemory"]
