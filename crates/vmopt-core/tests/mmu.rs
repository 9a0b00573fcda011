//! The MMU through its public API: counters worked out by hand, faults and
//! restarts, shootdowns, and the batch loop against the scalar one.

use std::sync::Arc;

use proptest::prelude::*;
use vmopt_core::error::Error;
use vmopt_core::memory::PhysMem;
use vmopt_core::mmu::{Mmu, MmuConfig, PageInstall, StagedStop};
use vmopt_core::paging::{Access, FaultCause, PageTable, Perm, X86_64};
use vmopt_core::tlb::{
    Policy, PrefetchConfig, PrefetchKind, PrefetchMode, PwcConfig, TlbConfig, TlbLevel,
};

const BASE: u64 = 0x40_0000;
const K4: u64 = 4096;

fn table(pages: u64) -> Arc<PageTable> {
    let mem = Arc::new(PhysMem::new(256 << 20, 0, None).unwrap());
    let fmt = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
    let pt = Arc::new(PageTable::new(mem.clone(), fmt, None).unwrap());
    for i in 0..pages {
        let frame = mem.alloc(K4).unwrap();
        pt.map(BASE + i * K4, frame, K4, Perm(6), i % 2 == 0, false)
            .unwrap();
    }
    pt
}

fn tlb(entries: u32, ways: u32, latency: u64, name: &str) -> TlbConfig {
    TlbConfig::new(entries, ways, Policy::Lru, &[K4], latency, name, 0).unwrap()
}

fn config(levels: Vec<Vec<TlbConfig>>) -> MmuConfig {
    MmuConfig {
        levels,
        itlb: None,
        prefetch: PrefetchConfig::default(),
        pwc: None,
        asid: 0,
        shootdown: true,
        walk_ref_cycles: 20,
    }
}

#[test]
fn hierarchy_counters_hand_worked() {
    let pt = table(8);
    let mmu = Mmu::new(
        pt,
        config(vec![vec![tlb(4, 2, 1, "l1")], vec![tlb(16, 4, 7, "l2")]]),
    )
    .unwrap();
    for i in 0..6 {
        mmu.translate(BASE + i * K4, Access::Read, false).unwrap();
    }
    mmu.translate(BASE + 5 * K4, Access::Read, false).unwrap(); // L1 hit
    mmu.translate(BASE, Access::Read, false).unwrap(); // evicted from L1, L2 hit
    let levels = mmu.level_stats();
    let l1 = levels[0];
    let l2 = levels[1];
    assert_eq!((l1.lookups, l1.hits, l1.misses, l1.evictions), (8, 1, 7, 3));
    assert_eq!((l2.lookups, l2.hits, l2.misses), (7, 1, 6));
    let s = mmu.stats();
    assert_eq!((s.walks, s.translations, s.walk_memory_refs), (6, 8, 24));
    assert_eq!(l1.cycles + l2.cycles + s.cycles, 8 + 7 * 7 + 6 * 4 * 20);
}

#[test]
fn faults_restarts_and_dirty_rewalks() {
    let pt = table(4);
    let mmu = Mmu::new(pt.clone(), config(vec![vec![tlb(8, 2, 1, "l1")]])).unwrap();
    // A hole: a restartable not-present fault of the miss walk.
    let stop = mmu
        .translate(BASE + 8 * K4, Access::Read, false)
        .unwrap_err();
    assert!(stop.restartable);
    let Error::Fault(f) = stop.error else {
        panic!("not a fault")
    };
    assert_eq!((f.cause, f.level), (FaultCause::NotPresent, Some(0)));
    let frame = pt.memory().alloc_granule(K4).unwrap();
    pt.map(BASE + 8 * K4, frame, K4, Perm(6), false, false)
        .unwrap();
    assert_eq!(
        mmu.translate_restart(BASE + 8 * K4 + 5, Access::Read, false)
            .unwrap(),
        frame + 5
    );
    let s = mmu.stats();
    assert_eq!((s.walks, s.faults, s.demand_faults), (1, 1, 1));
    // A supervisor page used from user mode: a hit fault, not restartable, entry dropped.
    mmu.translate(BASE + K4, Access::Read, false).unwrap();
    let stop = mmu.translate(BASE + K4, Access::Read, true).unwrap_err();
    assert!(!stop.restartable && !mmu.cached(BASE + K4));
    // A write hit on a clean entry re-walks (not a miss) and then hits.
    mmu.translate(BASE, Access::Read, false).unwrap();
    let walks = mmu.stats().walks;
    mmu.translate(BASE, Access::Write, false).unwrap();
    mmu.translate(BASE, Access::Write, false).unwrap();
    let s = mmu.stats();
    assert_eq!((s.walks, s.dirty_walks), (walks, 1));
    assert!(mmu.translate(BASE, Access::Probe, false).is_err());
}

#[test]
fn shootdowns_reach_every_asid_and_the_queue() {
    let pt = table(12);
    let mut cfg = config(vec![vec![tlb(16, 16, 1, "l1")]]);
    cfg.prefetch =
        PrefetchConfig::new(PrefetchKind::NextPage, 2, PrefetchMode::Deferred, 8).unwrap();
    cfg.pwc = Some(PwcConfig::default());
    let mmu = Mmu::new(pt.clone(), cfg).unwrap();
    mmu.translate(BASE, Access::Read, false).unwrap();
    assert_eq!(mmu.queue(), vec![BASE + K4, BASE + 2 * K4]);
    mmu.switch(pt.clone(), Some(3), false).unwrap();
    assert!(mmu.queue().is_empty()); // a switch drops queued requests
    mmu.translate(BASE + 4 * K4, Access::Read, false).unwrap();
    pt.unmap(BASE + 5 * K4, K4).unwrap();
    assert_eq!(mmu.queue(), vec![BASE + 6 * K4]);
    pt.unmap(BASE, K4).unwrap(); // cached for ASID 0, not the current one
    mmu.switch(pt.clone(), Some(0), false).unwrap();
    assert!(mmu.translate(BASE, Access::Read, false).is_err());
    assert_eq!(mmu.stats().shootdowns, 2);
    assert_eq!(mmu.process_prefetch().unwrap(), 0); // emptied by the switch
}

#[test]
fn install_page_maps_and_restarts() {
    let pt = table(0);
    let mmu = Mmu::new(pt.clone(), config(vec![vec![tlb(8, 2, 1, "l1")]])).unwrap();
    let data = vec![7u8; 100];
    let page = PageInstall {
        va: BASE,
        size: K4,
        nodes: &[0],
        data: Some(&data),
        perms: Perm(6),
        user: true,
    };
    let (pa, frame, node) = mmu
        .install_page(BASE + 9, Access::Write, true, page)
        .unwrap()
        .unwrap();
    assert_eq!((pa, node), (frame + 9, 0));
    assert!(mmu.cached(BASE));
    let mut buf = [0u8; 4];
    pt.memory().read(frame + 98, &mut buf).unwrap();
    assert_eq!(buf, [7, 7, 0, 0]);
    let s = mmu.stats();
    assert_eq!((s.demand_faults, s.walks, s.translations), (1, 0, 0));
    // The same page again: the mapping is refused and the frame given back.
    let free = pt.memory().free_bytes();
    assert!(mmu.install_page(BASE, Access::Read, true, page).is_err());
    assert_eq!(pt.memory().free_bytes(), free);
}

#[test]
fn translate_or_install_counts_what_translate_then_install_counts() {
    let data = vec![5u8; 4096];
    let page = |nodes| PageInstall {
        va: BASE,
        size: K4,
        nodes,
        data: Some(&data),
        perms: Perm(6),
        user: true,
    };
    let cfg = || config(vec![vec![tlb(8, 2, 1, "l1")]]);
    let (a, b) = (
        Mmu::new(table(0), cfg()).unwrap(),
        Mmu::new(table(0), cfg()).unwrap(),
    );
    let stop = a.translate(BASE + 3, Access::Write, true).unwrap_err();
    assert!(stop.restartable);
    let (pa, frame, _) = a
        .install_page(BASE + 3, Access::Write, true, page(&[0]))
        .unwrap()
        .unwrap();
    let (pb, placed) = b
        .translate_or_install(BASE + 3, Access::Write, true, page(&[0]))
        .unwrap()
        .unwrap();
    assert_eq!((pb, placed.map(|p| p.0)), (pa, Some(frame)));
    assert_eq!(a.stats(), b.stats());
    // Mapped now: a plain translation, nothing installed.
    let again = b.translate_or_install(BASE + 8, Access::Read, true, page(&[0]));
    assert_eq!(again.unwrap(), Some((frame + 8, None)));
    // A fault that is not restartable (a supervisor-only probe) is returned as it is.
    assert!(b
        .translate_or_install(BASE, Access::Probe, true, page(&[0]))
        .is_err());
    // No room on the listed nodes: None, nothing changed.
    let c = Mmu::new(table(0), cfg()).unwrap();
    let free = c.page_table().memory().free_bytes();
    let nowhere = c.translate_or_install(BASE, Access::Read, true, page(&[]));
    assert_eq!(nowhere.unwrap(), None);
    assert_eq!(c.page_table().memory().free_bytes(), free);
}

#[test]
fn dropped_mmus_leave_their_tables() {
    let pt = table(2);
    let mmu = Mmu::new(pt.clone(), config(vec![vec![tlb(8, 2, 1, "l1")]])).unwrap();
    let weak = Arc::downgrade(&mmu);
    drop(mmu);
    assert!(weak.upgrade().is_none());
    pt.unmap(BASE, K4).unwrap(); // the dead subscriber is skipped
}

fn batch_config(policy: Policy, split: bool) -> MmuConfig {
    let sizes: &[u64] = &[K4, 2 << 20];
    let l1 = if split {
        vec![
            TlbConfig::new(8, 4, policy, &[K4], 1, "l1", 1).unwrap(),
            TlbConfig::new(4, 2, policy, &[2 << 20], 1, "l1b", 2).unwrap(),
        ]
    } else {
        vec![TlbConfig::new(8, 2, policy, &[K4], 1, "l1", 1).unwrap()]
    };
    let mut cfg = config(vec![
        l1,
        vec![TlbConfig::new(32, 4, policy, sizes, 7, "l2", 3).unwrap()],
    ]);
    cfg.prefetch =
        PrefetchConfig::new(PrefetchKind::Stride, 2, PrefetchMode::Immediate, 4).unwrap();
    cfg.pwc = Some(PwcConfig::new(4, 2).unwrap());
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The batch loop stops exactly where the scalar loop faults, with the same counters.
    #[test]
    fn batch_equals_scalar_loop(
        policy in prop::sample::select(vec![Policy::Lru, Policy::Fifo, Policy::Random, Policy::Plru]),
        split in any::<bool>(),
        write in any::<bool>(),
        pages in prop::collection::vec(0u64..24, 1..300),
    ) {
        let access = if write { Access::Write } else { Access::Read };
        let vas: Vec<u64> = pages.iter().map(|p| BASE + p * K4 + p % 7).collect();
        let scalar = Mmu::new(table(20), batch_config(policy, split)).unwrap();
        let batch = Mmu::new(table(20), batch_config(policy, split)).unwrap();
        let mut want = Vec::new();
        for &va in &vas {
            want.push(scalar.translate(va, access, va & K4 == 0).map_err(|s| s.error));
        }
        let mut got = Vec::new();
        let mut out = vec![0u64; vas.len()];
        let mut pos = 0;
        while pos < vas.len() {
            // Mixed modes: one batch per run of equal mode, as a caller would split them.
            let user = vas[pos] & K4 == 0;
            let end = (pos..vas.len()).find(|&i| (vas[i] & K4 == 0) != user).unwrap_or(vas.len());
            let (done, stop) = batch.translate_batch(&vas[pos..end], &mut out[pos..end], access, user);
            got.extend(out[pos..pos + done].iter().map(|&pa| Ok(pa)));
            pos += done;
            if let Some(stop) = stop {
                got.push(Err(stop.error));
                pos += 1;
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(batch.stats(), scalar.stats());
        prop_assert_eq!(batch.level_stats(), scalar.level_stats());
    }

    /// The staged batch installs what a `translate_or_install` loop installs,
    /// at the same accesses, with the same counters and the same frames.
    #[test]
    fn staged_batch_equals_translate_or_install_loop(
        write in any::<bool>(),
        pages in prop::collection::vec(0u64..40, 1..200),
        staged in prop::collection::btree_set(10u64..40, 0..24),
        nodes_empty in prop::collection::btree_set(20u64..40, 0..3),
    ) {
        let access = if write { Access::Write } else { Access::Read };
        let vas: Vec<u64> = pages.iter().map(|p| BASE + p * K4 + p % 5).collect();
        let data: Vec<Vec<u8>> = (0..40u8).map(|p| vec![p; 4096]).collect();
        let (none, zero): (&[u32], &[u32]) = (&[], &[0]);
        let page = |p: u64| PageInstall {
            va: BASE + p * K4,
            size: K4,
            nodes: if nodes_empty.contains(&p) { none } else { zero },
            data: Some(&data[p as usize]),
            perms: Perm(if p % 4 == 0 { 4 } else { 6 }),
            user: true,
        };
        let scalar = Mmu::new(table(20), batch_config(Policy::Lru, false)).unwrap();
        let batch = Mmu::new(table(20), batch_config(Policy::Lru, false)).unwrap();
        // The loop: a staged page installs on its first restartable fault.
        let mut want = Vec::new();
        let mut left: std::collections::BTreeSet<u64> = staged.clone();
        for &va in &vas {
            let p = (va - BASE) / K4;
            let step = if left.contains(&p) {
                match scalar.translate_or_install(va, access, true, page(p)) {
                    Ok(Some((pa, placed))) => {
                        if placed.is_some() { left.remove(&p); }
                        Ok(pa)
                    }
                    Ok(None) => Err(None),
                    Err(stop) => {
                        if scalar.page_table().lookup(BASE + p * K4).is_some() { left.remove(&p); }
                        Err(Some(stop.error))
                    }
                }
            } else {
                scalar.translate(va, access, true).map_err(|s| Some(s.error))
            };
            want.push(step);
        }
        // The staged batch, resumed after each stop with the pages not yet in.
        let mut got = Vec::new();
        let mut out = vec![0u64; vas.len()];
        let mut left: Vec<u64> = staged.iter().copied().collect();
        let mut pos = 0;
        while pos < vas.len() {
            let pages: Vec<PageInstall<'_>> = left.iter().map(|&p| page(p)).collect();
            let mut placed = Vec::new();
            let (done, stop) =
                batch.translate_batch_staged(&vas[pos..], &mut out[pos..], access, true, &pages, &mut placed);
            let gone: Vec<u64> = placed.iter().map(|&(slot, _, _)| left[slot]).collect();
            left.retain(|p| !gone.contains(p));
            got.extend(out[pos..pos + done].iter().map(|&pa| Ok(pa)));
            pos += done;
            match stop {
                None => {}
                Some(StagedStop::NoRoom(_)) => { got.push(Err(None)); pos += 1; }
                Some(StagedStop::FellBack) => {}
                Some(StagedStop::Fault(stop)) => { got.push(Err(Some(stop.error))); pos += 1; }
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(batch.stats(), scalar.stats());
        prop_assert_eq!(batch.level_stats(), scalar.level_stats());
        for p in 0..40u64 {
            let (a, b) = (scalar.page_table().lookup(BASE + p * K4), batch.page_table().lookup(BASE + p * K4));
            prop_assert_eq!(a.is_some(), b.is_some());
        }
    }

    /// A level's lookup memo never changes a result: every lookup finds what
    /// probing the arrays in order finds.
    #[test]
    fn level_memo_is_invisible(ops in prop::collection::vec((0u8..6, 0u64..40, 0u32..3), 1..400)) {
        let cfgs = [
            TlbConfig::new(8, 2, Policy::Plru, &[K4], 1, "a", 0).unwrap(),
            TlbConfig::new(4, 4, Policy::Lru, &[2 << 20], 1, "b", 0).unwrap(),
        ];
        let mut level = TlbLevel::new(&cfgs).unwrap();
        for (kind, page, asid) in ops {
            let va = BASE + page * K4 + (page % 3) * (2 << 20);
            match kind {
                0..=2 => {
                    let want = level.peek(va, asid);
                    prop_assert_eq!(level.lookup(va, asid), want);
                }
                3 => {
                    let (array, shift) = if page % 4 == 0 { (1, 21) } else { (0, 12) };
                    let e = vmopt_core::tlb::TlbEntry::new(va >> shift, shift, asid, 0, 0x3F, true, 0);
                    level.insert(array, e).unwrap();
                }
                4 => { level.flush_va(va, Some(asid)); }
                _ => { level.flush_asid(asid); }
            }
        }
    }
}

/// Pages at `BASE`: every third one `rw` (a fetch there faults), the rest `rwx`.
fn code_table(pages: u64) -> Arc<PageTable> {
    let mem = Arc::new(PhysMem::new(256 << 20, 0, None).unwrap());
    let fmt = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
    let pt = Arc::new(PageTable::new(mem.clone(), fmt, None).unwrap());
    for i in 0..pages {
        let frame = mem.alloc(K4).unwrap();
        let perms = if i % 3 == 0 { Perm(6) } else { Perm::RWX };
        pt.map(BASE + i * K4, frame, K4, perms, i % 2 == 0, false)
            .unwrap();
    }
    pt
}

/// A split L1 (ITLB of `itlb_policy`, DTLB of `policy`) over a shared L2.
fn split_config(policy: Policy, itlb_policy: Policy, big: bool) -> MmuConfig {
    let dtlb = if big {
        vec![
            TlbConfig::new(8, 4, policy, &[K4], 1, "l1d", 1).unwrap(),
            TlbConfig::new(4, 2, policy, &[2 << 20], 1, "l1d_2m", 2).unwrap(),
        ]
    } else {
        vec![TlbConfig::new(8, 2, policy, &[K4], 1, "l1d", 1).unwrap()]
    };
    let mut cfg = config(vec![
        dtlb,
        vec![TlbConfig::new(32, 4, policy, &[K4, 2 << 20], 7, "l2", 3).unwrap()],
    ]);
    cfg.itlb = Some(vec![
        TlbConfig::new(4, 2, itlb_policy, &[K4], 1, "l1i", 4).unwrap()
    ]);
    cfg
}

#[test]
fn split_l1_fills_only_the_side_that_missed() {
    let mmu = Mmu::new(code_table(8), split_config(Policy::Lru, Policy::Lru, false)).unwrap();
    assert!(mmu.split_l1());
    let va = BASE + K4; // rwx, supervisor
    mmu.translate(va, Access::Exec, false).unwrap(); // ITLB miss, L2 miss: walk, fill ITLB + L2
    mmu.translate(va, Access::Exec, false).unwrap(); // ITLB hit
    mmu.translate(va, Access::Read, false).unwrap(); // DTLB miss, L2 hit: fills the DTLB
    mmu.translate(va, Access::Read, false).unwrap(); // DTLB hit
    let itlb = mmu.itlb_stats().unwrap();
    let levels = mmu.level_stats();
    assert_eq!((itlb.lookups, itlb.hits, itlb.misses), (2, 1, 1));
    assert_eq!(
        (levels[0].lookups, levels[0].hits, levels[0].misses),
        (2, 1, 1)
    );
    assert_eq!(
        (levels[1].lookups, levels[1].hits, levels[1].misses),
        (2, 1, 1)
    );
    assert_eq!(mmu.stats().walks, 1);
    // An invalidation reaches both L1s.
    mmu.invlpg(va);
    assert!(!mmu.cached(va));
    mmu.translate(va, Access::Write, false).unwrap();
    mmu.translate(va, Access::Exec, false).unwrap();
    assert_eq!(mmu.stats().walks, 2);
    assert_eq!(mmu.itlb_stats().unwrap().misses, 2);
    // A fetch of a no-exec page faults from the ITLB's path only.
    let nx = BASE;
    let stop = mmu.translate(nx, Access::Exec, false).unwrap_err();
    assert!(matches!(stop.error, Error::Fault(ref f) if f.cause == FaultCause::Protection));
    assert_eq!(mmu.itlb_stats().unwrap().lookups, 4);
    assert_eq!(mmu.level_stats()[0].lookups, 3);
}

#[test]
fn split_l1_names_must_be_distinct() {
    let mut cfg = split_config(Policy::Lru, Policy::Lru, false);
    cfg.itlb = Some(vec![tlb(4, 2, 1, "l1d")]);
    let err = Mmu::new(code_table(1), cfg).unwrap_err();
    assert!(err.to_string().contains("'l1d', 'l1d'"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The kinds batch (split or unified L1) stops exactly where the scalar
    /// loop of the same accesses stops, with the same counters per level and side.
    #[test]
    fn kinds_batch_equals_scalar_loop(
        policy in prop::sample::select(vec![Policy::Lru, Policy::Fifo, Policy::Random, Policy::Plru]),
        itlb_policy in prop::sample::select(vec![Policy::Lru, Policy::Plru]),
        split in any::<bool>(),
        big in any::<bool>(),
        ops in prop::collection::vec((0u64..24, 0u8..3), 1..400),
    ) {
        let build = || {
            let mut cfg = split_config(policy, itlb_policy, big);
            if !split {
                cfg.itlb = None;
            }
            Mmu::new(code_table(20), cfg).unwrap()
        };
        let (scalar, batch) = (build(), build());
        let vas: Vec<u64> = ops.iter().map(|(p, _)| BASE + p * K4 + p % 7).collect();
        let kinds: Vec<u8> = ops.iter().map(|&(_, k)| k).collect();
        let want: Vec<_> = vas
            .iter()
            .zip(&kinds)
            .map(|(&va, &k)| {
                let access = vmopt_core::mmu::access_of_kind(k).unwrap();
                scalar.translate(va, access, true).map_err(|s| s.error)
            })
            .collect();
        let mut got = Vec::new();
        let mut out = vec![0u64; vas.len()];
        let mut pos = 0;
        while pos < vas.len() {
            let (done, stop) =
                batch.translate_batch_kinds(&vas[pos..], &kinds[pos..], &mut out[pos..], true);
            got.extend(out[pos..pos + done].iter().map(|&pa| Ok(pa)));
            pos += done;
            if let Some(stop) = stop {
                got.push(Err(stop.error));
                pos += 1;
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(batch.stats(), scalar.stats());
        prop_assert_eq!(batch.level_stats(), scalar.level_stats());
        prop_assert_eq!(batch.itlb_stats(), scalar.itlb_stats());
        // Every access looks up its side's L1 once, faulting or not.
        let fetches = kinds.iter().filter(|&&k| k == 2).count() as u64;
        let dtlb = batch.level_stats()[0].lookups;
        match batch.itlb_stats() {
            Some(itlb) => prop_assert_eq!((itlb.lookups, dtlb), (fetches, vas.len() as u64 - fetches)),
            None => prop_assert_eq!(dtlb, vas.len() as u64),
        }
    }
}

#[test]
fn kinds_batch_refuses_a_byte_that_is_no_kind() {
    let mmu = Mmu::new(code_table(4), split_config(Policy::Lru, Policy::Lru, false)).unwrap();
    let vas = [BASE + K4, BASE + K4, BASE + 2 * K4];
    let mut out = [0u64; 3];
    let (done, stop) = mmu.translate_batch_kinds(&vas, &[2, 7, 0], &mut out, false);
    assert_eq!(done, 1);
    let err = stop.unwrap().error;
    assert!(err.to_string().contains("got 7"), "{err}");
    assert_eq!(mmu.stats().translations, 1);
}
