//! AArch64 stage 1 translation (VMSAv8-64, Arm ARM D8 "The AArch64 Virtual
//! Memory System Architecture"), for one VA half: TTBR0_EL1 (lower) or
//! TTBR1_EL1 (upper).
//!
//! # Geometry
//!
//! The granule G is 4, 16 or 64 KiB; each level resolves `log2(G) - 3` bits
//! (9, 11, 13). The number of levels follows from TxSZ = 64 - `va_bits`:
//! `ceil((va_bits - log2 G) / stride)`, so the start level is
//! `4 - levels` and its table may hold fewer entries than a full granule.
//! Blocks exist at the architecture's levels 1 and 2 with the 4K granule
//! (1 GiB, 2 MiB) and level 2 with 16K (32 MiB) and 64K (512 MiB); a block
//! anywhere else (a 4K level 0 block, a 16K/64K level 1 block, which need
//! FEAT_LPA/LPA2) and bits\[1:0\] = 01 at level 3 are invalid: a translation
//! fault.
//!
//! vmopt's `level` counts from the last level (0) up, as in every format;
//! the architecture's level number (in the FSC) is `3 - level`.
//!
//! # Rights
//!
//! AP\[2:1\] (bits 7:6): AP\[1\] grants EL0 data access, AP\[2\] makes the page
//! read-only at both ELs; EL1 can always read. UXN forbids EL0 execution,
//! PXN EL1 execution, and EL1 never executes a page EL0 may write. Table
//! descriptors' APTable\[1\] (no writes below), APTable\[0\] (no EL0 access
//! below), UXNTable and PXNTable are ORed into the leaf's limits over the
//! walk. `user = true` is an EL0 access, `false` an EL1 one (PSTATE.PAN = 0,
//! SCTLR_EL1.WXN = 0).
//!
//! In vmopt's (perms, user) view of a page, `user` is the effective AP\[1\],
//! `w` is "writable" (AP\[2\] clear, or DBM set under `hd`), `r` is always set,
//! and `x` is execution at the page's own EL: not UXN for an EL0 page, not
//! PXN for an EL1 page. `map` writes exactly that (an EL0 page gets PXN, an
//! EL1 page UXN, as Linux does). The two other encodings, EL0 execution of
//! an EL1-only page (execute-only user memory) and EL1 execution of an EL0
//! read-only page with PXN clear, fault here as permission faults: the
//! one-bit `x` of the view cannot hold them, and the walk agrees with the
//! TLB's cached rights.
//!
//! # Access flag and dirty state
//!
//! A clear AF is an access-flag fault, unless `ha` (TCR_EL1.HA): the walk
//! then sets AF with a compare-exchange, as x86 sets A. With `hd`
//! (TCR_EL1.HD, needs `ha`) a write to a page with DBM set and AP\[2\] set
//! ("writable-clean") clears AP\[2\] the same way. A page is dirty when AP\[2\]
//! is clear. Checks run in the architecture's order: translation, address
//! size, access flag, permission; AF and AP\[2\] change only when the access
//! is allowed.
//!
//! # Addresses
//!
//! Output addresses are descriptor bits \[47:log2 G\]; any bit at or above
//! `pa_bits` (TCR_EL1.IPS: 32, 36, 40, 42, 44 or 48; FEAT_LPA is not
//! modelled) is an address-size fault at that level. A VA outside the half
//! (bits \[63:va_bits\], or \[55:va_bits\] with `tbi`, not all equal to the
//! half's) is a level 0 translation fault, as the architecture reports it
//! (FSC 0b000100), with no table read. nG makes a page non-global (tagged
//! with the ASID in a TLB); the Contiguous hint changes no translation, and
//! TLBs here cache each page of a contiguous run on its own. AttrIndx and SH
//! are kept as written (`map` writes AttrIndx 0 and inner shareable).

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::x86::unaligned;
use crate::paging::{
    walk_until_done, Access, Fault, FaultCause, Format, LeafInfo, Perm, TableRights, Translation,
};

/// Valid (bit 0).
pub const VALID: u64 = 1 << 0;
/// Table (at levels 0-2) or page (at level 3) rather than block (bit 1).
pub const TABLE: u64 = 1 << 1;
/// AP\[1\]: EL0 may access.
pub const AP_EL0: u64 = 1 << 6;
/// AP\[2\]: read-only.
pub const AP_RO: u64 = 1 << 7;
/// SH = 0b11, inner shareable.
pub const SH_INNER: u64 = 0b11 << 8;
/// The access flag.
pub const AF: u64 = 1 << 10;
/// Not global.
pub const NG: u64 = 1 << 11;
/// Dirty bit modifier.
pub const DBM: u64 = 1 << 51;
/// The Contiguous hint.
pub const CONTIGUOUS: u64 = 1 << 52;
/// Privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// Unprivileged execute-never.
pub const UXN: u64 = 1 << 54;
/// PXNTable.
pub const PXN_TABLE: u64 = 1 << 59;
/// UXNTable.
pub const UXN_TABLE: u64 = 1 << 60;
/// APTable\[0\]: no EL0 access below.
pub const AP_TABLE_NO_EL0: u64 = 1 << 61;
/// APTable\[1\]: no writes below.
pub const AP_TABLE_RO: u64 = 1 << 62;
/// Output and table address bits \[47:0\] (the granule's low bits are masked per use).
///
/// Without FEAT_LPA/LPA2 bits 51:48 are not address bits: 51 is DBM, 50 GP,
/// 49:48 RES0.
pub(crate) const TABLE_BITS: u64 = (1 << 48) - 1;
const BIT_NAMES: [(u64, &str); 15] = [
    (VALID, "V"),
    (TABLE, "T"),
    (AP_EL0, "AP1"),
    (AP_RO, "AP2"),
    (AF, "AF"),
    (NG, "nG"),
    (DBM, "DBM"),
    (CONTIGUOUS, "Cont"),
    (PXN, "PXN"),
    (UXN, "UXN"),
    (PXN_TABLE, "PXNTable"),
    (UXN_TABLE, "UXNTable"),
    (AP_TABLE_NO_EL0, "APTable0"),
    (AP_TABLE_RO, "APTable1"),
    (1 << 63, "NSTable"),
];
/// Physical address sizes TCR_EL1.IPS (and VTCR_EL2.PS) can select without FEAT_LPA.
pub(crate) const PA_SIZES: [u8; 6] = [32, 36, 40, 42, 44, 48];

/// The geometry stage 1 and stage 2 share: a granule of `2^granule_shift`
/// bytes, `stride = granule_shift - 3` index bits per level, `levels` levels
/// over an input (VA or IPA) of `in_bits`; the start level resolves the rest,
/// which for stage 2 may be more than one table's worth (concatenated tables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) granule_shift: u8,
    pub(crate) stride: u8,
    pub(crate) levels: u8,
    pub(crate) in_bits: u8,
    pub(crate) leaf_sizes: Vec<(u8, u64)>,
}

impl Geometry {
    /// `levels` levels over `in_bits`, with the granule's blocks: vmopt levels
    /// (0 = last) 1 and 2 with 4K (architecture levels 2 and 1), level 1 with
    /// 16K and 64K, where they lie below the start level.
    pub(crate) fn new(granule_shift: u8, levels: u8, in_bits: u8) -> Geometry {
        let stride = granule_shift - 3;
        let block_levels: &[u8] = if granule_shift == 12 { &[1, 2] } else { &[1] };
        let mut leaf_sizes = vec![(0u8, 1u64 << granule_shift)];
        for &l in block_levels {
            if l < levels {
                leaf_sizes.push((l, 1u64 << (granule_shift + stride * l)));
            }
        }
        Geometry {
            granule_shift,
            stride,
            levels,
            in_bits,
            leaf_sizes,
        }
    }
    pub(crate) fn granule(&self) -> u64 {
        1 << self.granule_shift
    }
    fn shift(&self, level: u8) -> u32 {
        self.granule_shift as u32 + self.stride as u32 * level as u32
    }
    pub(crate) fn index(&self, va: u64, level: u8) -> u64 {
        (va >> self.shift(level)) & (self.entries(level) - 1)
    }
    pub(crate) fn level_span(&self, level: u8) -> u64 {
        1u64 << self.shift(level)
    }
    /// Entries at `level`: a full table below the start level, what is left of the input at it.
    pub(crate) fn entries(&self, level: u8) -> u64 {
        if level + 1 == self.levels {
            1 << (self.in_bits as u32 - self.shift(level))
        } else {
            1 << self.stride
        }
    }
    fn leaf_size(&self, level: u8) -> Option<u64> {
        self.leaf_sizes
            .iter()
            .find(|&&(l, _)| l == level)
            .map(|&(_, s)| s)
    }
}

/// `(log2 granule, name suffix)` of a 4K, 16K or 64K granule; `what` names the format in the error.
pub(crate) fn granule_shift_of(granule: u64, what: &str) -> Result<(u8, &'static str)> {
    match granule {
        4096 => Ok((12, "")),
        16384 => Ok((14, "_16k")),
        65536 => Ok((16, "_64k")),
        _ => Err(Error::Config(format!(
            "{what} granule must be 4096, 16384 or 65536, got {granule}"
        ))),
    }
}

/// The 6-bit fault status code (ESR DFSC, PAR FST) of `cause` at vmopt `level`:
/// its low two bits are the architecture's level, `3 - level` (0 with no level).
pub(crate) fn fsc_of(cause: FaultCause, level: Option<u8>) -> Option<u8> {
    let ll = level.map_or(0, |l| 3 - l);
    let kind = match cause {
        FaultCause::AddressSize => 0b0000,
        FaultCause::NotPresent => 0b0001,
        FaultCause::AccessFlag => 0b0010,
        FaultCause::Protection => 0b0011,
        // Synchronous external abort on a translation table walk.
        FaultCause::TableOutsideMemory => 0b0101,
        _ => return None,
    };
    Some(kind << 2 | ll)
}

/// The block or page descriptor a descent reached.
pub(crate) struct Descent {
    pub(crate) pte_pa: u64,
    pub(crate) pte: u64,
    pub(crate) level: u8,
    pub(crate) refs: u32,
}

/// Read descriptors from `root` down to the block or page that maps `va`,
/// with the checks both stages make on the way, in the architecture's order:
/// a table outside memory (an external abort on the walk), an invalid
/// descriptor, bits\[1:0\] = 01 at the last level or a block where the
/// granule has none (translation faults), and an output or table address at
/// or above `pa_bits` (an address-size fault; for the root with no level).
/// `on_table` sees each table descriptor passed through. The access flag and
/// rights are the caller's, as they differ by stage.
pub(crate) fn descend(
    geo: &Geometry,
    pa_bits: u8,
    mem: &dyn PteMemory,
    root: u64,
    va: u64,
    mut on_table: impl FnMut(u64),
) -> Result<std::result::Result<Descent, (FaultCause, Option<u8>)>> {
    if root >> pa_bits != 0 {
        return Ok(Err((FaultCause::AddressSize, None)));
    }
    let granule_mask = !(geo.granule() - 1);
    let mut table = root;
    let mut refs = 0u32;
    let mut level = geo.levels - 1;
    loop {
        let fault = |cause| Ok(Err((cause, Some(level))));
        let (pte_pa, overflow) = table.overflowing_add(geo.index(va, level) * 8);
        let pte = match mem.load_u64(pte_pa) {
            Some(pte) if !overflow => pte,
            _ if !overflow
                && pte_pa & 7 != 0
                && mem.load_u64(pte_pa & !7).is_some()
                && mem.load_u64((pte_pa & !7) + 8).is_some() =>
            {
                return Err(unaligned(pte_pa));
            }
            // Outside memory: a synchronous external abort on the walk.
            _ => return fault(FaultCause::TableOutsideMemory),
        };
        refs += 1;
        if pte & VALID == 0 {
            return fault(FaultCause::NotPresent);
        }
        let is_table = pte & TABLE != 0;
        if level == 0 && !is_table {
            // bits[1:0] = 01 at the last level: reserved, invalid.
            return fault(FaultCause::NotPresent);
        }
        if !is_table && geo.leaf_size(level).is_none() {
            // A block where the granule allows none (4K level 0, 16K/64K level 1).
            return fault(FaultCause::NotPresent);
        }
        if (pte & TABLE_BITS & granule_mask) >> pa_bits != 0 {
            return fault(FaultCause::AddressSize);
        }
        if level == 0 || !is_table {
            return Ok(Ok(Descent {
                pte_pa,
                pte,
                level,
                refs,
            }));
        }
        on_table(pte);
        table = pte & TABLE_BITS & granule_mask;
        level -= 1;
    }
}

/// VMSAv8-64 stage 1 for one VA half (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AArch64 {
    name: String,
    geo: Geometry,
    pa_bits: u8,
    upper: bool,
    ha: bool,
    hd: bool,
    tbi: bool,
}

/// The limits table descriptors put on the pages below them.
#[derive(Clone, Copy, Default)]
struct Limits {
    ro: bool,
    no_el0: bool,
    uxn: bool,
    pxn: bool,
}

impl Limits {
    fn of_table(pte: u64) -> Limits {
        Limits {
            ro: pte & AP_TABLE_RO != 0,
            no_el0: pte & AP_TABLE_NO_EL0 != 0,
            uxn: pte & UXN_TABLE != 0,
            pxn: pte & PXN_TABLE != 0,
        }
    }
    fn and_then(self, pte: u64) -> Limits {
        let below = Limits::of_table(pte);
        Limits {
            ro: self.ro || below.ro,
            no_el0: self.no_el0 || below.no_el0,
            uxn: self.uxn || below.uxn,
            pxn: self.pxn || below.pxn,
        }
    }
    /// As vmopt's table rights: `w` = writes allowed, `x` = EL1 execution
    /// allowed (PXNTable clear), `r` = EL0 execution allowed (UXNTable clear).
    fn as_rights(self) -> TableRights {
        let mut perms = Perm::NONE;
        if !self.uxn {
            perms = perms | Perm::R;
        }
        if !self.ro {
            perms = perms | Perm::W;
        }
        if !self.pxn {
            perms = perms | Perm::X;
        }
        TableRights {
            perms,
            user: !self.no_el0,
            global: false,
        }
    }
    fn from_rights(r: TableRights) -> Limits {
        Limits {
            ro: !r.perms.contains(Perm::W),
            no_el0: !r.user,
            uxn: !r.perms.contains(Perm::R),
            pxn: !r.perms.contains(Perm::X),
        }
    }
}

impl AArch64 {
    /// A validated format.
    ///
    /// `granule` is 4096, 16384 or 65536; `va_bits` (64 - TxSZ) in [25, 48];
    /// `pa_bits` (TCR_EL1.IPS) one of 32, 36, 40, 42, 44, 48; `hd` needs `ha`.
    pub fn new(
        granule: u64,
        va_bits: i64,
        pa_bits: i64,
        upper: bool,
        ha: bool,
        hd: bool,
        tbi: bool,
    ) -> Result<AArch64> {
        let (granule_shift, suffix) = granule_shift_of(granule, "AArch64")?;
        if !(25..=48).contains(&va_bits) {
            return Err(Error::Config(format!(
                "AArch64 va_bits (64 - TxSZ) must be in [25, 48], got {va_bits}"
            )));
        }
        if !PA_SIZES.iter().any(|&p| p as i64 == pa_bits) {
            return Err(Error::Config(format!(
                "AArch64 pa_bits (TCR_EL1.IPS) must be one of 32, 36, 40, 42, 44, 48, got {pa_bits}"
            )));
        }
        if hd && !ha {
            return Err(Error::Config(
                "AArch64 hd (hardware dirty state, TCR_EL1.HD) needs ha (TCR_EL1.HA) set".into(),
            ));
        }
        let va_bits = va_bits as u8;
        let levels = (va_bits - granule_shift).div_ceil(granule_shift - 3);
        let mut name = format!("aarch64{suffix}");
        if va_bits != 48 {
            name += &format!("_va{va_bits}");
        }
        if upper {
            name += "_upper";
        }
        Ok(AArch64 {
            name,
            geo: Geometry::new(granule_shift, levels, va_bits),
            pa_bits: pa_bits as u8,
            upper,
            ha,
            hd,
            tbi,
        })
    }

    /// The translation granule in bytes.
    pub fn granule(&self) -> u64 {
        self.geo.granule()
    }
    /// The TTBR1 (upper) half rather than TTBR0.
    pub fn upper(&self) -> bool {
        self.upper
    }
    /// TCR_EL1.HA: the walk sets AF.
    pub fn ha(&self) -> bool {
        self.ha
    }
    /// TCR_EL1.HD: a write to a DBM page clears AP\[2\].
    pub fn hd(&self) -> bool {
        self.hd
    }
    /// TCR_EL1.TBI: bits 63:56 of a VA are ignored.
    pub fn tbi(&self) -> bool {
        self.tbi
    }
    /// The architecture's start level (0-3) of a walk.
    pub fn start_level(&self) -> u8 {
        4 - self.geo.levels
    }

    /// True if `va` lies in this half (top bits all equal to the half's, the tag ignored under TBI).
    fn in_range(&self, va: u64) -> bool {
        let top = if self.tbi { 56 } else { 64 };
        let width = top - self.geo.in_bits as u32;
        let bits = (va >> self.geo.in_bits) & ((1u64 << width) - 1);
        if self.upper {
            bits == (1u64 << width) - 1
        } else {
            bits == 0
        }
    }

    fn fault(
        &self,
        va: u64,
        access: Access,
        user: bool,
        cause: FaultCause,
        level: Option<u8>,
    ) -> Error {
        Error::Fault(Fault {
            va,
            access,
            cause,
            level,
            user,
            stage: None,
            fsc: fsc_of(cause, level),
        })
    }

    /// vmopt's `(perms, user)` of a leaf under `limits` (see the module documentation).
    fn view(&self, pte: u64, limits: Limits) -> (Perm, bool) {
        let el0 = pte & AP_EL0 != 0 && !limits.no_el0;
        let writable = !limits.ro && (pte & AP_RO == 0 || (self.hd && pte & DBM != 0));
        let exec = if el0 {
            pte & UXN == 0 && !limits.uxn
        } else {
            pte & PXN == 0 && !limits.pxn
        };
        let mut perms = Perm::R;
        if writable {
            perms = perms | Perm::W;
        }
        if exec {
            perms = perms | Perm::X;
        }
        (perms, el0)
    }

    /// One pass of the walk; `Ok(None)` if the compare-exchange lost a race.
    #[inline(always)]
    fn walk_once(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        va: u64,
        access: Access,
        user: bool,
        update_ad: bool,
    ) -> Result<Option<Translation>> {
        let mut limits = Limits::default();
        let Descent {
            pte_pa,
            pte,
            level,
            refs,
        } = match descend(&self.geo, self.pa_bits, mem, root, va, |t| {
            limits = limits.and_then(t)
        })? {
            Ok(d) => d,
            Err((cause, level)) => return Err(self.fault(va, access, user, cause, level)),
        };
        let fault = |cause, level| Err(self.fault(va, access, user, cause, Some(level)));
        if pte & AF == 0 && !self.ha {
            return fault(FaultCause::AccessFlag, level);
        }
        let (perms, el0) = self.view(pte, limits);
        if access != Access::Probe && !self.allows(perms, el0, access, user) {
            return fault(FaultCause::Protection, level);
        }
        let mut new = pte | if self.ha { AF } else { 0 };
        if access == Access::Write && self.hd && pte & DBM != 0 {
            new &= !AP_RO;
        }
        let mut pte = pte;
        if new != pte && update_ad {
            if !mem.cas_u64(pte_pa, pte, new)? {
                return Ok(None);
            }
            pte = new;
        }
        let size = self.level_span(level);
        Ok(Some(Translation {
            va,
            pa: (pte & TABLE_BITS & !(size - 1)) | (va & (size - 1)),
            page_size: size,
            perms,
            user: el0,
            global: pte & NG == 0,
            dirty: pte & AP_RO == 0,
            memory_refs: refs,
            level,
            pte_pa,
        }))
    }

    fn perm_bits(&self, perms: Perm, user: bool) -> u64 {
        let mut bits = 0;
        if !perms.contains(Perm::W) {
            bits |= AP_RO;
        } else if self.hd {
            // Writable-clean: the first write clears AP[2].
            bits |= AP_RO | DBM;
        }
        let xn = if user { UXN } else { PXN };
        let other = if user { PXN } else { UXN };
        bits |= other;
        if !perms.contains(Perm::X) {
            bits |= xn;
        }
        bits
    }
}

impl Format for AArch64 {
    vmsa_geometry!();
    fn is_canonical(&self, va: u64) -> bool {
        self.in_range(va)
    }
    fn same_half(&self, va: u64, last: u64) -> bool {
        !self.tbi || va >> 56 == last >> 56
    }
    fn canonicalize(&self, va: u64) -> u64 {
        let mask = (1u64 << self.geo.in_bits) - 1;
        if self.upper {
            va | !mask
        } else {
            va & mask
        }
    }
    fn check_perms(&self, perm: Perm) -> Option<String> {
        if !perm.contains(Perm::R) {
            return Some(
                "AArch64 pages are always readable at EL1 (AP[2:1] has no no-read encoding)".into(),
            );
        }
        None
    }

    fn is_valid(&self, pte: u64) -> bool {
        pte & VALID != 0
    }
    fn is_leaf(&self, pte: u64, level: u8) -> bool {
        pte & VALID != 0
            && (if level == 0 {
                pte & TABLE != 0
            } else {
                pte & TABLE == 0
            })
    }
    fn table_pa(&self, pte: u64) -> u64 {
        pte & TABLE_BITS & !(self.granule() - 1)
    }
    fn make_table(&self, table_pa: u64, _level: u8) -> u64 {
        table_pa | TABLE | VALID
    }
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, user: bool, global: bool) -> u64 {
        let mut pte = page_pa | VALID | SH_INNER | self.perm_bits(perms, user);
        if level == 0 {
            pte |= TABLE;
        }
        if user {
            pte |= AP_EL0;
        }
        if !global {
            pte |= NG;
        }
        if !self.ha {
            // Without hardware AF update a clear AF faults: the OS sets it.
            pte |= AF;
        }
        pte
    }
    fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo {
        let (perms, user) = self.view(pte, Limits::default());
        LeafInfo {
            page_pa: pte & TABLE_BITS & !(self.level_span(level) - 1),
            perms,
            user,
            global: pte & NG == 0,
            accessed: pte & AF != 0,
            dirty: pte & AP_RO == 0,
        }
    }
    fn set_perms(&self, pte: u64, _level: u8, perms: Perm) -> u64 {
        (pte & !(AP_RO | DBM | UXN | PXN)) | self.perm_bits(perms, pte & AP_EL0 != 0)
    }
    fn table_rights(&self, pte: u64) -> TableRights {
        Limits::of_table(pte).as_rights()
    }
    fn effective(&self, pte: u64, _level: u8, above: TableRights) -> (Perm, bool) {
        self.view(pte, Limits::from_rights(above))
    }
    fn describe(&self, pte: u64, level: u8) -> String {
        let names: Vec<&str> = BIT_NAMES
            .iter()
            .filter(|&&(bit, _)| pte & bit != 0)
            .map(|&(_, name)| name)
            .collect();
        let bits = if names.is_empty() {
            "-".to_string()
        } else {
            names.join(" ")
        };
        let kind = match (pte & VALID != 0, pte & TABLE != 0, level) {
            (false, _, _) => "invalid",
            (true, true, 0) => "page",
            (true, true, _) => "table",
            (true, false, 0) => "reserved",
            (true, false, _) => "block",
        };
        format!(
            "{pte:#018x} {kind} [{bits}] attr {} -> {:#x}",
            (pte >> 2) & 7,
            self.table_pa(pte)
        )
    }
    fn allows(&self, perms: Perm, page_user: bool, access: Access, user: bool) -> bool {
        match access {
            Access::Read => !user || page_user,
            Access::Write => perms.contains(Perm::W) && (!user || page_user),
            // Execution at the page's own EL only; EL1 never runs EL0-writable pages.
            Access::Exec => perms.contains(Perm::X) && user == page_user,
            Access::Probe => true,
        }
    }

    fn walk(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        va: u64,
        access: Access,
        user: bool,
        update_ad: bool,
    ) -> Result<Translation> {
        if !self.in_range(va) {
            return Err(self.fault(va, access, user, FaultCause::NotPresent, None));
        }
        walk_until_done(
            mem,
            true,
            va,
            access,
            user,
            #[inline(always)]
            |m| self.walk_once(m, root, va, access, user, update_ad),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testmem::{fault_of, put, TestMem};

    const MIB: u64 = 1 << 20;

    fn fmt(granule: u64, va_bits: i64) -> AArch64 {
        AArch64::new(granule, va_bits, 48, false, false, false, false).unwrap()
    }

    /// `(granule, va_bits, levels, start level, root entries, leaf sizes)`.
    type Geometry = (u64, i64, u8, u8, u64, &'static [u64]);

    fn fsc_of(r: Result<Translation>) -> Option<u8> {
        match r {
            Err(Error::Fault(f)) => f.fsc,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn geometry_follows_granule_and_txsz() {
        // (granule, va_bits) -> (levels, start level, root entries, leaf sizes)
        let cases: [Geometry; 8] = [
            (4096, 48, 4, 0, 512, &[4096, 2 * MIB, 1 << 30]),
            (4096, 39, 3, 1, 512, &[4096, 2 * MIB, 1 << 30]),
            (4096, 30, 2, 2, 512, &[4096, 2 * MIB]),
            (16384, 48, 4, 0, 2, &[16384, 32 * MIB]),
            (16384, 47, 3, 1, 2048, &[16384, 32 * MIB]),
            (16384, 25, 1, 3, 2048, &[16384]),
            (65536, 48, 3, 1, 64, &[65536, 512 * MIB]),
            (65536, 42, 2, 2, 8192, &[65536, 512 * MIB]),
        ];
        for (g, va, levels, start, root, sizes) in cases {
            let f = fmt(g, va);
            let got: Vec<u64> = f.leaf_sizes().iter().map(|&(_, s)| s).collect();
            assert_eq!(
                (
                    f.levels(),
                    f.start_level(),
                    f.entries(levels - 1),
                    got.as_slice()
                ),
                (levels, start, root, sizes),
                "{g} {va}"
            );
            assert_eq!(f.level_span(levels - 1) * f.entries(levels - 1), 1 << va);
        }
        let err = |r: Result<AArch64>| r.unwrap_err().to_string();
        assert!(err(AArch64::new(8192, 48, 48, false, false, false, false)).contains("8192"));
        assert!(err(AArch64::new(4096, 49, 48, false, false, false, false)).contains("49"));
        assert!(err(AArch64::new(4096, 48, 47, false, false, false, false)).contains("47"));
        assert!(err(AArch64::new(4096, 48, 48, false, false, true, false)).contains("needs ha"));
    }

    #[test]
    fn page_descriptor_bit_exact_with_fsc_levels() {
        let f = fmt(4096, 48);
        let mem = TestMem::new(64 * MIB);
        let va = 0x0000_1234_5678_9000;
        let leaf = f.make_leaf(0x20_0000, 0, Perm::R | Perm::W, true, false);
        // V T, SH=11, AP=01, AF, nG, PXN and UXN (EL0 page without x).
        assert_eq!(leaf, 0x0060_0000_0020_0F43);
        let mut next = 0x2000;
        let pte_pa = put(&mem, &f, 0x1000, va, 0, leaf, &mut next);
        assert_eq!(mem.get(0x1000 + ((va >> 39) & 511) * 8), 0x2003);
        let t = f
            .walk(&mem, 0x1000, va + 0x10, Access::Write, true, true)
            .unwrap();
        assert_eq!(
            (t.pa, t.memory_refs, t.level, t.global, t.user),
            (0x20_0010, 4, 0, false, true)
        );
        // Clear AF: an access-flag fault at architecture level 3.
        mem.set(pte_pa, leaf & !AF);
        let r = f.walk(&mem, 0x1000, va, Access::Read, false, true);
        assert_eq!(fsc_of(r), Some(0b001011));
        // bits[1:0] = 01 at level 3: translation fault level 3.
        mem.set(pte_pa, leaf & !TABLE);
        let r = f.walk(&mem, 0x1000, va, Access::Read, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(0)));
        // An output address above a 40-bit IPS: address-size fault level 3.
        let f40 = AArch64::new(4096, 48, 40, false, false, false, false).unwrap();
        mem.set(pte_pa, leaf | 1 << 40);
        let r = f40.walk(&mem, 0x1000, va, Access::Read, false, true);
        assert_eq!(fsc_of(r), Some(0b000011));
        f.walk(&mem, 0x1000, va, Access::Read, false, true).unwrap();
        // Above the 48-bit half: level 0 translation fault, no table read.
        let r = f.walk(&mem, 0x1000, 1 << 48, Access::Read, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, None));
        assert_eq!(
            fsc_of(f.walk(&mem, 0x1000, 1 << 48, Access::Read, false, true)),
            Some(0b000100)
        );
        assert_eq!(
            f.describe(leaf, 0),
            "0x0060000000200f43 page [V T AP1 AF nG PXN UXN] attr 0 -> 0x200000"
        );
    }

    #[test]
    fn ap_table_limits_combine_with_the_leaf() {
        let f = fmt(4096, 39);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let leaf = f.make_leaf(0x40_0000, 0, Perm::RWX, true, true);
        put(&mem, &f, 0x1000, 0x1000, 0, leaf, &mut next);
        let root_pte = 0x1000;
        let table = mem.get(root_pte);
        let t = f
            .walk(&mem, 0x1000, 0x1000, Access::Exec, true, false)
            .unwrap();
        assert_eq!((t.perms, t.user), (Perm::RWX, true));
        // EL1 never executes a page EL0 may write.
        let r = f.walk(&mem, 0x1000, 0x1000, Access::Exec, false, false);
        assert_eq!(fsc_of(r), Some(0b001111));
        mem.set(root_pte, table | AP_TABLE_RO);
        let r = f.walk(&mem, 0x1000, 0x1000, Access::Write, false, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        mem.set(root_pte, table | AP_TABLE_NO_EL0);
        let r = f.walk(&mem, 0x1000, 0x1000, Access::Read, true, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        f.walk(&mem, 0x1000, 0x1000, Access::Write, false, false)
            .unwrap();
        mem.set(root_pte, table | UXN_TABLE);
        let r = f.walk(&mem, 0x1000, 0x1000, Access::Exec, true, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        mem.set(root_pte, table | PXN_TABLE);
        f.walk(&mem, 0x1000, 0x1000, Access::Exec, true, false)
            .unwrap();
    }

    #[test]
    fn hardware_af_and_dirty_by_compare_exchange() {
        let f = AArch64::new(16384, 48, 48, false, true, true, false).unwrap();
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x4000;
        let va = 0x7FFF_FFFF_C000;
        let leaf = f.make_leaf(0x8000, 0, Perm::R | Perm::W, false, true);
        assert_eq!(leaf & (AF | AP_RO | DBM), AP_RO | DBM);
        let pte_pa = put(&mem, &f, 0x0, va, 0, leaf, &mut next);
        let t = f.walk(&mem, 0, va, Access::Read, false, true).unwrap();
        assert_eq!(
            (t.memory_refs, t.dirty, t.perms),
            (4, false, Perm::R | Perm::W)
        );
        assert_eq!(mem.get(pte_pa), leaf | AF);
        let t = f.walk(&mem, 0, va, Access::Write, false, true).unwrap();
        assert!(t.dirty);
        assert_eq!(mem.get(pte_pa), (leaf | AF) & !AP_RO);
        // A racing unmap between read and CAS: the retry faults, nothing is written back.
        mem.set(pte_pa, leaf);
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, 0);
        });
        let r = f.walk(&mem, 0, va, Access::Write, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(0)));
        assert_eq!(mem.get(pte_pa), 0);
    }

    #[test]
    fn blocks_only_where_the_granule_allows_them() {
        let f = fmt(4096, 48);
        let mem = TestMem::new(64 * MIB);
        // A 4K level 0 block (bits[1:0] = 01 in the root): translation fault level 0.
        mem.set(0x1000, VALID | AF | 0x80_0000_0000);
        let r = f.walk(&mem, 0x1000, 0x10, Access::Read, false, false);
        assert_eq!(fsc_of(r), Some(0b000100));
        let f64k = fmt(65536, 48);
        let mut next = 0x2_0000;
        let block = f64k.make_leaf(0x2000_0000, 1, Perm::R, false, true);
        put(&mem, &f64k, 0x1_0000, 0x6000_1234, 1, block, &mut next);
        let t = f64k
            .walk(&mem, 0x1_0000, 0x6000_1234, Access::Read, false, false)
            .unwrap();
        assert_eq!(
            (t.pa, t.page_size, t.memory_refs),
            (0x2000_1234, 512 * MIB, 2)
        );
        // A 64K level 1 (root) block needs FEAT_LPA.
        mem.set(0x1_0000, VALID | AF);
        let r = f64k.walk(&mem, 0x1_0000, 0x10, Access::Read, false, false);
        assert_eq!(fsc_of(r), Some(0b000101));
    }

    #[test]
    fn upper_half_and_tbi_ranges() {
        let f = AArch64::new(4096, 39, 48, true, false, false, true).unwrap();
        assert_eq!(f.name(), "aarch64_va39_upper");
        assert!(f.is_canonical(0xFFFF_FF80_0000_0000));
        assert!(f.is_canonical(0x12FF_FF80_0000_0000), "tag ignored");
        assert!(!f.is_canonical(0xFFFF_FF00_0000_0000));
        assert!(!f.is_canonical(0x0000_0080_0000_0000));
        assert_eq!(f.canonicalize(0x40_0000_0000), 0xFFFF_FFC0_0000_0000);
        assert_eq!(f.index(0xFFFF_FFC0_0000_0000, 2), 256);
    }
}
