//! TLB prefetchers: which pages to fetch translations for after a demand miss.
//!
//! A prefetcher only predicts; the MMU probe-walks each target, drops what
//! is unmapped and installs what it finds. Predictions are page-aligned
//! virtual addresses below 2^64.

use std::fmt::Debug;

use crate::error::{Error, Result};

/// Which prefetcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrefetchKind {
    /// No prefetching.
    None,
    /// On a miss, the next `degree` pages.
    NextPage,
    /// After two equal strides in the miss stream, `degree` pages ahead along it.
    Stride,
}

impl PrefetchKind {
    /// `"none"`, `"next_page"` or `"stride"`.
    pub fn parse(name: &str) -> Option<PrefetchKind> {
        match name {
            "none" => Some(PrefetchKind::None),
            "next_page" => Some(PrefetchKind::NextPage),
            "stride" => Some(PrefetchKind::Stride),
            _ => None,
        }
    }
}

/// When predictions are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrefetchMode {
    /// Walk and install right after the miss.
    Immediate,
    /// Queue until `Mmu::process_prefetch`.
    Deferred,
}

impl PrefetchMode {
    /// `"immediate"` or `"deferred"`.
    pub fn parse(name: &str) -> Option<PrefetchMode> {
        match name {
            "immediate" => Some(PrefetchMode::Immediate),
            "deferred" => Some(PrefetchMode::Deferred),
            _ => None,
        }
    }
}

/// A prefetcher's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// The prefetcher.
    pub kind: PrefetchKind,
    /// Pages predicted per trigger.
    pub degree: u32,
    /// Immediate or deferred.
    pub mode: PrefetchMode,
    /// Bound of the deferred queue (the oldest requests are dropped).
    pub queue_limit: usize,
}

/// Most pages one miss may prefetch (Python's `MAX_PREFETCH_DEGREE`: one page table's worth).
pub const MAX_DEGREE: u32 = 512;

/// Longest deferred prefetch queue (Python's `MAX_PREFETCH_QUEUE`).
pub const MAX_QUEUE: usize = 1 << 20;

impl PrefetchConfig {
    /// A validated configuration.
    pub fn new(
        kind: PrefetchKind,
        degree: u32,
        mode: PrefetchMode,
        queue_limit: usize,
    ) -> Result<Self> {
        if degree == 0 {
            return Err(Error::Config(format!(
                "prefetch degree must be a positive integer, got {degree}"
            )));
        }
        if queue_limit == 0 {
            return Err(Error::Config(format!(
                "prefetch queue_limit must be a positive integer, got {queue_limit}"
            )));
        }
        if degree > MAX_DEGREE {
            return Err(Error::Config(format!(
                "prefetch degree must be at most {MAX_DEGREE}, got {degree}"
            )));
        }
        if queue_limit > MAX_QUEUE {
            return Err(Error::Config(format!(
                "prefetch queue_limit must be at most {MAX_QUEUE}, got {queue_limit}"
            )));
        }
        Ok(PrefetchConfig {
            kind,
            degree,
            mode,
            queue_limit,
        })
    }

    /// The prefetcher this configuration names, or `None` for [`PrefetchKind::None`].
    pub fn build(&self) -> Option<Box<dyn Prefetcher>> {
        match self.kind {
            PrefetchKind::None => None,
            PrefetchKind::NextPage => Some(Box::new(NextPage::new(self.degree))),
            PrefetchKind::Stride => Some(Box::new(Stride::new(self.degree))),
        }
    }
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            kind: PrefetchKind::None,
            degree: 1,
            mode: PrefetchMode::Immediate,
            queue_limit: 1024,
        }
    }
}

/// Given a demand miss, the pages worth prefetching.
pub trait Prefetcher: Send + Sync + Debug {
    /// Append the predictions for a demand miss at `va` the walk resolved
    /// to a page of `page_size` bytes.
    fn on_miss(&mut self, va: u64, page_size: u64, out: &mut Vec<u64>);
    /// Forget the history (context switch).
    fn reset(&mut self);
    /// The history, for inspection: `(last vpn, stride)` for a stride
    /// prefetcher, `None` for a stateless one.
    fn history(&self) -> Option<(Option<u64>, i64)> {
        None
    }
}

const VA_LIMIT: u128 = 1 << 64;

/// The next `degree` pages after a miss.
#[derive(Clone, Copy, Debug)]
pub struct NextPage {
    degree: u32,
}

impl NextPage {
    /// A next-page prefetcher.
    pub fn new(degree: u32) -> Self {
        NextPage { degree }
    }
}

impl Prefetcher for NextPage {
    fn on_miss(&mut self, va: u64, page_size: u64, out: &mut Vec<u64>) {
        let base = (va & !(page_size - 1)) as u128;
        for k in 1..=self.degree as u128 {
            let target = base + k * page_size as u128;
            if target >= VA_LIMIT {
                break;
            }
            out.push(target as u64);
        }
    }

    fn reset(&mut self) {}
}

/// A one-entry reference prediction table over 4 KiB page numbers (a TLB
/// sees no program counter): after two consecutive misses with the same
/// non-zero stride, `degree` pages ahead along it.
#[derive(Clone, Copy, Debug)]
pub struct Stride {
    degree: u32,
    last_vpn: Option<u64>,
    stride: i64,
}

impl Stride {
    /// A stride prefetcher with no history.
    pub fn new(degree: u32) -> Self {
        Stride {
            degree,
            last_vpn: None,
            stride: 0,
        }
    }
}

impl Prefetcher for Stride {
    fn on_miss(&mut self, va: u64, _page_size: u64, out: &mut Vec<u64>) {
        let vpn = va >> 12;
        if let Some(last) = self.last_vpn {
            let stride = vpn as i64 - last as i64;
            if stride != 0 && stride == self.stride {
                for k in 1..=self.degree as i128 {
                    let target = (vpn as i128 + k * stride as i128) << 12;
                    if (0..VA_LIMIT as i128).contains(&target) {
                        out.push(target as u64);
                    }
                }
            }
            self.stride = stride;
        }
        self.last_vpn = Some(vpn);
    }

    fn reset(&mut self) {
        self.last_vpn = None;
        self.stride = 0;
    }

    fn history(&self) -> Option<(Option<u64>, i64)> {
        Some((self.last_vpn, self.stride))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_stops_at_the_top_of_the_address_space() {
        let mut p = NextPage::new(3);
        let mut out = Vec::new();
        p.on_miss(0x1234, 4096, &mut out);
        assert_eq!(out, vec![0x2000, 0x3000, 0x4000]);
        out.clear();
        p.on_miss(u64::MAX - 4096, 4096, &mut out);
        assert_eq!(out, vec![u64::MAX - 4095]);
    }

    #[test]
    fn stride_needs_two_equal_strides() {
        let mut p = Stride::new(2);
        let mut out = Vec::new();
        for vpn in [10u64, 13, 16] {
            p.on_miss(vpn << 12, 4096, &mut out);
        }
        assert_eq!(out, vec![19 << 12, 22 << 12]);
        out.clear();
        for vpn in [12u64, 8] {
            p.on_miss(vpn << 12, 4096, &mut out);
        }
        assert_eq!(out, vec![4 << 12, 0]);
        out.clear();
        p.on_miss(4 << 12, 4096, &mut out);
        assert_eq!(out, vec![0]); // page -4 would be negative: dropped
        p.reset();
        assert_eq!(p.history(), Some((None, 0)));
    }
}
