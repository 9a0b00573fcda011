//! Address traces: streaming readers for every trace format vmopt accepts.
//!
//! A [`TraceReader`] turns a file or a byte stream (optionally gzip, zstd or
//! xz compressed, see [`source`]) into [`Chunk`]s of parallel arrays:
//! addresses, access kinds and, for formats that carry them, vCPU numbers
//! and address-space ids. Memory stays bounded whatever the input: about
//! one input block (1 MiB) plus one output chunk.
//!
//! Formats, one module each: [`lines`] (Lackey and the plain text format),
//! [`raw`] (little-endian u64), [`npy`] (1-D integer `.npy`, memory-mapped
//! when it is a plain file), [`champsim`] (ChampSim `input_instr` and its
//! cloudsuite variant) and [`drmemtrace`] (DynamoRIO offline traces).
//! [`detect`] picks a format from the name and the first bytes.
//!
//! Errors are [`TraceError`]s whose message is complete on its own and, for
//! the text formats, byte-for-byte the message of the Python reference
//! reader (`file:line: reason`).

pub mod champsim;
pub mod detect;
pub mod drmemtrace;
pub mod lines;
pub mod npy;
pub mod pyfmt;
pub mod raw;
pub mod source;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use source::{Compression, CompressionChoice};

/// A data read (`AccessKind.READ`).
pub const READ: u8 = 0;
/// A data write (`AccessKind.WRITE`).
pub const WRITE: u8 = 1;
/// An instruction fetch (`AccessKind.FETCH`).
pub const FETCH: u8 = 2;

/// The trace formats, named as `vmopt simulate --format` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Valgrind Lackey `--trace-mem=yes` output.
    Lackey,
    /// One `[KIND] ADDRESS` per line.
    Text,
    /// A 1-D integer NumPy `.npy` array (all reads).
    Npy,
    /// Little-endian u64 addresses (all reads).
    Raw,
    /// ChampSim `input_instr` records (64 bytes).
    ChampSim,
    /// ChampSim cloudsuite records (96 bytes, with an ASID).
    ChampSimCloudsuite,
    /// DynamoRIO drmemtrace offline `trace_entry_t` records (12 bytes).
    DrMemtrace,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 7] = [
        Format::Lackey,
        Format::Text,
        Format::Npy,
        Format::Raw,
        Format::ChampSim,
        Format::ChampSimCloudsuite,
        Format::DrMemtrace,
    ];

    /// The user-facing name (`"champsim-cloudsuite"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Lackey => "lackey",
            Format::Text => "text",
            Format::Npy => "npy",
            Format::Raw => "raw",
            Format::ChampSim => "champsim",
            Format::ChampSimCloudsuite => "champsim-cloudsuite",
            Format::DrMemtrace => "drmemtrace",
        }
    }

    /// The format called `name`, if any.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether chunks of this format carry vCPU numbers.
    pub fn has_cpus(self) -> bool {
        self == Format::DrMemtrace
    }

    /// Whether chunks of this format carry address-space ids.
    pub fn has_asids(self) -> bool {
        matches!(self, Format::DrMemtrace | Format::ChampSimCloudsuite)
    }
}

/// A trace that cannot be opened, detected or parsed.
///
/// `message` is the whole text the user sees; `path`, `line` and
/// `content` repeat its facts for programs (as `vmopt.traces.TraceError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    /// The complete message, e.g. `t.txt:17: cannot parse 'zz' as an address`.
    pub message: String,
    /// The trace as the user named it, if the error is tied to one.
    pub path: Option<String>,
    /// The 1-based line number in a text trace.
    pub line: Option<u64>,
    /// The offending text or value.
    pub content: Option<String>,
}

impl TraceError {
    /// An error about the trace `path` as a whole.
    pub fn new(path: &str, message: String) -> TraceError {
        TraceError {
            message,
            path: Some(path.to_owned()),
            line: None,
            content: None,
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TraceError {}

/// `Result` with a [`TraceError`].
pub type TraceResult<T> = std::result::Result<T, TraceError>;

/// A run of accesses as parallel arrays, all of one length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Virtual addresses.
    pub addrs: Vec<u64>,
    /// [`READ`], [`WRITE`] or [`FETCH`] per access.
    pub kinds: Vec<u8>,
    /// vCPU number per access, for formats with threads.
    pub cpus: Option<Vec<u16>>,
    /// Address-space id per access, for formats that carry one.
    pub asids: Option<Vec<u16>>,
}

impl Chunk {
    /// An empty chunk with the optional arrays `format` carries.
    pub fn for_format(format: Format, capacity: usize) -> Chunk {
        Chunk {
            addrs: Vec::with_capacity(capacity),
            kinds: Vec::with_capacity(capacity),
            cpus: format.has_cpus().then(|| Vec::with_capacity(capacity)),
            asids: format.has_asids().then(|| Vec::with_capacity(capacity)),
        }
    }

    /// Number of accesses.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether there are no accesses.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Drop every access, keeping capacity and which arrays exist.
    pub fn clear(&mut self) {
        self.addrs.clear();
        self.kinds.clear();
        if let Some(c) = &mut self.cpus {
            c.clear();
        }
        if let Some(a) = &mut self.asids {
            a.clear();
        }
    }

    /// Append one access (`cpu`/`asid` are ignored where the chunk has no such array).
    #[inline]
    pub fn push(&mut self, addr: u64, kind: u8, cpu: u16, asid: u16) {
        self.addrs.push(addr);
        self.kinds.push(kind);
        if let Some(c) = &mut self.cpus {
            c.push(cpu);
        }
        if let Some(a) = &mut self.asids {
            a.push(asid);
        }
    }

    /// Append accesses `start..end` of `other`.
    fn extend_from(&mut self, other: &Chunk, start: usize, end: usize) {
        self.addrs.extend_from_slice(&other.addrs[start..end]);
        self.kinds.extend_from_slice(&other.kinds[start..end]);
        if let (Some(c), Some(o)) = (&mut self.cpus, &other.cpus) {
            c.extend_from_slice(&o[start..end]);
        }
        if let (Some(a), Some(o)) = (&mut self.asids, &other.asids) {
            a.extend_from_slice(&o[start..end]);
        }
    }
}

/// Counters a reader shares with whoever shows progress (another thread may read them).
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes consumed from the underlying (possibly compressed) file.
    pub bytes_read: AtomicU64,
    /// Malformed records skipped with `skip_bad`.
    pub bad_records: AtomicU64,
    first_bad: Mutex<Option<String>>,
}

impl Progress {
    /// The message of the first skipped record, once.
    pub fn take_first_bad(&self) -> Option<String> {
        self.first_bad.lock().map(|mut g| g.take()).unwrap_or(None)
    }
}

/// What every decoder needs besides its input: the name and the bad-record policy.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The trace as the user named it (`<stdin>` for `-`).
    pub name: String,
    /// Skip and count malformed records instead of failing.
    pub skip_bad: bool,
    /// Shared counters.
    pub progress: Arc<Progress>,
}

impl Ctx {
    /// Count a malformed record, or fail with it unless `skip_bad`.
    pub fn bad(
        &self,
        message: String,
        line: Option<u64>,
        content: Option<String>,
    ) -> TraceResult<()> {
        if !self.skip_bad {
            return Err(TraceError {
                message,
                path: Some(self.name.clone()),
                line,
                content,
            });
        }
        if self.progress.bad_records.fetch_add(1, Ordering::Relaxed) == 0 {
            if let Ok(mut first) = self.progress.first_bad.lock() {
                *first = Some(message);
            }
        }
        Ok(())
    }

    /// An error about the whole trace.
    pub fn error(&self, message: String) -> TraceError {
        TraceError::new(&self.name, message)
    }
}

/// One format's parser: turns input into batches of accesses.
pub trait Decode: Send {
    /// Clear `batch` and fill it with the next accesses (about `hint` of
    /// them, a bounded number in any case); `Ok(false)` once the input is
    /// exhausted (the batch may still hold a last few accesses).
    fn next_batch(&mut self, batch: &mut Chunk, hint: usize, ctx: &Ctx) -> TraceResult<bool>;
}

/// Where a trace comes from.
pub enum Input {
    /// An open file (memory-mapped for plain `.npy`, read in large blocks otherwise).
    File(File),
    /// Any byte stream, e.g. Python's stdin.
    Stream(Box<dyn Read + Send>),
}

/// How to open a trace.
#[derive(Debug, Clone)]
pub struct Options {
    /// The format, or `None` to detect it.
    pub format: Option<Format>,
    /// Detect, disable or force decompression.
    pub compression: CompressionChoice,
    /// Accesses per chunk (all chunks but the last are exactly this long).
    pub chunk_size: usize,
    /// Skip and count malformed records instead of failing.
    pub skip_bad: bool,
    /// Bytes read per block by the line formats ([`lines::BLOCK_BYTES`]).
    pub block_bytes: usize,
    /// Longest line the line formats look for an end of ([`lines::MAX_LINE_BYTES`]).
    pub max_line_bytes: usize,
}

impl Options {
    /// Detect everything, chunks of `chunk_size`, stop at the first malformed record.
    pub fn new(chunk_size: usize) -> Options {
        Options {
            format: None,
            compression: CompressionChoice::Detect,
            chunk_size,
            skip_bad: false,
            block_bytes: lines::BLOCK_BYTES,
            max_line_bytes: lines::MAX_LINE_BYTES,
        }
    }
}

/// A single-pass stream of [`Chunk`]s read from a trace.
pub struct TraceReader {
    ctx: Ctx,
    format: Format,
    compression: Option<Compression>,
    decoder: Box<dyn Decode>,
    chunk_size: usize,
    pending: Chunk,
    pending_pos: usize,
    eof: bool,
}

impl TraceReader {
    /// Open `input` (named `name` in messages), detecting what `options` leaves open.
    pub fn open(name: &str, input: Input, options: &Options) -> TraceResult<TraceReader> {
        let progress = Arc::new(Progress::default());
        let ctx = Ctx {
            name: name.to_owned(),
            skip_bad: options.skip_bad,
            progress: Arc::clone(&progress),
        };
        let chunk_size = options.chunk_size.max(1);
        let mut src =
            source::Source::open(name, input, options.compression, Arc::clone(&progress))?;
        let head = src.peek_head(detect::SNIFF_BYTES)?;
        if head.is_empty() {
            return Err(ctx.error(format!("{name}: empty trace: no records")));
        }
        let format = match options.format {
            Some(f) => f,
            None => detect::detect(name, &head, head.len() < detect::SNIFF_BYTES)?,
        };
        let compression = src.compression();
        let decoder: Box<dyn Decode> = match format {
            Format::Lackey | Format::Text => Box::new(lines::LineDecoder::new(
                src,
                format,
                options.block_bytes.max(1),
                options.max_line_bytes,
            )),
            Format::Raw => Box::new(raw::RawDecoder::new(src, &ctx)?),
            Format::Npy => npy::open(src, &ctx)?,
            Format::ChampSim | Format::ChampSimCloudsuite => {
                Box::new(champsim::ChampSimDecoder::new(src, format))
            }
            Format::DrMemtrace => Box::new(drmemtrace::DrMemtraceDecoder::new(src)),
        };
        Ok(TraceReader {
            ctx,
            format,
            compression,
            decoder,
            chunk_size,
            pending: Chunk::for_format(format, 0),
            pending_pos: 0,
            eof: false,
        })
    }

    /// The format read (detected or forced).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The compression found (or forced), `None` for plain data.
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// The counters shared with progress displays.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.ctx.progress)
    }

    /// The next chunk of exactly `chunk_size` accesses (fewer only at the end), `None` at the end.
    pub fn next_chunk(&mut self) -> TraceResult<Option<Chunk>> {
        let size = self.chunk_size;
        let mut out = Chunk::for_format(self.format, 0);
        loop {
            let left = self.pending.len() - self.pending_pos;
            if left > 0 {
                if out.is_empty() && self.pending_pos == 0 && left == size {
                    out = std::mem::replace(&mut self.pending, Chunk::for_format(self.format, 0));
                    self.pending_pos = 0;
                    return Ok(Some(out));
                }
                if out.addrs.capacity() == 0 {
                    out = Chunk::for_format(self.format, size);
                }
                let take = left.min(size - out.len());
                out.extend_from(&self.pending, self.pending_pos, self.pending_pos + take);
                self.pending_pos += take;
                if out.len() == size {
                    return Ok(Some(out));
                }
                continue;
            }
            if self.eof {
                return Ok((!out.is_empty()).then_some(out));
            }
            self.pending.clear();
            self.pending_pos = 0;
            let more = self
                .decoder
                .next_batch(&mut self.pending, size - out.len(), &self.ctx)?;
            self.eof = !more;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn stream(data: Vec<u8>) -> Input {
        Input::Stream(Box::new(Cursor::new(data)))
    }

    fn read_all(data: Vec<u8>, options: &Options) -> TraceResult<(Format, Vec<usize>, Chunk)> {
        let mut reader = TraceReader::open("t", stream(data), options)?;
        let mut all = Chunk::for_format(reader.format(), 0);
        let mut lens = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            lens.push(chunk.len());
            all.extend_from(&chunk, 0, chunk.len());
        }
        Ok((reader.format(), lens, all))
    }

    #[test]
    fn gzip_text_in_exact_chunks() {
        let text: String = (0..1000).map(|i| format!("W {i:x}\n")).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let (format, lens, all) = read_all(gz.finish().unwrap(), &Options::new(300)).unwrap();
        assert_eq!(format, Format::Text);
        assert_eq!(lens, [300, 300, 300, 100]);
        assert_eq!(all.addrs, (0..1000).collect::<Vec<u64>>());
        assert!(all.kinds.iter().all(|&k| k == WRITE));
    }

    #[test]
    fn malformed_lines_fail_or_count() {
        let data = b"R 1\nR zz\nR 2\n".to_vec();
        let err = read_all(data.clone(), &Options::new(10)).unwrap_err();
        assert_eq!(err.message, "t:2: cannot parse 'zz' as an address");
        assert_eq!((err.line, err.content.as_deref()), (Some(2), Some("R zz")));
        let mut reader = TraceReader::open(
            "t",
            stream(data),
            &Options {
                skip_bad: true,
                ..Options::new(10)
            },
        )
        .unwrap();
        assert_eq!(reader.next_chunk().unwrap().unwrap().addrs, [1, 2]);
        assert_eq!(reader.progress().bad_records.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn drmemtrace_threads_become_cpus() {
        let mut data = Vec::new();
        for (ty, addr) in [
            (25u16, 5u64),
            (22, 100),
            (10, 0x1000),
            (22, 200),
            (0, 0x2000),
            (22, 100),
            (1, 0x3000),
        ] {
            data.extend_from_slice(&ty.to_le_bytes());
            data.extend_from_slice(&8u16.to_le_bytes());
            data.extend_from_slice(&addr.to_le_bytes());
        }
        let (format, _, all) = read_all(data, &Options::new(64)).unwrap();
        assert_eq!(format, Format::DrMemtrace);
        assert_eq!(all.addrs, [0x1000, 0x2000, 0x3000]);
        assert_eq!(all.kinds, [FETCH, READ, WRITE]);
        assert_eq!(all.cpus, Some(vec![0, 1, 0]));
    }

    #[test]
    fn raw_of_odd_length_is_an_error() {
        let options = Options {
            format: Some(Format::Raw),
            ..Options::new(4)
        };
        let err = read_all(vec![1; 12], &options).unwrap_err();
        assert!(err
            .message
            .starts_with("t: raw trace length 12 is not a multiple of 8"));
    }
}
