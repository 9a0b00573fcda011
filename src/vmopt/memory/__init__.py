"""Guest physical memory and its frame allocator."""

from vmopt.memory.buddy import BuddyAllocator
from vmopt.memory.physical import FRAME_SIZE, PhysicalMemory

__all__ = ["FRAME_SIZE", "BuddyAllocator", "PhysicalMemory"]
