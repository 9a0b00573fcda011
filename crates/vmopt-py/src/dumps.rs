//! Binding of vmopt-core's `dumps` readers as `vmopt._core.Dump`, and QEMU's `info mem`/`info tlb`.
//!
//! Opening and indexing a dump, and the monitor walks, run with the GIL
//! released. A malformed dump raises `vmopt.dumps.DumpError` with its
//! `path`, `field` and `value`; a panic becomes a `VmoptError`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use vmopt_core::dumps::monitor::{self, MemWalk};
use vmopt_core::dumps::{self, Dump, DumpError, DumpFormat, DumpResult};

use crate::errors::{guarded, panic_to_py, to_py};
use crate::memory::PyPhysMem;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDump>()?;
    m.add_function(wrap_pyfunction!(info_mem, m)?)?;
    m.add_function(wrap_pyfunction!(info_tlb, m)?)?;
    let names: Vec<&str> = DumpFormat::ALL.iter().map(|f| f.name()).collect();
    m.add("DUMP_FORMATS", names)?;
    Ok(())
}

/// `e` as `vmopt.dumps.errors.DumpError` with its `path`, `field` and `value`.
fn dump_error(py: Python<'_>, e: DumpError) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let class = py.import("vmopt.dumps.errors")?.getattr("DumpError")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("path", e.path.as_str())?;
        kwargs.set_item("field", e.field.as_deref())?;
        kwargs.set_item("value", e.value)?;
        Ok(PyErr::from_value(
            class.call((e.message.as_str(),), Some(&kwargs))?,
        ))
    };
    build().unwrap_or_else(|err| err)
}

/// Run `f` without the GIL; a dump error becomes `DumpError`, a panic a `VmoptError`.
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> DumpResult<T> + Send) -> PyResult<T> {
    match py.allow_threads(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(dump_error(py, e)),
        Err(panic) => Err(panic_to_py(panic)),
    }
}

/// An opened dump (a core `Dump`): its memory, vCPU states and VMCOREINFO.
#[pyclass(name = "Dump", module = "vmopt._core", frozen)]
pub struct PyDump {
    inner: Arc<Dump>,
}

#[pymethods]
impl PyDump {
    /// Open `path` with the reader `format` names (`None`: by magic).
    #[staticmethod]
    #[pyo3(signature = (path, format=None))]
    fn open(py: Python<'_>, path: PathBuf, format: Option<&str>) -> PyResult<PyDump> {
        let format = match format {
            Some(name) => Some(
                name.parse::<DumpFormat>()
                    .map_err(|m| to_py(vmopt_core::Error::Config(m)))?,
            ),
            None => None,
        };
        let dump = run(py, || dumps::open(&path, format))?;
        Ok(PyDump {
            inner: Arc::new(dump),
        })
    }

    /// The file as the user named it.
    #[getter]
    fn path(&self) -> &str {
        &self.inner.path
    }

    /// The reader's name (`elf`, `kdump`, ...).
    #[getter]
    fn format(&self) -> &'static str {
        self.inner.format.name()
    }

    /// `x86_64`, `riscv64`, `aarch64` or `None`.
    #[getter]
    fn machine(&self) -> Option<&'static str> {
        self.inner.machine
    }

    /// Guest-physical memory (read-only), shared with page tables built on it.
    #[getter]
    fn memory(&self) -> PyPhysMem {
        PyPhysMem {
            inner: self.inner.memory.clone(),
        }
    }

    /// Each vCPU's registers as `(name, value)` pairs, in vCPU order.
    #[getter]
    fn cpus(&self) -> Vec<Vec<(String, u64)>> {
        self.inner
            .cpus
            .iter()
            .map(|c| c.registers.clone())
            .collect()
    }

    /// The VMCOREINFO lines as `(key, value)` pairs, or `None`.
    #[getter]
    fn vmcoreinfo(&self) -> Option<Vec<(String, String)>> {
        self.inner.vmcoreinfo.as_ref().map(|v| v.entries.clone())
    }

    /// `(va, pa, size)` of each PT_LOAD of a `paging=true` ELF dump.
    #[getter]
    fn virtual_segments(&self) -> Vec<(u64, u64, u64)> {
        self.inner
            .virtual_segments
            .iter()
            .map(|s| (s.va, s.pa, s.size))
            .collect()
    }

    /// The covered physical ranges `(start, end)`.
    fn ranges(&self, py: Python<'_>) -> Vec<(u64, u64)> {
        py.allow_threads(|| self.inner.memory.ranges())
    }

    /// kdump header fields as a dict, or `None` for other formats.
    #[getter]
    fn kdump<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(k) = self.inner.kdump else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("header_version", k.header_version)?;
        d.set_item("block_size", k.block_size)?;
        d.set_item("nr_cpus", k.nr_cpus)?;
        d.set_item("max_mapnr", k.max_mapnr)?;
        d.set_item("phys_base", k.phys_base)?;
        d.set_item("dumped_pages", k.dumped_pages)?;
        Ok(Some(d))
    }

    /// `phys_base` from the kdump header or VMCOREINFO, or `None`.
    #[getter]
    fn phys_base(&self) -> Option<u64> {
        self.inner.phys_base()
    }

    /// The kernel's root from VMCOREINFO: `(pa, five_level or None, how)`.
    fn kernel_root(&self, py: Python<'_>) -> PyResult<(u64, Option<bool>, String)> {
        let root = run(py, || self.inner.kernel_root())?;
        Ok((root.pa, root.five_level, root.how))
    }
}

/// One `info mem` line's text and fields.
type MemRow = (String, u64, u64, u64, bool, bool);
/// One `info tlb` line's text and fields.
type TlbRow = (String, u64, u64, u64, u64);

/// QEMU's `info mem` of the tables at `cr3` in `mem`, walked as `how` (`la48`, `la57`, `la57-qemu`) says:
/// rows `(text, start, end, size, user, write)` and truncated.
#[pyfunction]
fn info_mem(
    py: Python<'_>,
    mem: PyRef<'_, PyPhysMem>,
    cr3: u64,
    how: &str,
    max_tables: u64,
    max_lines: usize,
) -> PyResult<(Vec<MemRow>, bool)> {
    let mem = mem.inner.clone();
    let how = match how {
        "la48" => MemWalk::La48,
        "la57" => MemWalk::La57,
        "la57-qemu" => MemWalk::La57Qemu,
        _ => {
            return Err(to_py(vmopt_core::Error::Config(format!(
                "info mem walk must be 'la48', 'la57' or 'la57-qemu', got {how:?}"
            ))))
        }
    };
    guarded(|| {
        Ok(py.allow_threads(|| {
            let (lines, cut) = monitor::info_mem(mem.as_ref(), cr3, how, max_tables, max_lines);
            let rows = lines
                .iter()
                .map(|l| (l.text(), l.start, l.end, l.size, l.user, l.write))
                .collect();
            (rows, cut)
        }))
    })
}

/// QEMU's `info tlb` of the tables at `cr3` in `mem`: rows `(text, va, frame, pte, page_size)` and truncated.
#[pyfunction]
fn info_tlb(
    py: Python<'_>,
    mem: PyRef<'_, PyPhysMem>,
    cr3: u64,
    la57: bool,
    max_tables: u64,
    max_lines: usize,
) -> PyResult<(Vec<TlbRow>, bool)> {
    let mem = mem.inner.clone();
    guarded(|| {
        Ok(py.allow_threads(|| {
            let (lines, cut) = monitor::info_tlb(mem.as_ref(), cr3, la57, max_tables, max_lines);
            let rows = lines
                .iter()
                .map(|l| (l.text(), l.va, l.frame, l.pte, l.page_size))
                .collect();
            (rows, cut)
        }))
    })
}
