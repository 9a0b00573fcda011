//! Where sparse memory's frames live: 2 MiB chunks of anonymous memory,
//! handed out 4 KiB at a time and recycled through a free list, found by
//! frame number through a two-level section index (`FrameIndex`).
//!
//! A frame per global allocation costs a kernel page fault and a
//! memory-cgroup charge on its first touch: most of a page install's CPU.
//! Chunks after the first are advised for transparent huge pages, so the
//! kernel backs them 2 MiB at a time (where THP is enabled for advised
//! memory, as Linux's default `madvise` mode has it). The first chunk stays
//! in 4 KiB pages, so a small memory costs only the frames it writes. Frames
//! are taken in order, so a memory costs what it wrote, rounded up to 2 MiB.
//! Chunks double from 2 MiB to 1 GiB, so even a 64 GiB guest written in
//! full is a few dozen mappings (untouched reserved bytes cost nothing).

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use memmap2::MmapMut;
use rustc_hash::FxHashMap;

use super::phys::FRAME_SIZE;

const WORDS: usize = (FRAME_SIZE / 8) as usize;
/// Bytes of the first chunk, and the alignment of all: one transparent huge page.
const CHUNK: usize = 2 << 20;
/// Doublings of the chunk size: the largest is 1 GiB.
const MAX_GROWTH: usize = 9;

/// One 4 KiB frame as 512 atomic words holding the frame's bytes in memory order.
pub(crate) struct Frame(pub(crate) [AtomicU64; WORDS]);

/// A frame of a [`SparseFrames`]: its map entry owns it.
pub(crate) struct FrameRef(NonNull<Frame>);

impl Deref for FrameRef {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        // SAFETY: the pointer is a frame-aligned 4 KiB slot inside a chunk of
        // the pool that made it; the pool lives in the same `SparseFrames` as
        // the map holding this `FrameRef`, and frees its chunks only when that
        // struct drops, so the slot is mapped for as long as the reference
        // that borrows it. Any bytes are a valid Frame (AtomicU64 has u64's
        // representation), and only shared references to it are ever made.
        unsafe { self.0.as_ref() }
    }
}

// SAFETY: a FrameRef is an owning handle to 512 atomics (Sync) in memory no
// thread frees while the handle exists; moving or sharing it across threads is
// as safe as for a `Box<Frame>`.
unsafe impl Send for FrameRef {}
// SAFETY: as above; `&FrameRef` only gives `&Frame`, whose words are atomics.
unsafe impl Sync for FrameRef {}

struct Chunk {
    /// The mapping: `CHUNK` bytes more than used, for alignment.
    _map: MmapMut,
    /// The first of the chunk's `CHUNK`-aligned frames.
    start: NonNull<u8>,
    /// Frames in the chunk.
    frames: usize,
}

/// log2 of the frames in a section: 512 frames, 2 MiB of guest memory, whose
/// index is one 4 KiB array of frame pointers.
const SECTION_SHIFT: u32 = 9;
const SECTION_FRAMES: usize = 1 << SECTION_SHIFT;
/// Sections indexed by a flat directory: the first 512 GiB of physical
/// addresses (a directory of at most 2 MiB, grown to the highest section
/// touched). Sections above it, rare, are found by hash.
const DIRECT_SECTIONS: u64 = 1 << 18;

/// The frames of one section by their index in it.
struct Section {
    frames: [Option<FrameRef>; SECTION_FRAMES],
    present: usize,
}

impl Section {
    fn new() -> Box<Section> {
        Box::new(Section {
            frames: std::array::from_fn(|_| None),
            present: 0,
        })
    }
}

/// Frames by frame number, as Linux's SPARSEMEM finds a `struct page`: a
/// directory of sections, each an array of its frames, so a lookup (four
/// of them per page walk) is two indexed loads rather than a hash probe.
/// A section exists while it holds a frame.
#[derive(Default)]
pub(crate) struct FrameIndex {
    direct: Vec<Option<Box<Section>>>,
    far: FxHashMap<u64, Box<Section>>,
    len: usize,
}

/// `pfn` as (section number, index in the section).
#[inline(always)]
fn split(pfn: u64) -> (u64, usize) {
    (pfn >> SECTION_SHIFT, (pfn as usize) & (SECTION_FRAMES - 1))
}

impl FrameIndex {
    /// The frame `pfn`, if present.
    #[inline]
    pub(crate) fn get(&self, pfn: &u64) -> Option<&FrameRef> {
        let (sec, idx) = split(*pfn);
        let section = if sec < DIRECT_SECTIONS {
            self.direct.get(sec as usize)?.as_deref()?
        } else {
            self.far.get(&sec)?
        };
        section.frames[idx].as_ref()
    }

    /// True if frame `pfn` is present.
    pub(crate) fn contains_key(&self, pfn: &u64) -> bool {
        self.get(pfn).is_some()
    }

    /// Frames present.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The numbers of the frames present, in no particular order.
    pub(crate) fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        let direct = self
            .direct
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_deref().map(|s| (i as u64, s)));
        let far = self.far.iter().map(|(&i, s)| (i, &**s));
        direct.chain(far).flat_map(|(sec, s)| {
            s.frames
                .iter()
                .enumerate()
                .filter(|(_, f)| f.is_some())
                .map(move |(i, _)| sec << SECTION_SHIFT | i as u64)
        })
    }

    /// Section `sec`, if it exists.
    fn section_mut(&mut self, sec: u64) -> Option<&mut Section> {
        if sec < DIRECT_SECTIONS {
            self.direct.get_mut(sec as usize)?.as_deref_mut()
        } else {
            self.far.get_mut(&sec).map(|s| &mut **s)
        }
    }

    /// Section `sec`, made empty if it does not exist.
    fn section_or_new(&mut self, sec: u64) -> &mut Section {
        if sec >= DIRECT_SECTIONS {
            return self.far.entry(sec).or_insert_with(Section::new);
        }
        let i = sec as usize;
        if i >= self.direct.len() {
            self.direct.resize_with(i + 1, || None);
        }
        self.direct[i].get_or_insert_with(Section::new)
    }

    /// Drop section `sec` if it holds no frame.
    fn prune(&mut self, sec: u64) {
        if sec < DIRECT_SECTIONS {
            if let Some(slot) = self.direct.get_mut(sec as usize) {
                if slot.as_ref().is_some_and(|s| s.present == 0) {
                    *slot = None;
                }
            }
        } else if self.far.get(&sec).is_some_and(|s| s.present == 0) {
            self.far.remove(&sec);
        }
    }

    /// Make `frame` frame `pfn`, which must be absent.
    fn insert(&mut self, pfn: u64, frame: FrameRef) {
        let (sec, idx) = split(pfn);
        let section = self.section_or_new(sec);
        let slot = &mut section.frames[idx];
        debug_assert!(slot.is_none(), "frame {pfn:#x} is present already");
        if slot.replace(frame).is_none() {
            section.present += 1;
            self.len += 1;
        }
    }

    /// Take frame `pfn` out, if present.
    fn remove(&mut self, pfn: u64) -> Option<FrameRef> {
        let (sec, idx) = split(pfn);
        let section = self.section_mut(sec)?;
        let frame = section.frames[idx].take()?;
        section.present -= 1;
        self.len -= 1;
        self.prune(sec);
        Some(frame)
    }
}

/// The frames of a sparse memory by frame number, and the chunks they live in.
#[derive(Default)]
pub(crate) struct SparseFrames {
    map: FrameIndex,
    chunks: Vec<Chunk>,
    /// Frames handed out from the last chunk.
    used: usize,
    /// Frames given back (their bytes are stale: zero them before use).
    free: Vec<NonNull<Frame>>,
}

// SAFETY: the raw pointers in `chunks` and `free` point into mappings this
// struct owns; they are only dereferenced through `&mut self` (taking a frame)
// or through `FrameRef`, so sharing the struct is as safe as sharing its map.
unsafe impl Send for SparseFrames {}
// SAFETY: as above.
unsafe impl Sync for SparseFrames {}

impl Deref for SparseFrames {
    type Target = FrameIndex;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl SparseFrames {
    /// The frame `pfn`, made of zeros if it is absent.
    pub(crate) fn get_or_zeroed(&mut self, pfn: u64) -> &Frame {
        if !self.map.contains_key(&pfn) {
            let frame = self.take(true);
            self.map.insert(pfn, frame);
        }
        self.map.get(&pfn).expect("just made present")
    }

    /// Make the absent frame `pfn` hold `data`, exactly one frame of bytes (a
    /// page install's copy): one memcpy before anyone can see it.
    pub(crate) fn insert_holding(&mut self, pfn: u64, data: &[u8]) {
        assert_eq!(
            data.len(),
            FRAME_SIZE as usize,
            "a frame holds one frame of bytes"
        );
        debug_assert!(!self.map.contains_key(&pfn));
        let frame = self.take(false);
        // SAFETY: `frame` is a 4 KiB slot of a live chunk owned by nobody else
        // yet (fresh, or given back and removed from the map), so no reference
        // to it exists; `data` is FRAME_SIZE readable bytes outside our chunks.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                frame.0.as_ptr().cast::<u8>(),
                FRAME_SIZE as usize,
            );
        }
        self.map.insert(pfn, frame);
    }

    /// Drop the frame `pfn` (it reads as zeros again); its slot is reused.
    pub(crate) fn remove(&mut self, pfn: u64) {
        if let Some(frame) = self.map.remove(pfn) {
            self.free.push(frame.0);
        }
    }

    /// Drop every frame whose number is in `pfns` (walking the frames
    /// present, for a range wider than there are frames).
    pub(crate) fn remove_range(&mut self, pfns: std::ops::Range<u64>) {
        let doomed: Vec<u64> = self.map.pfns().filter(|p| pfns.contains(p)).collect();
        for pfn in doomed {
            self.remove(pfn);
        }
    }

    /// A slot for a new frame: a given-back one, or the next of the last chunk.
    /// `zeroed`: the caller needs its bytes zero (else it overwrites them all).
    fn take(&mut self, zeroed: bool) -> FrameRef {
        if let Some(slot) = self.free.pop() {
            if zeroed {
                // SAFETY: a given-back slot of a live chunk, out of the map, so
                // unreferenced; 4 KiB of writable bytes.
                unsafe {
                    std::ptr::write_bytes(slot.as_ptr().cast::<u8>(), 0, FRAME_SIZE as usize)
                };
            }
            return FrameRef(slot);
        }
        if self.chunks.last().map_or(true, |c| self.used == c.frames) {
            self.chunks.push(new_chunk(self.chunks.len()));
            self.used = 0;
        }
        let start = self.chunks.last().expect("a chunk was just made").start;
        // SAFETY: `used` is below the last chunk's frame count, so the offset
        // stays inside its frames; fresh anonymous memory reads as zeros.
        let slot = unsafe { start.add(self.used * FRAME_SIZE as usize) };
        self.used += 1;
        FrameRef(slot.cast())
    }
}

/// The `index`th chunk: `CHUNK << index` bytes (at most 1 GiB), `CHUNK`-aligned;
/// all but the first advised for huge pages.
fn new_chunk(index: usize) -> Chunk {
    let bytes = CHUNK << index.min(MAX_GROWTH);
    let mut map = MmapMut::map_anon(bytes + CHUNK).unwrap_or_else(|e| {
        panic!("out of host memory: mapping {bytes} bytes for guest frames failed: {e}")
    });
    let base = map.as_mut_ptr();
    let offset = base.align_offset(CHUNK);
    #[cfg(target_os = "linux")]
    if index > 0 {
        // Advice only: where THP is off, the chunk is backed 4 KiB at a time.
        let _ = map.advise_range(memmap2::Advice::HugePage, offset, bytes);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = index;
    // SAFETY: `offset < CHUNK` and the mapping is `bytes + CHUNK` long, so the
    // aligned start and the `bytes` after it are inside it; mmap never returns null.
    let start = unsafe { NonNull::new_unchecked(base.add(offset)) };
    Chunk {
        _map: map,
        start,
        frames: bytes / FRAME_SIZE as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    /// Frame numbers in a few sections of the directory and above it
    /// (far sections, found by hash), at section edges and inside.
    fn pfn() -> impl Strategy<Value = u64> {
        let sections = prop::sample::select(vec![
            0u64,
            1,
            7,
            DIRECT_SECTIONS - 1,
            DIRECT_SECTIONS,
            DIRECT_SECTIONS + 5,
            (1 << 43) - 1,
        ]);
        let index = prop_oneof![
            Just(0u64),
            Just(SECTION_FRAMES as u64 - 1),
            0..SECTION_FRAMES as u64
        ];
        (sections, index).prop_map(|(s, i)| s << SECTION_SHIFT | i)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, u8),
        Zeroed(u64),
        Remove(u64),
        RemoveRange(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (pfn(), any::<u8>()).prop_map(|(p, b)| Op::Write(p, b)),
            pfn().prop_map(Op::Zeroed),
            pfn().prop_map(Op::Remove),
            (pfn(), 0..2048u64).prop_map(|(p, n)| Op::RemoveRange(p, p.saturating_add(n))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The section index holds exactly the frames a map model holds,
        /// each with its bytes, and keeps no empty section.
        #[test]
        fn frames_match_a_map(ops in prop::collection::vec(op(), 1..60)) {
            let mut frames = SparseFrames::default();
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Write(p, b) => {
                        if frames.contains_key(&p) {
                            frames.remove(p);
                        }
                        frames.insert_holding(p, &[b; FRAME_SIZE as usize]);
                        model.insert(p, b);
                    }
                    Op::Zeroed(p) => {
                        frames.get_or_zeroed(p);
                        model.entry(p).or_insert(0);
                    }
                    Op::Remove(p) => {
                        frames.remove(p);
                        model.remove(&p);
                    }
                    Op::RemoveRange(a, b) => {
                        frames.remove_range(a..b);
                        model.retain(|p, _| !(a..b).contains(p));
                    }
                }
                prop_assert_eq!(frames.len(), model.len());
                let mut pfns: Vec<u64> = frames.pfns().collect();
                pfns.sort_unstable();
                prop_assert_eq!(&pfns, &model.keys().copied().collect::<Vec<_>>());
                for (&p, &b) in &model {
                    prop_assert_eq!(word(&frames, p, 0), b as u64 * 0x0101_0101_0101_0101);
                    prop_assert_eq!(word(&frames, p, WORDS - 1), b as u64 * 0x0101_0101_0101_0101);
                }
                let sections = frames.map.direct.iter().flatten().count() + frames.map.far.len();
                let live: std::collections::BTreeSet<u64> = model.keys().map(|p| p >> SECTION_SHIFT).collect();
                prop_assert_eq!(sections, live.len(), "a section exists while it holds a frame");
            }
        }
    }

    fn word(frames: &SparseFrames, pfn: u64, i: usize) -> u64 {
        (**frames.map.get(&pfn).expect("present")).0[i].load(Ordering::Relaxed)
    }

    #[test]
    fn a_given_back_frame_comes_back_zeroed() {
        let mut frames = SparseFrames::default();
        frames.insert_holding(7, &[0xAB; FRAME_SIZE as usize]);
        assert_eq!(word(&frames, 7, 511), 0xABAB_ABAB_ABAB_ABAB);
        frames.remove(7);
        assert!(frames.get(&7).is_none());
        frames.get_or_zeroed(9);
        assert_eq!(frames.free.len(), 0, "the slot was reused");
        assert!((0..WORDS).all(|i| word(&frames, 9, i) == 0));
    }

    #[test]
    fn frames_fill_chunks_in_order_and_stay_apart() {
        let mut frames = SparseFrames::default();
        let n = (CHUNK / FRAME_SIZE as usize) as u64 + 3;
        for pfn in 0..n {
            frames.insert_holding(pfn, &[pfn as u8; FRAME_SIZE as usize]);
        }
        assert_eq!(frames.chunks.len(), 2);
        assert_eq!(
            frames.chunks[1].frames,
            2 * frames.chunks[0].frames,
            "chunks double"
        );
        for pfn in 0..n {
            let b = pfn as u8 as u64 * 0x0101_0101_0101_0101;
            assert!(
                (0..WORDS).all(|i| word(&frames, pfn, i) == b),
                "frame {pfn}"
            );
        }
        frames.remove_range(2..n - 1);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames.free.len(), n as usize - 3);
        let first = (**frames.map.get(&0).expect("present")).0.as_ptr() as usize;
        assert_eq!(first % CHUNK, 0, "chunks are 2 MiB aligned");
    }
}
