//! RISC-V Sv39, Sv48 and Sv57 paging (privileged spec, "Virtual-Address Translation Process").
//!
//! Levels are numbered as in the spec's algorithm: `i = LEVELS-1` is the
//! root, 0 the last. Only the leaf's R/W/X/U bits matter. A leaf above level
//! 0 whose low PPN fields are not zero is a misaligned superpage and faults.
//!
//! Bits 63:54 are reserved (no Svnapot, Svpbmt or Svrsw60t59b), as are D, A
//! and U in non-leaf PTEs; any of them set faults, as the spec's step 3 says.
//! A and D are updated by the walker (Svadu behaviour) unless `svade` is
//! set, in which case a clear A, or a clear D on a write, raises a fault.

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::x86::unaligned;
use crate::paging::{
    walk_until_done, Access, Fault, FaultCause, Format, LeafInfo, Perm, TableRights, Translation,
};

/// Valid.
pub const V: u64 = 1 << 0;
/// Readable.
pub const R: u64 = 1 << 1;
/// Writable.
pub const W: u64 = 1 << 2;
/// Executable.
pub const X: u64 = 1 << 3;
/// User.
pub const U: u64 = 1 << 4;
/// Global.
pub const G: u64 = 1 << 5;
/// Accessed.
pub const A: u64 = 1 << 6;
/// Dirty.
pub const D: u64 = 1 << 7;
const RSVD: u64 = !((1u64 << 54) - 1);
const NONLEAF_RSVD: u64 = RSVD | A | D | U;
const PPN_MASK: u64 = ((1u64 << 44) - 1) << 10;
const BIT_NAMES: [(u64, &str); 8] = [
    (V, "V"),
    (R, "R"),
    (W, "W"),
    (X, "X"),
    (U, "U"),
    (G, "G"),
    (A, "A"),
    (D, "D"),
];
const LEAF_SIZES: [(u8, u64); 5] = [
    (0, 1 << 12),
    (1, 1 << 21),
    (2, 1 << 30),
    (3, 1 << 39),
    (4, 1 << 48),
];

/// Sv39 (3 levels, 39-bit VA), Sv48 (4 levels, 48-bit VA) or Sv57 (5 levels, 57-bit VA).
///
/// `sum` is sstatus.SUM (supervisor may read/write U pages); `mxr` is
/// sstatus.MXR (loads from execute-only pages succeed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiscV {
    levels: u8,
    sum: bool,
    mxr: bool,
    svade: bool,
}

/// The rights of a PTE's X W R bits.
fn perms_of(pte: u64) -> Perm {
    let mut perms = Perm::NONE;
    if pte & R != 0 {
        perms = perms | Perm::R;
    }
    if pte & W != 0 {
        perms = perms | Perm::W;
    }
    if pte & X != 0 {
        perms = perms | Perm::X;
    }
    perms
}

fn perm_bits(perms: Perm) -> u64 {
    let mut bits = 0;
    if perms.contains(Perm::R) {
        bits |= R;
    }
    if perms.contains(Perm::W) {
        bits |= W;
    }
    if perms.contains(Perm::X) {
        bits |= X;
    }
    bits
}

impl RiscV {
    /// A validated format: `levels` 3 (Sv39), 4 (Sv48) or 5 (Sv57).
    pub fn new(levels: i64, sum: bool, mxr: bool, svade: bool) -> Result<RiscV> {
        if !(3..=5).contains(&levels) {
            return Err(Error::Config(format!(
                "RISC-V paging here is Sv39 (3 levels), Sv48 (4) or Sv57 (5), got {levels}"
            )));
        }
        Ok(RiscV {
            levels: levels as u8,
            sum,
            mxr,
            svade,
        })
    }

    /// sstatus.SUM.
    pub fn sum(&self) -> bool {
        self.sum
    }
    /// sstatus.MXR.
    pub fn mxr(&self) -> bool {
        self.mxr
    }
    /// Svade: a clear A (or D on a write) faults instead of being set.
    pub fn svade(&self) -> bool {
        self.svade
    }

    /// One pass of the walk; `Ok(None)` if the A/D compare-exchange lost a race.
    ///
    /// Inlined into the walk so the translation is built where it is returned.
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
        let fault = |cause, level: u8| {
            Err(Error::Fault(Fault {
                va,
                access,
                cause,
                level: Some(level),
                user,
                stage: None,
                fsc: None,
            }))
        };
        let mut a = root;
        let mut refs = 0u32;
        let mut global = false;
        let mut i = self.levels - 1;
        let (pte_pa, pte) = loop {
            let (pte_pa, overflow) = a.overflowing_add(((va >> (12 + 9 * i as u32)) & 0x1FF) * 8);
            let pte = match mem.load_u64(pte_pa) {
                Some(pte) if !overflow => pte,
                // Unaligned but inside memory: the read itself is refused.
                _ if !overflow
                    && pte_pa & 7 != 0
                    && mem.load_u64(pte_pa & !7).is_some()
                    && mem.load_u64((pte_pa & !7) + 8).is_some() =>
                {
                    return Err(unaligned(pte_pa));
                }
                // Outside memory: an access fault in hardware.
                _ => return fault(FaultCause::TableOutsideMemory, i),
            };
            refs += 1;
            // Step 3.
            if pte & V == 0 {
                return fault(FaultCause::NotPresent, i);
            }
            if (pte & W != 0 && pte & R == 0) || pte & RSVD != 0 {
                return fault(FaultCause::Reserved, i);
            }
            global |= pte & G != 0;
            // Step 4.
            if pte & (R | X) != 0 {
                break (pte_pa, pte);
            }
            if pte & NONLEAF_RSVD != 0 || i == 0 {
                return fault(FaultCause::Reserved, i);
            }
            a = (pte & PPN_MASK) << 2;
            i -= 1;
        };
        // Step 5: leaf permissions.
        let perms = perms_of(pte);
        if access != Access::Probe && !self.allows(perms, pte & U != 0, access, user) {
            return fault(FaultCause::Protection, i);
        }
        // Step 6: misaligned superpage.
        let size = 1u64 << (12 + 9 * i as u32);
        let ppn = (pte & PPN_MASK) >> 10;
        if ppn & ((size >> 12) - 1) != 0 {
            return fault(FaultCause::Misaligned, i);
        }
        // Step 7: accessed and dirty.
        let mut pte = pte;
        if pte & A == 0 || (access == Access::Write && pte & D == 0) {
            // A probe (used by prefetchers) sets A like any walk.
            if self.svade {
                return fault(FaultCause::Protection, i);
            }
            if update_ad {
                let new = pte | A | if access == Access::Write { D } else { 0 };
                if !mem.cas_u64(pte_pa, pte, new)? {
                    return Ok(None);
                }
                pte = new;
            }
        }
        Ok(Some(Translation {
            va,
            pa: (ppn << 12) | (va & (size - 1)),
            page_size: size,
            perms,
            user: pte & U != 0,
            global,
            dirty: pte & D != 0,
            memory_refs: refs,
            level: i,
            pte_pa,
        }))
    }
}

impl Format for RiscV {
    fn name(&self) -> &str {
        match self.levels {
            3 => "sv39",
            4 => "sv48",
            _ => "sv57",
        }
    }
    fn levels(&self) -> u8 {
        self.levels
    }
    fn va_bits(&self) -> u8 {
        12 + 9 * self.levels
    }
    fn pa_bits(&self) -> u8 {
        56
    }
    fn leaf_sizes(&self) -> &[(u8, u64)] {
        &LEAF_SIZES[..self.levels as usize]
    }

    fn check_perms(&self, perm: Perm) -> Option<String> {
        if perm == Perm::NONE {
            return Some("a RISC-V leaf needs at least one of r, w, x".into());
        }
        if perm.contains(Perm::W) && !perm.contains(Perm::R) {
            return Some("RISC-V reserves writable pages that are not readable (W=1, R=0)".into());
        }
        None
    }

    fn is_valid(&self, pte: u64) -> bool {
        pte & V != 0
    }
    fn is_leaf(&self, pte: u64, _level: u8) -> bool {
        pte & V != 0 && pte & (R | X) != 0
    }
    fn table_pa(&self, pte: u64) -> u64 {
        (pte & PPN_MASK) << 2
    }
    fn make_table(&self, table_pa: u64, _level: u8) -> u64 {
        (table_pa >> 2) | V
    }
    fn make_leaf(&self, page_pa: u64, _level: u8, perms: Perm, user: bool, global: bool) -> u64 {
        let mut pte = (page_pa >> 2) | V | perm_bits(perms);
        if user {
            pte |= U;
        }
        if global {
            pte |= G;
        }
        pte
    }
    fn decode_leaf(&self, pte: u64, _level: u8) -> LeafInfo {
        LeafInfo {
            page_pa: (pte & PPN_MASK) << 2,
            perms: perms_of(pte),
            user: pte & U != 0,
            global: pte & G != 0,
            accessed: pte & A != 0,
            dirty: pte & D != 0,
        }
    }
    fn set_perms(&self, pte: u64, _level: u8, perms: Perm) -> u64 {
        (pte & !(R | W | X)) | perm_bits(perms)
    }
    fn table_rights(&self, pte: u64) -> TableRights {
        TableRights {
            perms: Perm::RWX,
            user: true,
            global: pte & G != 0,
        }
    }
    fn describe(&self, pte: u64, _level: u8) -> String {
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
        format!("{pte:#018x} [{bits}] -> {:#x}", self.table_pa(pte))
    }
    fn allows(&self, perms: Perm, page_user: bool, access: Access, user: bool) -> bool {
        let ok = match access {
            Access::Exec => perms.contains(Perm::X),
            Access::Read => perms.contains(Perm::R) || (self.mxr && perms.contains(Perm::X)),
            Access::Write => perms.contains(Perm::W),
            // A probe checks no rights.
            Access::Probe => return true,
        };
        if user {
            return ok && page_user;
        }
        if page_user {
            return ok && access != Access::Exec && self.sum;
        }
        ok
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
        walk_until_done(
            mem,
            self.is_canonical(va),
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
    const GIB: u64 = 1 << 30;

    #[test]
    fn constructor_and_geometry() {
        let err = RiscV::new(6, false, false, false).unwrap_err();
        assert_eq!(
            err,
            Error::Config(
                "RISC-V paging here is Sv39 (3 levels), Sv48 (4) or Sv57 (5), got 6".into()
            )
        );
        let names: Vec<(String, u8, usize)> = (3..=5)
            .map(|l| {
                let f = RiscV::new(l, false, false, false).unwrap();
                (f.name().to_string(), f.va_bits(), f.leaf_sizes().len())
            })
            .collect();
        assert_eq!(
            names,
            [
                ("sv39".into(), 39, 3),
                ("sv48".into(), 48, 4),
                ("sv57".into(), 57, 5)
            ]
        );
    }

    #[test]
    fn sv39_leaf_bit_exact() {
        let fmt = RiscV::new(3, false, false, false).unwrap();
        let mem = TestMem::new(4 * GIB);
        let va = 0x12_3456_7000;
        let leaf = fmt.make_leaf(0x8020_0000, 0, Perm::RWX, true, false);
        assert_eq!(leaf, 0x2008_001F);
        let mut next = 0x2000;
        let pte_pa = put(&mem, &fmt, 0x1000, va, 0, leaf, &mut next);
        assert_eq!(mem.get(0x1000 + fmt.index(va, 2) * 8) & 0x3FF, 1);
        let t = fmt
            .walk(&mem, 0x1000, va + 8, Access::Read, true, true)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs, t.level), (0x8020_0008, 3, 0));
        assert_eq!(mem.get(pte_pa), 0x2008_005F);
        fmt.walk(&mem, 0x1000, va, Access::Write, true, true)
            .unwrap();
        assert_eq!(mem.get(pte_pa), 0x2008_00DF);
        assert_eq!(
            fmt.describe(0x2008_00DF, 0),
            "0x00000000200800df [V R W X U A D] -> 0x80200000"
        );
    }

    #[test]
    fn modes_sum_mxr_and_reserved_encodings() {
        let mem = TestMem::new(64 * MIB);
        let plain = RiscV::new(3, false, false, false).unwrap();
        let mut next = 0x2000;
        let pte_pa = put(
            &mem,
            &plain,
            0x1000,
            0x1000,
            0,
            plain.make_leaf(0x8000, 0, Perm::R | Perm::W, true, false),
            &mut next,
        );
        let r = plain.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        let sum = RiscV::new(3, true, false, false).unwrap();
        assert_eq!(
            sum.walk(&mem, 0x1000, 0x1000, Access::Read, false, false)
                .unwrap()
                .pa,
            0x8000
        );
        let xonly = plain.make_leaf(0x8000, 0, Perm::X, false, false);
        mem.set(pte_pa, xonly);
        let r = plain.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        let mxr = RiscV::new(3, false, true, false).unwrap();
        mxr.walk(&mem, 0x1000, 0x1000, Access::Read, false, false)
            .unwrap();
        mem.set(pte_pa, (xonly & !0b1110) | W);
        let r = plain.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Reserved, Some(0)));
        mem.set(pte_pa, xonly | 1 << 60);
        let r = plain.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r).0, FaultCause::Reserved);
        // A pointer at the last level has no table below it.
        mem.set(pte_pa, V | (0x8000 >> 2));
        let r = plain.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Reserved, Some(0)));
        let r = plain.walk(&mem, 0x1000, 1 << 40, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
        // A root past the end of memory: the table is missing, not malformed.
        let r = plain.walk(&mem, 1 << 40, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::TableOutsideMemory, Some(2)));
    }

    #[test]
    fn misaligned_superpage_and_svade() {
        let fmt = RiscV::new(3, false, false, false).unwrap();
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let leaf = fmt.make_leaf(0x40_0000, 1, Perm::R | Perm::W, false, false);
        let pte_pa = put(&mem, &fmt, 0x1000, 0x20_0000, 1, leaf, &mut next);
        mem.set(pte_pa, leaf | 1 << 10);
        let r = fmt.walk(&mem, 0x1000, 0x20_0000, Access::Read, false, true);
        assert_eq!(fault_of(r), (FaultCause::Misaligned, Some(1)));
        mem.set(pte_pa, leaf);
        let svade = RiscV::new(3, false, false, true).unwrap();
        let r = svade.walk(&mem, 0x1000, 0x20_0000, Access::Probe, false, true);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(1)));
        mem.set(pte_pa, leaf | A);
        svade
            .walk(&mem, 0x1000, 0x20_0000, Access::Read, false, true)
            .unwrap();
        let r = svade.walk(&mem, 0x1000, 0x20_0000, Access::Write, false, true);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        assert_eq!(mem.get(pte_pa), leaf | A, "svade never writes");
    }

    #[test]
    fn sv57_walks_five_levels_with_a_global_pointer() {
        let fmt = RiscV::new(5, false, false, false).unwrap();
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let va = fmt.canonicalize(1 << 56);
        assert_eq!(va, 0xFF00_0000_0000_0000);
        let pte_pa = put(
            &mem,
            &fmt,
            0x1000,
            va,
            0,
            fmt.make_leaf(0x9000, 0, Perm::R, false, false),
            &mut next,
        );
        let root_pte = 0x1000 + fmt.index(va, 4) * 8;
        mem.set(root_pte, mem.get(root_pte) | G);
        let t = fmt
            .walk(&mem, 0x1000, va + 5, Access::Read, false, true)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs, t.global), (0x9005, 5, true));
        assert_eq!(mem.get(pte_pa) & A, A);
        // A racing unmap between read and CAS: the retry faults, nothing is written back.
        mem.set(
            pte_pa,
            fmt.make_leaf(0x9000, 0, Perm::R | Perm::W, false, false),
        );
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, 0);
        });
        let r = fmt.walk(&mem, 0x1000, va, Access::Write, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(0)));
        assert_eq!(mem.get(pte_pa), 0);
    }
}
