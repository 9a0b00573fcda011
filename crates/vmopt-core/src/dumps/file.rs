//! The dump file as bytes: an mmap'd file, or a makedumpfile flattened stream seen as the file it encodes.
//!
//! Readers never load a file whole and never trust a length field: every
//! read names its field and is checked against the file's real length first.

use std::fmt;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::memory::phys::py_repr;

/// A dump that cannot be opened or is malformed.
///
/// `message` is the whole text the user sees; `field` and `value` repeat
/// the offending header field and its value for programs
/// (as `vmopt.dumps.DumpError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError {
    /// The complete message, naming the file, the field and its value.
    pub message: String,
    /// The dump as the user named it.
    pub path: String,
    /// The header field at fault (`e_phoff`, `block_size`, ...), if one is.
    pub field: Option<String>,
    /// That field's value.
    pub value: Option<u64>,
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DumpError {}

/// `Result` with a [`DumpError`].
pub type DumpResult<T> = std::result::Result<T, DumpError>;

/// Who is reading what: builds errors that name the file and format.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub path: String,
    pub format: &'static str,
}

impl Ctx {
    /// An error about `field` = `value`.
    pub fn field(&self, field: &str, value: u64, why: &str) -> DumpError {
        DumpError {
            message: format!(
                "{}: {} {field} {value:#x}: {why}",
                py_repr(&self.path),
                self.format
            ),
            path: self.path.clone(),
            field: Some(field.to_owned()),
            value: Some(value),
        }
    }

    /// An error about the file as a whole.
    pub fn whole(&self, why: &str) -> DumpError {
        DumpError {
            message: format!("{}: {}: {why}", py_repr(&self.path), self.format),
            path: self.path.clone(),
            field: None,
            value: None,
        }
    }
}

/// Random-access bytes of a dump.
pub(crate) trait Bytes: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Fill `buf` from offset `off`; false (and `buf` unspecified) if the range passes the end.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> bool;
}

/// A file mapped read-only (an empty file maps to no bytes).
pub(crate) struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Map `path`, or say why not.
    pub fn open(path: &Path, shown: &str) -> DumpResult<MappedFile> {
        let fail = |e: std::io::Error| DumpError {
            message: format!("cannot open dump {}: {e}", py_repr(shown)),
            path: shown.to_owned(),
            field: None,
            value: None,
        };
        let file = File::open(path).map_err(fail)?;
        let meta = file.metadata().map_err(fail)?;
        if meta.is_dir() {
            return Err(DumpError {
                message: format!("dump {} is a directory, not a file", py_repr(shown)),
                path: shown.to_owned(),
                field: None,
                value: None,
            });
        }
        if meta.len() == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is only read as plain bytes (copied out, never referenced as
        // typed data), so a concurrent change to the file changes values read, nothing else.
        let map = unsafe { Mmap::map(&file) }.map_err(fail)?;
        Ok(MappedFile { map: Some(map) })
    }

    /// The bytes `[off, off + n)`, if inside the file.
    pub fn slice(&self, off: u64, n: u64) -> Option<&[u8]> {
        let map = self.map.as_deref().unwrap_or(&[]);
        let end = off.checked_add(n)?;
        if end > map.len() as u64 {
            return None;
        }
        Some(&map[off as usize..end as usize])
    }
}

impl Bytes for MappedFile {
    fn len(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len() as u64)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> bool {
        match self.slice(off, buf.len() as u64) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

/// Checked little-endian field reads from a [`Bytes`], each naming its field.
pub(crate) struct Fields<'a> {
    pub src: &'a dyn Bytes,
    pub ctx: &'a Ctx,
}

impl Fields<'_> {
    /// `N` bytes at `off`, or the error that `what` at `off` is past the end of the file.
    pub fn array<const N: usize>(&self, off: u64, what: &str) -> DumpResult<[u8; N]> {
        let mut b = [0u8; N];
        if self.src.read_at(off, &mut b) {
            Ok(b)
        } else {
            Err(self.ctx.field(
                &format!("{what} offset"),
                off,
                &format!(
                    "{N} bytes there pass the end of the file ({} bytes): truncated",
                    self.src.len()
                ),
            ))
        }
    }
    pub fn u16(&self, off: u64, what: &str) -> DumpResult<u16> {
        Ok(u16::from_le_bytes(self.array(off, what)?))
    }
    pub fn u32(&self, off: u64, what: &str) -> DumpResult<u32> {
        Ok(u32::from_le_bytes(self.array(off, what)?))
    }
    pub fn u64(&self, off: u64, what: &str) -> DumpResult<u64> {
        Ok(u64::from_le_bytes(self.array(off, what)?))
    }
    /// `n` bytes at `off` (the caller bounds `n`), checked against the file first.
    pub fn vec(&self, off: u64, n: u64, what: &str) -> DumpResult<Vec<u8>> {
        let end = off.checked_add(n);
        if end.map_or(true, |e| e > self.src.len()) {
            return Err(self.ctx.field(
                &format!("{what} offset"),
                off,
                &format!(
                    "{n} bytes there pass the end of the file ({} bytes)",
                    self.src.len()
                ),
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.src.read_at(off, &mut v);
        Ok(v)
    }
}
