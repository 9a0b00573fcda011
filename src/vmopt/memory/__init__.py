"""Guest physical memory and its frame allocator (wrappers over the Rust core)."""

from vmopt.memory.buddy import MAX_ORDER_LIMIT, BuddyAllocator
from vmopt.memory.physical import ALLOC_ORDERS, FRAME_SHIFT, FRAME_SIZE, PhysicalMemory

__all__ = ["ALLOC_ORDERS", "FRAME_SHIFT", "FRAME_SIZE", "MAX_ORDER_LIMIT", "BuddyAllocator", "PhysicalMemory"]
