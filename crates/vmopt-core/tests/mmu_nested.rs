//! The nested cost model of the MMU: two-stage walks through the nested TLB
//! and both page-walk caches, counted by hand; VMID tagging; host shootdowns.

use std::sync::Arc;

use vmopt_core::error::Error;
use vmopt_core::memory::PhysMem;
use vmopt_core::mmu::{Mmu, MmuConfig};
use vmopt_core::mmu_nested::NestedConfig;
use vmopt_core::paging::{Access, Ept, FaultCause, PageTable, Perm, Stage, TwoStage, X86_64};
use vmopt_core::tlb::{Policy, PrefetchConfig, PwcConfig, TlbConfig};

const K4: u64 = 4096;
const MIB: u64 = 1 << 20;
const HOST_BASE: u64 = 128 * MIB;
const GVA: u64 = 0x7F00_0000_0000 & ((1 << 47) - 1);

/// A guest with `pages` 4 KiB pages over an EPT host backing all 64 MiB of guest RAM.
fn two_stage(pages: u64) -> TwoStage {
    let gmem = Arc::new(PhysMem::new(64 * MIB, 0, None).unwrap());
    let hmem = Arc::new(PhysMem::new(256 * MIB, 0, None).unwrap());
    let gfmt = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
    let guest = Arc::new(PageTable::new(gmem, gfmt, None).unwrap());
    let host =
        Arc::new(PageTable::new(hmem, Arc::new(Ept::new(4, 46, false).unwrap()), None).unwrap());
    host.map_range(0, HOST_BASE, 64 * MIB, K4, Perm::RWX, true, false)
        .unwrap();
    for i in 0..pages {
        guest
            .map(
                GVA + i * K4,
                0x100_0000 + i * K4,
                K4,
                Perm::R | Perm::W,
                true,
                false,
            )
            .unwrap();
    }
    TwoStage::new(guest, host).unwrap()
}

fn mmu(ts: &TwoStage, pwc: Option<PwcConfig>, nested: NestedConfig) -> Arc<Mmu> {
    let l1 = TlbConfig::new(64, 4, Policy::Lru, &[K4], 1, "l1", 0).unwrap();
    let mmu = Mmu::new(
        ts.guest().clone(),
        MmuConfig {
            levels: vec![vec![l1]],
            itlb: None,
            prefetch: PrefetchConfig::default(),
            pwc,
            asid: 5,
            shootdown: true,
            walk_ref_cycles: 10,
        },
    )
    .unwrap();
    mmu.set_nested(ts, nested).unwrap();
    mmu
}

#[test]
fn without_caches_every_miss_costs_24_references() {
    let ts = two_stage(4);
    let m = mmu(&ts, None, NestedConfig::new(1, 0, None).unwrap());
    for i in 0..4 {
        let pa = m.translate(GVA + i * K4 + 8, Access::Read, true).unwrap();
        assert_eq!(pa, HOST_BASE + 0x100_0000 + i * K4 + 8);
    }
    m.translate(GVA + 8, Access::Read, true).unwrap(); // a TLB hit: GVA -> HPA cached
    let s = m.stats();
    assert_eq!((s.walks, s.walk_memory_refs), (4, 4 * 24));
    let (_, n) = m.nested_stats().unwrap();
    assert_eq!((n.walks, n.guest_refs, n.host_refs), (4, 16, 80));
    assert_eq!(s.cycles, 4 * 24 * 10, "walk cycles: refs x walk_ref_cycles");
}

#[test]
fn the_nested_tlb_and_both_pwcs_cut_the_references_as_counted_by_hand() {
    let ts = two_stage(2);
    // Nested TLB only: the first walk fills 5 frames (4 guest tables + data), the
    // second reuses the 4 table frames: 4 guest refs + 0 host for them + 4 for its data frame.
    let m = mmu(&ts, None, NestedConfig::new(1, 16, None).unwrap());
    m.translate(GVA, Access::Read, true).unwrap();
    m.translate(GVA + K4, Access::Read, true).unwrap();
    let (_, n) = m.nested_stats().unwrap();
    assert_eq!((n.guest_refs, n.host_refs), (8, 20 + 4));
    assert_eq!((n.ntlb_lookups, n.ntlb_hits), (10, 4));
    // Guest PWC (3 upper levels cached) and host PWC, no nested TLB: the second
    // walk reads 1 guest entry (the PT) whose GPA costs 1 host ref (its host
    // PML4E/PDPTE/PDE are cached), and its data GPA 1 host ref: 3 in all.
    let ts = two_stage(2);
    let pwc = PwcConfig::new(8, 0).unwrap();
    let m = mmu(&ts, Some(pwc), NestedConfig::new(1, 0, Some(pwc)).unwrap());
    m.translate(GVA, Access::Read, true).unwrap();
    let first = m.stats().walk_memory_refs;
    m.translate(GVA + K4, Access::Read, true).unwrap();
    assert_eq!(m.stats().walk_memory_refs - first, 3);
}

#[test]
fn tlb_entries_carry_the_vmid_and_host_changes_shoot_them_down() {
    let ts = two_stage(1);
    let m = mmu(&ts, None, NestedConfig::new(3, 16, None).unwrap());
    assert_eq!(m.asid(), 5, "the guest's ASID is still its own");
    m.translate(GVA, Access::Read, true).unwrap();
    assert!(m.cached(GVA));
    let tag = m.with_level(0, |l| l.peek(GVA, 5 | 3 << 17).map(|h| l.entry(h).asid));
    assert_eq!(tag, Some(5 | 3 << 17));
    assert!(
        m.with_level(0, |l| l.peek(GVA, 5).is_none()),
        "not under the bare ASID"
    );
    // The host takes the data frame away: the VM's TLB entries go, and the walk faults in the host.
    ts.host().unmap(0x100_0000, K4).unwrap();
    assert!(!m.cached(GVA));
    match m.translate(GVA, Access::Read, true) {
        Err(stop) => {
            assert!(
                !stop.restartable,
                "a host fault is not the guest's to resolve"
            );
            let Error::Fault(f) = stop.error else {
                panic!("{:?}", stop.error)
            };
            assert_eq!(f.cause, FaultCause::NotPresent);
            assert_eq!(
                f.stage,
                Some(Stage::Host {
                    gpa: 0x100_0000,
                    table: false
                })
            );
        }
        Ok(pa) => panic!("translated to {pa:#x}"),
    }
    assert_eq!(m.nested_stats().unwrap().1.host_faults, 1);
    assert!(NestedConfig::new(0, 0, None).is_err());
}
