"""Reference guest physical memory and buddy allocator."""

from reference.memory.buddy import MAX_ORDER_LIMIT, BuddyAllocator
from reference.memory.physical import ALLOC_ORDERS, FRAME_SHIFT, FRAME_SIZE, PhysicalMemory

__all__ = ["ALLOC_ORDERS", "FRAME_SHIFT", "FRAME_SIZE", "MAX_ORDER_LIMIT", "BuddyAllocator", "PhysicalMemory"]
