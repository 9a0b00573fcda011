//! Two-stage (nested) translation: a guest's tables over a host's.
//!
//! A guest virtual address (GVA) goes through the guest's tables to a
//! guest-physical address (GPA), and every GPA the walk touches, each guest
//! page-table entry and the final address, goes through the host's tables
//! (EPT, NPT, G-stage) to a host-physical address (HPA). The hardware does
//! exactly that composition, so it is written as one: the guest format's own
//! walk runs over a [`PteMemory`] whose every load first walks the host
//! tables for the entry's GPA. An uncached n-level guest walk over an
//! m-level host walk reads n guest entries, n host walks for them and one
//! for the final GPA: (n+1)(m+1)-1 references, 24 for 4+4, 35 for 5+5.
//!
//! Guest page-table entries are read in one of two places. A guest table
//! built on its host's [`GuestMemory`](crate::paging::GuestMemory) is read
//! at the HPA each host walk gives, in host memory, as the hardware reads
//! it: a host remap moves what the next guest walk sees. A guest table in a
//! [`PhysMem`] of its own is read there at the GPA (the VMM's view of guest
//! RAM, as a KVM memslot is: what `back_guest_memory` builds, identity-mapped);
//! the host table then decides only whether the access is allowed and which
//! HPA the final translation names. A host walk may be answered from a cache first
//! ([`HostWalk`]): the MMU's nested TLB and host page-walk cache plug in there.
//!
//! Faults carry their [`Stage`]: a guest fault, or a host fault naming the
//! GPA and whether it was a guest table access or the final access. Guest
//! A/D updates are guest-physical writes, so the host must allow the write
//! (and, with EPT A/D, sets the host D bit); with EPT A/D enabled even the
//! guest table reads are host writes ([`Format::nested_table_access`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::memory::{PhysMem, PteMemory};
use crate::paging::table::Backing;
use crate::paging::{Access, Fault, Format, PageTable, Perm, Stage, Translation};

/// Something that translates a GPA for a two-stage walk: the host table, or caches in front of it.
pub trait HostWalk: Sync {
    /// Translate `gpa` for `access` (`table`: a guest page-table entry rather
    /// than the final access); also the host references it cost.
    fn host_walk(&self, gpa: u64, access: Access, table: bool) -> (Result<Translation>, u32);

    /// A guest A/D update writes `gpa`: the host must allow the write (and
    /// sets its own A/D). The hardware reuses the translation the entry's
    /// read just made, so this costs no references and no cache lookups.
    fn host_write(&self, gpa: u64) -> Result<()>;
}

/// Host references a host walk that faulted made: one per level down to the fault.
pub fn faulted_refs(fmt: &dyn Format, fault: &Fault) -> u32 {
    match fault.level {
        Some(level) => (fmt.levels() - level) as u32,
        None => 0,
    }
}

impl HostWalk for PageTable {
    /// The uncached host walk, always as a user access (NPT and G-stage
    /// require it; EPT has no modes).
    fn host_walk(&self, gpa: u64, access: Access, _table: bool) -> (Result<Translation>, u32) {
        match self.walk(gpa, access, true) {
            Ok(t) => {
                let refs = t.memory_refs;
                (Ok(t), refs)
            }
            Err(Error::Fault(f)) => {
                let refs = faulted_refs(&**self.format(), &f);
                (Err(Error::Fault(f)), refs)
            }
            Err(e) => (Err(e), 0),
        }
    }

    fn host_write(&self, gpa: u64) -> Result<()> {
        self.walk(gpa, Access::Write, true).map(|_| ())
    }
}

/// `Ok` if `fmt` is a host (stage-2) format, else the `Config` error naming it.
pub(crate) fn check_host_format(fmt: &dyn Format) -> Result<()> {
    let name = fmt.name();
    if !(matches!(name, "ept" | "ept_5level" | "npt" | "sv39x4" | "sv48x4")
        || name.starts_with("aarch64_s2"))
    {
        return Err(Error::Config(format!(
            "the host table of a two-stage walk needs a host format (ept, ept_5level, npt, sv39x4, sv48x4, aarch64_s2), got {name}"
        )));
    }
    Ok(())
}

/// A successful two-stage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedTranslation {
    /// The guest walk: `va` the GVA, `pa` the GPA, `memory_refs` the guest entries read.
    pub guest: Translation,
    /// The host walk of the final GPA: `pa` the HPA.
    pub host: Translation,
    /// Guest page-table entries read.
    pub guest_refs: u32,
    /// Host page-table entries read, for the guest's entries and the final GPA.
    pub host_refs: u32,
}

impl NestedTranslation {
    /// The host-physical address.
    pub fn hpa(&self) -> u64 {
        self.host.pa
    }
    /// The guest-physical address.
    pub fn gpa(&self) -> u64 {
        self.guest.pa
    }
    /// The size of the GVA->HPA mapping a TLB may cache: the smaller of the two pages.
    pub fn page_size(&self) -> u64 {
        self.guest.page_size.min(self.host.page_size)
    }
    /// Every reference of the walk.
    pub fn memory_refs(&self) -> u32 {
        self.guest_refs + self.host_refs
    }
    /// Rights both stages grant.
    pub fn perms(&self) -> Perm {
        self.guest.perms & self.host.perms
    }
    /// The GVA->HPA translation as one stage-1-shaped [`Translation`] (the
    /// page is the smaller of the two; `memory_refs` counts both dimensions).
    pub fn combined(&self) -> Translation {
        let size = self.page_size();
        let gva = self.guest.va;
        Translation {
            va: gva,
            pa: self.host.pa,
            page_size: size,
            perms: self.perms(),
            user: self.guest.user,
            global: self.guest.global,
            dirty: self.guest.dirty && self.host.dirty,
            memory_refs: self.memory_refs(),
            level: self.guest.level.min(self.host.level),
            pte_pa: self.guest.pte_pa,
        }
    }
}

/// References one two-stage walk made, successful or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NestedRefs {
    /// Guest page-table entries read.
    pub guest: u32,
    /// Host page-table entries read.
    pub host: u32,
}

/// A guest table over a host table.
#[derive(Debug, Clone)]
pub struct TwoStage {
    guest: Arc<PageTable>,
    host: Arc<PageTable>,
}

/// Where a two-stage walk reads guest page-table entries.
#[derive(Clone, Copy)]
enum PteSource<'a> {
    /// At the GPA in a memory indexed by GPA (a VMM's memslot view of guest RAM).
    Memslot(&'a PhysMem),
    /// At the HPA the host walk gave, in host memory (a guest table on
    /// [`GuestMemory`](crate::paging::GuestMemory)): a host remap is seen by the next walk.
    Host(&'a PhysMem),
}

/// The guest-physical memory one walk reads: each load is host-translated first.
struct NestedView<'a> {
    source: PteSource<'a>,
    /// The last entry loaded, `(gpa, hpa)`: its A/D update writes the same HPA.
    last: Mutex<(u64, u64)>,
    host: &'a dyn HostWalk,
    table_access: Access,
    gva: u64,
    user: bool,
    guest_reads: AtomicU32,
    host_refs: AtomicU32,
    /// The host fault (or error) that made a load return `None`.
    stopped: Mutex<Option<Error>>,
}

/// A host fault as the fault of the two-stage walk of `gva`.
fn host_fault(f: Fault, gva: u64, user: bool, gpa: u64, table: bool) -> Error {
    Error::Fault(Fault {
        va: gva,
        user,
        stage: Some(Stage::Host { gpa, table }),
        ..f
    })
}

impl NestedView<'_> {
    fn translate(&self, gpa: u64, access: Access) -> Result<Translation> {
        let (r, refs) = self.host.host_walk(gpa, access, true);
        self.host_refs.fetch_add(refs, Ordering::Relaxed);
        r.map_err(|e| match e {
            Error::Fault(f) => host_fault(f, self.gva, self.user, gpa, true),
            other => other,
        })
    }
}

impl PteMemory for NestedView<'_> {
    fn load_u64(&self, gpa: u64) -> Option<u64> {
        match self.translate(gpa, self.table_access) {
            Ok(t) => {
                let pte = match self.source {
                    PteSource::Memslot(mem) => mem.load_u64(gpa)?,
                    PteSource::Host(mem) => {
                        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (gpa, t.pa);
                        mem.load_u64(t.pa)?
                    }
                };
                self.guest_reads.fetch_add(1, Ordering::Relaxed);
                Some(pte)
            }
            Err(e) => {
                *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        }
    }

    /// A guest A/D update is a guest-physical write: the host must allow it
    /// (it sets the host's A/D too). Its translation is the one the load just
    /// made, so it costs no further references.
    fn cas_u64(&self, gpa: u64, old: u64, new: u64) -> Result<bool> {
        self.host.host_write(gpa).map_err(|e| match e {
            Error::Fault(f) => host_fault(f, self.gva, self.user, gpa, true),
            other => other,
        })?;
        match self.source {
            PteSource::Memslot(mem) => mem.cas_u64(gpa, old, new),
            PteSource::Host(mem) => {
                let (last_gpa, hpa) = *self.last.lock().unwrap_or_else(|p| p.into_inner());
                let hpa = if last_gpa == gpa {
                    hpa
                } else {
                    // Not the entry just read (no walk does this): translate it, uncounted.
                    let (t, _) = self.host.host_walk(gpa, Access::Write, true);
                    t.map_err(|e| match e {
                        Error::Fault(f) => host_fault(f, self.gva, self.user, gpa, true),
                        other => other,
                    })?
                    .pa
                };
                mem.cas_u64(hpa, old, new)
            }
        }
    }
}

impl TwoStage {
    /// `guest` translated through `host`; the host format must be a stage-2 one.
    pub fn new(guest: Arc<PageTable>, host: Arc<PageTable>) -> Result<TwoStage> {
        check_host_format(&**host.format())?;
        if let Backing::Guest(gm) = guest.backing() {
            if !Arc::ptr_eq(gm.host(), &host) {
                return Err(Error::Config(format!(
                    "the guest table (root {:#x}) lives in the guest memory of another host table ({:?}), not of {:?}",
                    guest.root(),
                    gm.host(),
                    host
                )));
            }
        }
        Ok(TwoStage { guest, host })
    }

    /// The guest table (GVA -> GPA).
    pub fn guest(&self) -> &Arc<PageTable> {
        &self.guest
    }

    /// The host table (GPA -> HPA).
    pub fn host(&self) -> &Arc<PageTable> {
        &self.host
    }

    /// The uncached two-stage walk of `gva`.
    pub fn walk(&self, gva: u64, access: Access, user: bool) -> Result<NestedTranslation> {
        self.walk_via(gva, access, user, &*self.host).0
    }

    /// The two-stage walk with host walks answered by `host` (caches in front
    /// of the host table), and the references it made whatever the outcome.
    pub fn walk_via(
        &self,
        gva: u64,
        access: Access,
        user: bool,
        host: &dyn HostWalk,
    ) -> (Result<NestedTranslation>, NestedRefs) {
        let table_access = self.host.format().nested_table_access();
        walk_nested(&self.guest, table_access, gva, access, user, host)
    }
}

/// The two-stage walk of `gva` through `guest`, every GPA translated by
/// `host`; `table_access` is the host format's
/// [`nested_table_access`](Format::nested_table_access).
pub fn walk_nested(
    guest: &PageTable,
    table_access: Access,
    gva: u64,
    access: Access,
    user: bool,
    host: &dyn HostWalk,
) -> (Result<NestedTranslation>, NestedRefs) {
    let source = match guest.backing() {
        Backing::Phys(mem) => PteSource::Memslot(mem),
        Backing::Guest(gm) => PteSource::Host(gm.host_memory()),
    };
    let view = NestedView {
        source,
        last: Mutex::new((u64::MAX, 0)),
        host,
        table_access,
        gva,
        user,
        guest_reads: AtomicU32::new(0),
        host_refs: AtomicU32::new(0),
        stopped: Mutex::new(None),
    };
    let result = guest.walk_on(&view, gva, access, user);
    let mut refs = NestedRefs {
        guest: view.guest_reads.load(Ordering::Relaxed),
        host: view.host_refs.load(Ordering::Relaxed),
    };
    let stopped = view
        .stopped
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let gt = match result {
        Ok(t) => t,
        Err(Error::Fault(f)) => {
            // A load the host refused ends the guest walk as a table
            // outside memory: the host's fault is the real one. A refused
            // A/D write comes back already staged.
            let stage = f.stage.or(Some(Stage::Guest));
            let err = stopped.unwrap_or(Error::Fault(Fault { stage, ..f }));
            return (Err(err), refs);
        }
        Err(e) => return (Err(e), refs),
    };
    let (ht, host_refs) = host.host_walk(gt.pa, access, false);
    refs.host += host_refs;
    let ht = match ht {
        Ok(t) => t,
        Err(Error::Fault(f)) => return (Err(host_fault(f, gva, user, gt.pa, false)), refs),
        Err(e) => return (Err(e), refs),
    };
    (
        Ok(NestedTranslation {
            guest: gt,
            host: ht,
            guest_refs: refs.guest,
            host_refs: refs.host,
        }),
        refs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Ept, FaultCause, Npt, X86_64};

    const MIB: u64 = 1 << 20;
    const HOST_OFFSET: u64 = 128 * MIB;

    /// A guest of `guest_levels` x86 levels over `host`, the host mapping
    /// guest RAM [0, 64 MiB) at HPA + 128 MiB with 4 KiB pages.
    fn setup(guest_levels: i64, host: Arc<dyn Format>) -> TwoStage {
        let gmem = Arc::new(PhysMem::new(64 * MIB, 0, None).unwrap());
        let hmem = Arc::new(PhysMem::new(256 * MIB, 0, None).unwrap());
        let gfmt = Arc::new(X86_64::new(guest_levels, 46, true, true, false, false).unwrap());
        let guest = Arc::new(PageTable::new(gmem, gfmt, None).unwrap());
        let host = Arc::new(PageTable::new(hmem, host, None).unwrap());
        TwoStage::new(guest, host).unwrap()
    }

    fn host_map_all(ts: &TwoStage, perms: Perm) {
        for gpa in (0..64 * MIB).step_by(4096) {
            ts.host()
                .map(gpa, gpa + HOST_OFFSET, 4096, perms, true, false)
                .unwrap();
        }
    }

    fn fault(r: Result<NestedTranslation>) -> Fault {
        match r {
            Err(Error::Fault(f)) => f,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn uncached_reference_counts_are_n_plus_1_times_m_plus_1_minus_1() {
        let hosts: [(i64, Arc<dyn Format>, u32); 3] = [
            (4, Arc::new(Ept::new(4, 46, false).unwrap()), 24),
            (5, Arc::new(Ept::new(5, 46, true).unwrap()), 35),
            (4, Arc::new(Npt::new(46).unwrap()), 24),
        ];
        for (levels, host, want) in hosts {
            let ts = setup(levels, host);
            host_map_all(&ts, Perm::RWX);
            let gva = 0x7F00_1234_5000 & ((1u64 << 47) - 1);
            ts.guest()
                .map(gva, 0x30_0000, 4096, Perm::R | Perm::W, true, false)
                .unwrap();
            let t = ts.walk(gva + 0x18, Access::Read, true).unwrap();
            assert_eq!(t.memory_refs(), want, "{}", ts.host().format().name());
            assert_eq!(
                (t.guest_refs, t.host_refs),
                (levels as u32, want - levels as u32)
            );
            assert_eq!((t.gpa(), t.hpa()), (0x30_0018, 0x30_0018 + HOST_OFFSET));
            assert_eq!(t.page_size(), 4096);
        }
    }

    #[test]
    fn host_faults_name_the_gpa_and_whether_a_table_was_read() {
        let ts = setup(4, Arc::new(Ept::new(4, 46, false).unwrap()));
        host_map_all(&ts, Perm::RWX);
        let gva = 0x40_0000;
        ts.guest()
            .map(gva, 0x50_0000, 4096, Perm::R | Perm::W, false, false)
            .unwrap();
        // The final GPA unmapped in the host: a host fault on the final access.
        ts.host().unmap(0x50_0000, 4096).unwrap();
        let f = fault(ts.walk(gva + 8, Access::Write, false));
        assert_eq!(
            f.stage,
            Some(Stage::Host {
                gpa: 0x50_0008,
                table: false
            })
        );
        assert_eq!(
            (f.va, f.cause, f.level),
            (gva + 8, FaultCause::NotPresent, Some(0))
        );
        // The guest root's frame unmapped: a host fault on a guest table read.
        let root = ts.guest().root();
        ts.host().unmap(root, 4096).unwrap();
        let (r, refs) = ts.walk_via(gva, Access::Read, false, &**ts.host());
        let f = fault(r);
        let pml4e = root + (gva >> 39 & 0x1FF) * 8;
        assert_eq!(
            f.stage,
            Some(Stage::Host {
                gpa: pml4e,
                table: true
            })
        );
        assert_eq!(refs, NestedRefs { guest: 0, host: 4 });
        assert!(
            f.to_string().contains("host stage, guest table entry"),
            "{f}"
        );
        // A guest fault is staged as such.
        ts.host()
            .map(root, root + HOST_OFFSET, 4096, Perm::RWX, true, false)
            .unwrap();
        let f = fault(ts.walk(0x7000_0000, Access::Read, false));
        assert_eq!(
            (f.stage, f.cause),
            (Some(Stage::Guest), FaultCause::NotPresent)
        );
    }

    #[test]
    fn accessed_and_dirty_bits_are_set_in_both_dimensions() {
        let ts = setup(4, Arc::new(Ept::new(4, 46, true).unwrap()));
        host_map_all(&ts, Perm::RWX);
        let gva = 0x40_0000;
        ts.guest()
            .map(gva, 0x50_0000, 4096, Perm::R | Perm::W, false, false)
            .unwrap();
        ts.walk(gva, Access::Write, false).unwrap();
        let g = ts.guest().lookup(gva).unwrap();
        assert!(g.accessed && g.dirty, "guest leaf A/D");
        let h = ts.host().lookup(0x50_0000).unwrap();
        assert!(h.accessed && h.dirty, "host leaf of the data A/D");
        // With EPT A/D the guest's table pages are written too (their A/D updates).
        let hroot = ts.host().lookup(ts.guest().root()).unwrap();
        assert!(hroot.accessed && hroot.dirty);
        // A host page without W under a guest table: the guest's A/D update faults in the host.
        let ts = setup(4, Arc::new(Ept::new(4, 46, false).unwrap()));
        host_map_all(&ts, Perm::R | Perm::X);
        ts.guest()
            .map(gva, 0x50_0000, 4096, Perm::R, false, false)
            .unwrap();
        let f = fault(ts.walk(gva, Access::Read, false));
        assert_eq!(f.cause, FaultCause::Protection);
        assert!(matches!(f.stage, Some(Stage::Host { table: true, .. })));
    }

    #[test]
    fn a_host_table_needs_a_host_format() {
        let gmem = Arc::new(PhysMem::new(MIB, 0, None).unwrap());
        let fmt = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
        let a = Arc::new(PageTable::new(gmem.clone(), fmt.clone(), None).unwrap());
        let b = Arc::new(PageTable::new(gmem, fmt, None).unwrap());
        let err = TwoStage::new(a, b).unwrap_err();
        assert!(err.to_string().contains("got x86_64"), "{err}");
    }
}
