//! Binary buddy allocator of physical page frames (like Linux's page_alloc).
//!
//! Design. Frames are grouped into naturally aligned *sections* of `2^S`
//! frames, `S = max(max_order, 18)` (1 GiB by default). A section that is
//! entirely free costs one bit in a section mask, one entirely in use costs
//! nothing. Only a section that has been split owns bitmaps: per order `k`
//! (created lazily, the first time that order gets a free block there), bit
//! `i` says "block `i` of `2^k` frames is a free buddy block", with 64-ary
//! summary levels above it, so find-lowest, set and clear touch a few words.
//! A split 1 GiB section costs at most ~70 KiB however fragmented, never a
//! heap object per free frame or block; its bitmaps are dropped when it
//! becomes whole or full again (one set is kept as a spare, so churn at a
//! section's edge does not reallocate them). Per order, a mask of section
//! numbers says which sections hold a free block of that order, so the
//! lowest-address block is two lowest-set-bit searches away.
//!
//! Free space is always fully coalesced, so the set of free blocks is a
//! function of the set of free frames: a frame range is all free exactly
//! when one free block contains it. Not thread-safe: [`PhysMem`] keeps each
//! allocator behind a mutex.
//!
//! This is an exact port of the reference `BuddyAllocator`: the same
//! allocation choices, the same errors with the same messages.
//!
//! [`PhysMem`]: crate::memory::PhysMem

use rustc_hash::FxHashMap;

use crate::error::{format_size, Error, Result};

/// Largest `max_order` accepted (2^24 frames = 64 GiB blocks); a split
/// section costs about `2^max(max_order, 18) / 4` bytes.
pub const MAX_ORDER_LIMIT: u8 = 24;

const MIN_SECTION_SHIFT: u32 = 18;
/// One past the last frame of the 64-bit physical space.
const PFN_LIMIT: u128 = 1 << 52;
const PAGE_SHIFT: u32 = 12;

/// Low `count` bits set (`count` in 0..=64).
fn low_bits(count: u64) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1 << count) - 1
    }
}

/// One order's bitmap in one section: level 0 holds one bit per block, each
/// level above one bit per non-zero word of the level below; the last level
/// is a single word.
#[derive(Clone, Debug)]
struct Levels(Vec<Vec<u64>>);

impl Levels {
    fn new(mut nbits: u64) -> Levels {
        let mut levels = Vec::new();
        loop {
            let words = nbits.div_ceil(64);
            levels.push(vec![0u64; words as usize]);
            if words == 1 {
                return Levels(levels);
            }
            nbits = words;
        }
    }

    /// Whether bit `b` of level 0 is set.
    #[inline]
    fn test(&self, b: u64) -> bool {
        self.0[0][(b >> 6) as usize] >> (b & 63) & 1 != 0
    }

    /// True if no bit is set.
    #[inline]
    fn is_empty(&self) -> bool {
        self.0.last().expect("at least one level")[0] == 0
    }

    /// Lowest set bit; the bitmap must not be empty.
    fn first(&self) -> u64 {
        let mut i = 0u64;
        for arr in self.0.iter().rev() {
            let w = arr[i as usize];
            debug_assert!(w != 0, "first() of an empty bitmap");
            i = (i << 6) | u64::from(w.trailing_zeros());
        }
        i
    }

    /// Whether any bit is set in `[start, start + count)`, an aligned power of two.
    fn any(&self, mut start: u64, mut count: u64) -> bool {
        for arr in &self.0 {
            if count <= 64 {
                return (arr[(start >> 6) as usize] >> (start & 63)) & low_bits(count) != 0;
            }
            start >>= 6;
            count >>= 6;
        }
        unreachable!("range larger than the bitmap")
    }

    /// Set every bit in `[start, stop)` (non-empty).
    fn fill(&mut self, mut start: u64, mut stop: u64) {
        for arr in &mut self.0 {
            let (ws, we) = (start >> 6, (stop - 1) >> 6);
            if ws == we {
                arr[ws as usize] |= low_bits(stop - start) << (start & 63);
            } else {
                arr[ws as usize] |= u64::MAX << (start & 63);
                for w in &mut arr[(ws + 1) as usize..we as usize] {
                    *w = u64::MAX;
                }
                arr[we as usize] |= low_bits(((stop - 1) & 63) + 1);
            }
            (start, stop) = (ws, we + 1);
        }
    }

    /// Set bit `b`, and the summary bits of words that were zero.
    fn set(&mut self, mut b: u64) {
        for arr in &mut self.0 {
            let w = (b >> 6) as usize;
            let old = arr[w];
            arr[w] = old | 1 << (b & 63);
            if old != 0 {
                break;
            }
            b = w as u64;
        }
    }

    /// Clear bit `b`, and the summary bits of words now zero.
    fn clear(&mut self, mut b: u64) {
        for arr in &mut self.0 {
            let w = (b >> 6) as usize;
            let new = arr[w] & !(1 << (b & 63));
            arr[w] = new;
            if new != 0 {
                break;
            }
            b = w as u64;
        }
    }

    /// Every set bit of level 0, in order.
    fn bits(&self) -> impl Iterator<Item = u64> + '_ {
        set_bits(&self.0[0])
    }
}

/// Indexes of the set bits of `words`, in order.
fn set_bits(words: &[u64]) -> impl Iterator<Item = u64> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        let mut word = word;
        std::iter::from_fn(move || {
            if word == 0 {
                return None;
            }
            let bit = word.trailing_zeros();
            word &= word - 1;
            Some(((w as u64) << 6) | u64::from(bit))
        })
    })
}

/// A growable set of section numbers (relative to the first section), with its size.
#[derive(Clone, Debug, Default)]
struct SecMask {
    words: Vec<u64>,
    count: u64,
}

impl SecMask {
    fn test(&self, r: u64) -> bool {
        self.words
            .get((r >> 6) as usize)
            .is_some_and(|w| w >> (r & 63) & 1 != 0)
    }

    fn set(&mut self, r: u64) {
        let w = (r >> 6) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1 << (r & 63);
        if self.words[w] & bit == 0 {
            self.words[w] |= bit;
            self.count += 1;
        }
    }

    fn clear(&mut self, r: u64) {
        let bit = 1 << (r & 63);
        if let Some(w) = self.words.get_mut((r >> 6) as usize) {
            if *w & bit != 0 {
                *w &= !bit;
                self.count -= 1;
            }
        }
    }

    /// Set `[start, start + n)`, none of which is set yet.
    fn set_range(&mut self, start: u64, n: u64) {
        let stop = start + n;
        self.words.resize(stop.div_ceil(64) as usize, 0);
        let mut r = start;
        while r < stop {
            let k = (64 - (r & 63)).min(stop - r);
            self.words[(r >> 6) as usize] |= low_bits(k) << (r & 63);
            r += k;
        }
        self.count += n;
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Lowest member, if any.
    fn first(&self) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        self.words
            .iter()
            .position(|&w| w != 0)
            .map(|i| ((i as u64) << 6) | u64::from(self.words[i].trailing_zeros()))
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        set_bits(&self.words)
    }
}

/// Bitmaps of one split section; `levels[k]` is `None` until order k is used.
///
/// Bit `k` of `orders` is set while the section has a free order-k block.
#[derive(Debug)]
struct Section {
    free_pages: u64,
    levels: Vec<Option<Levels>>,
    orders: u32,
}

/// Free-block counts and the per-order section masks, kept apart from the
/// sections so a section and the tallies can be borrowed together.
#[derive(Debug)]
struct Tally {
    /// Free blocks per order.
    nfree: Vec<u64>,
    /// Member r of `index[k]`: section r has a free order-k block.
    index: Vec<SecMask>,
}

impl Tally {
    fn insert(&mut self, sec: &mut Section, shift: u32, rel: u64, k: u8, b: u64) {
        let ku = usize::from(k);
        sec.levels[ku]
            .get_or_insert_with(|| Levels::new(1 << (shift - u32::from(k))))
            .set(b);
        self.nfree[ku] += 1;
        self.index[ku].set(rel);
        sec.orders |= 1 << k;
    }

    fn remove(&mut self, sec: &mut Section, rel: u64, k: u8, b: u64) {
        let ku = usize::from(k);
        let levels = sec.levels[ku].as_mut().expect("order has a bitmap");
        levels.clear(b);
        self.nfree[ku] -= 1;
        if levels.is_empty() {
            self.index[ku].clear(rel);
            sec.orders &= !(1 << k);
        }
    }
}

/// Buddy allocator of the frames `[base_pfn, base_pfn + npages)`.
///
/// An order-`k` block is `2^k` frames at a pfn that is a multiple of `2^k`.
/// `alloc` is deterministic: the lowest-address free block of the order,
/// else the lowest block of the smallest larger order that has one, split.
/// Every failing call returns its error before changing anything.
pub struct BuddyAllocator {
    lo: u64,
    hi: u64,
    max_order: u8,
    node: Option<u32>,
    shift: u32,
    sec0: u64,
    free_pages: u64,
    tally: Tally,
    /// Member r: section r is entirely free and has no [`Section`].
    whole: SecMask,
    secs: FxHashMap<u64, Section>,
    spare: Option<Section>,
}

impl std::fmt::Debug for BuddyAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl BuddyAllocator {
    /// A fully free allocator of `npages` frames from `base_pfn`, blocks up to `max_order`.
    ///
    /// `node` only tags messages and errors.
    pub fn new(base_pfn: u64, npages: u64, max_order: u8, node: Option<u32>) -> Result<Self> {
        if npages == 0 {
            return Err(Error::Config(format!("npages must be > 0, got {npages}")));
        }
        let end = u128::from(base_pfn) + u128::from(npages);
        if end > PFN_LIMIT {
            return Err(Error::Config(format!(
                "frames [{base_pfn:#x}, {end:#x}) exceed the 64-bit physical space"
            )));
        }
        if max_order > MAX_ORDER_LIMIT {
            return Err(Error::Config(format!(
                "max_order must be in 0..{MAX_ORDER_LIMIT}, got {max_order}"
            )));
        }
        let shift = u32::from(max_order).max(MIN_SECTION_SHIFT);
        let norders = usize::from(max_order) + 1;
        let mut b = BuddyAllocator {
            lo: base_pfn,
            hi: base_pfn + npages,
            max_order,
            node,
            shift,
            sec0: base_pfn >> shift,
            free_pages: 0,
            tally: Tally {
                nfree: vec![0; norders],
                index: vec![SecMask::default(); norders],
            },
            whole: SecMask::default(),
            secs: FxHashMap::default(),
            spare: None,
        };
        let first_full = b.lo.div_ceil(1 << shift);
        let end_full = b.hi >> shift;
        if first_full < end_full {
            let n = end_full - first_full;
            let rel = first_full - b.sec0;
            b.whole.set_range(rel, n);
            b.tally.index[usize::from(max_order)].set_range(rel, n);
            b.tally.nfree[usize::from(max_order)] = n << (shift - u32::from(max_order));
            b.free_pages = n << shift;
        }
        // The partial sections at either end (possibly one and the same).
        let (first_sec, last_sec) = (b.lo >> shift, (b.hi - 1) >> shift);
        for sec in if first_sec == last_sec {
            vec![first_sec]
        } else {
            vec![first_sec, last_sec]
        } {
            let start = b.lo.max(sec << shift);
            let stop = b.hi.min((sec + 1) << shift);
            if stop - start < 1 << shift {
                b.carve(sec - b.sec0, start - (sec << shift), stop - (sec << shift));
            }
        }
        Ok(b)
    }

    // -- properties -----------------------------------------------------------------

    /// First frame managed.
    pub fn base_pfn(&self) -> u64 {
        self.lo
    }
    /// One past the last frame managed.
    pub fn end_pfn(&self) -> u64 {
        self.hi
    }
    /// Largest block order (`2^max_order` frames).
    pub fn max_order(&self) -> u8 {
        self.max_order
    }
    /// NUMA node these frames belong to, for messages.
    pub fn node(&self) -> Option<u32> {
        self.node
    }
    /// Frames managed, free or not.
    pub fn total_pages(&self) -> u64 {
        self.hi - self.lo
    }
    /// Frames currently free.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }
    /// Frames currently allocated.
    pub fn used_pages(&self) -> u64 {
        self.hi - self.lo - self.free_pages
    }
    /// Free blocks per order `0..=max_order`, like `/proc/buddyinfo`.
    pub fn free_blocks(&self) -> Vec<u64> {
        self.tally.nfree.clone()
    }

    /// The reference's `repr()`: `BuddyAllocator(node=1, pfn [0x0, 0x10), free 16/16 pages)`.
    pub fn describe(&self) -> String {
        let node = match self.node {
            None => String::new(),
            Some(n) => format!("node={n}, "),
        };
        format!(
            "BuddyAllocator({node}pfn [{:#x}, {:#x}), free {}/{} pages)",
            self.lo,
            self.hi,
            self.free_pages,
            self.hi - self.lo
        )
    }

    // -- queries --------------------------------------------------------------------

    /// Whether frame `pfn` is free (`false` outside the managed range).
    pub fn is_free(&self, pfn: u64) -> bool {
        if !(self.lo..self.hi).contains(&pfn) {
            return false;
        }
        let rel = (pfn >> self.shift) - self.sec0;
        let Some(sec) = self.secs.get(&rel) else {
            return self.whole.test(rel);
        };
        let local = pfn & ((1 << self.shift) - 1);
        sec.levels
            .iter()
            .enumerate()
            .any(|(k, levels)| levels.as_ref().is_some_and(|l| l.test(local >> k)))
    }

    /// `(pfn, order)` of every free block, in address order (for dumps and checks).
    pub fn iter_free_blocks(&self) -> Vec<(u64, u8)> {
        let (shift, top) = (self.shift, self.max_order);
        let mut rels: Vec<u64> = self.secs.keys().copied().chain(self.whole.iter()).collect();
        rels.sort_unstable();
        let mut out = Vec::new();
        for rel in rels {
            let base = (self.sec0 + rel) << shift;
            let Some(sec) = self.secs.get(&rel) else {
                out.extend((0..1u64 << (shift - u32::from(top))).map(|i| (base + (i << top), top)));
                continue;
            };
            let start = out.len();
            for (k, levels) in sec.levels.iter().enumerate() {
                if let Some(levels) = levels {
                    out.extend(levels.bits().map(|b| (base + (b << k), k as u8)));
                }
            }
            out[start..].sort_unstable();
        }
        out
    }

    // -- allocation -----------------------------------------------------------------

    /// Allocate a free order-`order` block; its pfn.
    ///
    /// [`Error::OutOfFrames`] when no block that large is free.
    pub fn alloc(&mut self, order: u8) -> Result<u64> {
        self.check_order(order)?;
        let Some(mut k) =
            (order..=self.max_order).find(|&k| !self.tally.index[usize::from(k)].is_empty())
        else {
            return Err(self.oom(order));
        };
        let rel = self.tally.index[usize::from(k)]
            .first()
            .expect("a non-empty mask");
        if !self.secs.contains_key(&rel) {
            // An entirely free section: k == max_order.
            if self.shift == u32::from(order) {
                return Ok(self.take_whole(rel));
            }
            self.split_whole(rel);
        }
        let shift = self.shift;
        let sec = self.secs.get_mut(&rel).expect("a split section");
        let mut b = sec.levels[usize::from(k)]
            .as_ref()
            .expect("order has a bitmap")
            .first();
        self.tally.remove(sec, rel, k, b);
        while k > order {
            k -= 1;
            b <<= 1;
            self.tally.insert(sec, shift, rel, k, b | 1);
        }
        Ok(self.account_alloc(rel, order, b))
    }

    /// Allocate the block at `pfn`; every frame in it must be free.
    ///
    /// [`Error::Address`] for a misaligned or out-of-range block and
    /// [`Error::Mapping`] when some frame in it is not free.
    pub fn alloc_at(&mut self, pfn: u64, order: u8) -> Result<()> {
        self.check_order(order)?;
        self.check_block(pfn, order, "alloc_at")?;
        let rel = (pfn >> self.shift) - self.sec0;
        if !self.secs.contains_key(&rel) {
            if !self.whole.test(rel) {
                return Err(Error::Mapping(format!(
                    "{}alloc_at {}: not free",
                    self.where_(),
                    block(pfn, order)
                )));
            }
            if self.shift == u32::from(order) {
                self.take_whole(rel);
                return Ok(());
            }
            self.split_whole(rel);
        }
        let (shift, top) = (self.shift, self.max_order);
        let where_ = self.where_();
        let sec = self.secs.get_mut(&rel).expect("a split section");
        let local = pfn & ((1 << shift) - 1);
        let found = (order..=top).find(|&k| {
            sec.levels[usize::from(k)]
                .as_ref()
                .is_some_and(|l| l.test(local >> k))
        });
        let Some(mut k) = found else {
            return Err(Error::Mapping(format!(
                "{where_}alloc_at {}: not all of it is free",
                block(pfn, order)
            )));
        };
        self.tally.remove(sec, rel, k, local >> k);
        while k > order {
            k -= 1;
            self.tally.insert(sec, shift, rel, k, (local >> k) ^ 1);
        }
        self.account_alloc(rel, order, local >> order);
        Ok(())
    }

    /// Return the order-`order` block at `pfn`, coalescing with free buddies.
    ///
    /// The block need not come from [`alloc`](Self::alloc) (part of a larger
    /// allocated block may be freed), but none of its frames may be free
    /// already: that is an [`Error::Mapping`]. A misaligned or out-of-range
    /// block is an [`Error::Address`].
    pub fn free(&mut self, pfn: u64, order: u8) -> Result<()> {
        self.check_order(order)?;
        self.check_block(pfn, order, "free")?;
        let (shift, top) = (self.shift, self.max_order);
        let rel = (pfn >> shift) - self.sec0;
        let local = pfn & ((1 << shift) - 1);
        match self.secs.get(&rel) {
            None => {
                if self.whole.test(rel) {
                    return Err(self.double_free(pfn, order, Some(pfn >> top << top), top));
                }
                self.new_section(rel, 0);
            }
            Some(sec) => self.check_not_free(sec, pfn, order, local)?,
        }
        let sec = self.secs.get_mut(&rel).expect("a split section");
        let mut b = local >> order;
        let mut k = order;
        while k < top {
            let Some(levels) = &sec.levels[usize::from(k)] else {
                break;
            };
            let buddy = b ^ 1;
            if !levels.test(buddy) {
                break;
            }
            self.tally.remove(sec, rel, k, buddy);
            b >>= 1;
            k += 1;
        }
        self.tally.insert(sec, shift, rel, k, b);
        let size = 1u64 << order;
        self.free_pages += size;
        sec.free_pages += size;
        if sec.free_pages == 1 << shift {
            // Coalesced into order-max blocks only.
            sec.levels[usize::from(top)] = None;
            sec.orders = 0;
            self.drop_section(rel);
            self.whole.set(rel);
        }
        Ok(())
    }

    // -- internals ------------------------------------------------------------------

    fn check_order(&self, order: u8) -> Result<()> {
        if order > self.max_order {
            return Err(Error::Config(format!(
                "order must be in 0..{}, got {order}",
                self.max_order
            )));
        }
        Ok(())
    }

    fn check_block(&self, pfn: u64, order: u8, what: &str) -> Result<()> {
        if pfn & ((1 << order) - 1) != 0 {
            return Err(Error::Address(format!(
                "{}{what} {}: pfn is not a multiple of {}",
                self.where_(),
                block(pfn, order),
                1u64 << order
            )));
        }
        if pfn < self.lo || u128::from(pfn) + (1u128 << order) > u128::from(self.hi) {
            return Err(Error::Address(format!(
                "{}{what} {}: outside frames [{:#x}, {:#x})",
                self.where_(),
                block(pfn, order),
                self.lo,
                self.hi
            )));
        }
        Ok(())
    }

    fn check_not_free(&self, sec: &Section, pfn: u64, order: u8, local: u64) -> Result<()> {
        let mut orders = sec.orders;
        while orders != 0 {
            // Only the orders that have free blocks in this section.
            let k = orders.trailing_zeros() as u8;
            orders &= orders - 1;
            let levels = sec.levels[usize::from(k)]
                .as_ref()
                .expect("order has a bitmap");
            if k >= order {
                // A free block containing it?
                if levels.test(local >> k) {
                    return Err(self.double_free(pfn, order, Some(pfn >> k << k), k));
                }
            } else if levels.any(local >> k, 1 << (order - k)) {
                // Free blocks inside it.
                return Err(self.double_free(pfn, order, None, k));
            }
        }
        Ok(())
    }

    fn double_free(&self, pfn: u64, order: u8, free_pfn: Option<u64>, k: u8) -> Error {
        let what = block(pfn, order);
        if free_pfn == Some(pfn) && k == order {
            return Error::Mapping(format!("{}double free of {what}", self.where_()));
        }
        let detail = match free_pfn {
            None => format!("contains a free order-{k} block"),
            Some(p) => format!("lies in the free {}", block(p, k)),
        };
        Error::Mapping(format!(
            "{}free of {what}: {detail} (double free?)",
            self.where_()
        ))
    }

    fn account_alloc(&mut self, rel: u64, order: u8, b: u64) -> u64 {
        let size = 1u64 << order;
        self.free_pages -= size;
        let sec = self.secs.get_mut(&rel).expect("a split section");
        sec.free_pages -= size;
        if sec.free_pages == 0 {
            // Entirely in use: drop the bitmaps.
            self.drop_section(rel);
        }
        ((self.sec0 + rel) << self.shift) | (b << order)
    }

    /// Allocate entirely free section `rel` as one block (shift == max_order).
    fn take_whole(&mut self, rel: u64) -> u64 {
        let top = usize::from(self.max_order);
        self.whole.clear(rel);
        self.tally.index[top].clear(rel);
        self.tally.nfree[top] -= 1;
        self.free_pages -= 1 << self.shift;
        (self.sec0 + rel) << self.shift
    }

    /// Give entirely free section `rel` bitmaps holding its order-max blocks.
    fn split_whole(&mut self, rel: u64) {
        let (shift, top) = (self.shift, self.max_order);
        let nbits = 1u64 << (shift - u32::from(top));
        let sec = self.new_section(rel, 1 << shift);
        sec.levels[usize::from(top)]
            .get_or_insert_with(|| Levels::new(nbits))
            .fill(0, nbits);
        sec.orders = 1 << top;
        self.whole.clear(rel);
    }

    /// Register an empty section for `rel`, reusing the spare one if any.
    fn new_section(&mut self, rel: u64, free_pages: u64) -> &mut Section {
        let sec = self.fresh_section(free_pages);
        debug_assert!(
            !self.secs.contains_key(&rel),
            "section {rel} registered twice"
        );
        self.secs.entry(rel).or_insert(sec)
    }

    /// An empty section (the spare one, if any), not yet registered.
    fn fresh_section(&mut self, free_pages: u64) -> Section {
        match self.spare.take() {
            Some(mut sec) => {
                sec.free_pages = free_pages;
                sec
            }
            None => Section {
                free_pages,
                levels: vec![None; usize::from(self.max_order) + 1],
                orders: 0,
            },
        }
    }

    /// Forget section `rel`'s bitmaps (now all zero), keeping one as a spare.
    ///
    /// The spare makes alloc/free churn at the edge of an otherwise whole or
    /// full section cheap, at a bounded cost of one section's bitmaps.
    fn drop_section(&mut self, rel: u64) {
        self.spare = self.secs.remove(&rel);
    }

    /// Make section-local frames `[start, stop)` of a partial section free.
    fn carve(&mut self, rel: u64, start: u64, stop: u64) {
        let (shift, top) = (self.shift, self.max_order);
        self.free_pages += stop - start;
        let mut sec = self.fresh_section(stop - start);
        // Order-max blocks entirely inside.
        let first = start.div_ceil(1 << top);
        let end = stop >> top;
        let pieces = if first < end {
            let mut levels = Levels::new(1 << (shift - u32::from(top)));
            levels.fill(first, end);
            sec.levels[usize::from(top)] = Some(levels);
            self.tally.nfree[usize::from(top)] += end - first;
            self.tally.index[usize::from(top)].set(rel);
            sec.orders |= 1 << top;
            vec![(start, first << top), (end << top, stop)]
        } else {
            vec![(start, stop)]
        };
        for (mut p, q) in pieces {
            while p < q {
                let align = if p == 0 {
                    u32::from(top)
                } else {
                    p.trailing_zeros()
                };
                let fits = 63 - (q - p).leading_zeros();
                let k = u32::from(top).min(align).min(fits) as u8;
                self.tally.insert(&mut sec, shift, rel, k, p >> k);
                p += 1 << k;
            }
        }
        self.secs.insert(rel, sec);
    }

    fn where_(&self) -> String {
        match self.node {
            None => String::new(),
            Some(n) => format!("node {n}: "),
        }
    }

    fn oom(&self, order: u8) -> Error {
        let size = 1u64 << (u32::from(order) + PAGE_SHIFT);
        Error::OutOfFrames {
            message: format!(
                "{}no free {} block (free: {} in {} blocks)",
                self.where_(),
                format_size(size),
                format_size(self.free_pages << PAGE_SHIFT),
                self.tally.nfree.iter().sum::<u64>()
            ),
            size,
            node: self.node,
        }
    }
}

fn block(pfn: u64, order: u8) -> String {
    format!("order-{order} block at pfn {pfn:#x}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    const GIB_PAGES: u64 = 1 << 18;

    fn snapshot(b: &BuddyAllocator) -> (u64, Vec<u64>, Vec<(u64, u8)>) {
        (b.free_pages(), b.free_blocks(), b.iter_free_blocks())
    }

    fn message(e: Error) -> String {
        e.to_string()
    }

    #[test]
    fn split_and_coalesce_back() {
        let mut b = BuddyAllocator::new(0, 16, 4, None).unwrap();
        assert_eq!(b.free_blocks(), [0, 0, 0, 0, 1]);
        assert_eq!(b.alloc(0).unwrap(), 0);
        assert_eq!(b.free_blocks(), [1, 1, 1, 1, 0]);
        assert_eq!(b.iter_free_blocks(), [(1, 0), (2, 1), (4, 2), (8, 3)]);
        assert_eq!(b.alloc(0).unwrap(), 1);
        assert_eq!(b.alloc(1).unwrap(), 2);
        assert_eq!(b.alloc(0).unwrap(), 4);
        assert_eq!(b.free_blocks(), [1, 1, 0, 1, 0]);
        assert_eq!(
            (b.free_pages(), b.used_pages(), b.total_pages()),
            (11, 5, 16)
        );
        assert!(!b.is_free(4) && b.is_free(5) && b.is_free(6) && b.is_free(15));
        for (pfn, order) in [(1, 0), (4, 0), (2, 1), (0, 0)] {
            b.free(pfn, order).unwrap();
        }
        assert_eq!(b.iter_free_blocks(), [(0, 4)]);
    }

    #[test]
    fn lowest_block_of_the_order_beats_splitting_a_lower_one() {
        let mut b = BuddyAllocator::new(0, 16, 2, None).unwrap();
        let got: Vec<u64> = (0..3).map(|_| b.alloc(2).unwrap()).collect();
        assert_eq!(got, [0, 4, 8]);
        assert_eq!(b.alloc(1).unwrap(), 12);
        b.free(0, 2).unwrap();
        assert_eq!(b.alloc(1).unwrap(), 14);
        assert_eq!(b.alloc(1).unwrap(), 0);
        assert_eq!(b.alloc(0).unwrap(), 2);
    }

    #[test]
    fn unaligned_base_and_size_are_carved_into_aligned_blocks() {
        let b = BuddyAllocator::new(3, 1000, 18, None).unwrap();
        let expected = [
            (3, 0),
            (4, 2),
            (8, 3),
            (16, 4),
            (32, 5),
            (64, 6),
            (128, 7),
            (256, 8),
            (512, 8),
            (768, 7),
            (896, 6),
            (960, 5),
            (992, 3),
            (1000, 1),
            (1002, 0),
        ];
        assert_eq!(b.iter_free_blocks(), expected);
        assert!(!b.is_free(2) && b.is_free(3) && b.is_free(1002) && !b.is_free(1003));
        assert_eq!(
            b.describe(),
            "BuddyAllocator(pfn [0x3, 0x3eb), free 1000/1000 pages)"
        );
    }

    #[test]
    fn whole_sections_split_take_and_coalesce() {
        let base = GIB_PAGES - 5;
        let mut b = BuddyAllocator::new(base, 2 * GIB_PAGES + 10, 18, None).unwrap();
        assert_eq!(b.free_blocks()[18], 2);
        assert_eq!(b.alloc(18).unwrap(), GIB_PAGES);
        assert_eq!(b.alloc(0).unwrap(), base);
        assert_eq!(b.alloc(17).unwrap(), 2 * GIB_PAGES);
        b.free(GIB_PAGES, 18).unwrap();
        b.free(base, 0).unwrap();
        b.free(2 * GIB_PAGES, 17).unwrap();
        let fresh = BuddyAllocator::new(base, 2 * GIB_PAGES + 10, 18, None).unwrap();
        assert_eq!(snapshot(&b), snapshot(&fresh));
        assert!(b.secs.len() <= 2, "whole sections have no bitmaps");
    }

    #[test]
    fn small_max_order_has_many_top_blocks_per_section() {
        let mut b = BuddyAllocator::new(0, 4 * GIB_PAGES, 10, None).unwrap();
        assert_eq!(b.free_blocks()[10], 4 * 256);
        assert_eq!(b.alloc(0).unwrap(), 0);
        assert_eq!(b.alloc(10).unwrap(), 1024);
        b.free(0, 0).unwrap();
        b.free(1024, 10).unwrap();
        assert_eq!(b.free_blocks()[10], 4 * 256);
        assert_eq!(b.iter_free_blocks()[..2], [(0, 10), (1024, 10)]);
    }

    #[test]
    fn errors_name_the_block_and_change_nothing() {
        let mut b = BuddyAllocator::new(0, 16, 4, Some(0)).unwrap();
        b.alloc(2).unwrap();
        b.alloc(2).unwrap();
        b.free(4, 0).unwrap();
        b.free(6, 1).unwrap();
        let before = snapshot(&b);
        let cases: [(u64, u8, &str); 8] = [
            (4, 0, "node 0: double free of order-0 block at pfn 0x4"),
            (7, 0, "node 0: free of order-0 block at pfn 0x7: lies in the free order-1 block at pfn 0x6 (double free?)"),
            (12, 1, "node 0: free of order-1 block at pfn 0xc: lies in the free order-3 block at pfn 0x8 (double free?)"),
            (4, 2, "node 0: free of order-2 block at pfn 0x4: contains a free order-0 block (double free?)"),
            (1, 1, "node 0: free order-1 block at pfn 0x1: pfn is not a multiple of 2"),
            (16, 0, "node 0: free order-0 block at pfn 0x10: outside frames [0x0, 0x10)"),
            (0, 5, "order must be in 0..4, got 5"),
            (u64::MAX, 0, "node 0: free order-0 block at pfn 0xffffffffffffffff: outside frames [0x0, 0x10)"),
        ];
        for (pfn, order, text) in cases {
            assert_eq!(message(b.free(pfn, order).unwrap_err()), text);
            assert_eq!(snapshot(&b), before);
        }
        let err = BuddyAllocator::new(0, 1024, 9, Some(1))
            .map(|mut b| {
                for _ in 0..1024 {
                    b.alloc(0).unwrap();
                }
                for pfn in (0..1024).step_by(2) {
                    b.free(pfn, 0).unwrap();
                }
                b.alloc(1).unwrap_err()
            })
            .unwrap();
        assert_eq!(
            err,
            Error::OutOfFrames {
                message: "node 1: no free 8 KiB block (free: 2 MiB in 512 blocks)".into(),
                size: 8192,
                node: Some(1)
            }
        );
    }

    #[test]
    fn alloc_at_and_freeing_part_of_a_block() {
        let mut b = BuddyAllocator::new(0, 64, 6, None).unwrap();
        b.alloc_at(20, 2).unwrap();
        assert_eq!(b.iter_free_blocks(), [(0, 4), (16, 2), (24, 3), (32, 5)]);
        assert_eq!(
            message(b.alloc_at(16, 3).unwrap_err()),
            "alloc_at order-3 block at pfn 0x10: not all of it is free"
        );
        let mut g = BuddyAllocator::new(0, 2 * GIB_PAGES, 18, None).unwrap();
        g.alloc_at(0, 18).unwrap();
        assert_eq!(
            message(g.alloc_at(0, 0).unwrap_err()),
            "alloc_at order-0 block at pfn 0x0: not free"
        );
        g.free(5, 0).unwrap();
        g.free(4, 0).unwrap();
        assert_eq!(g.iter_free_blocks()[0], (4, 1));
        assert_eq!(
            message(g.free(GIB_PAGES + 3, 0).unwrap_err()),
            "free of order-0 block at pfn 0x40003: lies in the free order-18 block at pfn 0x40000 (double free?)"
        );
    }

    #[test]
    fn constructor_validation() {
        let text = |r: Result<BuddyAllocator>| message(r.unwrap_err());
        assert_eq!(
            text(BuddyAllocator::new(0, 0, 18, None)),
            "npages must be > 0, got 0"
        );
        assert_eq!(
            text(BuddyAllocator::new(0, 10, 25, None)),
            "max_order must be in 0..24, got 25"
        );
        assert_eq!(
            text(BuddyAllocator::new((1 << 52) - 1, 2, 18, None)),
            "frames [0xfffffffffffff, 0x10000000000001) exceed the 64-bit physical space"
        );
    }

    /// Bytes of bitmap words held by split sections and the spare.
    fn bitmap_bytes(b: &BuddyAllocator) -> usize {
        let words = |s: &Section| -> usize {
            s.levels
                .iter()
                .flatten()
                .map(|l| l.0.iter().map(Vec::len).sum::<usize>())
                .sum()
        };
        8 * (b.secs.values().map(words).sum::<usize>() + b.spare.as_ref().map_or(0, words))
    }

    #[test]
    fn ten_thousand_small_blocks_in_64_gib_cost_one_section_of_bitmaps() {
        let mut b = BuddyAllocator::new(0, 64 * GIB_PAGES, 18, None).unwrap();
        for _ in 0..10_000 {
            b.alloc(0).unwrap();
        }
        assert_eq!(b.secs.len(), 1);
        assert!(bitmap_bytes(&b) < 80 << 10, "{}", bitmap_bytes(&b));
    }

    #[test]
    fn churn_at_the_edge_of_a_whole_section_reuses_the_spare_bitmaps() {
        let mut b = BuddyAllocator::new(0, 64 * GIB_PAGES, 18, None).unwrap();
        let blocks: Vec<(u64, u8)> = (0..5000u32)
            .map(|i| {
                let k = (i % 10) as u8;
                (b.alloc(k).unwrap(), k)
            })
            .collect();
        for (pfn, k) in blocks {
            b.free(pfn, k).unwrap();
        }
        assert_eq!(b.free_blocks()[18], 64);
        assert!(
            b.secs.is_empty() && b.spare.is_some(),
            "whole again, bitmaps kept as the spare"
        );
        let spare = bitmap_bytes(&b);
        for _ in 0..1000 {
            let p = b.alloc(0).unwrap();
            b.free(p, 0).unwrap();
            let p = b.alloc(9).unwrap();
            b.free(p, 9).unwrap();
        }
        assert_eq!(bitmap_bytes(&b), spare, "no new bitmaps per cycle");
    }

    #[test]
    fn worst_fragmentation_of_a_section_costs_bitmaps_not_blocks() {
        let mut b = BuddyAllocator::new(0, 64 * GIB_PAGES, 18, None).unwrap();
        b.alloc_at(0, 18).unwrap();
        for pfn in (0..GIB_PAGES).step_by(2) {
            b.free(pfn, 0).unwrap();
        }
        assert_eq!(b.free_blocks()[0], GIB_PAGES / 2);
        let words: usize = b
            .secs
            .values()
            .flat_map(|s| s.levels.iter().flatten())
            .map(|l| l.0.iter().map(Vec::len).sum::<usize>())
            .sum();
        assert!(words * 8 < 80 << 10, "{words} words");
    }

    // -- model check ------------------------------------------------------------------

    /// The free frames; the free-block set must be their unique coalesced decomposition.
    struct Model {
        lo: u64,
        hi: u64,
        top: u8,
        free: BTreeSet<u64>,
    }

    impl Model {
        fn all_free(&self, pfn: u64, order: u8) -> bool {
            pfn >= self.lo
                && pfn + (1 << order) <= self.hi
                && self.free.range(pfn..pfn + (1 << order)).count() == 1 << order
        }

        /// Maximal aligned free blocks, greedily from the lowest frame.
        fn blocks(&self) -> Vec<(u64, u8)> {
            let mut out = Vec::new();
            let mut it = self.free.iter().copied().peekable();
            while let Some(&p) = it.peek() {
                let k = (0..=self.top)
                    .rev()
                    .find(|&k| p % (1 << k) == 0 && self.all_free(p, k))
                    .expect("order 0 always fits");
                out.push((p, k));
                for _ in 0..1u64 << k {
                    it.next();
                }
            }
            out
        }

        fn alloc(&mut self, order: u8) -> Option<u64> {
            let blocks = self.blocks();
            let (p, _) = (order..=self.top)
                .find_map(|k| blocks.iter().find(|&&(_, bk)| bk == k))
                .copied()?;
            for f in p..p + (1 << order) {
                self.free.remove(&f);
            }
            Some(p)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u8),
        AllocAt(u64, u8),
        Free(u64, u8),
    }

    fn geometry() -> impl Strategy<Value = (u64, u64, u8)> {
        (
            prop::sample::select(vec![0u8, 1, 3, 5, 9, 12]),
            prop::sample::select(vec![0u64, GIB_PAGES, 5 * GIB_PAGES]),
            -300i64..300,
            1u64..2500,
        )
            .prop_map(|(top, sec, delta, npages)| ((sec as i64 + delta).max(0) as u64, npages, top))
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (0u8..6).prop_map(Op::Alloc),
                (0u64..3200, 0u8..5).prop_map(|(p, o)| Op::AllocAt(p, o)),
                (0u64..3200, 0u8..5).prop_map(|(p, o)| Op::Free(p, o)),
            ],
            1..120,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_a_set_of_free_frames((base, npages, top) in geometry(), ops in ops()) {
            let mut b = BuddyAllocator::new(base, npages, top, Some(3)).unwrap();
            let mut m = Model { lo: base, hi: base + npages, top, free: (base..base + npages).collect() };
            prop_assert_eq!(b.iter_free_blocks(), m.blocks());
            for op in ops {
                let before = snapshot(&b);
                match op {
                    Op::Alloc(order) => {
                        let order = order.min(top);
                        match m.alloc(order) {
                            Some(p) => prop_assert_eq!(b.alloc(order).unwrap(), p),
                            None => {
                                let oom = matches!(b.alloc(order), Err(Error::OutOfFrames { .. }));
                                prop_assert!(oom);
                                prop_assert_eq!(snapshot(&b), before);
                            }
                        }
                    }
                    Op::AllocAt(off, order) | Op::Free(off, order) if order > top => {
                        let _ = off;
                        let r = if matches!(op, Op::Free(..)) { b.free(base, order) } else { b.alloc_at(base, order) };
                        let config = matches!(r, Err(Error::Config(_)));
                        prop_assert!(config);
                        prop_assert_eq!(snapshot(&b), before);
                    }
                    Op::AllocAt(off, order) => {
                        let pfn = (base.saturating_sub(50) + off) >> order << order;
                        let r = b.alloc_at(pfn, order);
                        if m.all_free(pfn, order) {
                            r.unwrap();
                            for f in pfn..pfn + (1 << order) {
                                m.free.remove(&f);
                            }
                        } else {
                            let inside = pfn >= base && pfn + (1 << order) <= base + npages;
                            let ok = matches!(r, Err(Error::Mapping(_)) if inside) || matches!(r, Err(Error::Address(_)) if !inside);
                            prop_assert!(ok);
                            prop_assert_eq!(snapshot(&b), before);
                        }
                    }
                    Op::Free(off, order) => {
                        let pfn = base.saturating_sub(50) + off;
                        let r = b.free(pfn, order);
                        let aligned = pfn % (1 << order) == 0;
                        let inside = pfn >= base && pfn + (1 << order) <= base + npages;
                        let none_free = m.free.range(pfn..pfn + (1 << order)).next().is_none();
                        if aligned && inside && none_free {
                            r.unwrap();
                            m.free.extend(pfn..pfn + (1 << order));
                        } else {
                            let ok = if !aligned || !inside { matches!(r, Err(Error::Address(_))) } else { matches!(r, Err(Error::Mapping(_))) };
                            prop_assert!(ok, "{:?}", r);
                            prop_assert_eq!(snapshot(&b), before);
                        }
                    }
                }
                let blocks = m.blocks();
                prop_assert_eq!(b.iter_free_blocks(), blocks.clone());
                let mut counts = vec![0u64; usize::from(top) + 1];
                for &(_, k) in &blocks {
                    counts[usize::from(k)] += 1;
                }
                prop_assert_eq!(b.free_blocks(), counts);
                prop_assert_eq!(b.free_pages(), m.free.len() as u64);
                for f in base.saturating_sub(2)..(base + npages + 2).min(base + 40) {
                    prop_assert_eq!(b.is_free(f), m.free.contains(&f));
                }
            }
        }
    }
}
