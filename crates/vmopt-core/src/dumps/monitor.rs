//! QEMU's `info mem` and `info tlb` for x86-64 (4- and 5-level), walked as QEMU walks them.
//!
//! These follow QEMU's `target/i386/monitor.c` rule for rule, so their text
//! can be diffed with the monitor's: `info mem` merges consecutive ranges by
//! rights alone (user, writable: the AND of every level's U/W/P bits, NX
//! ignored), `info tlb` prints every leaf with its PTE masked to the frame
//! address and nine flag letters; table addresses are taken with QEMU's
//! mask (bits 12-49); the PS bit is honoured at the PDPT and PD levels only;
//! addresses print sign-extended from bit 47 (bit 56 with LA57). A table
//! QEMU would read outside RAM reads as zeros, as unassigned memory does in
//! QEMU. Unlike QEMU, the walk stops after `max_tables` tables (a self-map
//! makes QEMU read 512^4 entries), marking the listing truncated.
//!
//! QEMU's 5-level `info mem` (`mem_info_la57`) tests the present bit the
//! wrong way round at the PDPT and PD levels: it skips present entries and
//! descends into absent ones (through whatever address they hold, usually
//! page 0). [`MemWalk::La57Qemu`] does the same, so the text still diffs
//! equal; [`MemWalk::La57`] is the walk QEMU means.

use crate::memory::PteMemory;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
/// QEMU's mask for a table address (bits 12-49).
pub const TABLE_MASK: u64 = 0x3_ffff_ffff_f000;
/// QEMU's `info tlb` frame mask of a 1 GiB leaf.
pub const MASK_1G: u64 = 0x3_ffff_c000_0000;
/// QEMU's `info tlb` frame mask of a 2 MiB leaf.
pub const MASK_2M: u64 = 0x3_ffff_ffe0_0000;

/// One `info mem` line: `start-end size` and the rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemLine {
    /// First address, canonical.
    pub start: u64,
    /// One past the last address, canonical as QEMU prints it.
    pub end: u64,
    /// `end - start`, passed through QEMU's canonical form as it does.
    pub size: u64,
    /// User accessible (`u`).
    pub user: bool,
    /// Writable (`w`).
    pub write: bool,
}

/// One `info tlb` line: the page's address, its PTE masked to the frame, and the PTE itself for the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbLine {
    /// The page's virtual address, canonical.
    pub va: u64,
    /// The frame address QEMU prints (`pte & mask`).
    pub frame: u64,
    /// The PTE (PS cleared for a 4 KiB leaf, as QEMU prints it).
    pub pte: u64,
    /// The leaf's page size.
    pub page_size: u64,
}

impl MemLine {
    /// The line exactly as QEMU prints it.
    pub fn text(&self) -> String {
        format!(
            "{:016x}-{:016x} {:016x} {}r{}",
            self.start,
            self.end,
            self.size,
            if self.user { 'u' } else { '-' },
            if self.write { 'w' } else { '-' }
        )
    }
}

impl TlbLine {
    /// The line exactly as QEMU prints it.
    pub fn text(&self) -> String {
        let f = |bit: u32, c: char| if self.pte >> bit & 1 == 1 { c } else { '-' };
        format!(
            "{:016x}: {:016x} {}{}{}{}{}{}{}{}{}",
            self.va,
            self.frame,
            f(63, 'X'),
            f(8, 'G'),
            f(7, 'P'),
            f(6, 'D'),
            f(5, 'A'),
            f(4, 'C'),
            f(3, 'T'),
            f(2, 'U'),
            f(1, 'W')
        )
    }
}

/// Which of QEMU's `info mem` walks to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemWalk {
    /// 4-level paging (`mem_info_la48`).
    La48,
    /// 5-level paging, every level's present test as in `mem_info_la48`.
    La57,
    /// 5-level paging exactly as QEMU's `mem_info_la57`, its inverted PDPT/PD present tests included.
    La57Qemu,
}

/// Which listing, and its caps.
struct Walker<'a> {
    mem: &'a dyn PteMemory,
    la57: bool,
    qemu_la57: bool,
    tables: u64,
    max_tables: u64,
    max_lines: usize,
    truncated: bool,
    // info mem state
    start: Option<u64>,
    last_prot: u64,
    mem_lines: Vec<MemLine>,
    tlb_lines: Vec<TlbLine>,
}

impl Walker<'_> {
    fn canonical(&self, a: u64) -> u64 {
        let bit = if self.la57 { 56 } else { 47 };
        if a >> bit & 1 == 1 {
            a | (u64::MAX << (bit + 1))
        } else {
            a
        }
    }

    fn entry(&self, table: u64, i: u64) -> u64 {
        self.mem.load_u64(table + i * 8).unwrap_or(0)
    }

    fn full(&mut self) -> bool {
        if self.mem_lines.len() + self.tlb_lines.len() >= self.max_lines {
            self.truncated = true;
        }
        self.truncated
    }

    /// Count a table read; false (and truncated) past the cap.
    fn enter(&mut self) -> bool {
        self.tables += 1;
        if self.tables > self.max_tables {
            self.truncated = true;
        }
        !self.truncated
    }

    fn mem_print(&mut self, end: u64, prot: u64) {
        if prot == self.last_prot {
            return;
        }
        if let Some(start) = self.start {
            if !self.full() {
                let p = self.last_prot;
                self.mem_lines.push(MemLine {
                    start: self.canonical(start),
                    end: self.canonical(end),
                    size: self.canonical(end.wrapping_sub(start)),
                    user: p & US != 0,
                    write: p & RW != 0,
                });
            }
        }
        self.start = (prot != 0).then_some(end);
        self.last_prot = prot;
    }

    /// `info mem` over the table at `table` of `level` (5..1), VA base `base`, parents' AND `parents`.
    fn mem_level(&mut self, table: u64, level: u32, base: u64, parents: u64) {
        if !self.enter() {
            return;
        }
        for i in 0..512u64 {
            if self.truncated {
                return;
            }
            let e = self.entry(table, i);
            let va = base + (i << (12 + 9 * (level - 1)));
            if self.qemu_la57 && (level == 3 || level == 2) {
                // QEMU's mem_info_la57: present entries print as unmapped, absent ones are walked.
                if e & P != 0 {
                    self.mem_print(va, 0);
                } else if e & PS != 0 {
                    self.mem_print(va, e & (US | RW | P) & parents);
                } else {
                    self.mem_level(e & TABLE_MASK, level - 1, va, parents & e);
                }
            } else if e & P == 0 {
                self.mem_print(va, 0);
            } else if level == 1 || (level <= 3 && e & PS != 0) {
                self.mem_print(va, e & (US | RW | P) & parents);
            } else {
                self.mem_level(e & TABLE_MASK, level - 1, va, parents & e);
            }
        }
    }

    fn tlb_level(&mut self, table: u64, level: u32, base: u64) {
        if !self.enter() {
            return;
        }
        for i in 0..512u64 {
            if self.truncated {
                return;
            }
            let e = self.entry(table, i);
            if e & P == 0 {
                continue;
            }
            let va = base + (i << (12 + 9 * (level - 1)));
            let leaf = match level {
                3 if e & PS != 0 => Some((e, MASK_1G, 1u64 << 30)),
                2 if e & PS != 0 => Some((e, MASK_2M, 1 << 21)),
                1 => Some((e & !PS, TABLE_MASK, 1 << 12)),
                _ => None,
            };
            match leaf {
                Some((pte, mask, page_size)) => {
                    if !self.full() {
                        let va = self.canonical(va);
                        self.tlb_lines.push(TlbLine {
                            va,
                            frame: pte & mask,
                            pte,
                            page_size,
                        });
                    }
                }
                None => self.tlb_level(e & TABLE_MASK, level - 1, va),
            }
        }
    }
}

fn walker(mem: &dyn PteMemory, la57: bool, max_tables: u64, max_lines: usize) -> Walker<'_> {
    Walker {
        mem,
        la57,
        qemu_la57: false,
        tables: 0,
        max_tables,
        max_lines,
        truncated: false,
        start: None,
        last_prot: 0,
        mem_lines: Vec::new(),
        tlb_lines: Vec::new(),
    }
}

/// `info mem` of the tables at CR3 `cr3` walked as `how` says: the lines, and whether a cap stopped the walk.
pub fn info_mem(
    mem: &dyn PteMemory,
    cr3: u64,
    how: MemWalk,
    max_tables: u64,
    max_lines: usize,
) -> (Vec<MemLine>, bool) {
    let la57 = how != MemWalk::La48;
    let mut w = walker(mem, la57, max_tables, max_lines);
    w.qemu_la57 = how == MemWalk::La57Qemu;
    let levels = if la57 { 5 } else { 4 };
    w.mem_level(cr3 & TABLE_MASK, levels, 0, u64::MAX);
    if !w.truncated {
        w.mem_print(1u64 << (12 + 9 * levels), 0);
    }
    (w.mem_lines, w.truncated)
}

/// `info tlb` of the tables at CR3 `cr3`: the lines, and whether a cap stopped the walk.
pub fn info_tlb(
    mem: &dyn PteMemory,
    cr3: u64,
    la57: bool,
    max_tables: u64,
    max_lines: usize,
) -> (Vec<TlbLine>, bool) {
    let mut w = walker(mem, la57, max_tables, max_lines);
    let levels = if la57 { 5 } else { 4 };
    w.tlb_level(cr3 & TABLE_MASK, levels, 0);
    (w.tlb_lines, w.truncated)
}
