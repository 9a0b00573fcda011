//! Binding of vmopt-core's `pages` helpers: a guest's first-touch bookkeeping over arrays.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use vmopt_core::pages::cache_misses;

use crate::errors::guarded;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(page_cache_misses, m)?)?;
    Ok(())
}

/// Indices (uint32) of the addresses whose page (`va >> shift`) the
/// direct-mapped `cache` of page numbers does not hold; without the GIL.
#[pyfunction]
fn page_cache_misses<'py>(
    py: Python<'py>,
    vas: PyReadonlyArray1<'py, u64>,
    shift: u32,
    cache: PyReadonlyArray1<'py, u64>,
) -> PyResult<Bound<'py, PyArray1<u32>>> {
    let vas = vas.as_slice()?;
    let cache = cache.as_slice()?;
    let mut out = Vec::new();
    py.allow_threads(|| guarded(|| cache_misses(vas, shift, cache, &mut out)))?;
    Ok(out.into_pyarray(py))
}
