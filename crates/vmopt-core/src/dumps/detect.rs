//! Which reader a dump needs, from its first bytes.

use std::fmt;
use std::str::FromStr;

use crate::dumps::avml::AVML_MAGIC;
use crate::dumps::lime::LIME_MAGIC;

/// The dump formats vmopt reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DumpFormat {
    /// A raw image: physical address 0 is the first byte.
    Raw,
    /// A QEMU `dump-guest-memory` ELF core.
    Elf,
    /// A kdump-compressed file (makedumpfile, QEMU `-z`/`-l`/`-s`).
    Kdump,
    /// A kdump file in makedumpfile's flattened stream form.
    KdumpFlat,
    /// A LiME file.
    Lime,
    /// An AVML v2 file.
    Avml,
}

impl DumpFormat {
    /// Every format, in the order `--format` lists them.
    pub const ALL: [DumpFormat; 6] = [
        DumpFormat::Raw,
        DumpFormat::Elf,
        DumpFormat::Kdump,
        DumpFormat::KdumpFlat,
        DumpFormat::Lime,
        DumpFormat::Avml,
    ];

    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            DumpFormat::Raw => "raw",
            DumpFormat::Elf => "elf",
            DumpFormat::Kdump => "kdump",
            DumpFormat::KdumpFlat => "kdump-flat",
            DumpFormat::Lime => "lime",
            DumpFormat::Avml => "avml",
        }
    }

    /// The format whose magic `head` (the file's first bytes) starts with; raw if none.
    pub fn detect(head: &[u8]) -> DumpFormat {
        let word = head
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if head.starts_with(b"\x7fELF") {
            DumpFormat::Elf
        } else if head.starts_with(b"KDUMP   ") {
            DumpFormat::Kdump
        } else if head.starts_with(b"makedumpfile") {
            DumpFormat::KdumpFlat
        } else if word == Some(LIME_MAGIC) {
            DumpFormat::Lime
        } else if word == Some(AVML_MAGIC) {
            DumpFormat::Avml
        } else {
            DumpFormat::Raw
        }
    }
}

impl fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DumpFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DumpFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = DumpFormat::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown dump format {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_pick_their_reader_and_anything_else_is_raw() {
        assert_eq!(DumpFormat::detect(b"\x7fELF\x02\x01"), DumpFormat::Elf);
        assert_eq!(DumpFormat::detect(b"KDUMP   \x06"), DumpFormat::Kdump);
        assert_eq!(
            DumpFormat::detect(b"makedumpfile\0\0\0\0"),
            DumpFormat::KdumpFlat
        );
        assert_eq!(DumpFormat::detect(b"EMiL\x01\0\0\0"), DumpFormat::Lime);
        assert_eq!(DumpFormat::detect(b"AVML\x02\0\0\0"), DumpFormat::Avml);
        assert_eq!(DumpFormat::detect(&[0u8; 16]), DumpFormat::Raw);
        assert_eq!(DumpFormat::detect(b""), DumpFormat::Raw);
        for f in DumpFormat::ALL {
            assert_eq!(f.name().parse::<DumpFormat>(), Ok(f));
        }
        assert!("qcow2".parse::<DumpFormat>().unwrap_err().contains("qcow2"));
    }
}
