//! Binding of vmopt-core's `paging` layer.

use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}

/// A page-table format (a core `Format`).
#[pyclass(name = "Format", module = "vmopt._core", frozen)]
pub struct PyFormat {
    pub inner: std::sync::Arc<dyn vmopt_core::paging::Format>,
}

/// An address space (a core `PageTable`), shared with the MMUs built on it.
#[pyclass(name = "PageTable", module = "vmopt._core", frozen)]
pub struct PyPageTable {
    pub inner: std::sync::Arc<vmopt_core::paging::PageTable>,
}
