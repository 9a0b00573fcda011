//! NumPy `.npy` traces: a 1-D integer array of addresses, all reads.
//!
//! The header (magic, version 1.0/2.0/3.0, a Python dict literal with
//! `descr`, `fortran_order` and `shape`) is parsed here; every malformed
//! case is a [`TraceError`] naming what is wrong: a bad magic or version, a
//! truncated or oversized header, a header that is not such a dict, a
//! non-integer or multi-dimensional array, a negative or huge shape.
//! `fortran_order` is accepted either way: a 1-D array has the same bytes
//! in both orders (as NumPy itself reads it).
//!
//! A plain file is memory-mapped (no copy of the file is ever made; pages
//! behind the reader are dropped so resident memory stays bounded);
//! compressed data and streams are read element by element in batches.
//! Negative elements of signed arrays are malformed records.

use memmap2::{Mmap, UncheckedAdvice};

use super::source::Source;
use super::{Chunk, Ctx, Decode, TraceError, TraceResult, READ};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header accepted (NumPy's own safety limit).
pub const MAX_HEADER_BYTES: usize = 10_000;
/// Mapped bytes dropped from memory at a time once the reader is past them.
const DROP_BYTES: usize = 64 << 20;

/// A Python literal, as far as `.npy` headers use them.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<Lit>),
    List(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

struct LitParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn seq(&mut self, close: u8) -> Result<(Vec<Lit>, bool), String> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            if self.eat(close) {
                return Ok((items, trailing_comma));
            }
            items.push(self.value(0)?);
            trailing_comma = self.eat(b',');
            if !trailing_comma {
                return if self.eat(close) {
                    Ok((items, false))
                } else {
                    Err(format!("expected '{}' at byte {}", close as char, self.i))
                };
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Lit, String> {
        if depth > 32 {
            return Err("header nests too deeply".into());
        }
        let depth = depth + 1;
        match self.peek() {
            None => Err("header ends early".into()),
            Some(b'{') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Ok(Lit::Dict(items));
                    }
                    let key = self.value(depth)?;
                    if !self.eat(b':') {
                        return Err(format!("expected ':' at byte {}", self.i));
                    }
                    items.push((key, self.value(depth)?));
                    if !self.eat(b',') {
                        return if self.eat(b'}') {
                            Ok(Lit::Dict(items))
                        } else {
                            Err(format!("expected '}}' at byte {}", self.i))
                        };
                    }
                }
            }
            Some(b'(') => {
                self.i += 1;
                let (items, comma) = self.seq(b')')?;
                if items.len() == 1 && !comma {
                    Ok(items.into_iter().next().unwrap_or(Lit::None))
                } else {
                    Ok(Lit::Tuple(items))
                }
            }
            Some(b'[') => {
                self.i += 1;
                Ok(Lit::List(self.seq(b']')?.0))
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' {
                        return Err("escapes in header strings are not supported".into());
                    }
                    self.i += 1;
                }
                if self.i == self.s.len() {
                    return Err("unterminated string in header".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(text))
            }
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let mut text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1; // Python 2 long suffix, as NumPy filters it
                }
                text = text.trim_start_matches('+');
                text.parse::<i128>()
                    .map(Lit::Int)
                    .map_err(|_| format!("bad integer {text:?} in header"))
            }
            Some(_) => {
                let rest = &self.s[self.i..];
                for (word, lit) in [
                    ("True", Lit::Bool(true)),
                    ("False", Lit::Bool(false)),
                    ("None", Lit::None),
                ] {
                    if rest.starts_with(word.as_bytes()) {
                        self.i += word.len();
                        return Ok(lit);
                    }
                }
                Err(format!(
                    "unexpected byte {:?} at {} in header",
                    rest[0] as char, self.i
                ))
            }
        }
    }
}

/// An array element type from a `descr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtype {
    kind: u8,
    size: usize,
    big: bool,
    shown: String,
}

impl Dtype {
    fn parse(descr: &Lit) -> Result<Dtype, String> {
        let Lit::Str(text) = descr else {
            return Ok(Dtype {
                kind: b'V',
                size: 0,
                big: false,
                shown: "structured".into(),
            });
        };
        let named = [
            ("int8", "i1"),
            ("int16", "i2"),
            ("int32", "i4"),
            ("int64", "i8"),
            ("uint8", "u1"),
            ("uint16", "u2"),
            ("uint32", "u4"),
            ("uint64", "u8"),
            ("float32", "f4"),
            ("float64", "f8"),
            ("bool", "b1"),
        ];
        let code = named
            .iter()
            .find(|(n, _)| *n == text)
            .map_or(text.as_str(), |(_, c)| c);
        let b = code.as_bytes();
        let (order, rest) = match b.first() {
            Some(o @ (b'<' | b'>' | b'|' | b'=')) => (*o, &b[1..]),
            _ => (b'=', b),
        };
        let Some((&kind, digits)) = rest.split_first() else {
            return Err(format!("descr {text:?} is not a valid dtype"));
        };
        if !b"biufcmMOSUV".contains(&kind) {
            return Err(format!("descr {text:?} is not a valid dtype"));
        }
        let size_text: String = digits
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .map(|&d| d as char)
            .collect();
        let size = match (kind, size_text.parse::<usize>()) {
            (b'O', _) => 8,
            (_, Ok(s)) => s,
            (b'S' | b'U' | b'V', Err(_)) => 0,
            _ => return Err(format!("descr {text:?} is not a valid dtype")),
        };
        let big = order == b'>' && size > 1;
        let name = match (kind, size) {
            (b'i', 1 | 2 | 4 | 8) => Some(format!("int{}", size * 8)),
            (b'u', 1 | 2 | 4 | 8) => Some(format!("uint{}", size * 8)),
            (b'f', 2 | 4 | 8 | 16) => Some(format!("float{}", size * 8)),
            (b'c', 8 | 16 | 32) => Some(format!("complex{}", size * 8)),
            (b'b', 1) => Some("bool".into()),
            (b'O', _) => Some("object".into()),
            _ => None,
        };
        let shown = match name {
            Some(n) if !big => n,
            _ => text.clone(),
        };
        Ok(Dtype {
            kind,
            size,
            big,
            shown,
        })
    }

    fn is_int(&self) -> bool {
        matches!(self.kind, b'i' | b'u') && matches!(self.size, 1 | 2 | 4 | 8)
    }

    /// Element `bytes` (one item) as an i128.
    #[inline]
    fn value(&self, bytes: &[u8]) -> i128 {
        let mut word = [0u8; 8];
        let n = self.size;
        if self.big {
            for (i, b) in bytes[..n].iter().rev().enumerate() {
                word[i] = *b;
            }
        } else {
            word[..n].copy_from_slice(&bytes[..n]);
        }
        let raw = u64::from_le_bytes(word);
        if self.kind == b'i' {
            let shift = 64 - 8 * n as u32;
            (((raw << shift) as i64) >> shift) as i128
        } else {
            raw as i128
        }
    }
}

/// What a `.npy` header says.
#[derive(Debug, Clone)]
pub struct Header {
    /// The element type.
    pub dtype: Dtype,
    /// Number of elements (the one dimension).
    pub count: u64,
    /// Bytes before the data.
    pub offset: u64,
}

fn shape_text(dims: &[i128]) -> String {
    match dims {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            dims.iter()
                .map(i128::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Read and check the header from the start of `src`.
pub fn read_header(src: &mut Source, ctx: &Ctx) -> TraceResult<Header> {
    let invalid = |why: String| ctx.error(format!("{}: not a valid .npy file: {why}", ctx.name));
    let mut pre = [0u8; 12];
    let got = src.read(&mut pre[..8])?;
    if got < 8 || &pre[..6] != MAGIC {
        return Err(invalid(format!(
            "the magic string is not correct; expected {}, got {}",
            super::pyfmt::repr_bytes(MAGIC),
            super::pyfmt::repr_bytes(&pre[..got.min(6)])
        )));
    }
    let (major, minor) = (pre[6], pre[7]);
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => {
            return Err(invalid(format!(
                "unsupported format version {major}.{minor}"
            )))
        }
    };
    if src.read(&mut pre[8..8 + len_bytes])? < len_bytes {
        return Err(invalid("truncated header length".into()));
    }
    let hlen = if len_bytes == 2 {
        u16::from_le_bytes([pre[8], pre[9]]) as usize
    } else {
        let mut l = [0u8; 4];
        l.copy_from_slice(&pre[8..12]);
        u32::from_le_bytes(l) as usize
    };
    if hlen > MAX_HEADER_BYTES {
        return Err(invalid(format!(
            "header of {hlen} bytes is longer than the {MAX_HEADER_BYTES} allowed"
        )));
    }
    let mut header = vec![0u8; hlen];
    let got = src.read(&mut header)?;
    if got < hlen {
        return Err(invalid(format!("truncated header: {got} of {hlen} bytes")));
    }
    let mut parser = LitParser { s: &header, i: 0 };
    let lit = parser.value(0).map_err(&invalid)?;
    let Lit::Dict(items) = lit else {
        return Err(invalid("the header is not a dictionary".into()));
    };
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| *k == Lit::Str(key.into()))
            .map(|(_, v)| v)
    };
    let mut keys: Vec<String> = items
        .iter()
        .map(|(k, _)| match k {
            Lit::Str(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    keys.sort();
    if keys != ["descr", "fortran_order", "shape"] {
        return Err(invalid(format!(
            "the header must have exactly the keys 'descr', 'fortran_order' and 'shape', got {keys:?}"
        )));
    }
    let dims: Vec<i128> = match get("shape") {
        Some(Lit::Tuple(d)) => d
            .iter()
            .map(|x| match x {
                Lit::Int(v) => Ok(*v),
                _ => Err(invalid("shape is not a tuple of integers".into())),
            })
            .collect::<TraceResult<_>>()?,
        _ => return Err(invalid("shape is not a tuple of integers".into())),
    };
    if !matches!(get("fortran_order"), Some(Lit::Bool(_))) {
        return Err(invalid("fortran_order is not True or False".into()));
    }
    let dtype = Dtype::parse(get("descr").unwrap_or(&Lit::None)).map_err(&invalid)?;
    if dims.len() != 1 || !dtype.is_int() {
        return Err(ctx.error(format!(
            "{}: expected a 1-D integer array in the .npy file, got dtype {} with shape {}",
            ctx.name,
            dtype.shown,
            shape_text(&dims)
        )));
    }
    if dims[0] < 0 {
        return Err(invalid(format!(
            "negative dimension {} in shape {}",
            dims[0],
            shape_text(&dims)
        )));
    }
    let count = u64::try_from(dims[0])
        .map_err(|_| invalid(format!("shape {} is too large", shape_text(&dims))))?;
    Ok(Header {
        dtype,
        count,
        offset: src.position(),
    })
}

/// Open a `.npy` trace: memory-mapped for a plain file, streamed otherwise.
pub fn open(mut src: Source, ctx: &Ctx) -> TraceResult<Box<dyn Decode>> {
    let header = read_header(&mut src, ctx)?;
    if header.count == 0 {
        return Err(ctx.error(format!("{}: empty trace: no records", ctx.name)));
    }
    let item = header.dtype.size as u128;
    let need = header.offset as u128 + header.count as u128 * item;
    if let Some((file, total)) = src.plain_file() {
        if (*total as u128) < need {
            return Err(ctx.error(format!(
                "{}: truncated .npy file: header declares {} elements ({need} bytes) but the file has {total} bytes",
                ctx.name, header.count
            )));
        }
        // SAFETY: a read-only map of a file vmopt never writes; if another
        // process changes the file, elements read as different integers
        // (they are copied out as plain bytes, never referenced). Truncating
        // the file under a running reader is the one case mmap cannot guard
        // (SIGBUS), as for every memory-mapped reader.
        let map = unsafe { Mmap::map(file) }.map_err(|e| {
            ctx.error(format!(
                "{}: cannot memory-map the .npy file: {}",
                ctx.name,
                super::source::os_reason(&e)
            ))
        })?;
        let _ = map.advise(memmap2::Advice::Sequential);
        return Ok(Box::new(NpyMapped {
            map,
            header,
            next: 0,
            dropped: 0,
        }));
    }
    Ok(Box::new(NpyStream {
        src,
        header,
        done: 0,
        buf: Vec::new(),
    }))
}

fn push_values(
    dtype: &Dtype,
    bytes: &[u8],
    first: u64,
    out: &mut Chunk,
    ctx: &Ctx,
) -> TraceResult<()> {
    let size = dtype.size;
    if dtype.kind == b'u' && size == 8 && !dtype.big {
        out.addrs.extend(
            bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        );
    } else {
        for (i, item) in bytes.chunks_exact(size).enumerate() {
            let v = dtype.value(item);
            if v < 0 {
                ctx.bad(
                    format!(
                        "{}: element {} is negative ({v}); addresses must be >= 0",
                        ctx.name,
                        first + i as u64
                    ),
                    None,
                    Some(v.to_string()),
                )?;
                continue;
            }
            out.addrs.push(v as u64);
        }
    }
    out.kinds.resize(out.addrs.len(), READ);
    Ok(())
}

struct NpyMapped {
    map: Mmap,
    header: Header,
    next: u64,
    dropped: usize,
}

impl Decode for NpyMapped {
    fn next_batch(&mut self, out: &mut Chunk, hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        let n = (hint.clamp(1, 1 << 20) as u64).min(self.header.count - self.next);
        let item = self.header.dtype.size as u64;
        let start = (self.header.offset + self.next * item) as usize;
        let end = start + (n * item) as usize;
        push_values(
            &self.header.dtype,
            &self.map[start..end],
            self.next,
            out,
            ctx,
        )?;
        self.next += n;
        ctx.progress
            .bytes_read
            .store(end as u64, std::sync::atomic::Ordering::Relaxed);
        let page = 4096;
        let behind = end / page * page;
        if behind >= self.dropped + DROP_BYTES {
            // SAFETY: a read-only file mapping; dropped pages are read again
            // from the file if touched, and this reader never goes back.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    self.dropped,
                    behind - self.dropped,
                )
            };
            self.dropped = behind;
        }
        Ok(self.next < self.header.count)
    }
}

struct NpyStream {
    src: Source,
    header: Header,
    done: u64,
    buf: Vec<u8>,
}

impl Decode for NpyStream {
    fn next_batch(&mut self, out: &mut Chunk, hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        let n = (hint.clamp(1, 1 << 20) as u64).min(self.header.count - self.done);
        let item = self.header.dtype.size;
        self.buf.resize(n as usize * item, 0);
        let got = self.src.read(&mut self.buf)?;
        if got < self.buf.len() {
            return Err(TraceError::new(
                &ctx.name,
                format!(
                    "{}: truncated .npy data: header declares {} elements, found {}",
                    ctx.name,
                    self.header.count,
                    self.done + (got / item) as u64
                ),
            ));
        }
        push_values(&self.header.dtype, &self.buf, self.done, out, ctx)?;
        self.done += n;
        Ok(self.done < self.header.count)
    }
}
