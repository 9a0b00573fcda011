"""Write the hostile dump corpus: ``python tests/corpus/dumps/make_corpus.py`` (deterministic).

Each file breaks one rule of its format (or holds page tables that loop);
:data:`EXPECT` says what ``vmopt inspect`` must do with it: fail with a
DumpError naming that field, or list a bounded, correct address space.
tests/test_dumps_hostile.py checks every file, and that this script still
writes exactly the committed bytes.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from dump_layouts import PAGE, Cpu, Guest, avml_bytes, flatten, kdump_bytes, lime_bytes, note  # noqa: E402

#: file -> ("error", the DumpError's field), ("list", regions, recursive regions), or
#: ("read", pa, what the error says) for a dump that opens but holds a page that does not decode.
EXPECT: dict[str, tuple[str, str] | tuple[str, int, int] | tuple[str, int, str]] = {
    "kdump_lzo_corrupt.kdump": ("read", 0x5000, "LZO error: a match reaches before the start of the page"),
    "kdump_zlib_short_page.kdump": ("read", 0x5000, "decompresses to 100 bytes"),
    "elf_truncated.elf": ("error", "e_shoff offset"),
    "elf_segment_past_end.elf": ("error", "segment 1 p_filesz"),
    "elf_filesz_over_memsz.elf": ("error", "segment 1 p_filesz"),
    "elf_overlapping_segments.elf": ("error", "segment 2 p_paddr"),
    "elf_phnum_past_end.elf": ("error", "e_phnum"),
    "elf_note_past_end.elf": ("error", "note n_descsz"),
    "elf_qemu_state_size.elf": ("error", "QEMUCPUState size"),
    "elf_zero_length_segment.elf": ("list", 3, 2),
    "elf_self_map_and_loops.elf": ("list", 3, 2),
    "kdump_block_size.kdump": ("error", "block_size"),
    "kdump_bitmaps_disagree.kdump": ("error", "bitmap2 pfn"),
    "kdump_more_pages_than_descriptors.kdump": ("error", "bitmap2 dumped pages"),
    "kdump_descriptor_past_end.kdump": ("error", "page descriptor 1 offset"),
    "kdump_descriptor_size.kdump": ("error", "page descriptor 0 size"),
    "kdump_max_mapnr.kdump": ("error", "max_mapnr_64"),
    "kdump_truncated.kdump": ("error", "sub_hdr_size"),
    "kdump_flat_no_end.flat": ("error", "flat record offset"),
    "kdump_flat_negative.flat": ("error", "flat record at 0x1000 offset"),
    "lime_end_before_start.lime": ("error", "range 0 end"),
    "lime_overlap.lime": ("error", "range 1 start"),
    "lime_truncated.lime": ("error", "range 0 end"),
    "avml_stream_size.avml": ("error", "range 0 stream size"),
    "avml_bad_chunk.avml": ("error", "range 0 snappy chunk type (at offset 0x20)"),
}


def _table_guest() -> Guest:
    """PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000 mapping 0x0 -> 0x5000; PML4[511] -> PML4
    (a self-map); PD[1] -> PDPT (a loop one level down); PML4[2] -> a PDPT outside the dump."""
    pml4, pdpt, pd, pt = bytearray(PAGE), bytearray(PAGE), bytearray(PAGE), bytearray(PAGE)
    struct.pack_into("<Q", pml4, 0, 0x2000 | 0x7)
    struct.pack_into("<Q", pml4, 8 * 511, 0x1000 | 0x3)
    struct.pack_into("<Q", pml4, 8 * 2, 0x4000_0000 | 0x3)
    struct.pack_into("<Q", pdpt, 0, 0x3000 | 0x7)
    struct.pack_into("<Q", pd, 0, 0x4000 | 0x7)
    struct.pack_into("<Q", pd, 8, 0x2000 | 0x7)
    struct.pack_into("<Q", pt, 0, 0x5000 | 0x7)
    pages = {
        0x1000: bytes(pml4),
        0x2000: bytes(pdpt),
        0x3000: bytes(pd),
        0x4000: bytes(pt),
        0x5000: b"\xab" * PAGE,
    }
    return Guest(ranges=[(0, 0x8000)], pages=pages, cpus=[Cpu(cr3=0x1000)])


def _elf(loads: list[tuple[int, int, int, int]], notes: bytes, *, phnum: int | None = None) -> bytes:
    """An ELF core with a PT_NOTE and PT_LOADs ``(p_offset, p_paddr, p_filesz, p_memsz)`` as given."""
    n = 1 + len(loads)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack(
        "<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, n if phnum is None else phnum, 0, 0, 0
    )
    note_off = 64 + 56 * n
    ph = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), len(notes), 0)
    for off, paddr, filesz, memsz in loads:
        ph += struct.pack("<IIQQQQQQ", 1, 7, off, 0, paddr, filesz, memsz, 0)
    return ehdr + ph + notes


def corpus() -> dict[str, bytes]:
    """Every corpus file's bytes."""
    g = _table_guest()
    mem = b"".join(g.page(pa) for pa in range(0, 0x8000, PAGE))
    notes = note(b"CORE", 1, bytes(336)) + note(b"QEMU", 0, _qemu(0x1000))
    base = 64 + 56 * 2 + len(notes)
    good = _elf([(base, 0, len(mem), len(mem))], notes) + mem
    out: dict[str, bytes] = {}
    out["elf_truncated.elf"] = good[:40]
    out["elf_segment_past_end.elf"] = _elf([(base, 0, len(mem) + PAGE, len(mem) + PAGE)], notes) + mem
    out["elf_filesz_over_memsz.elf"] = _elf([(base, 0, len(mem), PAGE)], notes) + mem
    b3 = 64 + 56 * 3 + len(notes)
    out["elf_overlapping_segments.elf"] = (
        _elf([(b3, 0, len(mem), len(mem)), (b3, 0x4000, PAGE, PAGE)], notes) + mem
    )
    out["elf_phnum_past_end.elf"] = _elf([(base, 0, len(mem), len(mem))], notes, phnum=1000) + mem
    bad_note = struct.pack("<III", 5, 0x7FFF_0000, 1) + b"CORE\0\0\0\0"
    nb = 64 + 56 * 2 + len(bad_note)
    out["elf_note_past_end.elf"] = _elf([(nb, 0, len(mem), len(mem))], bad_note) + mem
    small = note(b"CORE", 1, bytes(336)) + note(
        b"QEMU", 0, _qemu(0x1000)[:4] + struct.pack("<I", 100) + bytes(432)
    )
    sb = 64 + 56 * 2 + len(small)
    out["elf_qemu_state_size.elf"] = _elf([(sb, 0, len(mem), len(mem))], small) + mem
    zb = 64 + 56 * 3 + len(notes)
    out["elf_zero_length_segment.elf"] = _elf([(zb, 0x9000, 0, 0), (zb, 0, len(mem), len(mem))], notes) + mem
    out["elf_self_map_and_loops.elf"] = good
    k = kdump_bytes(g, "zlib")
    bad = bytearray(k)
    struct.pack_into("<I", bad, 428, 1000)
    out["kdump_block_size.kdump"] = bytes(bad)
    sub_hdr = struct.unpack_from("<I", k, 432)[0]
    bitmap = (1 + sub_hdr) * PAGE
    half = struct.unpack_from("<I", k, 436)[0] * PAGE // 2
    bad = bytearray(k)
    bad[bitmap] &= 0xFE  # pfn 0 dumped (bitmap2) but not valid (bitmap1)
    out["kdump_bitmaps_disagree.kdump"] = bytes(bad)
    desc = bitmap + 2 * half
    out["kdump_more_pages_than_descriptors.kdump"] = k[: desc + 24 * 4]  # 8 pages dumped, 4 descriptors
    bad = bytearray(k)
    struct.pack_into("<Q", bad, desc + 24, len(k) + PAGE)
    out["kdump_descriptor_past_end.kdump"] = bytes(bad)
    bad = bytearray(k)
    struct.pack_into("<I", bad, desc + 8, 5000)
    out["kdump_descriptor_size.kdump"] = bytes(bad)
    bad = bytearray(k)
    struct.pack_into("<Q", bad, PAGE + 96, 1 << 40)
    out["kdump_max_mapnr.kdump"] = bytes(bad)
    out["kdump_truncated.kdump"] = k[:600]
    out["kdump_lzo_corrupt.kdump"] = _corrupt_page(kdump_bytes(g, "lzo"), 5, b"\x16abcde\x21\x8c\x01\x11\0\0")
    out["kdump_zlib_short_page.kdump"] = _corrupt_page(k, 5, zlib.compress(b"\xab" * 100))
    flat = flatten(k, shuffle=False)
    out["kdump_flat_no_end.flat"] = flat[:-16]
    bad = bytearray(flat)
    struct.pack_into(">q", bad, 4096, -5)
    out["kdump_flat_negative.flat"] = bytes(bad)
    lime = bytearray(lime_bytes(g))
    struct.pack_into("<QQ", lime, 8, 0x5000, 0x10)
    out["lime_end_before_start.lime"] = bytes(lime)
    two = Guest(ranges=[(0, 0x2000), (0x3000, 0x4000)], pages={})
    lime = bytearray(lime_bytes(two))
    struct.pack_into("<Q", lime, 32 + 0x2000 + 8, 0x1000)  # range 1 starts inside range 0
    struct.pack_into("<Q", lime, 32 + 0x2000 + 16, 0x1FFF)
    out["lime_overlap.lime"] = bytes(lime)
    out["lime_truncated.lime"] = lime_bytes(g)[:PAGE]
    avml = bytearray(avml_bytes(g))
    struct.pack_into("<Q", avml, len(avml) - 8, 12345)
    out["avml_stream_size.avml"] = bytes(avml)
    avml = bytearray(avml_bytes(g))
    avml[32] = 0x05  # a reserved unskippable chunk type where the stream identifier is
    out["avml_bad_chunk.avml"] = bytes(avml)
    return out


def _corrupt_page(kdump: bytes, pfn: int, data: bytes) -> bytes:
    """``kdump`` with page ``pfn``'s bytes replaced by ``data`` (appended; its descriptor points there)."""
    sub_hdr = struct.unpack_from("<I", kdump, 432)[0]
    bitmap_blocks = struct.unpack_from("<I", kdump, 436)[0]
    desc = (1 + sub_hdr + bitmap_blocks) * PAGE + 24 * pfn  # every pfn below it is dumped
    out = bytearray(kdump)
    struct.pack_into("<QI", out, desc, len(out), len(data))
    return bytes(out + data)


def _qemu(cr3: int) -> bytes:
    body = (
        struct.pack("<II", 1, 440) + bytes(384) + struct.pack("<5Q", 0x80050033, 0, 0, cr3, 0x20) + bytes(8)
    )
    return body


def main() -> None:
    for name, data in corpus().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(EXPECT)} files to {HERE}")


if __name__ == "__main__":
    main()
