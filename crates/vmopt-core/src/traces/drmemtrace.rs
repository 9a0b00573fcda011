//! DynamoRIO drmemtrace offline traces (the `raw2trace` output).
//!
//! Records are `trace_entry_t` as in DynamoRIO's
//! `clients/drcachesim/common/trace_entry.h`: a packed
//! (`START_PACKED_STRUCTURE`) struct of `u16 type`, `u16 size` and an
//! `addr_t` union, 12 bytes little-endian on 64-bit hosts:
//!
//! | offset | field |
//! |---|---|
//! | 0 | `u16 type` (`trace_type_t`) |
//! | 2 | `u16 size` (access size, instruction length or marker type) |
//! | 4 | `u64 addr` (address, pc, tid, pid or marker value) |
//!
//! `TRACE_TYPE_READ` (0) is a read, `TRACE_TYPE_WRITE` (1) a write, and the
//! instruction types `INSTR` (10), the branch kinds 11..=16, `SYSENTER`
//! (31) and `TAKEN_JUMP`/`UNTAKEN_JUMP` (48, 49) are fetches.
//! `TRACE_TYPE_THREAD` (22) switches the vCPU stream: threads are numbered
//! 0, 1, ... in order of first appearance. `TRACE_TYPE_PID` (24) switches
//! the address space, numbered the same way. Everything else (header,
//! footer, markers, prefetches, `INSTR_NO_FETCH`, encodings, bundles) is
//! skipped. A cut-off last record is malformed.

use rustc_hash::FxHashMap;

use super::source::Source;
use super::{Chunk, Ctx, Decode, TraceResult, FETCH, READ, WRITE};

/// Bytes per `trace_entry_t`.
pub const ENTRY_BYTES: usize = 12;
/// `TRACE_TYPE_THREAD`.
pub const TYPE_THREAD: u16 = 22;
/// `TRACE_TYPE_PID`.
pub const TYPE_PID: u16 = 24;
/// `TRACE_TYPE_HEADER`, the first entry of every offline trace.
pub const TYPE_HEADER: u16 = 25;

const BATCH_ENTRIES: usize = 1 << 15;

/// The access kind of entry `ty`, `None` for entries that are not accesses.
#[inline]
pub fn kind_of(ty: u16) -> Option<u8> {
    match ty {
        0 => Some(READ),
        1 => Some(WRITE),
        10..=16 | 31 | 48 | 49 => Some(FETCH),
        _ => None,
    }
}

/// Numbers ids (tids or pids) 0, 1, ... in order of first appearance.
#[derive(Default)]
struct Numbering {
    ids: FxHashMap<u64, u16>,
}

impl Numbering {
    fn number(&mut self, id: u64, what: &str, ctx: &Ctx) -> TraceResult<u16> {
        if let Some(&n) = self.ids.get(&id) {
            return Ok(n);
        }
        let n = u16::try_from(self.ids.len()).map_err(|_| {
            ctx.error(format!(
                "{}: more than 65536 distinct {what}s in the drmemtrace trace",
                ctx.name
            ))
        })?;
        self.ids.insert(id, n);
        Ok(n)
    }
}

/// Reads drmemtrace offline traces.
pub struct DrMemtraceDecoder {
    src: Source,
    buf: Vec<u8>,
    offset: u64,
    threads: Numbering,
    pids: Numbering,
    cpu: u16,
    asid: u16,
}

impl DrMemtraceDecoder {
    /// A decoder over `src`.
    pub fn new(src: Source) -> DrMemtraceDecoder {
        DrMemtraceDecoder {
            src,
            buf: Vec::new(),
            offset: 0,
            threads: Numbering::default(),
            pids: Numbering::default(),
            cpu: 0,
            asid: 0,
        }
    }
}

impl Decode for DrMemtraceDecoder {
    fn next_batch(&mut self, out: &mut Chunk, _hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        self.buf.resize(BATCH_ENTRIES * ENTRY_BYTES, 0);
        let got = self.src.read(&mut self.buf)?;
        let whole = got / ENTRY_BYTES * ENTRY_BYTES;
        for rec in self.buf[..whole].chunks_exact(ENTRY_BYTES) {
            let ty = u16::from_le_bytes([rec[0], rec[1]]);
            let mut a = [0u8; 8];
            a.copy_from_slice(&rec[4..12]);
            let addr = u64::from_le_bytes(a);
            match ty {
                TYPE_THREAD => self.cpu = self.threads.number(addr, "thread", ctx)?,
                TYPE_PID => self.asid = self.pids.number(addr, "process", ctx)?,
                _ => {
                    if let Some(kind) = kind_of(ty) {
                        out.push(addr, kind, self.cpu, self.asid);
                    }
                }
            }
        }
        if whole < got {
            let at = self.offset + whole as u64;
            ctx.bad(
                format!(
                    "{}: truncated drmemtrace record at byte {at}: {} of {ENTRY_BYTES} bytes",
                    ctx.name,
                    got - whole
                ),
                None,
                None,
            )?;
        }
        self.offset += got as u64;
        Ok(got == self.buf.len())
    }
}
