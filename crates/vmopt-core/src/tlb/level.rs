//! One level of the TLB hierarchy: one array, or split arrays probed together.

use crate::error::{Error, Result};
use crate::tlb::array::{lru_touch, TlbArray, TlbEntry};
use crate::tlb::config::{Policy, TlbConfig};
use crate::tlb::stats::TlbStats;

/// Where a lookup found its entry: array index and slot within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// Index of the array in the level.
    pub array: usize,
    /// Slot in that array.
    pub slot: usize,
}

/// Default slots of the lookup memo (a power of two; 1024 slots of 24 bytes
/// keep the pages of real programs' hot loops apart, see [`memo_index`]).
pub const MEMO_SLOTS: usize = 1024;

/// The memo slot of a 4 KiB page: the low page bits folded with the next
/// ones, so buffers a multiple of 4 MiB apart do not share slots.
#[inline(always)]
fn memo_index(page: u64, mask: usize) -> usize {
    (page ^ (page >> 10)) as usize & mask
}

/// Epochs live in the top 12 bits of a memo key, above the 52-bit page number.
const EPOCH_SHIFT: u32 = 52;
/// The last epoch before the memo is cleared and they start again at 1.
const MAX_EPOCH: u64 = (1 << (64 - EPOCH_SHIFT)) - 1;
/// The memo's bit for "the entry is dirty", above the six rights bits.
const MEMO_DIRTY: u8 = 1 << 7;
/// The memo's bit for "the entry is 4 KiB" (it answers one page only).
const MEMO_SMALL: u8 = 1 << 6;

/// A remembered lookup: a lookup of 4 KiB page `key & (2^52 - 1)` by the
/// level's memo ASID found the entry in `slot` of array `array`.
///
/// It is valid while its epoch (`key >> 52`) is the level's, and the level
/// keeps that true only while the entry is still in its slot and still the
/// first match: every change of contents goes through the level, which
/// forgets what it may invalidate. A 4 KiB fill or eviction clears the
/// memo slot of its page (the only page a 4 KiB entry covers); a larger
/// fill or eviction, any removal (flush, invalidation), any direct array
/// access and a lookup by another ASID start a new epoch. A lookup whose
/// entry is an unused prefetch is not remembered, so a remembered entry's
/// prefetch flags never change (only a new fill sets them). Recency is no
/// part of a lookup's result.
///
/// It also holds what a hit needs of the entry, which cannot change while
/// it is valid: `pa` is the physical address of the looked-up 4 KiB page
/// (of the entry's page of any size), `allow` the entry's rights mask with
/// [`MEMO_DIRTY`] if it is dirty and [`MEMO_SMALL`] if it is 4 KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    /// `epoch << 52 | page` (0: empty; epochs start at 1).
    key: u64,
    pa: u64,
    slot: u32,
    array: u8,
    allow: u8,
}

/// The 4 KiB entries a batch's one-array LRU loop hit last (see
/// [`TlbLevel::memo_run`]), tried before the memo: real programs cycle
/// between a few pages (code, a source, a destination), and a hit here
/// costs a compare.
///
/// It defers the recency a hit writes: `stamp[k]` is the clock of the last
/// hit on the entry in `slot[k]`, stored into the entry when it leaves the
/// window or the loop ends. That is exact because nothing reads a stamp
/// while the loop runs (only a fill's victim choice does), each entry is
/// here at most once (a 4 KiB entry answers only its own page, and a page
/// is admitted only when it is not here), and every hit of an entry here is
/// a hit here. Empty places hold [`NO_PAGE`], which no page number equals.
#[derive(Clone, Copy)]
struct RecentPages {
    page: [u64; RECENT_PAGES],
    pa: [u64; RECENT_PAGES],
    stamp: [u64; RECENT_PAGES],
    slot: [u32; RECENT_PAGES],
    /// The place the next admission takes (round robin).
    next: usize,
}

/// Places in [`RecentPages`].
const RECENT_PAGES: usize = 4;
/// A page number no address has (they have 52 bits).
const NO_PAGE: u64 = u64::MAX;

impl Default for RecentPages {
    fn default() -> Self {
        RecentPages {
            page: [NO_PAGE; RECENT_PAGES],
            pa: [0; RECENT_PAGES],
            stamp: [0; RECENT_PAGES],
            slot: [0; RECENT_PAGES],
            next: 0,
        }
    }
}

impl RecentPages {
    /// The place holding `page`, if any.
    #[inline(always)]
    fn find(&self, page: u64) -> Option<usize> {
        (0..RECENT_PAGES).find(|&k| self.page[k] == page)
    }

    /// Hold `page` (not here), hit at `clock`; the `(slot, stamp)` it displaced, if any.
    #[inline(always)]
    fn admit(&mut self, page: u64, pa: u64, slot: u32, clock: u64) -> Option<(u32, u64)> {
        let k = self.next;
        self.next = (k + 1) % RECENT_PAGES;
        let out = (self.page[k] != NO_PAGE).then_some((self.slot[k], self.stamp[k]));
        (self.page[k], self.pa[k], self.slot[k], self.stamp[k]) = (page, pa, slot, clock);
        out
    }

    /// The `(slot, stamp)` of every place held.
    fn drain(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0..RECENT_PAGES)
            .filter(|&k| self.page[k] != NO_PAGE)
            .map(|k| (self.slot[k], self.stamp[k]))
    }
}

/// Store a deferred LRU stamp into the entry in `slot`.
#[inline(always)]
fn stamp_way(ways: &mut [Option<TlbEntry>], slot: u32, stamp: u64) {
    if let Some(e) = ways.get_mut(slot as usize).and_then(Option::as_mut) {
        e.stamp = stamp;
    }
}

/// What a hit of `(bit, write)` needs in a memo's `allow`.
#[inline(always)]
fn memo_need(bit: u8, write: bool) -> u16 {
    (bit | if write { MEMO_DIRTY } else { 0 }) as u16
}

/// A need no memo's `allow` (8 bits) meets: the kind is not this level's.
const NOT_SERVED: u16 = 1 << 8;

/// What each access kind (0 read, 1 write, 2 fetch: `TraceChunk.kinds`)
/// needs of a memo for [`TlbLevel::memo_run_kinds`]: its rights bit, the
/// dirty bit for a write, or [`NOT_SERVED`] for a kind the level does not
/// look up (fetches at a DTLB, reads and writes at an ITLB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoNeeds([u16; 3]);

impl MemoNeeds {
    /// The needs in `user` mode of the kinds `serves` accepts.
    pub fn new(user: bool, serves: impl Fn(u8) -> bool) -> MemoNeeds {
        let shift = if user { 3 } else { 0 };
        let mut needs = [0u16; 3];
        for (kind, need) in needs.iter_mut().enumerate() {
            let bit = 1u8 << (kind + shift);
            *need = if !serves(kind as u8) {
                NOT_SERVED
            } else {
                memo_need(bit, kind == 1)
            };
        }
        MemoNeeds(needs)
    }

    /// What kind `kind` needs; None for a byte that is no kind.
    #[inline(always)]
    fn of(&self, kind: u8) -> Option<u16> {
        self.0.get(kind as usize).copied()
    }
}

/// A TLB level: a lookup counts once here, whichever array answers.
///
/// Split arrays hold disjoint page sizes (as x86's separate 4 KiB / 2 MiB /
/// 1 GiB L1s). `stats` is shared by the arrays. A small direct-mapped memo
/// of recent hits (see [`Memo`]) skips the array probes for pages looked up
/// again; it changes no result, only the cost. Contents change only through
/// the level's methods (or [`array_mut`](Self::array_mut), which forgets
/// the memo), so the level can keep the memo valid.
#[derive(Clone, Debug)]
pub struct TlbLevel {
    name: String,
    latency: u64,
    arrays: Vec<TlbArray>,
    memo: Box<[Memo]>,
    /// Memo slots - 1.
    memo_mask: usize,
    /// Bumped whenever remembered lookups may have gone stale wholesale
    /// (1..=[`MAX_EPOCH`]).
    epoch: u64,
    /// The ASID of every remembered lookup.
    memo_asid: u32,
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
            memo_mask: MEMO_SLOTS - 1,
            epoch: 1,
            memo_asid: 0,
            stats: TlbStats::default(),
        })
    }

    /// The level with a lookup memo of `slots` (a power of two; at least 1).
    ///
    /// Levels behind L1 see mostly misses, where a big memo only costs
    /// cache lines; one slot keeps their probes and forgets on one line.
    pub fn with_memo_slots(mut self, slots: usize) -> TlbLevel {
        let slots = slots.max(1).next_power_of_two();
        self.memo = vec![Memo::default(); slots].into_boxed_slice();
        self.memo_mask = slots - 1;
        self
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
        self.forget_all();
        (&mut self.arrays[index], &mut self.stats)
    }

    /// Invalidate every remembered lookup: a new epoch (clearing the memo
    /// when the epoch would wrap, so an old one can never match again).
    fn forget_all(&mut self) {
        if self.epoch == MAX_EPOCH {
            self.memo.fill(Memo::default());
            self.epoch = 0;
        }
        self.epoch += 1;
    }

    /// The key a valid memo of `page` has in the current epoch.
    #[inline(always)]
    fn memo_key(&self, page: u64) -> u64 {
        self.epoch << EPOCH_SHIFT | page
    }

    /// The remembered lookup of `va`'s page for `asid`, if still valid (see [`Memo`]).
    #[inline(always)]
    fn memo_probe(&self, va: u64, asid: u32) -> Option<&Memo> {
        let page = va >> 12;
        let m = &self.memo[memo_index(page, self.memo_mask)];
        (m.key == self.memo_key(page) && asid == self.memo_asid).then_some(m)
    }

    /// Demand lookups of `vas` answered by the memo, into `out`, while each
    /// needs nothing but a touch: the batch fast path. Returns how many it
    /// answered; the caller counts their lookups, hits and cycles with
    /// [`count_hits`](Self::count_hits).
    ///
    /// An address is answered if the memo holds its page for `asid` and
    /// the entry allows `bit` (and is dirty if `write`). For each, this has
    /// done exactly what [`lookup`](Self::lookup) followed by a clean hit in
    /// `Mmu::translate` does (a remembered entry is no unused prefetch), but
    /// a run of addresses in the same 4 KiB page costs one probe and one
    /// [`TlbArray::touch_run`]: a hit changes nothing a lookup reads (only
    /// counters and the entry's recency), so each address of the run finds
    /// the same memo and the same entry, and `k` touches of one entry in a
    /// row are one touch of `k` (see `touch_run`). The first address not
    /// answered is left, with nothing changed, to the full path.
    ///
    /// A one-array LRU level (the common L1) runs a specialised loop that
    /// keeps the clock in a local and tries the last few 4 KiB pages it hit
    /// before the memo ([`RecentPages`]): the same [`lru_touch`] per hit,
    /// with the stamps of those pages' entries stored when they leave.
    #[inline]
    pub fn memo_run(
        &mut self,
        vas: &[u64],
        out: &mut [u64],
        asid: u32,
        bit: u8,
        write: bool,
    ) -> usize {
        let n = vas.len().min(out.len());
        let (vas, out) = (&vas[..n], &mut out[..n]);
        if asid != self.memo_asid {
            return 0;
        }
        let need = memo_need(bit, write) as u8;
        let (memo, mask, epoch) = (&self.memo, self.memo_mask, self.epoch << EPOCH_SHIFT);
        // The end of the run of addresses in `va`'s page starting at `i`.
        let run_end = |mut i: usize, page: u64, out: &mut [u64], pa: u64| {
            while i < n && vas[i] >> 12 == page {
                out[i] = pa | (vas[i] & 0xFFF);
                i += 1;
            }
            i
        };
        let mut i = 0;
        if self.arrays.len() == 1 && self.arrays[0].policy() == Policy::Lru {
            let (clock_ref, ways) = self.arrays[0].lru_parts();
            let mut clock = *clock_ref;
            let mut recent = RecentPages::default();
            while i < n {
                let va = vas[i];
                let page = va >> 12;
                if let Some(k) = recent.find(page) {
                    out[i] = recent.pa[k] | (va & 0xFFF);
                    clock += 1; // lru_touch, its stamp deferred
                    recent.stamp[k] = clock;
                    i += 1;
                    continue;
                }
                let m = &memo[memo_index(page, mask)];
                if m.key != epoch | page || m.allow & need != need {
                    break;
                }
                let Some(e) = ways.get_mut(m.slot as usize).and_then(Option::as_mut) else {
                    break;
                };
                out[i] = m.pa | (va & 0xFFF);
                i += 1;
                if m.allow & MEMO_SMALL == 0 {
                    lru_touch(&mut clock, e);
                } else {
                    clock += 1; // lru_touch, its stamp deferred
                    if let Some((slot, stamp)) = recent.admit(page, m.pa, m.slot, clock) {
                        stamp_way(ways, slot, stamp);
                    }
                }
            }
            for (slot, stamp) in recent.drain() {
                stamp_way(ways, slot, stamp);
            }
            *clock_ref = clock;
            return i;
        }
        while i < n {
            let page = vas[i] >> 12;
            let m = &memo[memo_index(page, mask)];
            if m.key != epoch | page || m.allow & need != need {
                break;
            }
            let end = run_end(i, page, out, m.pa);
            self.arrays[m.array as usize].touch_run(m.slot as usize, (end - i) as u64);
            i = end;
        }
        i
    }

    /// [`memo_run`](Self::memo_run) for accesses of mixed kinds: access `i`
    /// needs `needs[kinds[i]]` in the memo's `allow` (see [`MemoNeeds`]); the
    /// run stops at a kind this level does not serve or that is no kind.
    #[inline]
    pub fn memo_run_kinds(
        &mut self,
        vas: &[u64],
        kinds: &[u8],
        out: &mut [u64],
        asid: u32,
        needs: &MemoNeeds,
    ) -> usize {
        let n = vas.len().min(kinds.len());
        let kinds = &kinds[..n];
        self.memo_run_mixed(&vas[..n], out, asid, |i| needs.of(kinds[i]))
    }

    /// The loop of [`memo_run_kinds`](Self::memo_run_kinds), that of
    /// [`memo_run`](Self::memo_run) with a need per address: `need_of(i)` is
    /// what address `i` needs in a memo's `allow`, or None to stop before
    /// it; a recent page's rights are checked against each access's need.
    /// (`memo_run` keeps its own loop: one need, checked when a page is
    /// admitted, leaves its hottest loop one compare shorter.)
    #[inline(always)]
    fn memo_run_mixed(
        &mut self,
        vas: &[u64],
        out: &mut [u64],
        asid: u32,
        need_of: impl Fn(usize) -> Option<u16>,
    ) -> usize {
        let n = vas.len().min(out.len());
        let (vas, out) = (&vas[..n], &mut out[..n]);
        if asid != self.memo_asid {
            return 0;
        }
        let (memo, mask, epoch) = (&self.memo, self.memo_mask, self.epoch << EPOCH_SHIFT);
        // The end of the run of addresses in `page` starting at `i` that
        // `allow` answers.
        let run_end = |mut i: usize, page: u64, out: &mut [u64], pa: u64, allow: u16| {
            while i < n && vas[i] >> 12 == page {
                match need_of(i) {
                    Some(need) if allow & need == need => {}
                    _ => break,
                }
                out[i] = pa | (vas[i] & 0xFFF);
                i += 1;
            }
            i
        };
        let mut i = 0;
        if self.arrays.len() == 1 && self.arrays[0].policy() == Policy::Lru {
            let (clock_ref, ways) = self.arrays[0].lru_parts();
            let mut clock = *clock_ref;
            let mut recent = RecentPages::default();
            // The memo `allow` of each place of `recent` (kept here, so that
            // `memo_run`'s `RecentPages` stays as small as its loop needs).
            let mut allow = [0u16; RECENT_PAGES];
            while i < n {
                let va = vas[i];
                let page = va >> 12;
                let Some(need) = need_of(i) else {
                    break;
                };
                if let Some(k) = recent.find(page) {
                    if allow[k] & need != need {
                        break;
                    }
                    out[i] = recent.pa[k] | (va & 0xFFF);
                    clock += 1; // lru_touch, its stamp deferred
                    recent.stamp[k] = clock;
                    i += 1;
                    continue;
                }
                let m = &memo[memo_index(page, mask)];
                if m.key != epoch | page || m.allow as u16 & need != need {
                    break;
                }
                let Some(e) = ways.get_mut(m.slot as usize).and_then(Option::as_mut) else {
                    break;
                };
                out[i] = m.pa | (va & 0xFFF);
                i += 1;
                if m.allow & MEMO_SMALL == 0 {
                    lru_touch(&mut clock, e);
                } else {
                    clock += 1; // lru_touch, its stamp deferred
                    allow[recent.next] = m.allow as u16;
                    if let Some((slot, stamp)) = recent.admit(page, m.pa, m.slot, clock) {
                        stamp_way(ways, slot, stamp);
                    }
                }
            }
            for (slot, stamp) in recent.drain() {
                stamp_way(ways, slot, stamp);
            }
            *clock_ref = clock;
            return i;
        }
        while i < n {
            let page = vas[i] >> 12;
            let m = &memo[memo_index(page, mask)];
            if m.key != epoch | page {
                break;
            }
            let end = run_end(i, page, out, m.pa, m.allow as u16);
            if end == i {
                break;
            }
            self.arrays[m.array as usize].touch_run(m.slot as usize, (end - i) as u64);
            i = end;
        }
        i
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
        if asid != self.memo_asid {
            self.forget_all();
            self.memo_asid = asid;
        }
        if let Some(m) = self.memo_probe(va, asid) {
            let hit = Hit {
                array: m.array as usize,
                slot: m.slot as usize,
            };
            self.arrays[hit.array].touch(hit.slot);
            self.stats.hits += 1;
            return Some(hit);
        }
        let key = self.memo_key(va >> 12);
        for (array, arr) in self.arrays.iter_mut().enumerate() {
            if let Some(slot) = arr.lookup(va, asid) {
                self.stats.hits += 1;
                let e = arr.entry(slot);
                // An unused prefetch is not remembered: its first hit counts it useful.
                if !e.prefetched || e.used {
                    let page = va >> 12;
                    let offset = va & ((1u64 << e.shift) - 1) & !0xFFF;
                    self.memo[memo_index(page, self.memo_mask)] = Memo {
                        key,
                        pa: e.page_pa | offset,
                        slot: slot as u32,
                        array: array as u8,
                        allow: e.rights
                            | if e.dirty { MEMO_DIRTY } else { 0 }
                            | if e.shift == 12 { MEMO_SMALL } else { 0 },
                    };
                }
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

    /// A demand access used the entry a lookup found: the first use of a
    /// prefetched entry counts it useful. Returns the entry.
    #[inline]
    pub fn mark_used(&mut self, hit: Hit) -> &TlbEntry {
        let e = self.arrays[hit.array].entry_mut(hit.slot);
        if e.prefetched && !e.used {
            e.used = true;
            self.stats.prefetch_useful += 1;
        }
        e
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
        self.forget(&entry);
        let victim = self.arrays[array].insert(entry, &mut self.stats)?;
        if let Some(v) = &victim {
            self.forget(v);
        }
        Ok(victim)
    }

    /// [`insert`](Self::insert) for an MMU fill: `array` and the entry's
    /// shift come from [`array_for`](Self::array_for) and its vpn from a
    /// 64-bit address, so nothing needs checking, and the victim is only
    /// forgotten, not returned.
    #[inline(always)]
    pub(crate) fn fill(&mut self, array: usize, entry: TlbEntry) {
        self.forget_key(entry.vpn, entry.shift);
        if let Some(v) = self.arrays[array].place(entry, &mut self.stats) {
            self.forget_key(v.vpn, v.shift);
        }
    }

    /// Forget the remembered lookups `e` could answer or shadow.
    #[inline]
    fn forget(&mut self, e: &TlbEntry) {
        self.forget_key(e.vpn, e.shift);
    }

    /// Forget the remembered lookups an entry of `(vpn, shift)` could answer or shadow.
    #[inline]
    fn forget_key(&mut self, vpn: u64, shift: u8) {
        if shift == 12 {
            self.memo[memo_index(vpn, self.memo_mask)].key = 0;
        } else {
            self.forget_all();
        }
    }

    /// Forget every remembered lookup if `removed` entries left.
    fn forget_if(&mut self, removed: u64) -> u64 {
        if removed != 0 {
            self.forget_all();
        }
        removed
    }

    /// Invalidate everything.
    pub fn flush(&mut self) -> u64 {
        let stats = &mut self.stats;
        let n = self.arrays.iter_mut().map(|a| a.flush(stats)).sum();
        self.forget_if(n)
    }

    /// Invalidate one ASID's non-global entries.
    pub fn flush_asid(&mut self, asid: u32) -> u64 {
        let stats = &mut self.stats;
        let n = self
            .arrays
            .iter_mut()
            .map(|a| a.flush_asid(asid, stats))
            .sum();
        self.forget_if(n)
    }

    /// Invalidate the entries covering `va`.
    pub fn flush_va(&mut self, va: u64, asid: Option<u32>) -> u64 {
        let stats = &mut self.stats;
        let n = self
            .arrays
            .iter_mut()
            .map(|a| a.flush_va(va, asid, stats))
            .sum();
        self.forget_if(n)
    }

    /// Invalidate the entries overlapping `[va, va + size)`.
    pub fn flush_range(&mut self, va: u64, size: u64, asid: Option<u32>) -> u64 {
        let stats = &mut self.stats;
        let n = self
            .arrays
            .iter_mut()
            .map(|a| a.flush_range(va, size, asid, stats))
            .sum();
        self.forget_if(n)
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
