//! Core errors and panics as the exceptions of `vmopt.errors`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyString};
use vmopt_core::Error;

/// Raise `err` as its `vmopt.errors` class.
pub fn to_py(err: Error) -> PyErr {
    Python::with_gil(|py| match build(py, &err) {
        Ok(e) => e,
        Err(e) => e,
    })
}

fn build(py: Python<'_>, err: &Error) -> PyResult<PyErr> {
    let errors = py.import("vmopt.errors")?;
    let simple = |class: &str, msg: &str| -> PyResult<PyErr> {
        Ok(PyErr::from_value(errors.getattr(class)?.call1((msg,))?))
    };
    match err {
        Error::Config(m) => simple("ConfigError", m),
        Error::Address(m) => simple("AddressError", m),
        Error::PhysicalAccess(m) => simple("PhysicalAccessError", m),
        Error::ReadOnly(m) => simple("ReadOnlyMemoryError", m),
        Error::Mapping(m) => simple("MappingError", m),
        Error::OutOfFrames {
            message,
            size,
            node,
        } => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("size", size)?;
            kwargs.set_item("node", node)?;
            Ok(PyErr::from_value(
                errors
                    .getattr("OutOfFramesError")?
                    .call((message,), Some(&kwargs))?,
            ))
        }
        Error::Fault(f) => {
            let kwargs = PyDict::new(py);
            kwargs.set_item("user", f.user)?;
            kwargs.set_item("fsc", f.fsc)?;
            if let Some(stage) = f.stage {
                kwargs.set_item("stage", stage.as_str())?;
                if let vmopt_core::paging::Stage::Host { gpa, table } = stage {
                    kwargs.set_item("gpa", gpa)?;
                    kwargs.set_item("on_table", table)?;
                }
            }
            let args = (
                f.va,
                f.access.as_char().to_string(),
                f.cause.as_str(),
                f.level,
            );
            Ok(PyErr::from_value(
                errors.getattr("PageFault")?.call(args, Some(&kwargs))?,
            ))
        }
    }
}

/// Run `f`, turning a core error into its exception and a panic into a `VmoptError`.
///
/// Every binding method goes through this, so a bug in the core reaches
/// Python as a clear `VmoptError` naming the panic, never as a crash or a
/// `PanicException`.
pub fn guarded<T>(f: impl FnOnce() -> vmopt_core::Result<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => Err(panic_to_py(panic)),
    }
}

/// A panic payload as a `VmoptError`.
pub fn panic_to_py(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Python::with_gil(|py| {
        let make = || -> PyResult<PyErr> {
            let class = py.import("vmopt.errors")?.getattr("VmoptError")?;
            Ok(PyErr::from_value(class.call1((format!(
                "internal error in the vmopt core: {what}"
            ),))?))
        };
        make().unwrap_or_else(|_| {
            PyRuntimeError::new_err(format!("internal error in the vmopt core: {what}"))
        })
    })
}

/// An int argument that must fit `T`; anything else is an `InputError` naming the value.
///
/// PyO3's own conversion raises `TypeError` or `OverflowError`, which are not
/// `VmoptError`s; this keeps the promise that every error derives from it.
pub struct Int<T>(pub T);

impl<'py, T: FromPyObject<'py>> FromPyObject<'py> for Int<T> {
    fn extract_bound(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if obj.downcast::<PyFloat>().is_err() && obj.downcast::<PyString>().is_err() {
            if let Ok(v) = obj.extract::<T>() {
                return Ok(Int(v));
            }
        }
        let py = obj.py();
        let what = std::any::type_name::<T>();
        let class = py.import("vmopt.errors")?.getattr("InputError")?;
        Err(PyErr::from_value(class.call1((format!(
            "expected an int that fits {what}, got {}",
            obj.repr()?
        ),))?))
    }
}
