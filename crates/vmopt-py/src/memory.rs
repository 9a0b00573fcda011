//! Binding of vmopt-core's `memory` layer.

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}

/// Guest physical memory (a core `PhysMem`), shared with the page tables built on it.
#[pyclass(name = "PhysMem", module = "vmopt._core", frozen)]
pub struct PyPhysMem {
    pub inner: std::sync::Arc<vmopt_core::memory::PhysMem>,
}
