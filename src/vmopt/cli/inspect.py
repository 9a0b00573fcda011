"""``vmopt inspect``: list the mappings of page tables inside a guest memory dump.

The dump (a raw image, a QEMU ``dump-guest-memory`` ELF core, a kdump file,
raw or flattened, LiME or AVML; detected by magic, or ``--format``) is
mapped read-only (never loaded whole) and walked without setting
accessed/dirty bits, so inspecting a dump never changes it. The listing is
:meth:`PageTable.mappings`, one coalesced region per line, printed as it is
found; ``--info mem`` and ``--info tlb`` print QEMU's own monitor listings
line for line; ``--va`` prints the walk of an address PTE by PTE; the
``read`` action prints bytes at ``--va`` or ``--pa``.

The page-table root: ``--root``/``--cr3``/``--satp`` when given; else vCPU
0's CR3 from the dump (``--cpu N`` another, ``--all-cpus`` each), 4- or
5-level by its CR4.LA57; else, with no CPU state, the kernel's root from
VMCOREINFO's ``SYMBOL(swapper_pg_dir)`` (see docs/inspect.md).

Any dump takes bounded time and memory: a table that points back at a
table on its own path (a self-map) is one ``recursive`` line, not descended;
``--max-regions`` (default :data:`DEFAULT_MAX_REGIONS`) and ``--max-tables``
(default :data:`DEFAULT_MAX_TABLES`) stop the listing with a warning.

``--root`` takes an address or a full register value: for x86 a CR3 (the
low 12 bits, PCID or PWT/PCD, and bits 63:61, no-flush and LAM, are
ignored); for RISC-V a satp (MODE in bits 63:60, 8 = Sv39, 9 = Sv48,
10 = Sv57, ASID in 59:44, root = PPN * 4096). With no paging format given, a
value whose bits 63:60 hold MODE 8 or 9 is read as a satp and selects sv39
or sv48; an Sv57 satp needs ``--format sv57`` or ``--satp`` (MODE 10 is also
a no-flush CR3 with LAM_U57 set, so it is not guessed). For AArch64
(``--format aarch64``, ``aarch64_16k``, ``aarch64_64k``) a TTBR0_EL1 value:
ASID in 63:48, BADDR in 47:1, CnP in bit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from vmopt.cli.outputs import check_file, write_error
from vmopt.dumps import DUMP_FORMATS, Dump, info_mem, info_tlb
from vmopt.errors import AddressError, ConfigError
from vmopt.memory.physical import FRAME_SIZE, PhysicalMemory
from vmopt.paging.pagetable import FORMATS, PageTable
from vmopt.paging.types import Mapping, PageFault, page_size_name, perms_str
from vmopt.units import format_size

__all__ = [
    "DEFAULT_MAX_REGIONS",
    "DEFAULT_MAX_TABLES",
    "Root",
    "hexdump",
    "parse_address",
    "register",
    "resolve_root",
    "run",
]

DEFAULT_FORMAT = "x86_64"
#: Regions listed before ``inspect`` stops with a warning (``--max-regions``).
DEFAULT_MAX_REGIONS: Final = 100_000
#: Page-table pages read before ``inspect`` stops with a warning (``--max-tables``):
#: 512 GiB mapped with 4 KiB pages needs 262,657 tables.
DEFAULT_MAX_TABLES: Final = 1 << 20
#: satp MODE field values (RV64) that select a format when --format is omitted.
SATP_MODES = {8: "sv39", 9: "sv48"}
#: The satp MODE of each RISC-V format.
SATP_MODE_OF = {"sv39": 8, "sv48": 9, "sv57": 10}
_U64_MAX = (1 << 64) - 1
#: CR3 bits that are not part of the table address: no-flush (63), LAM_U48 (62), LAM_U57 (61), PCID.
_CR3_IGNORED = (1 << 63) | (1 << 62) | (1 << 61) | 0xFFF
_SATP_PPN = (1 << 44) - 1
#: TTBR_EL1.BADDR (bits 47:1; ASID is 63:48, CnP bit 0).
_TTBR_BADDR = ((1 << 48) - 1) & ~1


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand."""
    p = sub.add_parser(
        "inspect",
        help="list the mappings of page tables inside a guest memory dump",
        description=(
            "Walk the page tables inside a guest memory dump (raw, QEMU ELF, kdump, LiME or AVML;"
            " read-only, never written) and print its mapped regions, or QEMU's `info mem`/`info tlb`."
        ),
    )
    p.add_argument(
        "image",
        metavar="DUMP",
        help="guest memory dump: raw image (physical address 0 = first byte), ELF, kdump, LiME or AVML",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["read"],
        help="read: print bytes at --va or --pa (--length N, --raw) instead of listing",
    )
    roots = p.add_mutually_exclusive_group()
    roots.add_argument(
        "--root",
        metavar="ADDR",
        help=(
            "page-table root: an address, a full CR3 (x86) or a full satp (RISC-V); hex 0x... or decimal."
            " Without a paging --format, MODE 8/9 in bits 63:60 means a satp:"
            " give --format for a no-flush CR3"
            " (default: the vCPU's CR3 from the dump, else VMCOREINFO's swapper_pg_dir)"
        ),
    )
    roots.add_argument("--cr3", metavar="VALUE", help="page-table root as a full x86 CR3 value")
    roots.add_argument("--satp", metavar="VALUE", help="page-table root as a full RISC-V satp value")
    cpus = p.add_mutually_exclusive_group()
    cpus.add_argument(
        "--cpu", type=int, default=None, metavar="N", help="take CR3/CR4 from vCPU N (default 0)"
    )
    cpus.add_argument("--all-cpus", action="store_true", help="list the address space of every vCPU")
    p.add_argument(
        "--format",
        action="append",
        default=[],
        metavar="FMT",
        help=(
            f"paging format: {', '.join(FORMATS)} (default {DEFAULT_FORMAT}, x86_64_5level from CR4.LA57,"
            f" or sv39/sv48 from a satp MODE); or dump reader: {', '.join(DUMP_FORMATS)} (default: by magic)."
            " Repeat to give both"
        ),
    )
    p.add_argument(
        "--info",
        choices=["mem", "tlb"],
        default=None,
        help="print QEMU's `info mem` (ranges by rights) or `info tlb` (every page) lines exactly (x86-64)",
    )
    p.add_argument(
        "--va",
        action="append",
        default=[],
        metavar="ADDR",
        help="print the walk of this virtual address PTE by PTE (repeatable); with read: the address to read",
    )
    p.add_argument("--pa", metavar="ADDR", help="with read: the physical address to read")
    p.add_argument(
        "--length", type=int, default=256, metavar="N", help="with read: bytes to read (default 256)"
    )
    p.add_argument("--raw", action="store_true", help="with read: write the bytes to stdout, not a hexdump")
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the listing as JSON")
    p.add_argument(
        "--max-regions",
        type=int,
        default=DEFAULT_MAX_REGIONS,
        metavar="N",
        help=f"stop after N regions (or --info lines), with a warning (default {DEFAULT_MAX_REGIONS:,})",
    )
    p.add_argument(
        "--max-tables",
        type=int,
        default=DEFAULT_MAX_TABLES,
        metavar="N",
        help=f"stop after reading N page-table pages, with a warning (default {DEFAULT_MAX_TABLES:,})",
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--user-only", action="store_true", help="list only user-accessible regions")
    only.add_argument("--kernel-only", action="store_true", help="list only supervisor-only regions")
    p.set_defaults(run=run)


def parse_address(text: str, what: str) -> int:
    """``'0x1000'``, ``'4096'`` or ``'0xffff_8880_0000_0000'`` as an unsigned 64-bit int."""
    s = text.strip() if isinstance(text, str) else ""
    value: int | None = None
    if s and not s.startswith(("-", "+")):
        for base in (0, 10):  # base 10 again for decimals with leading zeros ("0100")
            try:
                value = int(s, base)
                break
            except ValueError:
                continue
    if value is None:
        raise AddressError(f"{what}: cannot parse {text!r} as an address (hex 0x... or decimal)")
    if value > _U64_MAX:
        raise AddressError(f"{what}: {text!r} does not fit in 64 bits")
    return value


@dataclass(frozen=True, slots=True)
class Root:
    """The table root and format a ``--root`` value resolves to, and how it was read."""

    address: int
    fmt: str
    note: str


def resolve_root(value: int, fmt: str | None) -> Root:
    """Interpret a ``--root`` value as a table address, CR3 or satp for ``fmt`` (None = infer)."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown paging format {fmt!r}; expected one of {', '.join(FORMATS)}")
    mode = value >> 60
    if fmt is None:
        fmt = SATP_MODES.get(mode, DEFAULT_FORMAT)
        if mode and mode not in SATP_MODES:
            raise ConfigError(
                f"--root {value:#x}: bits 63:60 hold satp MODE {mode}, which is not 8 (Sv39) or 9 (Sv48);"
                " pass --format for a CR3 value"
                + (" or --format sv57 for an Sv57 satp" if mode == 10 else "")
            )
    if fmt.startswith("x86"):
        address = value & ~_CR3_IGNORED
        parts = []
        if value & 0xFFF:
            parts.append(f"PCID/flags {value & 0xFFF:#x}")
        if value >> 63:
            parts.append("no-flush")
        if value >> 61 & 3:
            parts.append(f"LAM bits {value >> 61 & 3:#b}")
        note = (f"CR3 {value:#x}: " + ", ".join(parts)) if parts else ""
        return Root(address, fmt, note)
    if fmt.startswith("aarch64"):
        address = value & _TTBR_BADDR
        asid, cnp = value >> 48, value & 1
        parts = ([f"ASID {asid:#x}"] if asid else []) + (["CnP"] if cnp else [])
        return Root(address, fmt, (f"TTBR {value:#x}: " + ", ".join(parts)) if parts else "")
    # RISC-V: a satp when MODE is set, else a plain physical address.
    if mode == 0:
        if value & (FRAME_SIZE - 1):
            raise AddressError(f"page-table root {value:#x} is not 4 KiB aligned")
        return Root(value, fmt, "")
    expected = SATP_MODE_OF[fmt]
    if mode != expected:
        raise ConfigError(
            f"--root {value:#x} is a satp with MODE {mode}, but --format is {fmt} (MODE {expected})"
        )
    asid = (value >> 44) & 0xFFFF
    ppn = value & _SATP_PPN
    note = f"satp {value:#x}: MODE {mode} ({fmt}), ASID {asid:#x}, PPN {ppn:#x}"
    return Root(ppn << 12, fmt, note)


def _region_json(m: Mapping) -> dict[str, Any]:
    return {
        "va": m.va,
        "end": m.va + m.size,
        "size": m.size,
        "pa": m.pa,
        "perms": perms_str(m.perms),
        "user": m.user,
        "global": m.global_,
        "page_size": m.page_size,
        "recursive": m.recursive,
    }


class _Tally:
    """The summary of the regions printed so far (counted as they stream by)."""

    def __init__(self) -> None:
        self.regions = 0
        self.recursive = 0
        self.pages: Counter[int] = Counter()
        self.mapped = 0

    def add(self, m: Mapping) -> None:
        self.regions += 1
        if m.recursive:
            self.recursive += 1
            return
        self.pages[m.page_size] += m.size // m.page_size
        self.mapped += m.size

    def summary(self) -> dict[str, Any]:
        return {
            "regions": self.regions,
            "recursive": self.recursive,
            "pages": {page_size_name(size): self.pages[size] for size in sorted(self.pages)},
            "mapped_bytes": self.mapped,
        }


def _walk(pt: PageTable, va: int) -> tuple[list[str], dict[str, Any]]:
    """The lines printed for ``--va`` and the same walk as JSON."""
    lines = [f"walk {va:#x}:"]
    path = pt.walk_path(va)
    for level, pte_pa, pte in path:
        lines.append(f"  L{level} pte@{pte_pa:#011x} {pt.fmt.describe(pte, level)}")
    record: dict[str, Any] = {
        "va": va,
        "path": [{"level": lvl, "pte_pa": pa, "pte": pte} for lvl, pa, pte in path],
    }
    try:
        t = pt.walk(va, "p", update_ad=False)  # a probe: no rights check
    except PageFault as fault:
        where = "before any table was read" if fault.level is None else f"at level {fault.level}"
        fsc = "" if fault.fsc is None else f" (FSC {fault.fsc:#08b})"
        lines.append(f"  => fault: {fault.cause} {where}{fsc}")
        record["fault"] = {"cause": fault.cause, "level": fault.level}
        if fault.fsc is not None:
            record["fault"]["fsc"] = fault.fsc
    else:
        mode = "user" if t.user else "supervisor"
        lines.append(
            f"  => pa {t.pa:#x} ({page_size_name(t.page_size)} page at {t.page_pa:#x},"
            f" perms {perms_str(t.perms)}, {mode}{', global' if t.global_ else ''})"
        )
        record["translation"] = {
            "pa": t.pa,
            "page_pa": t.page_pa,
            "page_size": t.page_size,
            "level": t.level,
            "perms": perms_str(t.perms),
            "user": t.user,
            "global": t.global_,
        }
    return lines, record


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"{option} must be >= 1, got {value}")
    return value


def _stream(
    regions: Iterable[Mapping], args: argparse.Namespace, max_regions: int
) -> tuple[_Tally, list[dict[str, Any]], bool]:
    """Print each region as it is found; the tally, the JSON regions and whether the cap stopped it."""
    tally = _Tally()
    kept: list[dict[str, Any]] = []
    for m in regions:
        if (args.user_only and not m.user) or (args.kernel_only and m.user):
            continue
        if tally.regions >= max_regions:
            return tally, kept, True
        tally.add(m)
        print(str(m))
        if args.json_path:
            kept.append(_region_json(m))
    return tally, kept, False


def _warn(message: str) -> None:
    sys.stdout.flush()
    print(f"vmopt inspect: warning: {message}", file=sys.stderr)


@dataclass(frozen=True, slots=True)
class Space:
    """One address space to list: its root and format, the value given, and where the root came from."""

    root: Root
    value: int
    source: str
    cpu: int | None


#: satp MODE of each RISC-V format, for an explicit ``--satp`` (MODE 10 is unambiguous there).
_SATP_ANY = {8: "sv39", 9: "sv48", 10: "sv57"}
#: RISC-V VMCOREINFO NUMBER(VA_BITS) to paging format.
_VA_BITS_FORMAT = {39: "sv39", 48: "sv48", 57: "sv57"}
_CR0_PG = 1 << 31


def _split_formats(values: list[str]) -> tuple[str | None, str | None]:
    """The paging format and the dump reader named by the ``--format`` values."""
    paging: str | None = None
    reader: str | None = None
    for text in values:
        name = text.strip().lower()
        if name in FORMATS:
            if paging not in (None, name):
                raise ConfigError(f"--format given two paging formats, {paging!r} and {name!r}")
            paging = name
        elif name in DUMP_FORMATS:
            if reader not in (None, name):
                raise ConfigError(f"--format given two dump formats, {reader!r} and {name!r}")
            reader = name
        else:
            raise ConfigError(
                f"unknown paging format {text!r}; expected one of {', '.join(FORMATS)}"
                f" (or a dump format: {', '.join(DUMP_FORMATS)})"
            )
    return paging, reader


def _explicit_space(args: argparse.Namespace, dump: Dump, fmt: str | None) -> Space:
    """The space of ``--root``, ``--cr3`` or ``--satp``."""
    option, text = next(
        (o, t) for o, t in (("--root", args.root), ("--cr3", args.cr3), ("--satp", args.satp)) if t
    )
    value = parse_address(text, option)
    if option == "--cr3":
        if fmt is None:
            cpu = dump.cpus[0] if dump.cpus else None
            fmt = "x86_64_5level" if cpu is not None and cpu.la57 else DEFAULT_FORMAT
        elif not fmt.startswith("x86"):
            raise ConfigError(f"--cr3 {text}: --format {fmt} is not an x86 paging format")
    elif option == "--satp":
        mode = value >> 60
        if fmt is None:
            if mode not in _SATP_ANY:
                raise ConfigError(f"--satp {text}: MODE {mode} in bits 63:60 is not 8, 9 or 10 (Sv39/48/57)")
            fmt = _SATP_ANY[mode]
        elif not fmt.startswith("sv"):
            raise ConfigError(f"--satp {text}: --format {fmt} is not a RISC-V paging format")
    return Space(resolve_root(value, fmt), value, option, None)


def _spaces(args: argparse.Namespace, dump: Dump, fmt: str | None) -> list[Space]:
    """The address spaces to list: the one given, each chosen vCPU's, or the kernel's from VMCOREINFO."""
    if args.root or args.cr3 or args.satp:
        return [_explicit_space(args, dump, fmt)]
    where = f"{dump.path!r} ({dump.format})"
    cpus = [c for c in dump.cpus if c.cr3 is not None]
    if cpus:
        if args.all_cpus:
            chosen = cpus
        else:
            index = 0 if args.cpu is None else args.cpu
            if not 0 <= index < len(cpus):
                raise ConfigError(f"--cpu {index}: {where} records {len(cpus)} vCPU(s), 0-{len(cpus) - 1}")
            chosen = [cpus[index]]
        spaces = []
        for c in chosen:
            cr3 = c.cr3 or 0
            if c.cr0 is not None and not c.cr0 & _CR0_PG:
                why = f"vCPU {c.index} has paging off (CR0 {c.cr0:#x}, PG clear): it uses no page tables"
                if not args.all_cpus:
                    raise ConfigError(f"{why}; give --root, --cr3 or --satp")
                _warn(f"{why}; skipped")
                continue
            vfmt = fmt or ("x86_64_5level" if c.la57 else DEFAULT_FORMAT)
            la57 = f", CR4 {c.cr4:#x}: LA57 {'set' if c.la57 else 'clear'}" if c.cr4 is not None else ""
            spaces.append(Space(resolve_root(cr3, vfmt), cr3, f"vCPU {c.index} CR3{la57}", c.index))
        return spaces
    if args.cpu is not None or args.all_cpus:
        raise ConfigError(f"{where} records no vCPU state; give --root, --cr3 or --satp")
    if dump.vmcoreinfo is not None:
        kr = dump.kernel_root()
        if fmt is None:
            if dump.machine == "riscv64":
                bits = dump.vmcoreinfo.number("VA_BITS")
                fmt = _VA_BITS_FORMAT.get(bits or 0)
                if fmt is None:
                    raise ConfigError(
                        f"{where}: VMCOREINFO NUMBER(VA_BITS) {bits} names no Sv mode; give --format"
                    )
            else:
                fmt = "x86_64_5level" if kr.five_level else DEFAULT_FORMAT
        return [Space(Root(kr.pa, fmt, ""), kr.pa, f"VMCOREINFO: {kr.how}", None)]
    raise ConfigError(f"{where} records no vCPU state and no VMCOREINFO; give --root, --cr3 or --satp")


def hexdump(data: bytes, base: int) -> list[str]:
    """``data`` as ``hexdump -C`` lines, addresses from ``base``."""
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk[:8]) + "  " + " ".join(f"{b:02x}" for b in chunk[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{base + off:016x}  {hexes:<48}  |{text}|")
    return lines


def _read(args: argparse.Namespace, dump: Dump, fmt: str | None) -> int:
    """The ``read`` action: bytes at ``--pa``, or at ``--va`` through the tables."""
    if (args.pa is None) == (not args.va):
        raise ConfigError("read needs exactly one of --va ADDR or --pa ADDR")
    if len(args.va) > 1:
        raise ConfigError("read takes one --va")
    length = args.length
    if not 0 < length <= 1 << 30:
        raise ConfigError(f"--length must be 1 to {1 << 30}, got {length}")
    mem = dump.memory
    if args.pa is not None:
        pa = parse_address(args.pa, "--pa")
        data = mem.read(pa, length)
        where = f"pa {pa:#x}"
        base = pa
    else:
        va = parse_address(args.va[0], "--va")
        space = _spaces(args, dump, fmt)[0]
        pt = PageTable.attach(mem, space.root.address, space.root.fmt, update_ad=False)
        data = pt.read_virt(va, length)
        where = f"va {va:#x} ({space.source})"
        base = va
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    print(f"{dump.path}: {length} bytes at {where}")
    print("\n".join(hexdump(data, base)))
    return 0


def _info(args: argparse.Namespace, mem: PhysicalMemory, space: Space, max_lines: int) -> dict[str, Any]:
    """Print QEMU's ``info mem`` or ``info tlb`` lines; their JSON."""
    fmt = space.root.fmt
    if not fmt.startswith("x86"):
        raise ConfigError(f"--info {args.info} is QEMU's x86-64 listing; the paging format is {fmt}")
    la57 = fmt == "x86_64_5level"
    walk = info_mem if args.info == "mem" else info_tlb
    listing = walk(mem, space.root.address, la57=la57, max_tables=args.max_tables, max_lines=max_lines)
    for line in listing.lines:
        print(line.text)
    if listing.truncated:
        _warn(f"--info {args.info} stopped at --max-tables or --max-regions; the listing is incomplete")
    rows: list[dict[str, Any]] = [
        {k: v for k, v in line._asdict().items() if k != "text"} for line in listing.lines
    ]
    return {"info": args.info, "lines": rows, "truncated": listing.truncated}


def _list_space(args: argparse.Namespace, dump: Dump, space: Space, max_regions: int) -> dict[str, Any]:
    """Print one space's header, regions, summary and walks; its JSON document."""
    mem = dump.memory
    root = space.root
    if not mem.contains(root.address, FRAME_SIZE):
        shown = f"{root.address:#x}" + (
            f" (from {space.source} {space.value:#x})" if root.address != space.value else ""
        )
        raise AddressError(
            f"page-table root {shown} is outside the image {args.image!r} ({mem.size:#x} bytes)"
        )
    vas = [parse_address(text, "--va") for text in args.va]
    doc: dict[str, Any] = {
        "image": args.image,
        "image_size": mem.size,
        "dump_format": dump.format,
        "cpu": space.cpu,
        "root_source": space.source,
        "format": root.fmt,
        "root": root.address,
        "root_value": space.value,
    }
    if args.info:
        doc.update(_info(args, mem, space, max_regions))
        return doc
    pt = PageTable.attach(mem, root.address, root.fmt, update_ad=False)
    fm = pt.fmt
    which = " (user only)" if args.user_only else " (kernel only)" if args.kernel_only else ""
    what = (
        f"image {args.image} ({format_size(mem.size)})"
        if dump.format == "raw"
        else f"dump {args.image} ({dump.format}, {format_size(mem.size)})"
    )
    how = "; ".join(part for part in (space.source if space.source != "--root" else "", root.note) if part)
    print(
        f"{what}, {fm.name} ({fm.levels} levels, {fm.va_bits}-bit VA), root {root.address:#x}"
        + (f" ({how})" if how else "")
    )
    print(f"regions{which}: va range, size, perms + u(ser)/s(upervisor) + g(lobal), pa, page size")
    listing = pt.mappings(max_tables=args.max_tables)
    tally, kept, capped = _stream(listing, args, max_regions)
    walks = [_walk(pt, va) for va in vas]
    summary = tally.summary()
    pages = ", ".join(f"{name}: {n}" for name, n in summary["pages"].items()) or "none"
    total = summary["mapped_bytes"]
    recursive = f", {tally.recursive} recursive" if tally.recursive else ""
    print(
        f"summary: regions {summary['regions']}{recursive}; pages {pages};"
        f" mapped {format_size(total)} ({total:#x} bytes)"
    )
    if capped:
        _warn(f"stopped after {max_regions:,} regions (--max-regions); the listing is incomplete")
    elif listing.truncated:
        _warn(
            f"stopped after reading {args.max_tables:,} page tables (--max-tables); the listing is incomplete"
        )
    for lines, _record in walks:
        print()
        print("\n".join(lines))
    doc.update(
        {
            "filter": "user" if args.user_only else "kernel" if args.kernel_only else "all",
            "regions": kept,
            "truncated": capped or listing.truncated,
            "summary": summary,
            "walks": [record for _lines, record in walks],
        }
    )
    return doc


def _write_json(path: str, doc: dict[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise write_error("--json", path, exc) from exc


def run(args: argparse.Namespace) -> int:
    """Open the dump, find each root, stream the regions (or QEMU's lines), print summaries and walks."""
    fmt, reader = _split_formats(args.format)
    max_regions = _positive(args.max_regions, "--max-regions")
    _positive(args.max_tables, "--max-tables")
    for option in ("root", "cr3", "satp"):
        text = getattr(args, option)
        if text is not None:
            parse_address(text, f"--{option}")  # a bad value is named before the file is opened
    for text in args.va:
        parse_address(text, "--va")
    if args.root is not None:
        resolve_root(parse_address(args.root, "--root"), fmt)
    if args.json_path:
        check_file(args.json_path, "--json")
    if os.path.isdir(args.image):
        raise ConfigError(f"memory image {args.image!r} is a directory")
    with Dump(args.image, reader) as dump:
        if args.action == "read":
            return _read(args, dump, fmt)
        docs = []
        for i, space in enumerate(_spaces(args, dump, fmt)):
            if i:
                print()
            docs.append(_list_space(args, dump, space, max_regions))
    if args.json_path:
        doc = docs[0] if not args.all_cpus else {"image": args.image, "spaces": docs}
        if not args.all_cpus and not docs:
            doc = {"image": args.image, "spaces": []}
        _write_json(args.json_path, doc)
    return 0
