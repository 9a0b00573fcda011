//! Binding of vmopt-core's `tlb` layer: a TLB level (one array or split
//! arrays) as `vmopt._core.TlbLevel`, standalone or a view of one level of
//! a core MMU.
//!
//! Entries cross as 12-tuples `(vpn, shift, asid, page_pa, rights, dirty,
//! level, prefetched, used, stamp, slot, serial)`; array-level methods take
//! the array's index in the level, level-wide ones `None`.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use vmopt_core::error::{Error, Result};
use vmopt_core::mmu::Mmu;
use vmopt_core::tlb::{
    PageWalkCache, Policy, PrefetchConfig, PrefetchKind, PrefetchMode, Prefetcher, PwcConfig,
    TlbConfig, TlbEntry, TlbLevel,
};

use crate::errors::{guarded, Int};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTlbLevel>()?;
    m.add_class::<PyPageWalkCache>()?;
    m.add_class::<PyPrefetcher>()?;
    m.add("GLOBAL_ASID", vmopt_core::tlb::GLOBAL_ASID)?;
    Ok(())
}

/// An entry as it crosses to Python.
pub type EntryTuple = (u64, u8, u32, u64, u8, bool, u8, bool, bool, u64, usize, u64);

/// `(entries, ways, policy, page_sizes, latency, name, seed)` of one array.
pub type ConfigTuple = (u32, u32, String, Vec<u64>, u64, String, u64);

/// An entry and its slot as a tuple.
pub fn entry_tuple(e: &TlbEntry, slot: usize) -> EntryTuple {
    (
        e.vpn,
        e.shift,
        e.asid,
        e.page_pa,
        e.rights,
        e.dirty,
        e.level,
        e.prefetched,
        e.used,
        e.stamp,
        slot,
        e.serial,
    )
}

/// A core `TlbConfig` from its tuple (validated by the core).
pub fn config_from(t: &ConfigTuple) -> Result<TlbConfig> {
    let policy = Policy::parse(&t.2).ok_or_else(|| {
        Error::Config(format!(
            "unknown TLB policy '{}'; expected one of lru, fifo, random, plru",
            t.2
        ))
    })?;
    TlbConfig::new(t.0, t.1, policy, &t.3, t.4, &t.5, t.6)
}

/// Where a level lives: owned here, or inside a core MMU.
pub enum LevelRef {
    /// A standalone level.
    Own(Box<Mutex<TlbLevel>>),
    /// Level `index` of an MMU.
    Mmu(Arc<Mmu>, usize),
    /// The ITLB of an MMU with a split L1.
    Itlb(Arc<Mmu>),
}

impl LevelRef {
    fn with<R>(&self, f: impl FnOnce(&mut TlbLevel) -> R) -> R {
        match self {
            LevelRef::Own(level) => f(&mut level.lock().unwrap_or_else(|e| e.into_inner())),
            LevelRef::Mmu(mmu, index) => mmu.with_level(*index, f),
            LevelRef::Itlb(mmu) => mmu.with_itlb(f).expect("an MMU's split L1 stays split"),
        }
    }
}

fn array_index(level: &TlbLevel, array: usize) -> Result<usize> {
    if array < level.arrays().len() {
        Ok(array)
    } else {
        Err(Error::Config(format!(
            "TLB level {} has no array {array}",
            level.name()
        )))
    }
}

/// One TLB level of the core.
#[pyclass(name = "TlbLevel", module = "vmopt._core", frozen)]
pub struct PyTlbLevel {
    level: LevelRef,
}

impl PyTlbLevel {
    /// A view of level `index` of `mmu`.
    pub fn of_mmu(mmu: Arc<Mmu>, index: usize) -> Self {
        PyTlbLevel {
            level: LevelRef::Mmu(mmu, index),
        }
    }

    /// A view of the ITLB of `mmu` (whose L1 is split).
    pub fn of_itlb(mmu: Arc<Mmu>) -> Self {
        PyTlbLevel {
            level: LevelRef::Itlb(mmu),
        }
    }

    fn on<R>(&self, f: impl FnOnce(&mut TlbLevel) -> Result<R>) -> PyResult<R> {
        guarded(|| self.level.with(f))
    }
}

#[pymethods]
impl PyTlbLevel {
    /// A standalone level of the arrays described by `configs`.
    #[new]
    fn new(configs: Vec<ConfigTuple>) -> PyResult<Self> {
        guarded(|| {
            let cfgs = configs
                .iter()
                .map(config_from)
                .collect::<Result<Vec<_>>>()?;
            Ok(PyTlbLevel {
                level: LevelRef::Own(Box::new(Mutex::new(TlbLevel::new(&cfgs)?))),
            })
        })
    }

    /// The level's name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        self.on(|l| Ok(l.name().to_string()))
    }

    /// The level's lookup latency.
    #[getter]
    fn latency(&self) -> PyResult<u64> {
        self.on(|l| Ok(l.latency()))
    }

    /// The level's counters in `TlbStats` field order.
    fn stats(&self) -> PyResult<[u64; 9]> {
        self.on(|l| Ok(l.stats.to_array()))
    }

    /// A counted lookup of the whole level: `(array, entry)` or None.
    fn lookup(&self, va: Int<u64>, asid: Int<u32>) -> PyResult<Option<(usize, EntryTuple)>> {
        let (va, asid) = (va.0, asid.0);
        self.on(|l| {
            Ok(l.lookup(va, asid)
                .map(|h| (h.array, entry_tuple(l.entry(h), h.slot))))
        })
    }

    /// An uncounted probe of the level: `(array, entry)` or None.
    fn peek(&self, va: Int<u64>, asid: Int<u32>) -> PyResult<Option<(usize, EntryTuple)>> {
        let (va, asid) = (va.0, asid.0);
        self.on(|l| {
            Ok(l.peek(va, asid)
                .map(|h| (h.array, entry_tuple(l.entry(h), h.slot))))
        })
    }

    /// `(array, shift)` that caches a page of `page_size`, or None.
    fn array_for(&self, page_size: Int<u64>) -> PyResult<Option<(usize, u8)>> {
        let page_size = page_size.0;
        self.on(|l| Ok(l.array_for(page_size)))
    }

    /// One array's lookup (recency updated, nothing counted).
    fn array_lookup(
        &self,
        array: usize,
        va: Int<u64>,
        asid: Int<u32>,
    ) -> PyResult<Option<EntryTuple>> {
        let (va, asid) = (va.0, asid.0);
        self.on(|l| {
            let (arr, _) = l.array_mut(array_index(l, array)?);
            Ok(arr
                .lookup(va, asid)
                .map(|slot| entry_tuple(arr.entry(slot), slot)))
        })
    }

    /// One array's probe (no recency update).
    fn array_peek(
        &self,
        array: usize,
        va: Int<u64>,
        asid: Int<u32>,
    ) -> PyResult<Option<EntryTuple>> {
        let (va, asid) = (va.0, asid.0);
        self.on(|l| {
            let arr = &l.arrays()[array_index(l, array)?];
            Ok(arr
                .peek(va, asid)
                .map(|slot| entry_tuple(arr.entry(slot), slot)))
        })
    }

    /// The shift array `array` would cache a page of `page_size` at.
    fn array_fits(&self, array: usize, page_size: Int<u64>) -> PyResult<Option<u8>> {
        let page_size = page_size.0;
        self.on(|l| Ok(l.arrays()[array_index(l, array)?].fits(page_size)))
    }

    /// Insert an entry; `(the entry as stored, the victim or None)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (array, vpn, shift, asid, page_pa, rights, dirty, level, prefetched, used, stamp))]
    fn array_insert(
        &self,
        array: usize,
        vpn: u64,
        shift: u8,
        asid: u32,
        page_pa: u64,
        rights: u8,
        dirty: bool,
        level: u8,
        prefetched: bool,
        used: bool,
        stamp: u64,
    ) -> PyResult<(EntryTuple, Option<EntryTuple>)> {
        self.on(|l| {
            let index = array_index(l, array)?;
            let mut e = TlbEntry::new(vpn, shift, asid, page_pa, rights, dirty, level);
            e.prefetched = prefetched;
            e.used = used;
            e.stamp = stamp;
            let (arr, stats) = l.array_mut(index);
            let victim = arr.insert(e, stats)?;
            let slot = arr
                .peek_exact(vpn, shift, asid)
                .expect("an entry just inserted is cached");
            Ok((
                entry_tuple(arr.entry(slot), slot),
                victim.map(|v| entry_tuple(&v, slot)), // the way it left
            ))
        })
    }

    /// `(prefetched, used, stamp)` of the entry in `slot` if it is still `serial`.
    fn entry_flags(
        &self,
        array: usize,
        slot: usize,
        serial: u64,
    ) -> PyResult<Option<(bool, bool, u64)>> {
        self.on(|l| {
            Ok(l.arrays()[array_index(l, array)?]
                .slot(slot)
                .filter(|e| e.serial == serial)
                .map(|e| (e.prefetched, e.used, e.stamp)))
        })
    }

    /// Invalidate everything in the level (`array` None) or one array.
    #[pyo3(signature = (array=None))]
    fn flush(&self, array: Option<usize>) -> PyResult<u64> {
        self.on(|l| match array {
            None => Ok(l.flush()),
            Some(a) => {
                let (arr, stats) = l.array_mut(array_index(l, a)?);
                Ok(arr.flush(stats))
            }
        })
    }

    /// Invalidate one ASID's entries.
    #[pyo3(signature = (asid, array=None))]
    fn flush_asid(&self, asid: Int<u32>, array: Option<usize>) -> PyResult<u64> {
        let asid = asid.0;
        self.on(|l| match array {
            None => Ok(l.flush_asid(asid)),
            Some(a) => {
                let (arr, stats) = l.array_mut(array_index(l, a)?);
                Ok(arr.flush_asid(asid, stats))
            }
        })
    }

    /// Invalidate the entries covering `va`.
    #[pyo3(signature = (va, asid=None, array=None))]
    fn flush_va(
        &self,
        va: Int<u64>,
        asid: Option<Int<u32>>,
        array: Option<usize>,
    ) -> PyResult<u64> {
        let (va, asid) = (va.0, asid.map(|v| v.0));
        self.on(|l| match array {
            None => Ok(l.flush_va(va, asid)),
            Some(a) => {
                let (arr, stats) = l.array_mut(array_index(l, a)?);
                Ok(arr.flush_va(va, asid, stats))
            }
        })
    }

    /// Invalidate the entries overlapping `[va, va + size)`.
    #[pyo3(signature = (va, size, asid=None, array=None))]
    fn flush_range(
        &self,
        va: Int<u64>,
        size: Int<u64>,
        asid: Option<Int<u32>>,
        array: Option<usize>,
    ) -> PyResult<u64> {
        let (va, size, asid) = (va.0, size.0, asid.map(|v| v.0));
        self.on(|l| match array {
            None => Ok(l.flush_range(va, size, asid)),
            Some(a) => {
                let (arr, stats) = l.array_mut(array_index(l, a)?);
                Ok(arr.flush_range(va, size, asid, stats))
            }
        })
    }

    /// Valid entries of the level or one array.
    #[pyo3(signature = (array=None))]
    fn len(&self, array: Option<usize>) -> PyResult<usize> {
        self.on(|l| match array {
            None => Ok(l.len()),
            Some(a) => Ok(l.arrays()[array_index(l, a)?].len()),
        })
    }

    /// Valid entries of one array, in slot order.
    fn entries(&self, array: usize) -> PyResult<Vec<EntryTuple>> {
        self.on(|l| {
            let arr = &l.arrays()[array_index(l, array)?];
            Ok(arr.iter().map(|(slot, e)| entry_tuple(e, slot)).collect())
        })
    }

    /// Every way of one array, set-major (None = invalid).
    fn ways(&self, array: usize) -> PyResult<Vec<Option<EntryTuple>>> {
        self.on(|l| {
            let arr = &l.arrays()[array_index(l, array)?];
            Ok(arr
                .ways_state()
                .iter()
                .enumerate()
                .map(|(slot, w)| w.as_ref().map(|e| entry_tuple(e, slot)))
                .collect())
        })
    }

    /// Replacement state of one array: `(clock, PLRU words per set, rng state, globals)`.
    fn replacement(&self, array: usize) -> PyResult<(u64, Vec<Vec<u64>>, u64, usize)> {
        self.on(|l| {
            let arr = &l.arrays()[array_index(l, array)?];
            let plru = (0..arr.sets()).map(|s| arr.plru_bits(s).to_vec()).collect();
            Ok((arr.clock(), plru, arr.rng_state(), arr.globals()))
        })
    }
}

/// Where a page-walk cache lives: owned here, or inside a core MMU.
enum PwcRef {
    Own(Mutex<PageWalkCache>),
    Mmu(Arc<Mmu>),
}

/// A page-walk cache of the core (standalone, or an MMU's).
#[pyclass(name = "PageWalkCache", module = "vmopt._core", frozen)]
pub struct PyPageWalkCache {
    pwc: PwcRef,
}

impl PyPageWalkCache {
    /// A view of `mmu`'s page-walk cache.
    pub fn of_mmu(mmu: Arc<Mmu>) -> Self {
        PyPageWalkCache {
            pwc: PwcRef::Mmu(mmu),
        }
    }

    fn on<R>(&self, f: impl FnOnce(&mut PageWalkCache) -> R) -> PyResult<R> {
        guarded(|| match &self.pwc {
            PwcRef::Own(p) => Ok(f(&mut p.lock().unwrap_or_else(|e| e.into_inner()))),
            PwcRef::Mmu(mmu) => mmu.with_pwc(|p| {
                p.map(f)
                    .ok_or_else(|| Error::Config("the MMU has no page-walk cache".into()))
            }),
        })
    }
}

#[pymethods]
impl PyPageWalkCache {
    /// An empty cache of `entries` slots per upper level of `levels`-level tables.
    #[new]
    fn new(entries: usize, latency: u64, levels: u8) -> PyResult<Self> {
        guarded(|| {
            if !(2..=8).contains(&levels) {
                return Err(Error::Config(format!(
                    "a page-walk cache needs 2 to 8 table levels, got {levels}"
                )));
            }
            Ok(PyPageWalkCache {
                pwc: PwcRef::Own(Mutex::new(PageWalkCache::new(
                    PwcConfig::new(entries, latency)?,
                    levels,
                ))),
            })
        })
    }

    /// Reads a walk of `va` ending at `stop_level` skips; fills the cache.
    fn skipped_refs(&self, va: u64, asid: u32, stop_level: u8) -> PyResult<u32> {
        let skip =
            self.on(|p| (stop_level < p.levels()).then(|| p.skipped_refs(va, asid, stop_level)))?;
        skip.ok_or_else(|| {
            crate::errors::to_py(Error::Config(format!("no table level {stop_level}")))
        })
    }

    /// Drop every entry, or one ASID's.
    #[pyo3(signature = (asid=None))]
    fn flush(&self, asid: Option<u32>) -> PyResult<()> {
        self.on(|p| p.flush(asid))
    }

    /// `(lookups, hits)` since construction.
    fn counters(&self) -> PyResult<(u64, u64)> {
        self.on(|p| (p.lookups, p.hits))
    }

    /// Table levels of the cached tables.
    #[getter]
    fn levels(&self) -> PyResult<u8> {
        self.on(|p| p.levels())
    }

    /// Level `level`'s `(asid, prefix)` tags, least recently used first.
    fn order(&self, level: u8) -> PyResult<Vec<(u32, u64)>> {
        self.on(|p| p.order(level))
    }
}

/// Where a prefetcher lives: owned here, or inside a core MMU.
enum PrefetcherRef {
    Own(Mutex<Box<dyn Prefetcher>>),
    Mmu(Arc<Mmu>),
}

/// A prefetcher of the core (standalone, or an MMU's).
#[pyclass(name = "Prefetcher", module = "vmopt._core", frozen)]
pub struct PyPrefetcher {
    prefetcher: PrefetcherRef,
}

impl PyPrefetcher {
    /// A view of `mmu`'s prefetcher.
    pub fn of_mmu(mmu: Arc<Mmu>) -> Self {
        PyPrefetcher {
            prefetcher: PrefetcherRef::Mmu(mmu),
        }
    }

    fn on<R>(&self, f: impl FnOnce(&mut dyn Prefetcher) -> R) -> PyResult<R> {
        guarded(|| match &self.prefetcher {
            PrefetcherRef::Own(p) => Ok(f(p.lock().unwrap_or_else(|e| e.into_inner()).as_mut())),
            PrefetcherRef::Mmu(mmu) => mmu.with_prefetcher(|p| {
                p.map(f)
                    .ok_or_else(|| Error::Config("the MMU has no prefetcher".into()))
            }),
        })
    }
}

#[pymethods]
impl PyPrefetcher {
    /// A `"next_page"` or `"stride"` prefetcher of `degree` pages.
    #[new]
    fn new(kind: &str, degree: u32) -> PyResult<Self> {
        guarded(|| {
            let kind = PrefetchKind::parse(kind)
                .filter(|k| *k != PrefetchKind::None)
                .ok_or_else(|| Error::Config(format!("no prefetcher of kind '{kind}'")))?;
            let cfg = PrefetchConfig::new(kind, degree, PrefetchMode::Immediate, 1)?;
            let p = cfg.build().expect("a real prefetcher kind");
            Ok(PyPrefetcher {
                prefetcher: PrefetcherRef::Own(Mutex::new(p)),
            })
        })
    }

    /// The pages to prefetch after a demand miss at `va` on a page of `page_size`.
    fn on_miss(&self, va: u64, page_size: u64) -> PyResult<Vec<u64>> {
        if !page_size.is_power_of_two() {
            return Err(crate::errors::to_py(Error::Config(format!(
                "page size must be a power of two, got {page_size}"
            ))));
        }
        self.on(|p| {
            let mut out = Vec::new();
            p.on_miss(va, page_size, &mut out);
            out
        })
    }

    /// Forget the history.
    fn reset(&self) -> PyResult<()> {
        self.on(|p| p.reset())
    }

    /// `(last vpn or None, stride)` of a stride prefetcher, else None.
    fn history(&self) -> PyResult<Option<(Option<u64>, i64)>> {
        self.on(|p| p.history())
    }
}
