//! Readers for the guest memory dumps people have: raw images, QEMU ELF cores, kdump (raw and
//! flattened), LiME and AVML.
//!
//! Every reader presents the same sparse, read-only [`PhysMem`] (through
//! [`PhysMem::from_source`] over an extent map of the mmap'd file, or
//! PhysMem's own mapping for a raw image), so [`crate::paging`] walks and
//! lists a dump exactly as it does any memory. No file is loaded whole:
//! headers, program headers, bitmaps and descriptors are read from the
//! mapping and checked against the file's length; compressed pages are
//! decompressed on demand into bounded caches. These files are untrusted:
//! a malformed one gives a [`DumpError`] naming the field and its value.
//!
//! Along with memory a dump may carry vCPU states ([`CpuState`], from QEMU's
//! notes) and the kernel's [`VmcoreInfo`]; [`Dump::kernel_root`] finds the
//! kernel's page-table root from the latter when no CPU state is recorded.

pub mod avml;
pub mod detect;
pub mod elf;
mod extents;
mod file;
pub mod kdump;
pub mod lime;
pub mod lzo;
pub mod monitor;
pub mod notes;
pub mod vmcoreinfo;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use detect::DumpFormat;
pub use elf::VirtualSegment;
pub use file::{DumpError, DumpResult};
pub use kdump::KdumpHeader;
pub use notes::CpuState;
pub use vmcoreinfo::VmcoreInfo;

use crate::memory::phys::py_repr;
use crate::memory::{FrameSource, ImageMode, PhysMem};
use file::{Bytes, Ctx, MappedFile};

/// An opened dump: its memory and what it says about the machine.
pub struct Dump {
    /// The file as the user named it.
    pub path: String,
    /// The reader that opened it.
    pub format: DumpFormat,
    /// Guest-physical memory, read-only.
    pub memory: Arc<PhysMem>,
    /// The ELF `e_machine` name (`x86_64`, `riscv64`, `aarch64`), if the dump says.
    pub machine: Option<&'static str>,
    /// vCPU states, in vCPU order (empty if none are recorded).
    pub cpus: Vec<CpuState>,
    /// The VMCOREINFO note, if any.
    pub vmcoreinfo: Option<VmcoreInfo>,
    /// The PT_LOADs of a `paging=true` ELF dump with their virtual addresses.
    pub virtual_segments: Vec<VirtualSegment>,
    /// A kdump file's header fields.
    pub kdump: Option<KdumpHeader>,
}

/// The kernel's page-table root found from VMCOREINFO, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoot {
    /// Physical address of the top-level table.
    pub pa: u64,
    /// 5-level paging (`NUMBER(pgtable_l5_enabled)`), if VMCOREINFO says.
    pub five_level: Option<bool>,
    /// The arithmetic, for the user (`SYMBOL(swapper_pg_dir)=... - __START_KERNEL_map + phys_base ...`).
    pub how: String,
}

fn machine_name(e_machine: u16) -> Option<&'static str> {
    match e_machine {
        elf::EM_X86_64 => Some("x86_64"),
        elf::EM_RISCV => Some("riscv64"),
        elf::EM_AARCH64 => Some("aarch64"),
        _ => None,
    }
}

/// Open the dump at `path` with the reader `format` forces, or the one its magic names.
pub fn open(path: &Path, format: Option<DumpFormat>) -> DumpResult<Dump> {
    let shown = path.to_string_lossy().into_owned();
    let file = Arc::new(MappedFile::open(path, &shown)?);
    let mut head = [0u8; 16];
    let n = head.len().min(file.len() as usize);
    file.read_at(0, &mut head[..n]);
    let format = format.unwrap_or_else(|| DumpFormat::detect(&head[..n]));
    let ctx = Ctx {
        path: shown.clone(),
        format: match format {
            DumpFormat::Raw => "raw image",
            DumpFormat::Elf => "ELF core",
            DumpFormat::Kdump => "kdump",
            DumpFormat::KdumpFlat => "flattened kdump",
            DumpFormat::Lime => "LiME",
            DumpFormat::Avml => "AVML",
        },
    };
    let mut dump = Dump {
        path: shown.clone(),
        format,
        memory: Arc::new(PhysMem::new(4096, 0, None).expect("a one-frame memory")),
        machine: None,
        cpus: Vec::new(),
        vmcoreinfo: None,
        virtual_segments: Vec::new(),
        kdump: None,
    };
    let source: Arc<dyn FrameSource> = match format {
        DumpFormat::Raw => {
            drop(file);
            let mem = PhysMem::from_file(path, ImageMode::ReadOnly).map_err(|e| DumpError {
                message: e.to_string(),
                path: shown.clone(),
                field: None,
                value: None,
            })?;
            dump.memory = Arc::new(mem);
            return Ok(dump);
        }
        DumpFormat::Elf => {
            let e = elf::read(file, &ctx)?;
            dump.machine = machine_name(e.machine);
            dump.cpus = e.notes.cpus;
            dump.vmcoreinfo = e.notes.vmcoreinfo.as_deref().map(VmcoreInfo::parse);
            dump.virtual_segments = e.virtual_segments;
            Arc::new(e.memory)
        }
        DumpFormat::Kdump | DumpFormat::KdumpFlat => {
            let bytes: Arc<dyn Bytes> = if format == DumpFormat::KdumpFlat {
                Arc::new(kdump::Flattened::index(file, &ctx)?)
            } else {
                file
            };
            let k = kdump::read(bytes, &ctx)?;
            dump.cpus = k.notes.cpus;
            dump.vmcoreinfo = k.notes.vmcoreinfo.as_deref().map(VmcoreInfo::parse);
            dump.kdump = Some(k.header);
            Arc::new(k.memory)
        }
        DumpFormat::Lime => Arc::new(lime::read(file, &ctx)?),
        DumpFormat::Avml => Arc::new(avml::read(file, &ctx)?),
    };
    dump.memory = Arc::new(PhysMem::from_source(source).map_err(|e| ctx.whole(&e.to_string()))?);
    Ok(dump)
}

impl Dump {
    /// `phys_base`: the kdump sub-header's, else VMCOREINFO's `NUMBER(phys_base)`.
    pub fn phys_base(&self) -> Option<u64> {
        self.kdump.map(|k| k.phys_base).or_else(|| {
            self.vmcoreinfo
                .as_ref()?
                .number("phys_base")
                .map(|n| n as u64)
        })
    }

    /// The kernel's top-level page table from VMCOREINFO's `SYMBOL(swapper_pg_dir)`.
    ///
    /// x86-64: `pa = va - __START_KERNEL_map + phys_base` (the symbol is a
    /// run-time address, KASLR included, so KERNELOFFSET is not added again);
    /// RISC-V: `pa = va - NUMBER(va_kernel_pa_offset)`.
    pub fn kernel_root(&self) -> DumpResult<KernelRoot> {
        let path = self.path.clone();
        let err = |why: String| DumpError {
            message: format!("{}: {why}", py_repr(&path)),
            path: path.clone(),
            field: None,
            value: None,
        };
        let info = self.vmcoreinfo.as_ref().ok_or_else(|| {
            err("the dump has no CPU state and no VMCOREINFO: give --cr3, --satp or --root".into())
        })?;
        let va = info
            .symbol("swapper_pg_dir")
            .or_else(|| info.symbol("init_top_pgt"))
            .ok_or_else(|| err("VMCOREINFO has no SYMBOL(swapper_pg_dir)".into()))?;
        let five_level = info.l5_enabled();
        if self.machine == Some("riscv64") || info.number("va_kernel_pa_offset").is_some() {
            let off = info
                .number("va_kernel_pa_offset")
                .ok_or_else(|| err("VMCOREINFO has no NUMBER(va_kernel_pa_offset)".into()))?
                as u64;
            return Ok(KernelRoot {
                pa: va.wrapping_sub(off),
                five_level,
                how: format!(
                    "SYMBOL(swapper_pg_dir) {va:#x} - NUMBER(va_kernel_pa_offset) {off:#x}"
                ),
            });
        }
        if va < vmcoreinfo::START_KERNEL_MAP {
            return Err(DumpError {
                message: format!(
                    "{}: VMCOREINFO SYMBOL(swapper_pg_dir) {va:#x} is below __START_KERNEL_map {:#x}",
                    py_repr(&path),
                    vmcoreinfo::START_KERNEL_MAP
                ),
                path: path.clone(),
                field: Some("SYMBOL(swapper_pg_dir)".into()),
                value: Some(va),
            });
        }
        let phys_base = self
            .phys_base()
            .ok_or_else(|| err("neither the kdump header nor VMCOREINFO gives phys_base".into()))?;
        let pa = (va - vmcoreinfo::START_KERNEL_MAP).wrapping_add(phys_base);
        let slide = info.kernel_offset().map_or(String::new(), |k| {
            format!(" (KERNELOFFSET {k:#x} is already in the symbol)")
        });
        Ok(KernelRoot {
            pa,
            five_level,
            how: format!(
                "SYMBOL(swapper_pg_dir) {va:#x} - __START_KERNEL_map {:#x} + phys_base {phys_base:#x}{slide}",
                vmcoreinfo::START_KERNEL_MAP
            ),
        })
    }
}
