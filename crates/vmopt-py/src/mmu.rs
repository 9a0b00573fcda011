//! Binding of vmopt-core's `mmu` layer as `vmopt._core.Mmu`.
//!
//! A fault that a demand-paging handler may resolve (a not-present fault of
//! the miss walk) is raised as a `PageFault` whose public `restartable`
//! attribute is True; the Python wrapper then runs the handler with no core
//! lock held and calls `translate_restart`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use numpy::{PyReadonlyArray1, PyReadwriteArray1};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBool, PyString};
use vmopt_core::error::{Error, Result};
use vmopt_core::mmu::{Mmu, MmuConfig, PageInstall, StagedStop, Stop};
use vmopt_core::mmu_nested::NestedConfig;
use vmopt_core::paging::{Access, Perm};
use vmopt_core::tlb::{PrefetchConfig, PrefetchKind, PrefetchMode, PwcConfig};

use crate::errors::{guarded, panic_to_py, to_py};
use crate::paging::{PyPageTable, PyTwoStage};
use crate::tlb::{config_from, ConfigTuple, PyPageWalkCache, PyPrefetcher, PyTlbLevel};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMmu>()?;
    Ok(())
}

/// `'r'`, `'w'` or `'x'`; anything else is the reference's ConfigError.
fn access_of(access: &Bound<'_, PyAny>) -> PyResult<Access> {
    if let Ok(s) = access.downcast::<PyString>() {
        match s.to_str()? {
            "r" => return Ok(Access::Read),
            "w" => return Ok(Access::Write),
            "x" => return Ok(Access::Exec),
            _ => {}
        }
    }
    let text = access.repr()?.to_string();
    Err(to_py(Error::Config(format!(
        "access must be 'r', 'w' or 'x', got {text}"
    ))))
}

/// A bool, or anything equal to one the way the reference's dict lookup sees it (0, 1, 1.0).
fn user_of(user: &Bound<'_, PyAny>) -> PyResult<bool> {
    if let Ok(b) = user.downcast::<PyBool>() {
        return Ok(b.is_true());
    }
    if let Ok(v) = user.extract::<f64>() {
        if v == 0.0 || v == 1.0 {
            return Ok(v == 1.0);
        }
    }
    let text = user.repr()?.to_string();
    Err(to_py(Error::Config(format!(
        "user must be a bool, got {text}"
    ))))
}

/// The page an install call describes (the arguments after `va, access, user`).
fn page_of<'a>(
    va: u64,
    size: u64,
    nodes: &'a [u32],
    data: Option<&'a [u8]>,
    perms: u8,
    user: bool,
) -> PageInstall<'a> {
    PageInstall {
        va,
        size,
        nodes,
        data,
        perms: Perm(perms),
        user,
    }
}

/// `translate_or_install`'s answer: the pa, and `(frame, node)` if the page went in.
type Resolved = (u64, Option<(u64, u32)>);

/// How a group of staged pages goes in: `(size, nodes, perms, page_user)`.
type StagedGroup = (u64, Vec<u32>, u8, bool);

/// `translate_batch_staged`'s answer: addresses done, the stopping exception,
/// the staged page that found no room, whether the last install fell back,
/// and the slots, frames and nodes of the pages installed.
type StagedAnswer = (
    usize,
    Option<PyObject>,
    Option<usize>,
    bool,
    Vec<usize>,
    Vec<u64>,
    Vec<u32>,
);

/// The exception of a stopped translation, marked restartable when it is.
fn stop_to_py(py: Python<'_>, stop: Stop) -> PyErr {
    let err = to_py(stop.error);
    if stop.restartable {
        // Best effort: without the mark the fault is simply not demand-paged.
        let _ = err.value(py).setattr("restartable", true);
    }
    err
}

/// Run one of the core's batch loops without the GIL: `(done, the stopping
/// exception or None)`, a panic as a clear VmoptError.
fn batch_loop(
    py: Python<'_>,
    run: impl FnOnce() -> (usize, Option<Stop>) + Send,
) -> PyResult<(usize, Option<PyObject>)> {
    match py.allow_threads(|| catch_unwind(AssertUnwindSafe(run))) {
        Ok((done, None)) => Ok((done, None)),
        Ok((done, Some(stop))) => Ok((done, Some(stop_to_py(py, stop).into_value(py).into_any()))),
        Err(panic) => Err(panic_to_py(panic)),
    }
}

fn prefetch_from(t: &(String, u32, String, usize)) -> Result<PrefetchConfig> {
    let kind = PrefetchKind::parse(&t.0)
        .ok_or_else(|| Error::Config(format!("unknown prefetcher '{}'", t.0)))?;
    let mode = PrefetchMode::parse(&t.2).ok_or_else(|| {
        Error::Config(format!(
            "prefetch mode must be 'immediate' or 'deferred', got '{}'",
            t.2
        ))
    })?;
    PrefetchConfig::new(kind, t.1, mode, t.3)
}

/// The MMU of one vCPU (a core `Mmu`).
#[pyclass(name = "Mmu", module = "vmopt._core", frozen)]
pub struct PyMmu {
    inner: Arc<Mmu>,
}

impl PyMmu {
    fn va_of(&self, va: &Bound<'_, PyAny>, access: Access) -> PyResult<u64> {
        if let Ok(v) = va.extract::<u64>() {
            return Ok(v);
        }
        if va.downcast::<pyo3::types::PyInt>().is_ok() {
            // An int outside [0, 2^64): it misses everywhere, then the walk refuses it.
            self.inner.count_unwalkable(access);
        }
        let text = va.repr()?.to_string();
        Err(to_py(Error::Address(format!(
            "virtual address must be a 64-bit unsigned int, got {text}"
        ))))
    }
}

#[pymethods]
impl PyMmu {
    /// An MMU over `table`; see `vmopt.Mmu` for the arguments. `itlb`: the
    /// arrays of the ITLB of a split L1 (`levels[0]` is then the DTLB).
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (table, levels, prefetch, pwc, asid, shootdown, walk_ref_cycles, itlb=None))]
    fn new(
        table: PyRef<'_, PyPageTable>,
        levels: Vec<Vec<ConfigTuple>>,
        prefetch: (String, u32, String, usize),
        pwc: Option<(usize, u64)>,
        asid: u32,
        shootdown: bool,
        walk_ref_cycles: u64,
        itlb: Option<Vec<ConfigTuple>>,
    ) -> PyResult<Self> {
        let table = table.inner.clone();
        guarded(|| {
            let configs =
                |lv: &Vec<ConfigTuple>| lv.iter().map(config_from).collect::<Result<Vec<_>>>();
            let levels = levels.iter().map(configs).collect::<Result<Vec<_>>>()?;
            let itlb = itlb.as_ref().map(configs).transpose()?;
            let pwc = pwc.map(|(e, l)| PwcConfig::new(e, l)).transpose()?;
            let config = MmuConfig {
                levels,
                itlb,
                prefetch: prefetch_from(&prefetch)?,
                pwc,
                asid,
                shootdown,
                walk_ref_cycles,
            };
            Ok(PyMmu {
                inner: Mmu::new(table, config)?,
            })
        })
    }

    /// The physical address of `va`; raises `PageFault` (or the walk's error).
    fn translate(
        &self,
        py: Python<'_>,
        va: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let access = access_of(access)?;
        let user = user_of(user)?;
        let va = self.va_of(va, access)?;
        match catch_unwind(AssertUnwindSafe(|| self.inner.translate(va, access, user))) {
            Ok(Ok(pa)) => Ok(pa),
            Ok(Err(stop)) => Err(stop_to_py(py, stop)),
            Err(panic) => Err(panic_to_py(panic)),
        }
    }

    /// Re-walk after a fault handler mapped the page (counts a demand fault).
    fn translate_restart(
        &self,
        va: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let access = access_of(access)?;
        let user = user_of(user)?;
        let va = va.extract::<u64>().map_err(|_| {
            to_py(Error::Address(format!(
                "virtual address must be a 64-bit unsigned int, got {}",
                va.repr().map(|r| r.to_string()).unwrap_or_default()
            )))
        })?;
        guarded(|| self.inner.translate_restart(va, access, user))
    }

    /// Translate `vas` into `out` in order, without the GIL; `(done, exception or None)`.
    fn translate_batch(
        &self,
        py: Python<'_>,
        vas: PyReadonlyArray1<'_, u64>,
        mut out: PyReadwriteArray1<'_, u64>,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
    ) -> PyResult<(usize, Option<PyObject>)> {
        let access = access_of(access)?;
        let user = user_of(user)?;
        let vas = vas.as_slice()?;
        let out = out.as_slice_mut()?;
        let inner = &self.inner;
        batch_loop(py, || inner.translate_batch(vas, out, access, user))
    }

    /// `translate_batch`, resolving restartable faults inside the staged
    /// pages by installing them (contents fetched ahead) in the same call.
    /// The pages come column by column: page `k` starts at `page_vas[k]`,
    /// holds `data[k]` and goes in as `groups[group[k]]`. Answers `(done,
    /// exception or None, slot of a page with no room or None, fell back,
    /// slots, frames, nodes of the pages installed)`: "fell back" stops the
    /// batch after an install that missed the first of its nodes.
    #[allow(clippy::too_many_arguments)]
    fn translate_batch_staged(
        &self,
        py: Python<'_>,
        vas: PyReadonlyArray1<'_, u64>,
        mut out: PyReadwriteArray1<'_, u64>,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
        page_vas: Vec<u64>,
        data: Vec<Option<PyBackedBytes>>,
        group: Vec<usize>,
        groups: Vec<StagedGroup>,
    ) -> PyResult<StagedAnswer> {
        let access = access_of(access)?;
        let user = user_of(user)?;
        if data.len() != page_vas.len() || group.len() != page_vas.len() {
            return Err(to_py(Error::Config(format!(
                "staged pages need as many data and group entries as page addresses ({}), got {} and {}",
                page_vas.len(),
                data.len(),
                group.len()
            ))));
        }
        if let Some(&g) = group.iter().find(|&&g| g >= groups.len()) {
            return Err(to_py(Error::Config(format!(
                "staged page group {g} is not one of the {} groups",
                groups.len()
            ))));
        }
        let vas = vas.as_slice()?;
        let out = out.as_slice_mut()?;
        let staged: Vec<PageInstall<'_>> = (0..page_vas.len())
            .map(|k| {
                let (size, nodes, perms, page_user) = &groups[group[k]];
                page_of(
                    page_vas[k],
                    *size,
                    nodes,
                    data[k].as_deref(),
                    *perms,
                    *page_user,
                )
            })
            .collect();
        let inner = &self.inner;
        let mut placed = Vec::new();
        let result = py.allow_threads(|| {
            catch_unwind(AssertUnwindSafe(|| {
                inner.translate_batch_staged(vas, out, access, user, &staged, &mut placed)
            }))
        });
        let (done, stop) = result.map_err(panic_to_py)?;
        let (mut slots, mut frames, mut nodes) = (
            Vec::with_capacity(placed.len()),
            Vec::with_capacity(placed.len()),
            Vec::with_capacity(placed.len()),
        );
        for (slot, frame, node) in placed {
            slots.push(slot);
            frames.push(frame);
            nodes.push(node);
        }
        let (error, no_room, fell_back) = match stop {
            None => (None, None, false),
            Some(StagedStop::NoRoom(slot)) => (None, Some(slot), false),
            Some(StagedStop::FellBack) => (None, None, true),
            Some(StagedStop::Fault(stop)) => (
                Some(stop_to_py(py, stop).into_value(py).into_any()),
                None,
                false,
            ),
        };
        Ok((done, error, no_room, fell_back, slots, frames, nodes))
    }

    /// Translate `vas` into `out` in order, each as its `kinds` byte says
    /// (0 read, 1 write, 2 fetch: `TraceChunk.kinds`), without the GIL;
    /// `(done, exception or None)`. Fetches go to the ITLB of a split L1.
    fn translate_batch_kinds(
        &self,
        py: Python<'_>,
        vas: PyReadonlyArray1<'_, u64>,
        kinds: PyReadonlyArray1<'_, u8>,
        mut out: PyReadwriteArray1<'_, u64>,
        user: &Bound<'_, PyAny>,
    ) -> PyResult<(usize, Option<PyObject>)> {
        let user = user_of(user)?;
        let (vas, kinds) = (vas.as_slice()?, kinds.as_slice()?);
        if kinds.len() != vas.len() {
            return Err(to_py(Error::Config(format!(
                "kinds must be as long as the addresses ({}), got {}",
                vas.len(),
                kinds.len()
            ))));
        }
        let out = out.as_slice_mut()?;
        let inner = &self.inner;
        batch_loop(py, || inner.translate_batch_kinds(vas, kinds, out, user))
    }

    /// Install a page in the current table and restart the access at `va`:
    /// `(pa, frame, node)`, or None when no node of `nodes` has room.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (va, access, user, page_va, size, nodes, data, perms, page_user))]
    fn install_page(
        &self,
        py: Python<'_>,
        va: u64,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
        page_va: u64,
        size: u64,
        nodes: Vec<u32>,
        data: Option<&[u8]>,
        perms: u8,
        page_user: bool,
    ) -> PyResult<Option<(u64, u64, u32)>> {
        let (access, user) = (access_of(access)?, user_of(user)?);
        let page = page_of(page_va, size, &nodes, data, perms, page_user);
        let inner = &self.inner;
        py.allow_threads(|| guarded(|| inner.install_page(va, access, user, page)))
    }

    /// Translate `va`; on a restartable fault install the page as
    /// `install_page` does, in the same call: `(pa, None)` when `va` was
    /// mapped, `(pa, (frame, node))` when the page went in, None when no node
    /// of `nodes` has room. Any other stop is raised as `translate` raises it.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (va, access, user, page_va, size, nodes, data, perms, page_user))]
    fn translate_or_install(
        &self,
        py: Python<'_>,
        va: u64,
        access: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
        page_va: u64,
        size: u64,
        nodes: Vec<u32>,
        data: Option<&[u8]>,
        perms: u8,
        page_user: bool,
    ) -> PyResult<Option<Resolved>> {
        let (access, user) = (access_of(access)?, user_of(user)?);
        let page = page_of(page_va, size, &nodes, data, perms, page_user);
        let inner = &self.inner;
        let result = py.allow_threads(|| {
            catch_unwind(AssertUnwindSafe(|| {
                inner.translate_or_install(va, access, user, page)
            }))
        });
        match result {
            Ok(Ok(resolved)) => Ok(resolved),
            Ok(Err(stop)) => Err(stop_to_py(py, stop)),
            Err(panic) => Err(panic_to_py(panic)),
        }
    }

    /// Drain the deferred prefetch queue; translations installed.
    fn process_prefetch(&self) -> PyResult<u64> {
        guarded(|| self.inner.process_prefetch())
    }

    /// Requests waiting in the deferred queue.
    #[getter]
    fn pending_prefetches(&self) -> PyResult<usize> {
        guarded(|| Ok(self.inner.pending_prefetches()))
    }

    /// The deferred queue, oldest first.
    fn queue(&self) -> PyResult<Vec<u64>> {
        guarded(|| Ok(self.inner.queue()))
    }

    /// `(last vpn or None, stride)` of a stride prefetcher, else None.
    fn prefetcher_history(&self) -> PyResult<Option<(Option<u64>, i64)>> {
        guarded(|| Ok(self.inner.prefetcher_history()))
    }

    /// Load a new address space.
    #[pyo3(signature = (table, asid=None, flush=false))]
    fn switch(
        &self,
        table: PyRef<'_, PyPageTable>,
        asid: Option<u32>,
        flush: bool,
    ) -> PyResult<()> {
        let table = table.inner.clone();
        guarded(|| self.inner.switch(table, asid, flush))
    }

    /// Invalidate every TLB and PWC entry.
    fn flush(&self) -> PyResult<()> {
        guarded(|| {
            self.inner.flush();
            Ok(())
        })
    }

    /// Invalidate one ASID's non-global entries.
    fn flush_asid(&self, asid: u32) -> PyResult<()> {
        guarded(|| {
            self.inner.flush_asid(asid);
            Ok(())
        })
    }

    /// INVLPG for the current ASID.
    fn invlpg(&self, va: u64) -> PyResult<()> {
        guarded(|| {
            self.inner.invlpg(va);
            Ok(())
        })
    }

    /// Invalidate a range for one ASID or all.
    #[pyo3(signature = (va, size, asid=None))]
    fn flush_range(&self, va: u64, size: u64, asid: Option<u32>) -> PyResult<()> {
        guarded(|| {
            self.inner.flush_range(va, size, asid);
            Ok(())
        })
    }

    /// True if any level caches `va` for the current ASID.
    fn cached(&self, va: u64) -> PyResult<bool> {
        guarded(|| Ok(self.inner.cached(va)))
    }

    /// `(MMU counters, prefetch counters)` in the dataclasses' field order.
    fn stats(&self) -> PyResult<([u64; 10], [u64; 9])> {
        guarded(|| {
            let s = self.inner.stats();
            Ok((s.to_array(), s.prefetch.to_array()))
        })
    }

    /// Zero every counter.
    fn reset_stats(&self) -> PyResult<()> {
        guarded(|| {
            self.inner.reset_stats();
            Ok(())
        })
    }

    /// Level `index` as a `TlbLevel` view.
    fn level(&self, index: usize) -> PyResult<PyTlbLevel> {
        guarded(|| {
            if index >= self.inner.level_count() {
                return Err(Error::Config(format!("the MMU has no TLB level {index}")));
            }
            Ok(PyTlbLevel::of_mmu(self.inner.clone(), index))
        })
    }

    /// The ITLB of a split L1 as a `TlbLevel` view, or None with a unified L1.
    fn itlb(&self) -> PyResult<Option<PyTlbLevel>> {
        guarded(|| {
            Ok(self
                .inner
                .split_l1()
                .then(|| PyTlbLevel::of_itlb(self.inner.clone())))
        })
    }

    /// A view of the page-walk cache.
    fn pwc(&self) -> PyResult<PyPageWalkCache> {
        guarded(|| Ok(PyPageWalkCache::of_mmu(self.inner.clone())))
    }

    /// A view of the prefetcher.
    fn prefetcher(&self) -> PyResult<PyPrefetcher> {
        guarded(|| Ok(PyPrefetcher::of_mmu(self.inner.clone())))
    }

    /// Number of TLB levels.
    #[getter]
    fn level_count(&self) -> PyResult<usize> {
        guarded(|| Ok(self.inner.level_count()))
    }

    /// The current ASID.
    #[getter]
    fn asid(&self) -> PyResult<u32> {
        guarded(|| Ok(self.inner.asid()))
    }

    /// Modelled cycles per PTE read.
    #[getter]
    fn get_walk_ref_cycles(&self) -> PyResult<u64> {
        guarded(|| Ok(self.inner.walk_ref_cycles()))
    }

    #[setter]
    fn set_walk_ref_cycles(&self, cycles: u64) -> PyResult<()> {
        guarded(|| {
            self.inner.set_walk_ref_cycles(cycles);
            Ok(())
        })
    }

    /// `((entries, latency), lookups, hits, per-level LRU order)` of the PWC, or None.
    #[allow(clippy::type_complexity)]
    fn pwc_state(&self) -> PyResult<Option<((usize, u64), u64, u64, Vec<Vec<(u32, u64)>>)>> {
        guarded(|| {
            Ok(self.inner.pwc_state().map(|p| {
                (
                    (p.config.entries, p.config.latency),
                    p.lookups,
                    p.hits,
                    p.order,
                )
            }))
        })
    }

    /// Translate through `ts` (a `TwoStage` over this MMU's table) from now on.
    #[pyo3(signature = (ts, vmid, ntlb_entries, host_pwc))]
    fn set_nested(
        &self,
        ts: PyRef<'_, PyTwoStage>,
        vmid: u32,
        ntlb_entries: usize,
        host_pwc: Option<(usize, u64)>,
    ) -> PyResult<()> {
        guarded(|| {
            let pwc = host_pwc.map(|(e, l)| PwcConfig::new(e, l)).transpose()?;
            let config = NestedConfig::new(vmid, ntlb_entries, pwc)?;
            self.inner.set_nested(&ts.inner, config)
        })
    }

    /// `[walks, guest_refs, host_refs, host_faults, ntlb_lookups, ntlb_hits,
    /// host_pwc_lookups, host_pwc_hits]` of the nested cost model, or None.
    fn nested_stats(&self) -> PyResult<Option<[u64; 8]>> {
        guarded(|| {
            Ok(self.inner.nested_stats().map(|(_, n)| {
                [
                    n.walks,
                    n.guest_refs,
                    n.host_refs,
                    n.host_faults,
                    n.ntlb_lookups,
                    n.ntlb_hits,
                    n.host_pwc_lookups,
                    n.host_pwc_hits,
                ]
            }))
        })
    }
}
