//! A tiny [`PteMemory`] for format tests: a word map, and a hook that edits
//! memory just before the next compare-exchange, as a racing editor would.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::memory::PteMemory;

type Hook = Box<dyn FnOnce(&mut HashMap<u64, u64>) + Send>;

/// Words `[0, size)`, zero unless written.
pub(crate) struct TestMem {
    size: u64,
    words: Mutex<HashMap<u64, u64>>,
    before_cas: Mutex<Vec<Hook>>,
}

impl TestMem {
    pub(crate) fn new(size: u64) -> TestMem {
        TestMem {
            size,
            words: Mutex::new(HashMap::new()),
            before_cas: Mutex::new(Vec::new()),
        }
    }
    pub(crate) fn set(&self, pa: u64, value: u64) {
        self.words.lock().unwrap().insert(pa, value);
    }
    pub(crate) fn get(&self, pa: u64) -> u64 {
        self.load_u64(pa).unwrap()
    }
    /// Run `hook` on the words right before the next compare-exchange compares.
    pub(crate) fn before_next_cas(
        &self,
        hook: impl FnOnce(&mut HashMap<u64, u64>) + Send + 'static,
    ) {
        self.before_cas.lock().unwrap().push(Box::new(hook));
    }
}

impl PteMemory for TestMem {
    fn load_u64(&self, pa: u64) -> Option<u64> {
        if pa & 7 != 0 || pa.checked_add(8)? > self.size {
            return None;
        }
        Some(*self.words.lock().unwrap().get(&pa).unwrap_or(&0))
    }
    fn cas_u64(&self, pa: u64, old: u64, new: u64) -> Result<bool> {
        let hook = {
            let mut hooks = self.before_cas.lock().unwrap();
            if hooks.is_empty() {
                None
            } else {
                Some(hooks.remove(0))
            }
        };
        let mut words = self.words.lock().unwrap();
        if let Some(hook) = hook {
            hook(&mut words);
        }
        let cur = words.entry(pa).or_insert(0);
        if *cur == old {
            *cur = new;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

/// Write `leaf` for `va` at `level`, creating tables from `*next` (one granule each) as needed.
pub(crate) fn put(
    mem: &TestMem,
    fmt: &dyn crate::paging::Format,
    root: u64,
    va: u64,
    level: u8,
    leaf: u64,
    next: &mut u64,
) -> u64 {
    let mut table = root;
    for lvl in (level + 1..fmt.levels()).rev() {
        let pa = table + fmt.index(va, lvl) * 8;
        let pte = mem.get(pa);
        table = if fmt.is_valid(pte) {
            fmt.table_pa(pte)
        } else {
            let t = *next;
            *next += fmt.table_size(lvl - 1);
            mem.set(pa, fmt.make_table(t, lvl));
            t
        };
    }
    let pa = table + fmt.index(va, level) * 8;
    mem.set(pa, leaf);
    pa
}

/// The cause and level of a walk that must have faulted.
pub(crate) fn fault_of(
    r: Result<crate::paging::Translation>,
) -> (crate::paging::FaultCause, Option<u8>) {
    match r {
        Err(crate::Error::Fault(f)) => (f.cause, f.level),
        other => panic!("expected a fault, got {other:?}"),
    }
}
