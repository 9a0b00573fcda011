//! The cost model of two-stage walks in an [`Mmu`](crate::mmu::Mmu): a
//! nested TLB and a host page-walk cache in front of the host table.
//!
//! Following Bhargava et al., "Accelerating two-dimensional page walks for
//! virtualized systems" (ASPLOS 2008): a two-dimensional walk makes up to
//! (n+1)(m+1)-1 references; three caches cut them down.
//! - The MMU's own page-walk cache covers the guest dimension: a hit on a
//!   guest upper-level entry skips the guest entries above it and the host
//!   walks that would have translated their GPAs.
//! - The nested TLB caches GPA->HPA translations of 4 KiB guest-physical
//!   frames (guest table pages and data pages alike), fully associative, LRU.
//! - The host page-walk cache covers the host dimension: upper-level host
//!   entries by GPA prefix, tagged with the VMID.
//!
//! The walk runs the guest walk over the caches first and applies the guest
//! PWC after it (the PWC needs the leaf level): the host walks of the guest
//! entries the PWC skips are then taken back from the references and the
//! cache counters, though their nested TLB and host PWC recency (and the host
//! PWC's lookup latency) stay: a small over-approximation of cache warmth.
//!
//! TLB entries cache the whole GVA->HPA translation, page size the smaller
//! of the two, tagged with the guest's ASID and the VMID (the MMU tags them
//! `asid | vmid << 17`; guest-global pages are cached per ASID, so no entry
//! is shared across VMs). A change to the host table (unmap, protect) drops
//! the VM's TLB entries, its nested TLB and host PWC entries.

use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};
use crate::paging::twostage::{faulted_refs, HostWalk};
use crate::paging::{Access, PageTable, Shootdown, Translation};
use crate::tlb::{PageWalkCache, PwcConfig};

/// Largest VMID (16 bits, as VMX VPIDs and Arm VMIDs).
pub const MAX_VMID: u32 = 0xFFFF;

/// How an MMU models two-stage walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedConfig {
    /// The VM's identifier (1..=65535; 0 is the host's).
    pub vmid: u32,
    /// Nested TLB entries (GPA->HPA); 0: none.
    pub ntlb_entries: usize,
    /// The host page-walk cache, if any.
    pub host_pwc: Option<PwcConfig>,
}

impl NestedConfig {
    /// A validated configuration.
    pub fn new(
        vmid: u32,
        ntlb_entries: usize,
        host_pwc: Option<PwcConfig>,
    ) -> Result<NestedConfig> {
        if vmid == 0 || vmid > MAX_VMID {
            return Err(Error::Config(format!(
                "vmid must be an integer in [1, 65535], got {vmid}"
            )));
        }
        if ntlb_entries > 1 << 16 {
            return Err(Error::Config(format!(
                "nested TLB entries must be in [0, 65536], got {ntlb_entries}"
            )));
        }
        Ok(NestedConfig {
            vmid,
            ntlb_entries,
            host_pwc,
        })
    }

    /// The TLB tag of `asid` in this VM.
    pub fn tag(&self, asid: u32) -> u32 {
        asid | self.vmid << 17
    }
}

/// Counters of the nested cost model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedStats {
    /// Two-stage walks: misses, dirty re-walks, and the re-walk of a TLB hit
    /// that faults (to find which stage refuses); prefetch probes excluded.
    pub walks: u64,
    /// Guest page-table references made (after the guest PWC).
    pub guest_refs: u64,
    /// Host page-table references made (after the nested TLB and host PWC).
    pub host_refs: u64,
    /// Walks that faulted in the host dimension.
    pub host_faults: u64,
    /// Nested TLB lookups.
    pub ntlb_lookups: u64,
    /// Nested TLB hits.
    pub ntlb_hits: u64,
    /// Host PWC lookups.
    pub host_pwc_lookups: u64,
    /// Host PWC hits.
    pub host_pwc_hits: u64,
}

#[derive(Clone, Copy, Debug)]
struct NtlbEntry {
    gfn: u64,
    host: Translation,
    stamp: u64,
}

/// A fully associative LRU cache of GPA->HPA translations per 4 KiB guest frame.
#[derive(Debug, Default)]
pub struct NestedTlb {
    entries: Vec<NtlbEntry>,
    capacity: usize,
    clock: u64,
}

impl NestedTlb {
    /// An empty nested TLB of `capacity` entries.
    pub fn new(capacity: usize) -> NestedTlb {
        NestedTlb {
            entries: Vec::with_capacity(capacity),
            capacity,
            clock: 0,
        }
    }

    /// The cached host translation of `gpa`'s frame, refreshed.
    fn lookup(&mut self, gpa: u64) -> Option<Translation> {
        self.clock += 1;
        let gfn = gpa >> 12;
        let e = self.entries.iter_mut().find(|e| e.gfn == gfn)?;
        e.stamp = self.clock;
        Some(e.host)
    }

    fn fill(&mut self, gpa: u64, host: Translation) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        let gfn = gpa >> 12;
        let entry = NtlbEntry {
            gfn,
            host,
            stamp: self.clock,
        };
        if let Some(e) = self.entries.iter_mut().find(|e| e.gfn == gfn) {
            *e = entry;
        } else if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else if let Some(lru) = self.entries.iter_mut().min_by_key(|e| e.stamp) {
            *lru = entry;
        }
    }

    /// Drop the frames of `[gpa, gpa + size)`.
    pub fn flush_range(&mut self, gpa: u64, size: u64) {
        let (lo, hi) = (gpa >> 12, (gpa as u128 + size as u128).div_ceil(4096));
        self.entries
            .retain(|e| !(lo <= e.gfn && (e.gfn as u128) < hi));
    }

    /// Cached frames.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The nested part of an MMU's state.
pub(crate) struct Nested {
    pub(crate) host: Arc<PageTable>,
    pub(crate) config: NestedConfig,
    pub(crate) table_access: Access,
    pub(crate) ntlb: NestedTlb,
    pub(crate) host_pwc: Option<PageWalkCache>,
    pub(crate) stats: NestedStats,
    /// Keeps the host table's shootdown subscriber alive.
    pub(crate) _subscriber: Option<Arc<dyn Shootdown>>,
}

impl Nested {
    pub(crate) fn new(host: Arc<PageTable>, config: NestedConfig) -> Nested {
        let levels = host.format().levels();
        Nested {
            table_access: host.format().nested_table_access(),
            ntlb: NestedTlb::new(config.ntlb_entries),
            host_pwc: config.host_pwc.map(|c| PageWalkCache::new(c, levels)),
            host,
            config,
            stats: NestedStats::default(),
            _subscriber: None,
        }
    }

    /// The host table changed at `[gpa, gpa + size)`.
    pub(crate) fn host_changed(&mut self, gpa: u64, size: u64) {
        self.ntlb.flush_range(gpa, size);
        if let Some(pwc) = self.host_pwc.as_mut() {
            pwc.flush(None);
        }
    }
}

/// The host walks of one two-stage walk, through the nested TLB and host PWC.
pub(crate) struct CachedHost<'a> {
    pub(crate) state: Mutex<CachedState<'a>>,
}

/// What one host walk for a guest table entry cost and counted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TableWalk {
    /// Host references.
    pub(crate) refs: u32,
    /// Nested TLB lookups and hits it counted (0 or 1 each).
    pub(crate) ntlb: (u64, u64),
    /// Host PWC lookups and hits it counted (0 or 1 each).
    pub(crate) host_pwc: (u64, u64),
}

pub(crate) struct CachedState<'a> {
    pub(crate) nested: &'a mut Nested,
    /// The host walk of each guest table access, in walk order (so the
    /// guest PWC can take back what the entries it skips cost).
    pub(crate) table_walks: Vec<TableWalk>,
    /// Modelled cycles of cache lookups.
    pub(crate) cycles: u64,
    /// Prefetch probes are not counted in the stats.
    pub(crate) count: bool,
}

impl HostWalk for CachedHost<'_> {
    fn host_walk(&self, gpa: u64, access: Access, table: bool) -> (Result<Translation>, u32) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        let (result, walk, cycles) = st.nested.cached_walk(gpa, access, st.count);
        st.cycles += cycles;
        if table {
            st.table_walks.push(walk);
        }
        (result, walk.refs)
    }

    fn host_write(&self, gpa: u64) -> Result<()> {
        self.host_table().walk(gpa, Access::Write, true).map(|_| ())
    }
}

impl Nested {
    /// One host walk through the nested TLB, then the host PWC and table:
    /// the result, what it cost and counted, and the PWC's lookup cycles.
    fn cached_walk(
        &mut self,
        gpa: u64,
        access: Access,
        count: bool,
    ) -> (Result<Translation>, TableWalk, u64) {
        let mut walk = TableWalk::default();
        if self.config.ntlb_entries != 0 {
            walk.ntlb.0 = 1;
            if let Some(h) = self.ntlb.lookup(gpa) {
                let ok = access == Access::Probe
                    || (self.host.format().allows(h.perms, h.user, access, true)
                        && (access != Access::Write || h.dirty || !self.host.update_ad()));
                if ok {
                    walk.ntlb.1 = 1;
                    self.count(count, &walk);
                    let off = gpa & (h.page_size - 1);
                    let t = Translation {
                        va: gpa,
                        pa: h.pa - (h.va & (h.page_size - 1)) + off,
                        memory_refs: 0,
                        ..h
                    };
                    return (Ok(t), walk, 0);
                }
            }
        }
        let vmid = self.config.vmid;
        let mut cycles = 0;
        let result = match self.host.walk(gpa, access, true) {
            Ok(t) => {
                let mut skip = 0;
                if let Some(pwc) = self.host_pwc.as_mut() {
                    cycles += pwc.config().latency;
                    skip = pwc.skipped_refs(gpa, vmid, t.level);
                    walk.host_pwc = (1, (skip != 0) as u64);
                }
                if access != Access::Probe {
                    self.ntlb.fill(gpa, t);
                }
                walk.refs = t.memory_refs.saturating_sub(skip);
                Ok(t)
            }
            Err(Error::Fault(f)) => {
                walk.refs = faulted_refs(&**self.host.format(), &f);
                if let (Some(pwc), Some(level)) = (self.host_pwc.as_mut(), f.level) {
                    cycles += pwc.config().latency;
                    let skip = pwc.skipped_refs(gpa, vmid, level);
                    walk.host_pwc = (1, (skip != 0) as u64);
                    walk.refs = walk.refs.saturating_sub(skip);
                }
                Err(Error::Fault(f))
            }
            Err(e) => Err(e),
        };
        self.count(count, &walk);
        (result, walk, cycles)
    }

    /// Add (or, for entries the guest PWC skipped, take back) a walk's counts.
    pub(crate) fn count(&mut self, count: bool, walk: &TableWalk) {
        if count {
            self.stats.ntlb_lookups += walk.ntlb.0;
            self.stats.ntlb_hits += walk.ntlb.1;
            self.stats.host_pwc_lookups += walk.host_pwc.0;
            self.stats.host_pwc_hits += walk.host_pwc.1;
        }
    }

    /// Take back the counts of walks the guest PWC skipped.
    pub(crate) fn uncount(&mut self, walks: &[TableWalk]) {
        for w in walks {
            self.stats.ntlb_lookups -= w.ntlb.0;
            self.stats.ntlb_hits -= w.ntlb.1;
            self.stats.host_pwc_lookups -= w.host_pwc.0;
            self.stats.host_pwc_hits -= w.host_pwc.1;
        }
    }
}

impl CachedHost<'_> {
    fn host_table(&self) -> Arc<PageTable> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.nested.host.clone()
    }
}

/// Subscribed to the host table: its changes reach the MMU as host changes.
pub(crate) struct HostShootdown {
    pub(crate) mmu: Weak<crate::mmu::Mmu>,
}

impl Shootdown for HostShootdown {
    fn shootdown(&self, gpa: u64, size: u64) {
        if let Some(mmu) = self.mmu.upgrade() {
            mmu.host_shootdown(gpa, size);
        }
    }
}
