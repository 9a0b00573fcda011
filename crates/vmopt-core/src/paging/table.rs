//! An address space whose page tables live in guest physical memory.
//!
//! The public signatures below are the contract the TLB/MMU layer codes against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::error::Result;
use crate::memory::PhysMem;
use crate::paging::{Access, Format, Perm, Translation};

/// Something that caches translations of a page table and must drop them when it changes.
pub trait Shootdown: Send + Sync {
    /// Drop every cached trace of `[va, va + size)`, every ASID (TLB, PWC, queued prefetches).
    fn shootdown(&self, va: u64, size: u64);
}

/// A leaf PTE found by [`PageTable::lookup`] (no rights check, no A/D update).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First virtual address of the page.
    pub va: u64,
    /// Physical address of the page.
    pub page_pa: u64,
    /// Page size.
    pub page_size: u64,
    /// Leaf level.
    pub level: u8,
    /// The raw PTE.
    pub pte: u64,
    /// Where the PTE is.
    pub pte_pa: u64,
    /// The leaf's own rights.
    pub perms: Perm,
    /// U/S of the leaf.
    pub user: bool,
    /// G of the leaf.
    pub global: bool,
    /// A of the leaf.
    pub accessed: bool,
    /// D of the leaf.
    pub dirty: bool,
}

/// A run of virtually and physically contiguous pages with equal attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First virtual address.
    pub va: u64,
    /// First physical address.
    pub pa: u64,
    /// Bytes.
    pub size: u64,
    /// Effective rights.
    pub perms: Perm,
    /// Page size of every page in the run.
    pub page_size: u64,
    /// Effective user bit.
    pub user: bool,
    /// Effective global bit.
    pub global: bool,
}

/// One guest address space: a tree of page tables rooted at `root`.
pub struct PageTable {
    mem: Arc<PhysMem>,
    fmt: Arc<dyn Format>,
    root: u64,
    update_ad: bool,
    owns_root: bool,
    /// Serialises edits (map, unmap, protect, remap).
    edit: Mutex<()>,
    /// Walks hold it shared; freeing table pages holds it exclusively.
    frees: RwLock<()>,
    subscribers: Mutex<Vec<Weak<dyn Shootdown>>>,
    generation: AtomicU64,
}

impl PageTable {
    /// The format.
    pub fn format(&self) -> &Arc<dyn Format> {
        &self.fmt
    }
    /// The memory the tables live in.
    pub fn memory(&self) -> &Arc<PhysMem> {
        &self.mem
    }
    /// The root table's physical address (CR3 / satp.PPN << 12).
    pub fn root(&self) -> u64 {
        self.root
    }
    /// Whether walks set A/D bits.
    pub fn update_ad(&self) -> bool {
        self.update_ad
    }
    /// Bumped by every change that shoots down TLBs (a seqlock for readers).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    /// Translate `va` as the MMU would, with this table's A/D setting.
    pub fn walk(&self, va: u64, access: Access, user: bool) -> Result<Translation> {
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        self.fmt
            .walk(&*self.mem, self.root, va, access, user, self.update_ad)
    }
    /// Call `target.shootdown(va, size)` after every change that may leave stale entries.
    pub fn subscribe(&self, target: Weak<dyn Shootdown>) {
        let _ = (&self.edit, self.owns_root);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target);
    }
}
