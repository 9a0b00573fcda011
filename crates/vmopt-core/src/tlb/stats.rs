//! The counters a TLB level, the prefetcher and the MMU keep.
//!
//! Plain integers with the field names of Python's `TlbStats`,
//! `PrefetchStats` and `MmuStats`; the ratios are computed in Python.

/// Counters of one TLB level (shared by its split arrays).
///
/// `hits + misses == lookups` always; `cycles` is lookups times the level's
/// latency. The prefetch counters refer to entries a prefetcher installed here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// Lookups at this level.
    pub lookups: u64,
    /// Lookups some array of the level answered.
    pub hits: u64,
    /// Lookups no array answered.
    pub misses: u64,
    /// Valid entries replaced by a fill.
    pub evictions: u64,
    /// Entries removed by a flush or a shootdown.
    pub invalidations: u64,
    /// Modelled lookup cycles.
    pub cycles: u64,
    /// Prefetched entries filled (in-place updates excluded).
    pub prefetch_fills: u64,
    /// Prefetched entries a demand lookup hit before they left.
    pub prefetch_useful: u64,
    /// Prefetched entries evicted or invalidated unused.
    pub prefetch_useless: u64,
}

impl TlbStats {
    /// The counters in Python's field order (after `name`).
    pub fn to_array(&self) -> [u64; 9] {
        [
            self.lookups,
            self.hits,
            self.misses,
            self.evictions,
            self.invalidations,
            self.cycles,
            self.prefetch_fills,
            self.prefetch_useful,
            self.prefetch_useless,
        ]
    }
}

/// What the prefetcher did, in Python's `PrefetchStats` terms.
///
/// `useful` and `useless` are not stored here: they always equal the sums of
/// the levels' `prefetch_useful` / `prefetch_useless` (both are counted at
/// the same moments and reset together), so [`MmuStats::prefetch_with`]
/// fills them in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Targets the prefetcher asked for.
    pub requested: u64,
    /// Probe walks made.
    pub issued: u64,
    /// Probe walks that found no mapping (prefetches never fault).
    pub dropped: u64,
    /// Requests skipped because the last level already held the page.
    pub redundant: u64,
    /// Translations installed.
    pub installed: u64,
    /// Deferred requests dropped because the queue was full.
    pub overflowed: u64,
    /// Prefetched entries hit before they left (derived).
    pub useful: u64,
    /// Prefetched entries dropped unused (derived).
    pub useless: u64,
    /// PTE reads of probe walks.
    pub walk_memory_refs: u64,
}

impl PrefetchStats {
    /// The counters in Python's field order.
    pub fn to_array(&self) -> [u64; 9] {
        [
            self.requested,
            self.issued,
            self.dropped,
            self.redundant,
            self.installed,
            self.overflowed,
            self.useful,
            self.useless,
            self.walk_memory_refs,
        ]
    }
}

/// Whole-MMU counters.
///
/// `walks` counts TLB misses that walked (a restart after a demand fault is
/// the same miss); `faults` every fault, resolved or not; `walk_memory_refs`
/// every demand PTE read, restarts included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuStats {
    /// `translate` calls.
    pub translations: u64,
    /// Misses in every level that walked.
    pub walks: u64,
    /// Write hits on clean entries that re-walked to set D.
    pub dirty_walks: u64,
    /// Faults raised (hit faults included).
    pub faults: u64,
    /// Not-present faults the fault handler resolved.
    pub demand_faults: u64,
    /// Demand-walk PTE reads (after the page-walk cache).
    pub walk_memory_refs: u64,
    /// Page-walk cache lookups.
    pub pwc_lookups: u64,
    /// Page-walk cache lookups that skipped reads.
    pub pwc_hits: u64,
    /// Shootdowns received from page tables.
    pub shootdowns: u64,
    /// Modelled walk and PWC cycles.
    pub cycles: u64,
    /// The prefetcher's counters (`useful`/`useless` left at zero; see [`PrefetchStats`]).
    pub prefetch: PrefetchStats,
}

impl MmuStats {
    /// The MMU's own counters in Python's field order (without `prefetch`).
    pub fn to_array(&self) -> [u64; 10] {
        [
            self.translations,
            self.walks,
            self.dirty_walks,
            self.faults,
            self.demand_faults,
            self.walk_memory_refs,
            self.pwc_lookups,
            self.pwc_hits,
            self.shootdowns,
            self.cycles,
        ]
    }

    /// The prefetch counters with `useful`/`useless` summed over `levels`.
    pub fn prefetch_with<'a>(
        &self,
        levels: impl IntoIterator<Item = &'a TlbStats>,
    ) -> PrefetchStats {
        let mut pf = self.prefetch;
        for s in levels {
            pf.useful += s.prefetch_useful;
            pf.useless += s.prefetch_useless;
        }
        pf
    }
}
