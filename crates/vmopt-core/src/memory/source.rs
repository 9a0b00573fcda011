//! A sparse, read-only physical memory that some other object supplies (a dump file).
//!
//! [`PhysMem::from_source`](crate::memory::PhysMem::from_source) wraps a
//! [`FrameSource`] so page tables walk a dump exactly as they walk a raw
//! image: the dump readers in [`crate::dumps`] hold an extent map over their
//! mmap'd file (and decompress pages on demand) and answer byte reads here.

use crate::error::Result;

/// Read-only guest physical memory made of extents; physical addresses no extent covers are holes.
pub trait FrameSource: Send + Sync {
    /// One past the highest physical address an extent covers (0 for no extent).
    fn end(&self) -> u64;

    /// Fill `buf` from `[pa, pa + buf.len())`, which lies inside one 4 KiB frame.
    ///
    /// `Ok(false)` if any byte of the range is in a hole (the dump does not
    /// hold it); `Err` if the dump holds it but cannot produce it (a
    /// compressed page that does not decompress, say), naming the page.
    fn read_in_frame(&self, pa: u64, buf: &mut [u8]) -> Result<bool>;

    /// The covered ranges `[start, end)`, sorted and disjoint.
    fn ranges(&self) -> Vec<(u64, u64)>;

    /// The covered ranges whose bytes the file holds (not zero fill), sorted and disjoint.
    ///
    /// Their total is bounded by the file's size, unlike [`ranges`](Self::ranges)
    /// (an ELF segment's `p_memsz` past `p_filesz` costs the file nothing).
    fn resident(&self) -> Vec<(u64, u64)> {
        self.ranges()
    }
}
