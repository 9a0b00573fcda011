"""AArch64 stage 2 (vmopt.paging.AArch64Stage2): hand-worked descriptors and start levels, the
uncached (n+1)(m+1)-1 count, and two-stage walks against their composition from a stage-2 spec.

The spec (:func:`spec_s2_walk`) is written here from the Arm ARM (D8, stage 2 translation:
S2AP, XN, AF, start level and concatenation), not from the core; the composition runs the
reference stage-1 walk (tests/reference/paging/aarch64.py) over guest-physical words whose
every read is first translated by it, as tests/test_twostage.py does for EPT and NPT.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.paging.aarch64 import AArch64 as RefAArch64
from vmopt import PhysicalMemory
from vmopt.errors import ConfigError, PageFault, PhysicalAccessError, VmoptError
from vmopt.paging import (
    FORMATS,
    HOST_FORMATS,
    AArch64,
    AArch64Stage2,
    PageTable,
    Perm,
    TwoStage,
    back_guest_memory,
)

MIB = 1 << 20
GUEST_RAM = 16 * MIB
HOST_RAM = 64 * MIB
#: Host-physical address of guest frame 0.
HOST_BASE = 64 * MIB
MASK48 = (1 << 48) - 1


# -- the spec ------------------------------------------------------------------------------


def spec_s2_walk(
    mem: PhysicalMemory, root: int, fmt: AArch64Stage2, ipa: int, access: str
) -> tuple[Any, ...]:
    """Stage 2 of ``ipa``: ("ok", pa, refs) or ("fault", cause, level, refs); levels are vmopt's."""
    g = fmt.granule
    shift0 = g.bit_length() - 1
    stride = shift0 - 3
    levels = 4 - fmt.start_level
    if ipa >> fmt.ipa_bits:
        return ("fault", "not_present", None, 0)
    blocks = {1, 2} if g == 4096 else {1}
    table, refs = root, 0
    for level in range(levels - 1, -1, -1):
        shift = shift0 + stride * level
        width = fmt.ipa_bits - shift if level == levels - 1 else stride
        addr = table + ((ipa >> shift) & ((1 << width) - 1)) * 8
        if not mem.contains(addr, 8):
            return ("fault", "table_outside_memory", level, refs)
        desc = mem.read_u64(addr)
        refs += 1
        if not desc & 1 or (desc & 3 == 1 and (level == 0 or level not in blocks)):
            return ("fault", "not_present", level, refs)
        out = desc & MASK48 & ~(g - 1)
        if out >> fmt.pa_bits:
            return ("fault", "address_size", level, refs)
        if desc & 3 == 3 and level > 0:
            table = out
            continue
        if not desc & (1 << 10) and not fmt.ha:
            return ("fault", "access_flag", level, refs)
        allowed = {"r": desc >> 6 & 1, "w": desc >> 7 & 1, "x": not desc >> 54 & 1, "p": True}
        if not allowed[access]:
            return ("fault", "protection", level, refs)
        span = 1 << shift
        return ("ok", (desc & MASK48 & ~(span - 1)) | (ipa & (span - 1)), refs)
    raise AssertionError("unreachable")


def composition(ts: TwoStage, gfmt: AArch64, gva: int, access: str, user: bool) -> tuple[Any, ...]:
    """The two-stage walk as the reference stage 1 over spec-translated guest-physical reads."""
    host, hfmt = ts.host, ts.host.fmt
    assert isinstance(hfmt, AArch64Stage2)
    refs = {"guest": 0, "host": 0}
    stopped: list[tuple[Any, ...]] = []

    def host_or_fault(gpa: int, acc: str, table: bool) -> int | None:
        r = spec_s2_walk(host.mem, host.root, hfmt, gpa, acc)
        if r[0] == "fault":
            # A faulted walk counts every level it tried, the faulting one included (as EPT's does).
            refs["host"] += 0 if r[2] is None else hfmt.levels - r[2]
            stopped.append(("host", r[1], r[2], gpa, table))
            return None
        refs["host"] += r[-1]
        return int(r[1])

    gmem = ts.guest.mem

    class NestedWords:
        translated: int | None = None

        def contains(self, gpa: int, n: int) -> bool:
            if host_or_fault(gpa, "r", True) is None:
                return False
            self.translated = gpa
            return bool(gmem.contains(gpa, n))

        def read_u64(self, gpa: int) -> int:
            if self.translated != gpa and host_or_fault(gpa, "r", True) is None:
                raise PhysicalAccessError(f"host fault at {gpa:#x}")
            self.translated = None
            refs["guest"] += 1
            return int(gmem.read_u64(gpa))

    ref = RefAArch64(gfmt.granule, gfmt.va_bits, gfmt.upper, gfmt.ha, gfmt.hd, gfmt.tbi, pa_bits=gfmt.pa_bits)
    try:
        gt = ref.walk(NestedWords(), ts.guest.root, gva, access, user, False)
    except PageFault as f:
        if stopped:
            return (*stopped[0], refs["guest"], refs["host"])
        return ("guest", f.cause, f.level, None, None, refs["guest"], refs["host"])
    hpa = host_or_fault(gt.pa, access, False)
    if hpa is None:
        return (*stopped[0], refs["guest"], refs["host"])
    return ("ok", hpa, gt.pa, refs["guest"], refs["host"])


def product(ts: TwoStage, gva: int, access: str, user: bool) -> tuple[Any, ...]:
    g, h = ts.walk_refs(gva, access, user)
    try:
        t = ts.walk(gva, access, user)
    except PageFault as f:
        return (f.stage, f.cause, f.level, f.gpa, f.on_table, g, h)
    return ("ok", t.pa, t.gpa, t.guest_refs, t.host_refs)


# -- start levels and descriptors -----------------------------------------------------------------

#: (granule, ipa_bits, pa_bits) -> (levels, start level, SL0, concatenated tables), from the Arm ARM's
#: VTCR_EL2.SL0 rules: 4K level 0 needs PS > 42; 16K never starts at 0 and level 1 needs PS > 40;
#: 64K level 1 needs PS > 42; at most 16 tables concatenate.
START_LEVELS = {
    (4096, 40, 48): (4, 0, 2, 1),
    (4096, 40, 40): (3, 1, 1, 2),
    (4096, 42, 42): (3, 1, 1, 8),
    (4096, 39, 48): (3, 1, 1, 1),
    (4096, 30, 32): (2, 2, 0, 1),
    (16384, 48, 48): (3, 1, 2, 2),
    (16384, 40, 40): (2, 2, 1, 16),
    (16384, 40, 48): (3, 1, 2, 1),
    (16384, 25, 32): (1, 3, 0, 1),
    (65536, 48, 48): (3, 1, 2, 1),
    (65536, 42, 42): (2, 2, 1, 1),
    (65536, 29, 32): (1, 3, 0, 1),
}


@pytest.mark.parametrize(("config", "want"), list(START_LEVELS.items()))
def test_start_level_sl0_and_concatenation(config: tuple[int, int, int], want: tuple[int, ...]) -> None:
    granule, ipa_bits, pa_bits = config
    fmt = AArch64Stage2(granule, ipa_bits, pa_bits=pa_bits)
    assert (fmt.levels, fmt.start_level, fmt.sl0, fmt.concatenated) == want
    top = fmt.levels - 1
    assert fmt.entries(top) * fmt.level_span(top) == 1 << ipa_bits


def test_names_and_bad_arguments() -> None:
    assert [FORMATS[n]().name for n in ("aarch64_s2", "aarch64_s2_16k", "aarch64_s2_64k")] == [
        "aarch64_s2",
        "aarch64_s2_16k",
        "aarch64_s2_64k",
    ]
    assert {"aarch64_s2", "aarch64_s2_16k", "aarch64_s2_64k"} <= set(HOST_FORMATS)
    assert AArch64Stage2(4096, 36, pa_bits=44).name == "aarch64_s2_ipa36_pa44"
    for kwargs, word in (
        ({"granule": 8192}, "8192"),
        ({"ipa_bits": 49}, "49"),
        ({"ipa_bits": 44, "pa_bits": 40}, "exceeds"),
        ({"pa_bits": 41}, "41"),
        ({"hd": True}, "needs ha"),
        ({"ha": 1}, "bool"),
    ):
        with pytest.raises(ConfigError, match=word):
            AArch64Stage2(**kwargs)
    fmt = AArch64Stage2()
    with pytest.raises(AttributeError):
        fmt.ipa_bits = 48  # type: ignore[misc]


def test_descriptor_bits_by_hand() -> None:
    fmt = AArch64Stage2()
    rwx = Perm.R | Perm.W | Perm.X
    # Page: V T, MemAttr 1111, S2AP 11, SH 11, AF; no XN.
    assert fmt.make_leaf(0x40_0000, 0, rwx, False, False) == 0x40_07FF
    # W-only page: S2AP 10, XN (bit 54).
    assert fmt.make_leaf(0x40_0000, 0, Perm.W, True, True) == (1 << 54) | 0x40_07BF
    # 2 MiB block, read-only: bits[1:0] = 01, S2AP 01.
    assert fmt.make_leaf(0x20_0000, 1, Perm.R, False, False) == (1 << 54) | 0x20_077D
    # Every combination is encodable (W-only and X-only included) and decodes back.
    for bits in range(8):
        perm = Perm(bits)
        assert fmt.check_perms(perm) is None
        assert fmt.decode_leaf(fmt.make_leaf(0x1000, 0, perm, False, False), 0).perms == perm
    # With hd, a writable page is written writable-clean: DBM (bit 51) without S2AP[1].
    hd = AArch64Stage2(ha=True, hd=True)
    assert hd.make_leaf(0x1000, 0, Perm.R | Perm.W, False, False) == (1 << 54) | (1 << 51) | 0x137F
    assert "S2AP0 S2AP1 AF" in fmt.describe(0x40_07FF, 0)


def test_s2ap_xn_af_and_contiguous_through_a_two_stage_walk() -> None:
    guest = PageTable(PhysicalMemory(GUEST_RAM), AArch64(4096), update_ad=False)
    host = PageTable(PhysicalMemory(HOST_RAM, base=1 << 30), AArch64Stage2(), update_ad=False)
    for gpa in range(0, GUEST_RAM, 4096):
        host.map_trusted(gpa, HOST_BASE + gpa, 4096, Perm.parse("rwx"))
    ts = TwoStage(guest, host)
    data = 0x80_0000
    guest.map(0x40_0000, data, 4096, "rwx")
    pte_pa = host.walk_path(data)[-1][1]
    base = (HOST_BASE + data) | 0b11 | 0b1111 << 2 | 0b11 << 8 | 1 << 10
    # (S2AP, XN) -> the accesses stage 2 allows (an EL1 guest page, so stage 1 allows all three).
    for s2ap, xn, want in (
        (0b00, 0, "x"),
        (0b01, 0, "rx"),
        (0b10, 1, "w"),
        (0b11, 1, "rw"),
        (0b11, 0, "rwx"),
    ):
        host.mem.write_u64(pte_pa, base | s2ap << 6 | xn << 54)
        for access in "rwx":
            if access in want:
                assert ts.walk(0x40_0010, access, False).pa == HOST_BASE + data + 0x10
                continue
            with pytest.raises(PageFault) as info:
                ts.walk(0x40_0010, access, False)
            f = info.value
            assert (f.stage, f.cause, f.fsc, f.gpa, f.on_table) == (
                "host",
                "protection",
                0b001111,
                data + 0x10,
                False,
            )
    # Bit 53 (XN[0] under FEAT_XNX, not modelled) is ignored; the Contiguous hint changes nothing.
    host.mem.write_u64(pte_pa, base | 0b11 << 6 | 1 << 53 | 1 << 52)
    assert ts.walk(0x40_0010, "x", False).pa == HOST_BASE + data + 0x10
    # AF clear: an access-flag fault at stage-2 level 3, checked before the rights.
    host.mem.write_u64(pte_pa, (base & ~(1 << 10)) | 0b01 << 6)
    with pytest.raises(PageFault) as info:
        ts.walk(0x40_0010, "w", False)
    assert (info.value.stage, info.value.cause, info.value.fsc) == ("host", "access_flag", 0b001011)
    # A guest table's frame without S2AP[0]: a fault on the stage-1 table read (PAR.PTW).
    root = guest.root
    host.protect(root, 4096, Perm.parse("wx"))
    with pytest.raises(PageFault) as info:
        ts.walk(0x40_0010, "r", False)
    f = info.value
    assert (f.stage, f.cause, f.on_table, f.gpa >> 12) == ("host", "protection", True, root >> 12)  # type: ignore[operator]


def test_hardware_access_flag_and_dirty_state() -> None:
    fmt = AArch64Stage2(ha=True, hd=True)
    host = PageTable(PhysicalMemory(HOST_RAM), fmt, update_ad=True)
    host.map(0x10_0000, 0x20_0000, 4096, "rw")
    leaf = host.lookup(0x10_0000)
    assert leaf is not None and not leaf.accessed and not leaf.dirty
    t = host.walk(0x10_0008, "r")
    assert (t.pa, t.dirty, host.lookup(0x10_0000).accessed) == (0x20_0008, False, True)  # type: ignore[union-attr]
    assert host.walk(0x10_0008, "w").dirty
    assert host.mem.read_u64(leaf.pte_pa) >> 7 & 1 == 1, "hd set S2AP[1]"


# -- reference counts ---------------------------------------------------------------------------

PAIRS = [
    (AArch64(4096), AArch64Stage2(4096, 40), 24),
    (AArch64(4096, va_bits=39), AArch64Stage2(4096, 39), 15),
    (AArch64(16384), AArch64Stage2(16384, 40), 19),
    (AArch64(65536), AArch64Stage2(65536, 42, pa_bits=44), 11),
    (AArch64(65536, va_bits=42), AArch64Stage2(4096, 48), 14),
]


@pytest.mark.parametrize(("gfmt", "hfmt", "want"), PAIRS, ids=lambda x: getattr(x, "name", str(x)))
def test_uncached_refs_are_n_plus_1_times_m_plus_1_minus_1(
    gfmt: AArch64, hfmt: AArch64Stage2, want: int
) -> None:
    guest = PageTable(PhysicalMemory(GUEST_RAM), gfmt, update_ad=False)
    host = PageTable(PhysicalMemory(HOST_RAM, base=1 << 30), hfmt, update_ad=False)
    for gpa in range(0, GUEST_RAM, hfmt.granule):
        host.map_trusted(gpa, HOST_BASE + gpa, hfmt.granule, Perm.parse("rwx"))
    ts = TwoStage(guest, host)
    gva = 0x12_3450_0000 & ((1 << gfmt.va_bits) - 1) & ~(gfmt.granule - 1)
    guest.map(gva, 0x30_0000 // gfmt.granule * gfmt.granule, gfmt.granule, "rw", user=True)
    t = ts.walk(gva + 0x18, "r", True)
    n, m = gfmt.levels, hfmt.levels
    assert t.memory_refs == (n + 1) * (m + 1) - 1 == want
    assert (t.guest_refs, t.host_refs) == (n, n * m + m)
    assert composition(ts, gfmt, gva + 0x18, "r", True) == product(ts, gva + 0x18, "r", True)


def test_back_guest_memory_in_each_granule() -> None:
    guest = PageTable(PhysicalMemory(GUEST_RAM), AArch64(4096), update_ad=False)
    guest.map(0x40_0000, 0x30_0000, 4096, "rw")
    for name, page, host_refs in (
        ("aarch64_s2", 2 * MIB, 15),
        ("aarch64_s2_16k", 16384, 15),
        ("aarch64_s2_64k", 65536, 10),
    ):
        t = back_guest_memory(guest, name, page).walk(0x40_0008, "r", False)
        assert (t.pa, t.gpa, t.host_refs) == (0x30_0008, 0x30_0008, host_refs), name
    with pytest.raises(ConfigError, match="16 KiB, 32 MiB"):
        back_guest_memory(guest, "aarch64_s2_16k", 2 * MIB)


# -- random walks against the composition ---------------------------------------------------------

GUESTS = {
    "4k": lambda: AArch64(4096, va_bits=39),
    "16k": lambda: AArch64(16384),
    "64k": lambda: AArch64(65536, va_bits=42),
}
HOSTS = {
    "4k": lambda: AArch64Stage2(4096, 40),
    "4k_ipa36": lambda: AArch64Stage2(4096, 36, pa_bits=40),
    "16k": lambda: AArch64Stage2(16384, 40),
    "64k": lambda: AArch64Stage2(65536, 42, pa_bits=44),
}


def random_pair(rng: random.Random, gname: str, hname: str) -> tuple[TwoStage, AArch64, list[int]]:
    gfmt, hfmt = GUESTS[gname](), HOSTS[hname]()
    guest = PageTable(PhysicalMemory(GUEST_RAM), gfmt, update_ad=False)
    host = PageTable(PhysicalMemory(HOST_RAM, base=1 << 30), hfmt, update_ad=False)
    small = hfmt.granule
    big = hfmt.page_sizes[1]
    for base in range(0, max(GUEST_RAM, big), big):
        if base >= GUEST_RAM and base:
            break
        perms = Perm.parse(rng.choice(["rwx"] * 12 + ["r", "rw", "w", "x", ""]))
        how = rng.choice(["block"] * 3 + ["pages"] * 4 + ["hole"])
        if how == "block":
            host.map_trusted(base, HOST_BASE + base, big, perms)
        elif how == "pages":
            for gpa in range(base, min(base + big, GUEST_RAM), small):
                if rng.random() < 0.99:
                    host.map_trusted(gpa, HOST_BASE + gpa, small, perms)
    gvas = []
    for _ in range(rng.randint(1, 10)):
        size = rng.choice(gfmt.page_sizes[:1] * 3 + gfmt.page_sizes)
        gva = rng.randrange(0, (1 << gfmt.va_bits) // size) * size
        top = rng.choice([GUEST_RAM, 1 << hfmt.ipa_bits, 2 << hfmt.ipa_bits])
        gpa = rng.randrange(0, max(1, top // size)) * size
        try:
            guest.map_trusted(gva, gpa, size, Perm.parse(rng.choice(["r", "rw", "rx"])), rng.random() < 0.5)
        except Exception:  # overlaps
            continue
        gvas.append(gva)
    for _ in range(rng.randint(0, 2)):
        path = guest.walk_path(rng.choice(gvas)) if gvas else []
        if path:
            _l, pte_pa, pte = rng.choice(path)
            guest.mem.write_u64(pte_pa, pte ^ 1 << rng.choice([0, 1, 6, 7, 10, 22, 40, 47, 54, 61]))
    for _ in range(rng.randint(0, 2)):
        path = host.walk_path(rng.randrange(0, GUEST_RAM, 4096))
        if path:
            _l, pte_pa, pte = rng.choice(path)
            host.mem.write_u64(pte_pa, pte ^ 1 << rng.choice([0, 1, 6, 7, 10, 16, 29, 44, 47, 53, 54]))
    return TwoStage(guest, host), gfmt, gvas


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    gname=st.sampled_from(list(GUESTS)),
    hname=st.sampled_from(list(HOSTS)),
    probes=st.lists(
        st.tuples(st.integers(0, 15), st.sampled_from("rwxp"), st.booleans()), min_size=1, max_size=12
    ),
)
def test_random_two_stage_walks_equal_the_composition(
    seed: int, gname: str, hname: str, probes: list[tuple[int, str, bool]]
) -> None:
    rng = random.Random(seed)
    ts, gfmt, gvas = random_pair(rng, gname, hname)
    for pick, access, user in probes:
        gva = (
            gvas[pick % len(gvas)] + rng.randrange(0, 4096, 8)
            if gvas and pick < 12
            else rng.randrange(0, 1 << 40)
        )
        assert product(ts, gva, access, user) == composition(ts, gfmt, gva, access, user), (
            hex(gva),
            access,
            user,
        )


@pytest.mark.parametrize(("granule", "ipa_bits", "tables"), [(16384, 48, 2), (4096, 40, 2), (65536, 42, 1)])
def test_a_concatenated_root_is_built_aligned_mapped_listed_and_freed_through_page_table(
    granule: int, ipa_bits: int, tables: int
) -> None:
    """A start level on several tables is one block of root_bytes, aligned to its size (VTTBR_EL2)."""
    fmt = AArch64Stage2(granule, ipa_bits=ipa_bits, pa_bits=ipa_bits)
    assert fmt.concatenated == tables
    mem = PhysicalMemory(1 << 30)
    free = mem.free_bytes
    pt = PageTable(mem, fmt)
    assert pt.root % max(fmt.root_bytes, 4096) == 0
    top = (1 << ipa_bits) - granule  # the last page: its index is in the last concatenated table
    pt.map(top, 0x100_0000, granule, "rw")
    t = pt.walk(top + 8, "w")
    assert t.pa == 0x100_0008 and t.memory_refs == fmt.levels
    assert [(m.va, m.pa, m.size) for m in pt.mappings()] == [(top, 0x100_0000, granule)]
    if tables > 1:
        with pytest.raises(VmoptError):  # a root aligned to one table only
            PageTable.attach(mem, pt.root + granule, fmt)
        assert PageTable.attach(mem, pt.root, fmt).walk(top, "r").pa == 0x100_0000
    pt.unmap(top, granule)
    pt.destroy()
    assert mem.free_bytes == free
