//! x86-64 4-level and 5-level paging (Intel SDM Vol. 3A, 4.5).
//!
//! Levels are numbered from the leaf: 0 = PT, 1 = PD, 2 = PDPT, 3 = PML4,
//! 4 = PML5. Rights combine over the walk (SDM 4.6): a page is writable only
//! if R/W is set at every level, user-accessible only if U/S is set at every
//! level, and not executable if XD is set at any level.
//!
//! Defaults model a modern OS: EFER.NXE=1 (XD honoured) and CR0.WP=1
//! (supervisor writes to read-only pages fault). SMEP and SMAP are options.

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::{
    walk_until_done, Access, Fault, FaultCause, Format, LeafInfo, Perm, TableRights, Translation,
};

/// Present.
pub const P: u64 = 1 << 0;
/// Read/write.
pub const RW: u64 = 1 << 1;
/// User/supervisor.
pub const US: u64 = 1 << 2;
/// Page-level write-through.
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty.
pub const D: u64 = 1 << 6;
/// Page size (a large leaf in a PDE/PDPTE; PAT in a PTE).
pub const PS: u64 = 1 << 7;
/// Global.
pub const G: u64 = 1 << 8;
/// Execute-disable.
pub const XD: u64 = 1 << 63;

const BIT_NAMES: [(u64, &str); 10] = [
    (P, "P"),
    (RW, "RW"),
    (US, "US"),
    (PWT, "PWT"),
    (PCD, "PCD"),
    (A, "A"),
    (D, "D"),
    (PS, "PS"),
    (G, "G"),
    (XD, "XD"),
];

/// The error of a PTE read at an unaligned address (only a bad root makes one).
pub(crate) fn unaligned(pa: u64) -> Error {
    Error::Address(format!("64-bit access at {pa:#x} is not 8-byte aligned"))
}

const LEAF_SIZES: [(u8, u64); 3] = [(0, 4096), (1, 2 << 20), (2, 1 << 30)];

/// x86-64 paging with 4 (48-bit VA) or 5 (57-bit VA) levels.
///
/// `maxphyaddr` is CPUID's MAXPHYADDR: address bits above it in a PTE are
/// reserved and fault. 4 KiB, 2 MiB and 1 GiB pages are supported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X86_64 {
    levels: u8,
    maxphyaddr: u8,
    nxe: bool,
    wp: bool,
    smep: bool,
    smap: bool,
    addr_mask: u64,
    /// Reserved bits of a present non-leaf (or 4 KiB leaf) entry, per level.
    rsvd_table: [u64; 5],
    /// Reserved bits of a 2 MiB (index 1) or 1 GiB (index 2) leaf.
    rsvd_large: [u64; 3],
}

impl X86_64 {
    /// A validated format: `levels` 4 or 5, `maxphyaddr` in 36..=52.
    pub fn new(
        levels: i64,
        maxphyaddr: i64,
        nxe: bool,
        wp: bool,
        smep: bool,
        smap: bool,
    ) -> Result<X86_64> {
        if levels != 4 && levels != 5 {
            return Err(Error::Config(format!(
                "x86-64 paging has 4 or 5 levels, got {levels}"
            )));
        }
        if !(36..=52).contains(&maxphyaddr) {
            return Err(Error::Config(format!(
                "maxphyaddr must be in [36, 52], got {maxphyaddr}"
            )));
        }
        let (levels, maxphyaddr) = (levels as u8, maxphyaddr as u8);
        let addr_mask = ((1u64 << maxphyaddr) - 1) & !0xFFF;
        // Reserved bits of a present entry, per level (SDM tables 4-15..4-20).
        let mut high = ((1u64 << 52) - 1) ^ ((1u64 << maxphyaddr) - 1);
        if !nxe {
            high |= XD;
        }
        let mut rsvd_table = [0u64; 5];
        for r in rsvd_table.iter_mut().take(levels as usize) {
            *r = high;
        }
        rsvd_table[levels as usize - 1] |= PS; // PML4E/PML5E: PS must be 0
        if levels == 5 {
            rsvd_table[3] |= PS;
        }
        let rsvd_large = [
            0,
            high | (((1u64 << 21) - 1) & !0x1FFF),
            high | (((1u64 << 30) - 1) & !0x1FFF),
        ];
        Ok(X86_64 {
            levels,
            maxphyaddr,
            nxe,
            wp,
            smep,
            smap,
            addr_mask,
            rsvd_table,
            rsvd_large,
        })
    }

    /// EFER.NXE: XD is honoured (else reserved).
    pub fn nxe(&self) -> bool {
        self.nxe
    }
    /// CR0.WP: supervisor writes to read-only pages fault.
    pub fn wp(&self) -> bool {
        self.wp
    }
    /// CR4.SMEP: supervisor fetches from user pages fault.
    pub fn smep(&self) -> bool {
        self.smep
    }
    /// CR4.SMAP: supervisor data accesses to user pages fault.
    pub fn smap(&self) -> bool {
        self.smap
    }
    /// Bits of a PTE that hold a table or 4 KiB frame address.
    pub fn addr_mask(&self) -> u64 {
        self.addr_mask
    }
    /// Reserved bits of a present table entry (or 4 KiB PTE) at `level`.
    pub fn reserved_table(&self, level: u8) -> u64 {
        self.rsvd_table[level as usize]
    }
    /// Reserved bits of a large leaf at `level` (1 = 2 MiB, 2 = 1 GiB).
    pub fn reserved_large(&self, level: u8) -> u64 {
        self.rsvd_large[level as usize]
    }

    fn rights(&self, pte: u64) -> Perm {
        let mut perms = Perm::R;
        if pte & RW != 0 {
            perms = perms | Perm::W;
        }
        if !(self.nxe && pte & XD != 0) {
            perms = perms | Perm::X;
        }
        perms
    }

    /// One pass of the walk; `Ok(None)` if an A/D compare-exchange lost a race.
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
        let mut table = root;
        let (mut writable, mut usermode, mut nx) = (true, true, false);
        let mut refs = 0u32;
        let mut level = self.levels - 1;
        let (pte_pa, pte) = loop {
            let (pte_pa, overflow) =
                table.overflowing_add(((va >> (12 + 9 * level as u32)) & 0x1FF) * 8);
            if pte_pa & 7 != 0 {
                return Err(unaligned(pte_pa));
            }
            let Some(pte) = mem.load_u64(pte_pa).filter(|_| !overflow) else {
                // A table outside memory: real buses return garbage; fault instead.
                return fault(FaultCause::TableOutsideMemory, level);
            };
            refs += 1;
            if pte & P == 0 {
                return fault(FaultCause::NotPresent, level);
            }
            let leaf = if level != 0 && pte & PS != 0 && level < 3 {
                if pte & self.rsvd_large[level as usize] != 0 {
                    return fault(FaultCause::Reserved, level);
                }
                true
            } else {
                if pte & self.rsvd_table[level as usize] != 0 {
                    return fault(FaultCause::Reserved, level);
                }
                level == 0
            };
            writable &= pte & RW != 0;
            usermode &= pte & US != 0;
            nx |= pte & XD != 0;
            if leaf {
                break (pte_pa, pte);
            }
            // A table entry is "used" once the walk passes it: its A bit is set
            // even if the walk later faults (as QEMU's walker does).
            if update_ad && pte & A == 0 && !mem.cas_u64(pte_pa, pte, pte | A)? {
                return Ok(None);
            }
            table = pte & self.addr_mask;
            level -= 1;
        };
        let size = 1u64 << (12 + 9 * level as u32);
        let nx = nx && self.nxe;
        let perms = match (writable, nx) {
            (true, false) => Perm::RWX,
            (true, true) => Perm::R | Perm::W,
            (false, false) => Perm::R | Perm::X,
            (false, true) => Perm::R,
        };
        if access != Access::Probe && !self.allows(perms, usermode, access, user) {
            return fault(FaultCause::Protection, level);
        }
        let mut leaf_pte = pte;
        if update_ad {
            let mut new = leaf_pte | A;
            if access == Access::Write {
                new |= D;
            }
            if new != leaf_pte {
                if !mem.cas_u64(pte_pa, leaf_pte, new)? {
                    return Ok(None);
                }
                leaf_pte = new;
            }
        }
        let mask = self.addr_mask & !(size - 1);
        Ok(Some(Translation {
            va,
            pa: (leaf_pte & mask) | (va & (size - 1)),
            page_size: size,
            perms,
            user: usermode,
            global: leaf_pte & G != 0,
            dirty: leaf_pte & D != 0,
            memory_refs: refs,
            level,
            pte_pa,
        }))
    }
}

impl Format for X86_64 {
    fn name(&self) -> &str {
        if self.levels == 4 {
            "x86_64"
        } else {
            "x86_64_5level"
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

    fn check_perms(&self, perm: Perm) -> Option<String> {
        if !perm.contains(Perm::R) {
            return Some("x86-64 pages are always readable; perms must include 'r'".into());
        }
        if !self.nxe && !perm.contains(Perm::X) {
            return Some("with EFER.NXE=0 every page is executable; perms must include 'x'".into());
        }
        None
    }

    fn is_valid(&self, pte: u64) -> bool {
        pte & P != 0
    }
    fn is_leaf(&self, pte: u64, level: u8) -> bool {
        pte & P != 0 && (level == 0 || ((level == 1 || level == 2) && pte & PS != 0))
    }
    fn table_pa(&self, pte: u64) -> u64 {
        pte & self.addr_mask
    }
    fn make_table(&self, table_pa: u64, _level: u8) -> u64 {
        // As Linux does: upper levels grant everything, the leaf decides.
        table_pa | P | RW | US
    }
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, user: bool, global: bool) -> u64 {
        let mut pte = page_pa | P;
        if level != 0 {
            pte |= PS;
        }
        if perms.contains(Perm::W) {
            pte |= RW;
        }
        if user {
            pte |= US;
        }
        if global {
            pte |= G;
        }
        if self.nxe && !perms.contains(Perm::X) {
            pte |= XD;
        }
        pte
    }
    fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo {
        let mask = match self.leaf_size(level) {
            Some(size) if level != 0 => self.addr_mask & !(size - 1),
            _ => self.addr_mask,
        };
        LeafInfo {
            page_pa: pte & mask,
            perms: self.rights(pte),
            user: pte & US != 0,
            global: pte & G != 0,
            accessed: pte & A != 0,
            dirty: pte & D != 0,
        }
    }
    fn set_perms(&self, pte: u64, _level: u8, perms: Perm) -> u64 {
        let mut pte = pte & !(RW | XD);
        if perms.contains(Perm::W) {
            pte |= RW;
        }
        if self.nxe && !perms.contains(Perm::X) {
            pte |= XD;
        }
        pte
    }
    fn table_rights(&self, pte: u64) -> TableRights {
        TableRights {
            perms: self.rights(pte),
            user: pte & US != 0,
            global: false,
        }
    }
    fn describe(&self, pte: u64, level: u8) -> String {
        let mut names: Vec<&str> = BIT_NAMES
            .iter()
            .filter(|&&(bit, _)| pte & bit != 0 && !(bit == PS && level == 0))
            .map(|&(_, name)| name)
            .collect();
        if level == 0 && pte & PS != 0 {
            names.push("PAT");
        }
        let addr = if self.is_leaf(pte, level) {
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
    fn allows(&self, perms: Perm, page_user: bool, access: Access, user: bool) -> bool {
        let smap_blocks = self.smap && page_user;
        match (user, access) {
            (true, Access::Read) => page_user,
            (true, Access::Write) => page_user && perms.contains(Perm::W),
            (true, Access::Exec) => page_user && perms.contains(Perm::X),
            (false, Access::Read) => !smap_blocks,
            (false, Access::Write) => (perms.contains(Perm::W) || !self.wp) && !smap_blocks,
            (false, Access::Exec) => perms.contains(Perm::X) && !(self.smep && page_user),
            // A probe checks no rights.
            (_, Access::Probe) => true,
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
    const GIB: u64 = 1 << 30;

    fn x86(levels: i64) -> X86_64 {
        X86_64::new(levels, 46, true, true, false, false).unwrap()
    }

    #[test]
    fn constructor_messages() {
        let err = X86_64::new(3, 46, true, true, false, false).unwrap_err();
        assert_eq!(
            err,
            Error::Config("x86-64 paging has 4 or 5 levels, got 3".into())
        );
        let err = X86_64::new(4, 53, true, true, false, false).unwrap_err();
        assert_eq!(
            err,
            Error::Config("maxphyaddr must be in [36, 52], got 53".into())
        );
    }

    #[test]
    fn four_k_leaf_walk_sets_accessed_and_dirty_bit_exact() {
        let fmt = x86(4);
        let mem = TestMem::new(64 * MIB);
        let va = 0x7F12_3456_7000;
        let leaf = fmt.make_leaf(0x0123_4000, 0, Perm::R | Perm::W, true, false);
        assert_eq!(leaf, 0x8000_0000_0123_4007);
        let mut next = 0x2000;
        let pte_pa = put(&mem, &fmt, 0x1000, va, 0, leaf, &mut next);
        let t = fmt
            .walk(&mem, 0x1000, va + 0x123, Access::Read, true, true)
            .unwrap();
        assert_eq!(
            (t.pa, t.memory_refs, t.pte_pa, t.level),
            (0x0123_4123, 4, pte_pa, 0)
        );
        assert_eq!(t.perms, Perm::R | Perm::W);
        assert_eq!(mem.get(pte_pa), 0x8000_0000_0123_4027);
        assert_eq!(
            mem.get(0x1000 + fmt.index(va, 3) * 8) & A,
            A,
            "upper levels get A too"
        );
        let t = fmt
            .walk(&mem, 0x1000, va, Access::Write, true, true)
            .unwrap();
        assert!(t.dirty);
        assert_eq!(mem.get(pte_pa), 0x8000_0000_0123_4067);
        // Without update_ad nothing changes.
        mem.set(pte_pa, leaf);
        fmt.walk(&mem, 0x1000, va, Access::Write, true, false)
            .unwrap();
        assert_eq!(mem.get(pte_pa), leaf);
    }

    #[test]
    fn large_pages_reserved_bits_and_pat() {
        let fmt = x86(4);
        let mem = TestMem::new(4 * GIB);
        let mut next = 0x2000;
        let leaf2m = fmt.make_leaf(0x60_0000, 1, Perm::R | Perm::X, false, true);
        assert_eq!(leaf2m, 0x60_0000 | 0x181);
        let pde = put(&mem, &fmt, 0x1000, 0x4000_0000, 1, leaf2m, &mut next);
        let t = fmt
            .walk(&mem, 0x1000, 0x4000_1234, Access::Exec, false, false)
            .unwrap();
        assert_eq!(
            (t.pa, t.page_size, t.level, t.memory_refs),
            (0x60_1234, 2 * MIB, 1, 3)
        );
        assert!(t.global);
        mem.set(pde, leaf2m | 1 << 13);
        let r = fmt.walk(&mem, 0x1000, 0x4000_0000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Reserved, Some(1)));
        mem.set(pde, leaf2m | 1 << 12); // PAT
        let t = fmt
            .walk(&mem, 0x1000, 0x4000_0010, Access::Read, false, false)
            .unwrap();
        assert_eq!(t.pa, 0x60_0010);
        let leaf1g = fmt.make_leaf(GIB, 2, Perm::RWX, false, false);
        assert_eq!(leaf1g, GIB | 0x83);
        put(&mem, &fmt, 0x1000, 0x80_0000_0000, 2, leaf1g, &mut next);
        let t = fmt
            .walk(&mem, 0x1000, 0x80_1234_5678, Access::Exec, false, true)
            .unwrap();
        assert_eq!(
            (t.pa, t.page_size, t.memory_refs),
            (GIB + 0x1234_5678, GIB, 2)
        );
        // Bit 50 is above MAXPHYADDR, PS in a PML4E is reserved.
        let pml4e = 0x1000 + fmt.index(0x80_0000_0000, 3) * 8;
        let old = mem.get(pml4e);
        mem.set(pml4e, old | PS);
        let r = fmt.walk(&mem, 0x1000, 0x80_0000_0000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Reserved, Some(3)));
        mem.set(pml4e, old | 1 << 50);
        let r = fmt.walk(&mem, 0x1000, 0x80_0000_0000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Reserved, Some(3)));
    }

    #[test]
    fn rights_combine_over_levels_and_modes() {
        let fmt = x86(4);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        put(
            &mem,
            &fmt,
            0x1000,
            0x1000,
            0,
            fmt.make_leaf(0x8000, 0, Perm::RWX, true, false),
            &mut next,
        );
        let pml4e = 0x1000;
        let orig = mem.get(pml4e);
        mem.set(pml4e, orig & !RW);
        for user in [true, false] {
            let r = fmt.walk(&mem, 0x1000, 0x1000, Access::Write, user, false);
            assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        }
        mem.set(pml4e, orig & !US);
        let r = fmt.walk(&mem, 0x1000, 0x1000, Access::Read, true, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        mem.set(pml4e, orig | XD);
        let r = fmt.walk(&mem, 0x1000, 0x1000, Access::Exec, false, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        let t = fmt
            .walk(&mem, 0x1000, 0x1000, Access::Read, false, false)
            .unwrap();
        assert_eq!(t.perms, Perm::R | Perm::W);
        // A probe checks no rights.
        fmt.walk(&mem, 0x1000, 0x1000, Access::Probe, true, false)
            .unwrap();
        let smap = X86_64::new(4, 46, true, true, true, true).unwrap();
        mem.set(pml4e, orig);
        let r = smap.walk(&mem, 0x1000, 0x1000, Access::Read, false, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        let r = smap.walk(&mem, 0x1000, 0x1000, Access::Exec, false, false);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
    }

    #[test]
    fn five_levels_canonical_and_outside_memory() {
        let fmt = x86(5);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let va = 0x00FF_0000_0000_0000 - 0x1000;
        put(
            &mem,
            &fmt,
            0x1000,
            va,
            0,
            fmt.make_leaf(0x5000, 0, Perm::R, false, false),
            &mut next,
        );
        let t = fmt
            .walk(&mem, 0x1000, va, Access::Read, false, false)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs), (0x5000, 5));
        let r = x86(4).walk(&mem, 0x1000, va, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
        // A PML5E pointing past memory: its own cause, at the level of the missing table.
        let pml5e = 0x1000 + fmt.index(va, 4) * 8;
        mem.set(pml5e, fmt.make_table(1 << 40, 4));
        let r = fmt.walk(&mem, 0x1000, va, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::TableOutsideMemory, Some(3)));
        let r = fmt.walk(&mem, 0x1004, va, Access::Read, false, false);
        assert!(matches!(r, Err(Error::Address(_))), "{r:?}");
    }

    #[test]
    fn a_lost_accessed_race_restarts_and_never_resurrects() {
        let fmt = x86(4);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let va = 0x40_0000;
        let leaf = fmt.make_leaf(0x8000, 0, Perm::R | Perm::W, false, false);
        let pte_pa = put(&mem, &fmt, 0x1000, va, 0, leaf, &mut next);
        // After one walk every table entry has A, so the only CAS is the leaf's.
        fmt.walk(&mem, 0x1000, va, Access::Read, false, true)
            .unwrap();
        mem.set(pte_pa, leaf);
        // An unmap lands between the walk's read and its CAS.
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, 0);
        });
        let r = fmt.walk(&mem, 0x1000, va, Access::Write, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(0)));
        assert_eq!(mem.get(pte_pa), 0, "the old PTE was not written back");
        // A protect to read-only lands instead: the retry sees it.
        mem.set(pte_pa, leaf);
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, leaf & !RW);
        });
        let r = fmt.walk(&mem, 0x1000, va, Access::Write, false, true);
        assert_eq!(fault_of(r).0, FaultCause::Protection);
        assert_eq!(mem.get(pte_pa), leaf & !RW);
        // A racing A/D change alone: the retry succeeds and counts one pass.
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, leaf & !RW | A);
        });
        let t = fmt
            .walk(&mem, 0x1000, va, Access::Read, false, true)
            .unwrap();
        assert_eq!(t.memory_refs, 4);
    }

    #[test]
    fn a_lost_race_on_a_table_entry_restarts_from_the_root() {
        let fmt = x86(4);
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x2000;
        let va = 0x40_0000;
        put(
            &mem,
            &fmt,
            0x1000,
            va,
            0,
            fmt.make_leaf(0x8000, 0, Perm::R, false, false),
            &mut next,
        );
        let pml4e_pa = 0x1000 + fmt.index(va, 3) * 8;
        mem.before_next_cas(move |w| {
            w.insert(pml4e_pa, 0);
        });
        let r = fmt.walk(&mem, 0x1000, va, Access::Read, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(3)));
    }

    #[test]
    fn describe_names_bits_like_python() {
        let fmt = x86(4);
        assert_eq!(
            fmt.describe(0x8000_0000_0123_4067, 0),
            "0x8000000001234067 [P RW US A D XD] -> 0x1234000"
        );
        assert_eq!(
            fmt.describe(0x0060_0181, 1),
            "0x0000000000600181 [P PS G] -> 0x600000"
        );
        assert_eq!(fmt.describe(0x80, 0), "0x0000000000000080 [PAT] -> 0x0");
        assert_eq!(fmt.describe(0, 2), "0x0000000000000000 [-] -> 0x0");
    }
}
