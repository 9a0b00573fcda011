//! TLB arrays and levels, the page-walk cache and prefetchers.
//!
//! Exact ports of the Python reference (`tests/reference/tlb`): the same
//! replacement state and choices, the same counters, the same flush
//! semantics and return counts. The MMU ([`crate::mmu`]) composes them.

pub mod array;
pub mod config;
pub mod level;
pub mod prefetch;
pub mod pwc;
pub mod rng;
pub mod stats;

pub use array::{TlbArray, TlbEntry, GLOBAL_ASID};
pub use config::{Policy, TlbConfig, PAGE_SIZES};
pub use level::{Hit, MemoNeeds, TlbLevel};
pub use prefetch::{NextPage, PrefetchConfig, PrefetchKind, PrefetchMode, Prefetcher, Stride};
pub use pwc::{PageWalkCache, PwcConfig};
pub use rng::XorShift64;
pub use stats::{MmuStats, PrefetchStats, TlbStats};
