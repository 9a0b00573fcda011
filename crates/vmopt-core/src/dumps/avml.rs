//! AVML v2 dumps: LiME-style range headers (magic "AVML", version 2), each range's bytes a snappy frame stream followed by the stream's length (u64).
//!
//! The frame stream is indexed when the file is opened (chunk headers only);
//! a chunk (at most 64 KiB) is decompressed when read, into a bounded cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::dumps::file::{Bytes, Ctx, DumpResult, Fields, MappedFile};
use crate::dumps::lime::{range_header, HEADER_SIZE};
use crate::error::{Error, Result};
use crate::memory::phys::py_repr;
use crate::memory::FrameSource;

/// `"AVML"` read as a little-endian u32.
pub const AVML_MAGIC: u32 = 0x4C4D_5641;
/// The largest uncompressed chunk of a snappy frame stream.
const MAX_CHUNK: u64 = 65536;
/// Decompressed chunks kept (4 MiB).
const CACHE_CHUNKS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Chunk {
    pa: u64,
    len: u64,
    /// Offset of the chunk's data after its 4-byte checksum.
    off: u64,
    stored: u64,
    compressed: bool,
}

/// Decompressed chunks by index, and their insertion order for eviction.
type ChunkCache = (FxHashMap<usize, Arc<[u8]>>, VecDeque<usize>);

/// An AVML file's memory: the chunk index and a cache of decompressed chunks.
pub struct AvmlSource {
    file: Arc<MappedFile>,
    path: String,
    chunks: Vec<Chunk>,
    cache: Mutex<ChunkCache>,
}

/// Index the AVML file in `file`.
pub(crate) fn read(file: Arc<MappedFile>, ctx: &Ctx) -> DumpResult<AvmlSource> {
    let f = Fields {
        src: file.as_ref(),
        ctx,
    };
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
    let mut pos = 0u64;
    while pos < file.len() {
        let index = ranges.len();
        let h = range_header(&f, pos, index, AVML_MAGIC, 2)?;
        let stream = pos + HEADER_SIZE;
        let mut at = stream;
        let mut filled = 0u64;
        while filled < h.len {
            let head: [u8; 4] = f.array(at, &format!("range {index} snappy chunk header"))?;
            let kind = head[0];
            let clen = u64::from(u32::from_le_bytes([head[1], head[2], head[3], 0]));
            let data = at + 4;
            if data.checked_add(clen).map_or(true, |e| e > file.len()) {
                return Err(ctx.field(
                    &format!("range {index} snappy chunk length (at offset {at:#x})"),
                    clen,
                    &format!(
                        "passes the end of the file ({} bytes): truncated",
                        file.len()
                    ),
                ));
            }
            let chunk_err = |why: &str| {
                ctx.field(
                    &format!("range {index} snappy chunk type (at offset {at:#x})"),
                    u64::from(kind),
                    why,
                )
            };
            match kind {
                0x00 | 0x01 => {
                    if clen < 4 {
                        return Err(chunk_err("a data chunk shorter than its checksum"));
                    }
                    let stored = clen - 4;
                    let ulen = if kind == 0x00 {
                        let raw = f.vec(data + 4, stored.min(16), "snappy chunk")?;
                        // The uncompressed length is the varint that starts the raw block.
                        snap::raw::decompress_len(&raw)
                            .map_err(|e| chunk_err(&format!("bad snappy block: {e}")))?
                            as u64
                    } else {
                        stored
                    };
                    if ulen == 0 || ulen > MAX_CHUNK || filled + ulen > h.len {
                        return Err(ctx.field(
                            &format!("range {index} snappy chunk (at offset {at:#x}) length"),
                            ulen,
                            &format!(
                                "expected 1 to 65536 bytes within the range's {:#x} bytes ({filled:#x} filled)",
                                h.len
                            ),
                        ));
                    }
                    chunks.push(Chunk {
                        pa: h.start + filled,
                        len: ulen,
                        off: data + 4,
                        stored,
                        compressed: kind == 0x00,
                    });
                    filled += ulen;
                }
                0xff => {
                    if f.vec(data, clen.min(16), "snappy stream identifier")? != b"sNaPpY" {
                        return Err(chunk_err("a stream identifier that is not \"sNaPpY\""));
                    }
                }
                0x80..=0xfe => {}
                _ => return Err(chunk_err("a reserved unskippable chunk type")),
            }
            at = data + clen;
        }
        let size = f.u64(at, &format!("range {index} stream size"))?;
        if size != at - stream {
            return Err(ctx.field(
                &format!("range {index} stream size"),
                size,
                &format!("the snappy stream is {:#x} bytes", at - stream),
            ));
        }
        ranges.push((h.start, h.len, index));
        pos = at + 8;
    }
    if ranges.is_empty() {
        return Err(ctx.whole("no ranges"));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            return Err(ctx.field(
                &format!("range {} start", w[1].2),
                w[1].0,
                &format!("overlaps range {}", w[0].2),
            ));
        }
    }
    chunks.sort_unstable_by_key(|c| c.pa);
    Ok(AvmlSource {
        file,
        path: ctx.path.clone(),
        chunks,
        cache: Mutex::new(Default::default()),
    })
}

impl AvmlSource {
    fn chunk_bytes(&self, i: usize) -> Result<Arc<[u8]>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.0.get(&i) {
            return Ok(b.clone());
        }
        let c = self.chunks[i];
        let src = self.file.slice(c.off, c.stored).unwrap_or(&[]);
        let bytes: Arc<[u8]> = if c.compressed {
            let mut out = vec![0u8; c.len as usize];
            let n = snap::raw::Decoder::new()
                .decompress(src, &mut out)
                .map_err(|e| {
                    Error::PhysicalAccess(format!(
                        "{}: AVML chunk at pa {:#x} does not decompress: {e}",
                        py_repr(&self.path),
                        c.pa
                    ))
                })?;
            if n as u64 != c.len {
                return Err(Error::PhysicalAccess(format!(
                    "{}: AVML chunk at pa {:#x} decompresses to {n} bytes, expected {}",
                    py_repr(&self.path),
                    c.pa,
                    c.len
                )));
            }
            out.into()
        } else {
            src.into()
        };
        if cache.1.len() >= CACHE_CHUNKS {
            if let Some(old) = cache.1.pop_front() {
                cache.0.remove(&old);
            }
        }
        cache.1.push_back(i);
        cache.0.insert(i, bytes.clone());
        Ok(bytes)
    }
}

impl FrameSource for AvmlSource {
    fn end(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.pa + c.len)
    }

    fn read_in_frame(&self, pa: u64, buf: &mut [u8]) -> Result<bool> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let cur = pa + pos as u64;
            let i = self.chunks.partition_point(|c| c.pa <= cur);
            let Some(i) = i
                .checked_sub(1)
                .filter(|&i| cur - self.chunks[i].pa < self.chunks[i].len)
            else {
                return Ok(false);
            };
            let c = self.chunks[i];
            let bytes = self.chunk_bytes(i)?;
            let inside = (cur - c.pa) as usize;
            let n = (c.len as usize - inside).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&bytes[inside..inside + n]);
            pos += n;
        }
        Ok(true)
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for c in &self.chunks {
            match out.last_mut() {
                Some(last) if last.1 == c.pa => last.1 = c.pa + c.len,
                _ => out.push((c.pa, c.pa + c.len)),
            }
        }
        out
    }
}
