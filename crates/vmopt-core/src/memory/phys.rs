//! Guest physical memory: sparse 4 KiB frames, or a mapped file image.
//!
//! Every word is accessed atomically (byte writes that cover part of a word
//! merge with a compare-exchange), so walkers on vCPU threads may set A/D
//! bits while another thread edits the tables, with no lock held across a
//! walk. Sparse frames live in a section index (as Linux's SPARSEMEM finds
//! pages) behind a read-write lock: lookups share it, and only the first write to a frame or the dropping of zeroed
//! frames takes it exclusively. A page walk takes the shared lock once for
//! all its PTEs ([`PteMemory::pinned`]), not once per PTE, and a batch of
//! translations once per span of walks.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::error::{format_size, Error, Result};
use crate::memory::buddy::BuddyAllocator;
use crate::memory::frames::{Frame, SparseFrames};
use crate::memory::source::FrameSource;
use crate::memory::{order_of_size, PteMemory};

/// log2 of the frame size.
pub const FRAME_SHIFT: u32 = 12;
/// Bytes in a frame.
pub const FRAME_SIZE: u64 = 1 << FRAME_SHIFT;
const FRAME_MASK: u64 = FRAME_SIZE - 1;

impl Frame {
    /// Store `data` at byte offset `off` of this frame (the range stays inside it).
    fn put(&self, off: usize, data: &[u8]) {
        if off % 8 == 0 && data.len() % 8 == 0 {
            // Whole words, the common case (page copies): one store per word, no read.
            let words = &self.0[off / 8..off / 8 + data.len() / 8];
            for (word, bytes) in words.iter().zip(data.chunks_exact(8)) {
                word.store(
                    u64::from_ne_bytes(bytes.try_into().expect("8 bytes")),
                    Ordering::Release,
                );
            }
        } else {
            put_words(off as u64, data, |w| &self.0[(w >> 3) as usize]);
        }
    }
}

/// How a file image is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageMode {
    /// Reads only; walks do not set A/D bits.
    ReadOnly,
    /// Writes go to the file.
    Writable,
    /// Writes stay in this process (a private mapping); the file is untouched.
    CopyOnWrite,
}

enum Store {
    Sparse(RwLock<SparseFrames>),
    ReadOnly(Mmap),
    Mapped(MmapMut),
    /// A dump's extents: read-only, with holes.
    Source(Arc<dyn FrameSource>),
}

/// The allocators of a memory: one per NUMA node (one for plain memory).
struct Nodes {
    allocators: Vec<Arc<Mutex<BuddyAllocator>>>,
    /// First physical address of each node.
    bases: Vec<u64>,
    /// Node order in which page-table pages (and plain `alloc`) are taken.
    table_order: RwLock<Vec<u32>>,
    numa: bool,
}

/// Byte-addressable guest physical memory `[base, base + size)`.
pub struct PhysMem {
    base: u64,
    size: u64,
    writable: bool,
    store: Store,
    nodes: OnceLock<Nodes>,
}

impl std::fmt::Debug for PhysMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_image() { "image" } else { "sparse" };
        write!(
            f,
            "PhysicalMemory({} at {:#x}, {kind})",
            format_size(self.size),
            self.base
        )
    }
}

/// Python's `repr()` of a string, for messages that quote paths.
pub(crate) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn check_geometry(size: u64, base: u64) -> Result<()> {
    if size == 0 || size & FRAME_MASK != 0 {
        return Err(Error::Config(format!(
            "memory size must be a positive multiple of 4096, got {size}"
        )));
    }
    if base & FRAME_MASK != 0 {
        return Err(Error::Config(format!(
            "memory base must be a non-negative multiple of 4096, got {base}"
        )));
    }
    // A range past the 64-bit space is refused by the allocator, in its words.
    Ok(())
}

impl PhysMem {
    /// Sparse memory of `size` bytes at `base`, with one allocator (tagged `node` in messages).
    pub fn new(size: u64, base: u64, node: Option<u32>) -> Result<PhysMem> {
        check_geometry(size, base)?;
        let buddy = BuddyAllocator::new(base >> FRAME_SHIFT, size >> FRAME_SHIFT, 18, node)?;
        let mem = PhysMem {
            base,
            size,
            writable: true,
            store: Store::Sparse(RwLock::new(SparseFrames::default())),
            nodes: OnceLock::new(),
        };
        let _ = mem.nodes.set(Nodes {
            allocators: vec![Arc::new(Mutex::new(buddy))],
            bases: vec![base],
            table_order: RwLock::new(vec![0]),
            numa: false,
        });
        Ok(mem)
    }

    /// Sparse NUMA memory: node `i` holds the `node_sizes[i]` bytes after node `i - 1`, from 0.
    pub fn new_numa(node_sizes: &[u64]) -> Result<PhysMem> {
        if node_sizes.is_empty() {
            return Err(Error::Config("NUMA memory needs at least one node".into()));
        }
        for &size in node_sizes {
            check_geometry(size, 0)?;
        }
        let total: u128 = node_sizes.iter().map(|&s| u128::from(s)).sum();
        if total > u128::from(u64::MAX) {
            // As the allocator of the whole range would say it.
            return Err(Error::Config(format!(
                "frames [0x0, {:#x}) exceed the 64-bit physical space",
                total >> FRAME_SHIFT
            )));
        }
        let mut allocators = Vec::with_capacity(node_sizes.len());
        let mut bases = Vec::with_capacity(node_sizes.len());
        let mut base = 0u64;
        for (node, &size) in node_sizes.iter().enumerate() {
            let buddy = BuddyAllocator::new(
                base >> FRAME_SHIFT,
                size >> FRAME_SHIFT,
                18,
                Some(node as u32),
            )?;
            allocators.push(Arc::new(Mutex::new(buddy)));
            bases.push(base);
            base += size;
        }
        let mem = PhysMem {
            base: 0,
            size: base,
            writable: true,
            store: Store::Sparse(RwLock::new(SparseFrames::default())),
            nodes: OnceLock::new(),
        };
        let _ = mem.nodes.set(Nodes {
            allocators,
            bases,
            table_order: RwLock::new(vec![0]),
            numa: true,
        });
        Ok(mem)
    }

    /// Memory backed by a raw image file, mapped, never loaded; physical address 0 is its first byte.
    ///
    /// The image's frames all belong to the guest, so its allocator starts
    /// with every frame in use; [`free`](Self::free) donates frames to it.
    pub fn from_file(path: &Path, mode: ImageMode) -> Result<PhysMem> {
        let shown = py_repr(&path.to_string_lossy());
        let open = |write: bool| OpenOptions::new().read(true).write(write).open(path);
        let file = open(mode == ImageMode::Writable).map_err(|e| {
            Error::Config(format!(
                "cannot open memory image {shown}: {}: {shown}",
                io_text(&e)
            ))
        })?;
        let len = file
            .metadata()
            .map_err(|e| Error::Config(format!("cannot stat {shown}: {}", io_text(&e))))?
            .len();
        if len == 0 || len & FRAME_MASK != 0 {
            return Err(Error::Config(format!(
                "memory image {shown} has {len} bytes; expected a positive multiple of 4096"
            )));
        }
        let map_err = |e: std::io::Error| {
            Error::Config(format!("cannot map memory image {shown}: {}", io_text(&e)))
        };
        let store = map_image(&file, mode).map_err(map_err)?;
        Ok(PhysMem {
            base: 0,
            size: len,
            writable: mode != ImageMode::ReadOnly,
            store,
            nodes: OnceLock::new(),
        })
    }

    /// Read-only memory whose bytes `source` supplies (a dump); physical address 0 is the dump's 0.
    ///
    /// Reads of a hole are refused as outside memory, and a page walk that
    /// reaches a table in a hole faults `table_outside_memory`.
    pub fn from_source(source: Arc<dyn FrameSource>) -> Result<PhysMem> {
        let end = source.end();
        if end == 0 {
            return Err(Error::Config("the dump holds no memory".into()));
        }
        let size = end
            .checked_add(FRAME_MASK)
            .map_or(!FRAME_MASK, |e| e & !FRAME_MASK);
        Ok(PhysMem {
            base: 0,
            size,
            writable: false,
            store: Store::Source(source),
            nodes: OnceLock::new(),
        })
    }

    /// The covered ranges `[start, end)` of memory with holes (a dump), else the whole memory.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        match &self.store {
            Store::Source(src) => src.ranges(),
            _ => vec![(self.base, self.end())],
        }
    }

    /// The word at aligned `pa` of a dump, `None` in a hole or an unreadable page.
    fn source_word(src: &dyn FrameSource, pa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        match src.read_in_frame(pa, &mut b) {
            Ok(true) => Some(u64::from_le_bytes(b)),
            _ => None,
        }
    }

    /// First physical address.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// One past the last physical address (saturating: memory may end at 2^64).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// One past the last physical address, exactly.
    fn end_exact(&self) -> u128 {
        u128::from(self.base) + u128::from(self.size)
    }
    /// False for a read-only image.
    pub fn writable(&self) -> bool {
        self.writable
    }
    /// True if backed by a file image.
    pub fn is_image(&self) -> bool {
        !matches!(self.store, Store::Sparse(_))
    }

    // -- checks ---------------------------------------------------------------------

    /// True if `[pa, pa + n)` lies inside this memory.
    pub fn contains(&self, pa: u64, n: u64) -> bool {
        self.base <= pa && u128::from(pa) + u128::from(n) <= self.end_exact()
    }

    /// `Ok` if `[pa, pa + n)` lies inside this memory, else the error naming both ranges.
    pub fn check(&self, pa: u64, n: u64) -> Result<()> {
        if self.contains(pa, n) {
            return Ok(());
        }
        Err(Error::PhysicalAccess(format!(
            "physical access [{pa:#x}, {:#x}) is outside memory [{:#x}, {:#x})",
            u128::from(pa) + u128::from(n),
            self.base,
            self.end_exact()
        )))
    }

    fn check_word(&self, pa: u64) -> Result<()> {
        if pa & 7 != 0 {
            return Err(Error::Address(format!(
                "64-bit access at {pa:#x} is not 8-byte aligned"
            )));
        }
        self.check(pa, 8)
    }

    // -- words ----------------------------------------------------------------------

    /// The raw word at checked, aligned `pa` (bytes in memory order).
    #[inline]
    fn load_raw(&self, pa: u64) -> u64 {
        match &self.store {
            Store::Sparse(frames) => {
                let frames = frames.read().unwrap_or_else(|e| e.into_inner());
                match frames.get(&(pa >> FRAME_SHIFT)) {
                    Some(f) => f.0[((pa & FRAME_MASK) >> 3) as usize].load(Ordering::Acquire),
                    None => 0,
                }
            }
            Store::ReadOnly(map) => {
                let off = (pa - self.base) as usize;
                u64::from_ne_bytes(map[off..off + 8].try_into().expect("8 bytes"))
            }
            Store::Mapped(map) => Self::mapped_word(map, pa - self.base).load(Ordering::Acquire),
            Store::Source(src) => Self::source_word(src.as_ref(), pa).map_or(0, u64::to_le),
        }
    }

    fn mapped_word(map: &MmapMut, off: u64) -> &AtomicU64 {
        debug_assert!(off & 7 == 0 && off + 8 <= map.len() as u64);
        // SAFETY: `off` is 8-aligned and inside the mapping (every caller checks the range
        // first), and the mapping is page-aligned, so the pointer is valid and aligned for
        // a u64 for as long as `map` is borrowed. Every access vmopt makes to a mapped image
        // goes through these atomics, so there is no mixed atomic/non-atomic access.
        unsafe { AtomicU64::from_ptr(map.as_ptr().add(off as usize) as *mut u64) }
    }

    /// Apply `f` to the atomic word at checked, aligned `pa` of writable memory,
    /// creating its frame if it has none and `create` says so.
    fn with_word<R>(&self, pa: u64, create: bool, f: impl FnOnce(Option<&AtomicU64>) -> R) -> R {
        match &self.store {
            Store::Sparse(frames) => {
                let pfn = pa >> FRAME_SHIFT;
                let idx = ((pa & FRAME_MASK) >> 3) as usize;
                {
                    let map = frames.read().unwrap_or_else(|e| e.into_inner());
                    if let Some(frame) = map.get(&pfn) {
                        return f(Some(&frame.0[idx]));
                    }
                    if !create {
                        return f(None);
                    }
                }
                let mut map = frames.write().unwrap_or_else(|e| e.into_inner());
                f(Some(&map.get_or_zeroed(pfn).0[idx]))
            }
            Store::Mapped(map) => f(Some(Self::mapped_word(map, pa - self.base))),
            Store::ReadOnly(_) | Store::Source(_) => {
                unreachable!("writes to read-only memory are refused before this")
            }
        }
    }

    fn refuse_write(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly(what()))
        }
    }

    /// The little-endian 64-bit word at 8-byte aligned `pa` (a PTE).
    pub fn read_u64(&self, pa: u64) -> Result<u64> {
        self.check_word(pa)?;
        if let Store::Source(_) = &self.store {
            let mut b = [0u8; 8];
            self.read(pa, &mut b)?;
            return Ok(u64::from_le_bytes(b));
        }
        Ok(u64::from_le(self.load_raw(pa)))
    }

    /// Store a little-endian 64-bit word at 8-byte aligned `pa`.
    pub fn write_u64(&self, pa: u64, value: u64) -> Result<()> {
        self.check_word(pa)?;
        self.refuse_write(|| format!("memory is read-only; 8-byte write at {pa:#x} refused"))?;
        self.with_word(pa, value != 0, |w| {
            if let Some(w) = w {
                w.store(value.to_le(), Ordering::Release);
            }
        });
        Ok(())
    }

    // -- bytes ----------------------------------------------------------------------

    /// Fill `buf` from `[pa, pa + buf.len())`.
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        self.check(pa, buf.len() as u64)?;
        if let Store::ReadOnly(map) = &self.store {
            let off = (pa - self.base) as usize;
            buf.copy_from_slice(&map[off..off + buf.len()]);
            return Ok(());
        }
        if let Store::Source(src) = &self.store {
            return read_source(src.as_ref(), pa, buf);
        }
        let mut pos = 0usize;
        while pos < buf.len() {
            let cur = pa + pos as u64;
            let off = cur & FRAME_MASK;
            let chunk = ((FRAME_SIZE - off) as usize).min(buf.len() - pos);
            self.read_in_frame(cur, &mut buf[pos..pos + chunk]);
            pos += chunk;
        }
        Ok(())
    }

    /// `buf` from one frame (the range does not cross a frame boundary).
    fn read_in_frame(&self, pa: u64, buf: &mut [u8]) {
        let word_bytes = |raw: u64, start: u64, out: &mut [u8]| {
            let bytes = raw.to_ne_bytes();
            let s = (start & 7) as usize;
            out.copy_from_slice(&bytes[s..s + out.len()]);
        };
        let read_words = |load: &dyn Fn(u64) -> u64, buf: &mut [u8]| {
            let mut pos = 0usize;
            while pos < buf.len() {
                let cur = pa + pos as u64;
                let n = ((8 - (cur & 7)) as usize).min(buf.len() - pos);
                word_bytes(load(cur & !7), cur, &mut buf[pos..pos + n]);
                pos += n;
            }
        };
        match &self.store {
            Store::Sparse(frames) => {
                let map = frames.read().unwrap_or_else(|e| e.into_inner());
                match map.get(&(pa >> FRAME_SHIFT)) {
                    None => buf.fill(0),
                    Some(frame) => read_words(
                        &|w| frame.0[((w & FRAME_MASK) >> 3) as usize].load(Ordering::Acquire),
                        buf,
                    ),
                }
            }
            Store::Mapped(map) => read_words(
                &|w| Self::mapped_word(map, w - self.base).load(Ordering::Acquire),
                buf,
            ),
            Store::ReadOnly(_) | Store::Source(_) => unreachable!("handled by read"),
        }
    }

    /// Write `data` at `pa`; refused whole, before any byte changes, if out of range or read-only.
    pub fn write(&self, pa: u64, data: &[u8]) -> Result<()> {
        let n = data.len() as u64;
        self.check(pa, n)?;
        self.refuse_write(|| {
            format!("memory is read-only; write of {n} bytes at {pa:#x} refused")
        })?;
        let mut pos = 0usize;
        while pos < data.len() {
            let cur = pa + pos as u64;
            let off = cur & FRAME_MASK;
            let chunk = ((FRAME_SIZE - off) as usize).min(data.len() - pos);
            self.write_in_frame(cur, &data[pos..pos + chunk]);
            pos += chunk;
        }
        Ok(())
    }

    fn write_in_frame(&self, pa: u64, data: &[u8]) {
        match &self.store {
            Store::Sparse(frames) => {
                let pfn = pa >> FRAME_SHIFT;
                {
                    let map = frames.read().unwrap_or_else(|e| e.into_inner());
                    if let Some(frame) = map.get(&pfn) {
                        frame.put((pa & FRAME_MASK) as usize, data);
                        return;
                    }
                }
                let mut map = frames.write().unwrap_or_else(|e| e.into_inner());
                if data.len() == FRAME_SIZE as usize && !map.contains_key(&pfn) {
                    map.insert_holding(pfn, data);
                } else {
                    map.get_or_zeroed(pfn).put((pa & FRAME_MASK) as usize, data);
                }
            }
            Store::Mapped(map) => put_words(pa, data, |w| Self::mapped_word(map, w - self.base)),
            Store::ReadOnly(_) | Store::Source(_) => {
                unreachable!("writes to read-only memory are refused before this")
            }
        }
    }

    /// True if the 4 KiB frame holding `pa` is all zeros.
    pub fn frame_is_zero(&self, pa: u64) -> Result<bool> {
        let start = pa & !FRAME_MASK;
        self.check(start, FRAME_SIZE)?;
        Ok(match &self.store {
            Store::Sparse(frames) => {
                let map = frames.read().unwrap_or_else(|e| e.into_inner());
                map.get(&(start >> FRAME_SHIFT))
                    .map_or(true, |f| f.0.iter().all(|w| w.load(Ordering::Acquire) == 0))
            }
            Store::ReadOnly(map) => {
                let off = (start - self.base) as usize;
                map[off..off + FRAME_SIZE as usize].iter().all(|&b| b == 0)
            }
            Store::Mapped(map) => (0..FRAME_SIZE).step_by(8).all(|o| {
                Self::mapped_word(map, start - self.base + o).load(Ordering::Acquire) == 0
            }),
            Store::Source(src) => {
                let mut buf = [0u8; FRAME_SIZE as usize];
                read_source(src.as_ref(), start, &mut buf)?;
                buf.iter().all(|&b| b == 0)
            }
        })
    }

    /// Zero `[pa, pa + n)`; whole sparse frames are dropped and cost nothing again.
    pub fn zero(&self, pa: u64, n: u64) -> Result<()> {
        self.check(pa, n)?;
        self.refuse_write(|| {
            format!("memory is read-only; write of {n} bytes at {pa:#x} refused")
        })?;
        // Exact arithmetic: memory may end at 2^64.
        let end = u128::from(pa) + u128::from(n);
        let Store::Sparse(frames) = &self.store else {
            let zeros = vec![0u8; FRAME_SIZE as usize];
            let mut cur = u128::from(pa);
            while cur < end {
                let k = (end - cur).min(u128::from(FRAME_SIZE - (cur as u64 & FRAME_MASK)));
                self.write(cur as u64, &zeros[..k as usize])?;
                cur += k;
            }
            return Ok(());
        };
        let mask = u128::from(FRAME_MASK);
        let head_end = end.min((u128::from(pa) + mask) & !mask);
        if head_end > u128::from(pa) {
            self.write(pa, &vec![0u8; (head_end - u128::from(pa)) as usize])?;
        }
        let (first, last) = (
            (head_end >> FRAME_SHIFT) as u64,
            (end >> FRAME_SHIFT) as u64,
        );
        if last > first {
            let mut map = frames.write().unwrap_or_else(|e| e.into_inner());
            if last - first > map.len() as u64 {
                map.remove_range(first..last);
            } else {
                for pfn in first..last {
                    map.remove(pfn);
                }
            }
        }
        let tail = u128::from(last) << FRAME_SHIFT;
        if end > tail && tail >= head_end {
            self.write(tail as u64, &vec![0u8; (end - tail) as usize])?;
        }
        Ok(())
    }

    /// Frames that cost host memory (written at least once, all of an image's, a dump's file-backed ones).
    pub fn resident_frames(&self) -> u64 {
        match &self.store {
            Store::Sparse(frames) => frames.read().unwrap_or_else(|e| e.into_inner()).len() as u64,
            Store::Source(src) => covered_frames(&src.resident()).count() as u64,
            _ => self.size >> FRAME_SHIFT,
        }
    }

    /// Physical addresses of the frames that hold host memory, in order.
    pub fn resident_pas(&self) -> Vec<u64> {
        match &self.store {
            Store::Sparse(frames) => {
                let mut pfns: Vec<u64> = frames
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .pfns()
                    .collect();
                pfns.sort_unstable();
                pfns.into_iter().map(|p| p << FRAME_SHIFT).collect()
            }
            Store::Source(src) => covered_frames(&src.resident()).collect(),
            _ => (0..self.size >> FRAME_SHIFT)
                .map(|p| self.base + (p << FRAME_SHIFT))
                .collect(),
        }
    }

    /// Write the memory as a raw image: a sparse file whose untouched frames are holes.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.base != 0 {
            return Err(Error::Config(format!(
                "only memory based at 0 can be saved as an image, base is {:#x}",
                self.base
            )));
        }
        let shown = py_repr(&path.to_string_lossy());
        let fail = |e: std::io::Error| {
            Error::Config(format!("cannot write image {shown}: {}", io_text(&e)))
        };
        let mut file = File::create(path).map_err(fail)?;
        file.set_len(self.size).map_err(fail)?;
        let mut buf = vec![0u8; FRAME_SIZE as usize];
        for pa in self.resident_pas() {
            self.read(pa, &mut buf)?;
            if self.is_image() && buf.iter().all(|&b| b == 0) {
                continue; // leave a hole
            }
            file.seek(SeekFrom::Start(pa)).map_err(fail)?;
            file.write_all(&buf).map_err(fail)?;
        }
        Ok(())
    }

    // -- allocation -----------------------------------------------------------------

    fn nodes(&self) -> &Nodes {
        self.nodes.get_or_init(|| {
            // An image: every frame starts in use by the guest.
            let mut buddy = BuddyAllocator::new(0, self.size >> FRAME_SHIFT, 18, None)
                .expect("an image's geometry was checked when it was opened");
            let (mut pfn, end) = (0u64, self.size >> FRAME_SHIFT);
            while pfn < end {
                let mut order = 18u8;
                while order > 0 && (pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > end) {
                    order -= 1;
                }
                buddy
                    .alloc_at(pfn, order)
                    .expect("a fresh allocator has every frame free");
                pfn += 1 << order;
            }
            Nodes {
                allocators: vec![Arc::new(Mutex::new(buddy))],
                bases: vec![0],
                table_order: RwLock::new(vec![0]),
                numa: false,
            }
        })
    }

    /// Number of allocators (NUMA nodes; 1 for plain memory).
    pub fn num_nodes(&self) -> usize {
        self.nodes().allocators.len()
    }

    /// True for memory built by [`new_numa`](Self::new_numa).
    pub fn is_numa(&self) -> bool {
        self.nodes().numa
    }

    /// The allocator of `node`, shared (its lock guards its state).
    pub fn allocator(&self, node: usize) -> Option<Arc<Mutex<BuddyAllocator>>> {
        self.nodes().allocators.get(node).cloned()
    }

    fn lock_node(&self, node: usize) -> MutexGuard<'_, BuddyAllocator> {
        self.nodes().allocators[node]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// First physical address of each node.
    pub fn node_bases(&self) -> &[u64] {
        &self.nodes().bases
    }

    /// The node holding `pa`, or `None` outside memory.
    pub fn node_of(&self, pa: u64) -> Option<usize> {
        if !self.contains(pa, 1) {
            return None;
        }
        let bases = &self.nodes().bases;
        Some(bases.partition_point(|&b| b <= pa) - 1)
    }

    /// Set the node order page-table pages come from (NUMA: nearest to node 0 first).
    pub fn set_table_order(&self, order: Vec<u32>) -> Result<()> {
        let n = self.num_nodes() as u32;
        if order.is_empty() || order.iter().any(|&x| x >= n) {
            return Err(Error::Config(format!(
                "table node order {order:?} must list nodes of 0..{}",
                n - 1
            )));
        }
        *self
            .nodes()
            .table_order
            .write()
            .unwrap_or_else(|e| e.into_inner()) = order;
        Ok(())
    }

    /// The buddy order of a block of `size` (4 KiB, 2 MiB or 1 GiB), for an operation named `what`.
    pub fn block_order(size: u64, what: &str) -> Result<u8> {
        order_of_size(size).ok_or_else(|| {
            Error::Config(format!(
                "{what} size must be 4 KiB, 2 MiB or 1 GiB, got {size}"
            ))
        })
    }

    /// A zero-filled block of `size` from the first node of `nodes` that has one: `(pa, node)`.
    ///
    /// `None` if none has: the caller words the error, since it knows the policy.
    pub fn try_alloc_on(&self, nodes: &[u32], size: u64) -> Result<Option<(u64, u32)>> {
        let order = Self::block_order(size, "block")?;
        self.try_alloc_order_on(nodes, order, size)
    }

    /// The buddy order of a granule block: a power of two from 4 KiB to 1 GiB.
    ///
    /// AArch64's 16 KiB and 64 KiB granules need tables and pages of those
    /// sizes, and blocks of 32 MiB and 512 MiB, besides the x86 sizes.
    pub fn granule_order(size: u64, what: &str) -> Result<u8> {
        if size.is_power_of_two() && (FRAME_SIZE..=1 << 30).contains(&size) {
            Ok((size.trailing_zeros() - FRAME_SHIFT) as u8)
        } else {
            Err(Error::Config(format!(
                "{what} size must be a power of two from 4 KiB to 1 GiB, got {size}"
            )))
        }
    }

    /// [`try_alloc_on`](Self::try_alloc_on) for any granule size ([`granule_order`](Self::granule_order)).
    pub fn try_alloc_granule_on(&self, nodes: &[u32], size: u64) -> Result<Option<(u64, u32)>> {
        let order = Self::granule_order(size, "block")?;
        self.try_alloc_order_on(nodes, order, size)
    }

    /// [`alloc`](Self::alloc) for any granule size (a page table of a 16 KiB or 64 KiB granule).
    pub fn alloc_granule(&self, size: u64) -> Result<u64> {
        self.alloc_order(Self::granule_order(size, "alloc")?, size)
    }

    /// [`free`](Self::free) for any granule size.
    pub fn free_granule(&self, pa: u64, size: u64) -> Result<()> {
        self.free_order(pa, Self::granule_order(size, "free")?, size)
    }

    fn try_alloc_order_on(
        &self,
        nodes: &[u32],
        order: u8,
        size: u64,
    ) -> Result<Option<(u64, u32)>> {
        for &node in nodes {
            let node_idx = node as usize;
            if node_idx >= self.num_nodes() {
                return Err(Error::Config(format!(
                    "node {node} does not exist (0..{})",
                    self.num_nodes() - 1
                )));
            }
            let pfn = {
                let mut buddy = self.lock_node(node_idx);
                if buddy.free_pages() < 1 << order {
                    continue;
                }
                match buddy.alloc(order) {
                    Ok(pfn) => pfn,
                    Err(Error::OutOfFrames { .. }) => continue,
                    Err(e) => return Err(e),
                }
            };
            let pa = pfn << FRAME_SHIFT;
            if self.writable {
                self.zero(pa, size)?;
            }
            return Ok(Some((pa, node)));
        }
        Ok(None)
    }

    /// A zero-filled, naturally aligned block of `size` (4 KiB, 2 MiB or 1 GiB).
    ///
    /// Plain memory takes it from its allocator; NUMA memory from the nodes
    /// in table order (nearest to node 0 first).
    pub fn alloc(&self, size: u64) -> Result<u64> {
        self.alloc_order(Self::block_order(size, "alloc")?, size)
    }

    fn alloc_order(&self, order: u8, size: u64) -> Result<u64> {
        let nodes = self.nodes();
        if !nodes.numa {
            let pa = self.lock_node(0).alloc(order)? << FRAME_SHIFT;
            if self.writable {
                self.zero(pa, size)?;
            }
            return Ok(pa);
        }
        let order_list = nodes
            .table_order
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((pa, _)) = self.try_alloc_order_on(&order_list, order, size)? {
            return Ok(pa);
        }
        let where_ = if order_list.len() > 1 {
            format!("nodes {order_list:?}")
        } else {
            format!("node {}", order_list[0])
        };
        let free: Vec<String> = order_list
            .iter()
            .map(|&n| {
                format!(
                    "node {n}: {} free",
                    format_size(self.lock_node(n as usize).free_pages() << FRAME_SHIFT)
                )
            })
            .collect();
        Err(Error::OutOfFrames {
            message: format!(
                "out of memory on {where_}: no free {} block ({})",
                format_size(size),
                free.join(", ")
            ),
            size,
            node: Some(order_list[0]),
        })
    }

    /// Return a block to the allocator of the node holding it (and zero it, unless an image).
    pub fn free(&self, pa: u64, size: u64) -> Result<()> {
        self.free_order(pa, Self::block_order(size, "free")?, size)
    }

    fn free_order(&self, pa: u64, order: u8, size: u64) -> Result<()> {
        self.check(pa, size)?;
        let node = self.node_of(pa).expect("checked inside memory");
        self.lock_node(node).free(pa >> FRAME_SHIFT, order)?;
        if !self.is_image() {
            self.zero(pa, size)?;
        }
        Ok(())
    }

    /// Bytes every allocator can still hand out.
    pub fn free_bytes(&self) -> u64 {
        (0..self.num_nodes())
            .map(|n| self.lock_node(n).free_pages())
            .sum::<u64>()
            << FRAME_SHIFT
    }
}

impl PteMemory for PhysMem {
    #[inline]
    fn load_u64(&self, pa: u64) -> Option<u64> {
        if pa & 7 != 0 || !self.contains(pa, 8) {
            return None;
        }
        if let Store::Source(src) = &self.store {
            return Self::source_word(src.as_ref(), pa);
        }
        Some(u64::from_le(self.load_raw(pa)))
    }

    /// Sparse memory: one read hold of the frame map for the whole walk (a
    /// walk reads 4-5 PTEs). Images take no lock, so they need no view.
    fn pinned(&self, f: &mut dyn FnMut(&dyn PteMemory)) -> bool {
        let Store::Sparse(frames) = &self.store else {
            return false;
        };
        let frames = frames.read().unwrap_or_else(|e| e.into_inner());
        f(&SparseView {
            mem: self,
            frames: &frames,
        });
        true
    }

    fn cas_u64(&self, pa: u64, old: u64, new: u64) -> Result<bool> {
        self.check_word(pa)?;
        self.refuse_write(|| format!("memory is read-only; 8-byte write at {pa:#x} refused"))?;
        // An absent frame reads as zero: only a swap of 0 for non-zero needs one.
        Ok(self.with_word(pa, old == 0 && new != 0, |w| match w {
            Some(w) => w
                .compare_exchange(
                    old.to_le(),
                    new.to_le(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok(),
            None => old == 0, // an absent frame reads as zero; swapping 0 for 0 succeeds
        }))
    }
}

/// Sparse memory seen through one read hold of its frame map (see [`PteMemory::pinned`]).
///
/// Frames are only dropped under the map's write lock, so the frames seen
/// here stay alive for the hold; their words are atomics, so concurrent
/// writers and compare-exchanges on other threads still interleave word by
/// word exactly as through [`PhysMem`] itself.
struct SparseView<'a> {
    mem: &'a PhysMem,
    frames: &'a SparseFrames,
}

impl SparseView<'_> {
    #[inline]
    fn word(&self, pa: u64) -> Option<&AtomicU64> {
        let frame = self.frames.get(&(pa >> FRAME_SHIFT))?;
        Some(&frame.0[((pa & FRAME_MASK) >> 3) as usize])
    }
}

impl PteMemory for SparseView<'_> {
    #[inline]
    fn load_u64(&self, pa: u64) -> Option<u64> {
        if pa & 7 != 0 || !self.mem.contains(pa, 8) {
            return None;
        }
        Some(
            self.word(pa)
                .map_or(0, |w| u64::from_le(w.load(Ordering::Acquire))),
        )
    }

    fn cas_u64(&self, pa: u64, old: u64, new: u64) -> Result<bool> {
        self.mem.check_word(pa)?;
        self.mem
            .refuse_write(|| format!("memory is read-only; 8-byte write at {pa:#x} refused"))?;
        match self.word(pa) {
            Some(w) => Ok(w
                .compare_exchange(
                    old.to_le(),
                    new.to_le(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()),
            // An absent frame reads as zero.
            None if old != 0 || new == 0 => Ok(old == 0),
            None => Err(Error::Address(format!(
                "a page walk cannot create the frame of {pa:#x} to store {new:#x}"
            ))),
        }
    }
}

/// Map an opened image file as `mode` says.
///
/// A mapping's bytes may change if another process writes the file; vmopt
/// reads them as plain integers (writable maps only through atomics), never
/// as references to typed data, so such a change gives different values.
fn map_image(file: &File, mode: ImageMode) -> std::io::Result<Store> {
    Ok(match mode {
        // SAFETY: see above; the map lives in the Store, so it outlives every read.
        ImageMode::ReadOnly => Store::ReadOnly(unsafe { Mmap::map(file) }?),
        // SAFETY: as above; writes go through `mapped_word`'s atomics only.
        ImageMode::Writable => Store::Mapped(unsafe { MmapMut::map_mut(file) }?),
        // SAFETY: as above; a private mapping, so the file itself never changes through it.
        ImageMode::CopyOnWrite => Store::Mapped(unsafe { MmapOptions::new().map_copy(file) }?),
    })
}

/// Fill `buf` from a dump frame by frame; a hole is refused naming its address.
fn read_source(src: &dyn FrameSource, pa: u64, buf: &mut [u8]) -> Result<()> {
    let mut pos = 0usize;
    while pos < buf.len() {
        let cur = pa + pos as u64;
        let chunk = ((FRAME_SIZE - (cur & FRAME_MASK)) as usize).min(buf.len() - pos);
        if !src.read_in_frame(cur, &mut buf[pos..pos + chunk])? {
            return Err(Error::PhysicalAccess(format!(
                "physical address {cur:#x} is not in the dump (a hole between its memory ranges)"
            )));
        }
        pos += chunk;
    }
    Ok(())
}

/// The 4 KiB frames that lie wholly or partly inside `ranges`, in order, once each.
fn covered_frames(ranges: &[(u64, u64)]) -> impl Iterator<Item = u64> + '_ {
    let mut last: Option<u64> = None;
    ranges
        .iter()
        .flat_map(|&(s, e)| {
            let first = s & !FRAME_MASK;
            let end = e.saturating_add(FRAME_MASK) & !FRAME_MASK;
            (first..end).step_by(FRAME_SIZE as usize)
        })
        .filter(move |&f| {
            let new = last.map_or(true, |l| f > l);
            if new {
                last = Some(f);
            }
            new
        })
}

/// Store `data` at `pa` word by word: whole words with a store, partial ones merged by compare-exchange.
fn put_words<'a>(pa: u64, data: &[u8], word_at: impl Fn(u64) -> &'a AtomicU64) {
    let mut pos = 0usize;
    while pos < data.len() {
        let cur = pa + pos as u64;
        let s = (cur & 7) as usize;
        let n = (8 - s).min(data.len() - pos);
        let bytes = &data[pos..pos + n];
        let word = word_at(cur & !7);
        if n == 8 {
            word.store(
                u64::from_ne_bytes(bytes.try_into().expect("8 bytes")),
                Ordering::Release,
            );
        } else {
            let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let mut b = old.to_ne_bytes();
                b[s..s + n].copy_from_slice(bytes);
                Some(u64::from_ne_bytes(b))
            });
        }
        pos += n;
    }
}

/// An I/O error as Python prints an OSError: `[Errno 2] No such file or directory: ...`.
fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = e.to_string();
            let msg = text.split(" (os error").next().unwrap_or(&text).to_string();
            format!("[Errno {code}] {msg}")
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_memory_reads_zero_and_costs_nothing() {
        let mem = PhysMem::new(64 << 30, 0, None).unwrap();
        let mut buf = [1u8; 16];
        mem.read(63 << 30, &mut buf).unwrap();
        assert_eq!(buf, [0; 16]);
        assert_eq!(mem.resident_frames(), 0);
        mem.write_u64(0x1000, 0).unwrap();
        assert_eq!(
            mem.resident_frames(),
            0,
            "a zero word store creates no frame"
        );
    }

    #[test]
    fn bytes_cross_frames_and_words_are_little_endian() {
        let mem = PhysMem::new(4 * FRAME_SIZE, 0, None).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        mem.write(4093, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read(4093, &mut back).unwrap();
        assert_eq!(back, data);
        mem.write_u64(0x2000, 0x1122_3344_5566_7788).unwrap();
        let mut b = [0u8; 8];
        mem.read(0x2000, &mut b).unwrap();
        assert_eq!(b, 0x1122_3344_5566_7788u64.to_le_bytes());
        assert!(mem.cas_u64(0x2000, 0x1122_3344_5566_7788, 5).unwrap());
        assert!(!mem.cas_u64(0x2000, 0x1122_3344_5566_7788, 6).unwrap());
        assert_eq!(mem.read_u64(0x2000).unwrap(), 5);
    }

    #[test]
    fn out_of_range_and_unaligned_accesses_are_refused() {
        let mem = PhysMem::new(2 * FRAME_SIZE, 0, None).unwrap();
        let err = mem.write(0x1FFC, b"12345678").unwrap_err();
        assert_eq!(
            err,
            Error::PhysicalAccess(
                "physical access [0x1ffc, 0x2004) is outside memory [0x0, 0x2000)".into()
            )
        );
        assert_eq!(mem.resident_frames(), 0);
        assert!(matches!(mem.read_u64(4), Err(Error::Address(_))));
        assert_eq!(mem.load_u64(0x2000), None);
    }

    #[test]
    fn zero_drops_whole_frames() {
        let mem = PhysMem::new(8 * FRAME_SIZE, 0, None).unwrap();
        mem.write(100, &vec![9u8; 5 * FRAME_SIZE as usize]).unwrap();
        assert_eq!(mem.resident_frames(), 6);
        mem.zero(FRAME_SIZE, 3 * FRAME_SIZE).unwrap();
        assert_eq!(mem.resident_frames(), 3);
        assert!(mem.frame_is_zero(2 * FRAME_SIZE).unwrap());
        assert!(!mem.frame_is_zero(0).unwrap());
    }

    #[test]
    fn images_map_read_only_writable_and_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        std::fs::write(&path, vec![0xABu8; 8192]).unwrap();
        let ro = PhysMem::from_file(&path, ImageMode::ReadOnly).unwrap();
        assert_eq!(ro.read_u64(8).unwrap(), 0xABAB_ABAB_ABAB_ABAB);
        assert!(matches!(ro.write_u64(8, 1), Err(Error::ReadOnly(_))));
        let cow = PhysMem::from_file(&path, ImageMode::CopyOnWrite).unwrap();
        cow.write_u64(8, 1).unwrap();
        assert_eq!(cow.read_u64(8).unwrap(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap()[8],
            0xAB,
            "copy-on-write leaves the file alone"
        );
        let rw = PhysMem::from_file(&path, ImageMode::Writable).unwrap();
        rw.write(8, &[1, 2]).unwrap();
        drop(rw);
        assert_eq!(&std::fs::read(&path).unwrap()[8..11], &[1, 2, 0xAB]);
        let bad = dir.path().join("bad.raw");
        std::fs::write(&bad, vec![0u8; 100]).unwrap();
        let err = PhysMem::from_file(&bad, ImageMode::ReadOnly).unwrap_err();
        assert!(
            err.to_string()
                .contains("has 100 bytes; expected a positive multiple of 4096"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_partial_word_writes_do_not_lose_bytes() {
        let mem = Arc::new(PhysMem::new(FRAME_SIZE, 0, None).unwrap());
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let mem = Arc::clone(&mem);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        mem.write(i as u64, &[i + 1]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            mem.read_u64(0).unwrap().to_le_bytes(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }

    #[test]
    fn memory_may_end_at_the_top_of_the_physical_space() {
        let base = u64::MAX - 2 * FRAME_SIZE + 1;
        let mem = PhysMem::new(2 * FRAME_SIZE, base, None).unwrap();
        assert!(mem.contains(base, 2 * FRAME_SIZE) && !mem.contains(base, 2 * FRAME_SIZE + 1));
        mem.write(u64::MAX - 3, &[1, 2, 3, 4]).unwrap();
        mem.write_u64(base + FRAME_SIZE - 8, 9).unwrap();
        mem.zero(base + 100, 2 * FRAME_SIZE - 100).unwrap();
        assert_eq!(
            mem.resident_frames(),
            1,
            "the partly zeroed head frame stays"
        );
        assert_eq!(mem.read_u64(u64::MAX - 7).unwrap(), 0);
        let err = mem.read(u64::MAX - 3, &mut [0u8; 8]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "physical access [0xfffffffffffffffc, 0x10000000000000004) is outside memory \
             [0xffffffffffffe000, 0x10000000000000000)"
        );
        let err = PhysMem::new(2 * FRAME_SIZE, u64::MAX - FRAME_SIZE + 1, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frames [0xfffffffffffff, 0x10000000000001) exceed the 64-bit physical space"
        );
        let err = PhysMem::new_numa(&[u64::MAX - FRAME_MASK, 2 * FRAME_SIZE]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "frames [0x0, 0x10000000000001) exceed the 64-bit physical space"
        );
    }

    #[test]
    fn zero_clears_partial_heads_and_tails() {
        let mem = PhysMem::new(4 * FRAME_SIZE, 0, None).unwrap();
        let ones = vec![1u8; 4 * FRAME_SIZE as usize];
        for (pa, n) in [
            (FRAME_SIZE, 100),
            (FRAME_SIZE + 8, 100),
            (10, 2 * FRAME_SIZE),
            (0, 4 * FRAME_SIZE),
        ] {
            mem.write(0, &ones).unwrap();
            mem.zero(pa, n).unwrap();
            let mut back = vec![9u8; ones.len()];
            mem.read(0, &mut back).unwrap();
            for (i, &b) in back.iter().enumerate() {
                let inside = (pa..pa + n).contains(&(i as u64));
                assert_eq!(
                    b,
                    if inside { 0 } else { 1 },
                    "zero({pa:#x}, {n}) at byte {i:#x}"
                );
            }
        }
        assert_eq!(
            mem.resident_frames(),
            0,
            "zeroing all of memory drops every frame"
        );
    }

    #[test]
    fn a_failing_compare_exchange_creates_no_frame() {
        let mem = PhysMem::new(FRAME_SIZE, 0, None).unwrap();
        assert!(!mem.cas_u64(8, 5, 6).unwrap());
        assert!(mem.cas_u64(8, 0, 0).unwrap());
        assert_eq!(mem.resident_frames(), 0);
        assert!(mem.cas_u64(8, 0, 6).unwrap());
        assert_eq!(mem.read_u64(8).unwrap(), 6);
    }

    #[test]
    fn a_pinned_view_reads_and_swaps_as_the_memory_does() {
        let mem = PhysMem::new(4 * FRAME_SIZE, 0, None).unwrap();
        mem.write_u64(FRAME_SIZE + 16, 0x1234).unwrap();
        let mut ran = 0;
        assert!(mem.pinned(&mut |view| {
            ran += 1;
            assert_eq!(view.load_u64(FRAME_SIZE + 16), Some(0x1234));
            assert_eq!(view.load_u64(2 * FRAME_SIZE), Some(0)); // never written
            assert_eq!(view.load_u64(FRAME_SIZE + 17), None); // unaligned
            assert_eq!(view.load_u64(4 * FRAME_SIZE), None); // outside
            assert!(!view.cas_u64(FRAME_SIZE + 16, 1, 2).unwrap());
            assert!(view.cas_u64(FRAME_SIZE + 16, 0x1234, 0x1235).unwrap());
            assert!(!view.cas_u64(2 * FRAME_SIZE, 5, 6).unwrap());
            assert!(view.cas_u64(2 * FRAME_SIZE, 0, 0).unwrap());
            let err = view.cas_u64(2 * FRAME_SIZE, 0, 6).unwrap_err();
            assert!(matches!(err, Error::Address(_)), "{err:?}");
            assert!(view.cas_u64(4 * FRAME_SIZE, 0, 1).is_err());
        }));
        assert_eq!(ran, 1);
        assert_eq!(mem.read_u64(FRAME_SIZE + 16).unwrap(), 0x1235);
        assert_eq!(mem.resident_frames(), 1);
    }

    #[test]
    fn images_have_no_pinned_view() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        std::fs::write(&path, vec![0u8; FRAME_SIZE as usize]).unwrap();
        let mem = PhysMem::from_file(&path, ImageMode::ReadOnly).unwrap();
        assert!(!mem.pinned(&mut |_| panic!("images read without a lock")));
    }

    #[test]
    fn a_missing_image_is_named_as_python_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.raw");
        let shown = py_repr(&path.to_string_lossy());
        let err = PhysMem::from_file(&path, ImageMode::ReadOnly).unwrap_err();
        assert_eq!(
            err,
            Error::Config(format!(
                "cannot open memory image {shown}: [Errno 2] No such file or directory: {shown}"
            ))
        );
    }

    #[test]
    fn numa_nodes_allocate_in_table_order_and_free_home() {
        let mem = PhysMem::new_numa(&[4 * FRAME_SIZE, 2 * FRAME_SIZE, 2 * FRAME_SIZE]).unwrap();
        assert_eq!(mem.node_bases(), [0, 4 * FRAME_SIZE, 6 * FRAME_SIZE]);
        assert_eq!(mem.node_of(5 * FRAME_SIZE), Some(1));
        assert_eq!(mem.node_of(8 * FRAME_SIZE), None);
        mem.set_table_order(vec![2, 0]).unwrap();
        let pas: Vec<u64> = (0..6).map(|_| mem.alloc(FRAME_SIZE).unwrap()).collect();
        assert_eq!(pas, [0x6000, 0x7000, 0, 0x1000, 0x2000, 0x3000]);
        let err = mem.alloc(FRAME_SIZE).unwrap_err();
        assert_eq!(
            err,
            Error::OutOfFrames {
                message: "out of memory on nodes [2, 0]: no free 4 KiB block \
                          (node 2: 0 B free, node 0: 0 B free)"
                    .into(),
                size: FRAME_SIZE,
                node: Some(2)
            }
        );
        assert_eq!(
            mem.try_alloc_on(&[0, 1], FRAME_SIZE).unwrap(),
            Some((4 * FRAME_SIZE, 1))
        );
        mem.write(0x1000, b"x").unwrap();
        mem.free(0x1000, FRAME_SIZE).unwrap();
        assert_eq!(mem.resident_frames(), 0, "a freed block is zeroed");
        assert_eq!(mem.free_bytes(), 2 * FRAME_SIZE);
        assert!(matches!(
            mem.set_table_order(vec![3]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            mem.try_alloc_on(&[5], FRAME_SIZE),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn an_image_allocator_starts_full_and_takes_donations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        std::fs::write(&path, vec![7u8; 3 * FRAME_SIZE as usize]).unwrap();
        let mem = PhysMem::from_file(&path, ImageMode::CopyOnWrite).unwrap();
        assert_eq!(mem.free_bytes(), 0);
        assert!(matches!(
            mem.alloc(FRAME_SIZE),
            Err(Error::OutOfFrames { .. })
        ));
        mem.free(FRAME_SIZE, FRAME_SIZE).unwrap();
        assert_eq!(mem.alloc(FRAME_SIZE).unwrap(), FRAME_SIZE);
        assert!(
            mem.frame_is_zero(FRAME_SIZE).unwrap(),
            "allocated frames are zeroed"
        );
        assert!(!mem.frame_is_zero(0).unwrap());
    }
}
