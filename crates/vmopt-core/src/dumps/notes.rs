//! ELF notes: the vCPU state QEMU records (`CORE`/NT_PRSTATUS and `QEMU`/QEMUCPUState) and VMCOREINFO.

use crate::dumps::file::{Ctx, DumpResult};

/// NT_PRSTATUS, the `CORE` note of one thread's registers.
pub const NT_PRSTATUS: u32 = 1;
/// Bytes of QEMUCPUState up to and including CR4 (x86-64); newer QEMU appends kernel_gs_base (440).
pub const QEMU_CPU_STATE_MIN: u32 = 432;
/// The size of QEMUCPUState that carries kernel_gs_base.
pub const QEMU_CPU_STATE_GS: u32 = 440;
/// Offset of `cr[0]` in QEMUCPUState: version, size, 18 registers, 10 segments of 24 bytes.
pub const QEMU_CR_OFFSET: usize = 392;
/// Offset of `pr_reg` in the x86-64 `elf_prstatus`.
pub const PRSTATUS_REG_OFFSET: usize = 112;
/// Registers in the x86-64 `user_regs_struct`, in order.
pub const PRSTATUS_REGS: [&str; 27] = [
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi",
    "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs",
    "gs",
];
const QEMU_GPRS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags",
];
const QEMU_SEGMENTS: [&str; 10] = [
    "cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt",
];
/// Notes larger than this are refused (QEMU writes a few KiB per vCPU).
pub const MAX_NOTES: u64 = 64 << 20;

/// One note: name, type and descriptor bytes.
pub struct Note<'a> {
    /// The name without its NUL.
    pub name: &'a [u8],
    /// `n_type`.
    pub kind: u32,
    /// The descriptor.
    pub desc: &'a [u8],
    /// Offset of the note inside the notes buffer.
    pub offset: usize,
}

/// The notes of `buf` (an ELF PT_NOTE segment or a kdump note area), each bounds-checked.
pub(crate) fn parse<'a>(buf: &'a [u8], ctx: &Ctx, base: u64) -> DumpResult<Vec<Note<'a>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let align = |n: usize| n.checked_add(3).map(|v| v & !3);
    while off + 12 <= buf.len() {
        let word = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        let (namesz, descsz, kind) = (word(off), word(off + 4), word(off + 8));
        if namesz == 0 && descsz == 0 && kind == 0 {
            break; // zero padding after the last note
        }
        let name_start = off + 12;
        let desc_start = align(namesz as usize).and_then(|n| name_start.checked_add(n));
        let desc_end = desc_start.and_then(|d| d.checked_add(descsz as usize));
        let (Some(desc_start), Some(desc_end)) = (desc_start, desc_end.filter(|&e| e <= buf.len()))
        else {
            return Err(ctx.field(
                "note n_descsz",
                u64::from(descsz),
                &format!(
                    "the note at offset {:#x} (n_namesz {namesz}) passes the end of the notes ({} bytes)",
                    base + off as u64,
                    buf.len()
                ),
            ));
        };
        let end = align(desc_end).map_or(buf.len(), |e| e.min(buf.len()));
        let mut name = &buf[name_start..name_start + namesz as usize];
        while let [rest @ .., 0] = name {
            name = rest;
        }
        out.push(Note {
            name,
            kind,
            desc: &buf[desc_start..desc_start + descsz as usize],
            offset: off,
        });
        off = end.min(buf.len());
    }
    Ok(out)
}

/// The registers of one vCPU, as the dump recorded them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuState {
    /// vCPU number, in note order.
    pub index: usize,
    /// Register name and value, in the order the notes hold them (QEMU's state first).
    pub registers: Vec<(String, u64)>,
}

impl CpuState {
    /// The value of register `name` (`cr3`, `rip`, ...).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.registers
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, v)| v)
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// The registers of a `QEMU` note (QEMUCPUState), accepting sizes 432 and 440 by its size field.
pub(crate) fn qemu_cpu_state(
    desc: &[u8],
    ctx: &Ctx,
    index: usize,
) -> DumpResult<Vec<(String, u64)>> {
    if desc.len() < 8 {
        return Err(ctx.field(
            "QEMU note n_descsz",
            desc.len() as u64,
            &format!("vCPU {index}: too short for QEMUCPUState's version and size"),
        ));
    }
    let version = u32::from_le_bytes(desc[0..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(desc[4..8].try_into().expect("4 bytes"));
    if size < QEMU_CPU_STATE_MIN || size as usize > desc.len() {
        return Err(ctx.field(
            "QEMUCPUState size",
            u64::from(size),
            &format!(
                "vCPU {index}: expected {QEMU_CPU_STATE_MIN} or {QEMU_CPU_STATE_GS} within the note's {} bytes",
                desc.len()
            ),
        ));
    }
    let mut regs = vec![("qemu_version".to_owned(), u64::from(version))];
    for (i, name) in QEMU_GPRS.iter().enumerate() {
        regs.push(((*name).to_owned(), u64_at(desc, 8 + i * 8)));
    }
    for (i, seg) in QEMU_SEGMENTS.iter().enumerate() {
        let o = 152 + i * 24;
        let sel = u32::from_le_bytes(desc[o..o + 4].try_into().expect("4 bytes"));
        let limit = u32::from_le_bytes(desc[o + 4..o + 8].try_into().expect("4 bytes"));
        regs.push((format!("{seg}_selector"), u64::from(sel)));
        regs.push((format!("{seg}_limit"), u64::from(limit)));
        regs.push((format!("{seg}_base"), u64_at(desc, o + 16)));
    }
    for i in 0..5 {
        regs.push((format!("cr{i}"), u64_at(desc, QEMU_CR_OFFSET + i * 8)));
    }
    if size >= QEMU_CPU_STATE_GS {
        regs.push(("kernel_gs_base".to_owned(), u64_at(desc, 432)));
    }
    Ok(regs)
}

/// The registers of an x86-64 NT_PRSTATUS note (pid and `pr_reg`), `None` if too short.
pub fn prstatus_x86_64(desc: &[u8]) -> Option<Vec<(String, u64)>> {
    let end = PRSTATUS_REG_OFFSET + PRSTATUS_REGS.len() * 8;
    if desc.len() < end {
        return None;
    }
    let pid = u32::from_le_bytes(desc[32..36].try_into().expect("4 bytes"));
    let mut regs = vec![("pid".to_owned(), u64::from(pid))];
    for (i, name) in PRSTATUS_REGS.iter().enumerate() {
        regs.push((
            (*name).to_owned(),
            u64_at(desc, PRSTATUS_REG_OFFSET + i * 8),
        ));
    }
    Some(regs)
}

/// What the notes of a dump say: vCPU states and the VMCOREINFO text, if any.
#[derive(Debug, Default)]
pub struct NoteInfo {
    /// One entry per vCPU.
    pub cpus: Vec<CpuState>,
    /// The VMCOREINFO note's text.
    pub vmcoreinfo: Option<String>,
}

/// Collect vCPU states (the i-th `CORE` NT_PRSTATUS pairs with the i-th `QEMU` note) and VMCOREINFO.
pub(crate) fn collect(notes: &[Note<'_>], ctx: &Ctx, x86_64: bool) -> DumpResult<NoteInfo> {
    let mut prstatus: Vec<Vec<(String, u64)>> = Vec::new();
    let mut qemu: Vec<Vec<(String, u64)>> = Vec::new();
    let mut info = NoteInfo::default();
    for n in notes {
        match (n.name, n.kind) {
            (b"CORE", NT_PRSTATUS) if x86_64 => {
                if let Some(r) = prstatus_x86_64(n.desc) {
                    prstatus.push(r);
                }
            }
            (b"QEMU", _) if x86_64 => qemu.push(qemu_cpu_state(n.desc, ctx, qemu.len())?),
            (b"VMCOREINFO", _) => {
                info.vmcoreinfo = Some(String::from_utf8_lossy(n.desc).into_owned());
            }
            _ => {}
        }
    }
    let count = prstatus.len().max(qemu.len());
    for index in 0..count {
        let mut registers = qemu.get(index).cloned().unwrap_or_default();
        for (name, value) in prstatus.get(index).cloned().unwrap_or_default() {
            if !registers.iter().any(|(n, _)| *n == name) {
                registers.push((name, value));
            }
        }
        info.cpus.push(CpuState { index, registers });
    }
    Ok(info)
}
