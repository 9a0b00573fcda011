//! An extent map: which file bytes (or zeros) hold each guest-physical range of an uncompressed dump.

use std::sync::Arc;

use crate::dumps::file::MappedFile;
use crate::error::Result;
use crate::memory::FrameSource;

/// One guest-physical range and where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    /// First physical address.
    pub pa: u64,
    /// Length in bytes (> 0).
    pub len: u64,
    /// File offset of its first byte, or `None` for zeros (an ELF `p_memsz` past `p_filesz`).
    pub file: Option<u64>,
    /// The record (segment, range) it came from, for messages.
    pub record: usize,
}

/// Sorted, disjoint extents over one mapped file.
pub(crate) struct ExtentMap {
    file: Arc<MappedFile>,
    extents: Vec<Extent>,
}

/// Two records that claim the same physical bytes.
pub(crate) struct Overlap {
    pub first: usize,
    pub second: usize,
    pub pa: u64,
}

impl ExtentMap {
    /// The map of `pieces` (each already checked to lie inside the file).
    ///
    /// Where pieces overlap, the one starting lower (then the earlier record)
    /// keeps the bytes if `allow_overlap`, else the overlap is returned.
    pub fn build(
        file: Arc<MappedFile>,
        mut pieces: Vec<Extent>,
        allow_overlap: bool,
    ) -> std::result::Result<ExtentMap, Overlap> {
        pieces.retain(|p| p.len > 0);
        pieces.sort_by_key(|p| (p.pa, p.record));
        let mut extents: Vec<Extent> = Vec::with_capacity(pieces.len());
        let mut covered: u128 = 0;
        let mut owner = 0usize;
        for p in pieces {
            let (start, end) = (u128::from(p.pa), u128::from(p.pa) + u128::from(p.len));
            if start < covered && !extents.is_empty() {
                if !allow_overlap {
                    return Err(Overlap {
                        first: owner,
                        second: p.record,
                        pa: p.pa,
                    });
                }
                if end <= covered {
                    continue;
                }
                let skip = (covered - start) as u64;
                extents.push(Extent {
                    pa: p.pa + skip,
                    len: p.len - skip,
                    file: p.file.map(|f| f + skip),
                    record: p.record,
                });
            } else {
                extents.push(p);
            }
            covered = end;
            owner = p.record;
        }
        Ok(ExtentMap { file, extents })
    }

    /// The index of the extent holding `pa`, if any.
    fn find(&self, pa: u64) -> Option<usize> {
        let i = self.extents.partition_point(|e| e.pa <= pa);
        let e = self.extents.get(i.checked_sub(1)?)?;
        (pa - e.pa < e.len).then_some(i - 1)
    }
}

impl FrameSource for ExtentMap {
    fn end(&self) -> u64 {
        self.extents
            .last()
            .map_or(0, |e| e.pa.saturating_add(e.len))
    }

    fn read_in_frame(&self, pa: u64, buf: &mut [u8]) -> Result<bool> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let cur = pa + pos as u64;
            let Some(i) = self.find(cur) else {
                return Ok(false);
            };
            let e = self.extents[i];
            let inside = cur - e.pa;
            let n = ((e.len - inside) as usize).min(buf.len() - pos);
            match e.file {
                None => buf[pos..pos + n].fill(0),
                Some(off) => match self.file.slice(off + inside, n as u64) {
                    Some(s) => buf[pos..pos + n].copy_from_slice(s),
                    None => return Ok(false),
                },
            }
            pos += n;
        }
        Ok(true)
    }

    fn ranges(&self) -> Vec<(u64, u64)> {
        self.coalesced(|_| true)
    }

    fn resident(&self) -> Vec<(u64, u64)> {
        self.coalesced(|e| e.file.is_some())
    }
}

impl ExtentMap {
    /// The extents `keep` accepts, adjacent ones merged.
    fn coalesced(&self, keep: impl Fn(&Extent) -> bool) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for e in self.extents.iter().filter(|e| keep(e)) {
            let end = e.pa.saturating_add(e.len);
            match out.last_mut() {
                Some(last) if last.1 == e.pa => last.1 = end,
                _ => out.push((e.pa, end)),
            }
        }
        out
    }
}
