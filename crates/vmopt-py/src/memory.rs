//! Binding of vmopt-core's `memory` layer: `PhysMem` and `Buddy`.
//!
//! Bytes go in as any buffer and come out as `bytes`; large copies and
//! zeroing run with the GIL released. Integer arguments arrive as the core's
//! unsigned types, so a negative or too-large value raises `OverflowError`
//! here; the Python wrappers turn that into the reference's error.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vmopt_core::memory::{BuddyAllocator, ImageMode, PhysMem};
use vmopt_core::{Error, Result};

use crate::errors::guarded;

/// Copies and fills at least this large release the GIL.
pub(crate) const RELEASE_GIL_BYTES: usize = 64 << 10;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPhysMem>()?;
    m.add_class::<PyBuddy>()?;
    Ok(())
}

/// Guest physical memory (a core `PhysMem`), shared with the page tables built on it.
#[pyclass(name = "PhysMem", module = "vmopt._core", frozen)]
pub struct PyPhysMem {
    pub inner: Arc<PhysMem>,
}

fn image_mode(mode: &str) -> Result<ImageMode> {
    match mode {
        "r" => Ok(ImageMode::ReadOnly),
        "w" => Ok(ImageMode::Writable),
        "cow" => Ok(ImageMode::CopyOnWrite),
        _ => Err(Error::Config(format!(
            "image mode must be 'r', 'w' or 'cow', got {mode:?}"
        ))),
    }
}

/// `data`'s bytes: borrowed if it is `bytes`, else copied from its buffer
/// (any format; a buffer of wider items is read as its raw bytes).
pub(crate) enum Data<'py> {
    Bytes(Bound<'py, PyBytes>),
    Copied(Vec<u8>),
}

impl<'py> Data<'py> {
    pub(crate) fn of(data: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(b) = data.downcast::<PyBytes>() {
            return Ok(Data::Bytes(b.clone()));
        }
        let py = data.py();
        let buf = match PyBuffer::<u8>::get(data) {
            Ok(buf) => buf,
            Err(_) => {
                let view = py
                    .import("builtins")?
                    .getattr("memoryview")?
                    .call1((data,))?
                    .call_method1("cast", ("B",))?;
                PyBuffer::<u8>::get(&view)?
            }
        };
        Ok(Data::Copied(buf.to_vec(py)?))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Data::Bytes(b) => b.as_bytes(),
            Data::Copied(v) => v,
        }
    }
}

#[pymethods]
impl PyPhysMem {
    /// Sparse memory of `size` bytes at `base`; `node` tags its allocator's messages.
    #[new]
    #[pyo3(signature = (size, base = 0, node = None))]
    fn new(size: u64, base: u64, node: Option<u32>) -> PyResult<Self> {
        guarded(|| PhysMem::new(size, base, node)).map(|m| PyPhysMem { inner: Arc::new(m) })
    }

    /// Sparse NUMA memory, node after node from address 0.
    #[staticmethod]
    fn new_numa(node_sizes: Vec<u64>) -> PyResult<Self> {
        guarded(|| PhysMem::new_numa(&node_sizes)).map(|m| PyPhysMem { inner: Arc::new(m) })
    }

    /// A raw image file mapped as `mode`: `'r'` read-only, `'w'` writable, `'cow'` copy-on-write.
    #[staticmethod]
    #[pyo3(signature = (path, mode = "r"))]
    fn from_file(path: PathBuf, mode: &str) -> PyResult<Self> {
        guarded(|| PhysMem::from_file(&path, image_mode(mode)?))
            .map(|m| PyPhysMem { inner: Arc::new(m) })
    }

    /// The order of a 4 KiB, 2 MiB or 1 GiB block; `ConfigError` naming `what` otherwise.
    #[staticmethod]
    fn block_order(size: u64, what: &str) -> PyResult<u8> {
        guarded(|| PhysMem::block_order(size, what))
    }

    /// First physical address.
    #[getter]
    fn base(&self) -> u64 {
        self.inner.base()
    }
    /// Size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.inner.size()
    }
    /// False for a read-only image.
    #[getter]
    fn writable(&self) -> bool {
        self.inner.writable()
    }
    /// True if backed by a file image.
    #[getter]
    fn is_image(&self) -> bool {
        self.inner.is_image()
    }
    /// True for memory built by `new_numa`.
    #[getter]
    fn is_numa(&self) -> PyResult<bool> {
        guarded(|| Ok(self.inner.is_numa()))
    }
    /// Number of allocators (NUMA nodes; 1 for plain memory).
    #[getter]
    fn num_nodes(&self) -> PyResult<usize> {
        guarded(|| Ok(self.inner.num_nodes()))
    }

    /// True if `[pa, pa + n)` lies inside this memory.
    #[pyo3(signature = (pa, n = 1))]
    fn contains(&self, pa: u64, n: u64) -> bool {
        self.inner.contains(pa, n)
    }

    /// The little-endian word at 8-byte aligned `pa`.
    fn read_u64(&self, pa: u64) -> PyResult<u64> {
        guarded(|| self.inner.read_u64(pa))
    }

    /// Store a little-endian word at 8-byte aligned `pa`.
    fn write_u64(&self, pa: u64, value: u64) -> PyResult<()> {
        guarded(|| self.inner.write_u64(pa, value))
    }

    /// `n` bytes at `pa`.
    fn read<'py>(&self, py: Python<'py>, pa: u64, n: u64) -> PyResult<Bound<'py, PyBytes>> {
        let mem = &*self.inner;
        guarded(|| mem.check(pa, n))?;
        PyBytes::new_with(py, n as usize, |buf| {
            if buf.len() >= RELEASE_GIL_BYTES {
                py.allow_threads(|| guarded(|| mem.read(pa, buf)))
            } else {
                guarded(|| mem.read(pa, buf))
            }
        })
    }

    /// Write `data` (any buffer) at `pa`; refused whole if out of range or read-only.
    fn write(&self, py: Python<'_>, pa: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Data::of(data)?;
        let (mem, bytes) = (&*self.inner, data.as_slice());
        if bytes.len() >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| mem.write(pa, bytes)))
        } else {
            guarded(|| mem.write(pa, bytes))
        }
    }

    /// True if the 4 KiB frame holding `pa` is all zeros.
    fn frame_is_zero(&self, pa: u64) -> PyResult<bool> {
        guarded(|| self.inner.frame_is_zero(pa))
    }

    /// Zero `[pa, pa + n)`; whole sparse frames are dropped.
    fn zero(&self, py: Python<'_>, pa: u64, n: u64) -> PyResult<()> {
        let mem = &*self.inner;
        if n as usize >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| mem.zero(pa, n)))
        } else {
            guarded(|| mem.zero(pa, n))
        }
    }

    /// Frames that cost host memory.
    fn resident_frames(&self) -> PyResult<u64> {
        guarded(|| Ok(self.inner.resident_frames()))
    }

    /// Addresses of the frames that cost host memory, in order.
    fn resident_pas(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        let mem = &*self.inner;
        py.allow_threads(|| guarded(|| Ok(mem.resident_pas())))
    }

    /// Write the memory as a raw (sparse) image file.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let mem = &*self.inner;
        py.allow_threads(|| guarded(|| mem.save(&path)))
    }

    /// A zero-filled block of `size` (4 KiB, 2 MiB or 1 GiB); its address.
    fn alloc(&self, py: Python<'_>, size: u64) -> PyResult<u64> {
        let mem = &*self.inner;
        if size as usize >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| mem.alloc(size)))
        } else {
            guarded(|| mem.alloc(size))
        }
    }

    /// Return a block to its node's allocator (zeroing it unless an image).
    fn free(&self, py: Python<'_>, pa: u64, size: u64) -> PyResult<()> {
        let mem = &*self.inner;
        if size as usize >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| mem.free(pa, size)))
        } else {
            guarded(|| mem.free(pa, size))
        }
    }

    /// A zero-filled block from the first of `nodes` with room: `(pa, node)`, or None.
    fn try_alloc_on(
        &self,
        py: Python<'_>,
        nodes: Vec<u32>,
        size: u64,
    ) -> PyResult<Option<(u64, u32)>> {
        let mem = &*self.inner;
        if size as usize >= RELEASE_GIL_BYTES {
            py.allow_threads(|| guarded(|| mem.try_alloc_on(&nodes, size)))
        } else {
            guarded(|| mem.try_alloc_on(&nodes, size))
        }
    }

    /// Set the node order page-table pages (and plain `alloc`) come from.
    fn set_table_order(&self, order: Vec<u32>) -> PyResult<()> {
        guarded(|| self.inner.set_table_order(order))
    }

    /// The node holding `pa`, or None outside memory.
    fn node_of(&self, pa: u64) -> PyResult<Option<usize>> {
        guarded(|| Ok(self.inner.node_of(pa)))
    }

    /// First physical address of each node.
    fn node_bases(&self) -> PyResult<Vec<u64>> {
        guarded(|| Ok(self.inner.node_bases().to_vec()))
    }

    /// Bytes every allocator can still hand out.
    fn free_bytes(&self) -> PyResult<u64> {
        guarded(|| Ok(self.inner.free_bytes()))
    }

    /// The allocator of `node`, shared with this memory.
    fn allocator(&self, node: usize) -> PyResult<PyBuddy> {
        guarded(|| {
            self.inner
                .allocator(node)
                .map(|inner| PyBuddy { inner })
                .ok_or_else(|| {
                    Error::Config(format!(
                        "node {node} does not exist (0..{})",
                        self.inner.num_nodes() - 1
                    ))
                })
        })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// A buddy frame allocator (a core `BuddyAllocator`), standalone or a node of a `PhysMem`.
#[pyclass(name = "Buddy", module = "vmopt._core", frozen)]
pub struct PyBuddy {
    pub inner: Arc<Mutex<BuddyAllocator>>,
}

impl PyBuddy {
    fn lock(&self) -> MutexGuard<'_, BuddyAllocator> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyBuddy {
    /// A fully free allocator of `npages` frames from `base_pfn`.
    #[new]
    #[pyo3(signature = (base_pfn, npages, max_order = 18, node = None))]
    fn new(base_pfn: u64, npages: u64, max_order: u8, node: Option<u32>) -> PyResult<Self> {
        guarded(|| BuddyAllocator::new(base_pfn, npages, max_order, node)).map(|b| PyBuddy {
            inner: Arc::new(Mutex::new(b)),
        })
    }

    /// First frame managed.
    #[getter]
    fn base_pfn(&self) -> PyResult<u64> {
        guarded(|| Ok(self.lock().base_pfn()))
    }
    /// One past the last frame managed.
    #[getter]
    fn end_pfn(&self) -> PyResult<u64> {
        guarded(|| Ok(self.lock().end_pfn()))
    }
    /// Largest block order.
    #[getter]
    fn max_order(&self) -> PyResult<u8> {
        guarded(|| Ok(self.lock().max_order()))
    }
    /// NUMA node, for messages.
    #[getter]
    fn node(&self) -> PyResult<Option<u32>> {
        guarded(|| Ok(self.lock().node()))
    }
    /// Frames managed.
    #[getter]
    fn total_pages(&self) -> PyResult<u64> {
        guarded(|| Ok(self.lock().total_pages()))
    }
    /// Frames free.
    #[getter]
    fn free_pages(&self) -> PyResult<u64> {
        guarded(|| Ok(self.lock().free_pages()))
    }
    /// Frames allocated.
    #[getter]
    fn used_pages(&self) -> PyResult<u64> {
        guarded(|| Ok(self.lock().used_pages()))
    }

    /// Free blocks per order, like /proc/buddyinfo.
    fn free_blocks(&self) -> PyResult<Vec<u64>> {
        guarded(|| Ok(self.lock().free_blocks()))
    }

    /// `(pfn, order)` of every free block, in address order.
    fn iter_free_blocks(&self) -> PyResult<Vec<(u64, u8)>> {
        guarded(|| Ok(self.lock().iter_free_blocks()))
    }

    /// Whether frame `pfn` is free.
    fn is_free(&self, pfn: u64) -> PyResult<bool> {
        guarded(|| Ok(self.lock().is_free(pfn)))
    }

    /// Allocate the lowest free block of `order`; its pfn.
    fn alloc(&self, order: u8) -> PyResult<u64> {
        guarded(|| self.lock().alloc(order))
    }

    /// Allocate the block at `pfn`.
    fn alloc_at(&self, pfn: u64, order: u8) -> PyResult<()> {
        guarded(|| self.lock().alloc_at(pfn, order))
    }

    /// Free the block at `pfn`, coalescing.
    fn free(&self, pfn: u64, order: u8) -> PyResult<()> {
        guarded(|| self.lock().free(pfn, order))
    }

    /// True if `other` is a view of the same allocator.
    fn same_as(&self, other: &PyBuddy) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn __repr__(&self) -> PyResult<String> {
        guarded(|| Ok(self.lock().describe()))
    }
}
