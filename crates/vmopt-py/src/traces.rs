//! Binding of vmopt-core's `traces` layer as `vmopt._core.TraceReader`.
//!
//! A reader opens a file descriptor (duplicated, so Python may close its
//! own file) or pulls bytes from a Python binary stream such as
//! `sys.stdin.buffer`. Chunks cross to NumPy without a copy: each array is
//! a `Vec` the core filled, handed to NumPy as its buffer. Parsing runs
//! with the GIL released; a Python stream is read under the GIL, one block
//! at a time.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use vmopt_core::traces::{
    Compression, CompressionChoice, Format, Input, Options, Progress, TraceError, TraceReader,
    TraceResult,
};

use crate::errors::panic_to_py;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTraceReader>()?;
    let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
    m.add("TRACE_FORMATS", names)?;
    Ok(())
}

/// A Python exception raised by a stream's `read`, kept to re-raise as itself.
type Stash = Arc<Mutex<Option<PyErr>>>;

/// `std::io::Read` over a Python binary file object.
struct PyStream {
    obj: Py<PyAny>,
    stash: Stash,
}

impl Read for PyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Python::with_gil(|py| {
            let fail = |e: PyErr| {
                let text = e.to_string();
                if let Ok(mut s) = self.stash.lock() {
                    *s = Some(e);
                }
                io::Error::other(text)
            };
            let data = self
                .obj
                .bind(py)
                .call_method1("read", (buf.len(),))
                .map_err(fail)?;
            if data.is_none() {
                return Ok(0);
            }
            let bytes = match data.downcast::<PyBytes>() {
                Ok(b) => b.clone(),
                Err(_) => py
                    .get_type::<PyBytes>()
                    .call1((data,))
                    .and_then(|b| b.downcast_into::<PyBytes>().map_err(PyErr::from))
                    .map_err(fail)?,
            };
            let src = bytes.as_bytes();
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            Ok(n)
        })
    }
}

/// `e` as `vmopt.traces.errors.TraceError` with its `path`, `line` and `content`.
fn to_py(py: Python<'_>, e: TraceError) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let class = py.import("vmopt.traces.errors")?.getattr("TraceError")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("path", e.path.as_deref())?;
        kwargs.set_item("line", e.line)?;
        kwargs.set_item("content", e.content.as_deref())?;
        Ok(PyErr::from_value(
            class.call((e.message.as_str(),), Some(&kwargs))?,
        ))
    };
    build().unwrap_or_else(|err| err)
}

/// Run `f`; a trace error becomes `TraceError` (or the stream's own exception), a panic a `VmoptError`.
fn run<T>(py: Python<'_>, stash: &Stash, f: impl FnOnce() -> TraceResult<T> + Send) -> PyResult<T>
where
    T: Send,
{
    let result = py.allow_threads(|| catch_unwind(AssertUnwindSafe(f)));
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let stashed = stash.lock().ok().and_then(|mut s| s.take());
            Err(stashed.unwrap_or_else(|| to_py(py, e)))
        }
        Err(panic) => Err(panic_to_py(panic)),
    }
}

/// A streaming trace reader: `next_chunk()` until it returns `None`.
#[pyclass(frozen, name = "TraceReader", module = "vmopt._core")]
pub struct PyTraceReader {
    reader: Mutex<Option<TraceReader>>,
    progress: Arc<Progress>,
    format: &'static str,
    compression: Option<&'static str>,
    stash: Stash,
}

/// Arrays of one chunk: addrs, kinds, cpus or None, asids or None.
type ChunkArrays<'py> = (
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u8>>,
    Option<Bound<'py, PyArray1<u16>>>,
    Option<Bound<'py, PyArray1<u16>>>,
);

#[pymethods]
impl PyTraceReader {
    /// Open the trace `name` from file descriptor `fd` (duplicated) or the
    /// binary stream `stream`; `format`/`compression` `None` detect them,
    /// `compression="none"` reads bytes as they are.
    #[new]
    #[pyo3(signature = (
        name, *, fd=None, stream=None, format=None, compression=None, chunk_size=65536,
        skip_bad=false, block_bytes=1 << 20, max_line_bytes=1 << 20
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        fd: Option<i32>,
        stream: Option<Py<PyAny>>,
        format: Option<&str>,
        compression: Option<&str>,
        chunk_size: usize,
        skip_bad: bool,
        block_bytes: usize,
        max_line_bytes: usize,
    ) -> PyResult<Self> {
        let format = match format {
            None => None,
            Some(f) => Some(
                Format::from_name(f)
                    .ok_or_else(|| PyValueError::new_err(format!("unknown trace format {f:?}")))?,
            ),
        };
        let compression = match compression {
            None => CompressionChoice::Detect,
            Some("none") => CompressionChoice::Plain,
            Some(c) => CompressionChoice::Force(
                Compression::from_name(c)
                    .ok_or_else(|| PyValueError::new_err(format!("unknown compression {c:?}")))?,
            ),
        };
        let stash: Stash = Arc::default();
        let input = match (fd, stream) {
            (Some(fd), None) if fd >= 0 => {
                // SAFETY: the caller (vmopt.traces) passes the descriptor of a
                // file object it keeps open for the duration of this call; it
                // is only duplicated here, never closed.
                let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
                Input::File(File::from(borrowed.try_clone_to_owned()?))
            }
            (None, Some(obj)) => Input::Stream(Box::new(PyStream {
                obj,
                stash: Arc::clone(&stash),
            })),
            _ => {
                return Err(PyValueError::new_err(
                    "pass exactly one of fd >= 0 or stream",
                ))
            }
        };
        let options = Options {
            format,
            compression,
            skip_bad,
            block_bytes,
            max_line_bytes,
            ..Options::new(chunk_size.max(1))
        };
        let reader = run(py, &stash, || TraceReader::open(&name, input, &options))?;
        Ok(PyTraceReader {
            progress: reader.progress(),
            format: reader.format().name(),
            compression: reader.compression().map(Compression::name),
            reader: Mutex::new(Some(reader)),
            stash,
        })
    }

    /// The next chunk as `(addrs, kinds, cpus, asids)` arrays, or `None` at the end.
    fn next_chunk<'py>(&self, py: Python<'py>) -> PyResult<Option<ChunkArrays<'py>>> {
        let chunk = run(py, &self.stash, || {
            let mut guard = self.reader.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                Some(reader) => reader.next_chunk(),
                None => Ok(None),
            }
        })?;
        Ok(chunk.map(|c| {
            (
                c.addrs.into_pyarray(py),
                c.kinds.into_pyarray(py),
                c.cpus.map(|v| v.into_pyarray(py)),
                c.asids.map(|v| v.into_pyarray(py)),
            )
        }))
    }

    /// Release the file; later `next_chunk` calls return `None`.
    fn close(&self) {
        let mut guard = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        guard.take();
    }

    /// The format read, e.g. `"lackey"`.
    #[getter]
    fn format(&self) -> &'static str {
        self.format
    }

    /// `"gzip"`, `"zstd"`, `"xz"` or `None`.
    #[getter]
    fn compression(&self) -> Option<&'static str> {
        self.compression
    }

    /// Bytes consumed from the underlying file so far.
    #[getter]
    fn bytes_read(&self) -> u64 {
        self.progress.bytes_read.load(Ordering::Relaxed)
    }

    /// Malformed records skipped so far.
    #[getter]
    fn bad_records(&self) -> u64 {
        self.progress.bad_records.load(Ordering::Relaxed)
    }

    /// The message of the first skipped record, once (for a single warning).
    fn take_first_bad(&self) -> Option<String> {
        self.progress.take_first_bad()
    }
}
