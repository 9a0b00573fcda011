//! The one error type of the core.
//!
//! Each variant corresponds to one Python exception class of `vmopt.errors`
//! (the binding maps them one to one); the message is the whole text the
//! user sees and always names the offending value.

use std::fmt;

use crate::paging::Fault;

/// Everything the core reports as failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A configuration value is invalid (`ConfigError`).
    Config(String),
    /// An address is out of range, unaligned or non-canonical (`AddressError`).
    Address(String),
    /// A physical access falls outside guest memory (`PhysicalAccessError`).
    PhysicalAccess(String),
    /// A write to memory opened read-only (`ReadOnlyMemoryError`).
    ReadOnly(String),
    /// A map/unmap/protect/free request conflicts with current state (`MappingError`).
    Mapping(String),
    /// No free block of the requested size (`OutOfFramesError`).
    OutOfFrames {
        /// The whole message.
        message: String,
        /// Requested block size in bytes.
        size: u64,
        /// The node that ran out, if the memory is NUMA.
        node: Option<u32>,
    },
    /// A translation faulted the way the hardware would (`PageFault`).
    Fault(Fault),
}

/// `Result` with the core's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m)
            | Error::Address(m)
            | Error::PhysicalAccess(m)
            | Error::ReadOnly(m)
            | Error::Mapping(m) => f.write_str(m),
            Error::OutOfFrames { message, .. } => f.write_str(message),
            Error::Fault(fault) => fault.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        Error::Fault(fault)
    }
}

/// `4096 -> "4 KiB"`, `3 << 20 -> "3 MiB"`, `1536 -> "1.5 KiB"`: exactly `vmopt.units.format_size`.
pub fn format_size(n: u64) -> String {
    for (name, unit) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= unit {
            let value = n as f64 / unit as f64;
            return if n % unit == 0 {
                format!("{} {name}", n / unit)
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::format_size;

    #[test]
    fn sizes_print_as_python_prints_them() {
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(3 << 20), "3 MiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(1 << 40), "1024 GiB");
    }
}
