//! One level of the TLB hierarchy: one array, or split arrays probed together.

use crate::error::{Error, Result};
use crate::tlb::array::{TlbArray, TlbEntry};
use crate::tlb::config::TlbConfig;
use crate::tlb::stats::TlbStats;

/// Where a lookup found its entry: array index and slot within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index of the array in the level.
    pub array: usize,
    /// Slot in that array.
    pub slot: usize,
}

/// Slots of the lookup memo (a power of two: 256 slots of 40 bytes stay in L1d).
const MEMO_SLOTS: usize = 256;

/// A remembered lookup: `page` (a 4 KiB page number) and `asid` found the
/// entry of fill `serial` in `slot` of array `array`.
///
/// It still answers a lookup of the same page and ASID while (a) that slot
/// still holds fill `serial` (evictions, invalidations and in-place updates
/// all change or clear it) and (b) nothing was inserted that could shadow
/// it: a 4 KiB fill clears the memo slot of its own page, a larger fill or
/// any direct array access bumps the level's `epoch`. A removal of another
/// entry cannot change the first match, and recency only matters to fills.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    page: u64,
    serial: u64,
    /// The level's epoch when it was made (0: empty; epochs start at 1).
    epoch: u64,
    slot: u32,
    asid: u32,
    array: u32,
}

/// A TLB level: a lookup counts once here, whichever array answers.
///
/// Split arrays hold disjoint page sizes (as x86's separate 4 KiB / 2 MiB /
/// 1 GiB L1s). `stats` is shared by the arrays. A small direct-mapped memo
/// of recent hits (see [`Memo`]) skips the set scans for pages looked up
/// again; it changes no result, only the cost.
#[derive(Clone, Debug)]
pub struct TlbLevel {
    name: String,
    latency: u64,
    arrays: Vec<TlbArray>,
    memo: Box<[Memo]>,
    /// Bumped whenever remembered lookups may have gone stale wholesale.
    epoch: u64,
    /// The level's counters.
    pub stats: TlbStats,
}

impl TlbLevel {
    /// A level of the arrays `configs` (at least one, disjoint page sizes).
    pub fn new(configs: &[TlbConfig]) -> Result<TlbLevel> {
        if configs.is_empty() {
            return Err(Error::Config(
                "a TLB level needs at least one TlbConfig".into(),
            ));
        }
        let mut seen: Vec<u64> = Vec::new();
        for c in configs {
            let mut overlap: Vec<u64> = c
                .page_sizes
                .iter()
                .copied()
                .filter(|s| seen.contains(s))
                .collect();
            if !overlap.is_empty() {
                overlap.sort_unstable();
                let names: Vec<&str> = configs.iter().map(|x| x.name.as_str()).collect();
                return Err(Error::Config(format!(
                    "split arrays of one TLB level must hold disjoint page sizes; {overlap:?} appears twice (arrays {})",
                    names.join(", ")
                )));
            }
            seen.extend(&c.page_sizes);
        }
        let name = if configs.len() == 1 {
            configs[0].name.clone()
        } else {
            configs
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join("+")
        };
        Ok(TlbLevel {
            name,
            latency: configs.iter().map(|c| c.latency).max().unwrap_or(0),
            arrays: configs.iter().map(TlbArray::new).collect(),
            memo: vec![Memo::default(); MEMO_SLOTS].into_boxed_slice(),
            epoch: 1,
            stats: TlbStats::default(),
        })
    }

    /// `"l1"`, or the split arrays' names joined by `+`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lookup cost: the slowest array's latency.
    pub fn latency(&self) -> u64 {
        self.latency
    }

    /// The arrays.
    pub fn arrays(&self) -> &[TlbArray] {
        &self.arrays
    }

    /// One array, with the level's counters (for standalone array operations).
    ///
    /// The caller may change the array in any way, so every remembered
    /// lookup is forgotten.
    pub fn array_mut(&mut self, index: usize) -> (&mut TlbArray, &mut TlbStats) {
        self.epoch += 1;
        (&mut self.arrays[index], &mut self.stats)
    }

    /// The remembered lookup of `va`'s page for `asid`, if still valid (see [`Memo`]).
    #[inline(always)]
    fn memo_probe(&self, va: u64, asid: u32) -> Option<Hit> {
        let page = va >> 12;
        let m = &self.memo[page as usize & (MEMO_SLOTS - 1)];
        if m.page != page || m.asid != asid || m.epoch != self.epoch {
            return None;
        }
        let (array, slot) = (m.array as usize, m.slot as usize);
        let e = self.arrays[array].slot(slot)?;
        (e.serial == m.serial).then_some(Hit { array, slot })
    }

    /// A demand lookup answered by the memo that needs nothing but a touch:
    /// the batch fast path.
    ///
    /// Returns the physical address if the memo holds `va`'s page for
    /// `asid`, the entry allows `bit` (and is dirty if `write`), and it is
    /// not an unused prefetch. Then it has done exactly what
    /// [`lookup`](Self::lookup) followed by a clean hit in `Mmu::translate`
    /// does, except counting: the caller adds the lookup, hit and cycles
    /// with [`count_hits`](Self::count_hits). Otherwise nothing changed and
    /// the caller takes the full path.
    #[inline(always)]
    pub fn memo_hit(&mut self, va: u64, asid: u32, bit: u8, write: bool) -> Option<u64> {
        let hit = self.memo_probe(va, asid)?;
        let arr = &mut self.arrays[hit.array];
        let e = arr.entry(hit.slot);
        if e.rights & bit == 0 || (write && !e.dirty) || (e.prefetched && !e.used) {
            return None;
        }
        let pa = e.page_pa | (va & ((1u64 << e.shift) - 1));
        arr.touch(hit.slot);
        Some(pa)
    }

    /// Count `n` lookups that hit (the batch fast path's deferred counting).
    #[inline]
    pub fn count_hits(&mut self, n: u64) {
        self.stats.lookups += n;
        self.stats.hits += n;
        self.stats.cycles += n * self.latency;
    }

    /// Probe every array, counting one lookup and its latency.
    #[inline]
    pub fn lookup(&mut self, va: u64, asid: u32) -> Option<Hit> {
        self.stats.lookups += 1;
        self.stats.cycles += self.latency;
        if let Some(hit) = self.memo_probe(va, asid) {
            self.arrays[hit.array].touch(hit.slot);
            self.stats.hits += 1;
            return Some(hit);
        }
        for (array, arr) in self.arrays.iter_mut().enumerate() {
            if let Some(slot) = arr.lookup(va, asid) {
                self.stats.hits += 1;
                let page = va >> 12;
                self.memo[page as usize & (MEMO_SLOTS - 1)] = Memo {
                    page,
                    serial: arr.entry(slot).serial,
                    epoch: self.epoch,
                    slot: slot as u32,
                    asid,
                    array: array as u32,
                };
                return Some(Hit { array, slot });
            }
        }
        self.stats.misses += 1;
        None
    }

    /// Probe without counting or touching replacement state.
    pub fn peek(&self, va: u64, asid: u32) -> Option<Hit> {
        self.arrays
            .iter()
            .enumerate()
            .find_map(|(array, arr)| arr.peek(va, asid).map(|slot| Hit { array, slot }))
    }

    /// The entry a lookup found.
    #[inline]
    pub fn entry(&self, hit: Hit) -> &TlbEntry {
        self.arrays[hit.array].entry(hit.slot)
    }

    /// The entry a lookup found, mutably, with the level's counters.
    #[inline]
    pub fn entry_mut(&mut self, hit: Hit) -> (&mut TlbEntry, &mut TlbStats) {
        (self.arrays[hit.array].entry_mut(hit.slot), &mut self.stats)
    }

    /// The array that caches a page of `page_size`, and the shift it uses.
    ///
    /// The array with the largest fitting size wins; the first on ties.
    pub fn array_for(&self, page_size: u64) -> Option<(usize, u8)> {
        let mut best: Option<(usize, u8)> = None;
        for (i, arr) in self.arrays.iter().enumerate() {
            if let Some(shift) = arr.fits(page_size) {
                if best.map_or(true, |(_, s)| shift > s) {
                    best = Some((i, shift));
                }
            }
        }
        best
    }

    /// Install `entry` in array `array`; the evicted entry, if any.
    ///
    /// The new entry may shadow remembered lookups of the pages it covers:
    /// a 4 KiB entry forgets its page's memo slot, a larger one every slot.
    pub fn insert(&mut self, array: usize, entry: TlbEntry) -> Result<Option<TlbEntry>> {
        if entry.shift == 12 {
            self.memo[entry.vpn as usize & (MEMO_SLOTS - 1)].epoch = 0;
        } else {
            self.epoch += 1;
        }
        self.arrays[array].insert(entry, &mut self.stats)
    }

    /// Invalidate everything.
    pub fn flush(&mut self) -> u64 {
        let stats = &mut self.stats;
        self.arrays.iter_mut().map(|a| a.flush(stats)).sum()
    }

    /// Invalidate one ASID's non-global entries.
    pub fn flush_asid(&mut self, asid: u32) -> u64 {
        let stats = &mut self.stats;
        self.arrays
            .iter_mut()
            .map(|a| a.flush_asid(asid, stats))
            .sum()
    }

    /// Invalidate the entries covering `va`.
    pub fn flush_va(&mut self, va: u64, asid: Option<u32>) -> u64 {
        let stats = &mut self.stats;
        self.arrays
            .iter_mut()
            .map(|a| a.flush_va(va, asid, stats))
            .sum()
    }

    /// Invalidate the entries overlapping `[va, va + size)`.
    pub fn flush_range(&mut self, va: u64, size: u64, asid: Option<u32>) -> u64 {
        let stats = &mut self.stats;
        self.arrays
            .iter_mut()
            .map(|a| a.flush_range(va, size, asid, stats))
            .sum()
    }

    /// Valid entries in every array.
    pub fn len(&self) -> usize {
        self.arrays.iter().map(TlbArray::len).sum()
    }

    /// True if no array holds anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
