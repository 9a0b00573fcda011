//! Page-walk cache: recently used non-leaf PTEs, per upper level.
//!
//! The walk itself always reads the real tables (so it stays exact); the
//! PWC decides how many of those reads a hardware walker would have skipped.
//! That is sound because the PWC is flushed whenever its ASID's tables
//! change (shootdown or explicit invalidation), so a PWC hit always holds
//! the value memory holds.

use rustc_hash::FxHashMap;

use crate::error::{Error, Result};

/// A page-walk cache's size and cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PwcConfig {
    /// LRU slots per upper level.
    pub entries: usize,
    /// Cycles per PWC lookup.
    pub latency: u64,
}

/// Most entries per level of a page-walk cache (Python's `MAX_PWC_ENTRIES`).
pub const MAX_ENTRIES: usize = 1 << 16;

impl PwcConfig {
    /// A validated configuration.
    pub fn new(entries: usize, latency: u64) -> Result<PwcConfig> {
        if entries == 0 {
            return Err(Error::Config(format!(
                "pwc entries must be a positive integer, got {entries}"
            )));
        }
        if entries > MAX_ENTRIES {
            return Err(Error::Config(format!(
                "pwc entries must be at most {MAX_ENTRIES}, got {entries}"
            )));
        }
        Ok(PwcConfig { entries, latency })
    }
}

impl Default for PwcConfig {
    fn default() -> Self {
        PwcConfig {
            entries: 32,
            latency: 1,
        }
    }
}

/// A tag: the ASID and the VA prefix above a level.
pub type PwcTag = (u32, u64);

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Node {
    tag: PwcTag,
    prev: u32,
    next: u32,
}

/// An ordered set of tags, least recently used first (Python's OrderedDict use).
#[derive(Clone, Debug, Default)]
struct LruSet {
    index: FxHashMap<PwcTag, u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
}

impl LruSet {
    fn new() -> Self {
        LruSet {
            head: NIL,
            tail: NIL,
            ..Default::default()
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.nodes[i as usize].prev, self.nodes[i as usize].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_back(&mut self, i: u32) {
        self.nodes[i as usize].prev = self.tail;
        self.nodes[i as usize].next = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.nodes[self.tail as usize].next = i;
        }
        self.tail = i;
    }

    /// Move `tag` to the most recent end if present; true if it was.
    fn touch(&mut self, tag: PwcTag) -> bool {
        match self.index.get(&tag) {
            Some(&i) => {
                self.unlink(i);
                self.push_back(i);
                true
            }
            None => false,
        }
    }

    /// Insert or refresh `tag` at the most recent end.
    fn put(&mut self, tag: PwcTag) {
        if self.touch(tag) {
            return;
        }
        let node = Node {
            tag,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(tag, i);
        self.push_back(i);
    }

    fn remove_index(&mut self, i: u32) {
        self.unlink(i);
        self.index.remove(&self.nodes[i as usize].tag);
        self.free.push(i);
    }

    fn pop_front(&mut self) {
        if self.head != NIL {
            self.remove_index(self.head);
        }
    }

    fn clear(&mut self) {
        *self = LruSet::new();
    }

    fn retain(&mut self, keep: impl Fn(&PwcTag) -> bool) {
        let mut i = self.head;
        while i != NIL {
            let next = self.nodes[i as usize].next;
            if !keep(&self.nodes[i as usize].tag) {
                self.remove_index(i);
            }
            i = next;
        }
    }

    fn order(&self) -> Vec<PwcTag> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = self.head;
        while i != NIL {
            out.push(self.nodes[i as usize].tag);
            i = self.nodes[i as usize].next;
        }
        out
    }
}

/// Per level 1 .. top, an LRU set of `(asid, va prefix)` tags.
#[derive(Clone, Debug)]
pub struct PageWalkCache {
    config: PwcConfig,
    levels: u8,
    /// `caches[k - 1]` is level k's.
    caches: Vec<LruSet>,
    /// Lookups since construction (never reset).
    pub lookups: u64,
    /// Lookups that skipped reads (never reset).
    pub hits: u64,
}

impl PageWalkCache {
    /// An empty cache for tables of `levels` levels.
    pub fn new(config: PwcConfig, levels: u8) -> PageWalkCache {
        PageWalkCache {
            config,
            levels,
            caches: (1..levels).map(|_| LruSet::new()).collect(),
            lookups: 0,
            hits: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> PwcConfig {
        self.config
    }

    /// Levels of the tables it caches.
    pub fn levels(&self) -> u8 {
        self.levels
    }

    fn tag(va: u64, asid: u32, level: u8) -> PwcTag {
        (asid, va >> (12 + 9 * level as u32))
    }

    /// Table reads a walk of `va` ending at `stop_level` can skip, then fill.
    ///
    /// The deepest cached non-leaf entry at level k > `stop_level` lets the
    /// walker start at level k-1, skipping the reads of levels top..k.
    pub fn skipped_refs(&mut self, va: u64, asid: u32, stop_level: u8) -> u32 {
        let top = self.levels - 1;
        self.lookups += 1;
        let mut skip = 0u32;
        for k in stop_level + 1..=top {
            if self.caches[k as usize - 1].touch(Self::tag(va, asid, k)) {
                skip = (top - k + 1) as u32;
                break;
            }
        }
        if skip != 0 {
            self.hits += 1;
        }
        for k in stop_level + 1..=top {
            let cache = &mut self.caches[k as usize - 1];
            cache.put(Self::tag(va, asid, k));
            if cache.len() > self.config.entries {
                cache.pop_front();
            }
        }
        skip
    }

    /// Drop every entry (of one ASID, or all).
    pub fn flush(&mut self, asid: Option<u32>) {
        for cache in &mut self.caches {
            match asid {
                None => cache.clear(),
                Some(a) => cache.retain(|t| t.0 != a),
            }
        }
    }

    /// Level `level`'s tags, least recently used first.
    pub fn order(&self, level: u8) -> Vec<PwcTag> {
        match level.checked_sub(1) {
            Some(i) if (i as usize) < self.caches.len() => self.caches[i as usize].order(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_order_and_eviction() {
        let mut pwc = PageWalkCache::new(PwcConfig::new(2, 1).unwrap(), 4);
        let va = |pde: u64| 0x40_0000 + (pde << 21);
        assert_eq!(pwc.skipped_refs(va(0), 0, 0), 0);
        assert_eq!(pwc.skipped_refs(va(0) + 4096, 0, 0), 3); // PDE cached: skip top..1
        assert_eq!(pwc.skipped_refs(va(1), 0, 0), 2); // PDPTE cached
        assert_eq!(pwc.skipped_refs(va(2), 0, 0), 2);
        // Level 1 holds the two most recent PDE tags.
        assert_eq!(pwc.order(1), vec![(0, va(1) >> 21), (0, va(2) >> 21)]);
        assert_eq!(pwc.skipped_refs(va(0), 1, 0), 0); // another ASID
        pwc.flush(Some(1));
        assert_eq!(pwc.order(3), vec![(0, 0)]);
        assert_eq!((pwc.lookups, pwc.hits), (5, 3));
        pwc.flush(None);
        assert!(pwc.order(1).is_empty() && pwc.order(2).is_empty());
    }
}
