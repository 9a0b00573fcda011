//! Round trips through each reader (files written here from the documented layouts) and a bounded
//! mutation fuzz over every format's header fields.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::*;
use crate::paging::table::PageTable;
use crate::paging::x86::X86_64;
use crate::paging::{Format, Perm};

const PAGE: usize = 4096;

/// A tiny deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(((name.len() + 1) as u32).to_le_bytes());
    out.extend((desc.len() as u32).to_le_bytes());
    out.extend(kind.to_le_bytes());
    out.extend(name);
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend(desc);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

fn qemu_state(size: u32, cr: [u64; 5]) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    d[0..4].copy_from_slice(&1u32.to_le_bytes());
    d[4..8].copy_from_slice(&size.to_le_bytes());
    d[8..16].copy_from_slice(&0x1111u64.to_le_bytes()); // rax
    for (i, v) in cr.iter().enumerate() {
        d[392 + i * 8..400 + i * 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

fn cpu_notes(cr3s: &[u64], size: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &cr3) in cr3s.iter().enumerate() {
        let mut pr = vec![0u8; 336];
        pr[32..36].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        pr[112 + 15 * 8..112 + 16 * 8]
            .copy_from_slice(&(0xffff_ffff_8100_0000u64 + i as u64).to_le_bytes());
        out.extend(note(b"CORE", 1, &pr));
        out.extend(note(
            b"QEMU",
            0,
            &qemu_state(size, [0x8005_0033, 0, 0, cr3, 0x3406e0]),
        ));
    }
    out
}

/// An ELF64 core: one PT_NOTE then a PT_LOAD per `(paddr, vaddr, bytes, memsz)`.
fn elf(segments: &[(u64, u64, Vec<u8>, u64)], notes: &[u8]) -> Vec<u8> {
    let phnum = 1 + segments.len();
    let mut out = vec![0u8; 64 + 56 * phnum];
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&4u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let phdr = |i: usize,
                kind: u32,
                off: u64,
                va: u64,
                pa: u64,
                filesz: u64,
                memsz: u64,
                out: &mut Vec<u8>| {
        let at = 64 + 56 * i;
        out[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        for (k, v) in [off, va, pa, filesz, memsz].iter().enumerate() {
            out[at + 8 + k * 8..at + 16 + k * 8].copy_from_slice(&v.to_le_bytes());
        }
    };
    let note_off = out.len() as u64;
    phdr(
        0,
        4,
        note_off,
        0,
        0,
        notes.len() as u64,
        notes.len() as u64,
        &mut out,
    );
    out.extend(notes);
    for (i, (pa, va, bytes, memsz)) in segments.iter().enumerate() {
        let off = out.len() as u64;
        phdr(
            i + 1,
            1,
            off,
            *va,
            *pa,
            bytes.len() as u64,
            *memsz,
            &mut out,
        );
        out.extend(bytes);
    }
    out
}

/// A kdump file of 4 KiB pages `pages` (pfn -> bytes) with each page stored by `compress`.
fn kdump(
    max_mapnr: u64,
    pages: &[(u64, Vec<u8>)],
    flag: u32,
    notes: &[u8],
    vmcoreinfo: &[u8],
) -> Vec<u8> {
    let bs = PAGE as u64;
    let bitmap_bytes = max_mapnr.div_ceil(8).div_ceil(bs) * bs;
    let bitmap_blocks = 2 * bitmap_bytes / bs;
    let mut out = vec![0u8; (2 * bs + 2 * bitmap_bytes) as usize];
    out[0..8].copy_from_slice(b"KDUMP   ");
    out[8..12].copy_from_slice(&6u32.to_le_bytes());
    out[428..432].copy_from_slice(&(bs as u32).to_le_bytes());
    out[432..436].copy_from_slice(&1u32.to_le_bytes());
    out[436..440].copy_from_slice(&(bitmap_blocks as u32).to_le_bytes());
    out[440..444].copy_from_slice(&(max_mapnr as u32).to_le_bytes());
    out[460..464].copy_from_slice(&1u32.to_le_bytes());
    let sub = bs as usize;
    out[sub..sub + 8].copy_from_slice(&0x200_0000u64.to_le_bytes()); // phys_base
    out[sub + 96..sub + 104].copy_from_slice(&max_mapnr.to_le_bytes());
    let bm = 2 * bs as usize;
    let mut sorted: Vec<&(u64, Vec<u8>)> = pages.iter().collect();
    sorted.sort_by_key(|p| p.0);
    for (pfn, _) in &sorted {
        for half in [0, bitmap_bytes as usize] {
            out[bm + half + (*pfn / 8) as usize] |= 1 << (pfn % 8);
        }
    }
    let desc_off = out.len();
    out.resize(desc_off + 24 * sorted.len(), 0);
    let note_off = out.len() as u64;
    out.extend(notes);
    let vmci_off = out.len() as u64;
    out.extend(vmcoreinfo);
    out[sub + 32..sub + 40].copy_from_slice(&vmci_off.to_le_bytes());
    out[sub + 40..sub + 48].copy_from_slice(&(vmcoreinfo.len() as u64).to_le_bytes());
    out[sub + 48..sub + 56].copy_from_slice(&note_off.to_le_bytes());
    out[sub + 56..sub + 64].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    for (i, (_, bytes)) in sorted.iter().enumerate() {
        let data: Vec<u8> = match flag {
            kdump::DUMP_DH_COMPRESSED_ZLIB => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(bytes).unwrap();
                e.finish().unwrap()
            }
            kdump::DUMP_DH_COMPRESSED_LZO => lzokay_native::compress(bytes).unwrap(),
            kdump::DUMP_DH_COMPRESSED_SNAPPY => {
                snap::raw::Encoder::new().compress_vec(bytes).unwrap()
            }
            kdump::DUMP_DH_COMPRESSED_ZSTD => zstd::bulk::compress(bytes, 3).unwrap(),
            _ => bytes.to_vec(),
        };
        let (data, f) = if data.len() >= PAGE {
            (bytes.to_vec(), 0)
        } else {
            (data, flag)
        };
        let at = desc_off + 24 * i;
        let data_off = out.len() as u64;
        out[at..at + 8].copy_from_slice(&data_off.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&f.to_le_bytes());
        out.extend(data);
    }
    out
}

/// `file` as a makedumpfile flattened stream, cut into records of at most `piece` bytes.
fn flatten(file: &[u8], piece: usize) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    out[..12].copy_from_slice(b"makedumpfile");
    out[16..24].copy_from_slice(&1i64.to_be_bytes());
    out[24..32].copy_from_slice(&1i64.to_be_bytes());
    for (i, chunk) in file.chunks(piece).enumerate().rev() {
        out.extend(((i * piece) as i64).to_be_bytes());
        out.extend((chunk.len() as i64).to_be_bytes());
        out.extend(chunk);
    }
    out.extend((-1i64).to_be_bytes());
    out.extend((-1i64).to_be_bytes());
    out
}

fn lime(ranges: &[(u64, Vec<u8>)], magic: &[u8; 4], version: u32, avml: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (start, bytes) in ranges {
        out.extend(magic);
        out.extend(version.to_le_bytes());
        out.extend(start.to_le_bytes());
        out.extend((start + bytes.len() as u64 - 1).to_le_bytes());
        out.extend(0u64.to_le_bytes());
        if avml {
            let mut enc = snap::write::FrameEncoder::new(Vec::new());
            enc.write_all(bytes).unwrap();
            let stream = enc.into_inner().unwrap();
            out.extend(&stream);
            out.extend((stream.len() as u64).to_le_bytes());
        } else {
            out.extend(bytes);
        }
    }
    out
}

fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|i| {
            if i % 7 == 0 {
                (r.next() >> 7) as u8
            } else {
                (i / 64) as u8
            }
        })
        .collect()
}

fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn open_bytes(bytes: &[u8], format: Option<DumpFormat>) -> DumpResult<Dump> {
    let f = write(bytes);
    open(f.path(), format)
}

fn read_all(mem: &PhysMem, pa: u64, n: usize) -> crate::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    mem.read(pa, &mut b)?;
    Ok(b)
}

#[test]
fn elf_segments_by_paddr_with_zero_fill_and_holes() {
    let a = pattern(1, 2 * PAGE);
    let b = pattern(2, PAGE);
    let file = elf(
        &[
            (0x1000, 0, a.clone(), 3 * PAGE as u64),
            (0x10_0000, 0, b.clone(), PAGE as u64),
        ],
        &cpu_notes(&[0x5000, 0x6000], 440),
    );
    let d = open_bytes(&file, None).unwrap();
    assert_eq!(d.format, DumpFormat::Elf);
    assert_eq!(d.machine, Some("x86_64"));
    assert_eq!(read_all(&d.memory, 0x1000, 2 * PAGE).unwrap(), a);
    assert_eq!(
        read_all(&d.memory, 0x3000, PAGE).unwrap(),
        vec![0; PAGE],
        "p_memsz past p_filesz reads zeros"
    );
    assert_eq!(read_all(&d.memory, 0x10_0000, PAGE).unwrap(), b);
    let hole = read_all(&d.memory, 0x8000, 8).unwrap_err().to_string();
    assert!(
        hole.contains("0x8000") && hole.contains("not in the dump"),
        "{hole}"
    );
    assert_eq!(
        d.memory.ranges(),
        vec![(0x1000, 0x4000), (0x10_0000, 0x10_1000)]
    );
    assert_eq!(
        d.memory.resident_frames(),
        3,
        "zero fill holds no host memory"
    );
    // A terabyte of zero fill costs nothing and lists in O(segments).
    let huge = elf(&[(0, 0, pattern(17, PAGE), 1 << 40)], &[]);
    let h = open_bytes(&huge, None).unwrap();
    assert_eq!(h.memory.ranges(), vec![(0, 1 << 40)]);
    assert_eq!(h.memory.resident_pas(), vec![0]);
    assert_eq!(read_all(&h.memory, (1 << 40) - 8, 8).unwrap(), vec![0; 8]);
    assert_eq!(d.cpus.len(), 2);
    assert_eq!(d.cpus[1].get("cr3"), Some(0x6000));
    assert_eq!(d.cpus[0].get("cr4"), Some(0x3406e0));
    assert_eq!(d.cpus[0].get("kernel_gs_base"), Some(0));
    assert_eq!(d.cpus[1].get("pid"), Some(2));
    assert_eq!(
        d.cpus[1].get("orig_rax"),
        Some(0xffff_ffff_8100_0001),
        "NT_PRSTATUS pr_reg"
    );
    assert_eq!(d.cpus[1].get("rax"), Some(0x1111), "QEMUCPUState rax");
    // 432-byte states (older QEMU) have no kernel_gs_base.
    let old = open_bytes(
        &elf(
            &[(0, 0, a.clone(), a.len() as u64)],
            &cpu_notes(&[0x7000], 432),
        ),
        None,
    )
    .unwrap();
    assert_eq!(old.cpus[0].get("cr3"), Some(0x7000));
    assert_eq!(old.cpus[0].get("kernel_gs_base"), None);
}

#[test]
fn paging_elf_dumps_repeat_frames_and_keep_their_virtual_addresses() {
    let a = pattern(3, PAGE);
    let file = elf(
        &[
            (0x2000, 0xffff_8880_0000_2000, a.clone(), PAGE as u64),
            (0x2000, 0xffff_ffff_8000_0000, a.clone(), PAGE as u64),
        ],
        &[],
    );
    let d = open_bytes(&file, None).unwrap();
    assert_eq!(read_all(&d.memory, 0x2000, PAGE).unwrap(), a);
    assert_eq!(d.virtual_segments.len(), 2);
    assert_eq!(d.virtual_segments[1].va, 0xffff_ffff_8000_0000);
    // Without virtual addresses the same overlap is an error naming both segments.
    let bad = elf(
        &[
            (0x2000, 0, a.clone(), PAGE as u64),
            (0x2800, 0, a, PAGE as u64),
        ],
        &[],
    );
    let e = open_bytes(&bad, None).err().unwrap();
    assert_eq!(e.field.as_deref(), Some("segment 2 p_paddr"));
    assert_eq!(e.value, Some(0x2800));
    assert!(e.message.contains("overlaps segment 1"), "{}", e.message);
}

#[test]
fn every_kdump_compression_raw_and_flattened_reads_the_same_bytes() {
    let pages: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(4, PAGE)),
        (1, vec![0; PAGE]),
        (5, pattern(5, PAGE)),
        (77, (0..PAGE).map(|i| (i * 131 % 251) as u8).collect()),
    ];
    let vmci = b"OSRELEASE=6.1.0\nSYMBOL(swapper_pg_dir)=ffffffff82a0c000\nNUMBER(pgtable_l5_enabled)=1\nKERNELOFFSET=1000000\n";
    for flag in [0, 1, 2, 4, 0x20] {
        let raw = kdump(100, &pages, flag, &cpu_notes(&[0x9000], 440), vmci);
        for (bytes, fmt) in [
            (raw.clone(), DumpFormat::Kdump),
            (flatten(&raw, 3000), DumpFormat::KdumpFlat),
        ] {
            let d = open_bytes(&bytes, None).unwrap();
            assert_eq!(d.format, fmt);
            for (pfn, want) in &pages {
                assert_eq!(
                    &read_all(&d.memory, pfn * PAGE as u64, PAGE).unwrap(),
                    want,
                    "flag {flag:#x} pfn {pfn}"
                );
            }
            assert!(
                read_all(&d.memory, 2 * PAGE as u64, 8).is_err(),
                "pfn 2 is not dumped"
            );
            assert_eq!(
                d.memory.ranges(),
                vec![(0, 0x2000), (0x5000, 0x6000), (77 * 4096, 78 * 4096)]
            );
            assert_eq!(d.cpus[0].get("cr3"), Some(0x9000));
            let k = d.kdump.unwrap();
            assert_eq!(
                (k.block_size, k.max_mapnr, k.phys_base, k.dumped_pages),
                (4096, 100, 0x200_0000, 4)
            );
            let root = d.kernel_root().unwrap();
            assert_eq!(root.pa, 0x2a0c000 + 0x200_0000);
            assert_eq!(root.five_level, Some(true));
        }
    }
}

#[test]
fn lime_and_avml_ranges_read_back() {
    let ranges = vec![
        (0u64, pattern(6, 3 * PAGE)),
        (0x10_0000, pattern(7, 70_000 + PAGE)),
    ];
    for (bytes, fmt) in [
        (lime(&ranges, b"EMiL", 1, false), DumpFormat::Lime),
        (lime(&ranges, b"AVML", 2, true), DumpFormat::Avml),
    ] {
        let d = open_bytes(&bytes, None).unwrap();
        assert_eq!(d.format, fmt);
        for (start, want) in &ranges {
            assert_eq!(
                &read_all(&d.memory, *start, want.len()).unwrap(),
                want,
                "{fmt}"
            );
        }
        assert!(read_all(&d.memory, 3 * PAGE as u64, 1).is_err());
    }
}

/// Page tables built in sparse memory, saved into each format, list the same mappings.
#[test]
fn page_tables_inside_each_format_list_like_the_memory_they_came_from() {
    let mem = Arc::new(PhysMem::new(64 << 20, 0, None).unwrap());
    let fmt: Arc<dyn Format> = Arc::new(X86_64::new(4, 52, true, true, false, false).unwrap());
    let pt = PageTable::new(mem.clone(), fmt.clone(), Some(false)).unwrap();
    pt.map(
        0x40_0000,
        0x20_0000,
        0x20_0000,
        Perm::R | Perm::X,
        true,
        false,
    )
    .unwrap();
    pt.map(
        0xffff_8880_0000_0000,
        0,
        0x20_0000,
        Perm::R | Perm::W,
        false,
        true,
    )
    .unwrap();
    for i in 0..5u64 {
        pt.map(
            0x7fff_0000_0000 + i * 0x1000,
            0x10_0000 + i * 0x3000,
            0x1000,
            Perm::R | Perm::W,
            true,
            false,
        )
        .unwrap();
    }
    let want: Vec<_> = pt.mappings().collect();
    let frames: Vec<(u64, Vec<u8>)> = mem
        .resident_pas()
        .into_iter()
        .map(|pa| (pa, read_all(&mem, pa, PAGE).unwrap()))
        .collect();
    let segs: Vec<(u64, u64, Vec<u8>, u64)> = frames
        .iter()
        .map(|(pa, b)| (*pa, 0, b.clone(), PAGE as u64))
        .collect();
    let pages: Vec<(u64, Vec<u8>)> = frames
        .iter()
        .map(|(pa, b)| (pa / 4096, b.clone()))
        .collect();
    let max_pfn = pages.iter().map(|p| p.0).max().unwrap() + 1;
    let files = [
        elf(&segs, &cpu_notes(&[pt.root()], 440)),
        kdump(max_pfn, &pages, 1, &[], b""),
        flatten(&kdump(max_pfn, &pages, 4, &[], b""), 5000),
        lime(&frames, b"EMiL", 1, false),
        lime(&frames, b"AVML", 2, true),
    ];
    for file in files {
        let d = open_bytes(&file, None).unwrap();
        let t = PageTable::attach(d.memory.clone(), pt.root(), fmt.clone(), Some(false)).unwrap();
        assert_eq!(t.mappings().collect::<Vec<_>>(), want, "{}", d.format);
        let (mem_lines, cut) = monitor::info_mem(
            d.memory.as_ref(),
            pt.root(),
            monitor::MemWalk::La48,
            1000,
            1000,
        );
        assert!(!cut);
        let text: Vec<String> = mem_lines.iter().map(|l| l.text()).collect();
        assert_eq!(
            text,
            [
                "0000000000400000-0000000000600000 0000000000200000 ur-",
                "00007fff00000000-00007fff00005000 0000000000005000 urw",
                "ffff888000000000-ffff888000200000 0000000000200000 -rw",
            ],
            "{}",
            d.format
        );
        let (tlb, _) = monitor::info_tlb(d.memory.as_ref(), pt.root(), false, 1000, 1000);
        assert_eq!(tlb.len(), 1 + 5 + 1);
        assert_eq!(
            tlb[0].text(),
            "0000000000400000: 0000000000200000 --P----U-"
        );
        assert_eq!(
            tlb[1].text(),
            "00007fff00000000: 0000000000100000 X------UW"
        );
    }
}

#[test]
fn info_mem_and_tlb_stop_at_a_self_map() {
    let mem = Arc::new(PhysMem::new(16 << 20, 0, None).unwrap());
    let fmt: Arc<dyn Format> = Arc::new(X86_64::new(4, 52, true, true, false, false).unwrap());
    let pt = PageTable::new(mem.clone(), fmt, Some(false)).unwrap();
    pt.map(0x1000, 0x80_0000, 0x1000, Perm::R, false, false)
        .unwrap();
    let root = pt.root();
    for i in 1..512 {
        mem.write_u64(root + 8 * i, root | 0x3).unwrap(); // every other PML4 entry -> itself
    }
    let (_, cut) = monitor::info_tlb(mem.as_ref(), root, false, 100, 1 << 20);
    assert!(
        cut,
        "the self-maps would read 511^3 tables; the cap stops it"
    );
    let (lines, cut) = monitor::info_mem(mem.as_ref(), root, monitor::MemWalk::La48, 1 << 20, 50);
    assert!(cut && lines.len() <= 50);
}

fn assert_clean(bytes: &[u8], what: &str) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Ok(d) = open_bytes(bytes, None) else {
            return;
        };
        for (s, e) in d.memory.ranges().into_iter().take(64) {
            let mut b = vec![0u8; (e - s).min(3 * PAGE as u64) as usize];
            let _ = d.memory.read(s, &mut b);
        }
        for cpu in &d.cpus {
            if let Some(cr3) = cpu.get("cr3") {
                let _ =
                    monitor::info_mem(d.memory.as_ref(), cr3, monitor::MemWalk::La57Qemu, 64, 4096);
            }
        }
        let _ = d.kernel_root();
    }));
    assert!(r.is_ok(), "{what} panicked");
}

/// Mutated headers: each field set to edge values and random bytes; no panic, no hang.
#[test]
fn mutated_headers_never_panic() {
    let pages: Vec<(u64, Vec<u8>)> = vec![(0, pattern(8, PAGE)), (3, pattern(9, PAGE))];
    let vmci = b"SYMBOL(swapper_pg_dir)=ffffffff82a0c000\n";
    let seeds: Vec<(&str, Vec<u8>, usize)> = vec![
        (
            "elf",
            elf(
                &[(0, 0, pattern(10, 2 * PAGE), 3 * PAGE as u64)],
                &cpu_notes(&[0], 440),
            ),
            64 + 56 * 2 + 700,
        ),
        (
            "kdump-zlib",
            kdump(8, &pages, 1, &cpu_notes(&[0], 432), vmci),
            3 * PAGE + 48 + 600,
        ),
        ("kdump-lzo", kdump(8, &pages, 2, &[], b""), 3 * PAGE + 48),
        ("kdump-snappy", kdump(8, &pages, 4, &[], b""), 3 * PAGE + 48),
        (
            "kdump-zstd",
            kdump(8, &pages, 0x20, &[], b""),
            3 * PAGE + 48,
        ),
        (
            "kdump-flat",
            flatten(&kdump(8, &pages, 1, &[], b""), 4096),
            4096 + 64,
        ),
        (
            "lime",
            lime(
                &[(0, pattern(11, PAGE)), (0x8000, pattern(12, PAGE))],
                b"EMiL",
                1,
                false,
            ),
            32,
        ),
        (
            "avml",
            lime(&[(0, pattern(13, 2 * PAGE))], b"AVML", 2, true),
            64,
        ),
    ];
    let edges: [u64; 8] = [
        0,
        1,
        0x7f,
        0xff,
        0x1000,
        u64::MAX,
        u64::MAX >> 1,
        0xffff_ffff,
    ];
    let mut rng = Rng(0x5eed);
    for (name, seed, span) in &seeds {
        assert!(open_bytes(seed, None).is_ok(), "{name} seed opens");
        for round in 0..300 {
            let mut m = seed.clone();
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let at = rng.below((*span).min(m.len()) as u64) as usize & !7;
                let width = [1usize, 2, 4, 8][rng.below(4) as usize];
                let v = if rng.below(2) == 0 {
                    edges[rng.below(8) as usize]
                } else {
                    rng.next()
                };
                let end = (at + width).min(m.len());
                m[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            if round % 10 == 0 {
                m.truncate(rng.below(m.len() as u64) as usize);
            }
            assert_clean(&m, &format!("{name} round {round}"));
        }
        // Corrupt the compressed bodies too: decompression errors, never panics.
        for round in 0..100 {
            let mut m = seed.clone();
            let at = *span as u64 + rng.below((m.len() - span) as u64);
            m[at as usize] ^= 1 << rng.below(8);
            assert_clean(&m, &format!("{name} body round {round}"));
        }
    }
}

#[test]
fn malformed_fields_are_named_with_their_values() {
    let pages = vec![(0u64, pattern(14, PAGE))];
    let good = kdump(8, &pages, 1, &[], b"");
    let mut bad = good.clone();
    bad[428..432].copy_from_slice(&1000u32.to_le_bytes());
    let e = open_bytes(&bad, None).err().unwrap();
    assert_eq!(
        (e.field.as_deref(), e.value),
        (Some("block_size"), Some(1000))
    );
    let mut bad = good.clone();
    let desc = 2 * PAGE + 2 * PAGE; // header, sub-header, two bitmap blocks
    bad[desc + 8..desc + 12].copy_from_slice(&5000u32.to_le_bytes());
    let e = open_bytes(&bad, None).err().unwrap();
    assert_eq!(
        (e.field.as_deref(), e.value),
        (Some("page descriptor 0 size"), Some(5000))
    );
    // A page whose zlib stream holds fewer bytes than a page.
    let mut short = kdump(8, &[(0, vec![7; PAGE])], 1, &[], b"");
    let small = {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&[7; 100]).unwrap();
        z.finish().unwrap()
    };
    let off = u64::from_le_bytes(short[desc..desc + 8].try_into().unwrap()) as usize;
    short.truncate(off);
    short.extend(&small);
    short[desc + 8..desc + 12].copy_from_slice(&(small.len() as u32).to_le_bytes());
    let d = open_bytes(&short, None).unwrap();
    let e = read_all(&d.memory, 0, 8).unwrap_err().to_string();
    assert!(
        e.contains("decompresses to 100 bytes") && e.contains("block_size 4096"),
        "{e}"
    );
    // ELF: a segment past the end of the file.
    let mut bad = elf(&[(0, 0, pattern(15, PAGE), PAGE as u64)], &[]);
    let at = 64 + 56 + 32;
    bad[at..at + 8].copy_from_slice(&0x10_0000u64.to_le_bytes());
    let e = open_bytes(&bad, None).err().unwrap();
    assert_eq!(e.field.as_deref(), Some("segment 1 p_filesz"));
    let e = open_bytes(&bad[..100], None).err().unwrap();
    assert_eq!(e.field.as_deref(), Some("e_phnum"), "{}", e.message);
    // LiME: an end before its start.
    let mut bad = lime(&[(0x1000, pattern(16, PAGE))], b"EMiL", 1, false);
    bad[16..24].copy_from_slice(&0x10u64.to_le_bytes());
    let e = open_bytes(&bad, None).err().unwrap();
    assert_eq!(
        (e.field.as_deref(), e.value),
        (Some("range 0 end"), Some(0x10))
    );
}

/// `info mem` ANDs the rights of every level; `info tlb` prints the leaf's own bits.
#[test]
fn info_mem_ands_every_levels_rights_and_info_tlb_prints_the_leaf() {
    let mem = PhysMem::new(1 << 20, 0, None).unwrap();
    // PML4 0x1000 -> PDPT 0x2000 (RW clear here) -> PD 0x3000 -> PT 0x4000.
    mem.write_u64(0x1000, 0x2000 | 0x7).unwrap();
    mem.write_u64(0x2000, 0x3000 | 0x5).unwrap();
    mem.write_u64(0x3000, 0x4000 | 0x7).unwrap();
    mem.write_u64(0x4000, 0x8000 | 0x7).unwrap(); // 0x0: user, writable leaf
    mem.write_u64(0x4008, 0x9000 | 0x3).unwrap(); // 0x1000: supervisor, writable leaf
    mem.write_u64(0x1008, 0x5000 | 0x3).unwrap(); // PML4[1] -> PDPT 0x5000: supervisor
    mem.write_u64(0x5000, 0x4000_0000 | 0x87).unwrap(); // a 1 GiB user page under a supervisor PML4E
    let (lines, _) = monitor::info_mem(&mem, 0x1000, monitor::MemWalk::La48, 100, 100);
    let text: Vec<String> = lines.iter().map(|l| l.text()).collect();
    assert_eq!(
        text,
        [
            "0000000000000000-0000000000001000 0000000000001000 ur-",
            "0000000000001000-0000000000002000 0000000000001000 -r-",
            "0000008000000000-0000008040000000 0000000040000000 -rw",
        ]
    );
    let (tlb, _) = monitor::info_tlb(&mem, 0x1000, false, 100, 100);
    let text: Vec<String> = tlb.iter().map(|l| l.text()).collect();
    assert_eq!(
        text,
        [
            "0000000000000000: 0000000000008000 -------UW",
            "0000000000001000: 0000000000009000 --------W",
            "0000008000000000: 0000000040000000 --P----UW",
        ]
    );
}

/// QEMU's 5-level `info mem` skips present PDPT/PD entries and walks absent ones; the corrected walk does not.
#[test]
fn la57_info_mem_follows_qemus_inverted_test_only_when_asked() {
    let mem = Arc::new(PhysMem::new(64 << 20, 0, None).unwrap());
    let fmt: Arc<dyn Format> = Arc::new(X86_64::new(5, 52, true, true, false, false).unwrap());
    let pt = PageTable::new(mem.clone(), fmt, Some(false)).unwrap();
    pt.map(0x40_0000, 0x20_0000, 0x20_0000, Perm::R, true, false)
        .unwrap();
    let right = monitor::info_mem(
        mem.as_ref(),
        pt.root(),
        monitor::MemWalk::La57,
        1 << 16,
        1 << 16,
    )
    .0;
    assert_eq!(
        right.iter().map(|l| l.text()).collect::<Vec<_>>(),
        ["0000000000400000-0000000000600000 0000000000200000 ur-"]
    );
    let (qemu, _) = monitor::info_mem(
        mem.as_ref(),
        pt.root(),
        monitor::MemWalk::La57Qemu,
        1 << 16,
        1 << 16,
    );
    assert!(
        qemu.iter().all(|l| l.start != 0x40_0000),
        "QEMU's la57 walk never reaches the real PD"
    );
}
