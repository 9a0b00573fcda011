"""The RISC-V G-stage (Sv39x4, Sv48x4) worked by hand from the privileged spec's hypervisor extension.

Sv39x4: a 41-bit GPA, VPN[2] = GPA[40:30] indexes a 2048-entry (16 KiB) root,
VPN[1], VPN[0] as in Sv39; every access is checked as U-mode, so a leaf needs
U; GPA bits above 40 must be zero. PTEs: V=bit 0, R=1, W=2, X=3, U=4, G=5,
A=6, D=7, PPN from bit 10.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vmopt import Mmu, PhysicalMemory
from vmopt.cli.main import main
from vmopt.errors import AddressError, ConfigError, PageFault
from vmopt.paging import GStage, PageTable, Perm, TwoStage, back_guest_memory, make_format
from vmopt.sim.config import from_raw, load_config
from vmopt.tlb import NestedConfig, TlbConfig

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


def test_page_table_builds_edits_lists_and_frees_a_16k_root() -> None:
    mem = PhysicalMemory(64 << 20)
    free0 = mem.free_bytes
    pt = PageTable(mem, "sv39x4")
    assert (pt.root % (16 << 10), mem.free_bytes, pt.fmt.root_bytes) == (0, free0 - (16 << 10), 16 << 10)
    hi, lo = 0x1FF_C000_0000, 0x4000_0000  # root entries 0x7FF (its fourth page) and 1
    pt.map(hi, 0x20_0000, perms="rw")
    pt.map(lo, 0x40_0000, 2 << 20, perms="rx")
    assert mem.read_u64(pt.root + 0x7FF * 8) & V
    t = pt.walk(hi + 0x18, "w")
    assert (t.pa, t.memory_refs, t.dirty, t.user) == (0x20_0018, 3, True, True)
    leaf = pt.lookup(hi)
    assert leaf is not None
    assert (leaf.page_pa, leaf.user, leaf.global_, leaf.dirty) == (0x20_0000, True, False, True)
    assert [(m.va, m.size, str(m.perms)) for m in pt.mappings()] == [(lo, 2 << 20, "r-x"), (hi, 4096, "rw-")]
    assert [leaf.va for _va, leaf, *_ in pt.leaves()] == [lo, hi]
    assert len(pt.table_frames()) == 4  # the root, two level-1 tables, one level-0 table
    # Zero-extended GPAs have no canonical hole: a range across bit 40 is one range.
    pt.map_range(0xFF_FFFF_F000, 0x30_0000, 8192, perms="rw")
    pt.protect(0xFF_FFFF_F000, 8192, "r")
    with pytest.raises(PageFault) as info:
        pt.walk(0x100_0000_0000, "w", False)
    assert (info.value.cause, info.value.user) == ("protection", True), "a G-stage walk is a U-mode walk"
    pt.unmap(0xFF_FFFF_F000, 8192)
    pt.remap(hi, 0x21_0000)
    assert pt.translate(hi + 5) == 0x21_0005
    pt.unmap(hi)
    pt.unmap(lo, 2 << 20)
    assert pt.table_frames() == [pt.root] and mem.free_bytes == free0 - (16 << 10)
    pt.destroy()
    assert mem.free_bytes == free0, "the 16 KiB root went back whole"
    with pytest.raises(AddressError, match="must be a 16 KiB aligned address inside memory, got 4096"):
        PageTable.attach(mem, 0x1000, "sv39x4")
    with pytest.raises(AddressError, match="16 KiB aligned"):
        PageTable.attach(mem, (64 << 20) - 8192, "sv48x4")  # 16 KiB aligned? no: and past the end
    with pytest.raises(ConfigError, match=r"Sv39x4 \(3 levels\) or Sv48x4"):
        GStage(5)


def test_an_attached_g_stage_sees_the_self_map_in_its_last_root_entry_once() -> None:
    mem = PhysicalMemory(1 << 20)
    fmt = GStage(3)
    mem.write_u64(0x4000 + 0x7FF * 8, fmt.make_table(0x4000, 2))
    pt = PageTable.attach(mem, 0x4000, fmt, update_ad=False)
    assert list(pt.leaves(max_tables=100)) == [], "not a leaf, and not descended"
    (m,) = list(pt.mappings(max_tables=100))
    assert (m.va, m.pa, m.size, m.recursive) == (0x7FF << 30, 0x4000, 1 << 30, True)
    assert pt.table_frames() == [0x4000]


GUEST_HOST_REFS = [
    ("sv39", "sv39x4", 15),
    ("sv48", "sv48x4", 24),
    ("sv39", "sv48x4", 19),
    ("sv48", "sv39x4", 19),
]


@pytest.mark.parametrize(("guest_fmt", "host_fmt", "refs"), GUEST_HOST_REFS)
def test_uncached_nested_misses_cost_n_plus_1_times_m_plus_1_minus_1(
    guest_fmt: str, host_fmt: str, refs: int
) -> None:
    guest = PageTable(PhysicalMemory(16 << 20), guest_fmt)
    host = PageTable(PhysicalMemory(64 << 20), host_fmt)
    host.map_range(0, 32 << 20, 16 << 20, perms="rwx")
    gvas = [0x4000_0000 + i * 0x20_1000 for i in range(6)]
    for i, gva in enumerate(gvas):
        guest.map(gva, 0x80_0000 + i * 4096, perms="rw", user=True)
    ts = TwoStage(guest, host)
    mmu = Mmu(guest, TlbConfig(entries=16, ways=4), pwc=False)
    mmu.set_nested(ts, NestedConfig(ntlb_entries=0, host_pwc=None))
    for gva in gvas:
        t = ts.walk(gva + 8, "r", True)
        assert t.memory_refs == refs and t.pa == (32 << 20) + t.gpa
        assert mmu.translate(gva + 8, "r", True) == t.pa
    n = mmu.nested_stats
    levels = guest.fmt.levels
    assert n is not None and (n.walks, n.guest_refs, n.host_refs) == (6, 6 * levels, 6 * (refs - levels))
    assert mmu.stats.walk_memory_refs == 6 * refs


def test_back_guest_memory_and_two_stage_accept_the_g_stage() -> None:
    guest = PageTable(PhysicalMemory(8 << 20), "sv48")
    guest.map(0x7000_0000, 0x30_0000, perms="rw", user=True)
    ts = back_guest_memory(guest, "sv48x4", 2 << 20)
    assert ts.host.name == "sv48x4" and ts.host.root % (16 << 10) == 0
    t = ts.walk(0x7000_0123, "w", True)
    # 2 MiB host leaves: every host walk reads 3 entries.
    assert (t.gpa, t.pa, t.memory_refs) == (0x30_0123, 0x30_0123, 4 + 4 * 3 + 3)
    with pytest.raises(ConfigError, match="host format must be one of ept, ept_5level, npt, sv39x4, sv48x4"):
        back_guest_memory(guest, "sv39", 2 << 20)


def test_nested_sv39x4_is_a_config_choice_for_risc_v_guests_only() -> None:
    cfg = load_config(None, ['paging.format="sv39"', 'paging.nested="sv39x4"'])
    assert (cfg.paging.format, cfg.paging.nested) == ("sv39", "sv39x4")
    assert from_raw(cfg.to_raw()) == cfg
    with pytest.raises(ConfigError, match=r"'sv48x4' is a RISC-V host stage; paging\.format 'x86_64' is not"):
        load_config(None, ['paging.nested="sv48x4"'])
    with pytest.raises(ConfigError, match=r"'ept' is an x86 host stage; paging\.format 'sv48' is not x86"):
        load_config(None, ['paging.format="sv48"', 'paging.nested="ept"'])


def test_simulate_an_sv48_guest_under_the_g_stage_against_x86_under_npt(tmp_path: Path) -> None:
    """Sv48 over Sv48x4 has the geometry of x86-64 over NPT: the same trace costs the same in both
    dimensions; over Sv39x4 (a 3-level host) the guest dimension is unchanged and the host one cheaper."""

    def run(guest: str, host: str) -> dict[str, Any]:
        out = tmp_path / "r.json"
        small = ("--length", "20000", "--workload", "zipf", "--param", "footprint=8M", "--seed", "5")
        sets = ("--set", f'paging.format="{guest}"', "--set", f'paging.nested="{host}"')
        assert main(["simulate", *small, *sets, "--no-progress", "--json", str(out)]) == 0
        report: dict[str, Any] = json.loads(out.read_text())
        return report

    plain, x86 = run("sv48", "none"), run("x86_64", "npt")
    g48, g39 = run("sv48", "sv48x4"), run("sv48", "sv39x4")
    assert plain["nested"] is None
    assert (g39["nested"]["host_format"], g39["nested"]["host_page_size"]) == ("sv39x4", 2 << 20)
    for r in (x86, g48, g39):
        assert r["tlb"] == plain["tlb"] and r["page_walks"] == plain["page_walks"]
        n = r["nested"]
        assert n["guest_refs"] + n["host_refs"] == r["walk_memory_refs"] > plain["walk_memory_refs"]
        assert n["host_faults"] == 0 and r["cycles"]["per_access"] > plain["cycles"]["per_access"]
    keys = ("guest_refs", "host_refs", "walks", "nested_tlb")
    assert [x86["nested"][k] for k in keys] == [g48["nested"][k] for k in keys]
    assert g39["nested"]["guest_refs"] == g48["nested"]["guest_refs"]
    assert 0 < g39["nested"]["host_refs"] < g48["nested"]["host_refs"]


def test_every_core_format_reports_the_geometry_its_walk_uses() -> None:
    """The Python format object answers index, level_span and entries as the core walks:
    the G-stage's root resolves 11 bits (2048 entries), not a table's 9."""
    for name in ("sv39x4", "sv48x4"):
        fmt = make_format(name)
        top = fmt.levels - 1
        gpa = (1 << fmt.va_bits) - 4096
        assert fmt.entries(top) == 2048 and fmt.index(gpa, top) == 2047
        assert fmt.level_span(top) == 1 << (12 + 9 * top)
    x86 = make_format("x86_64")
    assert (x86.entries(3), x86.index((1 << 47) - 1, 3), x86.level_span(1)) == (512, 255, 2 << 20)
