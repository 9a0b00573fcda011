"""``vmopt inspect``: list the mappings of page tables inside a raw guest memory image.

The image is mmap'd read-only (never loaded whole) and walked without
setting accessed/dirty bits, so inspecting a dump never changes it. The
listing is :meth:`PageTable.mappings`, one coalesced region per line, like
QEMU's ``info mem``, printed as it is found; ``--va`` prints the walk of an
address PTE by PTE.

Any image takes bounded time and memory: a table that points back at a
table on its own path (a self-map) is one ``recursive`` line, not descended;
``--max-regions`` (default :data:`DEFAULT_MAX_REGIONS`) and ``--max-tables``
(default :data:`DEFAULT_MAX_TABLES`) stop the listing with a warning.

``--root`` takes an address or a full register value: for x86 a CR3 (the
low 12 bits, PCID or PWT/PCD, and bits 63:61, no-flush and LAM, are
ignored); for RISC-V a satp (MODE in bits 63:60, 8 = Sv39, 9 = Sv48,
10 = Sv57, ASID in 59:44, root = PPN * 4096). With ``--format`` omitted, a
value whose bits 63:60 hold MODE 8 or 9 is read as a satp and selects sv39
or sv48; an Sv57 satp needs ``--format sv57`` (MODE 10 is also a no-flush
CR3 with LAM_U57 set, so it is not guessed). For AArch64 (``--format
aarch64``, ``aarch64_16k``, ``aarch64_64k``) a TTBR0_EL1 value: ASID in
63:48, BADDR in 47:1, CnP in bit 0.
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
from vmopt.errors import AddressError, ConfigError
from vmopt.memory.physical import FRAME_SIZE, PhysicalMemory
from vmopt.paging.pagetable import FORMATS, PageTable
from vmopt.paging.types import Mapping, PageFault, page_size_name, perms_str
from vmopt.units import format_size

__all__ = [
    "DEFAULT_MAX_REGIONS",
    "DEFAULT_MAX_TABLES",
    "Root",
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
        help="list the mappings of page tables inside a raw guest memory image",
        description=(
            "Walk the page tables inside a raw guest memory image (read-only, never written) "
            "and print its mapped regions like QEMU's `info mem`."
        ),
    )
    p.add_argument("image", help="raw guest physical memory image (physical address 0 = first byte)")
    p.add_argument(
        "--root",
        required=True,
        metavar="ADDR",
        help=(
            "page-table root: an address, a full CR3 (x86) or a full satp (RISC-V); hex 0x... or decimal."
            " Without --format, MODE 8/9 in bits 63:60 means a satp: give --format for a no-flush CR3"
        ),
    )
    p.add_argument(
        "--format",
        default=None,
        metavar="FMT",
        help=f"paging format: {', '.join(FORMATS)} (default {DEFAULT_FORMAT}, or sv39/sv48 from a satp MODE)",
    )
    p.add_argument(
        "--va",
        action="append",
        default=[],
        metavar="ADDR",
        help="print the walk of this virtual address PTE by PTE (repeatable)",
    )
    p.add_argument("--json", dest="json_path", metavar="PATH", help="also write the regions as JSON")
    p.add_argument(
        "--max-regions",
        type=int,
        default=DEFAULT_MAX_REGIONS,
        metavar="N",
        help=f"stop after N regions, with a warning (default {DEFAULT_MAX_REGIONS:,})",
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


def _open_image(path: str) -> PhysicalMemory:
    if os.path.isdir(path):
        raise ConfigError(f"memory image {path!r} is a directory")
    try:
        return PhysicalMemory.from_file(path, writable=False)
    except OSError as exc:
        raise ConfigError(f"cannot map memory image {path!r}: {exc}") from exc


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


def run(args: argparse.Namespace) -> int:
    """Open the image, attach its tables, stream the regions, print the summary and requested walks."""
    fmt = args.format.strip().lower() if args.format is not None else None
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown paging format {args.format!r}; expected one of {', '.join(FORMATS)}")
    max_regions = _positive(args.max_regions, "--max-regions")
    max_tables = _positive(args.max_tables, "--max-tables")
    raw_root = parse_address(args.root, "--root")
    vas = [parse_address(text, "--va") for text in args.va]
    root = resolve_root(raw_root, fmt)
    if args.json_path:
        check_file(args.json_path, "--json")
    with _open_image(args.image) as mem:
        if not mem.contains(root.address, FRAME_SIZE):
            shown = f"{root.address:#x}" + (f" (from --root {args.root})" if root.address != raw_root else "")
            raise AddressError(
                f"page-table root {shown} is outside the image {args.image!r} ({mem.size:#x} bytes)"
            )
        pt = PageTable.attach(mem, root.address, root.fmt, update_ad=False)
        fm = pt.fmt
        which = " (user only)" if args.user_only else " (kernel only)" if args.kernel_only else ""
        print(
            f"image {args.image} ({format_size(mem.size)}), {fm.name} ({fm.levels} levels,"
            f" {fm.va_bits}-bit VA), root {root.address:#x}" + (f" ({root.note})" if root.note else "")
        )
        print(f"regions{which}: va range, size, perms + u(ser)/s(upervisor) + g(lobal), pa, page size")
        listing = pt.mappings(max_tables=max_tables)
        tally, kept, capped = _stream(listing, args, max_regions)
        walks = [_walk(pt, va) for va in vas]
        image_size = mem.size
    summary = tally.summary()
    pages = ", ".join(f"{name}: {n}" for name, n in summary["pages"].items()) or "none"
    total = summary["mapped_bytes"]
    recursive = f", {tally.recursive} recursive" if tally.recursive else ""
    print(
        f"summary: regions {summary['regions']}{recursive}; pages {pages};"
        f" mapped {format_size(total)} ({total:#x} bytes)"
    )
    truncated = capped or listing.truncated
    if capped:
        _warn(f"stopped after {max_regions:,} regions (--max-regions); the listing is incomplete")
    elif listing.truncated:
        _warn(f"stopped after reading {max_tables:,} page tables (--max-tables); the listing is incomplete")
    for lines, _record in walks:
        print()
        print("\n".join(lines))
    if args.json_path:
        doc = {
            "image": args.image,
            "image_size": image_size,
            "format": fm.name,
            "root": root.address,
            "root_value": raw_root,
            "filter": "user" if args.user_only else "kernel" if args.kernel_only else "all",
            "regions": kept,
            "truncated": truncated,
            "summary": summary,
            "walks": [record for _lines, record in walks],
        }
        try:
            with open(args.json_path, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=2)
                f.write("\n")
        except OSError as exc:
            raise write_error("--json", args.json_path, exc) from exc
    return 0
