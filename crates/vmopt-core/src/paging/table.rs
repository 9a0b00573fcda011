//! An address space whose page tables live in guest physical memory.
//!
//! [`PageTable`] edits the tree the way an OS kernel would (map, unmap,
//! protect, remap) and walks it the way the MMU hardware would. The tables
//! are the real bytes in a [`TableMemory`]: a [`PhysMem`], or a
//! [`GuestMemory`] (guest-physical memory behind a host table, every access
//! host-translated); nothing about a mapping is cached here, so a real CPU
//! given the same memory and root translates every address the same way.
//!
//! # Concurrency
//!
//! - `edit` (a mutex) serialises edits. Walks take no edit lock: PTE loads
//!   are atomic, and walks set A/D bits with a compare-exchange on the whole
//!   64-bit PTE that restarts the walk if the PTE changed since it was read,
//!   so a walk racing with unmap or protect never writes an old PTE back.
//!   Edits that keep a PTE (protect) update it with a compare-exchange too,
//!   so a concurrent A/D update is not lost.
//! - `frees` (a read-write lock): every walk holds it shared. An unmap
//!   clears the PTEs, unlinks the tables it left empty, bumps `generation`
//!   and calls [`Shootdown::shootdown`] on every live subscriber (an MMU
//!   takes its own lock inside); only then does it take `frees` exclusively,
//!   to free the table pages, so no walker is still reading them.
//! - Lock order: MMU lock -> `frees` (read) -> the memory's frame map (read)
//!   in a translation; `edit` -> MMU lock in a shootdown; `edit` -> `frees`
//!   (write) when freeing. No cycle. `frees` is never taken twice by one
//!   thread: a batch span holds it (and the frame map) once for all its
//!   walks ([`PageTable::pinned_walks`]), which then read through that hold.
//! - Protect and remap shoot down too; every shootdown bumps `generation`,
//!   which readers use as a seqlock.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use crate::error::{format_size, Error, Result};
use crate::memory::{PhysMem, PteMemory, FRAME_SIZE};
use crate::paging::guestmem::GuestMemory;
use crate::paging::tablemem::TableMemory;
use crate::paging::{Access, Format, Perm, TableRights, Translation};

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
    /// A table entry pointing back at a table on its own path (a self-map):
    /// `pa` is that table, `size` the span of the entry; it is not descended.
    pub recursive: bool,
}

/// One leaf of [`PageTable::leaves`] with the rights the levels above grant it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafEntry {
    /// The leaf itself (its own bits).
    pub leaf: Leaf,
    /// Effective rights: the leaf's ANDed with every level above.
    pub perms: Perm,
    /// Effective user-accessibility.
    pub user: bool,
    /// Effective global bit.
    pub global: bool,
    /// Not a leaf but a table entry pointing at a table on its own path (a
    /// recursive mapping, such as Windows' self-map): `leaf.page_pa` is that
    /// table, `leaf.page_size` the entry's span. It is listed once and not descended.
    pub recursive: bool,
}

/// The memory a [`PageTable`]'s tables live in.
#[derive(Clone, Debug)]
pub enum Backing {
    /// Physical memory: table addresses are physical addresses.
    Phys(Arc<PhysMem>),
    /// Guest-physical memory behind a host table ([`PageTable::guest_memory`]).
    Guest(Arc<GuestMemory>),
}

impl Backing {
    /// The same memory, as what a table needs of it.
    fn table_memory(&self) -> Arc<dyn TableMemory> {
        match self {
            Backing::Phys(m) => Arc::clone(m) as Arc<dyn TableMemory>,
            Backing::Guest(m) => Arc::clone(m) as Arc<dyn TableMemory>,
        }
    }
}

/// One guest address space: a tree of page tables rooted at `root`.
pub struct PageTable {
    mem: Arc<dyn TableMemory>,
    backing: Backing,
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

impl fmt::Debug for PageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageTable({}, root={:#x})", self.fmt.name(), self.root)
    }
}

/// A page table pinned for a run of walks ([`PageTable::pinned_walks`]).
pub struct PinnedWalks<'a> {
    table: &'a PageTable,
    mem: &'a dyn PteMemory,
}

impl PinnedWalks<'_> {
    /// [`PageTable::walk`] under the pinned hold.
    #[inline]
    pub fn walk(&self, va: u64, access: Access, user: bool) -> Result<Translation> {
        let t = self.table;
        t.fmt.walk(self.mem, t.root, va, access, user, t.update_ad)
    }

    /// The table these walks read.
    pub fn table(&self) -> &PageTable {
        self.table
    }
}

/// A path step of [`PageTable::leaves_in`]: the table at `level`.
type PathStep = (u8, u64);

/// A leaf covering part of an edited range: `(pte_pa, level, path from the root)`.
struct Covered {
    pte_pa: u64,
    level: u8,
    path: Vec<PathStep>,
}

/// Python's `repr()` of the letters of `perm` (`'rw'`), for messages.
fn perm_repr(perm: Perm) -> String {
    let mut s = String::from("'");
    for (bit, ch) in [(Perm::R, 'r'), (Perm::W, 'w'), (Perm::X, 'x')] {
        if perm.contains(bit) {
            s.push(ch);
        }
    }
    s.push('\'');
    s
}

/// Bytes allocated for the root table: the format's root (16 KiB for the
/// RISC-V G-stage) or its top level's granule, whichever is larger.
fn root_size(fmt: &dyn Format) -> u64 {
    fmt.root_bytes().max(fmt.table_size(fmt.levels() - 1))
}

/// The alignment `attach` requires of a root holding `bytes` of entries.
///
/// A root wider than a table (the G-stage's four frames) is aligned to its
/// size, as hgatp requires; one holding fewer entries than a table (an
/// AArch64 start level) needs only its own size, and at least 64 bytes, as
/// TTBR's BADDR; otherwise a table's granule.
fn root_align(fmt: &dyn Format, bytes: u64) -> u64 {
    let top = fmt.levels() - 1;
    if fmt.root_bytes() > fmt.table_size(top) {
        fmt.root_bytes()
    } else {
        fmt.table_size(top).min(bytes.max(64))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PageTable {
    /// A new, empty address space: the root table is allocated from `mem`.
    ///
    /// `update_ad` (default: whether `mem` is writable) makes walks set the
    /// accessed and dirty bits as hardware does.
    pub fn new(
        mem: Arc<PhysMem>,
        fmt: Arc<dyn Format>,
        update_ad: Option<bool>,
    ) -> Result<PageTable> {
        Self::new_in(Backing::Phys(mem), fmt, update_ad)
    }

    /// [`new`](Self::new) in either kind of memory (guest-physical memory included).
    pub fn new_in(
        backing: Backing,
        fmt: Arc<dyn Format>,
        update_ad: Option<bool>,
    ) -> Result<PageTable> {
        let mem = backing.table_memory();
        // A 16 KiB G-stage root is one order-2 buddy block, so naturally aligned.
        let root = mem.alloc_granule(root_size(&*fmt))?;
        Ok(Self::build(mem, backing, fmt, root, update_ad, true))
    }

    /// Open page tables that already exist in `mem` at `root`.
    pub fn attach(
        mem: Arc<PhysMem>,
        root: u64,
        fmt: Arc<dyn Format>,
        update_ad: Option<bool>,
    ) -> Result<PageTable> {
        Self::attach_in(Backing::Phys(mem), root, fmt, update_ad)
    }

    /// [`attach`](Self::attach) in either kind of memory.
    pub fn attach_in(
        backing: Backing,
        root: u64,
        fmt: Arc<dyn Format>,
        update_ad: Option<bool>,
    ) -> Result<PageTable> {
        let mem = backing.table_memory();
        let top = fmt.levels() - 1;
        let bytes = fmt.entries(top) * 8;
        let align = root_align(&*fmt, bytes);
        if root & (align - 1) != 0 || !mem.contains(root, bytes) {
            return Err(Error::Address(format!(
                "page-table root must be a {} aligned address inside memory, got {root}",
                format_size(align)
            )));
        }
        Ok(Self::build(mem, backing, fmt, root, update_ad, false))
    }

    fn build(
        mem: Arc<dyn TableMemory>,
        backing: Backing,
        fmt: Arc<dyn Format>,
        root: u64,
        update_ad: Option<bool>,
        owns_root: bool,
    ) -> PageTable {
        let update_ad = update_ad.unwrap_or_else(|| mem.writable());
        PageTable {
            mem,
            backing,
            fmt,
            root,
            update_ad,
            owns_root,
            edit: Mutex::new(()),
            frees: RwLock::new(()),
            subscribers: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The format.
    pub fn format(&self) -> &Arc<dyn Format> {
        &self.fmt
    }
    /// The memory the tables live in.
    pub fn memory(&self) -> &Arc<dyn TableMemory> {
        &self.mem
    }
    /// The memory the tables live in, by kind.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }
    /// The physical memory the tables live in; a `Config` error naming
    /// `what` (the operation that needs it) for tables in guest-physical memory.
    pub fn phys_memory(&self, what: &str) -> Result<&Arc<PhysMem>> {
        match &self.backing {
            Backing::Phys(m) => Ok(m),
            Backing::Guest(_) => Err(Error::Config(format!(
                "{what} needs page tables in physical memory; these {} tables (root {:#x}) \
                 are in guest-physical memory behind a host table",
                self.fmt.name(),
                self.root
            ))),
        }
    }
    /// The root table's physical address (CR3 / satp.PPN << 12).
    pub fn root(&self) -> u64 {
        self.root
    }
    /// Whether walks set A/D bits.
    pub fn update_ad(&self) -> bool {
        self.update_ad
    }
    /// True if this table allocated its root (and so may [`destroy`](Self::destroy) it).
    pub fn owns_root(&self) -> bool {
        self.owns_root
    }
    /// Bumped by every change that shoots down TLBs (a seqlock for readers).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    // -- shootdown ------------------------------------------------------------------

    /// Call `target.shootdown(va, size)` after every change that may leave stale entries.
    pub fn subscribe(&self, target: Weak<dyn Shootdown>) {
        lock(&self.subscribers).push(target);
    }

    /// Stop calling `target` (and forget subscribers that were dropped).
    pub fn unsubscribe(&self, target: &Weak<dyn Shootdown>) {
        lock(&self.subscribers).retain(|w| w.strong_count() > 0 && !Weak::ptr_eq(w, target));
    }

    /// Bump the generation and shoot down every live subscriber (edit lock held).
    fn announce(&self, va: u64, size: u64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let live: Vec<Arc<dyn Shootdown>> = {
            let mut subs = lock(&self.subscribers);
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for target in live {
            target.shootdown(va, size);
        }
    }

    // -- walking --------------------------------------------------------------------

    /// Translate `va` as the MMU would, with this table's A/D setting.
    pub fn walk(&self, va: u64, access: Access, user: bool) -> Result<Translation> {
        self.walk_with(va, access, user, self.update_ad)
    }

    /// Translate `va` as the MMU would, setting A/D bits if `update_ad`.
    pub fn walk_with(
        &self,
        va: u64,
        access: Access,
        user: bool,
        update_ad: bool,
    ) -> Result<Translation> {
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        self.fmt
            .walk(&*self.mem, self.root, va, access, user, update_ad)
    }

    /// Run `f` with this table pinned for a run of walks: `frees` held
    /// shared and the memory's pinned view (see [`PteMemory::pinned`]) taken
    /// once for all of them, instead of once per walk (a batch span).
    ///
    /// While `f` runs, `frees` and the memory's frame map are held shared, so
    /// `f` must not take either again on this thread (a waiting writer would
    /// then deadlock it): no edit, no allocation, no other walk of this table
    /// or of another table over the same memory except through `walks`.
    pub fn pinned_walks<R>(&self, f: impl FnOnce(&PinnedWalks<'_>) -> R) -> R {
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        let mut f = Some(f);
        let mut out = None;
        let viewed = self.mem.pinned(&mut |view| {
            let f = f.take().expect("pinned runs its closure once");
            out = Some(f(&PinnedWalks {
                table: self,
                mem: view,
            }));
        });
        if !viewed {
            let f = f.take().expect("no view: the closure has not run");
            out = Some(f(&PinnedWalks {
                table: self,
                mem: &*self.mem,
            }));
        }
        out.expect("the closure ran")
    }

    /// Translate `va` reading the tables through `mem` instead of this
    /// table's memory (a two-stage walk's host-translated view of it), with
    /// this table's A/D setting.
    pub fn walk_on(
        &self,
        mem: &dyn PteMemory,
        va: u64,
        access: Access,
        user: bool,
    ) -> Result<Translation> {
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        self.fmt
            .walk(mem, self.root, va, access, user, self.update_ad)
    }

    /// The leaf PTE mapping `va`, or `None`; no rights check, no A/D update.
    pub fn lookup(&self, va: u64) -> Option<Leaf> {
        let fmt = &*self.fmt;
        if !fmt.is_canonical(va) {
            return None;
        }
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        let mut table = self.root;
        for level in (0..fmt.levels()).rev() {
            let pte_pa = table + fmt.index(va, level) * 8;
            let pte = self.mem.load_u64(pte_pa)?;
            if !fmt.is_valid(pte) {
                return None;
            }
            if fmt.is_leaf(pte, level) {
                let size = fmt.leaf_size(level)?;
                return Some(make_leaf(fmt, va & !(size - 1), level, pte, pte_pa, size));
            }
            if level == 0 {
                return None;
            }
            table = fmt.table_pa(pte);
        }
        None
    }

    /// The PTEs a walk of `va` reads: `(level, pte_pa, pte)`, root first.
    pub fn walk_path(&self, va: u64) -> Vec<(u8, u64, u64)> {
        let fmt = &*self.fmt;
        let mut path = Vec::new();
        if !fmt.is_canonical(va) {
            return path;
        }
        let _guard = self.frees.read().unwrap_or_else(|e| e.into_inner());
        let mut table = self.root;
        for level in (0..fmt.levels()).rev() {
            let pte_pa = table + fmt.index(va, level) * 8;
            let Some(pte) = self.mem.load_u64(pte_pa) else {
                break;
            };
            path.push((level, pte_pa, pte));
            if !fmt.is_valid(pte) || fmt.is_leaf(pte, level) {
                break;
            }
            table = fmt.table_pa(pte);
        }
        path
    }

    // -- validation -----------------------------------------------------------------

    /// The checks every edit makes on the virtual range `[va, va + size)`: 4 KiB aligned, canonical,
    /// on one side of the canonical hole.
    pub fn check_va(&self, va: u64, size: u64) -> Result<()> {
        let fmt = &*self.fmt;
        if va & (FRAME_SIZE - 1) != 0 {
            return Err(Error::Address(format!(
                "virtual address {va:#x} is not aligned to {}",
                format_size(FRAME_SIZE)
            )));
        }
        let end = va as u128 + size as u128;
        let last = end - 1;
        if !fmt.is_canonical(va) || last >> 64 != 0 || !fmt.is_canonical(last as u64) {
            return Err(Error::Address(format!(
                "virtual range [{va:#x}, {end:#x}) is not canonical for {} ({}-bit addresses)",
                fmt.name(),
                fmt.va_bits()
            )));
        }
        if !fmt.same_half(va, last as u64) {
            return Err(Error::Address(format!(
                "virtual range [{va:#x}, {end:#x}) crosses the canonical hole"
            )));
        }
        Ok(())
    }

    fn check_page_size(&self, size: u64) -> Result<u8> {
        self.fmt.level_of_size(size).ok_or_else(|| {
            let mut sizes: Vec<u64> = self.fmt.leaf_sizes().iter().map(|&(_, s)| s).collect();
            sizes.sort_unstable();
            let sizes: Vec<String> = sizes.into_iter().map(format_size).collect();
            Error::Config(format!(
                "page size {size} is not supported by {} ({})",
                self.fmt.name(),
                sizes.join(", ")
            ))
        })
    }

    fn check_perms(&self, perm: Perm) -> Result<()> {
        if perm.0 & !Perm::RWX.0 != 0 {
            return Err(Error::Config(format!(
                "perms must be a string of r, w and x, got {}",
                perm.0
            )));
        }
        match self.fmt.check_perms(perm) {
            Some(why) => Err(Error::Config(format!("perms {}: {why}", perm_repr(perm)))),
            None => Ok(()),
        }
    }

    /// The checks of `map` on `pa`, for a page of `size` (a page size).
    fn check_pa(&self, pa: u64, size: u64) -> Result<()> {
        if pa & (size - 1) != 0 {
            return Err(Error::Address(format!(
                "physical address {pa} is not aligned to its {} page",
                format_size(size)
            )));
        }
        self.check_pa_range(pa as u128, size)
    }

    /// `[pa, pa + size)` lies in memory and below the format's physical address limit.
    fn check_pa_range(&self, pa: u128, size: u64) -> Result<()> {
        let end = pa + size as u128;
        let inside = pa <= u64::MAX as u128 && self.mem.contains(pa as u64, size);
        if !inside || end > 1u128 << self.fmt.pa_bits() {
            return Err(Error::Address(format!(
                "physical range [{pa:#x}, {end:#x}) is outside memory [{:#x}, {:#x})",
                self.mem.base(),
                self.mem.end()
            )));
        }
        Ok(())
    }

    /// Every check of `map` but the overlap; the leaf's level.
    fn check_map(&self, va: u64, pa: u64, size: u64, perms: Perm) -> Result<u8> {
        let level = self.check_page_size(size)?;
        self.check_perms(perms)?;
        self.check_va(va, size)?;
        if va & (size - 1) != 0 {
            return Err(Error::Address(format!(
                "virtual address {va:#x} is not aligned to its {} page",
                format_size(size)
            )));
        }
        self.check_pa(pa, size)?;
        Ok(level)
    }

    fn lock_edit(&self) -> MutexGuard<'_, ()> {
        lock(&self.edit)
    }

    // -- mapping --------------------------------------------------------------------

    /// Map one page of `size` (a page size of the format) at `va` to `pa`.
    ///
    /// Refused before anything changes if the request is malformed or the
    /// page overlaps an existing mapping.
    pub fn map(
        &self,
        va: u64,
        pa: u64,
        size: u64,
        perms: Perm,
        user: bool,
        global: bool,
    ) -> Result<()> {
        let level = self.check_map(va, pa, size, perms)?;
        let _edit = self.lock_edit();
        self.map_locked(va, pa, level, perms, user, global)
    }

    /// [`map`](Self::map) for callers that validated the request already; overlap is still refused.
    pub fn map_trusted(&self, va: u64, pa: u64, size: u64, perms: Perm, user: bool) -> Result<()> {
        let level = self.check_page_size(size)?;
        let _edit = self.lock_edit();
        self.map_locked(va, pa, level, perms, user, false)
    }

    /// Map `length` bytes with pages of `page_size`; all or nothing.
    ///
    /// Every page is checked (alignment, memory, overlap) before the first
    /// write; only running out of frames for tables midway undoes the pages
    /// mapped so far.
    #[allow(clippy::too_many_arguments)]
    pub fn map_range(
        &self,
        va: u64,
        pa: u64,
        length: u64,
        page_size: u64,
        perms: Perm,
        user: bool,
        global: bool,
    ) -> Result<()> {
        if length == 0 || page_size == 0 || length % page_size != 0 {
            if page_size == 0 {
                self.check_page_size(page_size)?;
            }
            return Err(Error::Address(format!(
                "length {length} is not a positive multiple of {page_size}"
            )));
        }
        let level = self.check_page_size(page_size)?;
        self.check_perms(perms)?;
        self.check_va(va, length)?;
        let _edit = self.lock_edit();
        let pages = length / page_size;
        // Each page's checks in the order `map` makes them, then its overlap.
        for i in 0..pages {
            let off = i * page_size;
            if i == 0 {
                self.check_map(va, pa, page_size, perms)?;
            } else {
                self.check_pa_range(pa as u128 + off as u128, page_size)?;
            }
            self.find_slot(va + off, level)?;
        }
        for i in 0..pages {
            let off = i * page_size;
            if let Err(e) = self.map_locked(va + off, pa + off, level, perms, user, global) {
                if off != 0 {
                    // Undo what was mapped; the range was all free before, so this cannot fail.
                    let _ = self.unmap_locked(va, off);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Where a leaf for `va` at `level` goes: `(table, lvl)`, `lvl > level` if tables are missing.
    fn find_slot(&self, va: u64, level: u8) -> Result<(u64, u8)> {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        let mut table = self.root;
        let mut lvl = fmt.levels() - 1;
        while lvl > level {
            let pte = mem.read_u64(table + fmt.index(va, lvl) * 8)?;
            if !fmt.is_valid(pte) {
                return Ok((table, lvl));
            }
            if fmt.is_leaf(pte, lvl) {
                let span = fmt.level_span(lvl);
                return Err(Error::Mapping(format!(
                    "cannot map {va:#x}: it lies inside the {} page at {:#x}",
                    format_size(span),
                    va & !(span - 1)
                )));
            }
            table = fmt.table_pa(pte);
            lvl -= 1;
        }
        if fmt.is_valid(mem.read_u64(table + fmt.index(va, lvl) * 8)?) {
            return Err(Error::Mapping(format!(
                "cannot map {va:#x}: {} already mapped there",
                format_size(fmt.level_span(level))
            )));
        }
        Ok((table, lvl))
    }

    fn map_locked(
        &self,
        va: u64,
        pa: u64,
        level: u8,
        perms: Perm,
        user: bool,
        global: bool,
    ) -> Result<()> {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        let (table, lvl) = self.find_slot(va, level)?;
        let leaf = fmt.make_leaf(pa, level, perms, user, global);
        if lvl == level {
            return mem.write_u64(table + fmt.index(va, lvl) * 8, leaf);
        }
        // Build the missing tables bottom-up, then link them in with one store,
        // so a concurrent walker never sees a half-built path.
        let mut new_tables = Vec::with_capacity((lvl - level) as usize);
        let free_all = |tables: &[u64]| {
            for (i, &t) in tables.iter().enumerate() {
                let _ = mem.free_granule(t, fmt.table_size(lvl - 1 - i as u8));
            }
        };
        for i in 0..lvl - level {
            match mem.alloc_granule(fmt.table_size(lvl - 1 - i)) {
                Ok(t) => new_tables.push(t),
                Err(e) => {
                    free_all(&new_tables);
                    return Err(e);
                }
            }
        }
        // new_tables[0] is at level lvl-1, the last at `level`.
        let built = (|| {
            let leaf_table = new_tables[new_tables.len() - 1];
            mem.write_u64(leaf_table + fmt.index(va, level) * 8, leaf)?;
            for depth in (1..new_tables.len()).rev() {
                let (parent, child) = (new_tables[depth - 1], new_tables[depth]);
                let parent_level = lvl - depth as u8;
                mem.write_u64(
                    parent + fmt.index(va, parent_level) * 8,
                    fmt.make_table(child, parent_level),
                )?;
            }
            mem.write_u64(
                table + fmt.index(va, lvl) * 8,
                fmt.make_table(new_tables[0], lvl),
            )
        })();
        if built.is_err() {
            free_all(&new_tables);
        }
        built
    }

    /// Leaves exactly covering `[va, va + size)`; a `Mapping` error unless the range is whole pages.
    fn leaves_in(&self, va: u64, size: u64) -> Result<Vec<Covered>> {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        let end = va as u128 + size as u128;
        let mut out = Vec::new();
        let mut cur = va as u128;
        while cur < end {
            let cva = cur as u64;
            let mut table = self.root;
            let mut path = Vec::new();
            let mut level = fmt.levels() - 1;
            let pte_pa = loop {
                path.push((level, table));
                let pte_pa = table + fmt.index(cva, level) * 8;
                let pte = mem.read_u64(pte_pa)?;
                if !fmt.is_valid(pte) || (level == 0 && !fmt.is_leaf(pte, 0)) {
                    return Err(Error::Mapping(format!("{cva:#x} is not mapped")));
                }
                if fmt.is_leaf(pte, level) {
                    break pte_pa;
                }
                table = fmt.table_pa(pte);
                level -= 1;
            };
            let span = fmt.level_span(level) as u128;
            let start = cur & !(span - 1);
            if start < va as u128 || start + span > end {
                return Err(Error::Mapping(format!(
                    "range [{va:#x}, {end:#x}) would split the {} page at {start:#x}",
                    format_size(span as u64)
                )));
            }
            out.push(Covered {
                pte_pa,
                level,
                path,
            });
            cur = start + span;
        }
        Ok(out)
    }

    /// Unmap `[va, va + size)`, which must be covered by whole mapped pages.
    ///
    /// Table pages left empty go back to the allocator, after every
    /// subscriber has been shot down.
    pub fn unmap(&self, va: u64, size: u64) -> Result<()> {
        if size == 0 || size & (FRAME_SIZE - 1) != 0 {
            return Err(Error::Address(format!(
                "unmap size must be a positive multiple of 4096, got {size}"
            )));
        }
        self.check_va(va, size)?;
        let _edit = self.lock_edit();
        self.unmap_locked(va, size)
    }

    fn unmap_locked(&self, va: u64, size: u64) -> Result<()> {
        let covered = self.leaves_in(va, size)?;
        // table -> (level, parent table), in first-seen order.
        let mut seen = HashSet::new();
        let mut touched: Vec<(u64, u8, u64)> = Vec::new();
        for c in &covered {
            self.mem.write_u64(c.pte_pa, 0)?;
            for i in 1..c.path.len() {
                let (level, table) = c.path[i];
                if seen.insert(table) {
                    touched.push((table, level, c.path[i - 1].1));
                }
            }
        }
        let empty = self.unlink_empty_tables(touched)?;
        // Shoot down before the table pages go back: a walker on another vCPU
        // may still be reading them (Linux frees page tables only after the
        // TLB flush, for the same reason).
        self.announce(va, size);
        let _frees = self.frees.write().unwrap_or_else(|e| e.into_inner());
        for (table, level) in empty {
            self.mem.free_granule(table, self.fmt.table_size(level))?;
        }
        Ok(())
    }

    /// Clear the parent entries of tables left empty, lowest level first; return them with their levels.
    fn unlink_empty_tables(&self, mut touched: Vec<(u64, u8, u64)>) -> Result<Vec<(u64, u8)>> {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        touched.sort_by_key(|&(_, level, _)| level); // stable: ties keep first-seen order
        let mut empty = Vec::new();
        for (table, level, parent) in touched {
            if !self.table_is_zero(table, level)? {
                continue;
            }
            // Find and clear the parent's entry that points at this table.
            let parent_level = level + 1;
            for idx in 0..fmt.entries(parent_level) {
                let entry_pa = parent + idx * 8;
                let pte = mem.read_u64(entry_pa)?;
                if fmt.is_valid(pte)
                    && !fmt.is_leaf(pte, parent_level)
                    && fmt.table_pa(pte) == table
                {
                    mem.write_u64(entry_pa, 0)?;
                    break;
                }
            }
            empty.push((table, level));
        }
        Ok(empty)
    }

    /// True if every frame of the table at `table` (one granule) is zero.
    fn table_is_zero(&self, table: u64, level: u8) -> Result<bool> {
        for i in 0..self.fmt.table_size(level) / FRAME_SIZE {
            if !self.mem.frame_is_zero(table + i * FRAME_SIZE)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Change the rights of every page in `[va, va + size)` (whole pages).
    pub fn protect(&self, va: u64, size: u64, perms: Perm) -> Result<()> {
        self.check_perms(perms)?;
        if size == 0 || size & (FRAME_SIZE - 1) != 0 {
            return Err(Error::Address(format!(
                "protect size must be a positive multiple of 4096, got {size}"
            )));
        }
        self.check_va(va, size)?;
        let _edit = self.lock_edit();
        for c in self.leaves_in(va, size)? {
            // A compare-exchange, so an A/D bit a walker sets meanwhile is kept.
            loop {
                let pte = self.mem.read_u64(c.pte_pa)?;
                let new = self.fmt.set_perms(pte, c.level, perms);
                if self.mem.cas_u64(c.pte_pa, pte, new)? {
                    break;
                }
            }
        }
        self.announce(va, size);
        Ok(())
    }

    /// Point the page at `va` (of `size`) at a new frame `pa`, keeping its attributes.
    ///
    /// `perms` replaces the page's rights if given. The new frame and rights
    /// are checked before the old page is unmapped, so a refused remap
    /// changes nothing.
    pub fn remap(&self, va: u64, pa: u64, size: u64, perms: Option<Perm>) -> Result<()> {
        let _edit = self.lock_edit();
        let leaf = match self.lookup(va) {
            Some(leaf) if leaf.va == va && leaf.page_size == size => leaf,
            _ => {
                return Err(Error::Mapping(format!(
                    "no {} page is mapped at {va:#x}",
                    format_size(size)
                )))
            }
        };
        // The rights are checked before the old page goes, kept ones too (a
        // corrupted leaf may hold an encoding the format reserves), so a
        // refused remap changes nothing.
        let new_perms = perms.unwrap_or(leaf.perms);
        self.check_perms(new_perms)?;
        self.check_pa(pa, size)?;
        self.unmap_locked(va, size)?;
        if let Err(e) = self.map_locked(va, pa, leaf.level, new_perms, leaf.user, leaf.global) {
            let _ = self.map_locked(
                va,
                leaf.page_pa,
                leaf.level,
                leaf.perms,
                leaf.user,
                leaf.global,
            );
            return Err(e);
        }
        Ok(())
    }

    /// Announce an edit made behind the table's back (e.g. PTEs written directly).
    pub fn invalidate(&self, va: u64, size: u64) {
        let _edit = self.lock_edit();
        self.announce(va, size);
    }

    /// Allocate a zeroed `size` block on the first of `nodes` with room, fill it with `data`, map it.
    ///
    /// `Ok(None)` when no node has room (the caller words the error, since it
    /// knows the policy); `Ok(Some((pa, node)))` on success. The block is
    /// freed again if the data or the mapping is refused (overlap included).
    pub fn install(
        &self,
        va: u64,
        size: u64,
        nodes: &[u32],
        data: Option<&[u8]>,
        perms: Perm,
        user: bool,
    ) -> Result<Option<(u64, u32)>> {
        let level = self.check_page_size(size)?;
        self.check_va(va, size)?;
        if va & (size - 1) != 0 {
            return Err(Error::Address(format!(
                "virtual address {va:#x} is not aligned to its {} page",
                format_size(size)
            )));
        }
        if let Some(data) = data {
            if data.len() as u64 > size {
                return Err(Error::Config(format!(
                    "{} bytes of data do not fit a {} page",
                    data.len(),
                    format_size(size)
                )));
            }
        }
        let Some((pa, node)) = self.mem.try_alloc_granule_on(nodes, size)? else {
            return Ok(None);
        };
        let done = (|| {
            if let Some(data) = data {
                self.mem.write(pa, data)?;
            }
            let _edit = self.lock_edit();
            self.map_locked(va, pa, level, perms, user, false)
        })();
        match done {
            Ok(()) => Ok(Some((pa, node))),
            Err(e) => {
                let _ = self.mem.free_granule(pa, size);
                Err(e)
            }
        }
    }

    // -- enumeration ----------------------------------------------------------------

    /// Every leaf in VA order, with its effective rights (a streaming iterator).
    ///
    /// Bounded for any memory contents: a table reached again through its own
    /// ancestors is yielded once as a `recursive` entry and not descended, and
    /// [`Leaves::max_tables`] caps the tables read (shared subtrees are walked each time).
    pub fn leaves(&self) -> Leaves {
        Leaves {
            max_tables: u64::MAX,
            tables: 1,
            truncated: false,
            mem: Arc::clone(&self.mem),
            fmt: Arc::clone(&self.fmt),
            stack: vec![Cursor {
                table: self.root,
                level: self.fmt.levels() - 1,
                base: 0,
                perms: Perm::RWX,
                user: true,
                global: false,
                idx: 0,
            }],
        }
    }

    /// The address space as coalesced regions, like QEMU's `info mem` (a streaming iterator).
    ///
    /// Adjacent pages merge when they are contiguous in both VA and PA and
    /// share perms, user, global and page size.
    pub fn mappings(&self) -> Mappings {
        Mappings {
            leaves: self.leaves(),
            cur: None,
        }
    }

    /// Physical addresses of every table page, root first (depth first), each once.
    ///
    /// A frame reached twice (shared, or pointing back at an ancestor) is
    /// listed and read once, so any memory contents take bounded work.
    pub fn table_frames(&self) -> Vec<u64> {
        self.tables_with_levels()
            .into_iter()
            .map(|(pa, _)| pa)
            .collect()
    }

    /// [`table_frames`](Self::table_frames) with each table's level.
    fn tables_with_levels(&self) -> Vec<(u64, u8)> {
        let top = self.fmt.levels() - 1;
        let mut out = vec![(self.root, top)];
        let mut seen = std::collections::HashSet::from([self.root]);
        self.visit_tables(self.root, top, &mut out, &mut seen);
        out
    }

    fn visit_tables(
        &self,
        table: u64,
        level: u8,
        out: &mut Vec<(u64, u8)>,
        seen: &mut std::collections::HashSet<u64>,
    ) {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        if level == 0 {
            return;
        }
        for idx in 0..fmt.entries(level) {
            let Some(pte) = mem.load_u64(table + idx * 8) else {
                return;
            };
            if fmt.is_valid(pte) && !fmt.is_leaf(pte, level) {
                let child = fmt.table_pa(pte);
                if mem.contains(child, fmt.table_size(level - 1)) && seen.insert(child) {
                    out.push((child, level - 1));
                    self.visit_tables(child, level - 1, out, seen);
                }
            }
        }
    }

    // -- guest-virtual access -------------------------------------------------------

    /// `(pa, length)` pieces of `[va, va + n)`, each walked for `access`; faults at the first bad page.
    fn pieces(&self, va: u64, n: u64, access: Access, user: bool) -> Result<Vec<(u64, u64)>> {
        let mut pieces = Vec::new();
        let mut pos = 0u64;
        while pos < n {
            let t = self.walk(va.wrapping_add(pos), access, user)?;
            let chunk = (t.page_size - (t.va & (t.page_size - 1))).min(n - pos);
            pieces.push((t.pa, chunk));
            pos += chunk;
        }
        Ok(pieces)
    }

    /// Read `n` bytes at guest-virtual `va`; faults at the first bad page.
    pub fn read_virt(&self, va: u64, n: u64, user: bool) -> Result<Vec<u8>> {
        let pieces = self.pieces(va, n, Access::Read, user)?;
        let mut out = vec![0u8; n as usize];
        let mut pos = 0usize;
        for (pa, k) in pieces {
            self.mem.read(pa, &mut out[pos..pos + k as usize])?;
            pos += k as usize;
        }
        Ok(out)
    }

    /// Write `data` at guest-virtual `va`; every page is checked before any byte is written.
    pub fn write_virt(&self, va: u64, data: &[u8], user: bool) -> Result<()> {
        let pieces = self.pieces(va, data.len() as u64, Access::Write, user)?;
        let mut pos = 0usize;
        for (pa, k) in pieces {
            self.mem.write(pa, &data[pos..pos + k as usize])?;
            pos += k as usize;
        }
        Ok(())
    }

    /// Unmap nothing, but free every table page (root included) this table allocated.
    pub fn destroy(&self) -> Result<()> {
        let _edit = self.lock_edit();
        if !self.owns_root {
            return Err(Error::Mapping(
                "destroy() frees tables; it refuses tables opened with attach()".into(),
            ));
        }
        let tables = self.tables_with_levels();
        let _frees = self.frees.write().unwrap_or_else(|e| e.into_inner());
        let top = self.fmt.levels() - 1;
        for (t, level) in tables {
            let size = if t == self.root && level == top {
                root_size(&*self.fmt)
            } else {
                self.fmt.table_size(level)
            };
            self.mem.free_granule(t, size)?;
        }
        Ok(())
    }
}

fn make_leaf(fmt: &dyn Format, va: u64, level: u8, pte: u64, pte_pa: u64, size: u64) -> Leaf {
    let info = fmt.decode_leaf(pte, level);
    Leaf {
        va,
        page_pa: info.page_pa,
        page_size: size,
        level,
        pte,
        pte_pa,
        perms: info.perms,
        user: info.user,
        global: info.global,
        accessed: info.accessed,
        dirty: info.dirty,
    }
}

/// A table being visited by [`Leaves`], with the rights its parents grant.
struct Cursor {
    table: u64,
    level: u8,
    /// VA bits above this table's span (not sign-extended).
    base: u64,
    perms: Perm,
    user: bool,
    global: bool,
    /// Next entry to look at.
    idx: u64,
}

/// Iterator over the leaves of a page table in VA order (see [`PageTable::leaves`]).
///
/// It holds the memory and format, not the table, and reads each PTE when
/// it reaches it; it takes no lock, so it may run while the table is edited
/// (it then sees some mix of before and after, as a guest's dump would).
pub struct Leaves {
    mem: Arc<dyn TableMemory>,
    fmt: Arc<dyn Format>,
    stack: Vec<Cursor>,
    max_tables: u64,
    /// Tables entered so far (the root counts).
    tables: u64,
    truncated: bool,
}

impl Leaves {
    /// Stop (and mark the listing [`truncated`](Self::truncated)) before entering more than `n` tables.
    pub fn max_tables(mut self, n: u64) -> Self {
        self.max_tables = n.max(1);
        self
    }

    /// True once the walk stopped at the [`max_tables`](Self::max_tables) cap.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Tables entered so far, the root included.
    pub fn tables(&self) -> u64 {
        self.tables
    }
}

impl Iterator for Leaves {
    type Item = LeafEntry;

    fn next(&mut self) -> Option<LeafEntry> {
        let (fmt, mem) = (&*self.fmt, &*self.mem);
        let va_mask = if fmt.va_bits() >= 64 {
            u64::MAX
        } else {
            (1u64 << fmt.va_bits()) - 1
        };
        while let Some(top) = self.stack.last_mut() {
            if top.idx >= fmt.entries(top.level) {
                self.stack.pop();
                continue;
            }
            let idx = top.idx;
            top.idx += 1;
            let pte_pa = top.table + idx * 8;
            let Some(pte) = mem.load_u64(pte_pa) else {
                self.stack.pop();
                continue;
            };
            if !fmt.is_valid(pte) {
                continue;
            }
            let level = top.level;
            let va = fmt.canonicalize(top.base | (idx * fmt.level_span(level)));
            if fmt.is_leaf(pte, level) {
                let Some(size) = fmt.leaf_size(level) else {
                    continue;
                };
                let leaf = make_leaf(fmt, va, level, pte, pte_pa, size);
                let above = TableRights {
                    perms: top.perms,
                    user: top.user,
                    global: top.global,
                };
                let (perms, user) = fmt.effective(pte, level, above);
                return Some(LeafEntry {
                    perms,
                    user,
                    global: leaf.global || top.global,
                    recursive: false,
                    leaf,
                });
            }
            if level > 0 {
                let rights = fmt.table_rights(pte);
                let table = fmt.table_pa(pte);
                if self.stack.iter().any(|c| c.table == table) {
                    let top = self.stack.last().expect("the loop holds a cursor");
                    let leaf = Leaf {
                        va,
                        page_pa: table,
                        page_size: fmt.level_span(level),
                        level,
                        pte,
                        pte_pa,
                        perms: rights.perms,
                        user: rights.user,
                        global: rights.global,
                        accessed: false,
                        dirty: false,
                    };
                    return Some(LeafEntry {
                        perms: top.perms & rights.perms,
                        user: top.user && rights.user,
                        global: top.global || rights.global,
                        recursive: true,
                        leaf,
                    });
                }
                if self.tables >= self.max_tables {
                    self.truncated = true;
                    self.stack.clear();
                    return None;
                }
                self.tables += 1;
                let top = self.stack.last().expect("the loop holds a cursor");
                let child = Cursor {
                    table,
                    level: level - 1,
                    base: va & va_mask,
                    perms: top.perms & rights.perms,
                    user: top.user && rights.user,
                    global: top.global || rights.global,
                    idx: 0,
                };
                self.stack.push(child);
            }
        }
        None
    }
}

/// Iterator over coalesced regions (see [`PageTable::mappings`]).
pub struct Mappings {
    leaves: Leaves,
    cur: Option<Mapping>,
}

impl Mappings {
    /// Stop (and mark the listing truncated) before entering more than `n` tables.
    pub fn max_tables(mut self, n: u64) -> Self {
        self.leaves = self.leaves.max_tables(n);
        self
    }

    /// True once the walk stopped at the table cap.
    pub fn truncated(&self) -> bool {
        self.leaves.truncated()
    }

    /// Tables entered so far, the root included.
    pub fn tables(&self) -> u64 {
        self.leaves.tables()
    }
}

impl Iterator for Mappings {
    type Item = Mapping;

    fn next(&mut self) -> Option<Mapping> {
        for e in self.leaves.by_ref() {
            let (va, pa, size) = (e.leaf.va, e.leaf.page_pa, e.leaf.page_size);
            if let Some(cur) = self.cur.as_mut().filter(|c| !c.recursive && !e.recursive) {
                if cur.va as u128 + cur.size as u128 == va as u128
                    && cur.pa as u128 + cur.size as u128 == pa as u128
                    && cur.perms == e.perms
                    && cur.user == e.user
                    && cur.global == e.global
                    && cur.page_size == size
                {
                    cur.size += size;
                    continue;
                }
            }
            let next = Mapping {
                va,
                pa,
                size,
                perms: e.perms,
                page_size: size,
                user: e.user,
                global: e.global,
                recursive: e.recursive,
            };
            if let Some(done) = self.cur.replace(next) {
                return Some(done);
            }
        }
        self.cur.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{AArch64, FaultCause, RiscV, PTES_PER_TABLE, X86_64};
    use std::sync::atomic::AtomicBool;

    const MIB: u64 = 1 << 20;
    const RW: Perm = Perm(6);

    fn x86() -> Arc<dyn Format> {
        Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap())
    }

    fn table(size: u64, fmt: Arc<dyn Format>) -> PageTable {
        PageTable::new(Arc::new(PhysMem::new(size, 0, None).unwrap()), fmt, None).unwrap()
    }

    #[test]
    fn a_granule_table_is_empty_only_when_all_its_frames_are() {
        // 16K granule: a last-level table is four frames; entry 600 lives in the second.
        let fmt = Arc::new(AArch64::new(16384, 48, 48, false, false, false, false).unwrap());
        let pt = table(64 * MIB, fmt);
        let (a, b) = (0x4000_0000, 0x4000_0000 + 600 * 16384);
        pt.map(a, 0x10_0000, 16384, RW, true, false).unwrap();
        pt.map(b, 0x14_0000, 16384, RW, true, false).unwrap();
        let tables = pt.table_frames();
        assert_eq!(tables.len(), 4);
        assert!(tables.iter().all(|t| t % 16384 == 0));
        pt.unmap(a, 16384).unwrap();
        assert_eq!(pt.table_frames(), tables);
        assert_eq!(pt.lookup(b).map(|l| l.page_pa), Some(0x14_0000));
        let free = pt.memory().free_bytes();
        pt.unmap(b, 16384).unwrap();
        assert_eq!(pt.table_frames(), [pt.root()]);
        assert_eq!(pt.memory().free_bytes(), free + 3 * 16384);
    }

    #[test]
    fn map_walk_unmap_returns_every_table() {
        let pt = table(64 * MIB, x86());
        let free0 = pt.memory().free_bytes();
        pt.map(0x7F00_0000_0000, 0x1000, 4096, RW, true, false)
            .unwrap();
        assert_eq!(pt.memory().free_bytes(), free0 - 3 * 4096);
        assert_eq!(pt.table_frames().len(), 4);
        let t = pt.walk(0x7F00_0000_0010, Access::Write, true).unwrap();
        assert_eq!((t.pa, t.memory_refs, t.dirty), (0x1010, 4, true));
        let gen = pt.generation();
        pt.unmap(0x7F00_0000_0000, 4096).unwrap();
        assert_eq!(pt.generation(), gen + 1);
        assert_eq!(pt.memory().free_bytes(), free0);
        assert_eq!(pt.table_frames(), vec![pt.root()]);
        assert!(pt.memory().frame_is_zero(pt.root()).unwrap());
    }

    #[test]
    fn refused_requests_change_nothing_and_say_why() {
        let pt = table(64 * MIB, x86());
        pt.map(0x20_0000, 0x40_0000, 2 * MIB, RW, false, false)
            .unwrap();
        let frames = pt.table_frames();
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert_eq!(
            msg(pt.map(0x20_1000, 0x1000, 4096, RW, false, false)),
            "cannot map 0x201000: it lies inside the 2 MiB page at 0x200000"
        );
        assert_eq!(
            msg(pt.map(0x20_0000, 0x60_0000, 2 * MIB, RW, false, false)),
            "cannot map 0x200000: 2 MiB already mapped there"
        );
        assert_eq!(
            msg(pt.map(0x1000, 128 * MIB, 4096, RW, false, false)),
            "physical range [0x8000000, 0x8001000) is outside memory [0x0, 0x4000000)"
        );
        assert_eq!(
            msg(pt.map(0x1000, 0x1800, 4096, RW, false, false)),
            "physical address 6144 is not aligned to its 4 KiB page"
        );
        assert_eq!(
            msg(pt.map(0x1000, 0x1000, 8192, RW, false, false)),
            "page size 8192 is not supported by x86_64 (4 KiB, 2 MiB, 1 GiB)"
        );
        assert_eq!(
            msg(pt.map(1 << 60, 0x1000, 4096, RW, false, false)),
            "virtual range [0x1000000000000000, 0x1000000000001000) is not canonical for x86_64 (48-bit addresses)"
        );
        assert_eq!(
            msg(pt.map(0x1000, 0x1000, 4096, Perm::W, false, false)),
            "perms 'w': x86-64 pages are always readable; perms must include 'r'"
        );
        assert_eq!(
            msg(pt.unmap(0x20_0000, 4096)),
            "range [0x200000, 0x201000) would split the 2 MiB page at 0x200000"
        );
        assert_eq!(msg(pt.unmap(0x1000, 4096)), "0x1000 is not mapped");
        assert_eq!(
            msg(pt.protect(0x20_0000, 4 * MIB, Perm::R)),
            "0x400000 is not mapped"
        );
        assert_eq!(
            msg(pt.remap(0x20_0000, 0x1000, 4096, None)),
            "no 4 KiB page is mapped at 0x200000"
        );
        assert_eq!(
            msg(pt.remap(0x20_0000, 0x1000, 2 * MIB, None)),
            "physical address 4096 is not aligned to its 2 MiB page"
        );
        // map_range checks every page before the first write.
        assert_eq!(
            msg(pt.map_range(0x1000, 0x3FF_E000, 4 * 4096, 4096, RW, false, false)),
            "physical range [0x4000000, 0x4001000) is outside memory [0x0, 0x4000000)"
        );
        assert_eq!(
            msg(pt.map_range(0x1F_E000, 0x1000, 4 * 4096, 4096, RW, false, false)),
            "cannot map 0x200000: it lies inside the 2 MiB page at 0x200000"
        );
        assert_eq!(pt.table_frames(), frames, "nothing was built");
        assert_eq!(pt.lookup(0x1000), None);
    }

    /// PhysMem, but the next compare-exchange first runs `hook` (an editor on another thread).
    struct Interleave {
        mem: Arc<PhysMem>,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl PteMemory for Interleave {
        fn load_u64(&self, pa: u64) -> Option<u64> {
            self.mem.load_u64(pa)
        }
        fn cas_u64(&self, pa: u64, old: u64, new: u64) -> Result<bool> {
            if let Some(hook) = lock(&self.hook).take() {
                hook();
            }
            self.mem.cas_u64(pa, old, new)
        }
    }

    fn race(
        edit: impl FnOnce(&PageTable) + Send + 'static,
        access: Access,
    ) -> (Arc<PageTable>, Result<Translation>) {
        let pt = Arc::new(table(64 * MIB, x86()));
        pt.map(0x40_0000, 0x8000, 4096, RW, true, false).unwrap();
        // Walk once so only the leaf's A/D is left to set, then clear them again.
        pt.walk(0x40_0000, Access::Read, true).unwrap();
        let leaf = pt.lookup(0x40_0000).unwrap();
        pt.memory()
            .write_u64(leaf.pte_pa, leaf.pte & !0x60)
            .unwrap();
        let editor = Arc::clone(&pt);
        let mem = Interleave {
            mem: Arc::clone(pt.phys_memory("the test").unwrap()),
            hook: Mutex::new(Some(Box::new(move || {
                std::thread::spawn(move || edit(&editor)).join().unwrap();
            }))),
        };
        let r = pt
            .format()
            .walk(&mem, pt.root(), 0x40_0010, access, true, true);
        (pt, r)
    }

    #[test]
    fn a_walk_racing_an_unmap_does_not_resurrect_the_page() {
        let (pt, r) = race(|pt| pt.unmap(0x40_0000, 4096).unwrap(), Access::Write);
        match r {
            Err(Error::Fault(f)) => assert_eq!(f.cause, FaultCause::NotPresent),
            other => panic!("{other:?}"),
        }
        assert_eq!(pt.lookup(0x40_0000), None);
        assert_eq!(pt.table_frames(), vec![pt.root()]);
    }

    #[test]
    fn a_walk_racing_a_protect_does_not_undo_it() {
        let (pt, r) = race(
            |pt| pt.protect(0x40_0000, 4096, Perm::R).unwrap(),
            Access::Write,
        );
        match r {
            Err(Error::Fault(f)) => assert_eq!(f.cause, FaultCause::Protection),
            other => panic!("{other:?}"),
        }
        assert_eq!(pt.lookup(0x40_0000).unwrap().perms, Perm::R);
        // A read racing a protect keeps the new rights and still sets A.
        let (pt, r) = race(
            |pt| pt.protect(0x40_0000, 4096, Perm::R).unwrap(),
            Access::Read,
        );
        assert_eq!(r.unwrap().perms, Perm::R);
        let leaf = pt.lookup(0x40_0000).unwrap();
        assert_eq!(
            (leaf.perms, leaf.accessed, leaf.dirty),
            (Perm::R, true, false)
        );
    }

    #[test]
    fn walkers_setting_ad_never_undo_a_concurrent_editor() {
        // Many rounds of an editor thread mapping, protecting and unmapping
        // pages while walker threads write to them (setting A and D with a
        // compare-exchange); at the end the table is exactly the editor's model.
        const PAGES: u64 = 32;
        let pt = Arc::new(table(64 * MIB, x86()));
        let done = Arc::new(AtomicBool::new(false));
        let walkers: Vec<_> = (0..2)
            .map(|w| {
                let (pt, done) = (Arc::clone(&pt), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let page = (n * 7 + w) % PAGES;
                        let access = if n % 3 == 0 {
                            Access::Read
                        } else {
                            Access::Write
                        };
                        let _ = pt.walk(0x40_0000 + page * 4096, access, false);
                        n += 1;
                    }
                })
            })
            .collect();
        // The model: page -> (pa, writable).
        let mut model: Vec<Option<(u64, bool)>> = vec![None; PAGES as usize];
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..20_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let page = rng % PAGES;
            let va = 0x40_0000 + page * 4096;
            match model[page as usize] {
                None => {
                    let pa = 0x100_0000 + (round % 1024) * 4096;
                    pt.map(va, pa, 4096, RW, false, false).unwrap();
                    model[page as usize] = Some((pa, true));
                }
                Some((pa, writable)) if rng & 0x100 == 0 => {
                    let perms = if writable { Perm::R } else { RW };
                    pt.protect(va, 4096, perms).unwrap();
                    model[page as usize] = Some((pa, !writable));
                }
                Some(_) => {
                    pt.unmap(va, 4096).unwrap();
                    model[page as usize] = None;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        for w in walkers {
            w.join().unwrap();
        }
        for (page, want) in model.iter().enumerate() {
            let got = pt.lookup(0x40_0000 + page as u64 * 4096);
            let got = got.map(|l| (l.page_pa, l.perms.contains(Perm::W)));
            assert_eq!(got, *want, "page {page}");
        }
        let mapped = model.iter().filter(|m| m.is_some()).count();
        assert_eq!(pt.leaves().count(), mapped);
    }

    #[test]
    fn shootdown_reaches_live_subscribers_before_tables_are_freed() {
        struct Probe {
            pt: Weak<PageTable>,
            seen: Mutex<Vec<(u64, u64, usize)>>,
        }
        impl Shootdown for Probe {
            fn shootdown(&self, va: u64, size: u64) {
                // The emptied tables are unlinked but not yet freed.
                let pt = self.pt.upgrade().unwrap();
                let free = pt.memory().free_bytes() as usize;
                lock(&self.seen).push((va, size, free));
            }
        }
        let pt = Arc::new(table(64 * MIB, x86()));
        let probe = Arc::new(Probe {
            pt: Arc::downgrade(&pt),
            seen: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn Shootdown> = Arc::downgrade(&probe) as Weak<dyn Shootdown>;
        pt.subscribe(weak.clone());
        pt.map(0x1000, 0x8000, 4096, RW, false, false).unwrap();
        let before = pt.memory().free_bytes() as usize;
        pt.unmap(0x1000, 4096).unwrap();
        pt.invalidate(0x5000, 8192);
        assert_eq!(
            *lock(&probe.seen),
            vec![(0x1000, 4096, before), (0x5000, 8192, before + 3 * 4096)]
        );
        pt.unsubscribe(&weak);
        pt.invalidate(0, 4096);
        assert_eq!(lock(&probe.seen).len(), 2);
        assert_eq!(pt.generation(), 3);
    }

    #[test]
    fn install_fills_maps_and_frees_on_refusal() {
        let pt = table(
            64 * MIB,
            Arc::new(RiscV::new(3, false, false, false).unwrap()),
        );
        let (pa, node) = pt
            .install(0x1000, 4096, &[0], Some(b"hello"), RW, true)
            .unwrap()
            .unwrap();
        assert_eq!(node, 0);
        assert_eq!(pt.read_virt(0x1000, 5, true).unwrap(), b"hello");
        assert_eq!(pt.lookup(0x1000).unwrap().page_pa, pa);
        let free = pt.memory().free_bytes();
        let err = pt.install(0x1000, 4096, &[0], None, RW, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot map 0x1000: 4 KiB already mapped there"
        );
        assert_eq!(
            pt.memory().free_bytes(),
            free,
            "the refused block went back"
        );
        // No room on the node: Ok(None), the caller words the error.
        let small = table(2 * MIB, x86());
        assert_eq!(
            small
                .install(0x20_0000, 2 * MIB, &[0], None, RW, false)
                .unwrap(),
            None
        );
    }

    #[test]
    fn mappings_coalesce_and_leaves_stream_in_va_order() {
        let pt = table(64 * MIB, x86());
        for i in 0..4 {
            pt.map(
                0x80_0000 + i * 4096,
                0x10_0000 + i * 4096,
                4096,
                RW,
                true,
                false,
            )
            .unwrap();
        }
        pt.map(0x80_4000, 0x10_4000, 4096, Perm::R, true, false)
            .unwrap();
        pt.map(0xFFFF_8000_0000_0000, 0, 2 * MIB, RW, false, true)
            .unwrap();
        let maps: Vec<Mapping> = pt.mappings().collect();
        assert_eq!(maps.len(), 3);
        assert_eq!(
            (maps[0].va, maps[0].size, maps[0].perms),
            (0x80_0000, 4 * 4096, RW)
        );
        assert_eq!(
            (maps[1].va, maps[1].size, maps[1].perms),
            (0x80_4000, 4096, Perm::R)
        );
        assert_eq!(
            (maps[2].va, maps[2].global, maps[2].user),
            (0xFFFF_8000_0000_0000, true, false)
        );
        let vas: Vec<u64> = pt.leaves().map(|e| e.leaf.va).collect();
        assert!(vas.windows(2).all(|w| w[0] < w[1]));
        pt.remap(0x80_0000, 0x20_0000, 4096, Some(Perm::R)).unwrap();
        assert_eq!(pt.lookup(0x80_0000).unwrap().page_pa, 0x20_0000);
        assert_eq!(pt.mappings().count(), 4);
        pt.destroy().unwrap();
    }

    /// 16 KiB of memory whose root's every entry points back at the root.
    fn self_mapped(fmt: Arc<dyn Format>) -> (Arc<PhysMem>, Arc<dyn Format>) {
        let mem = Arc::new(PhysMem::new(16 * 1024, 0, None).unwrap());
        let top = fmt.levels() - 1;
        for idx in 0..PTES_PER_TABLE {
            mem.write_u64(idx * 8, fmt.make_table(0, top)).unwrap();
        }
        (mem, fmt)
    }

    #[test]
    fn a_table_pointing_at_its_ancestors_is_listed_once_per_entry_and_not_descended() {
        for fmt in [
            x86(),
            Arc::new(RiscV::new(3, false, false, false).unwrap()) as Arc<dyn Format>,
        ] {
            let (mem, fmt) = self_mapped(fmt);
            let pt = PageTable::attach(mem, 0, Arc::clone(&fmt), Some(false)).unwrap();
            // Capped, so a regression fails instead of walking 512^levels leaves.
            let leaves: Vec<LeafEntry> = pt.leaves().max_tables(100_000).take(10_000).collect();
            assert_eq!(leaves.len(), PTES_PER_TABLE as usize, "{}", fmt.name());
            assert!(leaves.iter().all(|e| e.recursive && e.leaf.page_pa == 0));
            let maps: Vec<Mapping> = pt.mappings().max_tables(100_000).take(10_000).collect();
            assert_eq!(maps.len(), PTES_PER_TABLE as usize);
            let span = 1u64 << (12 + 9 * (fmt.levels() as u32 - 1));
            assert!(maps.iter().all(|m| m.recursive && m.size == span));
            assert_eq!(pt.table_frames(), vec![0]);
        }
    }

    #[test]
    fn the_table_cap_stops_a_walk_of_shared_subtrees() {
        // Frame 0 (root): every entry frame 1; frame 1: 8 entries frame 2 (empty). A DAG, no cycle.
        let fmt = x86();
        let mem = Arc::new(PhysMem::new(16 * 1024, 0, None).unwrap());
        for (frame, level, n) in [(0u64, 3u8, PTES_PER_TABLE), (1, 2, 8)] {
            for idx in 0..n {
                let pte = fmt.make_table((frame + 1) * 4096, level);
                mem.write_u64(frame * 4096 + idx * 8, pte).unwrap();
            }
        }
        let pt = PageTable::attach(mem, 0, fmt, Some(false)).unwrap();
        let mut it = pt.mappings().max_tables(100);
        assert_eq!(it.by_ref().count(), 0);
        assert!(it.truncated());
        assert_eq!(it.tables(), 100);
        let mut whole = pt.leaves().max_tables(u64::MAX);
        assert_eq!(whole.by_ref().count(), 0);
        assert!(!whole.truncated());
        assert_eq!(whole.tables(), 1 + 512 + 512 * 8);
    }
}
