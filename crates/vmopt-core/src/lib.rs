//! The memory-system engine of vmopt.
//!
//! One home for every piece of state a virtual machine's memory system has:
//! guest physical memory and its frame allocators ([`memory`]), page tables
//! in real architectural formats and their walks ([`paging`]), TLB arrays,
//! the page-walk cache and prefetchers ([`tlb`]), and the per-vCPU MMU with
//! its scalar and batch translate loops ([`mmu`]).
//!
//! Layers call only downward: `memory` < `paging` < `tlb` < `mmu`. The crate
//! has no Python in it; `vmopt-py` binds it as `vmopt._core`, and a Rust VMM
//! can embed it directly.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod dumps;
pub mod error;
pub mod memory;
pub mod mmu;
pub mod mmu_nested;
pub mod pages;
pub mod paging;
pub mod tlb;
pub mod traces;

pub use error::{Error, Result};
