//! Binding of vmopt-core's `paging` layer.
//!
//! `Format` wraps a core format; `PageTable` wraps a core page table. Walk
//! results cross as the Python value types of `vmopt.paging.types`
//! (`Translation`, `Leaf`, `Mapping`, `Perm`), built directly into their
//! slots so a walk from Python stays well under a microsecond. Edits release
//! the GIL: they take the table's edit lock and shoot down MMUs, which take
//! their own locks.

use std::sync::{Arc, Mutex, Weak};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyBytes, PyInt, PyList, PyString, PyTuple, PyType};
use vmopt_core::paging::aarch64_s2::AArch64Stage2;
use vmopt_core::paging::table::{LeafEntry, Leaves, Mappings};
use vmopt_core::paging::twostage::NestedTranslation;
use vmopt_core::paging::{
    AArch64, Access, Backing, Ept, Format, GStage, GuestMemory, Leaf, Mapping, Npt, PageTable,
    Perm, RiscV, Shootdown, TableMemory, Translation, TwoStage, X86_64,
};
use vmopt_core::Error;

use crate::errors::{guarded, to_py};
use crate::memory::{Data, PyPhysMem, RELEASE_GIL_BYTES};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFormat>()?;
    m.add_class::<PyPageTable>()?;
    m.add_class::<PyLeafIter>()?;
    m.add_class::<PyMappingIter>()?;
    m.add_class::<PyTwoStage>()?;
    m.add_class::<PyGuestMemory>()?;
    Ok(())
}

// -- the Python value types ---------------------------------------------------------

const TRANSLATION_FIELDS: [&str; 10] = [
    "va",
    "pa",
    "page_size",
    "perms",
    "user",
    "global_",
    "dirty",
    "memory_refs",
    "level",
    "pte_pa",
];
const LEAF_FIELDS: [&str; 11] = [
    "va",
    "page_pa",
    "page_size",
    "level",
    "pte",
    "pte_pa",
    "perms",
    "user",
    "global_",
    "accessed",
    "dirty",
];
const NESTED_FIELDS: [&str; 15] = [
    "va",
    "pa",
    "gpa",
    "page_size",
    "perms",
    "user",
    "global_",
    "dirty",
    "memory_refs",
    "guest_refs",
    "host_refs",
    "level",
    "pte_pa",
    "guest_page_size",
    "host_page_size",
];
const MAPPING_FIELDS: [&str; 8] = [
    "va",
    "pa",
    "size",
    "perms",
    "page_size",
    "user",
    "global_",
    "recursive",
];

/// One frozen dataclass of `vmopt.paging.types` and its field names, interned.
struct ValueType {
    class: Py<PyType>,
    fields: Vec<Py<PyString>>,
}

/// The value types and the eight `Perm` values, imported once.
struct Values {
    translation: ValueType,
    leaf: ValueType,
    mapping: ValueType,
    nested: ValueType,
    perms: Vec<PyObject>,
    empty: Py<PyTuple>,
}

static VALUES: GILOnceCell<Values> = GILOnceCell::new();

fn values(py: Python<'_>) -> PyResult<&Values> {
    VALUES.get_or_try_init(py, || {
        let types = py.import("vmopt.paging.types")?;
        let value_type = |name: &str, fields: &[&str]| -> PyResult<ValueType> {
            Ok(ValueType {
                class: types.getattr(name)?.downcast_into::<PyType>()?.unbind(),
                fields: fields
                    .iter()
                    .map(|f| PyString::intern(py, f).unbind())
                    .collect(),
            })
        };
        let perm = types.getattr("Perm")?;
        Ok(Values {
            translation: value_type("Translation", &TRANSLATION_FIELDS)?,
            leaf: value_type("Leaf", &LEAF_FIELDS)?,
            mapping: value_type("Mapping", &MAPPING_FIELDS)?,
            nested: value_type("NestedTranslation", &NESTED_FIELDS)?,
            perms: (0..8u8)
                .map(|b| perm.call1((b,)).map(Bound::unbind))
                .collect::<PyResult<_>>()?,
            empty: PyTuple::empty(py).unbind(),
        })
    })
}

impl ValueType {
    /// An instance with `vals` in its slots, without running the (frozen) `__init__`.
    fn build<'py>(
        &self,
        py: Python<'py>,
        empty: &Py<PyTuple>,
        vals: &[Bound<'py, PyAny>],
    ) -> PyResult<PyObject> {
        debug_assert_eq!(vals.len(), self.fields.len());
        // SAFETY: `class` is a live type object (held by `self`) and `empty` a live tuple;
        // PyType_GenericNew only allocates an instance (args are ignored) and returns a new
        // reference or NULL with an exception set, which `from_owned_ptr_or_err` takes over.
        let obj = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyType_GenericNew(
                    self.class.as_ptr().cast::<ffi::PyTypeObject>(),
                    empty.as_ptr(),
                    std::ptr::null_mut(),
                ),
            )?
        };
        for (name, value) in self.fields.iter().zip(vals) {
            // SAFETY: all three pointers are live objects we hold references to. The generic
            // setattr stores into the dataclass's slot descriptor, bypassing the frozen
            // `__setattr__` (exactly what the dataclass's own `__init__` does).
            let rc = unsafe {
                ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr())
            };
            if rc < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj.unbind())
    }
}

fn int<'py>(py: Python<'py>, v: u64) -> Bound<'py, PyAny> {
    v.into_pyobject(py)
        .expect("an int from a u64 cannot fail")
        .into_any()
}

fn boolean(py: Python<'_>, v: bool) -> Bound<'_, PyAny> {
    PyBool::new(py, v).to_owned().into_any()
}

fn perm<'py>(py: Python<'py>, v: &Values, p: Perm) -> Bound<'py, PyAny> {
    v.perms[(p.0 & 7) as usize].bind(py).clone()
}

fn translation_obj(py: Python<'_>, t: &Translation) -> PyResult<PyObject> {
    let v = values(py)?;
    v.translation.build(
        py,
        &v.empty,
        &[
            int(py, t.va),
            int(py, t.pa),
            int(py, t.page_size),
            perm(py, v, t.perms),
            boolean(py, t.user),
            boolean(py, t.global),
            boolean(py, t.dirty),
            int(py, t.memory_refs as u64),
            int(py, t.level as u64),
            int(py, t.pte_pa),
        ],
    )
}

fn nested_obj(py: Python<'_>, t: &NestedTranslation) -> PyResult<PyObject> {
    let v = values(py)?;
    let c = t.combined();
    v.nested.build(
        py,
        &v.empty,
        &[
            int(py, c.va),
            int(py, c.pa),
            int(py, t.gpa()),
            int(py, c.page_size),
            perm(py, v, c.perms),
            boolean(py, c.user),
            boolean(py, c.global),
            boolean(py, c.dirty),
            int(py, c.memory_refs as u64),
            int(py, t.guest_refs as u64),
            int(py, t.host_refs as u64),
            int(py, c.level as u64),
            int(py, c.pte_pa),
            int(py, t.guest.page_size),
            int(py, t.host.page_size),
        ],
    )
}

fn leaf_obj(py: Python<'_>, l: &Leaf) -> PyResult<PyObject> {
    let v = values(py)?;
    v.leaf.build(
        py,
        &v.empty,
        &[
            int(py, l.va),
            int(py, l.page_pa),
            int(py, l.page_size),
            int(py, l.level as u64),
            int(py, l.pte),
            int(py, l.pte_pa),
            perm(py, v, l.perms),
            boolean(py, l.user),
            boolean(py, l.global),
            boolean(py, l.accessed),
            boolean(py, l.dirty),
        ],
    )
}

fn mapping_obj(py: Python<'_>, m: &Mapping) -> PyResult<PyObject> {
    let v = values(py)?;
    v.mapping.build(
        py,
        &v.empty,
        &[
            int(py, m.va),
            int(py, m.pa),
            int(py, m.size),
            perm(py, v, m.perms),
            int(py, m.page_size),
            boolean(py, m.user),
            boolean(py, m.global),
            boolean(py, m.recursive),
        ],
    )
}

// -- argument conversion ------------------------------------------------------------

/// `'r'`, `'w'`, `'x'` or `'p'`, else the `ConfigError` of `parse_access`.
fn access_of(obj: &Bound<'_, PyAny>) -> PyResult<Access> {
    if let Ok(s) = obj.downcast::<PyString>() {
        let s = s.to_str()?;
        let mut chars = s.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            if let Some(a) = Access::from_char(c) {
                return Ok(a);
            }
        }
    }
    Err(to_py(Error::Config(format!(
        "access must be 'r', 'w' or 'x', got {}",
        obj.repr()?
    ))))
}

/// A Python int in `[0, 2**64)`, or `None`.
fn u64_of(obj: &Bound<'_, PyAny>) -> Option<u64> {
    obj.downcast::<PyInt>().ok()?.extract::<u64>().ok()
}

/// The virtual address of a walk, else the walk's `AddressError`.
fn va_of(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    u64_of(obj).ok_or_else(|| match obj.repr() {
        Ok(r) => to_py(Error::Address(format!(
            "virtual address must be a 64-bit unsigned int, got {r}"
        ))),
        Err(e) => e,
    })
}

/// A flag argument (`user`, `global_`, `update_ad`): a bool, or a number equal to 0 or 1.
///
/// Anything else (`"yes"`, `None`) is refused with `InputError`: a truth
/// test would read every non-empty string as True.
struct Truthy(bool);

impl<'py> FromPyObject<'py> for Truthy {
    fn extract_bound(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = obj.downcast::<PyBool>() {
            return Ok(Truthy(b.is_true()));
        }
        if obj.downcast::<PyString>().is_err() && obj.downcast::<PyBytes>().is_err() {
            if let Ok(v) = obj.extract::<f64>() {
                if v == 0.0 || v == 1.0 {
                    return Ok(Truthy(v == 1.0));
                }
            }
        }
        let class = obj.py().import("vmopt.errors")?.getattr("InputError")?;
        Err(PyErr::from_value(class.call1((format!(
            "a flag (user, global_, update_ad) must be a bool, got {}",
            obj.repr()?
        ),))?))
    }
}

fn perm_of(bits: u8) -> PyResult<Perm> {
    if bits & !7 != 0 {
        return Err(PyTypeError::new_err(format!(
            "perms must be bits of Perm (0..7), got {bits}"
        )));
    }
    Ok(Perm(bits))
}

// -- Format ---------------------------------------------------------------------------

/// A page-table format (a core `Format`).
#[pyclass(name = "Format", module = "vmopt._core", frozen)]
pub struct PyFormat {
    pub inner: Arc<dyn Format>,
    /// The same object when it is x86-64, for its reserved-bit masks.
    x86: Option<Arc<X86_64>>,
}

#[pymethods]
impl PyFormat {
    /// x86-64 paging: `levels` 4 or 5, `maxphyaddr` in [36, 52].
    #[staticmethod]
    #[pyo3(signature = (levels, maxphyaddr, nxe, wp, smep, smap))]
    fn x86_64(
        levels: i64,
        maxphyaddr: i64,
        nxe: bool,
        wp: bool,
        smep: bool,
        smap: bool,
    ) -> PyResult<Self> {
        let fmt = Arc::new(guarded(|| {
            X86_64::new(levels, maxphyaddr, nxe, wp, smep, smap)
        })?);
        Ok(PyFormat {
            inner: fmt.clone(),
            x86: Some(fmt),
        })
    }

    /// RISC-V paging: `levels` 3 (Sv39), 4 (Sv48) or 5 (Sv57).
    #[staticmethod]
    #[pyo3(signature = (levels, sum, mxr, svade))]
    fn riscv(levels: i64, sum: bool, mxr: bool, svade: bool) -> PyResult<Self> {
        let fmt = guarded(|| RiscV::new(levels, sum, mxr, svade))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    /// Intel EPT: `levels` 4 or 5, `maxphyaddr` in [36, 52], `ad` = EPTP bit 6.
    #[staticmethod]
    #[pyo3(signature = (levels, maxphyaddr, ad))]
    fn ept(levels: i64, maxphyaddr: i64, ad: bool) -> PyResult<Self> {
        let fmt = guarded(|| Ept::new(levels, maxphyaddr, ad))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    /// The RISC-V G-stage: `levels` 3 (Sv39x4) or 4 (Sv48x4).
    #[staticmethod]
    #[pyo3(signature = (levels, svade))]
    fn gstage(levels: i64, svade: bool) -> PyResult<Self> {
        let fmt = guarded(|| GStage::new(levels, svade))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    /// AMD NPT: the long-mode format walked as user accesses.
    #[staticmethod]
    #[pyo3(signature = (maxphyaddr,))]
    fn npt(maxphyaddr: i64) -> PyResult<Self> {
        let fmt = guarded(|| Npt::new(maxphyaddr))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    /// AArch64 stage 1: `granule` 4096/16384/65536, `va_bits` = 64 - TxSZ, `pa_bits` = TCR_EL1.IPS.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (granule, va_bits, pa_bits, upper, ha, hd, tbi))]
    fn aarch64(
        granule: u64,
        va_bits: i64,
        pa_bits: i64,
        upper: bool,
        ha: bool,
        hd: bool,
        tbi: bool,
    ) -> PyResult<Self> {
        let fmt = guarded(|| AArch64::new(granule, va_bits, pa_bits, upper, ha, hd, tbi))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    /// AArch64 stage 2: `granule` 4096/16384/65536, `ipa_bits` = 64 - VTCR_EL2.T0SZ,
    /// `ha`/`hd` = VTCR_EL2.HA/HD, `pa_bits` = VTCR_EL2.PS.
    #[staticmethod]
    #[pyo3(signature = (granule, ipa_bits, ha, hd, pa_bits=48))]
    fn aarch64_stage2(
        granule: u64,
        ipa_bits: i64,
        ha: bool,
        hd: bool,
        pa_bits: i64,
    ) -> PyResult<Self> {
        let fmt = guarded(|| AArch64Stage2::new(granule, ipa_bits, pa_bits, ha, hd))?;
        Ok(PyFormat {
            inner: Arc::new(fmt),
            x86: None,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }
    /// Bytes of address space one entry at `level` covers.
    fn level_span(&self, level: u8) -> PyResult<u64> {
        guarded(|| Ok(self.inner.level_span(level)))
    }
    /// Index of `va` in a table at `level`.
    fn index(&self, va: u64, level: u8) -> PyResult<u64> {
        guarded(|| Ok(self.inner.index(va, level)))
    }
    /// Entries of a table at `level`.
    fn entries(&self, level: u8) -> PyResult<u64> {
        guarded(|| Ok(self.inner.entries(level)))
    }
    /// Bytes allocated for a table at `level`.
    fn table_size(&self, level: u8) -> PyResult<u64> {
        guarded(|| Ok(self.inner.table_size(level)))
    }
    /// Bytes of the root table (16 KiB for the RISC-V G-stage, else one frame).
    #[getter]
    fn root_bytes(&self) -> u64 {
        self.inner.root_bytes()
    }
    #[getter]
    fn levels(&self) -> u8 {
        self.inner.levels()
    }
    #[getter]
    fn va_bits(&self) -> u8 {
        self.inner.va_bits()
    }
    #[getter]
    fn pa_bits(&self) -> u8 {
        self.inner.pa_bits()
    }
    /// `[(level, page size)]` of the levels that may hold leaves.
    #[getter]
    fn leaf_sizes(&self) -> Vec<(u8, u64)> {
        self.inner.leaf_sizes().to_vec()
    }
    /// `(addr_mask, [reserved table bits per level], {1: 2 MiB bits, 2: 1 GiB bits})` of x86-64.
    fn x86_masks(&self) -> Option<(u64, Vec<u64>, Vec<u64>)> {
        self.x86.as_ref().map(|f| {
            (
                f.addr_mask(),
                (0..f.levels()).map(|l| f.reserved_table(l)).collect(),
                (1..3).map(|l| f.reserved_large(l)).collect(),
            )
        })
    }

    fn is_canonical(&self, va: u64) -> PyResult<bool> {
        guarded(|| Ok(self.inner.is_canonical(va)))
    }
    fn canonicalize(&self, va: u64) -> PyResult<u64> {
        guarded(|| Ok(self.inner.canonicalize(va)))
    }
    fn check_perms(&self, perms: u8) -> PyResult<Option<String>> {
        let perms = perm_of(perms)?;
        guarded(|| Ok(self.inner.check_perms(perms)))
    }
    fn is_valid(&self, pte: u64) -> PyResult<bool> {
        guarded(|| Ok(self.inner.is_valid(pte)))
    }
    fn is_leaf(&self, pte: u64, level: u8) -> PyResult<bool> {
        guarded(|| Ok(self.inner.is_leaf(pte, level)))
    }
    fn table_pa(&self, pte: u64) -> PyResult<u64> {
        guarded(|| Ok(self.inner.table_pa(pte)))
    }
    fn make_table(&self, table_pa: u64, level: u8) -> PyResult<u64> {
        guarded(|| Ok(self.inner.make_table(table_pa, level)))
    }
    fn make_leaf(
        &self,
        page_pa: u64,
        level: u8,
        perms: u8,
        user: bool,
        global_: bool,
    ) -> PyResult<u64> {
        let perms = perm_of(perms)?;
        guarded(|| Ok(self.inner.make_leaf(page_pa, level, perms, user, global_)))
    }
    /// `(page_pa, perms bits, user, global, accessed, dirty)`.
    fn decode_leaf(&self, pte: u64, level: u8) -> PyResult<(u64, u8, bool, bool, bool, bool)> {
        guarded(|| {
            let i = self.inner.decode_leaf(pte, level);
            Ok((i.page_pa, i.perms.0, i.user, i.global, i.accessed, i.dirty))
        })
    }
    fn set_perms(&self, pte: u64, level: u8, perms: u8) -> PyResult<u64> {
        let perms = perm_of(perms)?;
        guarded(|| Ok(self.inner.set_perms(pte, level, perms)))
    }
    /// `(perms bits, user, global)`.
    fn table_rights(&self, pte: u64) -> PyResult<(u8, bool, bool)> {
        guarded(|| {
            let r = self.inner.table_rights(pte);
            Ok((r.perms.0, r.user, r.global))
        })
    }
    fn describe(&self, pte: u64, level: u8) -> PyResult<String> {
        guarded(|| Ok(self.inner.describe(pte, level)))
    }
    fn allows(
        &self,
        perms: u8,
        page_user: bool,
        access: &Bound<'_, PyAny>,
        user: bool,
    ) -> PyResult<bool> {
        let (access, perms) = (access_of(access)?, perm_of(perms)?);
        guarded(|| Ok(self.inner.allows(perms, page_user, access, user)))
    }

    /// Walk the tables at `root` in `mem` (a `PhysMem`) for `va`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (mem, root, va, access, user, update_ad))]
    fn walk(
        &self,
        py: Python<'_>,
        mem: PyRef<'_, PyPhysMem>,
        root: u64,
        va: u64,
        access: &Bound<'_, PyAny>,
        user: bool,
        update_ad: bool,
    ) -> PyResult<PyObject> {
        let access = access_of(access)?;
        let t = guarded(|| {
            self.inner
                .walk(&*mem.inner, root, va, access, user, update_ad)
        })?;
        translation_obj(py, &t)
    }

    fn __repr__(&self) -> String {
        format!("Format({})", self.inner.name())
    }
}

// -- PageTable ------------------------------------------------------------------------

/// Shootdowns waiting to be passed to Python subscribers.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, u64)>>);

impl Shootdown for Recorder {
    fn shootdown(&self, va: u64, size: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((va, size));
    }
}

/// An address space (a core `PageTable`), shared with the MMUs built on it.
#[pyclass(name = "PageTable", module = "vmopt._core", frozen)]
pub struct PyPageTable {
    pub inner: Arc<PageTable>,
    /// Records shootdowns for Python callbacks, once one is subscribed.
    recorder: std::sync::OnceLock<Arc<Recorder>>,
}

impl PyPageTable {
    fn wrap(inner: PageTable) -> Self {
        PyPageTable {
            inner: Arc::new(inner),
            recorder: std::sync::OnceLock::new(),
        }
    }
}

#[pymethods]
impl PyPageTable {
    /// A new address space in `mem`: the root table is allocated there.
    #[new]
    #[pyo3(signature = (mem, fmt, update_ad=None))]
    fn new(
        py: Python<'_>,
        mem: AnyMem<'_>,
        fmt: PyRef<'_, PyFormat>,
        update_ad: Option<bool>,
    ) -> PyResult<Self> {
        let (mem, fmt) = (mem.backing(), fmt.inner.clone());
        let pt = guarded(|| py.allow_threads(|| PageTable::new_in(mem, fmt, update_ad)))?;
        Ok(Self::wrap(pt))
    }

    /// Open the tables that already exist in `mem` at `root`.
    #[staticmethod]
    #[pyo3(signature = (mem, root, fmt, update_ad=None))]
    fn attach(
        mem: AnyMem<'_>,
        root: u64,
        fmt: PyRef<'_, PyFormat>,
        update_ad: Option<bool>,
    ) -> PyResult<Self> {
        let (mem, fmt) = (mem.backing(), fmt.inner.clone());
        Ok(Self::wrap(guarded(|| {
            PageTable::attach_in(mem, root, fmt, update_ad)
        })?))
    }

    /// The guest-physical memory `[base, base + size)` this host table maps
    /// (`size` None: up to the first GPA it does not map).
    #[pyo3(signature = (base=0, size=None))]
    fn guest_memory(
        &self,
        py: Python<'_>,
        base: u64,
        size: Option<u64>,
    ) -> PyResult<PyGuestMemory> {
        let host = self.inner.clone();
        let inner = guarded(|| py.allow_threads(|| host.guest_memory(base, size)))?;
        Ok(PyGuestMemory { inner })
    }

    #[getter]
    fn root(&self) -> u64 {
        self.inner.root()
    }
    #[getter]
    fn update_ad(&self) -> bool {
        self.inner.update_ad()
    }
    #[getter]
    fn owns_root(&self) -> bool {
        self.inner.owns_root()
    }
    #[getter]
    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    /// Translate `va` as the MMU would (a `Translation`), or raise `PageFault`.
    #[pyo3(signature = (va, access, user=Truthy(false), update_ad=None))]
    fn walk(
        &self,
        py: Python<'_>,
        va: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: Truthy,
        update_ad: Option<Truthy>,
    ) -> PyResult<PyObject> {
        let access = access_of(access)?;
        let va = va_of(va)?;
        let (user, ad) = (user.0, update_ad.map_or(self.inner.update_ad(), |t| t.0));
        let t = guarded(|| self.inner.walk_with(va, access, user, ad))?;
        translation_obj(py, &t)
    }

    /// The physical address of `va`.
    #[pyo3(signature = (va, access, user=Truthy(false)))]
    fn translate(
        &self,
        va: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: Truthy,
    ) -> PyResult<u64> {
        let access = access_of(access)?;
        let va = va_of(va)?;
        Ok(guarded(|| self.inner.walk(va, access, user.0))?.pa)
    }

    /// The `Leaf` mapping `va`, or None.
    fn lookup(&self, py: Python<'_>, va: &Bound<'_, PyAny>) -> PyResult<Option<PyObject>> {
        let Some(va) = u64_of(va) else {
            return Ok(None);
        };
        match guarded(|| Ok(self.inner.lookup(va)))? {
            Some(l) => Ok(Some(leaf_obj(py, &l)?)),
            None => Ok(None),
        }
    }

    /// `lookup(int(va))` for each address, in order.
    fn batch_lookup<'py>(
        &self,
        py: Python<'py>,
        vaddrs: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let int_type = py.get_type::<PyInt>();
        let out = PyList::empty(py);
        for va in vaddrs.try_iter()? {
            let va = int_type.call1((va?,))?;
            let leaf = match u64_of(&va) {
                Some(va) => guarded(|| Ok(self.inner.lookup(va)))?,
                None => None,
            };
            match leaf {
                Some(l) => out.append(leaf_obj(py, &l)?)?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }

    /// `[(level, pte_pa, pte)]` read by a walk of `va`, root first.
    fn walk_path(&self, va: u64) -> PyResult<Vec<(u8, u64, u64)>> {
        guarded(|| Ok(self.inner.walk_path(va)))
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (va, pa, size, perms, user, global_))]
    fn map(
        &self,
        py: Python<'_>,
        va: u64,
        pa: u64,
        size: u64,
        perms: u8,
        user: Truthy,
        global_: Truthy,
    ) -> PyResult<()> {
        let perms = perm_of(perms)?;
        guarded(|| py.allow_threads(|| self.inner.map(va, pa, size, perms, user.0, global_.0)))
    }

    fn map_trusted(
        &self,
        py: Python<'_>,
        va: u64,
        pa: u64,
        size: u64,
        perms: u8,
        user: Truthy,
    ) -> PyResult<()> {
        let perms = perm_of(perms)?;
        guarded(|| py.allow_threads(|| self.inner.map_trusted(va, pa, size, perms, user.0)))
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (va, pa, length, page_size, perms, user, global_))]
    fn map_range(
        &self,
        py: Python<'_>,
        va: u64,
        pa: u64,
        length: u64,
        page_size: u64,
        perms: u8,
        user: Truthy,
        global_: Truthy,
    ) -> PyResult<()> {
        let perms = perm_of(perms)?;
        guarded(|| {
            py.allow_threads(|| {
                self.inner
                    .map_range(va, pa, length, page_size, perms, user.0, global_.0)
            })
        })
    }

    fn unmap(&self, py: Python<'_>, va: u64, size: u64) -> PyResult<()> {
        guarded(|| py.allow_threads(|| self.inner.unmap(va, size)))
    }

    fn protect(&self, py: Python<'_>, va: u64, size: u64, perms: u8) -> PyResult<()> {
        let perms = perm_of(perms)?;
        guarded(|| py.allow_threads(|| self.inner.protect(va, size, perms)))
    }

    #[pyo3(signature = (va, pa, size, perms=None))]
    fn remap(
        &self,
        py: Python<'_>,
        va: u64,
        pa: u64,
        size: u64,
        perms: Option<u8>,
    ) -> PyResult<()> {
        let perms = perms.map(perm_of).transpose()?;
        guarded(|| py.allow_threads(|| self.inner.remap(va, pa, size, perms)))
    }

    fn invalidate(&self, py: Python<'_>, va: u64, size: u64) -> PyResult<()> {
        guarded(|| {
            py.allow_threads(|| {
                self.inner.invalidate(va, size);
                Ok(())
            })
        })
    }

    /// The checks every edit makes on a virtual range (raises `AddressError`).
    fn check_va(&self, va: u64, size: u64) -> PyResult<()> {
        guarded(|| self.inner.check_va(va, size))
    }

    /// Allocate a zeroed block on the first of `nodes` with room, fill it, map it: `(pa, node)` or None.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (va, size, nodes, data, perms, user))]
    fn install(
        &self,
        py: Python<'_>,
        va: u64,
        size: u64,
        nodes: Vec<u32>,
        data: Option<&[u8]>,
        perms: u8,
        user: Truthy,
    ) -> PyResult<Option<(u64, u32)>> {
        let perms = perm_of(perms)?;
        guarded(|| py.allow_threads(|| self.inner.install(va, size, &nodes, data, perms, user.0)))
    }

    /// Every leaf in VA order: `(va, Leaf, effective perms, effective user, global)`.
    ///
    /// Recursive entries (tables pointing back at their ancestors) are not
    /// leaves: they are skipped here and listed by `mappings()`.
    #[pyo3(signature = (max_tables=None))]
    fn leaves(&self, max_tables: Option<u64>) -> PyLeafIter {
        let it = self.inner.leaves();
        PyLeafIter(Mutex::new(match max_tables {
            Some(n) => it.max_tables(n),
            None => it,
        }))
    }

    /// Coalesced regions (`Mapping`s), like QEMU's `info mem`; at most `max_tables` tables are read.
    #[pyo3(signature = (max_tables=None))]
    fn mappings(&self, max_tables: Option<u64>) -> PyMappingIter {
        let it = self.inner.mappings();
        PyMappingIter(Mutex::new(match max_tables {
            Some(n) => it.max_tables(n),
            None => it,
        }))
    }

    /// Physical addresses of every table page, root first.
    fn table_frames(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        guarded(|| Ok(py.allow_threads(|| self.inner.table_frames())))
    }

    fn read_virt<'py>(
        &self,
        py: Python<'py>,
        va: u64,
        n: u64,
        user: Truthy,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = guarded(|| py.allow_threads(|| self.inner.read_virt(va, n, user.0)))?;
        Ok(PyBytes::new(py, &data))
    }

    fn write_virt(&self, py: Python<'_>, va: u64, data: &[u8], user: Truthy) -> PyResult<()> {
        guarded(|| py.allow_threads(|| self.inner.write_virt(va, data, user.0)))
    }

    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        guarded(|| py.allow_threads(|| self.inner.destroy()))
    }

    /// Start recording shootdowns for Python callbacks (idempotent).
    fn record_shootdowns(&self) {
        self.recorder.get_or_init(|| {
            let rec = Arc::new(Recorder::default());
            let weak: Weak<dyn Shootdown> = Arc::downgrade(&rec) as Weak<dyn Shootdown>;
            self.inner.subscribe(weak);
            rec
        });
    }

    /// The `(va, size)` shootdowns recorded since the last call, oldest first.
    fn take_shootdowns(&self) -> Vec<(u64, u64)> {
        match self.recorder.get() {
            Some(rec) => std::mem::take(&mut *rec.0.lock().unwrap_or_else(|e| e.into_inner())),
            None => Vec::new(),
        }
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// Iterator of `PageTable.leaves()`.
#[pyclass(name = "LeafIter", module = "vmopt._core", frozen)]
pub struct PyLeafIter(Mutex<Leaves>);

#[pymethods]
impl PyLeafIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    /// True once the listing stopped at its `max_tables` cap.
    #[getter]
    fn truncated(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).truncated()
    }
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let next: Option<LeafEntry> = guarded(|| {
            let mut it = self.0.lock().unwrap_or_else(|e| e.into_inner());
            Ok(it.by_ref().find(|e| !e.recursive))
        })?;
        let Some(e) = next else {
            return Ok(None);
        };
        let v = values(py)?;
        let leaf = leaf_obj(py, &e.leaf)?;
        let tuple = PyTuple::new(
            py,
            [
                int(py, e.leaf.va),
                leaf.into_bound(py),
                perm(py, v, e.perms),
                boolean(py, e.user),
                boolean(py, e.global),
            ],
        )?;
        Ok(Some(tuple.into_any().unbind()))
    }
}

/// Iterator of `PageTable.mappings()`.
#[pyclass(name = "MappingIter", module = "vmopt._core", frozen)]
pub struct PyMappingIter(Mutex<Mappings>);

#[pymethods]
impl PyMappingIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    /// True once the listing stopped at its `max_tables` cap.
    #[getter]
    fn truncated(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).truncated()
    }
    /// Tables read so far, the root included.
    #[getter]
    fn tables(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).tables()
    }
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        let next = guarded(|| Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).next()))?;
        next.map(|m| mapping_obj(py, &m)).transpose()
    }
}

// -- TwoStage -------------------------------------------------------------------------

/// A guest table translated through a host table (a core `TwoStage`).
#[pyclass(name = "TwoStage", module = "vmopt._core", frozen)]
pub struct PyTwoStage {
    pub inner: TwoStage,
}

#[pymethods]
impl PyTwoStage {
    /// `guest` (GVA -> GPA) over `host` (GPA -> HPA, a host format).
    #[new]
    fn new(guest: PyRef<'_, PyPageTable>, host: PyRef<'_, PyPageTable>) -> PyResult<Self> {
        let (g, h) = (guest.inner.clone(), host.inner.clone());
        Ok(PyTwoStage {
            inner: guarded(|| TwoStage::new(g, h))?,
        })
    }

    /// The uncached two-stage walk of `gva` (a `NestedTranslation`), or raise `PageFault`.
    #[pyo3(signature = (gva, access, user=Truthy(false)))]
    fn walk(
        &self,
        py: Python<'_>,
        gva: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: Truthy,
    ) -> PyResult<PyObject> {
        let access = access_of(access)?;
        let gva = va_of(gva)?;
        let t = guarded(|| self.inner.walk(gva, access, user.0))?;
        nested_obj(py, &t)
    }

    /// References of the uncached walk of `gva` whatever its outcome: `(guest, host)`.
    #[pyo3(signature = (gva, access, user=Truthy(false)))]
    fn walk_refs(
        &self,
        gva: &Bound<'_, PyAny>,
        access: &Bound<'_, PyAny>,
        user: Truthy,
    ) -> PyResult<(u32, u32)> {
        let access = access_of(access)?;
        let gva = va_of(gva)?;
        let host = self.inner.host().clone();
        let (_, refs) = self.inner.walk_via(gva, access, user.0, &*host);
        Ok((refs.guest, refs.host))
    }

    fn __repr__(&self) -> String {
        format!(
            "TwoStage({} over {})",
            self.inner.guest().format().name(),
            self.inner.host().format().name()
        )
    }
}

// -- GuestMemory --------------------------------------------------------------------

/// The memory argument of `PageTable`: physical memory or a host table's guest memory.
#[derive(FromPyObject)]
pub enum AnyMem<'py> {
    /// A `PhysMem`.
    Phys(PyRef<'py, PyPhysMem>),
    /// A `GuestMemory`.
    Guest(PyRef<'py, PyGuestMemory>),
}

impl AnyMem<'_> {
    fn backing(&self) -> Backing {
        match self {
            AnyMem::Phys(m) => Backing::Phys(m.inner.clone()),
            AnyMem::Guest(m) => Backing::Guest(m.inner.clone()),
        }
    }
}

/// Guest-physical memory behind a host table (a core `GuestMemory`): every
/// access walks the host table, then touches host memory at the HPA.
#[pyclass(name = "GuestMemory", module = "vmopt._core", frozen)]
pub struct PyGuestMemory {
    pub inner: Arc<GuestMemory>,
}

#[pymethods]
impl PyGuestMemory {
    /// First guest-physical address.
    #[getter]
    fn base(&self) -> u64 {
        TableMemory::base(&*self.inner)
    }
    /// Size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }
    /// False if host memory is a read-only image.
    #[getter]
    fn writable(&self) -> bool {
        TableMemory::writable(&*self.inner)
    }
    /// Bytes its allocator of guest frames can still hand out.
    #[getter]
    fn free_bytes(&self) -> PyResult<u64> {
        guarded(|| Ok(TableMemory::free_bytes(&*self.inner)))
    }
    /// True if `[gpa, gpa + n)` lies inside this memory.
    #[pyo3(signature = (gpa, n = 1))]
    fn contains(&self, gpa: u64, n: u64) -> bool {
        TableMemory::contains(&*self.inner, gpa, n)
    }
    /// The little-endian word at 8-byte aligned `gpa`, read through the host.
    fn read_u64(&self, gpa: u64) -> PyResult<u64> {
        guarded(|| TableMemory::read_u64(&*self.inner, gpa))
    }
    /// Store a little-endian word at 8-byte aligned `gpa` through the host.
    fn write_u64(&self, gpa: u64, value: u64) -> PyResult<()> {
        guarded(|| TableMemory::write_u64(&*self.inner, gpa, value))
    }
    /// `n` bytes at `gpa` (every host page translated first).
    fn read<'py>(&self, py: Python<'py>, gpa: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let mem = &*self.inner;
        guarded(|| mem.check(gpa, n))?;
        PyBytes::new_with(py, n as usize, |buf| {
            if buf.len() >= RELEASE_GIL_BYTES {
                py.allow_threads(|| guarded(|| TableMemory::read(mem, gpa, buf)))
            } else {
                guarded(|| TableMemory::read(mem, gpa, buf))
            }
        })
    }
    /// Write `data` (any buffer) at `gpa`; refused whole if any page is out of range or refused.
    fn write(&self, py: Python<'_>, gpa: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Data::of(data)?;
        let (mem, bytes) = (&*self.inner, data.as_slice());
        if bytes.len() >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| TableMemory::write(mem, gpa, bytes)))
        } else {
            guarded(|| TableMemory::write(mem, gpa, bytes))
        }
    }
    /// The host walk of `gpa` for `access` (`'r'`, `'w'`, `'x'`): the host `Translation`.
    fn translate(&self, py: Python<'_>, gpa: u64, access: &Bound<'_, PyAny>) -> PyResult<PyObject> {
        let access = access_of(access)?;
        let t = guarded(|| self.inner.translate(gpa, access))?;
        translation_obj(py, &t)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
