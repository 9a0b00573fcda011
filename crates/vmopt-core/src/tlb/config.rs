//! Geometry and policy of one TLB array.

use crate::error::{Error, Result};

/// Page sizes a TLB array may hold (4 KiB, 2 MiB, 1 GiB).
pub const PAGE_SIZES: [u64; 3] = [4096, 2 << 20, 1 << 30];

/// Most entries one array may have (Python's `MAX_TLB_ENTRIES`; real STLBs have a few thousand).
pub const MAX_ENTRIES: u32 = 1 << 20;

/// Most ways one array may have (Python's `MAX_TLB_WAYS`; a lookup scans every way of a set).
pub const MAX_WAYS: u32 = 1 << 12;

/// Which way of a full set a fill replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Least recently used: a stamp per way, refreshed on hits and fills.
    Lru,
    /// First in, first out: a stamp per way, set on fills only.
    Fifo,
    /// A seeded xorshift64 draw modulo the ways.
    Random,
    /// Tree pseudo-LRU: `ways - 1` node bits per set.
    Plru,
}

impl Policy {
    /// `"lru"`, `"fifo"`, `"random"` or `"plru"`.
    pub fn parse(name: &str) -> Option<Policy> {
        match name {
            "lru" => Some(Policy::Lru),
            "fifo" => Some(Policy::Fifo),
            "random" => Some(Policy::Random),
            "plru" => Some(Policy::Plru),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Fifo => "fifo",
            Policy::Random => "random",
            Policy::Plru => "plru",
        }
    }
}

/// One TLB array: `entries / ways` sets (a power of two), indexed by the
/// virtual page number (in units of the entry's page size) modulo the sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlbConfig {
    /// Entries in the array.
    pub entries: u32,
    /// Ways per set (`ways == entries` is fully associative).
    pub ways: u32,
    /// Replacement policy.
    pub policy: Policy,
    /// Page sizes the array holds, ascending.
    pub page_sizes: Vec<u64>,
    /// Lookup cost in cycles.
    pub latency: u64,
    /// Name, for statistics.
    pub name: String,
    /// Seed of the random policy (Python's seed modulo 2^64).
    pub seed: u64,
}

impl TlbConfig {
    /// A validated configuration (the checks and messages of Python's `TlbConfig`).
    pub fn new(
        entries: u32,
        ways: u32,
        policy: Policy,
        page_sizes: &[u64],
        latency: u64,
        name: &str,
        seed: u64,
    ) -> Result<TlbConfig> {
        if entries == 0 {
            return Err(Error::Config(format!(
                "entries must be a positive integer, got {entries}"
            )));
        }
        if ways == 0 {
            return Err(Error::Config(format!(
                "ways must be a positive integer, got {ways}"
            )));
        }
        if entries > MAX_ENTRIES {
            return Err(Error::Config(format!(
                "entries must be at most {MAX_ENTRIES}, got {entries}"
            )));
        }
        if ways > MAX_WAYS {
            return Err(Error::Config(format!(
                "ways must be at most {MAX_WAYS}, got {ways}"
            )));
        }
        if entries % ways != 0 {
            return Err(Error::Config(format!(
                "entries ({entries}) must be a multiple of ways ({ways})"
            )));
        }
        let sets = entries / ways;
        if !sets.is_power_of_two() {
            return Err(Error::Config(format!(
                "sets = entries / ways = {sets} must be a power of two (entries={entries}, ways={ways})"
            )));
        }
        if policy == Policy::Plru && !ways.is_power_of_two() {
            return Err(Error::Config(format!(
                "tree PLRU needs a power-of-two number of ways, got {ways}"
            )));
        }
        let mut sizes = page_sizes.to_vec();
        sizes.sort_unstable();
        let distinct = sizes.windows(2).all(|w| w[0] != w[1]);
        if sizes.is_empty() || !distinct || sizes.iter().any(|s| !PAGE_SIZES.contains(s)) {
            return Err(Error::Config(format!(
                "page_sizes must be distinct values of 4096, 2 MiB, 1 GiB; got {page_sizes:?}"
            )));
        }
        if name.is_empty() {
            return Err(Error::Config(
                "name must be a non-empty string, got ''".into(),
            ));
        }
        Ok(TlbConfig {
            entries,
            ways,
            policy,
            page_sizes: sizes,
            latency,
            name: name.to_string(),
            seed,
        })
    }

    /// Number of sets.
    pub fn sets(&self) -> u32 {
        self.entries / self.ways
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_value() {
        let bad = |e, w, p, s: &[u64]| TlbConfig::new(e, w, p, s, 1, "l1", 0).unwrap_err();
        assert!(bad(12, 4, Policy::Lru, &[4096]).to_string().contains("= 3"));
        assert!(bad(10, 4, Policy::Lru, &[4096])
            .to_string()
            .contains("(10)"));
        assert!(bad(6, 3, Policy::Plru, &[4096]).to_string().contains('3'));
        assert!(bad(16, 4, Policy::Lru, &[8192])
            .to_string()
            .contains("8192"));
        assert!(bad(16, 4, Policy::Lru, &[4096, 4096])
            .to_string()
            .contains("distinct"));
        let ok = TlbConfig::new(16, 4, Policy::Fifo, &[2 << 20, 4096], 3, "x", 9).unwrap();
        assert_eq!(ok.page_sizes, vec![4096, 2 << 20]);
        assert_eq!(ok.sets(), 4);
        assert_eq!(Policy::parse("plru"), Some(Policy::Plru));
        assert_eq!(Policy::parse("mru"), None);
    }
}
