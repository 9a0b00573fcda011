//! Guest-physical memory: the memory a host (stage-2) table maps.
//!
//! [`GuestMemory`] is `[base, base + size)` of guest-physical addresses
//! (GPAs) seen through a host [`PageTable`] (EPT, NPT, G-stage) and the host
//! memory that table's pages point into. Every read, write and
//! compare-exchange walks the host table first, as the CPU's nested walker
//! does: a user access (NPT and the G-stage require it; EPT has no modes),
//! reads needing the read right and writes the write right, and the host
//! table's A/D bits set as hardware sets them (A on any access, D on a
//! write, when the host table updates A/D). It then touches the bytes at the
//! host-physical address (HPA) in host memory. Nothing is cached: a host
//! unmap, remap or protect is seen by the next access. A GPA the host does
//! not map, or maps without the right, is a host-stage [`Fault`] naming the
//! GPA. An access that crosses host pages translates each page, all of them
//! before the first byte moves.
//!
//! It is a [`TableMemory`], so a guest [`PageTable`] is built or attached on
//! it: its walks read guest PTEs through the host, its edits write them
//! through the host. Frames for the guest's tables (and `install`ed pages)
//! come from a buddy allocator over the GPA range, which the host must map
//! whole when the memory is made ([`PageTable::guest_memory`]): a VM's RAM
//! is backed before it runs; backing on demand (an EPT violation handler) is
//! the hypervisor's policy, not modelled here.
//!
//! State: the host table and host memory hold every byte and translation;
//! the only state here is the allocator of guest frames.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{format_size, Error, Result};
use crate::memory::{BuddyAllocator, PhysMem, PteMemory, FRAME_SHIFT, FRAME_SIZE};
use crate::paging::tablemem::TableMemory;
use crate::paging::{Access, Fault, PageTable, Stage, Translation};

/// Guest-physical memory `[base, base + size)` translated by a host table.
pub struct GuestMemory {
    host: Arc<PageTable>,
    hmem: Arc<PhysMem>,
    base: u64,
    size: u64,
    frames: Mutex<BuddyAllocator>,
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GuestMemory({} at {:#x} over {:?})",
            format_size(self.size),
            self.base,
            self.host
        )
    }
}

/// A host fault on the GPA `gpa` as the error of a guest-physical access.
fn host_fault(f: Fault, gpa: u64) -> Error {
    Error::Fault(Fault {
        va: gpa,
        stage: Some(Stage::Host { gpa, table: false }),
        ..f
    })
}

impl GuestMemory {
    /// `[base, base + size)` of `host`'s GPAs; `host` must map all of it
    /// (see [`PageTable::guest_memory`], which checks that and the format).
    pub(crate) fn new(
        host: Arc<PageTable>,
        hmem: Arc<PhysMem>,
        base: u64,
        size: u64,
    ) -> Result<GuestMemory> {
        let frames = BuddyAllocator::new(base >> FRAME_SHIFT, size >> FRAME_SHIFT, 18, None)?;
        Ok(GuestMemory {
            host,
            hmem,
            base,
            size,
            frames: Mutex::new(frames),
        })
    }

    /// The host table (GPA -> HPA).
    pub fn host(&self) -> &Arc<PageTable> {
        &self.host
    }
    /// The host memory the host table's leaves point into.
    pub fn host_memory(&self) -> &Arc<PhysMem> {
        &self.hmem
    }
    /// Bytes of guest-physical memory.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock_frames(&self) -> MutexGuard<'_, BuddyAllocator> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host walk of `gpa` for `access`, as the nested walker makes it.
    pub fn translate(&self, gpa: u64, access: Access) -> Result<Translation> {
        self.host.walk(gpa, access, true).map_err(|e| match e {
            Error::Fault(f) => host_fault(f, gpa),
            other => other,
        })
    }

    /// `Ok` if `[gpa, gpa + n)` is inside this memory, else the error naming both ranges.
    pub fn check(&self, gpa: u64, n: u64) -> Result<()> {
        if TableMemory::contains(self, gpa, n) {
            return Ok(());
        }
        Err(Error::PhysicalAccess(format!(
            "guest-physical access [{gpa:#x}, {:#x}) is outside guest memory [{:#x}, {:#x})",
            gpa as u128 + n as u128,
            self.base,
            self.base as u128 + self.size as u128
        )))
    }

    fn check_word(&self, gpa: u64) -> Result<()> {
        if gpa & 7 != 0 {
            return Err(Error::Address(format!(
                "64-bit access at guest-physical {gpa:#x} is not 8-byte aligned"
            )));
        }
        self.check(gpa, 8)
    }

    /// `(hpa, length)` pieces of `[gpa, gpa + n)`, each host page translated for `access`.
    fn pieces(&self, gpa: u64, n: u64, access: Access) -> Result<Vec<(u64, u64)>> {
        self.check(gpa, n)?;
        let mut out = Vec::new();
        let mut pos = 0u64;
        while pos < n {
            let t = self.translate(gpa + pos, access)?;
            let chunk = (t.page_size - (t.va & (t.page_size - 1))).min(n - pos);
            out.push((t.pa, chunk));
            pos += chunk;
        }
        Ok(out)
    }

    /// Zero `[gpa, gpa + n)` through the host.
    fn zero(&self, gpa: u64, n: u64) -> Result<()> {
        for (hpa, k) in self.pieces(gpa, n, Access::Write)? {
            self.hmem.zero(hpa, k)?;
        }
        Ok(())
    }
}

impl PteMemory for GuestMemory {
    /// The word at `gpa` after a host read walk; `None` (a table outside
    /// memory, to a one-stage walk) if the host refuses it.
    fn load_u64(&self, gpa: u64) -> Option<u64> {
        if gpa & 7 != 0 || !TableMemory::contains(self, gpa, 8) {
            return None;
        }
        let t = self.translate(gpa, Access::Read).ok()?;
        self.hmem.load_u64(t.pa)
    }

    fn cas_u64(&self, gpa: u64, old: u64, new: u64) -> Result<bool> {
        self.check_word(gpa)?;
        let t = self.translate(gpa, Access::Write)?;
        self.hmem.cas_u64(t.pa, old, new)
    }
}

impl TableMemory for GuestMemory {
    fn base(&self) -> u64 {
        self.base
    }
    fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
    fn contains(&self, gpa: u64, n: u64) -> bool {
        self.base <= gpa && gpa as u128 + n as u128 <= self.base as u128 + self.size as u128
    }
    fn writable(&self) -> bool {
        self.hmem.writable()
    }
    fn read_u64(&self, gpa: u64) -> Result<u64> {
        self.check_word(gpa)?;
        let t = self.translate(gpa, Access::Read)?;
        self.hmem.read_u64(t.pa)
    }
    fn write_u64(&self, gpa: u64, value: u64) -> Result<()> {
        self.check_word(gpa)?;
        let t = self.translate(gpa, Access::Write)?;
        self.hmem.write_u64(t.pa, value)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let mut pos = 0usize;
        for (hpa, k) in self.pieces(gpa, buf.len() as u64, Access::Read)? {
            self.hmem.read(hpa, &mut buf[pos..pos + k as usize])?;
            pos += k as usize;
        }
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        for (hpa, k) in self.pieces(gpa, data.len() as u64, Access::Write)? {
            self.hmem.write(hpa, &data[pos..pos + k as usize])?;
            pos += k as usize;
        }
        Ok(())
    }
    fn frame_is_zero(&self, gpa: u64) -> Result<bool> {
        let frame = gpa & !(FRAME_SIZE - 1);
        self.check(frame, FRAME_SIZE)?;
        let t = self.translate(frame, Access::Read)?;
        self.hmem.frame_is_zero(t.pa)
    }
    fn alloc_granule(&self, size: u64) -> Result<u64> {
        match self.try_alloc_granule_on(&[0], size)? {
            Some((gpa, _)) => Ok(gpa),
            None => Err(Error::OutOfFrames {
                message: format!(
                    "out of guest memory: no free {} block in [{:#x}, {:#x}) ({} free)",
                    format_size(size),
                    self.base,
                    self.base as u128 + self.size as u128,
                    format_size(self.free_bytes())
                ),
                size,
                node: Some(0),
            }),
        }
    }
    fn free_granule(&self, gpa: u64, size: u64) -> Result<()> {
        let order = PhysMem::granule_order(size, "free")?;
        self.check(gpa, size)?;
        self.lock_frames().free(gpa >> FRAME_SHIFT, order)?;
        self.zero(gpa, size)
    }
    fn try_alloc_granule_on(&self, nodes: &[u32], size: u64) -> Result<Option<(u64, u32)>> {
        let order = PhysMem::granule_order(size, "block")?;
        for &node in nodes {
            if node != 0 {
                return Err(Error::Config(format!(
                    "node {node} does not exist (guest memory is one node, 0)"
                )));
            }
            let pfn = {
                let mut frames = self.lock_frames();
                if frames.free_pages() < 1 << order {
                    continue;
                }
                match frames.alloc(order) {
                    Ok(pfn) => pfn,
                    Err(Error::OutOfFrames { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            let gpa = pfn << FRAME_SHIFT;
            if let Err(e) = self.zero(gpa, size) {
                let _ = self.lock_frames().free(pfn, order);
                return Err(e);
            }
            return Ok(Some((gpa, 0)));
        }
        Ok(None)
    }
    fn free_bytes(&self) -> u64 {
        self.lock_frames().free_pages() << FRAME_SHIFT
    }
}

impl PageTable {
    /// The guest-physical memory `[base, base + size)` this host table maps
    /// (`size` `None`: up to the first GPA it does not map).
    ///
    /// The table must have a host format and live in physical memory, and
    /// must map every page of the range now (with any rights: each access
    /// checks its own); a guest table is then built on the result with
    /// [`PageTable::new_in`] / [`attach_in`](PageTable::attach_in).
    pub fn guest_memory(
        self: &Arc<Self>,
        base: u64,
        size: Option<u64>,
    ) -> Result<Arc<GuestMemory>> {
        crate::paging::twostage::check_host_format(&**self.format())?;
        let hmem = Arc::clone(self.phys_memory("guest_memory()")?);
        let limit = 1u128 << self.format().va_bits();
        let mask = FRAME_SIZE - 1;
        if base & mask != 0 || size.is_some_and(|s| s == 0 || s & mask != 0) {
            return Err(Error::Address(format!(
                "guest memory must be a non-empty 4 KiB aligned range, got base {base:#x}, size {}",
                size.map_or("None".into(), |s| s.to_string())
            )));
        }
        // The end of the run of mapped GPAs from `base` (mappings come in GPA order).
        let want = size.map_or(limit, |s| base as u128 + s as u128);
        let mut covered = base as u128;
        for m in self.mappings() {
            let (lo, hi) = (m.va as u128, m.va as u128 + m.size as u128);
            if m.recursive || hi <= covered {
                continue;
            }
            if lo > covered || covered >= want {
                break;
            }
            covered = hi;
        }
        let end = covered.min(want);
        if (end < want && size.is_some()) || end == base as u128 {
            return Err(Error::Mapping(format!(
                "guest memory [{base:#x}, {want:#x}): the host {} table does not map {end:#x}",
                self.format().name()
            )));
        }
        if end > limit {
            return Err(Error::Address(format!(
                "guest memory [{base:#x}, {end:#x}) is past the host's {}-bit guest-physical space",
                self.format().va_bits()
            )));
        }
        let size = (end - base as u128) as u64;
        Ok(Arc::new(GuestMemory::new(
            Arc::clone(self),
            hmem,
            base,
            size,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Backing, Ept, FaultCause, Format, Perm, TwoStage, X86_64};

    const MIB: u64 = 1 << 20;
    /// Host memory [64 MiB, 128 MiB); guest RAM GPA [0, 16 MiB) at HPA 96 MiB + GPA.
    const HPA: u64 = 96 * MIB;

    fn host(ad: bool) -> Arc<PageTable> {
        let hmem = Arc::new(PhysMem::new(64 * MIB, 64 * MIB, None).unwrap());
        let fmt: Arc<dyn Format> = Arc::new(Ept::new(4, 46, ad).unwrap());
        let host = Arc::new(PageTable::new(hmem, fmt, None).unwrap());
        host.map_range(0, HPA, 16 * MIB, 4096, Perm::RWX, true, false)
            .unwrap();
        host
    }

    fn fault(r: Result<impl fmt::Debug>) -> Fault {
        match r {
            Err(Error::Fault(f)) => f,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    #[test]
    fn bytes_go_to_the_hpa_the_host_maps_and_follow_a_remap() {
        let host = host(false);
        let gm = host.guest_memory(0, None).unwrap();
        assert_eq!((gm.base(), gm.size()), (0, 16 * MIB));
        let hmem = Arc::clone(gm.host_memory());
        // GPA page 5 moved to a far HPA: a write across pages 4..5 splits there.
        host.remap(0x5000, HPA + 0x80_0000, 4096, None).unwrap();
        gm.write(0x4FFC, b"abcdefgh").unwrap();
        let mut buf = [0u8; 4];
        hmem.read(HPA + 0x4FFC, &mut buf).unwrap();
        assert_eq!(&buf, b"abcd");
        hmem.read(HPA + 0x80_0000, &mut buf).unwrap();
        assert_eq!(&buf, b"efgh");
        hmem.write_u64(HPA + 0x80_0008, 0x1122).unwrap();
        assert_eq!(TableMemory::read_u64(&*gm, 0x5008).unwrap(), 0x1122);
        assert_eq!(gm.load_u64(0x5008), Some(0x1122));
        // Remapped again: the next access sees the new frame, nothing stale.
        host.remap(0x5000, HPA + 0x5000, 4096, None).unwrap();
        assert_eq!(gm.load_u64(0x5008), Some(0));
        // Unmapped, then read-only: host faults naming the GPA.
        host.unmap(0x5000, 4096).unwrap();
        let f = fault(TableMemory::read_u64(&*gm, 0x5010));
        assert_eq!((f.va, f.cause), (0x5010, FaultCause::NotPresent));
        assert_eq!(
            f.stage,
            Some(Stage::Host {
                gpa: 0x5010,
                table: false
            })
        );
        assert!(f.to_string().contains("guest-physical 0x5010"), "{f}");
        assert_eq!(gm.load_u64(0x5010), None);
        host.protect(0x4000, 4096, Perm::R).unwrap();
        let f = fault(gm.write(0x4FF8, b"x"));
        assert_eq!((f.va, f.cause), (0x4FF8, FaultCause::Protection));
        assert!(gm.read(0x4FF8, &mut buf[..1]).is_ok());
        // A write across a refused page changes nothing.
        host.protect(0x4000, 4096, Perm::RWX).unwrap();
        host.map(0x5000, HPA + 0x5000, 4096, Perm::R, true, false)
            .unwrap();
        let before = TableMemory::read_u64(&*gm, 0x4FF8).unwrap();
        assert!(gm.write(0x4FF8, &[0xEE; 16]).is_err());
        assert_eq!(TableMemory::read_u64(&*gm, 0x4FF8).unwrap(), before);
        let err = TableMemory::read_u64(&*gm, 16 * MIB).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest-physical access [0x1000000, 0x1000008) is outside guest memory [0x0, 0x1000000)"
        );
    }

    #[test]
    fn host_a_and_d_are_set_as_the_nested_walker_sets_them() {
        let host = host(true);
        let gm = host.guest_memory(0, Some(MIB)).unwrap();
        let a = |gpa| {
            let l = host.lookup(gpa).unwrap();
            (l.accessed, l.dirty)
        };
        assert_eq!(a(0x3000), (false, false));
        TableMemory::read_u64(&*gm, 0x3000).unwrap();
        assert_eq!(a(0x3000), (true, false), "a read sets A only");
        gm.cas_u64(0x3000, 0, 7).unwrap();
        assert_eq!(a(0x3000), (true, true), "a write sets D");
    }

    #[test]
    fn a_guest_table_on_guest_memory_walks_at_the_hpas_the_host_gives() {
        let host = host(false);
        let gm = host.guest_memory(0, None).unwrap();
        let gfmt: Arc<dyn Format> = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
        let guest =
            Arc::new(PageTable::new_in(Backing::Guest(Arc::clone(&gm)), gfmt, None).unwrap());
        assert!(guest.root() < 16 * MIB, "the root is a guest frame");
        assert_eq!(gm.free_bytes(), 16 * MIB - 4096);
        let gva = 0x7F12_3456_7000u64;
        guest
            .map(gva, 0xA0_0000, 4096, Perm::R | Perm::W, true, false)
            .unwrap();
        assert_eq!(gm.free_bytes(), 16 * MIB - 4 * 4096);
        // The guest's PTEs are bytes in host memory at HPA = GPA + 96 MiB.
        let leaf = guest.lookup(gva).unwrap();
        let hmem = gm.host_memory();
        assert_eq!(hmem.read_u64(HPA + leaf.pte_pa).unwrap(), leaf.pte);
        let ts = TwoStage::new(Arc::clone(&guest), Arc::clone(&host)).unwrap();
        let t = ts.walk(gva + 0x18, Access::Write, true).unwrap();
        assert_eq!(
            (t.gpa(), t.hpa(), t.memory_refs()),
            (0xA0_0018, HPA + 0xA0_0018, 24)
        );
        assert!(
            guest.lookup(gva).unwrap().dirty,
            "guest D set through the host"
        );
        // The hypervisor moves the guest's leaf table to a copy that maps the page elsewhere.
        let table = leaf.pte_pa & !0xFFF;
        let copy = HPA + 12 * MIB;
        let mut bytes = vec![0u8; 4096];
        hmem.read(HPA + table, &mut bytes).unwrap();
        hmem.write(copy, &bytes).unwrap();
        let moved = guest.format().make_leaf(0xB0_0000, 0, Perm::R, true, false);
        hmem.write_u64(copy + (leaf.pte_pa & 0xFFF), moved).unwrap();
        host.remap(table, copy, 4096, None).unwrap();
        let t = ts.walk(gva, Access::Read, true).unwrap();
        assert_eq!(t.gpa(), 0xB0_0000, "the next walk reads the moved table");
        assert_eq!(guest.lookup(gva).unwrap().page_pa, 0xB0_0000);
        // Its table page unmapped in the host: a host fault on a guest table entry.
        host.unmap(table, 4096).unwrap();
        let f = fault(ts.walk(gva, Access::Read, true));
        assert_eq!(
            f.stage,
            Some(Stage::Host {
                gpa: leaf.pte_pa,
                table: true
            })
        );
        // ... and an edit of the guest table that needs it fails naming the GPA.
        let f = fault(guest.unmap(gva, 4096));
        assert_eq!(f.va, leaf.pte_pa);
        host.map(table, copy, 4096, Perm::RWX, true, false).unwrap();
        guest.unmap(gva, 4096).unwrap();
        guest.destroy().unwrap();
        assert_eq!(
            gm.free_bytes(),
            16 * MIB,
            "every guest table frame went back"
        );
    }

    #[test]
    fn guest_memory_needs_a_host_table_that_maps_the_whole_range() {
        let host = host(false);
        let err = host.guest_memory(8 * MIB, Some(16 * MIB)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest memory [0x800000, 0x1800000): the host ept table does not map 0x1000000"
        );
        host.unmap(0x3000, 4096).unwrap();
        assert_eq!(host.guest_memory(0, None).unwrap().size(), 0x3000);
        assert!(host.guest_memory(0x3000, None).is_err());
        assert!(host.guest_memory(0x10, Some(4096)).is_err());
        let x86 = PageTable::new(
            Arc::new(PhysMem::new(MIB, 0, None).unwrap()),
            Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap()),
            None,
        )
        .unwrap();
        let err = Arc::new(x86).guest_memory(0, None).unwrap_err();
        assert!(err.to_string().contains("needs a host format"), "{err}");
        // A guest table on one host's memory cannot be walked through another host.
        let gm = host.guest_memory(0, Some(0x3000)).unwrap();
        let gfmt: Arc<dyn Format> = Arc::new(X86_64::new(4, 46, true, true, false, false).unwrap());
        let guest = Arc::new(PageTable::new_in(Backing::Guest(gm), gfmt, None).unwrap());
        let err = TwoStage::new(Arc::clone(&guest), self::host(false)).unwrap_err();
        assert!(
            err.to_string()
                .contains("guest memory of another host table"),
            "{err}"
        );
        assert!(guest.phys_memory("install_page").is_err());
    }
}
