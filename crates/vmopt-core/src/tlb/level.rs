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

/// Slots of the lookup memo.
const MEMO_SLOTS: usize = 16;

/// A remembered lookup: while no array of the level changed contents, a
/// lookup of the same 4 KiB page and ASID finds the same entry.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    page: u64,
    asid: u32,
    array: u32,
    slot: u32,
    /// The level's mutation count when it was made (0: empty, counts start at 1).
    mutations: u64,
}

/// A TLB level: a lookup counts once here, whichever array answers.
///
/// Split arrays hold disjoint page sizes (as x86's separate 4 KiB / 2 MiB /
/// 1 GiB L1s). `stats` is shared by the arrays. A small direct-mapped memo
/// of recent hits skips the hash probes for pages looked up again before
/// the level changes; it changes no result, only the cost.
#[derive(Clone, Debug)]
pub struct TlbLevel {
    name: String,
    latency: u64,
    arrays: Vec<TlbArray>,
    memo: [Memo; MEMO_SLOTS],
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
            memo: [Memo::default(); MEMO_SLOTS],
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
    pub fn array_mut(&mut self, index: usize) -> (&mut TlbArray, &mut TlbStats) {
        (&mut self.arrays[index], &mut self.stats)
    }

    /// Changes of contents of every array (1 + their sum, so never 0).
    #[inline]
    fn mutations(&self) -> u64 {
        self.arrays
            .iter()
            .fold(1u64, |n, a| n.wrapping_add(a.mutations()))
    }

    /// Probe every array, counting one lookup and its latency.
    #[inline]
    pub fn lookup(&mut self, va: u64, asid: u32) -> Option<Hit> {
        self.stats.lookups += 1;
        self.stats.cycles += self.latency;
        let page = va >> 12;
        let mutations = self.mutations();
        let memo = self.memo[page as usize % MEMO_SLOTS];
        if memo.mutations == mutations && memo.page == page && memo.asid == asid {
            let hit = Hit {
                array: memo.array as usize,
                slot: memo.slot as usize,
            };
            self.arrays[hit.array].touch(hit.slot);
            self.stats.hits += 1;
            return Some(hit);
        }
        for (array, arr) in self.arrays.iter_mut().enumerate() {
            if let Some(slot) = arr.lookup(va, asid) {
                self.stats.hits += 1;
                self.memo[page as usize % MEMO_SLOTS] = Memo {
                    page,
                    asid,
                    array: array as u32,
                    slot: slot as u32,
                    mutations,
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
    pub fn insert(&mut self, array: usize, entry: TlbEntry) -> Result<Option<TlbEntry>> {
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
