"""Writers of the dump formats vmopt reads, from their documented layouts, for tests and benchmarks.

Written from the format descriptions (QEMU's ``dump.h``/``dump.c`` ELF and
kdump layouts, makedumpfile's ``diskdump_mod.h`` and flattened format,
LiME's and AVML's range headers, the snappy framing format, the LZO1X
instruction set), independently of the core's readers, using ``struct``
field by field. A :class:`Guest` is sparse: its RAM ranges and the 4 KiB
pages that are not zero. Files are written with seeks, so RAM that is all
zeros costs no disk (a 4 GiB guest's ELF core is a sparse file).
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

PAGE = 4096
EM_X86_64 = 62

#: kdump page-descriptor compression flags (makedumpfile's DUMP_DH_COMPRESSED_*).
KDUMP_FLAGS = {"none": 0, "zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20}


@dataclass
class Cpu:
    """One vCPU's control registers (and a rip) for the QEMU and NT_PRSTATUS notes."""

    cr3: int
    cr4: int = 0x3406E0
    cr0: int = 0x80050033
    rip: int = 0xFFFFFFFF81000000
    state_size: int = 440  # QEMUCPUState: 432 in older QEMU, 440 with kernel_gs_base


@dataclass
class Guest:
    """Guest-physical memory as RAM ranges and its non-zero pages, with CPU state and VMCOREINFO."""

    ranges: list[tuple[int, int]]
    pages: dict[int, bytes] = field(default_factory=dict)
    cpus: list[Cpu] = field(default_factory=list)
    vmcoreinfo: bytes | None = None

    def page(self, pa: int) -> bytes:
        """The 4 KiB page at ``pa`` (zeros unless written)."""
        return self.pages.get(pa, bytes(PAGE))

    def read(self, pa: int, n: int) -> bytes:
        """``n`` bytes at ``pa`` (zeros where no page was written)."""
        out = bytearray()
        while len(out) < n:
            cur = pa + len(out)
            base = cur & ~(PAGE - 1)
            chunk = self.page(base)[cur - base :]
            out += chunk[: n - len(out)]
        return bytes(out)

    def written_in(self, start: int, end: int) -> list[int]:
        """The written pages inside ``[start, end)``, sorted."""
        return sorted(pa for pa in self.pages if start <= pa < end)


# -- notes -----------------------------------------------------------------------------


def note(name: bytes, kind: int, desc: bytes) -> bytes:
    """An ELF note: namesz, descsz, type, name + NUL padded to 4, desc padded to 4."""
    name0 = name + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name0), len(desc), kind) + pad(name0) + pad(desc)


def qemu_cpu_state(cpu: Cpu) -> bytes:
    """QEMUCPUState (x86-64): version, size, 18 GPRs incl. rip/rflags, 10 segments, cr[5], kernel_gs_base."""
    gprs = [0x1000 + i for i in range(16)] + [cpu.rip, 0x246]
    segment = struct.pack("<IIIIQ", 0x10, 0xFFFFFFFF, 0xA09B00, 0, 0)
    body = struct.pack("<II", 1, cpu.state_size) + struct.pack("<18Q", *gprs) + segment * 10
    body += struct.pack("<5Q", cpu.cr0, 0, 0, cpu.cr3, cpu.cr4)
    if cpu.state_size >= 440:
        body += struct.pack("<Q", 0xFFFF888007A00000)
    return body


def prstatus(cpu: Cpu, pid: int) -> bytes:
    """The x86-64 ``elf_prstatus`` (336 bytes): pr_pid at 32, pr_reg (27 registers) at 112."""
    desc = bytearray(336)
    struct.pack_into("<I", desc, 32, pid)
    regs = [0] * 27
    regs[16] = cpu.rip  # user_regs_struct: r15 r14 ... orig_rax rip cs eflags rsp ...
    struct.pack_into("<27Q", desc, 112, *regs)
    return bytes(desc)


def cpu_notes(guest: Guest) -> bytes:
    """Per vCPU, the ``CORE`` NT_PRSTATUS then the ``QEMU`` note, then VMCOREINFO, as QEMU writes them."""
    out = b""
    for i, cpu in enumerate(guest.cpus):
        out += note(b"CORE", 1, prstatus(cpu, i + 1)) + note(b"QEMU", 0, qemu_cpu_state(cpu))
    if guest.vmcoreinfo is not None:
        out += note(b"VMCOREINFO", 0, guest.vmcoreinfo)
    return out


# -- ELF --------------------------------------------------------------------------------


def write_elf(guest: Guest, path: Path, *, virtual: list[tuple[int, int, int]] | None = None) -> None:
    """A QEMU ``dump-guest-memory`` ELF core: PT_NOTE, then a PT_LOAD per RAM range (p_paddr).

    ``virtual`` gives ``(vaddr, paddr, size)`` segments instead, as a
    ``paging=true`` dump has them (frames may repeat).
    """
    notes = cpu_notes(guest)
    loads = virtual if virtual is not None else [(0, s, e - s) for s, e in guest.ranges]
    phnum = 1 + len(loads)
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, EM_X86_64, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    note_off = 64 + 56 * phnum
    data_off = (note_off + len(notes) + PAGE - 1) & ~(PAGE - 1)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), len(notes), 0)
    offsets = []
    off = data_off
    for vaddr, paddr, size in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, off, vaddr, paddr, size, size, 0)
        offsets.append(off)
        off += size
    with open(path, "wb") as f:
        f.write(ehdr + phdrs + notes)
        f.truncate(off)
        for (_vaddr, paddr, size), seg_off in zip(loads, offsets, strict=True):
            for pa in guest.written_in(paddr, paddr + size):
                f.seek(seg_off + pa - paddr)
                f.write(guest.pages[pa])


def write_raw(guest: Guest, path: Path) -> None:
    """A raw image (``pmemsave`` of all RAM): byte ``pa`` at offset ``pa``; holes between ranges are zeros."""
    end = max(e for _s, e in guest.ranges)
    with open(path, "wb") as f:
        f.truncate(end)
        for pa in sorted(guest.pages):
            f.seek(pa)
            f.write(guest.pages[pa])


# -- page compressors --------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def snappy_raw(data: bytes) -> bytes:
    """A raw snappy block: the length varint, then per 4 KiB block a literal, or for a block of one
    repeated byte, that byte and copies of 64 bytes at offset 1."""
    out = bytearray(_varint(len(data)))
    for off in range(0, len(data), PAGE):
        block = data[off : off + PAGE]
        if len(block) > 65 and block.count(block[0]) == len(block):
            out += _snappy_literal(block[:1])
            left = len(block) - 1
            while left:
                n = min(left, 64)
                if n < 4:
                    out += _snappy_literal(block[:n])
                else:
                    out += bytes([((n - 1) << 2) | 2]) + struct.pack("<H", 1)
                left -= n
        else:
            out += _snappy_literal(block)
    return bytes(out)


def _snappy_literal(chunk: bytes) -> bytes:
    n = len(chunk) - 1
    if n < 60:
        return bytes([n << 2]) + chunk
    if n < 256:
        return bytes([60 << 2, n]) + chunk
    return bytes([61 << 2]) + struct.pack("<H", n) + chunk


def lzo1x_uniform(data: bytes) -> bytes | None:
    """LZO1X for a page of one repeated byte: 5 literals, one M3 copy at distance 1, the end marker."""
    if len(set(data)) != 1 or len(data) < 40:
        return None
    copy = len(data) - 5  # M3: length = 2 + 31 + 255 * zero_bytes + non_zero_byte
    rest = copy - 33
    zeros, last = divmod(rest, 255)
    if last == 0:
        zeros, last = zeros - 1, 255
    return bytes([17 + 5]) + data[:5] + bytes([32]) + bytes(zeros) + bytes([last]) + b"\0\0" + b"\x11\0\0"


def compress_page(page: bytes, how: str) -> bytes | None:
    """``page`` compressed as a kdump page (None if the method cannot or it would not be smaller)."""
    if how == "zlib":
        out: bytes | None = zlib.compress(page)
    elif how == "zstd":
        out = zstandard.ZstdCompressor().compress(page)
    elif how == "snappy":
        out = snappy_raw(page)
    elif how == "lzo":
        out = lzo1x_uniform(page)
    else:
        out = None
    return out if out is not None and len(out) < len(page) else None


# -- kdump --------------------------------------------------------------------------------


def kdump_bytes(guest: Guest, how: str = "zlib", *, phys_base: int = 0, header_version: int = 6) -> bytes:
    """A kdump-compressed file in QEMU's layout.

    Header block, sub-header with the notes after it, the two bitmaps, the
    descriptors, the pages (zero pages share one stored page).
    """
    bs = PAGE
    max_mapnr = max(e for _s, e in guest.ranges) // bs
    notes = cpu_notes(guest)
    sub_len = 104
    note_off = bs + sub_len
    sub_hdr_size = (sub_len + len(notes) + bs - 1) // bs
    bitmap_len = ((max_mapnr + 7) // 8 + bs - 1) // bs * bs
    bitmap_blocks = 2 * bitmap_len // bs
    bitmap_off = (1 + sub_hdr_size) * bs
    desc_off = bitmap_off + 2 * bitmap_len
    pfns = [pfn for s, e in guest.ranges for pfn in range(s // bs, e // bs)]
    bitmap = bytearray(bitmap_len)
    for pfn in pfns:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    vmci = b""
    vmci_off = 0
    if guest.vmcoreinfo is not None:
        # The VMCOREINFO note's descriptor, inside the notes (as QEMU points at it).
        vmci = guest.vmcoreinfo
        idx = notes.rfind(b"VMCOREINFO\0")
        vmci_off = note_off + idx + 12  # namesz 11 padded to 12
    head = bytearray(bs)
    head[0:8] = b"KDUMP   "
    struct.pack_into("<I", head, 8, header_version)
    head[12:18] = b"Linux\0"
    struct.pack_into(
        "<10I", head, 424, 0, bs, sub_hdr_size, bitmap_blocks, max_mapnr, 0, 0, 0, 0, len(guest.cpus)
    )
    sub = struct.pack(
        "<QIIQQQQQQQQQQQ",
        phys_base,
        1,
        0,
        0,
        max_mapnr,
        vmci_off,
        len(vmci),
        note_off if notes else 0,
        len(notes),
        0,
        0,
        0,
        max_mapnr,
        max_mapnr,
    )
    data_off = desc_off + 24 * len(pfns)
    descs = bytearray()
    body = bytearray()
    zero_at: int | None = None
    for pfn in pfns:
        page = guest.page(pfn * bs)
        if page == bytes(bs) and zero_at is not None:
            descs += struct.pack("<QIIQ", zero_at, bs, 0, 0)  # QEMU shares one zero page
            continue
        packed = compress_page(page, how)
        flags = KDUMP_FLAGS[how] if packed is not None else 0
        stored = packed if packed is not None else page
        at = data_off + len(body)
        if page == bytes(bs) and packed is None:
            zero_at = at
        descs += struct.pack("<QIIQ", at, len(stored), flags, 0)
        body += stored
    out = bytearray(head)
    out += sub + notes
    out += bytes(bitmap_off - len(out))
    out += bitmap + bitmap
    out += descs + body
    return bytes(out)


def flatten(file: bytes, *, piece: int = 8192, shuffle: bool = True) -> bytes:
    """makedumpfile's flattened form: a 4 KiB header, (offset, size) BE records with their bytes, (-1, -1)."""
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out += bytes(4096 - len(out))
    records = [(off, file[off : off + piece]) for off in range(0, len(file), piece)]
    if shuffle and len(records) > 2:
        records = records[1:] + records[:1]  # the header last, as makedumpfile may rewrite it
    for off, data in records:
        out += struct.pack(">qq", off, len(data)) + data
    out += struct.pack(">qq", -1, -1)
    return bytes(out)


# -- LiME and AVML --------------------------------------------------------------------------


def _range_header(magic: bytes, version: int, start: int, end: int) -> bytes:
    return magic + struct.pack("<IQQQ", version, start, end - 1, 0)


def lime_bytes(guest: Guest) -> bytes:
    """LiME: per RAM range a 32-byte header (``EMiL``, version 1, start, inclusive end) and its bytes."""
    out = bytearray()
    for s, e in guest.ranges:
        out += _range_header(b"EMiL", 1, s, e) + guest.read(s, e - s)
    return bytes(out)


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C = _crc_table()


@functools.lru_cache(maxsize=64)
def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the snappy framing format checksums each chunk's uncompressed bytes."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def snappy_frames(data: bytes, *, chunk: int = 65536) -> bytes:
    """The snappy framing format: ``sNaPpY``, then compressed (or stored) chunks with masked CRC32C."""
    out = bytearray(b"\xff\x06\x00\x00sNaPpY")
    for off in range(0, len(data), chunk):
        part = data[off : off + chunk]
        packed = snappy_raw(part)
        crc = struct.pack("<I", _masked(_crc32c(part)))
        kind, body = (0x00, packed) if len(packed) < len(part) else (0x01, part)
        n = len(body) + 4
        out += bytes([kind]) + struct.pack("<I", n)[:3] + crc + body
    return bytes(out)


def avml_bytes(guest: Guest) -> bytes:
    """AVML v2: per RAM range a header (``AVML``, version 2), its snappy frame stream, the stream's length."""
    out = bytearray()
    for s, e in guest.ranges:
        stream = snappy_frames(guest.read(s, e - s))
        out += _range_header(b"AVML", 2, s, e) + stream + struct.pack("<Q", len(stream))
    return bytes(out)


def write_all(guest: Guest, directory: Path, *, kdump: str = "zlib") -> dict[str, Path]:
    """Every format of ``guest`` in ``directory``: name -> path."""
    paths = {
        "elf": directory / "guest.elf",
        "raw": directory / "guest.raw",
        "kdump": directory / "guest.kdump",
        "kdump-flat": directory / "guest.flat",
        "lime": directory / "guest.lime",
        "avml": directory / "guest.avml",
    }
    write_elf(guest, paths["elf"])
    write_raw(guest, paths["raw"])
    k = kdump_bytes(guest, kdump)
    paths["kdump"].write_bytes(k)
    paths["kdump-flat"].write_bytes(flatten(k))
    paths["lime"].write_bytes(lime_bytes(guest))
    paths["avml"].write_bytes(avml_bytes(guest))
    return paths


# -- a guest from vmopt memory, and QEMU's monitor listings over it -------------------------


def guest_from_memory(mem: object, ranges: list[tuple[int, int]], cpus: list[Cpu]) -> Guest:
    """The written frames of a vmopt ``PhysicalMemory`` as a :class:`Guest` with RAM ``ranges``."""
    from vmopt.memory.physical import PhysicalMemory

    assert isinstance(mem, PhysicalMemory)
    pages = {pa: mem.read(pa, PAGE) for pa in mem.iter_resident()}
    return Guest(ranges=ranges, pages={pa: b for pa, b in pages.items() if any(b)}, cpus=cpus)


_P, _RW, _US, _PS = 1, 2, 4, 0x80
_TABLE = 0x3_FFFF_FFFF_F000


def _canonical(a: int, la57: bool) -> int:
    bit = 56 if la57 else 47
    return a | (((1 << 64) - 1) ^ ((1 << (bit + 1)) - 1)) if a >> bit & 1 else a


def qemu_info_mem(
    guest: Guest, cr3: int, la57: bool, *, as_qemu: bool = True, max_tables: int | None = None
) -> list[str]:
    """QEMU's ``info mem`` (``mem_info_la48``/``la57`` and ``mem_print``), transcribed to Python.

    ``mem_info_la57``'s PDPT and PD loops test the present bit inverted
    (present entries print as unmapped, absent ones are descended); with
    ``as_qemu`` this transcription keeps that, as the monitor prints it.
    ``max_tables`` stops after entering that many tables, printing nothing
    more (vmopt's cap); None walks everything, as QEMU does.
    """
    out: list[str] = []
    state = {"start": -1, "prot": 0, "tables": 0, "stopped": 0}

    def entry(table: int, i: int) -> int:
        return int.from_bytes(guest.read(table + 8 * i, 8), "little")

    def mem_print(end: int, prot: int) -> None:
        if prot != state["prot"]:
            start = state["start"]
            if start != -1:
                p = state["prot"]
                out.append(
                    f"{_canonical(start, la57):016x}-{_canonical(end, la57):016x}"
                    f" {_canonical((end - start) % (1 << 64), la57):016x}"
                    f" {'u' if p & _US else '-'}r{'w' if p & _RW else '-'}"
                )
            state["start"] = end if prot else -1
            state["prot"] = prot

    def level(table: int, lvl: int, base: int, parents: int) -> None:
        state["tables"] += 1
        if max_tables is not None and state["tables"] > max_tables:
            state["stopped"] = 1
        for i in range(512):
            if state["stopped"]:
                return
            e = entry(table, i)
            va = base + (i << (12 + 9 * (lvl - 1)))
            if as_qemu and la57 and lvl in (3, 2):
                # mem_info_la57: "if (pdpe & PG_PRESENT_MASK) { prot = 0; mem_print(...); continue; }"
                if e & _P:
                    mem_print(va, 0)
                elif e & _PS:
                    mem_print(va, e & (_US | _RW | _P) & parents)
                else:
                    level(e & _TABLE, lvl - 1, va, parents & e)
            elif not e & _P:
                mem_print(va, 0)
            elif lvl == 1 or (lvl <= 3 and e & _PS):
                mem_print(va, e & (_US | _RW | _P) & parents)
            else:
                level(e & _TABLE, lvl - 1, va, parents & e)

    levels = 5 if la57 else 4
    level(cr3 & _TABLE, levels, 0, (1 << 64) - 1)
    if not state["stopped"]:
        mem_print(1 << (12 + 9 * levels), 0)
    return out


def qemu_info_tlb(guest: Guest, cr3: int, la57: bool) -> list[str]:
    """QEMU's ``info tlb`` (``tlb_info_la48``/``la57`` and ``print_pte``), transcribed to Python."""
    out: list[str] = []
    flags = [(63, "X"), (8, "G"), (7, "P"), (6, "D"), (5, "A"), (4, "C"), (3, "T"), (2, "U"), (1, "W")]

    def entry(table: int, i: int) -> int:
        return int.from_bytes(guest.read(table + 8 * i, 8), "little")

    def print_pte(addr: int, pte: int, mask: int) -> None:
        letters = "".join(c if pte >> bit & 1 else "-" for bit, c in flags)
        out.append(f"{_canonical(addr, la57):016x}: {pte & mask:016x} {letters}")

    def level(table: int, lvl: int, base: int) -> None:
        for i in range(512):
            e = entry(table, i)
            if not e & _P:
                continue
            va = base + (i << (12 + 9 * (lvl - 1)))
            if lvl == 3 and e & _PS:
                print_pte(va, e, 0x3_FFFF_C000_0000)
            elif lvl == 2 and e & _PS:
                print_pte(va, e, 0x3_FFFF_FFE0_0000)
            elif lvl == 1:
                print_pte(va, e & ~_PS, _TABLE)
            else:
                level(e & _TABLE, lvl - 1, va)

    level(cr3 & _TABLE, 5 if la57 else 4, 0)
    return out
