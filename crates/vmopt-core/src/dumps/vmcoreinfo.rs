//! VMCOREINFO: the `KEY=VALUE` lines the Linux kernel leaves for makedumpfile and crash.
//!
//! Symbols are run-time addresses (KASLR already applied), so a kernel-image
//! symbol's physical address is `va - __START_KERNEL_map + phys_base` on
//! x86-64 and `va - va_kernel_pa_offset` on RISC-V, as makedumpfile computes it.

/// Where the x86-64 kernel image is mapped (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Lines kept at most (the kernel writes about a hundred).
const MAX_LINES: usize = 4096;

/// The parsed lines of a VMCOREINFO note.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmcoreInfo {
    /// Each `KEY=VALUE` line in order.
    pub entries: Vec<(String, String)>,
}

impl VmcoreInfo {
    /// Parse the note's text; lines without `=` are skipped.
    pub fn parse(text: &str) -> VmcoreInfo {
        let entries = text
            .lines()
            .filter_map(|l| l.trim_end_matches('\0').split_once('='))
            .take(MAX_LINES)
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        VmcoreInfo { entries }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `SYMBOL(name)`: a hex address.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        parse_hex(self.get(&format!("SYMBOL({name})"))?)
    }

    /// `NUMBER(name)`: decimal, or hex with `0x` (RISC-V writes some so).
    pub fn number(&self, name: &str) -> Option<i128> {
        let v = self.get(&format!("NUMBER({name})"))?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok().map(i128::from),
            None => v.parse::<i128>().ok(),
        }
    }

    /// `KERNELOFFSET`: the KASLR slide, hex.
    pub fn kernel_offset(&self) -> Option<u64> {
        parse_hex(self.get("KERNELOFFSET")?)
    }

    /// `NUMBER(pgtable_l5_enabled)` as a bool.
    pub fn l5_enabled(&self) -> Option<bool> {
        self.number("pgtable_l5_enabled").map(|n| n != 0)
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}
