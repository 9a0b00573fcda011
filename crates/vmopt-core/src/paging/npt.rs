//! AMD nested paging (AMD64 APM Vol. 2, "Nested Paging"): the host tables
//! of SVM in the long-mode format, rooted at nCR3.
//!
//! Entries are x86-64 4-level PTEs bit for bit ([`X86_64`] does the walk);
//! what differs is that every nested walk is a user access (the APM: "all
//! nested page table accesses are treated as user accesses"), so a host
//! page must have U/S set at every level, and leaves this format writes
//! always do. GPAs are the lower canonical half (below 2^47).

use crate::error::Result;
use crate::memory::PteMemory;
use crate::paging::{Access, Format, LeafInfo, Perm, TableRights, Translation, X86_64};

/// The NPT format: long-mode entries walked as user accesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Npt {
    inner: X86_64,
}

impl Npt {
    /// NPT with host MAXPHYADDR `maxphyaddr` (36..=52); EFER.NXE=1 and CR0.WP=1 as on any host.
    pub fn new(maxphyaddr: i64) -> Result<Npt> {
        Ok(Npt {
            inner: X86_64::new(4, maxphyaddr, true, true, false, false)?,
        })
    }
}

impl Format for Npt {
    fn name(&self) -> &str {
        "npt"
    }
    fn levels(&self) -> u8 {
        4
    }
    fn va_bits(&self) -> u8 {
        48
    }
    fn pa_bits(&self) -> u8 {
        self.inner.pa_bits()
    }
    fn leaf_sizes(&self) -> &[(u8, u64)] {
        self.inner.leaf_sizes()
    }
    /// A GPA is a zero-extended address in the lower canonical half.
    fn is_canonical(&self, va: u64) -> bool {
        va >> 47 == 0
    }
    fn canonicalize(&self, va: u64) -> u64 {
        va & ((1u64 << 47) - 1)
    }
    pte_bits_of!(inner);
    /// Host pages are always user pages: the nested walk is a user access.
    fn make_leaf(&self, page_pa: u64, level: u8, perms: Perm, _user: bool, global: bool) -> u64 {
        self.inner.make_leaf(page_pa, level, perms, true, global)
    }
    /// Every nested access is a user access, whatever mode the guest is in.
    fn allows(&self, perms: Perm, page_user: bool, access: Access, _user: bool) -> bool {
        self.inner.allows(perms, page_user, access, true)
    }
    fn walk(
        &self,
        mem: &dyn PteMemory,
        root: u64,
        va: u64,
        access: Access,
        _user: bool,
        update_ad: bool,
    ) -> Result<Translation> {
        if !self.is_canonical(va) {
            // The inner walk would sign-extend; a GPA never is.
            return Err(crate::Error::Fault(crate::paging::Fault {
                va,
                access,
                cause: crate::paging::FaultCause::NonCanonical,
                level: None,
                user: true,
                stage: None,
                fsc: None,
            }));
        }
        self.inner.walk(mem, root, va, access, true, update_ad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::testmem::{fault_of, put, TestMem};
    use crate::paging::x86::US;
    use crate::paging::FaultCause;

    #[test]
    fn every_nested_walk_is_a_user_walk() {
        let f = Npt::new(46).unwrap();
        let mem = TestMem::new(64 << 20);
        let mut next = 0x2000;
        let leaf = f.make_leaf(0x8000, 0, Perm::R | Perm::W, false, false);
        assert_eq!(leaf & US, US, "host leaves are user pages");
        let pte_pa = put(&mem, &f, 0x1000, 0x5000, 0, leaf, &mut next);
        // A supervisor guest access still walks as a user: a U/S=0 host page faults.
        f.walk(&mem, 0x1000, 0x5000, Access::Write, false, false)
            .unwrap();
        mem.set(pte_pa, leaf & !US);
        let r = f.walk(&mem, 0x1000, 0x5000, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::Protection, Some(0)));
        let r = f.walk(&mem, 0x1000, 1 << 47, Access::Read, false, false);
        assert_eq!(fault_of(r), (FaultCause::NonCanonical, None));
    }
}
