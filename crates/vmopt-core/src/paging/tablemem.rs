//! What a [`PageTable`](crate::paging::PageTable) needs of the memory its tables live in.
//!
//! Two memories implement it: [`PhysMem`] (the tables are bytes at physical
//! addresses, the usual case; every method forwards to PhysMem's own, so a
//! single-stage table costs what it did), and
//! [`GuestMemory`](crate::paging::GuestMemory) (the tables are at
//! guest-physical addresses, every access translated by a host table).

use crate::error::Result;
use crate::memory::{PhysMem, PteMemory};

/// Memory page tables are built in: PTE words, bytes, and a frame allocator.
pub trait TableMemory: PteMemory + std::fmt::Debug {
    /// First address.
    fn base(&self) -> u64;
    /// One past the last address (saturating at 2^64).
    fn end(&self) -> u64;
    /// True if `[pa, pa + n)` lies inside this memory.
    fn contains(&self, pa: u64, n: u64) -> bool;
    /// False for a read-only image (walks then default to no A/D updates).
    fn writable(&self) -> bool;
    /// The 64-bit word at 8-byte aligned `pa`.
    fn read_u64(&self, pa: u64) -> Result<u64>;
    /// Store a 64-bit word at 8-byte aligned `pa`.
    fn write_u64(&self, pa: u64, value: u64) -> Result<()>;
    /// Fill `buf` from `[pa, pa + buf.len())`.
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()>;
    /// Write `data` at `pa`.
    fn write(&self, pa: u64, data: &[u8]) -> Result<()>;
    /// True if the 4 KiB frame at `pa` holds only zeros.
    fn frame_is_zero(&self, pa: u64) -> Result<bool>;
    /// A zeroed, naturally aligned block of `size` (a power of two, 4 KiB to 1 GiB).
    fn alloc_granule(&self, size: u64) -> Result<u64>;
    /// Return a block from [`alloc_granule`](Self::alloc_granule) (it is zeroed).
    fn free_granule(&self, pa: u64, size: u64) -> Result<()>;
    /// A zeroed block of `size` from the first of `nodes` with room, `(pa, node)`; `None` if none has.
    fn try_alloc_granule_on(&self, nodes: &[u32], size: u64) -> Result<Option<(u64, u32)>>;
    /// Bytes the allocator can still hand out.
    fn free_bytes(&self) -> u64;
}

impl TableMemory for PhysMem {
    #[inline]
    fn base(&self) -> u64 {
        PhysMem::base(self)
    }
    #[inline]
    fn end(&self) -> u64 {
        PhysMem::end(self)
    }
    #[inline]
    fn contains(&self, pa: u64, n: u64) -> bool {
        PhysMem::contains(self, pa, n)
    }
    #[inline]
    fn writable(&self) -> bool {
        PhysMem::writable(self)
    }
    #[inline]
    fn read_u64(&self, pa: u64) -> Result<u64> {
        PhysMem::read_u64(self, pa)
    }
    #[inline]
    fn write_u64(&self, pa: u64, value: u64) -> Result<()> {
        PhysMem::write_u64(self, pa, value)
    }
    #[inline]
    fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        PhysMem::read(self, pa, buf)
    }
    #[inline]
    fn write(&self, pa: u64, data: &[u8]) -> Result<()> {
        PhysMem::write(self, pa, data)
    }
    #[inline]
    fn frame_is_zero(&self, pa: u64) -> Result<bool> {
        PhysMem::frame_is_zero(self, pa)
    }
    #[inline]
    fn alloc_granule(&self, size: u64) -> Result<u64> {
        PhysMem::alloc_granule(self, size)
    }
    #[inline]
    fn free_granule(&self, pa: u64, size: u64) -> Result<()> {
        PhysMem::free_granule(self, pa, size)
    }
    #[inline]
    fn try_alloc_granule_on(&self, nodes: &[u32], size: u64) -> Result<Option<(u64, u32)>> {
        PhysMem::try_alloc_granule_on(self, nodes, size)
    }
    #[inline]
    fn free_bytes(&self) -> u64 {
        PhysMem::free_bytes(self)
    }
}
