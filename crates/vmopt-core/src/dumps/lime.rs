//! LiME dumps: ranges, each a 32-byte header (magic 0x4C694D45, version 1, start, inclusive end, 8 reserved bytes) then its bytes.

use std::sync::Arc;

use crate::dumps::extents::{Extent, ExtentMap};
use crate::dumps::file::{Bytes, Ctx, DumpResult, Fields, MappedFile};

/// `"EMiL"` read as a little-endian u32.
pub const LIME_MAGIC: u32 = 0x4C69_4D45;
/// Bytes of a LiME (and AVML) range header.
pub const HEADER_SIZE: u64 = 32;

/// One range header: `[start, end]` inclusive, as LiME and AVML write it.
pub(crate) struct RangeHeader {
    pub start: u64,
    pub len: u64,
}

/// The header at `pos` of a LiME or AVML file, checked: magic, version, end >= start.
pub(crate) fn range_header(
    f: &Fields<'_>,
    pos: u64,
    index: usize,
    magic: u32,
    version: u32,
) -> DumpResult<RangeHeader> {
    let got = f.u32(pos, "range header")?;
    if got != magic {
        return Err(f.ctx.field(
            &format!("range {index} magic (at offset {pos:#x})"),
            u64::from(got),
            &format!("expected {magic:#x}"),
        ));
    }
    let v = f.u32(pos + 4, "range header version")?;
    if v != version {
        return Err(f.ctx.field(
            &format!("range {index} version"),
            u64::from(v),
            &format!("expected {version}"),
        ));
    }
    let start = f.u64(pos + 8, "range header start")?;
    let end = f.u64(pos + 16, "range header end")?;
    if end < start || end >= u64::MAX - 4096 {
        return Err(f.ctx.field(
            &format!("range {index} end"),
            end,
            &format!("before its start {start:#x} or past the 64-bit physical space"),
        ));
    }
    Ok(RangeHeader {
        start,
        len: end - start + 1,
    })
}

/// Read the LiME file in `file`.
pub(crate) fn read(file: Arc<MappedFile>, ctx: &Ctx) -> DumpResult<ExtentMap> {
    let f = Fields {
        src: file.as_ref(),
        ctx,
    };
    let mut pieces = Vec::new();
    let mut pos = 0u64;
    while pos < file.len() {
        let index = pieces.len();
        let h = range_header(&f, pos, index, LIME_MAGIC, 1)?;
        let data = pos + HEADER_SIZE;
        if data.checked_add(h.len).map_or(true, |e| e > file.len()) {
            return Err(ctx.field(
                &format!("range {index} end"),
                h.start + (h.len - 1),
                &format!(
                    "its {:#x} bytes at offset {data:#x} pass the end of the file ({} bytes): truncated",
                    h.len,
                    file.len()
                ),
            ));
        }
        pieces.push(Extent {
            pa: h.start,
            len: h.len,
            file: Some(data),
            record: index,
        });
        pos = data + h.len;
    }
    if pieces.is_empty() {
        return Err(ctx.whole("no ranges"));
    }
    ExtentMap::build(file.clone(), pieces, false).map_err(|o| {
        ctx.field(
            &format!("range {} start", o.second),
            o.pa,
            &format!("overlaps range {}", o.first),
        )
    })
}
