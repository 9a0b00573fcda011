//! kdump-compressed dumps (makedumpfile, QEMU `dump-guest-memory -z`/`-l`/`-s`), raw or flattened.
//!
//! Layout, in `block_size` blocks: block 0 the `disk_dump_header`
//! ("KDUMP   ", block_size at 428, sub_hdr_size, bitmap_blocks, nr_cpus),
//! then `sub_hdr_size` blocks of `kdump_sub_header` (phys_base,
//! offset_vmcoreinfo, offset_note, note_size, max_mapnr_64), then
//! `bitmap_blocks` blocks holding two bitmaps (pages that exist, pages
//! dumped), then one 24-byte page descriptor (offset, size, flags,
//! page_flags) per dumped page in pfn order, then the page data: zlib, LZO,
//! snappy or zstd compressed, or raw when the size equals block_size.
//!
//! The flattened form (`makedumpfile -F`, QEMU `kdump-*` to a pipe) is a
//! 4 KiB "makedumpfile" header followed by big-endian (offset, size)
//! records, each followed by its bytes, ending with (-1, -1); it is read as
//! the file it would assemble to, without assembling it.
//!
//! Every descriptor is checked when the dump is opened; pages decompress
//! on demand into a bounded cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::dumps::file::{Bytes, Ctx, DumpResult, Fields, MappedFile};
use crate::dumps::lzo;
use crate::dumps::notes::{self, NoteInfo, MAX_NOTES};
use crate::error::{Error, Result};
use crate::memory::FrameSource;

/// Page compressed with zlib.
pub const DUMP_DH_COMPRESSED_ZLIB: u32 = 0x1;
/// Page compressed with LZO1X.
pub const DUMP_DH_COMPRESSED_LZO: u32 = 0x2;
/// Page compressed with snappy.
pub const DUMP_DH_COMPRESSED_SNAPPY: u32 = 0x4;
/// Page compressed with zstd.
pub const DUMP_DH_COMPRESSED_ZSTD: u32 = 0x20;
const COMPRESSION: u32 = DUMP_DH_COMPRESSED_ZLIB
    | DUMP_DH_COMPRESSED_LZO
    | DUMP_DH_COMPRESSED_SNAPPY
    | DUMP_DH_COMPRESSED_ZSTD;
/// Size of the flattened format's header.
pub const FLAT_HEADER_SIZE: u64 = 4096;
const DESC_SIZE: u64 = 24;
/// Decompressed pages kept (4 MiB of 4 KiB pages).
const CACHE_PAGES: usize = 1024;

/// The header fields a reader and a user care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdumpHeader {
    /// `header_version`.
    pub header_version: u32,
    /// `block_size`, the page size.
    pub block_size: u64,
    /// `nr_cpus`.
    pub nr_cpus: u32,
    /// Pages the bitmaps describe.
    pub max_mapnr: u64,
    /// `phys_base` from the sub-header.
    pub phys_base: u64,
    /// Pages present in the dump.
    pub dumped_pages: u64,
}

/// A kdump file's memory: bitmap ranks, descriptors and a page cache over the file's bytes.
pub struct KdumpSource {
    bytes: Arc<dyn Bytes>,
    ctx: Ctx,
    block_size: u64,
    max_mapnr: u64,
    /// The dumped-page bitmap (bitmap2), as little-endian words.
    dumped: Vec<u64>,
    /// Set bits of `dumped` before each word.
    rank: Vec<u64>,
    desc_off: u64,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    pages: FxHashMap<u64, Arc<[u8]>>,
    order: VecDeque<u64>,
}

/// What a kdump file holds.
pub(crate) struct KdumpDump {
    /// Guest-physical memory.
    pub memory: KdumpSource,
    /// Header fields.
    pub header: KdumpHeader,
    /// vCPU states (from the notes at offset_note) and VMCOREINFO.
    pub notes: NoteInfo,
}

/// A page descriptor.
#[derive(Debug, Clone, Copy)]
struct Desc {
    offset: u64,
    size: u64,
    flags: u32,
}

/// The assembled file a flattened stream describes: its extents in the stream.
pub struct Flattened {
    file: Arc<MappedFile>,
    /// (logical offset, length, file offset), sorted and disjoint.
    extents: Vec<(u64, u64, u64)>,
    len: u64,
}

impl Flattened {
    /// Index the records of a flattened stream (each bounds-checked; later records win).
    pub(crate) fn index(file: Arc<MappedFile>, ctx: &Ctx) -> DumpResult<Flattened> {
        let f = Fields {
            src: file.as_ref(),
            ctx,
        };
        let sig: [u8; 16] = f.array(0, "makedumpfile header")?;
        if &sig[..12] != b"makedumpfile" {
            return Err(ctx.whole("no \"makedumpfile\" signature at offset 0"));
        }
        let kind = i64::from_be_bytes(f.array(16, "flat header type")?);
        let version = i64::from_be_bytes(f.array(24, "flat header version")?);
        if kind != 1 {
            return Err(ctx.field("flat header type", kind as u64, "expected 1 (flattened)"));
        }
        if version != 1 {
            return Err(ctx.field("flat header version", version as u64, "expected 1"));
        }
        let mut records: Vec<(u64, u64, u64)> = Vec::new();
        let mut pos = FLAT_HEADER_SIZE;
        loop {
            let off = i64::from_be_bytes(f.array(pos, "flat record")?);
            let size = i64::from_be_bytes(f.array(pos + 8, "flat record size")?);
            if off == -1 && size == -1 {
                break;
            }
            if off < 0 || size < 0 {
                return Err(ctx.field(
                    &format!("flat record at {pos:#x} offset"),
                    off as u64,
                    &format!(
                        "negative offset or size ({size}) that is not the end marker (-1, -1)"
                    ),
                ));
            }
            let data = pos + 16;
            let (off, size) = (off as u64, size as u64);
            if data.checked_add(size).map_or(true, |e| e > file.len()) {
                return Err(ctx.field(
                    &format!("flat record at {pos:#x} size"),
                    size,
                    &format!(
                        "passes the end of the stream ({} bytes): truncated",
                        file.len()
                    ),
                ));
            }
            if off.checked_add(size).map_or(true, |e| e > i64::MAX as u64) {
                return Err(ctx.field(
                    &format!("flat record at {pos:#x} offset"),
                    off,
                    "offset + size passes 2^63",
                ));
            }
            if size > 0 {
                records.push((off, size, data));
            }
            pos = data + size;
        }
        // Later records overwrite earlier ones: resolve from the last, keeping uncovered parts.
        let mut taken: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
        for &(off, size, data) in records.iter().rev() {
            let end = off + size;
            let mut cur = off;
            let mut gaps = Vec::new();
            let before = taken.range(..=off).next_back().map(|(&s, &(l, _))| (s, l));
            if let Some((s, l)) = before {
                if s + l > cur {
                    cur = (s + l).min(end);
                }
            }
            for (&s, &(l, _)) in taken.range(off..end) {
                if s > cur {
                    gaps.push((cur, s));
                }
                cur = cur.max(s + l).min(end);
            }
            if cur < end {
                gaps.push((cur, end));
            }
            for (s, e) in gaps {
                taken.insert(s, (e - s, data + (s - off)));
            }
        }
        let extents: Vec<(u64, u64, u64)> =
            taken.into_iter().map(|(s, (l, d))| (s, l, d)).collect();
        let len = extents.last().map_or(0, |&(s, l, _)| s + l);
        Ok(Flattened { file, extents, len })
    }
}

impl Bytes for Flattened {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> bool {
        if off
            .checked_add(buf.len() as u64)
            .map_or(true, |e| e > self.len)
        {
            return false;
        }
        let mut pos = 0usize;
        let mut i = self.extents.partition_point(|&(s, l, _)| s + l <= off);
        while pos < buf.len() {
            let cur = off + pos as u64;
            match self.extents.get(i) {
                Some(&(s, l, d)) if s <= cur => {
                    let n = ((s + l - cur) as usize).min(buf.len() - pos);
                    match self.file.slice(d + (cur - s), n as u64) {
                        Some(src) => buf[pos..pos + n].copy_from_slice(src),
                        None => return false,
                    }
                    pos += n;
                    i += 1;
                }
                next => {
                    // A hole in the assembled file reads as zeros, as a seek-written file's would.
                    let upto = next.map_or(buf.len() as u64, |&(s, _, _)| s - off) as usize;
                    let upto = upto.min(buf.len());
                    buf[pos..upto].fill(0);
                    pos = upto;
                }
            }
        }
        true
    }
}

/// Read a kdump file (raw, or a [`Flattened`] stream as `bytes`).
pub(crate) fn read(bytes: Arc<dyn Bytes>, ctx: &Ctx) -> DumpResult<KdumpDump> {
    let f = Fields {
        src: bytes.as_ref(),
        ctx,
    };
    let sig: [u8; 8] = f.array(0, "disk_dump_header")?;
    if &sig != b"KDUMP   " {
        return Err(ctx.whole("no \"KDUMP   \" signature at offset 0"));
    }
    let header_version = f.u32(8, "header_version")?;
    let block_size = u64::from(f.u32(428, "block_size")?);
    if !(4096..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(ctx.field(
            "block_size",
            block_size,
            "expected a power of two from 4096 to 65536 (the page size)",
        ));
    }
    let sub_hdr_size = u64::from(f.u32(432, "sub_hdr_size")?);
    let bitmap_blocks = u64::from(f.u32(436, "bitmap_blocks")?);
    let max_mapnr32 = u64::from(f.u32(440, "max_mapnr")?);
    let nr_cpus = f.u32(460, "nr_cpus")?;
    let len = bytes.len();
    let blocks_end = |n: u64| n.checked_mul(block_size).filter(|&e| e <= len);
    if sub_hdr_size == 0 || blocks_end(1 + sub_hdr_size).is_none() {
        return Err(ctx.field(
            "sub_hdr_size",
            sub_hdr_size,
            &format!("the sub-header blocks pass the end of the file ({len} bytes)"),
        ));
    }
    let sub = block_size;
    let phys_base = f.u64(sub, "phys_base")?;
    let version_at_least = |v: u32| header_version >= v;
    let max_mapnr = if version_at_least(6) {
        f.u64(sub + 96, "max_mapnr_64")?
    } else {
        max_mapnr32
    };
    if bitmap_blocks == 0
        || bitmap_blocks % 2 != 0
        || blocks_end(1 + sub_hdr_size + bitmap_blocks).is_none()
    {
        return Err(ctx.field(
            "bitmap_blocks",
            bitmap_blocks,
            &format!("expected an even, non-zero block count inside the file ({len} bytes)"),
        ));
    }
    let bitmap_off = (1 + sub_hdr_size) * block_size;
    let half = bitmap_blocks * block_size / 2;
    if max_mapnr == 0 || max_mapnr > half * 8 {
        return Err(ctx.field(
            if version_at_least(6) {
                "max_mapnr_64"
            } else {
                "max_mapnr"
            },
            max_mapnr,
            &format!("expected 1 to {} pages (the bits of one bitmap)", half * 8),
        ));
    }
    if max_mapnr
        .checked_mul(block_size)
        .map_or(true, |e| e > u64::MAX - block_size)
    {
        return Err(ctx.field(
            "max_mapnr",
            max_mapnr,
            "pages past the 64-bit physical space",
        ));
    }
    let words = max_mapnr.div_ceil(64);
    let read_words = |off: u64, what: &str| -> DumpResult<Vec<u64>> {
        let raw = f.vec(off, words * 8, what)?;
        let mut w: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if max_mapnr % 64 != 0 {
            let last = w.len() - 1;
            w[last] &= (1u64 << (max_mapnr % 64)) - 1;
        }
        Ok(w)
    };
    let valid = read_words(bitmap_off, "bitmap1")?;
    let dumped = read_words(bitmap_off + half, "bitmap2")?;
    let mut rank = Vec::with_capacity(dumped.len());
    let mut count = 0u64;
    for (i, (&d, &v)) in dumped.iter().zip(&valid).enumerate() {
        if d & !v != 0 {
            let pfn = i as u64 * 64 + u64::from((d & !v).trailing_zeros());
            return Err(ctx.field(
                "bitmap2 pfn",
                pfn,
                "the page is marked dumped but not present in bitmap1: the bitmaps disagree",
            ));
        }
        rank.push(count);
        count += u64::from(d.count_ones());
    }
    let desc_off = bitmap_off + bitmap_blocks * block_size;
    if count
        .checked_mul(DESC_SIZE)
        .and_then(|n| n.checked_add(desc_off))
        .map_or(true, |e| e > len)
    {
        return Err(ctx.field(
            "bitmap2 dumped pages",
            count,
            &format!(
                "their descriptors at {desc_off:#x} pass the end of the file ({len} bytes): \
                 the bitmaps disagree with the descriptors"
            ),
        ));
    }
    let memory = KdumpSource {
        bytes: bytes.clone(),
        ctx: ctx.clone(),
        block_size,
        max_mapnr,
        dumped,
        rank,
        desc_off,
        cache: Mutex::new(Cache::default()),
    };
    memory.check_descriptors(count)?;
    let mut note_list = Vec::new();
    let mut vmcoreinfo = None;
    let note_buf;
    if version_at_least(4) {
        let offset_note = f.u64(sub + 48, "offset_note")?;
        let note_size = f.u64(sub + 56, "note_size")?;
        if note_size > MAX_NOTES {
            return Err(ctx.field("note_size", note_size, "larger than 64 MiB"));
        }
        note_buf = if note_size > 0 {
            f.vec(offset_note, note_size, "offset_note")?
        } else {
            Vec::new()
        };
        note_list = notes::parse(&note_buf, ctx, offset_note)?;
    }
    if version_at_least(3) {
        let off = f.u64(sub + 32, "offset_vmcoreinfo")?;
        let size = f.u64(sub + 40, "size_vmcoreinfo")?;
        if size > MAX_NOTES {
            return Err(ctx.field("size_vmcoreinfo", size, "larger than 64 MiB"));
        }
        if size > 0 {
            let text = f.vec(off, size, "offset_vmcoreinfo")?;
            vmcoreinfo = Some(String::from_utf8_lossy(&text).into_owned());
        }
    }
    let mut notes = notes::collect(&note_list, ctx, true)?;
    if notes.vmcoreinfo.is_none() {
        notes.vmcoreinfo = vmcoreinfo;
    }
    Ok(KdumpDump {
        header: KdumpHeader {
            header_version,
            block_size,
            nr_cpus,
            max_mapnr,
            phys_base,
            dumped_pages: count,
        },
        memory,
        notes,
    })
}

impl KdumpSource {
    fn desc_at(&self, index: u64) -> Desc {
        let mut b = [0u8; 24];
        // In range: checked against the file when the dump was opened.
        let _ = self
            .bytes
            .read_at(self.desc_off + index * DESC_SIZE, &mut b);
        Desc {
            offset: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            size: u64::from(u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"))),
            flags: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        }
    }

    /// Check every descriptor: data inside the file, a size that fits a page, known flags.
    fn check_descriptors(&self, count: u64) -> DumpResult<()> {
        let len = self.bytes.len();
        for index in 0..count {
            let d = self.desc_at(index);
            let what = |field: &str| format!("page descriptor {index} {field}");
            let comp = d.flags & COMPRESSION;
            if comp.count_ones() > 1 || d.flags & !COMPRESSION & !0x18 != 0 {
                return Err(self.ctx.field(
                    &what("flags"),
                    u64::from(d.flags),
                    "unknown or mixed compression",
                ));
            }
            if d.size == 0 || d.size > self.block_size || (comp == 0 && d.size != self.block_size) {
                return Err(self.ctx.field(
                    &what("size"),
                    d.size,
                    &format!(
                        "expected 1 to {} bytes (exactly {} for an uncompressed page)",
                        self.block_size, self.block_size
                    ),
                ));
            }
            if d.offset.checked_add(d.size).map_or(true, |e| e > len) {
                return Err(self.ctx.field(
                    &what("offset"),
                    d.offset,
                    &format!(
                        "{} bytes there pass the end of the file ({len} bytes)",
                        d.size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The descriptor index of `pfn`, if the page is dumped.
    fn index_of(&self, pfn: u64) -> Option<u64> {
        if pfn >= self.max_mapnr {
            return None;
        }
        let (w, b) = ((pfn / 64) as usize, pfn % 64);
        let word = self.dumped[w];
        if word >> b & 1 == 0 {
            return None;
        }
        Some(self.rank[w] + u64::from((word & ((1u64 << b) - 1)).count_ones()))
    }

    /// The decompressed page `pfn` (descriptor `index`), from the cache or decoded now.
    fn page(&self, pfn: u64, index: u64) -> Result<Arc<[u8]>> {
        if let Some(p) = self.lock().pages.get(&pfn) {
            return Ok(p.clone());
        }
        let d = self.desc_at(index);
        let mut src = vec![0u8; d.size as usize];
        let _ = self.bytes.read_at(d.offset, &mut src);
        let page: Arc<[u8]> = self.decompress(pfn, &d, &src)?.into();
        let mut cache = self.lock();
        if cache.order.len() >= CACHE_PAGES {
            if let Some(old) = cache.order.pop_front() {
                cache.pages.remove(&old);
            }
        }
        cache.order.push_back(pfn);
        cache.pages.insert(pfn, page.clone());
        Ok(page)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn decompress(&self, pfn: u64, d: &Desc, src: &[u8]) -> Result<Vec<u8>> {
        let bs = self.block_size as usize;
        let bad = |how: &str, got: Option<usize>| {
            let got = got.map_or(String::new(), |n| format!(" to {n} bytes"));
            Error::PhysicalAccess(format!(
                "{}: kdump page at pfn {pfn:#x} (pa {:#x}) decompresses{got}: {how}; expected block_size {bs}",
                crate::memory::phys::py_repr(&self.ctx.path),
                pfn * self.block_size
            ))
        };
        let mut out = vec![0u8; bs + 1];
        let n = match d.flags & COMPRESSION {
            DUMP_DH_COMPRESSED_ZLIB => {
                let mut z = flate2::Decompress::new(true);
                match z.decompress(src, &mut out, flate2::FlushDecompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => z.total_out() as usize,
                    Ok(_) => {
                        return Err(bad(
                            "zlib stream incomplete or too long",
                            Some(z.total_out() as usize),
                        ))
                    }
                    Err(e) => return Err(bad(&format!("zlib error: {e}"), None)),
                }
            }
            DUMP_DH_COMPRESSED_LZO => match lzo::decompress(src, bs + 1) {
                Ok(v) => {
                    out[..v.len()].copy_from_slice(&v);
                    v.len()
                }
                Err(e) => return Err(bad(&format!("LZO error: {e}"), None)),
            },
            DUMP_DH_COMPRESSED_SNAPPY => match snap::raw::decompress_len(src) {
                Ok(n) if n == bs => snap::raw::Decoder::new()
                    .decompress(src, &mut out)
                    .map_err(|e| bad(&format!("snappy error: {e}"), None))?,
                Ok(n) => n,
                Err(e) => return Err(bad(&format!("snappy error: {e}"), None)),
            },
            DUMP_DH_COMPRESSED_ZSTD => zstd::bulk::decompress_to_buffer(src, &mut out[..])
                .map_err(|e| bad(&format!("zstd error: {e}"), None))?,
            _ => {
                out[..bs].copy_from_slice(src);
                bs
            }
        };
        if n != bs {
            return Err(bad("wrong size", Some(n)));
        }
        out.truncate(bs);
        Ok(out)
    }
}

impl FrameSource for KdumpSource {
    fn end(&self) -> u64 {
        self.max_mapnr * self.block_size
    }

    fn read_in_frame(&self, pa: u64, buf: &mut [u8]) -> Result<bool> {
        let pfn = pa / self.block_size;
        let Some(index) = self.index_of(pfn) else {
            return Ok(false);
        };
        let inside = (pa % self.block_size) as usize;
        let d = self.desc_at(index);
        if d.flags & COMPRESSION == 0 {
            return Ok(self.bytes.read_at(d.offset + inside as u64, buf));
        }
        let page = self.page(pfn, index)?;
        buf.copy_from_slice(&page[inside..inside + buf.len()]);
        Ok(true)
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (w, &word) in self.dumped.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let pa = (w as u64 * 64 + b) * self.block_size;
                match out.last_mut() {
                    Some(last) if last.1 == pa => last.1 = pa + self.block_size,
                    _ => out.push((pa, pa + self.block_size)),
                }
            }
        }
        out
    }
}
