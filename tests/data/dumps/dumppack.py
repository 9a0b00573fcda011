#!/usr/bin/env python3
"""Store QEMU's dump files without storing guest RAM twice; rebuild them byte for byte.

An ELF or kdump file QEMU writes is mostly guest RAM: an ELF PT_LOAD holds
``guest.raw[p_paddr:p_paddr + p_filesz]``, and a kdump page payload is the
raw page or ``zlib.compress(page, 1)`` (QEMU's ``compress2(..., Z_BEST_SPEED)``
gives the same bytes with the same zlib). :func:`pack` cuts every such range
out of a file, after checking that it regenerates exactly, and keeps the
rest (headers, notes, bitmaps, descriptors, anything that does not
regenerate) as a *skeleton*; :func:`unpack` rebuilds the file from the
skeleton and the raw image and checks the SHA-256 of QEMU's original.

Skeleton layout (little-endian): magic ``VMOPTSKL``, u32 version (1), u32
splice count N, u64 file size, 32-byte SHA-256 of the file, N splices of
(u64 file offset, u32 length, u32 kind, u64 physical address) in file order,
then the kept bytes. Kind 0 copies ``length`` raw bytes at the address; kind 1
is ``zlib.compress`` (level 1) of the 4 KiB page there, ``length`` bytes long.

Run as ``python dumppack.py unpack ARCHIVE DEST`` to get the real files of
every capture (``dumps.tar.xz`` beside this file).
"""

from __future__ import annotations

import bisect
import hashlib
import lzma
import mmap
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

MAGIC = b"VMOPTSKL"
_HEAD = struct.Struct("<8sIIQ32s")
_SPLICE = struct.Struct("<QIIQ")
RAW, ZLIB1 = 0, 1
PAGE = 4096
#: Suffix of a skeleton member in the archive: guest.elf -> guest.elf.skel.
SKELETON = ".skel"

Splice = tuple[int, int, int, int]  # (file offset, length, kind, physical address)


def _make(kind: int, pa: int, length: int, raw: bytes | mmap.mmap) -> bytes:
    if kind == RAW:
        return bytes(raw[pa : pa + length])
    return zlib.compress(bytes(raw[pa : pa + PAGE]), 1)


def elf_splices(data: bytes, raw: bytes | mmap.mmap) -> list[Splice]:
    """The PT_LOADs of an ELF64 core whose bytes are the raw image's at p_paddr."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 file")
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    if phnum == 0xFFFF:  # PN_XNUM: the count is section header 0's sh_info
        phnum = struct.unpack_from("<I", data, struct.unpack_from("<Q", data, 40)[0] + 44)[0]
    out = []
    for i in range(phnum):
        kind, _flags, offset, _vaddr, paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if kind != 1 or not filesz or paddr + filesz > len(raw):
            continue
        # Long segments are cut in pieces (u32 lengths); each is checked against the raw image.
        for start in range(0, filesz, 1 << 30):
            n = min(1 << 30, filesz - start)
            if data[offset + start : offset + start + n] == raw[paddr + start : paddr + start + n]:
                out.append((offset + start, n, RAW, paddr + start))
    return out


def flat_records(data: bytes) -> list[tuple[int, int, int]]:
    """(image offset, size, file position) of each record of a flattened makedumpfile stream."""
    if not data.startswith(b"makedumpfile\0"):
        raise ValueError("not a flattened makedumpfile stream")
    records = []
    pos = 4096
    while True:
        off, size = struct.unpack_from(">qq", data, pos)
        pos += 16
        if off == -1:
            return records
        records.append((off, size, pos))
        pos += size


def kdump_pages(image: bytes | bytearray) -> Iterator[tuple[int, int, int, int]]:
    """(pfn, payload offset, payload size, flags) of each dumpable page of an assembled kdump file."""
    if image[:8] != b"KDUMP   ":
        raise ValueError("no KDUMP header")
    block, sub_blocks, bitmap_blocks = struct.unpack_from("<iiI", image, 428)
    max_mapnr = struct.unpack_from("<Q", image, block + 104)[0]
    half = bitmap_blocks * block // 2
    bitmap2 = image[(1 + sub_blocks) * block + half :][:half]
    descs = (1 + sub_blocks + bitmap_blocks) * block
    n = 0
    for pfn in range(min(max_mapnr, len(bitmap2) * 8)):
        if bitmap2[pfn >> 3] >> (pfn & 7) & 1:
            off, size, flags, _page_flags = struct.unpack_from("<qIIQ", image, descs + 24 * n)
            n += 1
            yield pfn, off, size, flags


def flat_image(data: bytes) -> bytearray:
    """The kdump file a flattened stream stands for (its records written at their offsets)."""
    records = flat_records(data)
    image = bytearray(max(off + size for off, size, _ in records))
    for off, size, at in records:
        image[off : off + size] = data[at : at + size]
    return image


def kdump_flat_splices(data: bytes, raw: bytes | mmap.mmap) -> list[Splice]:
    """The page payloads of a flattened kdump (QEMU's kdump-*) that the raw image regenerates."""
    records = sorted(flat_records(data))
    image = flat_image(data)
    starts = [r[0] for r in records]
    out: dict[int, Splice] = {}
    for pfn, off, size, flags in kdump_pages(image):
        pa = pfn * PAGE
        kind = {0: RAW, 1: ZLIB1}.get(flags)
        if kind is None or pa + PAGE > len(raw) or (kind == RAW and size != PAGE):
            continue
        r = bisect.bisect_right(starts, off) - 1
        if r < 0:
            continue
        r_off, r_size, r_at = records[r]
        if off + size > r_off + r_size:
            continue
        at = r_at + off - r_off
        if at in out or data[at : at + size] != _make(kind, pa, size, raw):
            continue
        out[at] = (at, size, kind, pa)
    return sorted(out.values())


def pack(data: bytes, splices: Iterable[Splice]) -> bytes:
    """The skeleton of ``data`` without the (checked) ``splices``."""
    chosen: list[Splice] = []
    for at, length, kind, pa in sorted(splices, key=lambda s: (s[0], -s[1])):
        end = chosen[-1][0] + chosen[-1][1] if chosen else 0
        if at < end:  # overlaps (paging ELFs share file bytes): keep what is left of a raw copy
            if kind != RAW or at + length <= end:
                continue
            at, length, pa = end, at + length - end, pa + end - at
        chosen.append((at, length, kind, pa))
    kept = []
    pos = 0
    for at, length, _kind, _pa in chosen:
        if at < pos:
            raise ValueError(f"overlapping splice at {at:#x}")
        kept.append(data[pos:at])
        pos = at + length
    kept.append(data[pos:])
    head = _HEAD.pack(MAGIC, 1, len(chosen), len(data), hashlib.sha256(data).digest())
    return head + b"".join(_SPLICE.pack(*s) for s in chosen) + b"".join(kept)


def unpack(skeleton: bytes, raw: bytes | mmap.mmap, dest: Path) -> None:
    """Rebuild the file packed in ``skeleton`` at ``dest``; raise if its SHA-256 differs."""
    magic, version, count, size, digest = _HEAD.unpack_from(skeleton)
    if magic != MAGIC or version != 1:
        raise ValueError("not a version 1 dump skeleton")
    table = _HEAD.size
    kept = table + count * _SPLICE.size
    sha = hashlib.sha256()
    pos = 0
    with dest.open("wb") as out:

        def put(chunk: bytes) -> None:
            out.write(chunk)
            sha.update(chunk)

        for i in range(count):
            at, length, kind, pa = _SPLICE.unpack_from(skeleton, table + i * _SPLICE.size)
            put(skeleton[kept : kept + at - pos])
            kept += at - pos
            chunk = _make(kind, pa, length, raw)
            if len(chunk) != length:
                raise ValueError(f"{dest.name}: splice at {at:#x} made {len(chunk)} bytes, not {length}")
            put(chunk)
            pos = at + length
        put(skeleton[kept:])
        pos += len(skeleton) - kept
    if pos != size or sha.digest() != digest:
        raise ValueError(f"{dest.name}: rebuilt file differs from QEMU's original (size {pos} vs {size})")


def unpack_archive(archive: Path, dest: Path) -> list[Path]:
    """Extract ``archive`` (tar.xz of raw images and skeletons) and rebuild every dump file."""
    with lzma.open(archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    rebuilt = []
    for skel in sorted(dest.glob(f"*/*{SKELETON}")):
        target = skel.with_name(skel.name.removesuffix(SKELETON))
        with (
            (skel.parent / "guest.raw").open("rb") as f,
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw,
        ):
            unpack(skel.read_bytes(), raw, target)
        skel.unlink()
        rebuilt.append(target)
    return rebuilt


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "unpack":
        sys.exit("usage: dumppack.py unpack ARCHIVE DEST")
    for path in unpack_archive(Path(sys.argv[2]), Path(sys.argv[3])):
        print(path)
