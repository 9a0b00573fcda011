//! The RISC-V G-stage (hypervisor extension, "Two-Stage Address
//! Translation"): Sv39x4 and Sv48x4, the host tables of a RISC-V VM.
//!
//! A G-stage table is Sv39/Sv48 with the root widened by two bits: GPAs are
//! 41 (Sv39x4) or 50 (Sv48x4) bits, zero-extended (any higher bit set is a
//! guest-page fault), and the root table is 16 KiB (2048 entries, 16 KiB
//! aligned). Every G-stage access is checked as a U-mode access, so a leaf
//! must have U set. Entries are the Sv39/Sv48 PTEs bit for bit, so the walk
//! is [`RiscV`]'s: the root index's two extra bits select one of the root's
//! four 4 KiB pages, and the rest of the GPA is walked as an Sv39/Sv48
//! address from there.
//!
//! [`PageTable`](crate::paging::PageTable) builds, lists and frees these
//! tables like any other: the root is one 16 KiB (order-2) buddy block
//! ([`Format::root_bytes`], [`Format::entries`] 2048 at the top), so a
//! G-stage table is a [`TwoStage`](crate::paging::TwoStage) host.

use crate::error::{Error, Result};
use crate::memory::PteMemory;
use crate::paging::{
    Access, Fault, FaultCause, Format, LeafInfo, Perm, RiscV, TableRights, Translation,
};

/// Sv39x4 or Sv48x4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GStage {
    inner: RiscV,
    levels: u8,
}

impl GStage {
    /// `levels` 3 (Sv39x4) or 4 (Sv48x4); `svade`: a clear A (or D on a write) faults.
    pub fn new(levels: i64, svade: bool) -> Result<GStage> {
        if levels != 3 && levels != 4 {
            return Err(Error::Config(format!(
                "the RISC-V G-stage here is Sv39x4 (3 levels) or Sv48x4 (4), got {levels}"
            )));
        }
        Ok(GStage {
            inner: RiscV::new(levels, false, false, svade)?,
            levels: levels as u8,
        })
    }

    /// Bits of the inner (Sv39/Sv48) address.
    fn inner_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
}

impl Format for GStage {
    fn name(&self) -> &str {
        if self.levels == 3 {
            "sv39x4"
        } else {
            "sv48x4"
        }
    }
    fn levels(&self) -> u8 {
        self.levels
    }
    fn va_bits(&self) -> u8 {
        self.inner_bits() as u8 + 2
    }
    fn pa_bits(&self) -> u8 {
        self.inner.pa_bits()
    }
    fn leaf_sizes(&self) -> &[(u8, u64)] {
        self.inner.leaf_sizes()
    }
    /// The root index is 11 bits wide, the others 9.
    fn index(&self, va: u64, level: u8) -> u64 {
        let mask = if level == self.levels - 1 {
            0x7FF
        } else {
            0x1FF
        };
        (va >> (12 + 9 * level as u32)) & mask
    }
    /// The root holds 2048 entries, the tables below 512.
    fn entries(&self, level: u8) -> u64 {
        if level == self.levels - 1 {
            2048
        } else {
            512
        }
    }
    fn root_bytes(&self) -> u64 {
        16 << 10
    }
    /// GPAs are zero-extended.
    fn is_canonical(&self, va: u64) -> bool {
        va >> self.va_bits() == 0
    }
    /// Zero-extended GPAs have no hole: any range of canonical ends is whole.
    fn same_half(&self, _va: u64, _last: u64) -> bool {
        true
    }
    fn canonicalize(&self, va: u64) -> u64 {
        va & ((1u64 << self.va_bits()) - 1)
    }
    pte_bits_of!(inner);
    /// G-stage leaves are U pages (every access is checked as U-mode); G is not used.
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, _user: bool, _global: bool) -> u64 {
        self.inner.make_leaf(page_pa, level, perms, true, false)
    }
    /// Every G-stage access is a U-mode access.
    fn allows(&self, perms: Perm, page_user: bool, access: Access, _user: bool) -> bool {
        self.inner.allows(perms, page_user, access, true)
    }
    fn walk(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        gpa: u64,
        access: Access,
        _user: bool,
        update_ad: bool,
    ) -> Result<Translation> {
        if !self.is_canonical(gpa) {
            return Err(Error::Fault(Fault {
                va: gpa,
                access,
                cause: FaultCause::NonCanonical,
                level: None,
                user: true,
                stage: None,
                fsc: None,
            }));
        }
        let bits = self.inner_bits();
        // The root's two extra index bits pick one of its four pages.
        let page_root = root + ((gpa >> bits) & 3) * 4096;
        let inner_va = self.inner.canonicalize(gpa & ((1u64 << bits) - 1));
        let back = |f: Fault| Fault { va: gpa, ..f };
        match self
            .inner
            .walk(mem, page_root, inner_va, access, true, update_ad)
        {
            Ok(t) => Ok(Translation { va: gpa, ..t }),
            Err(Error::Fault(f)) => Err(Error::Fault(back(f))),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::riscv::{A, D, R, U, V, W};
    use crate::paging::testmem::{fault_of, TestMem};
    use crate::paging::twostage::{walk_nested, HostWalk};
    use crate::paging::Stage;

    /// Sv39x4 by hand: GPA 0x1_C040_3123 = VPN[2] 0x7 (bits 40:30, using
    /// the two extra bits), VPN[1] 0x2, VPN[0] 0x3, offset 0x123.
    #[test]
    fn sv39x4_walk_worked_by_hand() {
        let f = GStage::new(3, false).unwrap();
        let mem = TestMem::new(64 << 20);
        let root = 0x10_0000; // 16 KiB aligned
        let gpa = 0x1_C040_3123u64;
        assert_eq!(
            (f.index(gpa, 2), f.index(gpa, 1), f.index(gpa, 0)),
            (7, 2, 3)
        );
        // Root entry 7 sits at root + 7 * 8, in the root's first page.
        mem.set(root + 7 * 8, (0x20_0000 >> 12) << 10 | V);
        mem.set(0x20_0000 + 2 * 8, (0x30_0000 >> 12) << 10 | V);
        let leaf = f.make_leaf(0x0ABC_D000, 0, Perm::R | Perm::W, false, true);
        assert_eq!(
            leaf,
            (0x0ABC_D000 >> 12) << 10 | U | W | R | V,
            "U set, G clear"
        );
        mem.set(0x30_0000 + 3 * 8, leaf);
        let t = f.walk(&mem, root, gpa, Access::Write, false, true).unwrap();
        assert_eq!((t.va, t.pa, t.memory_refs), (gpa, 0x0ABC_D123, 3));
        assert_eq!(mem.get(0x30_0000 + 3 * 8), leaf | A | D);
        // Index 0x600 (two extra bits = 0b11): the root's fourth page.
        let high = 0x180_0000_0000u64;
        assert_eq!(f.index(high, 2), 0x600);
        let r = f.walk(&mem, root, high, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NotPresent, Some(2)));
        // A 1 GiB leaf at PPN 0 (its PPN[1:0] must be 0).
        mem.set(root + 0x600 * 8, U | R | V);
        let t = f
            .walk(&mem, root, high + 0x1234, Access::Read, false, false)
            .unwrap();
        assert_eq!((t.pa, t.page_size), (0x1234, 1 << 30));
        // A leaf without U faults even for a supervisor guest access.
        mem.set(0x30_0000 + 3 * 8, leaf & !U);
        let r = f.walk(&mem, root, gpa, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        // GPA bits above 40 fault.
        let r = f.walk(&mem, root, 1 << 41, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
        assert_eq!(
            (f.name(), f.va_bits(), f.root_bytes()),
            ("sv39x4", 41, 16384)
        );
        let f48 = GStage::new(4, false).unwrap();
        assert_eq!(
            (f48.name(), f48.va_bits(), f48.index(1 << 49, 3)),
            ("sv48x4", 50, 0x400)
        );
        assert!(GStage::new(5, false).is_err());
    }

    #[test]
    fn page_table_builds_lists_and_frees_a_16k_root() {
        use crate::memory::PhysMem;
        use crate::paging::PageTable;
        use std::sync::Arc;
        const RWX: Perm = Perm::RWX;
        let mem = Arc::new(PhysMem::new(64 << 20, 0, None).unwrap());
        let free0 = mem.free_bytes();
        let fmt: Arc<dyn Format> = Arc::new(GStage::new(3, false).unwrap());
        let pt = PageTable::new(mem.clone(), fmt.clone(), None).unwrap();
        assert_eq!(pt.root() % 16384, 0, "an order-2 block");
        assert_eq!(mem.free_bytes(), free0 - 16384);
        // GPA[40:39] = 0b11: an entry in the root's fourth page; and one in its first.
        let (hi, lo) = (0x1FF_C000_0000u64, 0x4000_0000u64);
        pt.map(hi, 0x20_0000, 4096, RWX, false, false).unwrap();
        pt.map(lo, 0x40_0000, 2 << 20, RWX, false, false).unwrap();
        assert_eq!(mem.read_u64(pt.root() + 0x7FF * 8).unwrap() & 1, 1);
        let t = pt.walk(hi + 0x18, Access::Write, false).unwrap();
        assert_eq!(
            (t.pa, t.memory_refs, t.dirty, t.user),
            (0x20_0018, 3, true, true)
        );
        let vas: Vec<(u64, u64)> = pt.leaves().map(|e| (e.leaf.va, e.leaf.page_size)).collect();
        assert_eq!(vas, [(lo, 2 << 20), (hi, 4096)]);
        assert_eq!(pt.mappings().count(), 2);
        assert_eq!(pt.table_frames().len(), 1 + 2 + 1, "root, two L1s, one L0");
        // A range across bit 40 is one zero-extended range, not a hole.
        pt.map(0xFF_FFFF_F000, 0x30_0000, 4096, RWX, false, false)
            .unwrap();
        pt.map(0x100_0000_0000, 0x31_0000, 4096, RWX, false, false)
            .unwrap();
        pt.protect(0xFF_FFFF_F000, 8192, Perm::R).unwrap();
        pt.unmap(0xFF_FFFF_F000, 8192).unwrap();
        pt.remap(hi, 0x21_0000, 4096, None).unwrap();
        assert_eq!(pt.lookup(hi).unwrap().page_pa, 0x21_0000);
        pt.unmap(hi, 4096).unwrap();
        pt.unmap(lo, 2 << 20).unwrap();
        assert_eq!(pt.table_frames(), [pt.root()]);
        assert_eq!(mem.free_bytes(), free0 - 16384);
        pt.destroy().unwrap();
        assert_eq!(mem.free_bytes(), free0, "the whole 16 KiB root went back");
        // attach wants the 16 KiB alignment hgatp.PPN implies.
        let err = PageTable::attach(mem.clone(), 0x1000, fmt.clone(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "page-table root must be a 16 KiB aligned address inside memory, got 4096"
        );
        assert!(PageTable::attach(mem.clone(), (64 << 20) - 8192, fmt.clone(), None).is_err());
        // A self-map in the root's last entry: listed once, not descended.
        mem.write_u64(0x10_0000 + 0x7FF * 8, fmt.make_table(0x10_0000, 2))
            .unwrap();
        let pt = PageTable::attach(mem, 0x10_0000, fmt, Some(false)).unwrap();
        let leaves: Vec<_> = pt.leaves().max_tables(1000).collect();
        assert_eq!(leaves.len(), 1);
        assert!(leaves[0].recursive);
        assert_eq!(leaves[0].leaf.va, 0x7FF << 30);
        assert_eq!(pt.table_frames(), [0x10_0000]);
    }

    /// Sv39 over Sv39x4 and Sv48 over Sv48x4 PageTables: (n+1)(m+1)-1.
    #[test]
    fn page_table_hosts_count_n_plus_1_times_m_plus_1_minus_1() {
        use crate::memory::PhysMem;
        use crate::paging::{PageTable, TwoStage};
        use std::sync::Arc;
        for (levels, want) in [(3i64, 15u32), (4, 24)] {
            let gmem = Arc::new(PhysMem::new(16 << 20, 0, None).unwrap());
            let gfmt = Arc::new(RiscV::new(levels, false, false, false).unwrap());
            let guest = Arc::new(PageTable::new(gmem, gfmt, None).unwrap());
            guest
                .map(0x4000_0000, 0x8_0000, 4096, Perm::R | Perm::W, true, false)
                .unwrap();
            let hmem = Arc::new(PhysMem::new(64 << 20, 32 << 20, None).unwrap());
            let hfmt = Arc::new(GStage::new(levels, false).unwrap());
            let host = Arc::new(PageTable::new(hmem, hfmt, None).unwrap());
            host.map_range(0, 32 << 20, 16 << 20, 4096, Perm::RWX, true, false)
                .unwrap();
            let ts = TwoStage::new(guest, host).unwrap();
            let t = ts.walk(0x4000_0010, Access::Write, true).unwrap();
            assert_eq!((t.gpa(), t.hpa()), (0x8_0010, (32 << 20) + 0x8_0010));
            assert_eq!((t.guest_refs, t.memory_refs()), (levels as u32, want));
            let h = ts.host().lookup(0x8_0000).unwrap();
            assert!(
                h.accessed && h.dirty,
                "the host leaf of the data page is dirty"
            );
        }
    }

    /// A G-stage host under an Sv39 guest: (3+1)(3+1)-1 = 15 references.
    #[test]
    fn an_sv39_guest_over_sv39x4_costs_15_references() {
        use crate::memory::PhysMem;
        use crate::paging::PageTable;
        use std::sync::Arc;

        struct Host {
            fmt: GStage,
            mem: TestMem,
            root: u64,
        }
        impl HostWalk for Host {
            fn host_walk(&self, gpa: u64, access: Access, _t: bool) -> (Result<Translation>, u32) {
                let r = self
                    .fmt
                    .walk(&self.mem, self.root, gpa, access, true, false);
                let refs = match &r {
                    Ok(t) => t.memory_refs,
                    Err(Error::Fault(f)) => crate::paging::twostage::faulted_refs(&self.fmt, f),
                    Err(_) => 0,
                };
                (r, refs)
            }
            fn host_write(&self, gpa: u64) -> Result<()> {
                self.fmt
                    .walk(&self.mem, self.root, gpa, Access::Write, true, false)
                    .map(|_| ())
            }
        }
        let gmem = Arc::new(PhysMem::new(16 << 20, 0, None).unwrap());
        let gfmt = Arc::new(RiscV::new(3, false, false, false).unwrap());
        let guest = PageTable::new(gmem, gfmt, Some(false)).unwrap();
        guest
            .map(0x4000_0000, 0x8_0000, 4096, Perm::R | Perm::W, true, false)
            .unwrap();
        // Host: GPA [0, 16 MiB) -> HPA + 1 GiB in 4 KiB pages, tables by hand.
        let fmt = GStage::new(3, false).unwrap();
        let mem = TestMem::new(4 << 30);
        let root = 0x10_0000;
        mem.set(root, (0x20_0000 >> 12) << 10 | V);
        for l1 in 0..8u64 {
            let pt = 0x30_0000 + l1 * 4096;
            mem.set(0x20_0000 + l1 * 8, (pt >> 12) << 10 | V);
            for l0 in 0..512u64 {
                let gpa = (l1 << 21) | (l0 << 12);
                mem.set(
                    pt + l0 * 8,
                    fmt.make_leaf((1 << 30) + gpa, 0, Perm::RWX, false, false),
                );
            }
        }
        let host = Host { fmt, mem, root };
        let (r, refs) = walk_nested(&guest, Access::Read, 0x4000_0010, Access::Read, true, &host);
        let t = r.unwrap();
        assert_eq!((t.gpa(), t.hpa()), (0x8_0010, (1 << 30) + 0x8_0010));
        assert_eq!((refs.guest, refs.host, t.memory_refs()), (3, 12, 15));
        // The host takes the data page's U away: a host fault on the final access.
        host.mem.set(
            0x30_0000 + 0x80 * 8,
            host.fmt
                .make_leaf((1 << 30) + 0x8_0000, 0, Perm::R, false, false)
                & !U,
        );
        let (r, _) = walk_nested(&guest, Access::Read, 0x4000_0010, Access::Read, true, &host);
        match r {
            Err(Error::Fault(f)) => {
                assert_eq!(
                    f.stage,
                    Some(Stage::Host {
                        gpa: 0x8_0010,
                        table: false
                    })
                );
                assert_eq!(f.cause, FaultCause::Protection);
            }
            other => panic!("{other:?}"),
        }
    }
}
