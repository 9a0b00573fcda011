//! Raw traces: little-endian u64 addresses, all reads.

use super::source::Source;
use super::{Chunk, Ctx, Decode, TraceResult, READ};

const NOT_MULTIPLE: &str =
    "is not a multiple of 8 bytes (raw traces are little-endian uint64 addresses)";

/// Reads raw u64 traces.
pub struct RawDecoder {
    src: Source,
    buf: Vec<u8>,
    position: u64,
}

impl RawDecoder {
    /// A decoder over `src`; a plain file whose size is not a multiple of 8 fails here.
    pub fn new(src: Source, ctx: &Ctx) -> TraceResult<RawDecoder> {
        if let Some((_, size)) = src.plain_file() {
            if size % 8 != 0 {
                return Err(ctx.error(format!(
                    "{}: raw trace size {size} {NOT_MULTIPLE}",
                    ctx.name
                )));
            }
        }
        Ok(RawDecoder {
            src,
            buf: Vec::new(),
            position: 0,
        })
    }
}

impl Decode for RawDecoder {
    fn next_batch(&mut self, out: &mut Chunk, hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        let want = hint.clamp(1, 1 << 20) * 8;
        self.buf.resize(want, 0);
        let got = self.src.read(&mut self.buf)?;
        if got % 8 != 0 {
            return Err(ctx.error(format!(
                "{}: raw trace length {} {NOT_MULTIPLE}",
                ctx.name,
                self.position + got as u64
            )));
        }
        self.position += got as u64;
        out.addrs.extend(
            self.buf[..got]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        );
        out.kinds.resize(out.addrs.len(), READ);
        Ok(got == want)
    }
}
