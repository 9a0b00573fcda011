//! Page tables in real architectural formats.
//!
//! A [`Format`] is a stateless description of one architecture's tables: its
//! geometry, how PTEs encode and decode, which rights an access needs, and
//! its walk. [`PageTable`](table::PageTable) builds and edits trees through
//! the encode/decode half of the trait, so map/unmap/protect are written
//! once; the walk is written per format because the rules differ (x86 ANDs
//! rights across levels, RISC-V looks only at the leaf).
//!
//! Levels are numbered from the leaf (0) up in every format, so a fault's
//! level means the same thing everywhere.
//!
//! New formats (AArch64 stage 1, two-stage translation) implement [`Format`];
//! the TLB and the MMU see only [`Translation`]s and [`Fault`]s.

use std::fmt;

use crate::error::Result;
use crate::memory::PteMemory;

/// The PTE-bit methods of a [`Format`] whose entries are those of the format
/// in its field `$inner`: a host stage that reuses a guest format's encoding
/// (NPT the long-mode one, the G-stage Sv39's and Sv48's). The host format
/// writes the rest itself (geometry, `make_leaf`, `allows`, the walk).
macro_rules! pte_bits_of {
    ($inner:ident) => {
        fn check_perms(&self, perm: Perm) -> Option<String> {
            self.$inner.check_perms(perm)
        }
        fn is_valid(&self, pte: u64) -> bool {
            self.$inner.is_valid(pte)
        }
        fn is_leaf(&self, pte: u64, level: u8) -> bool {
            self.$inner.is_leaf(pte, level)
        }
        fn table_pa(&self, pte: u64) -> u64 {
            self.$inner.table_pa(pte)
        }
        fn make_table(&self, table_pa: u64, level: u8) -> u64 {
            self.$inner.make_table(table_pa, level)
        }
        fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo {
            self.$inner.decode_leaf(pte, level)
        }
        fn set_perms(&self, pte: u64, level: u8, perms: Perm) -> u64 {
            self.$inner.set_perms(pte, level, perms)
        }
        fn table_rights(&self, pte: u64) -> TableRights {
            self.$inner.table_rights(pte)
        }
        fn describe(&self, pte: u64, level: u8) -> String {
            self.$inner.describe(pte, level)
        }
    };
}

/// The geometry methods of a VMSAv8-64 [`Format`] (either stage), from its
/// `name`, `pa_bits` and shared granule geometry `geo`, and the
/// architecture's fault status codes.
macro_rules! vmsa_geometry {
    () => {
        fn name(&self) -> &str {
            &self.name
        }
        fn levels(&self) -> u8 {
            self.geo.levels
        }
        fn va_bits(&self) -> u8 {
            self.geo.in_bits
        }
        fn pa_bits(&self) -> u8 {
            self.pa_bits
        }
        fn leaf_sizes(&self) -> &[(u8, u64)] {
            &self.geo.leaf_sizes
        }
        fn index(&self, va: u64, level: u8) -> u64 {
            self.geo.index(va, level)
        }
        fn level_span(&self, level: u8) -> u64 {
            self.geo.level_span(level)
        }
        fn entries(&self, level: u8) -> u64 {
            self.geo.entries(level)
        }
        fn table_size(&self, _level: u8) -> u64 {
            self.granule()
        }
        fn fsc(&self, cause: FaultCause, level: Option<u8>) -> Option<u8> {
            crate::paging::aarch64::fsc_of(cause, level)
        }
    };
}

pub mod aarch64;
pub mod aarch64_s2;
pub mod ept;
pub mod gstage;
pub mod guestmem;
pub mod npt;
pub mod riscv;
pub mod table;
pub mod tablemem;
#[cfg(test)]
mod testmem;
pub mod twostage;
pub mod x86;

pub use aarch64::AArch64;
pub use ept::Ept;
pub use gstage::GStage;
pub use guestmem::GuestMemory;
pub use npt::Npt;
pub use riscv::RiscV;
pub use table::{Backing, Leaf, Mapping, PageTable, PinnedWalks, Shootdown};
pub use tablemem::TableMemory;
pub use twostage::{NestedTranslation, TwoStage};
pub use x86::X86_64;

/// Entries per table page in every format here.
pub const PTES_PER_TABLE: u64 = 512;

/// The kind of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data read (`'r'`).
    Read,
    /// A data write (`'w'`).
    Write,
    /// An instruction fetch (`'x'`).
    Exec,
    /// A structural walk without the rights check (`'p'`), as a TLB prefetcher does.
    Probe,
}

impl Access {
    /// `'r'`, `'w'`, `'x'` or `'p'` as an access; anything else is `None`.
    pub fn from_char(c: char) -> Option<Access> {
        match c {
            'r' => Some(Access::Read),
            'w' => Some(Access::Write),
            'x' => Some(Access::Exec),
            'p' => Some(Access::Probe),
            _ => None,
        }
    }

    /// The letter of this access.
    pub fn as_char(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Exec => 'x',
            Access::Probe => 'p',
        }
    }

    /// The word used in fault messages.
    pub fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Exec => "fetch",
            Access::Probe => "probe",
        }
    }
}

/// Page permissions, with the bit values of Python's `vmopt.Perm` (R=4, W=2, X=1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Perm(pub u8);

impl Perm {
    /// No rights.
    pub const NONE: Perm = Perm(0);
    /// Execute.
    pub const X: Perm = Perm(1);
    /// Write.
    pub const W: Perm = Perm(2);
    /// Read.
    pub const R: Perm = Perm(4);
    /// Read, write and execute.
    pub const RWX: Perm = Perm(7);

    /// True if every bit of `other` is set here.
    pub fn contains(self, other: Perm) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any bit of `other` is set here.
    pub fn intersects(self, other: Perm) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Perm {
    type Output = Perm;
    fn bitor(self, rhs: Perm) -> Perm {
        Perm(self.0 | rhs.0)
    }
}

impl std::ops::BitAnd for Perm {
    type Output = Perm;
    fn bitand(self, rhs: Perm) -> Perm {
        Perm(self.0 & rhs.0)
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.contains(Perm::R) { 'r' } else { '-' };
        let w = if self.contains(Perm::W) { 'w' } else { '-' };
        let x = if self.contains(Perm::X) { 'x' } else { '-' };
        write!(f, "{r}{w}{x}")
    }
}

/// Why a translation faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultCause {
    /// The present/valid bit is clear.
    NotPresent,
    /// The rights of the page do not allow the access.
    Protection,
    /// A reserved bit is set.
    Reserved,
    /// A table pointer (or the root) points outside guest memory.
    TableOutsideMemory,
    /// The address is not canonical for the format.
    NonCanonical,
    /// A RISC-V superpage whose low PPN fields are not zero.
    Misaligned,
    /// An Intel EPT entry the processor refuses to use (an EPT
    /// misconfiguration: W without R, a reserved memory type or reserved
    /// bits), as opposed to a violation (not present, or lacking the right).
    Misconfigured,
    /// An AArch64 descriptor whose access flag (AF) is clear, without hardware AF update.
    AccessFlag,
    /// An AArch64 output or table address above the configured physical address size.
    AddressSize,
}

impl FaultCause {
    /// The name Python uses (`"not_present"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultCause::NotPresent => "not_present",
            FaultCause::Protection => "protection",
            FaultCause::Reserved => "reserved",
            FaultCause::TableOutsideMemory => "table_outside_memory",
            FaultCause::NonCanonical => "non_canonical",
            FaultCause::Misaligned => "misaligned",
            FaultCause::Misconfigured => "misconfigured",
            FaultCause::AccessFlag => "access_flag",
            FaultCause::AddressSize => "address_size",
        }
    }
}

/// A translation that failed the way the hardware would fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting virtual address.
    pub va: u64,
    /// The access that faulted.
    pub access: Access,
    /// Why.
    pub cause: FaultCause,
    /// Where the walk stopped (0 = the last level); `None` when no table was read.
    pub level: Option<u8>,
    /// User (true) or supervisor mode.
    pub user: bool,
    /// Which stage of a two-stage walk faulted; `None` for a one-stage walk.
    pub stage: Option<Stage>,
    /// The architecture's fault status code, for formats that define one
    /// (AArch64's 6-bit FSC, whose low two bits count levels from the
    /// root, unlike `level`); `None` for x86 and RISC-V.
    pub fsc: Option<u8>,
}

/// The stage of a two-stage walk a fault belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The guest's own tables (GVA -> GPA) faulted.
    Guest,
    /// The host tables (GPA -> HPA) faulted translating `gpa`.
    Host {
        /// The guest-physical address the host walk could not translate.
        gpa: u64,
        /// True if `gpa` was a guest page-table entry the guest walk read;
        /// false if it was the final access's address.
        table: bool,
    },
}

impl Stage {
    /// `"guest"` or `"host"`, as Python names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Guest => "guest",
            Stage::Host { .. } => "host",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.user { "user" } else { "supervisor" };
        write!(
            f,
            "page fault: {mode} {} of {:#x}: {}",
            self.access.verb(),
            self.va,
            self.cause.as_str()
        )?;
        if let Some(level) = self.level {
            write!(f, " at level {level}")?;
        }
        if let Some(fsc) = self.fsc {
            write!(f, " (FSC {fsc:#08b})")?;
        }
        match self.stage {
            Some(Stage::Guest) => write!(f, " (guest stage)"),
            Some(Stage::Host { gpa, table }) => {
                let what = if table {
                    "guest table entry"
                } else {
                    "final access"
                };
                write!(f, " (host stage, {what} at guest-physical {gpa:#x})")
            }
            None => Ok(()),
        }
    }
}

/// The result of a successful walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The virtual address translated.
    pub va: u64,
    /// Its physical address.
    pub pa: u64,
    /// Bytes of the page that maps it.
    pub page_size: u64,
    /// Effective rights (for x86 the AND of every level).
    pub perms: Perm,
    /// Effective user-accessibility.
    pub user: bool,
    /// Global (matches every ASID in a TLB).
    pub global: bool,
    /// The leaf's D bit after the walk.
    pub dirty: bool,
    /// PTE reads of this walk.
    pub memory_refs: u32,
    /// The leaf's level, 0 for a 4 KiB page.
    pub level: u8,
    /// Physical address of the leaf PTE.
    pub pte_pa: u64,
}

impl Translation {
    /// Physical address of the first byte of the page.
    pub fn page_pa(&self) -> u64 {
        self.pa - (self.va & (self.page_size - 1))
    }
}

/// A decoded leaf PTE, with the rights of the leaf alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    /// Physical address of the page.
    pub page_pa: u64,
    /// The leaf's own rights.
    pub perms: Perm,
    /// The leaf's U/S bit.
    pub user: bool,
    /// The leaf's G bit.
    pub global: bool,
    /// The leaf's A bit.
    pub accessed: bool,
    /// The leaf's D bit.
    pub dirty: bool,
}

/// Rights a non-leaf PTE contributes to the pages below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRights {
    /// Rights the entry allows (ANDed down the walk).
    pub perms: Perm,
    /// User access allowed below (ANDed).
    pub user: bool,
    /// Global below (ORed).
    pub global: bool,
}

/// One architecture's page-table format: a stateless description.
pub trait Format: Send + Sync + fmt::Debug {
    /// The format's name (`"x86_64"`, `"x86_64_5level"`, `"sv39"`, ...).
    fn name(&self) -> &str;
    /// Number of levels of the tree.
    fn levels(&self) -> u8;
    /// Width of a virtual address.
    fn va_bits(&self) -> u8;
    /// Physical address bits a PTE can express.
    fn pa_bits(&self) -> u8;
    /// `(level, page size)` of the levels that may hold leaves, smallest page first.
    fn leaf_sizes(&self) -> &[(u8, u64)];

    /// Index of `va` in a table at `level`.
    fn index(&self, va: u64, level: u8) -> u64 {
        (va >> (12 + 9 * level as u32)) & 0x1FF
    }
    /// Bytes of address space one entry at `level` covers.
    fn level_span(&self, level: u8) -> u64 {
        1u64 << (12 + 9 * level as u32)
    }
    /// Entries of a table at `level` (a root may hold fewer than a full table).
    fn entries(&self, level: u8) -> u64 {
        let _ = level;
        PTES_PER_TABLE
    }
    /// Bytes allocated for a table at `level` (the translation granule).
    fn table_size(&self, level: u8) -> u64 {
        let _ = level;
        4096
    }
    /// The architecture's fault status code for a fault of `cause` at `level`, if it has one.
    fn fsc(&self, cause: FaultCause, level: Option<u8>) -> Option<u8> {
        let _ = (cause, level);
        None
    }
    /// The level whose leaves map pages of `size`, if any.
    fn level_of_size(&self, size: u64) -> Option<u8> {
        self.leaf_sizes()
            .iter()
            .find(|&&(_, s)| s == size)
            .map(|&(l, _)| l)
    }
    /// The page size of a leaf at `level`, if leaves may sit there.
    fn leaf_size(&self, level: u8) -> Option<u64> {
        self.leaf_sizes()
            .iter()
            .find(|&&(l, _)| l == level)
            .map(|&(_, s)| s)
    }
    /// True if `va` is canonical (sign-extended from bit `va_bits - 1`).
    fn is_canonical(&self, va: u64) -> bool {
        let bits = self.va_bits() as u32;
        let top = va >> (bits - 1);
        top == 0 || top == (1u64 << (65 - bits)) - 1
    }
    /// True if no address between the canonical `va` and `last` is outside the format's range.
    fn same_half(&self, va: u64, last: u64) -> bool {
        let bits = self.va_bits() as u32 - 1;
        va >> bits == last >> bits
    }
    /// Sign-extend a `va_bits`-wide address to 64 bits.
    fn canonicalize(&self, va: u64) -> u64 {
        let bits = self.va_bits() as u32;
        let low = va & ((1u64 << bits) - 1);
        if low >> (bits - 1) != 0 {
            low | !((1u64 << bits) - 1)
        } else {
            low
        }
    }
    /// Bytes of the root table: one 4 KiB frame, except the RISC-V G-stage's 16 KiB.
    fn root_bytes(&self) -> u64 {
        4096
    }
    /// The access a host (stage-2) walk makes when a two-stage walk reads a
    /// guest page-table entry through this format: a read, except where the
    /// architecture treats those reads as writes (EPT with A/D enabled).
    fn nested_table_access(&self) -> Access {
        Access::Read
    }
    /// Why `perm` cannot be encoded in a leaf of this format, or `None`.
    fn check_perms(&self, perm: Perm) -> Option<String>;

    /// The present/valid bit.
    fn is_valid(&self, pte: u64) -> bool;
    /// A valid PTE that maps a page (rather than pointing to a table).
    fn is_leaf(&self, pte: u64, level: u8) -> bool;
    /// Physical address of the next-level table a non-leaf PTE points to.
    fn table_pa(&self, pte: u64) -> u64;
    /// A non-leaf PTE pointing at `table_pa`, as an OS would write it.
    fn make_table(&self, table_pa: u64, level: u8) -> u64;
    /// A leaf PTE mapping the page at `page_pa`.
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, user: bool, global: bool) -> u64;
    /// Decode a leaf PTE.
    fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo;
    /// `pte` with its permission bits replaced, other bits kept.
    fn set_perms(&self, pte: u64, level: u8, perms: Perm) -> u64;
    /// Rights a non-leaf PTE contributes.
    fn table_rights(&self, pte: u64) -> TableRights;
    /// Effective `(perms, user)` of the leaf `pte` at `level` under the limits `above` of its tables.
    fn effective(&self, pte: u64, level: u8, above: TableRights) -> (Perm, bool) {
        let info = self.decode_leaf(pte, level);
        (info.perms & above.perms, info.user && above.user)
    }
    /// A one-line human description of a PTE's bits.
    fn describe(&self, pte: u64, level: u8) -> String;
    /// May an `access` in `user` mode use a page with these effective rights?
    fn allows(&self, perms: Perm, page_user: bool, access: Access, user: bool) -> bool;

    /// Translate `va` as the hardware would.
    ///
    /// Reads PTEs from `mem`; with `update_ad` sets accessed/dirty bits with a
    /// compare-exchange on the 64-bit PTE and restarts the walk if the PTE
    /// changed since it was read, so a concurrent unmap or protect is never
    /// undone. Faults come back as `Err(Error::Fault(..))`; other errors
    /// (a read-only image with `update_ad`) as themselves.
    fn walk(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        va: u64,
        access: Access,
        user: bool,
        update_ad: bool,
    ) -> Result<Translation>;
}

/// What every format's walk does around its own pass over the tables: refuse
/// a non-canonical address, then run `walk_once` until a pass completes.
///
/// A pass returns `Ok(None)` when an A/D compare-exchange found the PTE
/// changed since it was read; the walk then restarts from the root, so it
/// never writes an old PTE back. The passes read memory through its pinned
/// view when it has one ([`PteMemory::pinned`]: one lock hold per walk, not
/// one per PTE).
pub(crate) fn walk_until_done(
    mem: &dyn PteMemory,
    canonical: bool,
    va: u64,
    access: Access,
    user: bool,
    mut walk_once: impl FnMut(&dyn PteMemory) -> Result<Option<Translation>>,
) -> Result<Translation> {
    if !canonical {
        return Err(crate::Error::Fault(Fault {
            va,
            access,
            cause: FaultCause::NonCanonical,
            level: None,
            user,
            stage: None,
            fsc: None,
        }));
    }
    let mut done = None;
    mem.pinned(&mut |view| done = Some(passes(view, &mut walk_once)));
    match done {
        Some(result) => result,
        None => passes(mem, &mut walk_once),
    }
}

/// Passes of `walk_once` over `mem` until one completes.
#[inline(always)]
fn passes(
    mem: &dyn PteMemory,
    walk_once: &mut impl FnMut(&dyn PteMemory) -> Result<Option<Translation>>,
) -> Result<Translation> {
    loop {
        if let Some(t) = walk_once(mem)? {
            return Ok(t);
        }
    }
}

/// `4096 -> "4K"`, `2 MiB -> "2M"`, `1 GiB -> "1G"`.
pub fn page_size_name(size: u64) -> String {
    for (unit, name) in [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")] {
        if size >= unit && size % unit == 0 {
            return format!("{}{name}", size / unit);
        }
    }
    format!("{size}B")
}
