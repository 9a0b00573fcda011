//! Byte sources: a file or stream, transparently decompressed.
//!
//! Compression is recognised by magic bytes, not by name, so piped and
//! misnamed files work. gzip (any number of members), zstd (any number of
//! frames) and xz (any number of streams) are decoded as they stream past,
//! so a decompression bomb costs time, never memory. Bytes taken from the
//! underlying file are counted in [`Progress::bytes_read`].

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{pyfmt, Input, Progress, TraceError, TraceResult};

/// A compression vmopt decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// Zstandard, possibly several frames.
    Zstd,
    /// xz, possibly several streams.
    Xz,
}

impl Compression {
    /// The name used in options and reports (`"gzip"`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }

    /// The compression called `name`.
    pub fn from_name(name: &str) -> Option<Compression> {
        [Compression::Gzip, Compression::Zstd, Compression::Xz]
            .into_iter()
            .find(|c| c.name() == name)
    }

    fn from_magic(head: &[u8]) -> Option<Compression> {
        if head.starts_with(b"\x1f\x8b") {
            Some(Compression::Gzip)
        } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
            Some(Compression::Zstd)
        } else if head.starts_with(b"\xfd7zXZ\x00") {
            Some(Compression::Xz)
        } else {
            None
        }
    }
}

/// What to do about compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionChoice {
    /// Decode whatever the magic bytes say.
    Detect,
    /// Read the bytes as they are.
    Plain,
    /// Always use this decoder.
    Force(Compression),
}

const MAGIC_LEN: usize = 6;

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Python's `exc.strerror`: the OS message without Rust's ` (os error N)` suffix.
pub fn os_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(cut) if err.raw_os_error().is_some() => text[..cut].to_owned(),
        _ => text,
    }
}

/// A sequential, decompressed byte stream whose first bytes can be peeked.
pub struct Source {
    name: String,
    reader: Box<dyn Read + Send>,
    head: Vec<u8>,
    replay: usize,
    compression: Option<Compression>,
    plain_file: Option<(File, u64)>,
    position: u64,
    progress: Arc<Progress>,
}

impl Source {
    /// Open `input`, choosing a decoder per `choice`.
    pub fn open(
        name: &str,
        input: Input,
        choice: CompressionChoice,
        progress: Arc<Progress>,
    ) -> TraceResult<Source> {
        let (raw, plain_file): (Box<dyn Read + Send>, Option<(File, u64)>) = match input {
            Input::File(file) => {
                let meta = file.metadata().ok();
                let regular = meta.as_ref().filter(|m| m.is_file()).map(|m| m.len());
                let map = match regular {
                    Some(size) => file.try_clone().ok().map(|f| (f, size)),
                    None => None,
                };
                (Box::new(file), map)
            }
            Input::Stream(stream) => (stream, None),
        };
        let mut counting = Counting {
            inner: raw,
            progress: Arc::clone(&progress),
        };
        let mut magic = vec![0u8; MAGIC_LEN];
        let got = read_fully(&mut counting, &mut magic).map_err(|e| {
            TraceError::new(
                name,
                format!(
                    "cannot read trace {}: {}",
                    pyfmt::repr_str(name.as_bytes()),
                    os_reason(&e)
                ),
            )
        })?;
        magic.truncate(got);
        let compression = match choice {
            CompressionChoice::Detect => Compression::from_magic(&magic),
            CompressionChoice::Plain => None,
            CompressionChoice::Force(c) => Some(c),
        };
        let chained = Cursor::new(magic).chain(counting);
        let reader: Box<dyn Read + Send> = match compression {
            None => Box::new(chained),
            Some(Compression::Gzip) => Box::new(flate2::read::MultiGzDecoder::new(chained)),
            Some(Compression::Xz) => Box::new(xz2::read::XzDecoder::new_multi_decoder(chained)),
            Some(Compression::Zstd) => {
                Box::new(zstd::stream::read::Decoder::new(chained).map_err(|e| {
                    TraceError::new(name, format!("{name}: cannot start zstd decoding: {e}"))
                })?)
            }
        };
        Ok(Source {
            name: name.to_owned(),
            reader,
            head: Vec::new(),
            replay: 0,
            compression,
            plain_file: if compression.is_none() {
                plain_file
            } else {
                None
            },
            position: 0,
            progress,
        })
    }

    /// The decoder in use, `None` for plain bytes.
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// The file and its size when the data is an uncompressed regular file (memory-mappable).
    pub fn plain_file(&self) -> Option<&(File, u64)> {
        self.plain_file.as_ref()
    }

    /// Decompressed bytes handed out by [`Source::read`] so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The shared progress counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Up to the first `n` decompressed bytes, without consuming them.
    pub fn peek_head(&mut self, n: usize) -> TraceResult<Vec<u8>> {
        if self.head.len() < n {
            let have = self.head.len();
            self.head.resize(n, 0);
            let got = self.raw_read(have, n)?;
            self.head.truncate(have + got);
        }
        Ok(self.head[..self.head.len().min(n)].to_vec())
    }

    fn raw_read(&mut self, from: usize, to: usize) -> TraceResult<usize> {
        let Source {
            reader, head, name, ..
        } = self;
        read_fully(reader, &mut head[from..to])
            .map_err(|e| decode_error(name, self.compression, &e))
    }

    /// Fill `buf` (fewer bytes only at the end of the data); returns the count, 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> TraceResult<usize> {
        let mut done = 0;
        if self.replay < self.head.len() {
            let n = (self.head.len() - self.replay).min(buf.len());
            buf[..n].copy_from_slice(&self.head[self.replay..self.replay + n]);
            self.replay += n;
            done = n;
            if self.replay == self.head.len() {
                self.head = Vec::new();
                self.replay = 0;
            }
        }
        if done < buf.len() {
            let compression = self.compression;
            done += read_fully(&mut self.reader, &mut buf[done..])
                .map_err(|e| decode_error(&self.name, compression, &e))?;
        }
        self.position += done as u64;
        Ok(done)
    }
}

fn decode_error(name: &str, compression: Option<Compression>, err: &io::Error) -> TraceError {
    let what = match compression {
        Some(c) => format!("corrupt or truncated {} data", c.name()),
        None => "read error".to_owned(),
    };
    TraceError::new(name, format!("{name}: {what}: {}", os_reason(err)))
}

/// Read until `buf` is full or the stream ends (pipes and decoders return short reads).
fn read_fully<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
