//! QEMU `dump-guest-memory` ELF cores (ELF64, little-endian).
//!
//! Guest-physical memory is in the PT_LOAD segments, keyed by `p_paddr`
//! (not `p_vaddr`); bytes past `p_filesz` up to `p_memsz` read as zeros.
//! A `paging=true` dump (`dump-guest-memory -p`) gives each segment the
//! virtual address it is mapped at in `p_vaddr` as well: the same physical
//! frames may then appear in several segments, and the lowest-addressed
//! segment's bytes are used. The notes carry the vCPU states and VMCOREINFO.

use std::sync::Arc;

use crate::dumps::extents::{Extent, ExtentMap};
use crate::dumps::file::{Bytes, Ctx, DumpResult, Fields, MappedFile};
use crate::dumps::notes::{self, NoteInfo, MAX_NOTES};

/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// `EM_RISCV`.
pub const EM_RISCV: u16 = 243;
/// `EM_AARCH64`.
pub const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PN_XNUM: u16 = 0xffff;
const PHDR_SIZE: u64 = 56;
/// The highest byte a segment may end at (frames are rounded up to 4 KiB past it).
const PHYS_LIMIT: u128 = (1u128 << 64) - 4096;

/// A PT_LOAD of a `paging=true` dump: the virtual range and the physical address it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualSegment {
    /// `p_vaddr`.
    pub va: u64,
    /// `p_paddr`.
    pub pa: u64,
    /// `p_memsz`.
    pub size: u64,
}

/// What an ELF core holds.
pub(crate) struct ElfDump {
    /// Guest-physical memory.
    pub memory: ExtentMap,
    /// `e_machine`.
    pub machine: u16,
    /// The PT_LOADs with a non-zero `p_vaddr` (a `paging=true` dump).
    pub virtual_segments: Vec<VirtualSegment>,
    /// vCPU states and VMCOREINFO.
    pub notes: NoteInfo,
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Read the ELF core in `file`.
pub(crate) fn read(file: Arc<MappedFile>, ctx: &Ctx) -> DumpResult<ElfDump> {
    let f = Fields {
        src: file.as_ref(),
        ctx,
    };
    let ident: [u8; 16] = f.array(0, "e_ident")?;
    if &ident[0..4] != b"\x7fELF" {
        return Err(ctx.whole("no ELF magic (\\x7fELF) at offset 0"));
    }
    if ident[4] != 2 {
        return Err(ctx.field(
            "EI_CLASS",
            u64::from(ident[4]),
            "only ELF64 cores are read (EI_CLASS 2)",
        ));
    }
    if ident[5] != 1 {
        return Err(ctx.field(
            "EI_DATA",
            u64::from(ident[5]),
            "only little-endian cores are read (EI_DATA 1)",
        ));
    }
    let e_type = f.u16(16, "e_type")?;
    if e_type != 4 {
        return Err(ctx.field("e_type", u64::from(e_type), "not a core file (ET_CORE 4)"));
    }
    let machine = f.u16(18, "e_machine")?;
    let phoff = f.u64(32, "e_phoff")?;
    let shoff = f.u64(40, "e_shoff")?;
    let phentsize = f.u16(54, "e_phentsize")?;
    if u64::from(phentsize) != PHDR_SIZE {
        return Err(ctx.field(
            "e_phentsize",
            u64::from(phentsize),
            "expected 56 (Elf64_Phdr)",
        ));
    }
    let mut phnum = u64::from(f.u16(56, "e_phnum")?);
    if phnum == u64::from(PN_XNUM) {
        // More than 65534 segments: the count is section header 0's sh_info.
        phnum = u64::from(f.u32(shoff.saturating_add(44), "section header 0 sh_info")?);
    }
    let table = phnum
        .checked_mul(PHDR_SIZE)
        .and_then(|n| phoff.checked_add(n));
    if table.map_or(true, |end| end > file.len()) {
        return Err(ctx.field(
            "e_phnum",
            phnum,
            &format!(
                "{phnum} program headers at e_phoff {phoff:#x} pass the end of the file ({} bytes)",
                file.len()
            ),
        ));
    }
    let mut pieces = Vec::new();
    let mut virtual_segments = Vec::new();
    let mut note_bufs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut note_total = 0u64;
    let mut paging = false;
    for i in 0..phnum {
        let at = phoff + i * PHDR_SIZE;
        let p = Phdr {
            kind: f.u32(at, "p_type")?,
            offset: f.u64(at + 8, "p_offset")?,
            vaddr: f.u64(at + 16, "p_vaddr")?,
            paddr: f.u64(at + 24, "p_paddr")?,
            filesz: f.u64(at + 32, "p_filesz")?,
            memsz: f.u64(at + 40, "p_memsz")?,
        };
        let seg = |field: &str, value: u64, why: &str| {
            ctx.field(&format!("segment {i} {field}"), value, why)
        };
        if p.kind != PT_LOAD && p.kind != PT_NOTE {
            continue;
        }
        if p.offset
            .checked_add(p.filesz)
            .map_or(true, |e| e > file.len())
        {
            return Err(seg(
                "p_filesz",
                p.filesz,
                &format!(
                    "the bytes at p_offset {:#x} pass the end of the file ({} bytes)",
                    p.offset,
                    file.len()
                ),
            ));
        }
        if p.kind == PT_NOTE {
            note_total = note_total.saturating_add(p.filesz);
            if note_total > MAX_NOTES {
                return Err(seg(
                    "p_filesz",
                    p.filesz,
                    "the notes exceed 64 MiB; this is not a QEMU core",
                ));
            }
            note_bufs.push((p.offset, f.vec(p.offset, p.filesz, "PT_NOTE")?));
            continue;
        }
        if p.filesz > p.memsz {
            return Err(seg(
                "p_filesz",
                p.filesz,
                &format!("larger than p_memsz {:#x}", p.memsz),
            ));
        }
        if u128::from(p.paddr) + u128::from(p.memsz) > PHYS_LIMIT {
            return Err(seg(
                "p_paddr",
                p.paddr,
                &format!(
                    "p_memsz {:#x} there passes the 64-bit physical space",
                    p.memsz
                ),
            ));
        }
        if p.memsz == 0 {
            continue; // a zero-length segment holds nothing
        }
        if p.vaddr != 0 {
            paging = true;
            virtual_segments.push(VirtualSegment {
                va: p.vaddr,
                pa: p.paddr,
                size: p.memsz,
            });
        }
        let record = i as usize;
        pieces.push(Extent {
            pa: p.paddr,
            len: p.filesz,
            file: Some(p.offset),
            record,
        });
        pieces.push(Extent {
            pa: p.paddr + p.filesz,
            len: p.memsz - p.filesz,
            file: None,
            record,
        });
    }
    let memory = ExtentMap::build(file.clone(), pieces, paging).map_err(|o| {
        ctx.field(
            &format!("segment {} p_paddr", o.second),
            o.pa,
            &format!(
                "overlaps segment {} (a physical dump holds each frame once)",
                o.first
            ),
        )
    })?;
    let mut all = Vec::new();
    for (off, buf) in &note_bufs {
        all.extend(notes::parse(buf, ctx, *off)?);
    }
    let notes = notes::collect(&all, ctx, machine == EM_X86_64)?;
    Ok(ElfDump {
        memory,
        machine,
        virtual_segments,
        notes,
    })
}
