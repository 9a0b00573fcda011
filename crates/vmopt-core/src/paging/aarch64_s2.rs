//! AArch64 stage 2 translation (VMSAv8-64, Arm ARM D8 "Stage 2
//! translation"): the IPA -> PA tables a hypervisor at EL2 builds for a VM
//! (VTTBR_EL2, VTCR_EL2), a host format for two-stage walks.
//!
//! # Geometry
//!
//! The granule and the walk's descent are stage 1's ([`Geometry`],
//! [`descend`]): 9, 11 or 13 index bits per level, blocks of 1 GiB and
//! 2 MiB (4K), 32 MiB (16K) and 512 MiB (64K). The input is an IPA of
//! `ipa_bits` = 64 - VTCR_EL2.T0SZ bits, zero-extended; an IPA at or above
//! `2^ipa_bits` is a level 0 translation fault with no table read. The start
//! level (VTCR_EL2.SL0) is stage 1's, unless the architecture forbids it for
//! the output size `pa_bits` (VTCR_EL2.PS): level 0 with 4K needs PS > 42
//! bits, with 16K it is not allowed, and level 1 needs PS > 40 (16K) or
//! PS > 42 (64K). The walk then starts a level lower and the start level
//! holds up to 16 concatenated tables (a root of `entries * 8` bytes,
//! aligned to its size: [`Format::root_bytes`]). `ipa_bits` must not exceed
//! `pa_bits` (the architecture leaves that CONSTRAINED UNPREDICTABLE; QEMU
//! faults).
//!
//! # Descriptors
//!
//! Bits\[1:0\] as stage 1; MemAttr\[5:2\] (written 0b1111, Normal write-back),
//! S2AP\[7:6\] (bit 6 reads, bit 7 writes: 00 none, 01 RO, 10 WO, 11 RW),
//! SH\[9:8\] (written inner shareable), AF (bit 10), DBM (51), the
//! Contiguous hint (52) and XN (54). FEAT_XNX is not modelled: bit 53 is
//! RES0 and ignored, so XN\[54\] alone forbids execution at both ELs. Table
//! descriptors carry no limits at stage 2 (their bits 63:59 are RES0).
//!
//! # Rights
//!
//! A stage-2 access has no EL0/EL1 distinction: `user` is ignored and
//! leaves read back as `user`. vmopt's `r`, `w` and `x` are S2AP\[0\],
//! S2AP\[1\] and !XN, so every combination is encodable: `check_perms`
//! accepts all of them, a W-only page (S2AP = 10) and an execute-only one
//! (S2AP = 00, XN = 0; an instruction fetch needs only XN clear) included,
//! and an empty one is a valid descriptor that faults every access. A
//! two-stage walk reads guest tables as reads (the architecture checks
//! stage-1 walks as reads) and its guest A/D updates as writes.
//!
//! # Access flag and dirty state
//!
//! A clear AF is an access-flag fault unless `ha` (VTCR_EL2.HA): the walk
//! sets AF by compare-exchange. With `hd` (VTCR_EL2.HD, needs `ha`) a write
//! to a page with DBM set and S2AP\[1\] clear (writable-clean) sets S2AP\[1\].
//! A page is dirty when S2AP\[1\] is set. Faults carry stage 1's fault
//! status codes; a two-stage walk marks them as host faults.

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::aarch64::{
    descend, fsc_of, granule_shift_of, Descent, Geometry, AF, CONTIGUOUS, DBM, PA_SIZES, SH_INNER,
    TABLE, TABLE_BITS, VALID,
};
use crate::paging::{
    walk_until_done, Access, Fault, FaultCause, Format, LeafInfo, Perm, TableRights, Translation,
};

/// S2AP\[0\]: reads allowed.
pub const S2AP_R: u64 = 1 << 6;
/// S2AP\[1\]: writes allowed.
pub const S2AP_W: u64 = 1 << 7;
/// MemAttr\[5:2\] = 0b1111: Normal memory, inner and outer write-back.
pub const MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
/// Execute-never (XN\[1\], bit 54).
pub const XN: u64 = 1 << 54;
const BIT_NAMES: [(u64, &str); 8] = [
    (VALID, "V"),
    (TABLE, "T"),
    (S2AP_R, "S2AP0"),
    (S2AP_W, "S2AP1"),
    (AF, "AF"),
    (DBM, "DBM"),
    (CONTIGUOUS, "Cont"),
    (XN, "XN"),
];

/// VMSAv8-64 stage 2 (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AArch64Stage2 {
    name: String,
    geo: Geometry,
    pa_bits: u8,
    ha: bool,
    hd: bool,
}

/// May the start level `start` (architecture numbering) be used with this granule and output size?
fn start_allowed(granule_shift: u8, start: u8, pa_bits: u8) -> bool {
    match (granule_shift, start) {
        (12, 0) => pa_bits > 42,
        (14, 0) | (16, 0) => false,
        (14, 1) => pa_bits > 40,
        (16, 1) => pa_bits > 42,
        _ => true,
    }
}

impl AArch64Stage2 {
    /// A validated format.
    ///
    /// `granule` is 4096, 16384 or 65536; `ipa_bits` (64 - VTCR_EL2.T0SZ) in
    /// [25, 48] and at most `pa_bits` (VTCR_EL2.PS: 32, 36, 40, 42, 44 or 48);
    /// `hd` needs `ha`.
    pub fn new(
        granule: u64,
        ipa_bits: i64,
        pa_bits: i64,
        ha: bool,
        hd: bool,
    ) -> Result<AArch64Stage2> {
        let (granule_shift, suffix) = granule_shift_of(granule, "AArch64 stage 2")?;
        if !(25..=48).contains(&ipa_bits) {
            return Err(Error::Config(format!(
                "AArch64 stage 2 ipa_bits (64 - VTCR_EL2.T0SZ) must be in [25, 48], got {ipa_bits}"
            )));
        }
        if !PA_SIZES.iter().any(|&p| p as i64 == pa_bits) {
            return Err(Error::Config(format!(
                "AArch64 stage 2 pa_bits (VTCR_EL2.PS) must be one of 32, 36, 40, 42, 44, 48, got {pa_bits}"
            )));
        }
        if ipa_bits > pa_bits {
            return Err(Error::Config(format!(
                "AArch64 stage 2 ipa_bits {ipa_bits} exceeds pa_bits {pa_bits} (VTCR_EL2.PS)"
            )));
        }
        if hd && !ha {
            return Err(Error::Config(
                "AArch64 stage 2 hd (VTCR_EL2.HD) needs ha (VTCR_EL2.HA) set".into(),
            ));
        }
        let (ipa_bits, pa_bits) = (ipa_bits as u8, pa_bits as u8);
        let stride = granule_shift - 3;
        let mut levels = (ipa_bits - granule_shift).div_ceil(stride);
        while !start_allowed(granule_shift, 4 - levels, pa_bits) {
            levels -= 1;
        }
        // At most 16 concatenated tables: the start level resolves at most stride + 4 bits.
        let start_bits = ipa_bits - granule_shift - stride * (levels - 1);
        if start_bits > stride + 4 {
            return Err(Error::Config(format!(
                "AArch64 stage 2 ipa_bits {ipa_bits} needs more than 16 concatenated start-level tables with pa_bits {pa_bits}"
            )));
        }
        let mut name = format!("aarch64_s2{suffix}");
        if ipa_bits != 40 {
            name += &format!("_ipa{ipa_bits}");
        }
        if pa_bits != 48 {
            name += &format!("_pa{pa_bits}");
        }
        Ok(AArch64Stage2 {
            name,
            geo: Geometry::new(granule_shift, levels, ipa_bits),
            pa_bits,
            ha,
            hd,
        })
    }

    /// The translation granule in bytes.
    pub fn granule(&self) -> u64 {
        self.geo.granule()
    }
    /// VTCR_EL2.HA: the walk sets AF.
    pub fn ha(&self) -> bool {
        self.ha
    }
    /// VTCR_EL2.HD: a write to a DBM page sets S2AP\[1\].
    pub fn hd(&self) -> bool {
        self.hd
    }
    /// The architecture's start level (0-3) of a walk.
    pub fn start_level(&self) -> u8 {
        4 - self.geo.levels
    }
    /// Tables concatenated at the start level (1 when the root is one table or less).
    pub fn concatenated(&self) -> u64 {
        let top = self.geo.levels - 1;
        (self.geo.entries(top) >> self.geo.stride).max(1)
    }
    /// VTCR_EL2.SL0 for the start level: 4K counts from level 2, 16K and 64K from level 3.
    pub fn sl0(&self) -> u8 {
        if self.geo.granule_shift == 12 {
            2 - self.start_level()
        } else {
            3 - self.start_level()
        }
    }

    fn fault(&self, ipa: u64, access: Access, cause: FaultCause, level: Option<u8>) -> Error {
        Error::Fault(Fault {
            va: ipa,
            access,
            cause,
            level,
            user: true,
            stage: None,
            fsc: fsc_of(cause, level),
        })
    }

    /// vmopt's rights of a leaf: `r` S2AP\[0\], `w` S2AP\[1\] (or DBM under `hd`), `x` !XN.
    fn view(&self, pte: u64) -> Perm {
        let mut perms = Perm::NONE;
        if pte & S2AP_R != 0 {
            perms = perms | Perm::R;
        }
        if pte & S2AP_W != 0 || (self.hd && pte & DBM != 0) {
            perms = perms | Perm::W;
        }
        if pte & XN == 0 {
            perms = perms | Perm::X;
        }
        perms
    }

    fn perm_bits(&self, perms: Perm) -> u64 {
        let mut bits = 0;
        if perms.contains(Perm::R) {
            bits |= S2AP_R;
        }
        if perms.contains(Perm::W) {
            // Writable-clean under hd: the first write sets S2AP[1].
            bits |= if self.hd { DBM } else { S2AP_W };
        }
        if !perms.contains(Perm::X) {
            bits |= XN;
        }
        bits
    }

    /// One pass of the walk; `Ok(None)` if the compare-exchange lost a race.
    #[inline(always)]
    fn walk_once(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        ipa: u64,
        access: Access,
        update_ad: bool,
    ) -> Result<Option<Translation>> {
        let Descent {
            pte_pa,
            pte,
            level,
            refs,
        } = match descend(&self.geo, self.pa_bits, mem, root, ipa, |_| {})? {
            Ok(d) => d,
            Err((cause, level)) => return Err(self.fault(ipa, access, cause, level)),
        };
        if pte & AF == 0 && !self.ha {
            return Err(self.fault(ipa, access, FaultCause::AccessFlag, Some(level)));
        }
        let perms = self.view(pte);
        if access != Access::Probe && !self.allows(perms, true, access, true) {
            return Err(self.fault(ipa, access, FaultCause::Protection, Some(level)));
        }
        let mut new = pte | if self.ha { AF } else { 0 };
        if access == Access::Write && self.hd && pte & DBM != 0 {
            new |= S2AP_W;
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
            va: ipa,
            pa: (pte & TABLE_BITS & !(size - 1)) | (ipa & (size - 1)),
            page_size: size,
            perms,
            user: true,
            global: false,
            dirty: pte & S2AP_W != 0,
            memory_refs: refs,
            level,
            pte_pa,
        }))
    }
}

impl Format for AArch64Stage2 {
    vmsa_geometry!();
    /// A concatenated root's bytes; a root of one table or less keeps the
    /// one-frame value, as stage 1 does, and is sized by `table_size`.
    fn root_bytes(&self) -> u64 {
        match self.concatenated() {
            1 => 4096,
            n => n * self.granule(),
        }
    }
    /// IPAs are zero-extended: canonical means below `2^ipa_bits`.
    fn is_canonical(&self, va: u64) -> bool {
        va >> self.geo.in_bits == 0
    }
    fn same_half(&self, _va: u64, _last: u64) -> bool {
        true
    }
    fn canonicalize(&self, va: u64) -> u64 {
        va & ((1u64 << self.geo.in_bits) - 1)
    }
    /// Every combination of `r`, `w`, `x` is encodable at stage 2.
    fn check_perms(&self, _perm: Perm) -> Option<String> {
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
    /// `user` and `global` have no stage-2 encoding and are ignored.
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, _user: bool, _global: bool) -> u64 {
        let mut pte = page_pa | VALID | MEMATTR_NORMAL_WB | SH_INNER | self.perm_bits(perms);
        if level == 0 {
            pte |= TABLE;
        }
        if !self.ha {
            // Without hardware AF update a clear AF faults: the hypervisor sets it.
            pte |= AF;
        }
        pte
    }
    fn decode_leaf(&self, pte: u64, level: u8) -> LeafInfo {
        LeafInfo {
            page_pa: pte & TABLE_BITS & !(self.level_span(level) - 1),
            perms: self.view(pte),
            user: true,
            global: false,
            accessed: pte & AF != 0,
            dirty: pte & S2AP_W != 0,
        }
    }
    fn set_perms(&self, pte: u64, _level: u8, perms: Perm) -> u64 {
        (pte & !(S2AP_R | S2AP_W | DBM | XN)) | self.perm_bits(perms)
    }
    /// Stage-2 table descriptors limit nothing.
    fn table_rights(&self, _pte: u64) -> TableRights {
        TableRights {
            perms: Perm::RWX,
            user: true,
            global: false,
        }
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
            "{pte:#018x} {kind} [{bits}] memattr {:#06b} -> {:#x}",
            (pte >> 2) & 0xF,
            self.table_pa(pte)
        )
    }
    /// No EL distinction: reads need S2AP\[0\], writes S2AP\[1\], fetches XN clear.
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
        ipa: u64,
        access: Access,
        _user: bool,
        update_ad: bool,
    ) -> Result<Translation> {
        if !self.is_canonical(ipa) {
            return Err(self.fault(ipa, access, FaultCause::NotPresent, None));
        }
        walk_until_done(
            mem,
            true,
            ipa,
            access,
            true,
            #[inline(always)]
            |m| self.walk_once(m, root, ipa, access, update_ad),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testmem::{fault_of, put, TestMem};

    const MIB: u64 = 1 << 20;

    fn s2(granule: u64, ipa_bits: i64, pa_bits: i64) -> AArch64Stage2 {
        AArch64Stage2::new(granule, ipa_bits, pa_bits, false, false).unwrap()
    }

    fn fsc_of_walk(r: Result<Translation>) -> Option<u8> {
        match r {
            Err(Error::Fault(f)) => f.fsc,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn start_level_and_concatenation_follow_granule_ipa_and_ps() {
        // (granule, ipa_bits, pa_bits) -> (start level, SL0, concatenated tables, root entries)
        let cases = [
            ((4096, 40, 48), (0, 2, 1, 2)),
            ((4096, 40, 40), (1, 1, 2, 1024)),
            ((4096, 42, 42), (1, 1, 8, 4096)),
            ((4096, 39, 40), (1, 1, 1, 512)),
            ((4096, 48, 48), (0, 2, 1, 512)),
            ((4096, 32, 32), (1, 1, 1, 4)),
            ((4096, 25, 32), (2, 0, 1, 16)),
            ((16384, 48, 48), (1, 2, 2, 4096)),
            ((16384, 47, 48), (1, 2, 1, 2048)),
            ((16384, 40, 40), (2, 1, 16, 32768)),
            ((16384, 36, 36), (2, 1, 1, 2048)),
            ((16384, 25, 32), (3, 0, 1, 2048)),
            ((65536, 48, 48), (1, 2, 1, 64)),
            ((65536, 42, 42), (2, 1, 1, 8192)),
            ((65536, 33, 36), (2, 1, 1, 16)),
            ((65536, 25, 32), (3, 0, 1, 512)),
        ];
        for ((g, ipa, pa), (start, sl0, concat, root)) in cases {
            let f = s2(g, ipa, pa);
            let top = f.levels() - 1;
            assert_eq!(
                (f.start_level(), f.sl0(), f.concatenated(), f.entries(top)),
                (start, sl0, concat, root),
                "{g} {ipa} {pa}"
            );
            assert_eq!(f.level_span(top) * f.entries(top), 1 << ipa);
            let want_root = if concat == 1 { 4096 } else { concat * g };
            assert_eq!(f.root_bytes(), want_root, "{g} {ipa} {pa}");
        }
        let err = |r: Result<AArch64Stage2>| r.unwrap_err().to_string();
        assert!(err(AArch64Stage2::new(8192, 40, 48, false, false)).contains("8192"));
        assert!(err(AArch64Stage2::new(4096, 49, 48, false, false)).contains("49"));
        assert!(err(AArch64Stage2::new(4096, 44, 42, false, false)).contains("exceeds"));
        assert!(err(AArch64Stage2::new(4096, 40, 41, false, false)).contains("41"));
        assert!(err(AArch64Stage2::new(4096, 40, 48, false, true)).contains("needs ha"));
        // 16K with a 44-bit PS can start at level 1 only if PS > 40: 44 bits need 3 levels.
        assert_eq!(s2(16384, 44, 44).start_level(), 1);
        // 64K, 36-bit IPA: start level 2 resolves 36 - 16 - 13 = 7 bits.
        assert_eq!(s2(65536, 36, 36).entries(1), 128);
        assert_eq!(s2(4096, 40, 48).name(), "aarch64_s2");
        assert_eq!(s2(65536, 42, 42).name(), "aarch64_s2_64k_ipa42_pa42");
    }

    #[test]
    fn s2ap_xn_and_af_decide_each_access() {
        let f = s2(4096, 40, 48);
        let mem = TestMem::new(64 * MIB);
        let ipa = 0x12_3456_7000;
        let mut next = 0x2000;
        // R + W + X: V T, MemAttr 1111, S2AP 11, SH 11, AF.
        let leaf = f.make_leaf(0x40_0000, 0, Perm::RWX, false, true);
        assert_eq!(leaf, 0x0000_0000_0040_07FF);
        let pte_pa = put(&mem, &f, 0x1000, ipa, 0, leaf, &mut next);
        let t = f
            .walk(&mem, 0x1000, ipa + 0x18, Access::Write, false, true)
            .unwrap();
        assert_eq!(
            (t.pa, t.memory_refs, t.level, t.dirty, t.user),
            (0x40_0018, 4, 0, true, true)
        );
        // (S2AP, XN) -> (read, write, exec) allowed.
        let table = [
            (0b00, false, [false, false, true]),
            (0b01, false, [true, false, true]),
            (0b10, true, [false, true, false]),
            (0b11, true, [true, true, false]),
        ];
        for (s2ap, xn, want) in table {
            let pte = (leaf & !(S2AP_R | S2AP_W)) | (s2ap << 6) | if xn { XN } else { 0 };
            mem.set(pte_pa, pte);
            for (access, ok) in [Access::Read, Access::Write, Access::Exec].iter().zip(want) {
                let r = f.walk(&mem, 0x1000, ipa, *access, false, false);
                if ok {
                    r.unwrap();
                } else {
                    // Permission fault, level 3.
                    assert_eq!(fsc_of_walk(r), Some(0b001111), "{s2ap:02b} {xn} {access:?}");
                }
            }
        }
        // Bit 53 (PXN at stage 1, XN[0] with FEAT_XNX) is ignored.
        mem.set(pte_pa, leaf | 1 << 53);
        f.walk(&mem, 0x1000, ipa, Access::Exec, false, false)
            .unwrap();
        // AF clear: access-flag fault, checked before the permission.
        mem.set(pte_pa, leaf & !(AF | S2AP_R));
        let r = f.walk(&mem, 0x1000, ipa, Access::Read, false, false);
        assert_eq!(fsc_of_walk(r), Some(0b001011));
        // Above ipa_bits: level 0 translation fault, no table read.
        let r = f.walk(&mem, 0x1000, 1 << 40, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, None));
        assert_eq!(
            fsc_of_walk(f.walk(&mem, 0x1000, 1 << 40, Access::Read, false, false)),
            Some(0b000100)
        );
        assert_eq!(
            f.describe(leaf | XN, 0),
            "0x00400000004007ff page [V T S2AP0 S2AP1 AF XN] memattr 0b1111 -> 0x400000"
        );
        for p in 0..8 {
            assert_eq!(f.check_perms(Perm(p)), None);
            let pte = f.set_perms(leaf, 0, Perm(p));
            assert_eq!(f.decode_leaf(pte, 0).perms, Perm(p));
        }
    }

    #[test]
    fn concatenated_root_and_blocks() {
        // 4K, 40-bit IPA, 40-bit PS: start level 1 with two concatenated tables.
        let f = s2(4096, 40, 40);
        assert_eq!((f.levels(), f.concatenated()), (3, 2));
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x4000;
        let ipa = (1u64 << 39) | (3 << 30) | 0x1234;
        let block = f.make_leaf(0x4000_0000, 1, Perm::R, false, false);
        let pte_pa = put(&mem, &f, 0x2000, ipa, 1, block, &mut next);
        // The second table of the root: entry 512 + 3.
        assert_eq!(mem.get(0x2000 + (512 + 3) * 8) & VALID, VALID);
        let t = f
            .walk(&mem, 0x2000, ipa, Access::Read, false, false)
            .unwrap();
        assert_eq!(
            (t.pa, t.page_size, t.memory_refs),
            (0x4000_1234, 2 * MIB, 2)
        );
        // An output address at or above PS: address-size fault at level 2.
        mem.set(pte_pa, block | 1 << 40);
        let r = f.walk(&mem, 0x2000, ipa, Access::Read, false, false);
        assert_eq!(fsc_of_walk(r), Some(0b000010));
        // A level 1 block (1 GiB) in the root is legal with 4K.
        mem.set(
            0x2000 + (512 + 3) * 8,
            f.make_leaf(0x8000_0000, 2, Perm::R, false, false),
        );
        let t = f
            .walk(&mem, 0x2000, ipa, Access::Read, false, false)
            .unwrap();
        assert_eq!((t.pa, t.memory_refs), (0x8000_1234, 1));
        // 64K: a level 1 block needs FEAT_LPA, so the root entry is a translation fault.
        let f64 = s2(65536, 48, 48);
        mem.set(0x1_0000, VALID | AF | S2AP_R);
        let r = f64.walk(&mem, 0x1_0000, 0x10, Access::Read, false, false);
        assert_eq!(fsc_of_walk(r), Some(0b000101));
    }

    #[test]
    fn hardware_af_and_dirty_by_compare_exchange() {
        let f = AArch64Stage2::new(16384, 36, 36, true, true).unwrap();
        let mem = TestMem::new(64 * MIB);
        let mut next = 0x8000;
        let leaf = f.make_leaf(0xC000, 0, Perm::R | Perm::W, false, false);
        assert_eq!(leaf & (AF | S2AP_W | DBM | S2AP_R), DBM | S2AP_R);
        let pte_pa = put(&mem, &f, 0x4000, 0x10_4000, 0, leaf, &mut next);
        let t = f
            .walk(&mem, 0x4000, 0x10_4000, Access::Read, false, true)
            .unwrap();
        assert_eq!((t.dirty, t.perms), (false, Perm::R | Perm::W));
        assert_eq!(mem.get(pte_pa), leaf | AF);
        let t = f
            .walk(&mem, 0x4000, 0x10_4000, Access::Write, false, true)
            .unwrap();
        assert!(t.dirty);
        assert_eq!(mem.get(pte_pa), leaf | AF | S2AP_W);
        // A racing unmap between read and CAS: the retry faults, nothing is written back.
        mem.set(pte_pa, leaf);
        mem.before_next_cas(move |w| {
            w.insert(pte_pa, 0);
        });
        let r = f.walk(&mem, 0x4000, 0x10_4000, Access::Write, false, true);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(0)));
        assert_eq!(mem.get(pte_pa), 0);
    }

    #[test]
    fn stage_1_over_stage_2_costs_n_plus_1_times_m_plus_1_minus_1() {
        use crate::memory::PhysMem;
        use crate::paging::{AArch64, PageTable, TwoStage};
        use std::sync::Arc;
        // (stage-1 granule, stage-2 granule, ipa_bits): n and m follow from the geometry.
        for (g1, g2, ipa) in [(4096, 4096, 48), (65536, 65536, 42), (16384, 4096, 39)] {
            let gmem = Arc::new(PhysMem::new(64 * MIB, 0, None).unwrap());
            let hmem = Arc::new(PhysMem::new(64 * MIB, 1 << 30, None).unwrap());
            let gfmt = Arc::new(AArch64::new(g1, 48, 48, false, false, false, false).unwrap());
            let hfmt = Arc::new(AArch64Stage2::new(g2, ipa, 48, false, false).unwrap());
            let (n, m) = (gfmt.levels() as u32, hfmt.levels() as u32);
            let guest = Arc::new(PageTable::new(gmem, gfmt, None).unwrap());
            let host = Arc::new(PageTable::new(hmem, hfmt, None).unwrap());
            for gpa in (0..64 * MIB).step_by(g2 as usize) {
                host.map_trusted(gpa, gpa + (2 << 30), g2, Perm::RWX, false)
                    .unwrap();
            }
            let gva = 0x7F_1234_0000 & !(g1 - 1);
            guest
                .map(gva, 0x30_0000, g1, Perm::R | Perm::W, true, false)
                .unwrap();
            let ts = TwoStage::new(guest, host).unwrap();
            let t = ts.walk(gva + 0x18, Access::Read, true).unwrap();
            assert_eq!(t.memory_refs(), (n + 1) * (m + 1) - 1, "{g1} {g2} {ipa}");
            assert_eq!((t.guest_refs, t.hpa()), (n, 0x30_0018 + (2 << 30)));
            // The guest root's frame without stage-2 read: a host permission
            // fault on a guest table access (PAR.S = 1, PAR.PTW = 1).
            let root = ts.guest().root();
            ts.host()
                .protect(root & !(g2 - 1), g2, Perm::W | Perm::X)
                .unwrap();
            match ts.walk(gva, Access::Read, true) {
                Err(Error::Fault(f)) => {
                    assert_eq!((f.cause, f.fsc), (FaultCause::Protection, Some(0b001111)));
                    assert!(matches!(
                        f.stage,
                        Some(crate::paging::Stage::Host { table: true, .. })
                    ));
                }
                other => panic!("expected a host fault, got {other:?}"),
            }
        }
    }
}
