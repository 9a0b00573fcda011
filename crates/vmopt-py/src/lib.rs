//! `vmopt._core`: the PyO3 binding of vmopt-core.
//!
//! A thin layer: each Python-visible class wraps one core object in an
//! `Arc`, converts arguments, releases the GIL around long loops, and turns
//! core errors (and panics) into `vmopt.errors` exceptions. State and logic
//! live in vmopt-core; the public Python API lives in `vmopt`.
#![deny(unsafe_op_in_unsafe_fn)]

use pyo3::prelude::*;

mod dumps;
mod errors;
mod memory;
mod mmu;
mod pages;
mod paging;
mod tlb;
mod traces;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    memory::register(m)?;
    paging::register(m)?;
    tlb::register(m)?;
    mmu::register(m)?;
    pages::register(m)?;
    traces::register(m)?;
    dumps::register(m)?;
    Ok(())
}
