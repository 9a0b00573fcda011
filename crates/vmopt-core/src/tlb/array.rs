//! One set-associative TLB array.
//!
//! A lookup scans one set per page size the array holds, as hardware and
//! pycachesim do: the set follows from the virtual page number, and a
//! compact tag per way (vpn and shift, 0 when invalid) keeps the scan to a
//! cache line or two; a tag match then checks the ASID (global entries are
//! stored under [`GLOBAL_ASID`]; an exact ASID wins over a global entry).
//! Replacement state has the forms of the Python reference so both choose
//! the same victims: a stamp per way and a clock for LRU and FIFO (LRU
//! refreshes it on hits and in-place updates, FIFO only on fills), tree bits
//! per set for PLRU, an xorshift64 state for random. Invalid ways fill
//! first, lowest way first, whatever the policy; invalidations clear a way
//! and leave the replacement state alone, as hardware does.

use crate::error::{Error, Result};
use crate::tlb::config::{Policy, TlbConfig};
use crate::tlb::rng::XorShift64;
use crate::tlb::stats::TlbStats;

/// ASID code under which global entries are stored; they match every ASID.
pub const GLOBAL_ASID: u32 = 1 << 16;

/// One cached translation.
///
/// `page_pa` is the physical address of the entry's page of `1 << shift`
/// bytes; `rights` the mask of (access, mode) pairs the page allows,
/// computed at fill time; `level` the leaf level the walk found (for fault
/// reports). `serial` is unique per fill of an array, so a handle to an entry
/// can tell whether its way still holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    /// Virtual page number in units of the entry's size.
    pub vpn: u64,
    /// log2 of the entry's size.
    pub shift: u8,
    /// The ASID, or [`GLOBAL_ASID`].
    pub asid: u32,
    /// Physical address of the entry's page.
    pub page_pa: u64,
    /// Rights mask (see `mmu::rights_bit`).
    pub rights: u8,
    /// The leaf's D bit when the entry was filled.
    pub dirty: bool,
    /// Leaf level of the walk that produced it.
    pub level: u8,
    /// Installed by a prefetcher.
    pub prefetched: bool,
    /// A demand lookup hit it since it was prefetched.
    pub used: bool,
    /// LRU/FIFO stamp (the array clock at the last touch or fill).
    pub stamp: u64,
    /// Unique per fill; set by [`TlbArray::insert`].
    pub serial: u64,
}

impl TlbEntry {
    /// A fresh, unprefetched entry.
    pub fn new(
        vpn: u64,
        shift: u8,
        asid: u32,
        page_pa: u64,
        rights: u8,
        dirty: bool,
        level: u8,
    ) -> TlbEntry {
        TlbEntry {
            vpn,
            shift,
            asid,
            page_pa,
            rights,
            dirty,
            level,
            prefetched: false,
            used: false,
            stamp: 0,
            serial: 0,
        }
    }

    /// True for an entry that matches every ASID.
    pub fn is_global(&self) -> bool {
        self.asid == GLOBAL_ASID
    }

    /// First virtual address the entry covers.
    pub fn va(&self) -> u64 {
        self.vpn << self.shift
    }

    /// Bytes the entry covers.
    pub fn size(&self) -> u64 {
        1 << self.shift
    }

    /// True if the entry covers part of `[start, end)` (`end` may exceed 2^64).
    fn overlaps(&self, start: u64, end: u128) -> bool {
        let va = self.va() as u128;
        va < end && (start as u128) < va + self.size() as u128
    }
}

/// What an LRU hit (or in-place update) does to the clock and the entry.
#[inline(always)]
pub fn lru_touch(clock: &mut u64, e: &mut TlbEntry) {
    *clock += 1;
    e.stamp = *clock;
}

/// The way tag of an entry of `vpn` at `shift`: never 0, as a vpn fits in
/// `64 - shift <= 52` bits and the shift (12, 21 or 30) goes above them.
#[inline(always)]
fn tag(vpn: u64, shift: u8) -> u64 {
    vpn | (shift as u64) << 56
}

/// One set-associative array (see [`TlbConfig`]).
///
/// Lookups here do not count statistics: [`TlbLevel`](super::TlbLevel)
/// does, so split arrays count a lookup once. Fills and invalidations count
/// evictions, invalidations and prefetch outcomes into the `stats` passed in.
#[derive(Clone, Debug)]
pub struct TlbArray {
    cfg: TlbConfig,
    ways: usize,
    set_mask: u64,
    /// Shifts of the page sizes held, ascending.
    shifts: Vec<u8>,
    /// Per way, set-major: [`tag`] of its entry, 0 if invalid.
    tags: Vec<u64>,
    /// Valid ways.
    valid: usize,
    /// `sets * ways` ways, set-major.
    slots: Vec<Option<TlbEntry>>,
    clock: u64,
    /// PLRU node bits, `plru_words` words per set; node `n` is bit `n` (root 1).
    plru: Vec<u64>,
    plru_words: usize,
    rng: XorShift64,
    globals: usize,
    serials: u64,
    /// Bumped by every change of contents (fills and removals).
    mutations: u64,
}

impl TlbArray {
    /// An empty array.
    pub fn new(cfg: &TlbConfig) -> TlbArray {
        let sets = cfg.sets() as usize;
        let ways = cfg.ways as usize;
        let shifts: Vec<u8> = cfg
            .page_sizes
            .iter()
            .map(|s| s.trailing_zeros() as u8)
            .collect();
        let plru_words = if cfg.policy == Policy::Plru {
            ways.div_ceil(64)
        } else {
            0
        };
        TlbArray {
            cfg: cfg.clone(),
            ways,
            set_mask: sets as u64 - 1,
            shifts,
            tags: vec![0; sets * ways],
            valid: 0,
            slots: vec![None; sets * ways],
            clock: 0,
            plru: vec![0; sets * plru_words],
            plru_words,
            rng: XorShift64::new(cfg.seed),
            globals: 0,
            serials: 0,
            mutations: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TlbConfig {
        &self.cfg
    }

    /// Number of sets.
    pub fn sets(&self) -> usize {
        self.slots.len() / self.ways
    }

    /// Ways per set.
    pub fn ways(&self) -> usize {
        self.ways
    }

    /// Shifts of the page sizes held, ascending.
    pub fn shifts(&self) -> &[u8] {
        &self.shifts
    }

    // -- lookup ---------------------------------------------------------------

    /// The slot of `(vpn, shift)`'s entry for `asid`, else of its global
    /// one (if `globals`), scanning the one set it can sit in.
    #[inline(always)]
    fn scan(&self, vpn: u64, shift: u8, asid: u32, globals: bool) -> Option<usize> {
        let base = (vpn & self.set_mask) as usize * self.ways;
        let want = tag(vpn, shift);
        let mut global = None;
        for (w, &t) in self.tags[base..base + self.ways].iter().enumerate() {
            if t == want {
                let slot = base + w;
                let code = self.entry(slot).asid;
                if code == asid {
                    return Some(slot);
                }
                if globals && code == GLOBAL_ASID {
                    global = Some(slot);
                }
            }
        }
        global
    }

    #[inline]
    fn find(&self, va: u64, asid: u32) -> Option<usize> {
        let globals = self.globals != 0;
        self.shifts
            .iter()
            .find_map(|&shift| self.scan(va >> shift, shift, asid, globals))
    }

    /// The slot of the entry covering `va` for `asid` (or a global one),
    /// smallest page size first; refreshes its recency.
    #[inline]
    pub fn lookup(&mut self, va: u64, asid: u32) -> Option<usize> {
        let slot = self.find(va, asid)?;
        self.touch(slot);
        Some(slot)
    }

    /// Like [`lookup`](Self::lookup) without touching replacement state.
    pub fn peek(&self, va: u64, asid: u32) -> Option<usize> {
        self.find(va, asid)
    }

    /// The slot of the entry cached under exactly `(vpn, shift, asid)`.
    pub fn peek_exact(&self, vpn: u64, shift: u8, asid: u32) -> Option<usize> {
        self.map_index(shift)?;
        if shift >= 64 || vpn >> (64 - shift as u32) != 0 {
            return None;
        }
        self.scan(vpn, shift, asid, false)
    }

    /// The entry in `slot`, if the way is valid.
    pub fn slot(&self, slot: usize) -> Option<&TlbEntry> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The entry in `slot` (a slot [`lookup`](Self::lookup) returned).
    #[inline(always)]
    pub fn entry_mut(&mut self, slot: usize) -> &mut TlbEntry {
        self.slots[slot]
            .as_mut()
            .expect("TLB slot from a lookup is valid")
    }

    /// The entry in `slot` (a slot [`lookup`](Self::lookup) returned).
    #[inline]
    pub fn entry(&self, slot: usize) -> &TlbEntry {
        self.slots[slot]
            .as_ref()
            .expect("TLB slot from a lookup is valid")
    }

    // -- replacement ----------------------------------------------------------

    /// Refresh the recency of the entry in `slot` as a hit does.
    #[inline(always)]
    pub fn touch(&mut self, slot: usize) {
        self.touch_run(slot, 1);
    }

    /// What `k >= 1` hits in a row on the entry in `slot` do to the
    /// replacement state: LRU advances the clock by `k` and stamps the entry
    /// with it (each hit's stamp overwrites the last), PLRU points the tree
    /// away from the way once (the same bits each time), FIFO and random
    /// keep none.
    #[inline(always)]
    pub fn touch_run(&mut self, slot: usize, k: u64) {
        debug_assert!(k >= 1);
        match self.cfg.policy {
            Policy::Lru => {
                let (clock, ways) = self.lru_parts();
                if let Some(e) = ways[slot].as_mut() {
                    *clock += k - 1;
                    lru_touch(clock, e);
                }
            }
            Policy::Plru => self.plru_touch(slot / self.ways, slot % self.ways),
            Policy::Fifo | Policy::Random => {}
        }
    }

    /// The replacement policy.
    #[inline]
    pub fn policy(&self) -> Policy {
        self.cfg.policy
    }

    /// The LRU clock and the ways, for a caller that applies [`lru_touch`]
    /// itself over many hits (the batch fast path keeps the clock in a register).
    #[inline]
    pub fn lru_parts(&mut self) -> (&mut u64, &mut [Option<TlbEntry>]) {
        (&mut self.clock, &mut self.slots)
    }

    fn plru_bit(&self, set: usize, node: usize) -> bool {
        self.plru[set * self.plru_words + node / 64] >> (node % 64) & 1 != 0
    }

    /// Point every tree node on `way`'s path away from it.
    #[inline]
    fn plru_touch(&mut self, set: usize, way: usize) {
        let (mut node, mut half, mut lo) = (1usize, self.ways >> 1, 0usize);
        while half != 0 {
            let word = &mut self.plru[set * self.plru_words + node / 64];
            if way >= lo + half {
                *word &= !(1u64 << (node % 64)); // point left, away from the right half
                lo += half;
                node = 2 * node + 1;
            } else {
                *word |= 1u64 << (node % 64); // point right
                node *= 2;
            }
            half >>= 1;
        }
    }

    fn victim(&mut self, set: usize) -> usize {
        let base = set * self.ways;
        match self.cfg.policy {
            Policy::Lru | Policy::Fifo => {
                let mut best = 0;
                let mut stamp = self.entry(base).stamp;
                for w in 1..self.ways {
                    let st = self.entry(base + w).stamp;
                    if st < stamp {
                        best = w;
                        stamp = st;
                    }
                }
                best
            }
            Policy::Random => (self.rng.next() % self.ways as u64) as usize,
            Policy::Plru => {
                let (mut node, mut half, mut lo) = (1usize, self.ways >> 1, 0usize);
                while half != 0 {
                    if self.plru_bit(set, node) {
                        lo += half;
                        node = 2 * node + 1;
                    } else {
                        node *= 2;
                    }
                    half >>= 1;
                }
                lo
            }
        }
    }

    // -- fill -----------------------------------------------------------------

    /// The shift this array caches a page of `page_size` at (the largest
    /// size it holds that fits inside the page), or `None`.
    pub fn fits(&self, page_size: u64) -> Option<u8> {
        self.shifts
            .iter()
            .copied()
            .filter(|&s| 1u64 << s <= page_size)
            .max()
    }

    fn map_index(&self, shift: u8) -> Option<usize> {
        self.shifts.iter().position(|&s| s == shift)
    }

    /// Install `entry`; return the valid entry it evicted, if any.
    ///
    /// An entry already cached under the same key is replaced in place (a
    /// dirty re-walk): that is a use, not a new fill, so it keeps the way's
    /// prefetch flags and stamp, and LRU/PLRU count it as a touch.
    pub fn insert(&mut self, entry: TlbEntry, stats: &mut TlbStats) -> Result<Option<TlbEntry>> {
        self.map_index(entry.shift).ok_or_else(|| {
            Error::Config(format!(
                "this TLB array holds no {}-byte entries",
                1u64 << entry.shift.min(63)
            ))
        })?;
        if entry.shift >= 64 || entry.vpn >> (64 - entry.shift as u32) != 0 {
            return Err(Error::Address(format!(
                "TLB entry vpn {:#x} does not fit a 64-bit address",
                entry.vpn
            )));
        }
        Ok(self.place(entry, stats))
    }

    /// [`insert`](Self::insert) of an entry already known to fit: a shift
    /// the array holds and a vpn of a 64-bit address (an MMU fill).
    ///
    /// One pass over the set's compact tags finds both an entry of the same
    /// key and the first invalid way (a tag is 0 exactly when its way is
    /// invalid); only a full set reads the ways' stamps or tree bits.
    #[inline(always)]
    pub(crate) fn place(&mut self, mut entry: TlbEntry, stats: &mut TlbStats) -> Option<TlbEntry> {
        debug_assert!(self.map_index(entry.shift).is_some());
        self.serials += 1;
        self.mutations += 1;
        entry.serial = self.serials;
        let set = (entry.vpn & self.set_mask) as usize;
        let base = set * self.ways;
        let want = tag(entry.vpn, entry.shift);
        let mut empty = None;
        for (w, &t) in self.tags[base..base + self.ways].iter().enumerate() {
            if t == want && self.entry(base + w).asid == entry.asid {
                let slot = base + w;
                let old = self.entry(slot);
                entry.prefetched = old.prefetched;
                entry.used = old.used;
                entry.stamp = old.stamp;
                self.slots[slot] = Some(entry);
                self.touch(slot);
                return None;
            }
            if t == 0 && empty.is_none() {
                empty = Some(w);
            }
        }
        let (way, victim) = match empty {
            Some(way) => (way, None),
            None => {
                let way = self.victim(set);
                let old = self.slots[base + way].take().expect("a full set");
                self.unlink(base + way, &old, stats);
                stats.evictions += 1;
                (way, Some(old))
            }
        };
        self.valid += 1;
        let slot = base + way;
        if entry.asid == GLOBAL_ASID {
            self.globals += 1;
        }
        if entry.prefetched {
            stats.prefetch_fills += 1;
        }
        match self.cfg.policy {
            Policy::Lru | Policy::Fifo => {
                self.clock += 1;
                entry.stamp = self.clock;
            }
            Policy::Plru => self.plru_touch(set, way),
            Policy::Random => {}
        }
        self.tags[slot] = want;
        self.slots[slot] = Some(entry);
        victim
    }

    /// Count `e` out of `slot` (its way is overwritten or cleared by the caller).
    fn unlink(&mut self, slot: usize, e: &TlbEntry, stats: &mut TlbStats) {
        self.tags[slot] = 0;
        self.valid -= 1;
        if e.asid == GLOBAL_ASID {
            self.globals -= 1;
        }
        if e.prefetched && !e.used {
            stats.prefetch_useless += 1;
        }
    }

    fn remove(&mut self, slot: usize, stats: &mut TlbStats) {
        if let Some(e) = self.slots[slot].take() {
            self.mutations += 1;
            self.unlink(slot, &e, stats);
            stats.invalidations += 1;
        }
    }

    // -- invalidation ---------------------------------------------------------

    fn remove_where(&mut self, stats: &mut TlbStats, pred: impl Fn(&TlbEntry) -> bool) -> u64 {
        let mut n = 0;
        for slot in 0..self.slots.len() {
            if self.slots[slot].as_ref().is_some_and(&pred) {
                self.remove(slot, stats);
                n += 1;
            }
        }
        n
    }

    /// Invalidate everything (a CR3 write without PCID, sfence.vma x0, x0).
    pub fn flush(&mut self, stats: &mut TlbStats) -> u64 {
        self.remove_where(stats, |_| true)
    }

    /// Invalidate the entries of `asid` (INVPCID type 1, sfence.vma x0, asid).
    pub fn flush_asid(&mut self, asid: u32, stats: &mut TlbStats) -> u64 {
        self.remove_where(stats, |e| e.asid == asid)
    }

    /// Invalidate every entry of any size that covers `va` (INVLPG, sfence.vma va).
    ///
    /// With `Some(asid)` only that ASID's entries and global ones go, as
    /// INVLPG does for the current PCID; `None` means every ASID.
    pub fn flush_va(&mut self, va: u64, asid: Option<u32>, stats: &mut TlbStats) -> u64 {
        let mut n = 0;
        for mi in 0..self.shifts.len() {
            let shift = self.shifts[mi];
            let vpn = va >> shift;
            match asid {
                None => {
                    // Entries of this vpn and size can only sit in its set.
                    let base = (vpn & self.set_mask) as usize * self.ways;
                    let want = tag(vpn, shift);
                    for slot in base..base + self.ways {
                        if self.tags[slot] == want {
                            self.remove(slot, stats);
                            n += 1;
                        }
                    }
                }
                Some(a) => {
                    for code in [a, GLOBAL_ASID] {
                        if let Some(slot) = self.scan(vpn, shift, code, false) {
                            self.remove(slot, stats);
                            n += 1;
                        }
                        if a == GLOBAL_ASID {
                            break;
                        }
                    }
                }
            }
        }
        n
    }

    /// Invalidate every entry overlapping `[va, va + size)`.
    pub fn flush_range(
        &mut self,
        va: u64,
        size: u64,
        asid: Option<u32>,
        stats: &mut TlbStats,
    ) -> u64 {
        let end = va as u128 + size as u128;
        if size >> 12 <= 64 {
            let mut n = 0;
            let mut page = (va & !0xFFF) as u128;
            while page < end && page < 1 << 64 {
                n += self.flush_va(page as u64, asid, stats);
                page += 4096;
            }
            return n;
        }
        self.remove_where(stats, |e| {
            e.overlaps(va, end) && asid.map_or(true, |a| e.asid == a || e.asid == GLOBAL_ASID)
        })
    }

    // -- inspection -----------------------------------------------------------

    /// Valid entries.
    pub fn len(&self) -> usize {
        self.valid
    }

    /// True if no way is valid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every valid entry with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &TlbEntry)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|e| (i, e)))
    }

    /// Every way, set-major (`None` = invalid).
    pub fn ways_state(&self) -> &[Option<TlbEntry>] {
        &self.slots
    }

    /// The LRU/FIFO clock.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// A set's PLRU node bits as little-endian words (empty unless PLRU).
    pub fn plru_bits(&self, set: usize) -> &[u64] {
        &self.plru[set * self.plru_words..(set + 1) * self.plru_words]
    }

    /// The random policy's generator state.
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    /// Valid global entries.
    pub fn globals(&self) -> usize {
        self.globals
    }

    /// Changes of contents so far: equal counts mean every lookup still finds what it found.
    #[inline]
    pub fn mutations(&self) -> u64 {
        self.mutations
    }
}
