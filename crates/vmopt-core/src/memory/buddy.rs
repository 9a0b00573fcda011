//! Binary buddy allocator of physical page frames (like Linux's page_alloc).
//!
//! INTERFACE ONLY: the implementation is being written (see the brief).

use crate::error::{Error, Result};

/// Largest `max_order` accepted (2^24 frames = 64 GiB blocks).
pub const MAX_ORDER_LIMIT: u8 = 24;

/// Buddy allocator of the frames `[base_pfn, base_pfn + npages)`.
#[derive(Debug)]
pub struct BuddyAllocator {
    lo: u64,
    hi: u64,
    max_order: u8,
    node: Option<u32>,
}

impl BuddyAllocator {
    /// A fully free allocator of `npages` frames from `base_pfn`.
    pub fn new(base_pfn: u64, npages: u64, max_order: u8, node: Option<u32>) -> Result<Self> {
        let _ = (base_pfn, npages, max_order, node);
        Err(Error::Config("buddy allocator not built yet".into()))
    }
    /// First frame managed.
    pub fn base_pfn(&self) -> u64 {
        self.lo
    }
    /// One past the last frame managed.
    pub fn end_pfn(&self) -> u64 {
        self.hi
    }
    /// Largest block order.
    pub fn max_order(&self) -> u8 {
        self.max_order
    }
    /// NUMA node, for messages.
    pub fn node(&self) -> Option<u32> {
        self.node
    }
    /// Frames managed.
    pub fn total_pages(&self) -> u64 {
        self.hi - self.lo
    }
    /// Frames free.
    pub fn free_pages(&self) -> u64 {
        0
    }
    /// Allocate the lowest free block of `order`; its pfn.
    pub fn alloc(&mut self, order: u8) -> Result<u64> {
        Err(Error::Config(format!("order {order}")))
    }
    /// Allocate the block at `pfn`.
    pub fn alloc_at(&mut self, pfn: u64, order: u8) -> Result<()> {
        Err(Error::Config(format!("{pfn} {order}")))
    }
    /// Free the block at `pfn`.
    pub fn free(&mut self, pfn: u64, order: u8) -> Result<()> {
        Err(Error::Config(format!("{pfn} {order}")))
    }
}
