//! Guest physical memory and its frame allocators.
//!
//! [`PhysMem`] holds the bytes: sparse 4 KiB frames that cost host memory
//! only once written, or a file image mapped read-only, writable or
//! copy-on-write. Its words are accessed atomically, so page walkers on many
//! vCPU threads can set accessed/dirty bits with a compare-exchange while
//! another thread edits the tables. [`BuddyAllocator`] hands out naturally
//! aligned blocks of orders 0 to 18 (4 KiB to 1 GiB), one per NUMA node.

pub mod buddy;
mod frames;
pub mod phys;
pub mod source;

pub use buddy::{BuddyAllocator, MAX_ORDER_LIMIT};
pub use phys::{ImageMode, PhysMem, FRAME_SHIFT, FRAME_SIZE};
pub use source::FrameSource;

use crate::error::Result;

/// What a page walker needs of memory: aligned 64-bit loads and a compare-exchange.
pub trait PteMemory: Send + Sync {
    /// The little-endian word at 8-byte aligned `pa`, or `None` outside memory.
    fn load_u64(&self, pa: u64) -> Option<u64>;
    /// Replace the word at `pa` with `new` if it still holds `old`.
    ///
    /// `Ok(true)` if it did, `Ok(false)` if the word had changed (the caller
    /// re-reads and restarts); `Err` if `pa` is outside memory or the memory
    /// is read-only.
    fn cas_u64(&self, pa: u64, old: u64, new: u64) -> Result<bool>;

    /// Run `f` once with a view of this memory for one page walk, whose
    /// loads and compare-exchanges share one lock hold instead of taking one
    /// each; `false` (and `f` not run) if the memory has no such view, and
    /// the walk reads the memory itself.
    ///
    /// The view may refuse a compare-exchange that needs storage the memory
    /// does not have yet (swapping 0 for non-zero in a frame never written):
    /// walks only set A/D bits in present, hence non-zero, PTEs.
    fn pinned(&self, f: &mut dyn FnMut(&dyn PteMemory)) -> bool {
        let _ = f;
        false
    }
}

/// Block order of each size `alloc` hands out (4 KiB, 2 MiB, 1 GiB).
pub fn order_of_size(size: u64) -> Option<u8> {
    match size {
        4096 => Some(0),
        0x20_0000 => Some(9),
        0x4000_0000 => Some(18),
        _ => None,
    }
}
