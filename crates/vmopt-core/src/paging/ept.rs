//! Intel EPT, the host (stage-2) tables of VMX (Intel SDM Vol. 3C, "EPT").
//!
//! Entries translate guest-physical addresses (GPAs) to host-physical ones
//! with 4 ("ept", 48-bit GPAs) or 5 ("ept_5level", 57-bit GPAs) levels.
//! Bits: R/W/X in 2:0, the memory type in 5:3 and ignore-PAT in 6 on leaves,
//! a large page in 7 (PDE: 2 MiB, PDPTE: 1 GiB), accessed in 8 and dirty in 9
//! when EPTP bit 6 enables them. Rights AND over the levels.
//!
//! Two kinds of fault, as the processor distinguishes them:
//! - a violation: an entry with bits 2:0 clear (not present), or rights that
//!   do not allow the access (`NotPresent`, `Protection`);
//! - a misconfiguration: a present entry the processor refuses to use, W
//!   without R (010 or 110 in bits 2:0), a leaf memory type 2, 3 or 7, or a
//!   reserved bit set (above MAXPHYADDR; 7:3 in non-leaf entries; the low
//!   address bits of a large page) (`Misconfigured`).
//!
//! Execute-only entries (100) are allowed, as on every CPU that reports the
//! capability. Mode-based execute control and #VE suppression (bits 10, 63)
//! are not modelled: bit 10 is ignored and bit 63 is ignored. GPAs are not
//! sign-extended: a GPA at or above `2^va_bits` faults as non-canonical.

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::x86::unaligned;
use crate::paging::{
    walk_until_done, Access, Fault, FaultCause, Format, LeafInfo, Perm, TableRights, Translation,
};

/// Read.
pub const R: u64 = 1 << 0;
/// Write.
pub const W: u64 = 1 << 1;
/// Execute.
pub const X: u64 = 1 << 2;
/// The memory-type field of a leaf (bits 5:3).
pub const MEMTYPE: u64 = 7 << 3;
/// Write-back, the memory type a VMM gives RAM.
pub const MEMTYPE_WB: u64 = 6 << 3;
/// Ignore the guest's PAT (leaves).
pub const IPAT: u64 = 1 << 6;
/// A large page (PDE, PDPTE).
pub const PS: u64 = 1 << 7;
/// Accessed (with EPTP bit 6).
pub const A: u64 = 1 << 8;
/// Dirty (leaves, with EPTP bit 6).
pub const D: u64 = 1 << 9;

const LEAF_SIZES: [(u8, u64); 3] = [(0, 4096), (1, 2 << 20), (2, 1 << 30)];

/// The EPT format: 4 or 5 levels, MAXPHYADDR, and whether A/D flags are on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ept {
    levels: u8,
    maxphyaddr: u8,
    ad: bool,
    addr_mask: u64,
    /// Bits 51:MAXPHYADDR, reserved in every present entry.
    high: u64,
}

/// EPT rights bits as a [`Perm`] (EPT R=bit 0, W=bit 1, X=bit 2; Perm R=4, W=2, X=1).
fn perm_of(pte: u64) -> Perm {
    Perm((((pte & R) << 2) | (pte & W) | ((pte & X) >> 2)) as u8)
}

/// A [`Perm`] as EPT rights bits.
fn bits_of(perms: Perm) -> u64 {
    let p = perms.0 as u64;
    ((p >> 2) & 1) | (p & 2) | ((p & 1) << 2)
}

impl Ept {
    /// A validated format: `levels` 4 or 5, `maxphyaddr` in 36..=52, `ad` = EPTP bit 6.
    pub fn new(levels: i64, maxphyaddr: i64, ad: bool) -> Result<Ept> {
        if levels != 4 && levels != 5 {
            return Err(Error::Config(format!(
                "EPT has 4 or 5 levels, got {levels}"
            )));
        }
        if !(36..=52).contains(&maxphyaddr) {
            return Err(Error::Config(format!(
                "maxphyaddr must be in [36, 52], got {maxphyaddr}"
            )));
        }
        let maxphyaddr = maxphyaddr as u8;
        Ok(Ept {
            levels: levels as u8,
            maxphyaddr,
            ad,
            addr_mask: ((1u64 << maxphyaddr) - 1) & !0xFFF,
            high: ((1u64 << 52) - 1) ^ ((1u64 << maxphyaddr) - 1),
        })
    }

    /// EPTP bit 6: the walk sets accessed and dirty flags.
    pub fn ad(&self) -> bool {
        self.ad
    }

    /// Is the present entry `pte` at `level` a leaf?
    fn leaf_at(&self, pte: u64, level: u8) -> bool {
        level == 0 || ((level == 1 || level == 2) && pte & PS != 0)
    }

    /// Why the present entry `pte` at `level` is a misconfiguration, if it is one.
    pub fn misconfigured(&self, pte: u64, level: u8) -> bool {
        if pte & (R | W) == W {
            return true;
        }
        if pte & self.high != 0 {
            return true;
        }
        if !self.leaf_at(pte, level) {
            // Bits 7:3 of a non-leaf entry are reserved (bit 7 is the page
            // size bit below the PML4E, reserved above).
            return pte & (0x1F << 3) != 0;
        }
        let mt = (pte & MEMTYPE) >> 3;
        if matches!(mt, 2 | 3 | 7) {
            return true;
        }
        // A large page's address bits below its size are reserved.
        match level {
            1 => pte & (((1u64 << 21) - 1) & !0xFFF) != 0,
            2 => pte & (((1u64 << 30) - 1) & !0xFFF) != 0,
            _ => false,
        }
    }

    #[inline(always)]
    fn walk_once(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        gpa: u64,
        access: Access,
        user: bool,
        update_ad: bool,
    ) -> Result<Option<Translation>> {
        let fault = |cause, level: u8| {
            Err(Error::Fault(Fault {
                va: gpa,
                access,
                cause,
                level: Some(level),
                user,
                stage: None,
                fsc: None,
            }))
        };
        let update_ad = update_ad && self.ad;
        let mut table = root;
        let mut rights = R | W | X;
        let mut refs = 0u32;
        let mut level = self.levels - 1;
        let (pte_pa, pte) = loop {
            let (pte_pa, overflow) = table.overflowing_add(self.index(gpa, level) * 8);
            if pte_pa & 7 != 0 {
                return Err(unaligned(pte_pa));
            }
            let Some(pte) = mem.load_u64(pte_pa).filter(|_| !overflow) else {
                return fault(FaultCause::TableOutsideMemory, level);
            };
            refs += 1;
            if pte & (R | W | X) == 0 {
                return fault(FaultCause::NotPresent, level);
            }
            if self.misconfigured(pte, level) {
                return fault(FaultCause::Misconfigured, level);
            }
            rights &= pte;
            if self.leaf_at(pte, level) {
                break (pte_pa, pte);
            }
            if update_ad && pte & A == 0 && !mem.cas_u64(pte_pa, pte, pte | A)? {
                return Ok(None);
            }
            table = pte & self.addr_mask;
            level -= 1;
        };
        let perms = perm_of(rights);
        if access != Access::Probe && !self.allows(perms, true, access, user) {
            return fault(FaultCause::Protection, level);
        }
        let mut leaf = pte;
        if update_ad {
            let mut new = leaf | A;
            if access == Access::Write {
                new |= D;
            }
            if new != leaf {
                if !mem.cas_u64(pte_pa, leaf, new)? {
                    return Ok(None);
                }
                leaf = new;
            }
        }
        let size = self.level_span(level);
        Ok(Some(Translation {
            va: gpa,
            pa: (leaf & self.addr_mask & !(size - 1)) | (gpa & (size - 1)),
            page_size: size,
            perms,
            user: true,
            global: false,
            // Without EPTP bit 6 there is no dirty flag to set: a write needs no
            // update, so a cached translation counts as dirty (no re-walk).
            dirty: !self.ad || leaf & D != 0,
            memory_refs: refs,
            level,
            pte_pa,
        }))
    }
}

impl Format for Ept {
    fn name(&self) -> &str {
        if self.levels == 4 {
            "ept"
        } else {
            "ept_5level"
        }
    }
    fn levels(&self) -> u8 {
        self.levels
    }
    fn va_bits(&self) -> u8 {
        if self.levels == 4 {
            48
        } else {
            57
        }
    }
    fn pa_bits(&self) -> u8 {
        self.maxphyaddr
    }
    fn leaf_sizes(&self) -> &[(u8, u64)] {
        &LEAF_SIZES
    }
    /// GPAs are zero-extended: canonical means below `2^va_bits`.
    fn is_canonical(&self, va: u64) -> bool {
        va >> self.va_bits() == 0
    }
    fn canonicalize(&self, va: u64) -> u64 {
        va & ((1u64 << self.va_bits()) - 1)
    }
    fn nested_table_access(&self) -> Access {
        // SDM: with EPT A/D enabled, guest paging-structure accesses are
        // treated as writes (they need W and set D).
        if self.ad {
            Access::Write
        } else {
            Access::Read
        }
    }
    fn check_perms(&self, perm: Perm) -> Option<String> {
        if perm.0 & 7 == 0 {
            return Some("an EPT page needs at least one of 'r', 'w', 'x'".into());
        }
        if perm.contains(Perm::W) && !perm.contains(Perm::R) {
            return Some(
                "an EPT page that is writable must be readable (W without R is a misconfiguration)"
                    .into(),
            );
        }
        None
    }
    fn is_valid(&self, pte: u64) -> bool {
        pte & (R | W | X) != 0
    }
    fn is_leaf(&self, pte: u64, level: u8) -> bool {
        self.is_valid(pte) && self.leaf_at(pte, level)
    }
    fn table_pa(&self, pte: u64) -> u64 {
        pte & self.addr_mask
    }
    fn make_table(&self, table_pa: u64, _level: u8) -> u64 {
        // As KVM does: upper levels grant everything, the leaf decides.
        table_pa | R | W | X
    }
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, _user: bool, _global: bool) -> u64 {
        let mut pte = page_pa | bits_of(perms) | MEMTYPE_WB;
        if level != 0 {
            pte |= PS;
        }
        pte
    }
    fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo {
        let size = self.leaf_size(level).unwrap_or(4096);
        LeafInfo {
            page_pa: pte & self.addr_mask & !(size - 1),
            perms: perm_of(pte),
            user: true,
            global: false,
            accessed: pte & A != 0,
            dirty: pte & D != 0,
        }
    }
    fn set_perms(&self, pte: u64, _level: u8, perms: Perm) -> u64 {
        (pte & !(R | W | X)) | bits_of(perms)
    }
    fn table_rights(&self, pte: u64) -> TableRights {
        TableRights {
            perms: perm_of(pte),
            user: true,
            global: false,
        }
    }
    fn describe(&self, pte: u64, level: u8) -> String {
        let mut names: Vec<String> = Vec::new();
        for (bit, name) in [(R, "R"), (W, "W"), (X, "X")] {
            if pte & bit != 0 {
                names.push(name.into());
            }
        }
        let leaf = self.is_leaf(pte, level);
        if leaf {
            names.push(format!("MT={}", (pte & MEMTYPE) >> 3));
            if pte & IPAT != 0 {
                names.push("IPAT".into());
            }
        }
        if level != 0 && pte & PS != 0 {
            names.push("PS".into());
        }
        if pte & A != 0 {
            names.push("A".into());
        }
        if leaf && pte & D != 0 {
            names.push("D".into());
        }
        let addr = if leaf {
            self.decode_leaf(pte, level).page_pa
        } else {
            self.table_pa(pte)
        };
        let bits = if names.is_empty() {
            "-".to_string()
        } else {
            names.join(" ")
        };
        format!("{pte:#018x} [{bits}] -> {addr:#x}")
    }
    /// EPT has no user/supervisor distinction (mode-based execute control is not modelled).
    fn allows(&self, perms: Perm, _page_user: bool, access: Access, _user: bool) -> bool {
        match access {
            Access::Read => perms.contains(Perm::R),
            Access::Write => perms.contains(Perm::W),
            Access::Exec => perms.contains(Perm::X),
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

    fn ept(levels: i64, ad: bool) -> Ept {
        Ept::new(levels, 46, ad).unwrap()
    }

    #[test]
    fn constructor_messages() {
        assert_eq!(
            Ept::new(3, 46, false).unwrap_err(),
            Error::Config("EPT has 4 or 5 levels, got 3".into())
        );
        assert_eq!(
            Ept::new(4, 35, false).unwrap_err(),
            Error::Config("maxphyaddr must be in [36, 52], got 35".into())
        );
    }

    #[test]
    fn hand_encoded_entries_match_the_sdm_layout() {
        let f = ept(4, true);
        // A 4 KiB read/write page, write-back: bits 2:0 = 011, 5:3 = 110.
        assert_eq!(
            f.make_leaf(0x1234_5000, 0, Perm::R | Perm::W, false, false),
            0x1234_5033
        );
        // Execute-only 2 MiB page: 100 in 2:0, WB, bit 7.
        assert_eq!(f.make_leaf(0x40_0000, 1, Perm::X, false, false), 0x40_00B4);
        assert_eq!(f.make_table(0x3000, 3), 0x3007);
        assert_eq!(
            f.describe(0x1234_5373, 0),
            "0x0000000012345373 [R W MT=6 IPAT A D] -> 0x12345000"
        );
        assert!(f.check_perms(Perm::W).unwrap().contains("misconfiguration"));
        assert!(f.check_perms(Perm::X).is_none());
    }

    #[test]
    fn misconfiguration_and_violation_are_different_faults() {
        let f = ept(4, false);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let gpa = 0x1_2345_6000;
        let good = 0x0008_0000 | R | W | MEMTYPE_WB;
        let pte_pa = put(&mem, &f, 0x1000, gpa, 0, good, &mut next);
        let t = f
            .walk(&mem, 0x1000, gpa + 0x10, Access::Write, false, true)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs, t.level), (0x0008_0010, 4, 0));
        assert_eq!(mem.get(pte_pa), good, "no A/D without EPTP bit 6");
        let cases: [(u64, FaultCause); 9] = [
            (0x0008_0000 | MEMTYPE_WB, FaultCause::NotPresent), // 000: not present
            (0x0008_0000 | W | MEMTYPE_WB, FaultCause::Misconfigured), // W-only
            (0x0008_0000 | W | X | MEMTYPE_WB, FaultCause::Misconfigured), // WX-only
            (0x0008_0000 | R | W | (2 << 3), FaultCause::Misconfigured), // memory type 2
            (0x0008_0000 | R | W | (3 << 3), FaultCause::Misconfigured), // memory type 3
            (0x0008_0000 | R | W | (7 << 3), FaultCause::Misconfigured), // memory type 7
            (0x0008_0000 | R | W | (1 << 46), FaultCause::Misconfigured), // above MAXPHYADDR
            (0x0008_0000 | R | X | MEMTYPE_WB, FaultCause::Protection), // no W for a write
            (0x0008_0000 | X | MEMTYPE_WB, FaultCause::Protection), // execute-only, write
        ];
        for (pte, cause) in cases {
            mem.set(pte_pa, pte);
            let r = f.walk(&mem, 0x1000, gpa, Access::Write, false, false);
            assert_eq!(fault_of(r), (cause, Some(0)), "pte {pte:#x}");
        }
        // Memory types 0 (UC), 1 (WC), 4 (WT), 5 (WP) and 6 (WB) are fine.
        for mt in [0u64, 1, 4, 5, 6] {
            mem.set(pte_pa, 0x0008_0000 | R | (mt << 3));
            f.walk(&mem, 0x1000, gpa, Access::Read, false, false)
                .unwrap();
        }
        // Bits 7:3 of a non-leaf entry are reserved; rights AND down the walk.
        mem.set(pte_pa, good);
        let pml4e = 0x1000 + f.index(gpa, 3) * 8;
        let orig = mem.get(pml4e);
        mem.set(pml4e, orig | (1 << 4));
        let r = f.walk(&mem, 0x1000, gpa, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Misconfigured, Some(3)));
        mem.set(pml4e, orig | PS);
        let r = f.walk(&mem, 0x1000, gpa, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Misconfigured, Some(3)));
        mem.set(pml4e, orig & !W);
        let r = f.walk(&mem, 0x1000, gpa, Access::Write, false, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        let r = f.walk(&mem, 0x1000, gpa, Access::Exec, false, false);
        assert_eq!(
            fault_of(r),
            (FaultCause::Protection, Some(0)),
            "leaf lacks X"
        );
        // GPAs are not sign-extended.
        let r = f.walk(&mem, 0x1000, 1 << 48, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
    }

    #[test]
    fn accessed_and_dirty_only_with_eptp_bit_6() {
        let f = ept(4, true);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let gpa = 0x20_0000;
        let leaf = f.make_leaf(0x60_0000, 1, Perm::R | Perm::W, false, false);
        assert_eq!(leaf, 0x60_00B3);
        let pde = put(&mem, &f, 0x1000, gpa, 1, leaf, &mut next);
        let t = f
            .walk(&mem, 0x1000, gpa + 0x1234, Access::Read, false, true)
            .unwrap();
        assert_eq!((t.pa, t.page_size, t.memory_refs), (0x60_1234, 2 * MIB, 3));
        assert_eq!(mem.get(pde), leaf | A);
        assert_eq!(mem.get(0x1000 + f.index(gpa, 3) * 8) & A, A);
        let t = f
            .walk(&mem, 0x1000, gpa, Access::Write, false, true)
            .unwrap();
        assert!(t.dirty);
        assert_eq!(mem.get(pde), leaf | A | D);
        // A 2 MiB page with address bit 12 set: reserved.
        mem.set(pde, leaf | 0x1000);
        let r = f.walk(&mem, 0x1000, gpa, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Misconfigured, Some(1)));
        assert_eq!(f.nested_table_access(), Access::Write);
        assert_eq!(ept(5, false).nested_table_access(), Access::Read);
        // Without A/D nothing is tracked: a read's translation is already dirty.
        let plain = ept(4, false);
        mem.set(pde, leaf);
        let t = plain
            .walk(&mem, 0x1000, gpa, Access::Read, false, true)
            .unwrap();
        assert!(t.dirty && mem.get(pde) == leaf);
    }

    #[test]
    fn five_levels_take_57_bit_gpas() {
        let f = ept(5, false);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let gpa = (1u64 << 56) | 0x7000;
        put(
            &mem,
            &f,
            0x1000,
            gpa,
            0,
            f.make_leaf(0x9000, 0, Perm::R, false, false),
            &mut next,
        );
        let t = f
            .walk(&mem, 0x1000, gpa, Access::Read, false, false)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs, f.name()), (0x9000, 5, "ept_5level"));
        let r = f.walk(&mem, 0x1000, 1 << 57, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
    }
}
