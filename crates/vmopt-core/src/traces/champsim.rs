//! ChampSim traces (the DPC-3 and CRC-2 trace sets), raw or compressed.
//!
//! `input_instr`, 64 bytes, little-endian, no padding:
//!
//! | offset | field |
//! |---|---|
//! | 0  | `u64 ip` |
//! | 8  | `u8 is_branch` |
//! | 9  | `u8 branch_taken` |
//! | 10 | `u8 destination_registers[2]` |
//! | 12 | `u8 source_registers[4]` |
//! | 16 | `u64 destination_memory[2]` |
//! | 32 | `u64 source_memory[4]` |
//!
//! The cloudsuite variant, 96 bytes (C layout: the u64 arrays are aligned
//! to 8, and the struct is padded to a multiple of 8):
//!
//! | offset | field |
//! |---|---|
//! | 0  | `u64 ip` |
//! | 8  | `u8 is_branch` |
//! | 9  | `u8 branch_taken` |
//! | 10 | `u8 destination_registers[4]` |
//! | 14 | `u8 source_registers[4]` |
//! | 18 | 6 bytes padding |
//! | 24 | `u64 destination_memory[4]` |
//! | 56 | `u64 source_memory[4]` |
//! | 88 | `u8 asid[2]` |
//! | 90 | 6 bytes padding |
//!
//! Each instruction becomes: a fetch of `ip`, then a read per non-zero
//! `source_memory` slot, then a write per non-zero `destination_memory`
//! slot, in slot order. In cloudsuite traces `asid[0]` is the address
//! space of all of them. A cut-off last record is malformed.

use super::source::Source;
use super::{Chunk, Ctx, Decode, Format, TraceResult, FETCH, READ, WRITE};

/// Where the fields of one record layout are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    size: usize,
    dst: usize,
    dst_slots: usize,
    src: usize,
    asid: Option<usize>,
}

const INPUT_INSTR: Layout = Layout {
    size: 64,
    dst: 16,
    dst_slots: 2,
    src: 32,
    asid: None,
};

const CLOUDSUITE: Layout = Layout {
    size: 96,
    dst: 24,
    dst_slots: 4,
    src: 56,
    asid: Some(88),
};

/// Records read per batch.
const BATCH_RECORDS: usize = 8192;

#[inline]
fn u64_at(rec: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&rec[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Reads ChampSim `input_instr` or cloudsuite traces.
pub struct ChampSimDecoder {
    src: Source,
    layout: Layout,
    buf: Vec<u8>,
    offset: u64,
}

impl ChampSimDecoder {
    /// A decoder for `format` (`ChampSim` or `ChampSimCloudsuite`).
    pub fn new(src: Source, format: Format) -> ChampSimDecoder {
        let layout = if format == Format::ChampSimCloudsuite {
            CLOUDSUITE
        } else {
            INPUT_INSTR
        };
        ChampSimDecoder {
            src,
            layout,
            buf: Vec::new(),
            offset: 0,
        }
    }
}

impl Decode for ChampSimDecoder {
    fn next_batch(&mut self, out: &mut Chunk, _hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        let l = self.layout;
        self.buf.resize(BATCH_RECORDS * l.size, 0);
        let got = self.src.read(&mut self.buf)?;
        let whole = got / l.size * l.size;
        // Every slot is written and the cursor advances past non-zero ones
        // only: branch-free skipping of empty slots.
        let most = whole / l.size * (1 + 4 + l.dst_slots);
        out.addrs.resize(most, 0);
        out.kinds.resize(most, 0);
        if let Some(asids) = &mut out.asids {
            asids.resize(most, 0);
        }
        let mut k = 0;
        for rec in self.buf[..whole].chunks_exact(l.size) {
            let start = k;
            out.addrs[k] = u64_at(rec, 0);
            out.kinds[k] = FETCH;
            k += 1;
            for slot in 0..4 {
                let addr = u64_at(rec, l.src + 8 * slot);
                out.addrs[k] = addr;
                out.kinds[k] = READ;
                k += (addr != 0) as usize;
            }
            for slot in 0..l.dst_slots {
                let addr = u64_at(rec, l.dst + 8 * slot);
                out.addrs[k] = addr;
                out.kinds[k] = WRITE;
                k += (addr != 0) as usize;
            }
            if let (Some(asids), Some(at)) = (&mut out.asids, l.asid) {
                asids[start..k].fill(rec[at] as u16);
            }
        }
        out.addrs.truncate(k);
        out.kinds.truncate(k);
        if let Some(asids) = &mut out.asids {
            asids.truncate(k);
        }
        if whole < got {
            let at = self.offset + whole as u64;
            ctx.bad(
                format!(
                    "{}: truncated ChampSim record at byte {at}: {} of {} bytes",
                    ctx.name,
                    got - whole,
                    l.size
                ),
                None,
                None,
            )?;
        }
        self.offset += got as u64;
        Ok(got == self.buf.len())
    }
}
