//! The MMU of one virtual CPU: TLB hierarchy, then page walk, then fill.
//!
//! Lookups go L1 first. An L(n) hit fills the levels above it; a miss
//! everywhere walks the page table and fills every level (non-inclusive,
//! as on most x86 cores: evictions are not propagated).
//!
//! The L1 may be split by [`Side`], as on real cores: instruction fetches
//! look up an ITLB ([`MmuConfig::itlb`]) and reads and writes the DTLB
//! (`levels[0]`); both miss into the shared L2 (the STLB) and below. A fill
//! goes to the L1 of the access's side only, so the two L1s hold what each
//! side touched, and neither is inclusive of the other or of the STLB. A prefetched
//! translation is installed in the last level only, marked prefetched until
//! its first demand hit. Rights are checked on hits too, from a mask the
//! paging format computes at fill time; a hit that faults drops the entry,
//! and a write hit on a clean entry re-walks to set D.
//!
//! Every MMU with `shootdown` subscribes (weakly) to each table it has used,
//! so unmap/protect/remap remove stale entries (TLB, page-walk cache,
//! queued prefetches), every ASID, before they return: the shootdown an OS
//! does with IPIs. Without it, invalidation is left to the caller, as on
//! real hardware.
//!
//! Batches ([`Mmu::translate_batch`]) first ask L1's lookup memo (see
//! `tlb::level`): a remembered lookup whose entry is still the same fill,
//! allows the access, needs no D-bit re-walk and is no unused prefetch is a
//! hit whose only effects are the touch of its replacement state and the
//! lookup, hit, cycles and translation counts (summed in a local and added
//! once per lock hold). That is exactly what `State::translate` does for
//! such a hit, so results, counters and replacement state stay those of the
//! scalar path; anything else takes the scalar path. As no such hit changes
//! what a lookup finds, the level answers a run of addresses in one page
//! with one probe and one touch of the run's length, and a one-array LRU L1
//! keeps the last few pages it hit at hand with their stamps deferred
//! (`TlbLevel::memo_run` says why each is exact).
//!
//! Locking: all state sits behind one mutex, and a miss walks with it held,
//! so the lock order is MMU -> `PageTable` frees (read). A shootdown arrives
//! with the table's edit lock held and takes the MMU lock (edit -> MMU);
//! subscribing happens outside the MMU lock. Demand faults are resolved by
//! the caller with no MMU lock held: [`Mmu::translate`] reports a
//! restartable not-present fault, the caller maps the page, then
//! [`Mmu::translate_restart`] re-walks (the same miss, not a new one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::{Error, Result};
use crate::mmu_nested::{
    CachedHost, CachedState, HostShootdown, Nested, NestedConfig, NestedStats,
};
use crate::paging::twostage::walk_nested;
use crate::paging::{
    Access, Fault, FaultCause, PageTable, Perm, PinnedWalks, Shootdown, Stage, Translation,
    TwoStage,
};
use crate::tlb::level::{MemoNeeds, MEMO_SLOTS};
use crate::tlb::{
    MmuStats, PageWalkCache, PrefetchConfig, PrefetchMode, Prefetcher, PwcConfig, TlbConfig,
    TlbEntry, TlbLevel, TlbStats, GLOBAL_ASID,
};

/// Addresses translated per lock hold in a batch (shootdowns wait at most this long).
const BATCH_LOCK_SPAN: usize = 1024;

/// The hold a translation's walks go through: a batch span's pinned table
/// (one hold of its locks per span), or `None` (each walk takes its own).
type Pin<'a> = Option<&'a PinnedWalks<'a>>;

/// The side of a split L1 an access looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Instruction fetches: the ITLB.
    Inst,
    /// Reads and writes (and prefetches): the DTLB.
    Data,
}

impl Side {
    /// Fetches are [`Side::Inst`], everything else [`Side::Data`].
    #[inline(always)]
    pub fn of(access: Access) -> Side {
        if access == Access::Exec {
            Side::Inst
        } else {
            Side::Data
        }
    }
}

/// The access of a kind byte of [`Mmu::translate_batch_kinds`] (the values
/// of `TraceChunk.kinds`: 0 read, 1 write, 2 fetch).
pub fn access_of_kind(kind: u8) -> Option<Access> {
    match kind {
        0 => Some(Access::Read),
        1 => Some(Access::Write),
        2 => Some(Access::Exec),
        _ => None,
    }
}

/// The bit of an entry's rights mask for an access in a mode.
///
/// Supervisor read/write/fetch are bits 0-2, user ones bits 3-5 (Python's
/// `RIGHTS_BIT`). A probe has no bit.
pub fn rights_bit(access: Access, user: bool) -> Option<u8> {
    let index = match access {
        Access::Read => 0,
        Access::Write => 1,
        Access::Exec => 2,
        Access::Probe => return None,
    };
    Some(1 << (index + if user { 3 } else { 0 }))
}

/// Why a translation did not produce an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// The error, a [`Error::Fault`] for faults.
    pub error: Error,
    /// A not-present fault of a demand walk: a fault handler may map the
    /// page and call [`Mmu::translate_restart`].
    pub restartable: bool,
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        Stop {
            error,
            restartable: false,
        }
    }
}

/// What stopped [`Mmu::translate_batch_staged`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagedStop {
    /// A translation stopped as [`Mmu::translate_batch`] stops (a fault
    /// outside the staged pages, or the restart after an install).
    Fault(Stop),
    /// No node of this staged page's `nodes` has room; nothing changed.
    NoRoom(usize),
    /// The last page installed fell back past the first of its `nodes`, and
    /// its access finished: a caller whose placement depends on where pages
    /// landed recomputes the rest before going on.
    FellBack,
}

/// A page for [`Mmu::install_page`] to allocate, fill and map.
#[derive(Clone, Copy, Debug)]
pub struct PageInstall<'a> {
    /// First virtual address of the page.
    pub va: u64,
    /// Page size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// NUMA nodes to allocate from, in order of preference.
    pub nodes: &'a [u32],
    /// Initial contents (zeros after them), if any.
    pub data: Option<&'a [u8]>,
    /// Rights of the new leaf.
    pub perms: Perm,
    /// User-accessible.
    pub user: bool,
}

/// A snapshot of an MMU's page-walk cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PwcState {
    /// Its configuration.
    pub config: PwcConfig,
    /// Lookups since it was built.
    pub lookups: u64,
    /// Lookups that skipped reads.
    pub hits: u64,
    /// Per level, level 1 first, the `(asid, prefix)` tags from least to most recent.
    pub order: Vec<Vec<(u32, u64)>>,
}

/// How an [`Mmu`] is built.
#[derive(Clone, Debug)]
pub struct MmuConfig {
    /// TLB levels, L1 first; each one array or split arrays (by page size).
    pub levels: Vec<Vec<TlbConfig>>,
    /// The arrays of an L1 ITLB, if the L1 is split by [`Side`]: then
    /// fetches look up this level first and `levels[0]` is the DTLB (reads
    /// and writes); `levels[1..]` are shared. `None`: `levels[0]` is a
    /// unified L1.
    pub itlb: Option<Vec<TlbConfig>>,
    /// The prefetcher.
    pub prefetch: PrefetchConfig,
    /// The page-walk cache, if any.
    pub pwc: Option<PwcConfig>,
    /// The initial ASID (0..=65535).
    pub asid: u32,
    /// Subscribe to page tables for shootdowns.
    pub shootdown: bool,
    /// Modelled cycles per PTE read.
    pub walk_ref_cycles: u64,
}

fn check_asid(asid: u32) -> Result<()> {
    if asid < GLOBAL_ASID {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "asid must be an integer in [0, 65535], got {asid}"
        )))
    }
}

/// The 16 rights masks of a format, indexed `perms * 2 + page_user`.
fn rights_table(table: &PageTable) -> [u8; 16] {
    let fmt = table.format();
    let mut out = [0u8; 16];
    for (code, mask) in out.iter_mut().enumerate() {
        let perms = Perm((code >> 1) as u8);
        let page_user = code & 1 == 1;
        for access in [Access::Read, Access::Write, Access::Exec] {
            for user in [false, true] {
                if fmt.allows(perms, page_user, access, user) {
                    *mask |= rights_bit(access, user).unwrap_or(0);
                }
            }
        }
    }
    out
}

/// Install a translation of `va`'s page in `level`, splintered to the
/// largest size one of its arrays holds (nothing if none fits).
#[inline(always)]
fn fill_level(
    level: &mut TlbLevel,
    page_pa: u64,
    page_size: u64,
    proto: &TlbEntry,
    va: u64,
    prefetched: bool,
) {
    let Some((array, shift)) = level.array_for(page_size) else {
        return;
    };
    let size = 1u64 << shift;
    let pa = page_pa + (va & (page_size - 1) & !(size - 1));
    let mut e = TlbEntry::new(
        va >> shift,
        shift,
        proto.asid,
        pa,
        proto.rights,
        proto.dirty,
        proto.level,
    );
    e.prefetched = prefetched;
    level.fill(array, e);
}

/// Everything behind the MMU's lock.
struct State {
    table: Arc<PageTable>,
    asid: u32,
    levels: Vec<TlbLevel>,
    /// The L1 ITLB of a split L1 (`levels[0]` is then the DTLB).
    itlb: Option<TlbLevel>,
    pwc: Option<PageWalkCache>,
    prefetcher: Option<Box<dyn Prefetcher>>,
    prefetch: PrefetchConfig,
    queue: VecDeque<u64>,
    stats: MmuStats,
    walk_ref_cycles: u64,
    /// Rights masks of the current table's format.
    rights: [u8; 16],
    /// Top level of the current table's format.
    top: u8,
    /// Prefetch targets of the miss being handled.
    targets: Vec<u64>,
    /// Two-stage walks through a host table, once [`Mmu::set_nested`] was called.
    nested: Option<Box<Nested>>,
}

impl State {
    fn set_table(&mut self, table: Arc<PageTable>) {
        self.rights = rights_table(&table);
        self.top = table.format().levels() - 1;
        self.table = table;
    }

    fn rights_of(&self, t: &Translation) -> u8 {
        self.rights[(t.perms.0 as usize & 7) * 2 + t.user as usize]
    }

    /// Level `i` of `side`'s path: the ITLB for fetches at 0 if the L1 is split.
    #[inline(always)]
    fn level_mut(&mut self, side: Side, i: usize) -> &mut TlbLevel {
        match (i, side, self.itlb.as_mut()) {
            (0, Side::Inst, Some(itlb)) => itlb,
            _ => &mut self.levels[i],
        }
    }

    /// Every level, the ITLB (if any) first.
    fn all_levels_mut(&mut self) -> impl Iterator<Item = &mut TlbLevel> {
        self.itlb.iter_mut().chain(self.levels.iter_mut())
    }

    /// Every level, the ITLB (if any) first.
    fn all_levels(&self) -> impl Iterator<Item = &TlbLevel> {
        self.itlb.iter().chain(self.levels.iter())
    }

    #[inline]
    fn translate(
        &mut self,
        pin: Pin<'_>,
        va: u64,
        access: Access,
        user: bool,
    ) -> std::result::Result<u64, Stop> {
        let Some(bit) = rights_bit(access, user) else {
            return Err(Error::Config("access must be 'r', 'w' or 'x', got 'p'".into()).into());
        };
        self.stats.translations += 1;
        let asid = self.asid;
        let side = Side::of(access);
        for i in 0..self.levels.len() {
            let level = self.level_mut(side, i);
            let Some(hit) = level.lookup(va, asid) else {
                continue;
            };
            let entry = level.mark_used(hit);
            // Field by field, not a copy of the entry: the hit has just
            // written its stamp, and a wide load over it would stall.
            let (rights, dirty, level) = (entry.rights, entry.dirty, entry.level);
            let (page_pa, shift, entry_asid) = (entry.page_pa, entry.shift, entry.asid);
            if rights & bit == 0 {
                return self.hit_fault(pin, va, access, user, level);
            }
            if access == Access::Write && !dirty {
                return self.dirty_rewalk(pin, va, user);
            }
            let size = 1u64 << shift;
            if i > 0 {
                let proto = TlbEntry::new(0, shift, entry_asid, page_pa, rights, dirty, level);
                self.fill(side, 0..i, page_pa, size, &proto, va, false);
            }
            return Ok(page_pa | (va & (size - 1)));
        }
        match self.walk(pin, va, access, user, false) {
            Ok(t) => {
                self.after_walk(pin, &t, va, side)?;
                Ok(t.pa)
            }
            Err(Error::Fault(f)) => Err(Stop {
                // A host fault is the hypervisor's to resolve, not the guest's.
                restartable: f.cause == FaultCause::NotPresent
                    && !matches!(f.stage, Some(Stage::Host { .. })),
                error: Error::Fault(f),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Count `n` translations that hit in `side`'s L1 through its memo.
    fn count_fast_hits(&mut self, side: Side, n: u64) {
        self.stats.translations += n;
        self.level_mut(side, 0).count_hits(n);
    }

    /// x86 and RISC-V both drop the entry that caused a fault (from every
    /// TLB, as x86 invalidates the faulting address's translations).
    ///
    /// A nested entry holds the rights of both stages ANDed, so which stage
    /// refuses is found by walking again (uncounted as a miss), as a CPU
    /// re-walks before it reports a guest fault or an EPT violation.
    fn hit_fault(
        &mut self,
        pin: Pin<'_>,
        va: u64,
        access: Access,
        user: bool,
        level: u8,
    ) -> std::result::Result<u64, Stop> {
        let asid = self.asid;
        for lv in self.all_levels_mut() {
            lv.flush_va(va, Some(asid));
        }
        if self.nested.is_some() {
            let t = self.walk(pin, va, access, user, true)?;
            self.fill_all(&t, va, Side::of(access));
            return Ok(t.pa);
        }
        self.stats.faults += 1;
        Err(Error::Fault(Fault {
            va,
            access,
            cause: FaultCause::Protection,
            level: Some(level),
            user,
            stage: None,
            fsc: self.table.format().fsc(FaultCause::Protection, Some(level)),
        })
        .into())
    }

    /// Not a TLB miss: counted in `dirty_walks` only, so walks == misses.
    fn dirty_rewalk(
        &mut self,
        pin: Pin<'_>,
        va: u64,
        user: bool,
    ) -> std::result::Result<u64, Stop> {
        self.stats.dirty_walks += 1;
        let t = self.walk(pin, va, Access::Write, user, true)?;
        self.fill_all(&t, va, Side::Data);
        Ok(t.pa)
    }

    /// A demand walk, with its PTE reads and the page-walk cache counted.
    fn walk(
        &mut self,
        pin: Pin<'_>,
        va: u64,
        access: Access,
        user: bool,
        restart: bool,
    ) -> Result<Translation> {
        if self.nested.is_some() {
            debug_assert!(pin.is_none(), "nested walks take their own holds");
            return self.walk_two_stage(va, access, user, restart);
        }
        if !restart {
            self.stats.walks += 1;
        }
        let top = self.top as u64;
        match self.table_walk(pin, va, access, user) {
            Ok(t) => {
                let refs = (t.memory_refs as u64).saturating_sub(self.pwc_skip(va, t.level));
                self.stats.walk_memory_refs += refs;
                self.stats.cycles += refs * self.walk_ref_cycles;
                Ok(t)
            }
            Err(Error::Fault(f)) => {
                self.stats.faults += 1;
                if let Some(level) = f.level {
                    let refs = (top + 1 - level as u64).saturating_sub(self.pwc_skip(va, level));
                    self.stats.walk_memory_refs += refs;
                    self.stats.cycles += refs * self.walk_ref_cycles;
                }
                Err(Error::Fault(f))
            }
            Err(e) => Err(e),
        }
    }

    /// Run a batch span `f` with the current table pinned
    /// ([`PageTable::pinned_walks`]), so its walks share one hold of the
    /// table's and the memory's locks. Nested walks take their own holds.
    fn in_span<R>(&mut self, f: impl FnOnce(Pin<'_>, &mut State) -> R) -> R {
        if self.nested.is_some() {
            return f(None, self);
        }
        let table = Arc::clone(&self.table);
        table.pinned_walks(|p| f(Some(p), self))
    }

    /// A walk of the current table, through `pin`'s hold if the caller has one.
    #[inline]
    fn table_walk(&self, pin: Pin<'_>, va: u64, access: Access, user: bool) -> Result<Translation> {
        match pin {
            Some(p) => {
                debug_assert!(
                    std::ptr::eq(p.table(), &*self.table),
                    "pinned another table"
                );
                p.walk(va, access, user)
            }
            None => self.table.walk(va, access, user),
        }
    }

    fn pwc_skip(&mut self, va: u64, stop_level: u8) -> u64 {
        let Some(pwc) = self.pwc.as_mut() else {
            return 0;
        };
        self.stats.pwc_lookups += 1;
        let skip = pwc.skipped_refs(va, self.asid, stop_level) as u64;
        if skip != 0 {
            self.stats.pwc_hits += 1;
        }
        self.stats.cycles += pwc.config().latency;
        skip
    }

    /// Fill the hierarchy with a demand walk's result and let the prefetcher react.
    fn after_walk(&mut self, pin: Pin<'_>, t: &Translation, va: u64, side: Side) -> Result<()> {
        self.fill_all(t, va, side);
        if let Some(p) = self.prefetcher.as_mut() {
            self.targets.clear();
            p.on_miss(va, t.page_size, &mut self.targets);
            if !self.targets.is_empty() {
                let targets = std::mem::take(&mut self.targets);
                let done = self.request_prefetch(pin, &targets);
                self.targets = targets;
                done?;
            }
        }
        Ok(())
    }

    fn proto(&self, t: &Translation) -> TlbEntry {
        // A guest's global pages are cached per ASID: no entry is shared across VMs.
        let asid = if t.global && self.nested.is_none() {
            GLOBAL_ASID
        } else {
            self.asid
        };
        TlbEntry::new(
            0,
            12,
            asid,
            t.page_pa(),
            self.rights_of(t),
            t.dirty,
            t.level,
        )
    }

    fn fill_all(&mut self, t: &Translation, va: u64, side: Side) {
        let proto = self.proto(t);
        let n = self.levels.len();
        self.fill(side, 0..n, t.page_pa(), t.page_size, &proto, va, false);
    }

    /// Install a translation of `va`'s page in `levels` of `side`'s path,
    /// splintering as each level needs.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        side: Side,
        levels: std::ops::Range<usize>,
        page_pa: u64,
        page_size: u64,
        proto: &TlbEntry,
        va: u64,
        prefetched: bool,
    ) {
        // The ITLB (a fetch's L1 of a split L1), then the data path's levels as a slice.
        let mut data = levels;
        if side == Side::Inst && data.start == 0 {
            if let Some(itlb) = self.itlb.as_mut() {
                fill_level(itlb, page_pa, page_size, proto, va, prefetched);
                data.start = 1;
            }
        }
        for level in &mut self.levels[data] {
            fill_level(level, page_pa, page_size, proto, va, prefetched);
        }
    }

    fn request_prefetch(&mut self, pin: Pin<'_>, targets: &[u64]) -> Result<()> {
        self.stats.prefetch.requested += targets.len() as u64;
        if self.prefetch.mode == PrefetchMode::Immediate {
            for &target in targets {
                self.prefetch_one(pin, target)?;
            }
            return Ok(());
        }
        for &target in targets {
            if self.queue.len() >= self.prefetch.queue_limit {
                self.queue.pop_front();
                self.stats.prefetch.overflowed += 1;
            }
            self.queue.push_back(target);
        }
        Ok(())
    }

    /// Probe-walk `va` and install it in the last level (the DTLB if a split
    /// L1 is the only level); true if installed.
    fn prefetch_one(&mut self, pin: Pin<'_>, va: u64) -> Result<bool> {
        let last = self.levels.len() - 1;
        if self.levels[last].peek(va, self.asid).is_some() {
            self.stats.prefetch.redundant += 1;
            return Ok(false);
        }
        self.stats.prefetch.issued += 1;
        if self.nested.is_some() {
            return self.prefetch_two_stage(va);
        }
        let top = self.top as u64;
        match self.table_walk(pin, va, Access::Probe, false) {
            Ok(t) => {
                self.stats.prefetch.walk_memory_refs += t.memory_refs as u64;
                let proto = self.proto(&t);
                let range = last..last + 1;
                self.fill(
                    Side::Data,
                    range,
                    t.page_pa(),
                    t.page_size,
                    &proto,
                    va,
                    true,
                );
                self.stats.prefetch.installed += 1;
                Ok(true)
            }
            Err(Error::Fault(f)) => {
                self.stats.prefetch.dropped += 1;
                if let Some(level) = f.level {
                    self.stats.prefetch.walk_memory_refs += top + 1 - level as u64;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The TLB tag of guest `asid`: the VMID joins it once nested.
    fn tag(&self, asid: u32) -> u32 {
        match &self.nested {
            Some(n) => n.config.tag(asid),
            None => asid,
        }
    }

    /// One two-stage walk through the nested TLB and both page-walk caches.
    ///
    /// Returns `(result, guest refs, host refs)` after the caches, the
    /// nested stats updated when `count`.
    fn two_stage(
        &mut self,
        va: u64,
        access: Access,
        user: bool,
        count: bool,
    ) -> (Result<Translation>, u64, u64) {
        let nested = self.nested.as_deref_mut().expect("a nested MMU");
        let table_access = nested.table_access;
        let host = CachedHost {
            state: std::sync::Mutex::new(CachedState {
                nested,
                table_walks: Vec::new(),
                cycles: 0,
                count,
            }),
        };
        let (result, refs) = walk_nested(&self.table, table_access, va, access, user, &host);
        let CachedState {
            table_walks,
            cycles,
            ..
        } = host.state.into_inner().unwrap_or_else(|p| p.into_inner());
        self.stats.cycles += cycles;
        let (mut guest, mut host_refs) = (refs.guest as u64, refs.host as u64);
        // The guest dimension's PWC: a hit skips the guest entries above it
        // and the host walks of their GPAs.
        let stop = match &result {
            Ok(t) => Some(t.guest.level),
            Err(Error::Fault(f)) if f.stage == Some(Stage::Guest) => f.level,
            _ => None,
        };
        let mut skipped = 0;
        if let (Some(level), true) = (stop, count) {
            skipped = (self.pwc_skip(va, level) as usize).min(table_walks.len());
            guest -= skipped as u64;
            host_refs -= table_walks[..skipped]
                .iter()
                .map(|w| w.refs as u64)
                .sum::<u64>();
        }
        let nested = self.nested.as_deref_mut().expect("a nested MMU");
        if count {
            nested.uncount(&table_walks[..skipped]);
            nested.stats.guest_refs += guest;
            nested.stats.host_refs += host_refs;
            if let Err(Error::Fault(f)) = &result {
                if matches!(f.stage, Some(Stage::Host { .. })) {
                    nested.stats.host_faults += 1;
                }
            }
        }
        (result.map(|t| t.combined()), guest, host_refs)
    }

    /// [`walk`](Self::walk) for a nested MMU.
    fn walk_two_stage(
        &mut self,
        va: u64,
        access: Access,
        user: bool,
        restart: bool,
    ) -> Result<Translation> {
        if !restart {
            self.stats.walks += 1;
        }
        if let Some(n) = self.nested.as_deref_mut() {
            n.stats.walks += 1;
        }
        let (result, guest, host) = self.two_stage(va, access, user, true);
        self.stats.walk_memory_refs += guest + host;
        self.stats.cycles += (guest + host) * self.walk_ref_cycles;
        if result.is_err() {
            self.stats.faults += 1;
        }
        result
    }

    /// [`prefetch_one`](Self::prefetch_one) for a nested MMU: a probe through both stages.
    fn prefetch_two_stage(&mut self, va: u64) -> Result<bool> {
        let (result, guest, host) = self.two_stage(va, Access::Probe, false, false);
        self.stats.prefetch.walk_memory_refs += guest + host;
        match result {
            Ok(t) => {
                let last = self.levels.len() - 1;
                let proto = self.proto(&t);
                self.fill(
                    Side::Data,
                    last..last + 1,
                    t.page_pa(),
                    t.page_size,
                    &proto,
                    va,
                    true,
                );
                self.stats.prefetch.installed += 1;
                Ok(true)
            }
            Err(Error::Fault(_)) => {
                self.stats.prefetch.dropped += 1;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn flush_asid(&mut self, asid: u32) {
        for level in self.all_levels_mut() {
            level.flush_asid(asid);
        }
        if let Some(pwc) = self.pwc.as_mut() {
            pwc.flush(Some(asid));
        }
    }
}

/// Address translation for one vCPU over a [`PageTable`].
pub struct Mmu {
    state: Mutex<State>,
    shootdown: bool,
    me: Weak<Mmu>,
    /// Tables subscribed to (never held with `state`).
    subscribed: Mutex<Vec<Weak<PageTable>>>,
}

impl std::fmt::Debug for Mmu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        let names: Vec<&str> = st.all_levels().map(|l| l.name()).collect();
        write!(f, "Mmu(asid={}, levels={names:?})", st.asid)
    }
}

impl Mmu {
    /// An MMU over `table` (subscribed to it when `config.shootdown`).
    pub fn new(table: Arc<PageTable>, config: MmuConfig) -> Result<Arc<Mmu>> {
        check_asid(config.asid)?;
        if config.levels.is_empty() {
            return Err(Error::Config("an MMU needs at least one TLB level".into()));
        }
        let levels = config
            .levels
            .iter()
            .enumerate()
            .map(|(i, cfgs)| {
                let slots = if i == 0 { MEMO_SLOTS } else { 1 };
                TlbLevel::new(cfgs).map(|l| l.with_memo_slots(slots))
            })
            .collect::<Result<Vec<_>>>()?;
        let itlb = match &config.itlb {
            Some(cfgs) => Some(TlbLevel::new(cfgs)?.with_memo_slots(MEMO_SLOTS)),
            None => None,
        };
        let names: Vec<&str> = itlb.iter().chain(&levels).map(TlbLevel::name).collect();
        if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
            let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            return Err(Error::Config(format!(
                "TLB level names must be distinct, got [{}]",
                quoted.join(", ")
            )));
        }
        let top = table.format().levels();
        let state = State {
            rights: rights_table(&table),
            top: top - 1,
            pwc: config.pwc.map(|c| PageWalkCache::new(c, top)),
            table: table.clone(),
            asid: config.asid,
            levels,
            itlb,
            prefetcher: config.prefetch.build(),
            prefetch: config.prefetch,
            queue: VecDeque::new(),
            stats: MmuStats::default(),
            walk_ref_cycles: config.walk_ref_cycles,
            targets: Vec::new(),
            nested: None,
        };
        let mmu = Arc::new_cyclic(|me| Mmu {
            state: Mutex::new(state),
            shootdown: config.shootdown,
            me: me.clone(),
            subscribed: Mutex::new(Vec::new()),
        });
        if mmu.shootdown {
            mmu.subscribe(&table);
        }
        Ok(mmu)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tables stay subscribed after a switch away: their ASID's entries stay
    /// cached, so their unmaps must still shoot this MMU down.
    fn subscribe(&self, table: &Arc<PageTable>) {
        let mut subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
        subscribed.retain(|w| w.strong_count() > 0);
        if subscribed
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(table)))
        {
            return;
        }
        subscribed.push(Arc::downgrade(table));
        let me: Weak<dyn Shootdown> = self.me.clone();
        table.subscribe(me);
    }

    /// Whether this MMU subscribes to its tables.
    pub fn shootdown_enabled(&self) -> bool {
        self.shootdown
    }

    // -- translation ------------------------------------------------------

    /// The physical address of `va`, or why not.
    #[inline]
    pub fn translate(&self, va: u64, access: Access, user: bool) -> std::result::Result<u64, Stop> {
        self.lock().translate(None, va, access, user)
    }

    /// After a restartable fault was resolved by mapping the page: count a
    /// demand fault and walk again (the same TLB miss, counted once).
    pub fn translate_restart(&self, va: u64, access: Access, user: bool) -> Result<u64> {
        if rights_bit(access, user).is_none() {
            return Err(Error::Config(
                "access must be 'r', 'w' or 'x', got 'p'".into(),
            ));
        }
        let mut st = self.lock();
        st.stats.demand_faults += 1;
        let t = st.walk(None, va, access, user, true)?;
        st.after_walk(None, &t, va, Side::of(access))?;
        Ok(t.pa)
    }

    /// Resolve a restartable fault at `va` by installing `page` in the current
    /// table ([`PageTable::install`]), then restart the access as
    /// [`translate_restart`](Self::translate_restart) does (a demand fault,
    /// the same miss walked again, the TLB filled).
    ///
    /// `Ok(None)` if no node of `page.nodes` has room (nothing changed);
    /// else `(pa of va, frame, node)`. One call instead of a fault
    /// handler's allocate, copy, map and restart.
    pub fn install_page(
        &self,
        va: u64,
        access: Access,
        user: bool,
        page: PageInstall<'_>,
    ) -> Result<Option<(u64, u64, u32)>> {
        let table = self.page_table();
        let Some((frame, node)) = table.install(
            page.va, page.size, page.nodes, page.data, page.perms, page.user,
        )?
        else {
            return Ok(None);
        };
        let pa = self.translate_restart(va, access, user)?;
        Ok(Some((pa, frame, node)))
    }

    /// [`translate`](Self::translate) `va`, and if that stops at a restartable
    /// fault, [`install_page`](Self::install_page) `page` at once: what a
    /// fault handler holding a page's contents does, without the fault
    /// leaving the core. Counts exactly what the two calls count.
    ///
    /// `Ok(None)`: the fault stands and no node of `page.nodes` has room
    /// (nothing changed). `Ok(Some((pa, None)))`: `va` was mapped already.
    /// `Ok(Some((pa, Some((frame, node)))))`: the page went in.
    #[allow(clippy::type_complexity)]
    pub fn translate_or_install(
        &self,
        va: u64,
        access: Access,
        user: bool,
        page: PageInstall<'_>,
    ) -> std::result::Result<Option<(u64, Option<(u64, u32)>)>, Stop> {
        match self.translate(va, access, user) {
            Ok(pa) => Ok(Some((pa, None))),
            Err(stop) if stop.restartable => Ok(self
                .install_page(va, access, user, page)?
                .map(|(pa, frame, node)| (pa, Some((frame, node))))),
            Err(stop) => Err(stop),
        }
    }

    /// Translate `vas` in order into `out` with exactly the scalar semantics,
    /// stopping at the first address whose translation stops: returns how
    /// many were done and, if it stopped, why (that address has already
    /// counted what a stopping translate counts).
    pub fn translate_batch(
        &self,
        vas: &[u64],
        out: &mut [u64],
        access: Access,
        user: bool,
    ) -> (usize, Option<Stop>) {
        let n = vas.len().min(out.len());
        let (vas, out) = (&vas[..n], &mut out[..n]);
        let mut i = 0;
        while i < n {
            let end = (i + BATCH_LOCK_SPAN).min(n);
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(bit) = rights_bit(access, user) else {
                // A probe: the scalar path refuses it before counting anything.
                return (i, st.translate(None, vas[i], access, user).err());
            };
            let (write, asid) = (access == Access::Write, st.asid);
            let stop = st.in_span(|pin, st| {
                // The L1 memo fast path (see the module docs); its lookups,
                // hits and cycles are counted once per span.
                let mut fast = 0u64;
                let mut stop = None;
                while i < end {
                    let run =
                        st.levels[0].memo_run(&vas[i..end], &mut out[i..end], asid, bit, write);
                    fast += run as u64;
                    i += run;
                    if i == end {
                        break;
                    }
                    match st.translate(pin, vas[i], access, user) {
                        Ok(pa) => out[i] = pa,
                        Err(e) => {
                            stop = Some(e);
                            break;
                        }
                    }
                    i += 1;
                }
                st.count_fast_hits(Side::of(access), fast);
                stop
            });
            if stop.is_some() {
                return (i, stop);
            }
        }
        (n, None)
    }

    /// [`translate_batch`](Self::translate_batch) with each address's own
    /// access: `kinds[i]` is 0 (read), 1 (write) or 2 (fetch), the values of
    /// `TraceChunk.kinds` (see [`access_of_kind`]). Fetches go to the ITLB
    /// of a split L1. Exactly the scalar semantics in order; a byte that is
    /// no kind stops the batch there with a configuration error, counting
    /// nothing for it.
    pub fn translate_batch_kinds(
        &self,
        vas: &[u64],
        kinds: &[u8],
        out: &mut [u64],
        user: bool,
    ) -> (usize, Option<Stop>) {
        let n = vas.len().min(out.len()).min(kinds.len());
        let (vas, kinds, out) = (&vas[..n], &kinds[..n], &mut out[..n]);
        let mut i = 0;
        while i < n {
            let end = (i + BATCH_LOCK_SPAN).min(n);
            let mut guard = self.lock();
            let st = &mut *guard;
            let asid = st.asid;
            let split = st.itlb.is_some();
            // What each kind needs of each L1's memo: a unified L1 serves all.
            let data = MemoNeeds::new(user, |k| !split || k != 2);
            let inst = MemoNeeds::new(user, |k| k == 2);
            let stop = st.in_span(|pin, st| {
                // Memo hits per side, counted once per span.
                let (mut fast_data, mut fast_inst) = (0u64, 0u64);
                let mut stop = None;
                while i < end {
                    let fetch = split && kinds[i] == 2;
                    let (side, needs, fast) = if fetch {
                        (Side::Inst, &inst, &mut fast_inst)
                    } else {
                        (Side::Data, &data, &mut fast_data)
                    };
                    let level = st.level_mut(side, 0);
                    let run = level.memo_run_kinds(
                        &vas[i..end],
                        &kinds[i..end],
                        &mut out[i..end],
                        asid,
                        needs,
                    );
                    *fast += run as u64;
                    i += run;
                    if i == end {
                        break;
                    }
                    if run != 0 {
                        continue; // the other side's L1 may answer the next one
                    }
                    let result = match access_of_kind(kinds[i]) {
                        Some(access) => st.translate(pin, vas[i], access, user),
                        None => Err(Error::Config(format!(
                            "access kind of address {i} must be 0 (read), 1 (write) or 2 (fetch), got {}",
                            kinds[i]
                        ))
                        .into()),
                    };
                    match result {
                        Ok(pa) => out[i] = pa,
                        Err(e) => {
                            stop = Some(e);
                            break;
                        }
                    }
                    i += 1;
                }
                st.count_fast_hits(Side::Data, fast_data);
                st.count_fast_hits(Side::Inst, fast_inst);
                stop
            });
            if stop.is_some() {
                return (i, stop);
            }
        }
        (n, None)
    }

    /// [`translate_batch`](Self::translate_batch) with staged pages: a
    /// restartable fault inside one of `pages` (contents fetched ahead, by a
    /// batch that overlapped its fetches) is resolved in the loop as
    /// [`translate_or_install`](Self::translate_or_install) resolves it, so
    /// a batch of first touches costs one call, not one per page. Counts
    /// exactly what the scalar calls count, in the same order.
    ///
    /// Each page is installed at most once; `placed` receives `(index in
    /// pages, frame, node)` for every page that went in, also when the
    /// restarted access then stops. Returns how many addresses were done and
    /// what stopped the batch, if anything.
    pub fn translate_batch_staged(
        &self,
        vas: &[u64],
        out: &mut [u64],
        access: Access,
        user: bool,
        pages: &[PageInstall<'_>],
        placed: &mut Vec<(usize, u64, u32)>,
    ) -> (usize, Option<StagedStop>) {
        let n = vas.len().min(out.len());
        let mut done = vec![false; pages.len()];
        // Slots by page start, to find a faulting address's page by bisection
        // (staged pages do not overlap: they are distinct pages of one table).
        let mut by_va: Vec<usize> = (0..pages.len()).collect();
        by_va.sort_unstable_by_key(|&s| pages[s].va);
        let staged_at = |va: u64, done: &[bool]| {
            let k = by_va.partition_point(|&s| pages[s].va <= va);
            let s = *by_va[..k].last()?;
            (!done[s] && va - pages[s].va < pages[s].size).then_some(s)
        };
        let mut i = 0;
        while i < n {
            let (k, stop) = self.translate_batch(&vas[i..n], &mut out[i..n], access, user);
            i += k;
            let Some(stop) = stop else {
                return (n, None);
            };
            let va = vas[i];
            let slot = if stop.restartable {
                staged_at(va, &done)
            } else {
                None
            };
            let Some(slot) = slot else {
                return (i, Some(StagedStop::Fault(stop)));
            };
            let page = pages[slot];
            let table = self.page_table();
            let installed = table.install(
                page.va, page.size, page.nodes, page.data, page.perms, page.user,
            );
            match installed {
                Err(error) => return (i, Some(StagedStop::Fault(error.into()))),
                Ok(None) => return (i, Some(StagedStop::NoRoom(slot))),
                Ok(Some((frame, node))) => {
                    done[slot] = true;
                    placed.push((slot, frame, node));
                }
            }
            match self.translate_restart(va, access, user) {
                Ok(pa) => out[i] = pa,
                Err(error) => return (i, Some(StagedStop::Fault(error.into()))),
            }
            i += 1;
            if placed
                .last()
                .is_some_and(|&(_, _, node)| page.nodes.first() != Some(&node))
            {
                return (i, Some(StagedStop::FellBack));
            }
        }
        (n, None)
    }

    /// Count what a translation of an address outside `[0, 2^64)` counts
    /// before its walk refuses it: a lookup missing in every level of
    /// `access`'s path and a walk.
    pub fn count_unwalkable(&self, access: Access) {
        let mut st = self.lock();
        st.stats.translations += 1;
        let side = Side::of(access);
        for i in 0..st.levels.len() {
            let level = st.level_mut(side, i);
            let latency = level.latency();
            level.stats.lookups += 1;
            level.stats.cycles += latency;
            level.stats.misses += 1;
        }
        st.stats.walks += 1;
    }

    // -- prefetching ------------------------------------------------------

    /// Drain the deferred prefetch queue; how many translations were installed.
    pub fn process_prefetch(&self) -> Result<u64> {
        let mut st = self.lock();
        let mut installed = 0;
        while let Some(va) = st.queue.pop_front() {
            if st.prefetch_one(None, va)? {
                installed += 1;
            }
        }
        Ok(installed)
    }

    /// Requests waiting in the deferred queue.
    pub fn pending_prefetches(&self) -> usize {
        self.lock().queue.len()
    }

    /// The deferred queue, oldest first.
    pub fn queue(&self) -> Vec<u64> {
        self.lock().queue.iter().copied().collect()
    }

    /// The prefetcher's history (see [`Prefetcher::history`]).
    pub fn prefetcher_history(&self) -> Option<(Option<u64>, i64)> {
        self.lock().prefetcher.as_ref().and_then(|p| p.history())
    }

    // -- context switch and invalidation ----------------------------------

    /// Load a new address space (a CR3 or satp write).
    ///
    /// Entries of other ASIDs stay cached, as with PCIDs; `flush` (or
    /// reusing the current ASID) drops the new ASID's old ones.
    pub fn switch(&self, table: Arc<PageTable>, asid: Option<u32>, flush: bool) -> Result<()> {
        let current = self.lock().asid & 0xFFFF;
        check_asid(asid.unwrap_or(current))?;
        if self.shootdown {
            self.subscribe(&table);
        }
        let mut st = self.lock();
        if let Some(pwc) = &st.pwc {
            let levels = table.format().levels();
            if pwc.levels() != levels {
                return Err(Error::Config(format!(
                    "the page-walk cache caches {}-level tables; cannot switch to {} levels",
                    pwc.levels(),
                    levels
                )));
            }
        }
        let new_asid = st.tag(asid.unwrap_or(current));
        if flush || new_asid == st.asid {
            st.flush_asid(new_asid);
        }
        st.set_table(table);
        st.asid = new_asid;
        st.queue.clear();
        if let Some(p) = st.prefetcher.as_mut() {
            p.reset();
        }
        Ok(())
    }

    /// Invalidate every TLB and PWC entry (a CR3 write without PCIDs).
    pub fn flush(&self) {
        let mut st = self.lock();
        for level in st.all_levels_mut() {
            level.flush();
        }
        if let Some(pwc) = st.pwc.as_mut() {
            pwc.flush(None);
        }
    }

    /// Invalidate one ASID's non-global entries (INVPCID single-context).
    pub fn flush_asid(&self, asid: u32) {
        let mut st = self.lock();
        let tag = st.tag(asid);
        st.flush_asid(tag);
    }

    /// Invalidate `va`'s translations for the current ASID, and global ones (INVLPG).
    pub fn invlpg(&self, va: u64) {
        let mut st = self.lock();
        let asid = st.asid;
        for level in st.all_levels_mut() {
            level.flush_va(va, Some(asid));
        }
        if let Some(pwc) = st.pwc.as_mut() {
            pwc.flush(Some(asid));
        }
    }

    /// Invalidate `[va, va + size)` for `asid` (`None`: every ASID), like sfence.vma per page.
    pub fn flush_range(&self, va: u64, size: u64, asid: Option<u32>) {
        let mut st = self.lock();
        let asid = asid.map(|a| st.tag(a));
        for level in st.all_levels_mut() {
            level.flush_range(va, size, asid);
        }
        if let Some(pwc) = st.pwc.as_mut() {
            pwc.flush(asid);
        }
    }

    /// True if any level holds a translation of `va` for the current ASID.
    pub fn cached(&self, va: u64) -> bool {
        let st = self.lock();
        let hit = st.all_levels().any(|l| l.peek(va, st.asid).is_some());
        hit
    }

    // -- inspection -------------------------------------------------------

    /// The current page table.
    pub fn page_table(&self) -> Arc<PageTable> {
        self.lock().table.clone()
    }

    /// The current ASID.
    pub fn asid(&self) -> u32 {
        self.lock().asid & 0xFFFF
    }

    /// Number of TLB levels.
    pub fn level_count(&self) -> usize {
        self.lock().levels.len()
    }

    /// Run `f` on level `index` with the MMU's lock held.
    pub fn with_level<R>(&self, index: usize, f: impl FnOnce(&mut TlbLevel) -> R) -> R {
        f(&mut self.lock().levels[index])
    }

    /// True if the L1 is split into an ITLB and a DTLB (`levels[0]`).
    pub fn split_l1(&self) -> bool {
        self.lock().itlb.is_some()
    }

    /// Run `f` on the ITLB of a split L1 with the MMU's lock held (None
    /// with a unified L1).
    pub fn with_itlb<R>(&self, f: impl FnOnce(&mut TlbLevel) -> R) -> Option<R> {
        self.lock().itlb.as_mut().map(f)
    }

    /// Run `f` on the page-walk cache (None without one) with the MMU's lock held.
    pub fn with_pwc<R>(&self, f: impl FnOnce(Option<&mut PageWalkCache>) -> R) -> R {
        f(self.lock().pwc.as_mut())
    }

    /// Run `f` on the prefetcher (None without one) with the MMU's lock held.
    pub fn with_prefetcher<R>(&self, f: impl FnOnce(Option<&mut dyn Prefetcher>) -> R) -> R {
        let mut st = self.lock();
        match st.prefetcher.as_mut() {
            Some(p) => f(Some(p.as_mut())),
            None => f(None),
        }
    }

    /// Every counter: the MMU's (prefetch useful/useless summed over the levels).
    pub fn stats(&self) -> MmuStats {
        let st = self.lock();
        let mut s = st.stats;
        s.prefetch = st.stats.prefetch_with(st.all_levels().map(|l| &l.stats));
        s
    }

    /// Each level's counters, L1 (the DTLB of a split L1) first.
    pub fn level_stats(&self) -> Vec<TlbStats> {
        self.lock().levels.iter().map(|l| l.stats).collect()
    }

    /// The ITLB's counters (None with a unified L1).
    pub fn itlb_stats(&self) -> Option<TlbStats> {
        self.lock().itlb.as_ref().map(|l| l.stats)
    }

    /// Zero every counter (TLB contents stay).
    pub fn reset_stats(&self) {
        let mut st = self.lock();
        st.stats = MmuStats::default();
        for level in st.all_levels_mut() {
            level.stats = TlbStats::default();
        }
        if let Some(n) = st.nested.as_deref_mut() {
            n.stats = NestedStats::default();
        }
    }

    /// Modelled cycles per PTE read.
    pub fn walk_ref_cycles(&self) -> u64 {
        self.lock().walk_ref_cycles
    }

    /// Change the modelled cost of a PTE read.
    pub fn set_walk_ref_cycles(&self, cycles: u64) {
        self.lock().walk_ref_cycles = cycles;
    }

    // -- two-stage translation ---------------------------------------------

    /// Translate through `ts` from now on: its guest table must be this
    /// MMU's table; walks go through both stages with the nested TLB and
    /// host PWC of `config`, and TLB entries are tagged with its VMID.
    ///
    /// Drops every cached translation (they were one-stage). With
    /// shootdowns, changes to the host table drop the VM's entries.
    pub fn set_nested(&self, ts: &TwoStage, config: NestedConfig) -> Result<()> {
        let host = ts.host().clone();
        let subscriber: Option<Arc<dyn Shootdown>> = if self.shootdown {
            let sub: Arc<dyn Shootdown> = Arc::new(HostShootdown {
                mmu: self.me.clone(),
            });
            host.subscribe(Arc::downgrade(&sub));
            Some(sub)
        } else {
            None
        };
        let mut st = self.lock();
        if !Arc::ptr_eq(&st.table, ts.guest()) {
            return Err(Error::Config(
                "the two-stage translation's guest table must be the MMU's current table".into(),
            ));
        }
        let mut nested = Nested::new(host, config);
        nested._subscriber = subscriber;
        let asid = st.asid & 0xFFFF;
        for level in st.all_levels_mut() {
            level.flush();
        }
        if let Some(pwc) = st.pwc.as_mut() {
            pwc.flush(None);
        }
        st.queue.clear();
        st.nested = Some(Box::new(nested));
        st.asid = config.tag(asid);
        Ok(())
    }

    /// The nested cost model's configuration and counters, if nested.
    pub fn nested_stats(&self) -> Option<(NestedConfig, NestedStats)> {
        let st = self.lock();
        st.nested.as_ref().map(|n| (n.config, n.stats))
    }

    /// The host table changed at `[gpa, gpa + size)`: drop the VM's cached
    /// translations (INVEPT single-context), its nested TLB frames and host PWC.
    pub fn host_shootdown(&self, gpa: u64, size: u64) {
        let mut st = self.lock();
        st.stats.shootdowns += 1;
        let Some(n) = st.nested.as_deref_mut() else {
            return;
        };
        n.host_changed(gpa, size);
        for level in st.all_levels_mut() {
            level.flush();
        }
    }

    /// The page-walk cache's configuration, lifetime counters and LRU order, if there is one.
    pub fn pwc_state(&self) -> Option<PwcState> {
        let st = self.lock();
        st.pwc.as_ref().map(|p| PwcState {
            config: p.config(),
            lookups: p.lookups,
            hits: p.hits,
            order: (1..p.levels()).map(|k| p.order(k)).collect(),
        })
    }
}

impl Shootdown for Mmu {
    /// Drop every trace of `[va, va + size)`, every ASID.
    fn shootdown(&self, va: u64, size: u64) {
        let mut st = self.lock();
        st.stats.shootdowns += 1;
        for level in st.all_levels_mut() {
            level.flush_range(va, size, None);
        }
        if let Some(pwc) = st.pwc.as_mut() {
            pwc.flush(None);
        }
        if !st.queue.is_empty() {
            let end = va as u128 + size as u128;
            st.queue.retain(|&t| !(va <= t && (t as u128) < end));
        }
    }
}
