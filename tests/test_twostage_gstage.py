"""The RISC-V G-stage (Sv39x4, Sv48x4) worked by hand from the privileged spec's hypervisor extension.

Sv39x4: a 41-bit GPA, VPN[2] = GPA[40:30] indexes a 2048-entry (16 KiB) root,
VPN[1], VPN[0] as in Sv39; every access is checked as U-mode, so a leaf needs
U; GPA bits above 40 must be zero. PTEs: V=bit 0, R=1, W=2, X=3, U=4, G=5,
A=6, D=7, PPN from bit 10.
"""

from __future__ import annotations

import pytest

from vmopt import PhysicalMemory
from vmopt.errors import ConfigError, PageFault
from vmopt.paging import GStage, PageTable, Perm

V, R, W, X, U, A, D = 1, 2, 4, 8, 16, 64, 128


def pte(pa: int, bits: int) -> int:
    return (pa >> 12) << 10 | bits


def test_sv39x4_walk_uses_the_root_s_two_extra_index_bits() -> None:
    fmt = GStage(3)
    mem = PhysicalMemory(64 << 20)
    root = 0x10_0000  # 16 KiB aligned
    gpa = 0x1_C040_3123  # VPN[2] = 7 (GPA[40:30]), VPN[1] = 2, VPN[0] = 3
    assert (fmt.root_index(gpa), fmt.index(gpa, 1), fmt.index(gpa, 0)) == (7, 2, 3)
    mem.write_u64(root + 7 * 8, pte(0x20_0000, V))
    mem.write_u64(0x20_0000 + 2 * 8, pte(0x30_0000, V))
    leaf = fmt.make_leaf(0x0ABC_D000, 0, Perm.R | Perm.W, False, True)
    assert leaf == pte(0x0ABC_D000, V | R | W | U), "G-stage leaves are U pages, G clear"
    mem.write_u64(0x30_0000 + 3 * 8, leaf)
    t = fmt.walk(mem, root, gpa, "w", False, True)
    assert (t.va, t.pa, t.memory_refs) == (gpa, 0x0ABC_D123, 3)
    assert mem.read_u64(0x30_0000 + 3 * 8) == leaf | A | D
    # GPA[40:39] = 0b11: root index 0x600, in the root's fourth 4 KiB page.
    high = 0x180_0000_0000
    assert fmt.root_index(high) == 0x600
    mem.write_u64(root + 0x600 * 8, V | R | U)  # a 1 GiB leaf at PPN 0
    assert fmt.walk(mem, root, high + 0x1234, "r", False, False).page_size == 1 << 30
    # U-mode checks: a leaf without U faults even for a supervisor guest access.
    mem.write_u64(0x30_0000 + 3 * 8, leaf & ~U)
    with pytest.raises(PageFault) as info:
        fmt.walk(mem, root, gpa, "r", False, False)
    assert (info.value.cause, info.value.level) == ("protection", 0)
    with pytest.raises(PageFault) as info:
        fmt.walk(mem, root, 1 << 41, "r", False, False)
    assert info.value.cause == "non_canonical"
    assert (fmt.name, fmt.va_bits, GStage(4).name, GStage(4).va_bits) == ("sv39x4", 41, "sv48x4", 50)


def test_page_table_refuses_the_16k_root() -> None:
    with pytest.raises(ConfigError, match="16 KiB root; PageTable builds one-frame"):
        PageTable(PhysicalMemory(1 << 20), GStage(3))
    with pytest.raises(ConfigError, match=r"Sv39x4 \(3 levels\) or Sv48x4"):
        GStage(5)
