"""``vmopt demo``: build an address space with every page size and show its walks."""

from __future__ import annotations

import argparse
from typing import Any

from vmopt.memory.physical import PhysicalMemory
from vmopt.paging import FORMATS, PageFault, PageTable
from vmopt.paging.types import page_size_name
from vmopt.units import format_size

__all__ = ["register", "run"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def register(sub: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser("demo", help="build an address space and print its walks and mappings")
    # The demo allocates its frames as a guest kernel would, in 4 KiB, 2 MiB and 1 GiB blocks.
    choices = [name for name in FORMATS if name not in ("aarch64_16k", "aarch64_64k")]
    p.add_argument("--format", default="x86_64", choices=choices, help="paging format")
    p.set_defaults(run=run)


def _layout(fmt: str) -> list[tuple[str, int, int, int, str, bool, bool]]:
    """(name, va, length, page_size, perms, user, global) regions of a small guest."""
    if fmt == "aarch64":
        # One TTBR0 half (48 bits): the "direct map" sits at its top.
        return [
            ("text", 0x40_0000, 4 * MiB, 2 * MiB, "rx", True, False),
            ("heap", 0x80_0000, 64 * KiB, 4 * KiB, "rw", True, False),
            ("stack", 0x7FFF_FFFF_0000, 32 * KiB, 4 * KiB, "rw", True, False),
            ("direct map", 0xFF00_0000_0000, 1 * GiB, 1 * GiB, "rw", False, True),
        ]
    high = {"x86_64": 0xFFFF_8880_0000_0000, "x86_64_5level": 0xFF11_0000_0000_0000,
            "sv39": 0xFFFF_FFC0_0000_0000, "sv48": 0xFFFF_8000_0000_0000,
            "sv57": 0xFF60_0000_0000_0000}[fmt]  # fmt: skip
    stack = {"sv39": 0x3F_FFFF_0000}.get(fmt, 0x7FFF_FFFF_0000)
    return [
        ("text", 0x40_0000, 4 * MiB, 2 * MiB, "rx", True, False),
        ("heap", 0x80_0000, 64 * KiB, 4 * KiB, "rw", True, False),
        ("stack", stack, 32 * KiB, 4 * KiB, "rw", True, False),
        ("direct map", high, 1 * GiB, 1 * GiB, "rw", False, True),
    ]


def run(args: argparse.Namespace) -> int:
    """Build the guest, map its regions, walk a few addresses, print ``mappings()``."""
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, args.format)
    print(f"{pt.fmt.name}: {pt.fmt.levels}-level tables, {pt.fmt.va_bits}-bit virtual addresses,"
          f" guest memory {format_size(mem.size)}, root (CR3/satp) = {pt.root:#x}")  # fmt: skip
    print()
    probes = []
    for name, va, length, page, perms, user, global_ in _layout(args.format):
        # One frame per page from the buddy allocator, as a guest kernel would.
        frames = [mem.alloc(page) for _ in range(length // page)]
        for i, frame in enumerate(frames):
            pt.map(va + i * page, frame, page, perms, user=user, global_=global_)
        pa = frames[0]
        mode = ("user" if user else "supervisor") + (", global" if global_ else "")
        print(
            f"mapped {name:<10} {va:#018x} {format_size(length):>8} in {page_size_name(page)} pages"
            f" -> {pa:#x} ({perms}, {mode})"
        )
        probes.append((name, va + length // 2 + 0x123, "r", user))
    pt.write_virt(0x80_0000 + 100, b"hello from guest-virtual memory", user=True)
    print()
    kernel = _layout(args.format)[3][1]
    probes += [
        ("heap write", 0x80_0010, "w", True),
        ("text write", 0x40_0000, "w", True),
        ("unmapped", 0x1000, "r", True),
        ("kernel from user", kernel, "r", True),
    ]
    for name, va, access, user in probes:
        print(f"walk {name}: {'user' if user else 'supervisor'} {access} {va:#x}")
        try:
            t = pt.walk(va, access, user)
            result = (f"pa {t.pa:#x}, {page_size_name(t.page_size)} page, perms {t.perms},"
                      f" {t.memory_refs} memory refs")  # fmt: skip
        except PageFault as fault:
            result = str(fault)
        # The PTEs as the walk left them (accessed and dirty bits included).
        for level, pte_pa, pte in pt.walk_path(va):
            print(f"  L{level} pte@{pte_pa:#011x} {pt.fmt.describe(pte, level)}")
        print(f"  => {result}")
    print()
    print(f"read_virt(0x800064, 31) = {pt.read_virt(0x80_0000 + 100, 31, user=True)!r}")
    print()
    print("mappings() (like QEMU's `info mem`):")
    for m in pt.mappings():
        print(f"  {m}")
    tables = pt.table_frames()
    print(f"\n{len(tables)} table pages, {mem.resident_frames()} resident frames"
          f" ({format_size(mem.resident_frames() * 4096)} of host memory)")  # fmt: skip
    return 0
