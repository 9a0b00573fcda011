"""vmopt's AArch64 stage 1 over stage 2 against QEMU's, through Unicorn's AT S12E1R/W and S12E0R/W.

Random stage-1 tables (as in test_aarch64_unicorn.py) over random stage-2
tables in every granule, both corrupted behind PageTable's back, are probed
with the four stage 1 and 2 AT instructions (tests/unicorn_aarch64.py,
:class:`S12Oracle`). Every probe must agree: the PA, or the fault status
code with PAR.S (a stage-2 fault) and PAR.PTW (on a stage-1 table read).

vmopt reads guest tables at their guest-physical address (the VMM's view of
guest RAM); the oracle copies each guest frame to the host-physical address
the (corrupted) stage-2 tables give it, so both walk the same bytes. Tables
where two guest frames land on one host frame cannot be copied that way and
are not drawn.

Known divergences of Unicorn's QEMU 5.0 core are skipped probe by probe, for
the reasons stage 1 has (:func:`unicorn_diverges`), and one of stage 2: a
stage-2 fault on a stage-1 table read is reported as a translation fault at
the stage-1 walk's level (QEMU 5.0's ``get_phys_addr_lpae`` overwrites the
stage-2 fault's type and level on that path), so for those probes only
PAR.S, PAR.PTW and that level are compared. Stage 1's: a block where the
granule has none is accepted, there is no address-size fault, a block's
RES0 output bits are kept, and unmapped memory reads as zeros rather than as
an external abort. QEMU also faults every walk whose IPA size exceeds the
CPU's PA range (Cortex-A72: 44 bits), so ipa_bits stay at or below 44 here.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from unicorn_aarch64 import AtResult, S2Oracle, S12Oracle
from vmopt import PageTable, PhysicalMemory
from vmopt.errors import PageFault
from vmopt.paging import AArch64, AArch64Stage2, Perm, TwoStage

MiB, GiB = 1 << 20, 1 << 30
GUEST_RAM = 32 * MiB
HOST_TABLES_BASE, HOST_TABLES = 1 * GiB, 64 * MiB
#: Host-physical offset of guest RAM.
OFFSET = 8 * GiB

#: name -> (stage 1, stage 2)
PAIRS = {
    "4k_over_4k": lambda: (AArch64(4096, va_bits=39), AArch64Stage2(4096, 40)),
    "4k_over_4k_ipa36_pa44": lambda: (AArch64(4096), AArch64Stage2(4096, 36, pa_bits=44)),
    "16k_over_16k": lambda: (AArch64(16384, va_bits=36), AArch64Stage2(16384, 40)),
    "64k_over_64k_pa44": lambda: (AArch64(65536, va_bits=42), AArch64Stage2(65536, 42, pa_bits=44)),
    "4k_over_64k": lambda: (AArch64(4096, va_bits=39), AArch64Stage2(65536, 40)),
    "64k_over_4k": lambda: (AArch64(65536, va_bits=42), AArch64Stage2(4096, 39)),
}
#: Stage-1 descriptor bits flipped (as test_aarch64_unicorn.py).
GUEST_FLIP_BITS = (0, 1, 1, 6, 7, 7, 10, 10, 22, 29, 33, 40, 47, 53, 54, 59, 60, 61, 62)
#: Stage-2 descriptor bits flipped: V, T/B, S2AP[0], S2AP[1], AF, bit 53 (ignored), XN,
#: and address bits (elsewhere in memory, outside it, above PS).
HOST_FLIP_BITS = (0, 1, 1, 6, 7, 7, 10, 10, 53, 54, 54, 16, 22, 29, 40, 44, 47)
PROBES = (("r", False), ("w", False), ("r", True), ("w", True))
PERMS = ("r", "rw", "rwx", "rx", "w", "x", "wx", "")

#: skip reason -> probes skipped, and "compared" -> probes compared, over the module
SKIPPED: Counter[str] = Counter()


def vmopt_at(ts: TwoStage, va: int, access: str, el0: bool) -> AtResult:
    """vmopt's two-stage walk reported as PAR_EL1 would."""
    try:
        t = ts.walk(va, access, el0)
    except PageFault as f:
        assert f.fsc is not None, f
        return AtResult(None, f.fsc, f.stage == "host", bool(f.on_table))
    return AtResult(t.pa, None)


def last_descriptor(pt: PageTable, addr: int) -> tuple[int, int] | None:
    path = pt.walk_path(addr)
    return (path[-1][0], path[-1][2]) if path else None


S1PTW_REASON = (
    "QEMU 5.0 reports a stage-2 fault on a stage-1 table read as a translation fault at the stage-1 level"
)


def s1_level_read(ts: TwoStage, va: int) -> int:
    """The stage-1 level (vmopt's) of the guest entry whose read faulted at stage 2 in the walk of ``va``."""
    try:
        ts.walk(va, "p", False)
    except PageFault as f:
        path = ts.guest.walk_path(va)
        # The entry is on the path, or is the next read (its table lies outside guest RAM).
        return next((lv for lv, pte_pa, _e in path if pte_pa == f.gpa), path[-1][0] - 1 if path else -9)
    return -9


def unicorn_diverges(ts: TwoStage, va: int, got: AtResult, want: AtResult) -> str | None:
    """Why Unicorn answers this probe (``want``) differently from the architecture (and vmopt), or None."""
    s1ptw = got.stage2 and got.ptw and want.stage2 and want.ptw
    if (
        s1ptw
        and want.fsc is not None
        and want.fsc >> 2 == 0b0001
        and want.fsc & 3 == 3 - s1_level_read(ts, va)
    ):
        # QEMU 5.0 keeps the stage-1 walk's fault type and level for a stage-2 fault on its
        # table read: check that level, the one of the stage-1 entry vmopt's host fault names.
        return S1PTW_REASON
    if got.fsc is not None and got.fsc >> 2 == 0b0000:
        return "QEMU 5.0 has no address-size fault"
    if got.fsc is not None and got.fsc >> 2 == 0b0101 and want.fsc == 0b000100 | (got.fsc & 3):
        return "Unicorn reads unmapped physical memory as zeros, not as an external abort"
    # The descriptors each stage ended on: stage 1's for va, stage 2's for the GPAs it translated.
    ends: list[tuple[PageTable, int, int]] = []
    if got.stage2 and got.ptw:
        try:
            ts.walk(va, "p", False)
        except PageFault as f:
            host_end = last_descriptor(ts.host, f.gpa or 0)
            if host_end is not None:
                ends.append((ts.host, *host_end))
    guest_end = last_descriptor(ts.guest, va)
    if guest_end is not None:
        ends.append((ts.guest, *guest_end))
        level, pte = guest_end
        if pte & 0b11 == 0b11 or level > 0:
            span = ts.guest.fmt.level_span(level)
            gpa = (pte & ((1 << 48) - 1) & ~(span - 1)) | (va & (span - 1))
            host_end = last_descriptor(ts.host, gpa)
            if host_end is not None:
                ends.append((ts.host, *host_end))
    for pt, level, pte in ends:
        block = pte & 0b11 == 0b01 and level > 0
        if block and got.fsc is not None and got.fsc >> 2 == 0b0001 and level not in pt.fmt.leaf_sizes:
            return "QEMU 5.0 accepts a block where the granule has none"
        res0 = pte & (pt.fmt.level_span(level) - 1) & ~(pt.fmt.page_sizes[0] - 1)
        if block and res0 and (got.pa is not None or got.stage2) and (want.pa is not None or want.stage2):
            return "Unicorn keeps a block's RES0 output-address bits below the block size"
    return None


def host_map_guest_ram(draw: st.DrawFn, host: PageTable) -> None:
    """Back guest RAM at OFFSET with host pages of random sizes and rights, leaving some holes."""
    small = host.fmt.page_sizes[0]
    chunk = host.fmt.page_sizes[1] if len(host.fmt.page_sizes) > 1 else small
    for base in range(0, max(GUEST_RAM, chunk), chunk):
        if base >= GUEST_RAM:
            break
        perms = draw(st.sampled_from(["rwx"] * 16 + ["rw", "r", "w", "x"]))
        how = draw(st.sampled_from(["block"] * 4 + ["pages"] * 3 + ["hole"]))
        if how == "block" and chunk != small:
            host.map_trusted(base, OFFSET + base, chunk, Perm.parse(perms))
        elif how != "hole" or chunk == small:
            for gpa in range(base, min(base + chunk, GUEST_RAM), small):
                host.map_trusted(gpa, OFFSET + gpa, small, Perm.parse(perms))


@st.composite
def two_stage_tables(draw: st.DrawFn, name: str) -> tuple[TwoStage, list[int]]:
    """Random stage-1 pages and blocks over random stage-2 tables, both then corrupted; and VAs to probe."""
    gfmt, hfmt = PAIRS[name]()
    gmem = PhysicalMemory(GUEST_RAM)
    guest = PageTable(gmem, gfmt, update_ad=False)
    host = PageTable(PhysicalMemory(HOST_TABLES, base=HOST_TABLES_BASE), hfmt, update_ad=False)
    host_map_guest_ram(draw, host)
    ipa_top = 1 << hfmt.ipa_bits
    vas: list[int] = []
    gpas: list[int] = []
    for _ in range(draw(st.integers(1, 10))):
        size = draw(st.sampled_from(gfmt.page_sizes[:1] * 3 + gfmt.page_sizes))
        va = draw(st.sampled_from([0, 1, 2, 3, (1 << gfmt.va_bits) // size - 1])) * size
        va += draw(st.sampled_from([0, 0, 1 << (gfmt.va_bits - 1)])) & ~(size - 1)
        # Inside guest RAM, anywhere in the IPA space, or past it (a stage-2 level 0 fault).
        top = draw(st.sampled_from([GUEST_RAM, ipa_top, ipa_top, 2 * ipa_top]))
        gpa = draw(st.integers(0, max(0, top // size - 1))) * size
        try:
            guest.map_trusted(
                va,
                gpa,
                size,
                Perm.parse(draw(st.sampled_from(["r", "rw", "rx", "rwx"]))),
                draw(st.booleans()),
            )
        except Exception:  # overlaps: fine, the table just holds fewer pages
            continue
        vas.append(va)
        if gpa >= GUEST_RAM and gpa < ipa_top and draw(st.integers(0, 3)):
            hsize = draw(st.sampled_from(hfmt.page_sizes))
            base = gpa & ~(hsize - 1)
            hpa = draw(st.integers(0, (1 << 44) // hsize - 1)) * hsize
            with contextlib.suppress(Exception):  # overlaps an existing host mapping
                host.map_trusted(base, hpa, hsize, Perm.parse(draw(st.sampled_from(PERMS))))
        gpas.append(gpa)
    for _ in range(draw(st.integers(0, 3))):
        path = guest.walk_path(draw(st.sampled_from(vas)))
        if path:
            _level, pte_pa, pte = draw(st.sampled_from(path))
            gmem.write_u64(pte_pa, pte ^ (1 << draw(st.sampled_from(GUEST_FLIP_BITS))))
    table_gpas = sorted({p for va in vas for _l, p, _e in guest.walk_path(va)})
    for _ in range(draw(st.integers(0, 3))):
        # Mostly the final accesses' entries: a broken guest-table frame fails every probe under it.
        path = host.walk_path(draw(st.sampled_from(table_gpas[:1] + gpas * 4)))
        if path:
            level, pte_pa, pte = draw(st.sampled_from(path))
            bit = draw(st.sampled_from(HOST_FLIP_BITS))
            if level > 0 and pte & 0b11 == 0b01 and 1 << bit < hfmt.level_span(level):
                # A block's RES0 bits below its size: Unicorn would keep them for the guest
                # tables' frames too, and read them elsewhere (the final access is skipped below).
                bit = 47
            host.mem.write_u64(pte_pa, pte ^ (1 << bit))
    offsets = st.sampled_from([0, 0x18, 0xFF8, 0x1234, 0x2_0000])
    probes = [(va + draw(offsets)) % (1 << 64) for va in vas]
    probes += [1 << gfmt.va_bits, draw(st.integers(0, (1 << gfmt.va_bits) - 1))]
    return TwoStage(guest, host), probes


RUNS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", list(PAIRS))
@RUNS
@given(data=st.data())
def test_s12_at_instructions_agree_with_vmopt_two_stage_walks(name: str, data: st.DataObject) -> None:
    ts, probes = data.draw(two_stage_tables(name))
    try:
        oracle = S12Oracle(ts.guest, ts.host)
    except ValueError:  # two guest frames on one host frame, or on the host tables
        reject()
    for va in probes:
        for access, el0 in PROBES:
            want = oracle.at(va, access, el0)
            got = vmopt_at(ts, va, access, el0)
            if got != want and (why := unicorn_diverges(ts, va, got, want)) is not None:
                SKIPPED[why] += 1
                continue
            assert got == want, (
                hex(va),
                access,
                el0,
                [(lv, hex(p), hex(e)) for lv, p, e in ts.guest.walk_path(va)],
                got,
                want,
                [(lv, hex(p), hex(e)) for lv, p, e in ts.host.walk_path(ts.guest.root)],
            )
            SKIPPED["compared"] += 1
            if want.stage2:
                SKIPPED["compared: stage-2 faults"] += 1


def test_hand_built_two_stage_faults_agree() -> None:
    """One probe per stage-2 outcome, worked out by hand from the Arm ARM (PAR_EL1, D17.2.40)."""
    gfmt, hfmt = AArch64(4096, va_bits=39), AArch64Stage2(4096, 40)
    guest = PageTable(PhysicalMemory(GUEST_RAM), gfmt, update_ad=False)
    host = PageTable(PhysicalMemory(HOST_TABLES, base=HOST_TABLES_BASE), hfmt, update_ad=False)
    for gpa in range(0, 4 * MiB, 4096):
        host.map_trusted(gpa, OFFSET + gpa, 4096, Perm.parse("rwx"))
    guest.map(0x40_0000, 0x20_0000, 4096, "rw")  # final GPA backed RWX
    guest.map_trusted(0x50_0000, 0x1000_0000, 4096, Perm.parse("rw"))  # final GPA not backed
    host.map_trusted(0x1100_0000, 0x7000_0000, 4096, Perm.W)  # W-only at stage 2
    guest.map_trusted(0x60_0000, 0x1100_0000, 4096, Perm.parse("rw"))
    guest.map_trusted(0x70_0000, 1 << 41, 4096, Perm.parse("rw"))  # GPA above ipa_bits
    root_pte = guest.walk_path(0x40_0000)[0][1]
    ts = TwoStage(guest, host)
    oracle = S12Oracle(guest, host)
    cases = {
        (0x40_0010, "w", False): AtResult(OFFSET + 0x20_0010, None),
        (0x50_0010, "r", False): AtResult(
            None, 0b000110, True, False
        ),  # S2 translation, level 2 (empty slot)
        (0x60_0010, "w", False): AtResult(0x7000_0010, None),
        (0x60_0010, "r", False): AtResult(None, 0b001111, True, False),  # S2 permission, level 3
        (0x60_0010, "r", True): AtResult(None, 0b001111, False, False),  # S1 permission (an EL1 page)
        (0x70_0010, "r", False): AtResult(None, 0b000100, True, False),  # S2 translation, level 0
    }
    for (va, access, el0), want in cases.items():
        assert oracle.at(va, access, el0) == want, hex(va)
        assert vmopt_at(ts, va, access, el0) == want, hex(va)
    # The frame of the guest root unbacked: an S2 translation fault at S2 level 3 on a
    # stage-1 table read (PTW). QEMU 5.0 reports the stage-1 walk's level (1) instead.
    host.unmap(root_pte & ~0xFFF, 4096)
    oracle = S12Oracle(guest, host)
    assert vmopt_at(ts, 0x40_0010, "r", False) == AtResult(None, 0b000111, True, True)
    assert oracle.at(0x40_0010, "r", False) == AtResult(None, 0b000101, True, True)
    got, want = vmopt_at(ts, 0x40_0010, "r", False), oracle.at(0x40_0010, "r", False)
    assert unicorn_diverges(ts, 0x40_0010, got, want) == S1PTW_REASON


#: Stage-2 formats whose start level holds concatenated tables (QEMU's CPU allows IPAs up to 44 bits).
CONCATENATED = {
    "4k_ipa40_pa40": lambda: AArch64Stage2(4096, 40, pa_bits=40),
    "4k_ipa42_pa42": lambda: AArch64Stage2(4096, 42, pa_bits=42),
    "16k_ipa40_pa40": lambda: AArch64Stage2(16384, 40, pa_bits=40),
    "16k_ipa38_pa40": lambda: AArch64Stage2(16384, 38, pa_bits=40),
}


def put_s2(
    mem: PhysicalMemory, fmt: AArch64Stage2, root: int, ipa: int, level: int, pte: int, tables: list[int]
) -> int:
    """Write ``pte`` for ``ipa`` at ``level`` below ``root``, taking new tables from ``tables``."""
    table = root
    for lvl in range(fmt.levels - 1, level, -1):
        pa = table + fmt.index(ipa, lvl) * 8
        entry = mem.read_u64(pa)
        if fmt.is_leaf(entry, lvl):
            raise ValueError(f"a block maps {ipa:#x} already")
        if not fmt.is_valid(entry):
            entry = fmt.make_table(tables.pop(), lvl)
            mem.write_u64(pa, entry)
        table = fmt.table_pa(entry)
    pa = table + fmt.index(ipa, level) * 8
    if fmt.is_valid(mem.read_u64(pa)):
        raise ValueError(f"{ipa:#x} is mapped already")
    mem.write_u64(pa, pte)
    return pa


@pytest.mark.parametrize("name", list(CONCATENATED))
@RUNS
@given(data=st.data())
def test_concatenated_stage_2_roots_agree_with_qemu(name: str, data: st.DataObject) -> None:
    """Stage 2 alone (stage 1 off) over a root of concatenated tables, built by hand, with corrupted
    descriptors: PageTable builds one-frame roots only, so the format's walk runs on memory directly."""
    fmt = CONCATENATED[name]()
    assert fmt.concatenated > 1
    mem = PhysicalMemory(64 * MiB)
    root = 16 * MiB  # aligned to the concatenated root's size, as VTTBR_EL2.BADDR must be
    tables = [32 * MiB + i * fmt.granule for i in range(64)]
    ipas: list[int] = []
    pte_pas: list[int] = []
    for _ in range(data.draw(st.integers(1, 10))):
        size = data.draw(st.sampled_from(fmt.page_sizes[:1] * 2 + fmt.page_sizes))
        level = fmt.level_of_size(size)
        assert level is not None
        ipa = data.draw(st.integers(0, (1 << fmt.ipa_bits) // size - 1)) * size
        pa = data.draw(st.integers(0, (1 << fmt.pa_bits) // size - 1)) * size
        pte = fmt.make_leaf(pa, level, Perm.parse(data.draw(st.sampled_from(PERMS))), False, False)
        try:
            pte_pas.append(put_s2(mem, fmt, root, ipa, level, pte, tables))
        except ValueError:  # mapped already
            continue
        ipas.append(ipa)
    for _ in range(data.draw(st.integers(0, 3))):
        if not pte_pas:
            break
        pa = data.draw(st.sampled_from(pte_pas))
        mem.write_u64(pa, mem.read_u64(pa) ^ (1 << data.draw(st.sampled_from((0, 1, 6, 7, 10, 54)))))
    oracle = S2Oracle(mem, fmt, root)
    probes = [ipa + data.draw(st.sampled_from([0, 0x18, 0xFF8])) for ipa in ipas]
    probes += [data.draw(st.integers(0, (1 << fmt.ipa_bits) - 1)), 1 << fmt.ipa_bits]
    for ipa in probes:
        for access in ("r", "w"):
            want = oracle.at(ipa, access)
            try:
                t = fmt.walk(mem, root, ipa, access, False, False)
                got = AtResult(t.pa, None)
            except PageFault as f:
                got = AtResult(None, f.fsc, True, False)
            if got.fsc is not None and got.fsc >> 2 == 0b0101 and want.fsc == 0b000100 | (got.fsc & 3):
                # A block turned table by a flipped bit 1 points outside memory.
                SKIPPED["Unicorn reads unmapped physical memory as zeros, not as an external abort"] += 1
                continue
            assert got == want, (name, hex(ipa), access)
            SKIPPED["compared"] += 1
            SKIPPED["compared: concatenated roots"] += 1


def test_skips_stay_rare() -> None:
    """The divergence skips are the exception; run after the differential tests in this module.

    A stage-2 fault on a stage-1 table read is common under corrupted tables, and
    QEMU 5.0 misreports its type and level every time; those probes still compare
    PAR.S, PAR.PTW and the stage-1 level, so they get a bound of their own.
    """
    counts = {why[:40]: n for why, n in SKIPPED.items()}
    compared = SKIPPED["compared"]
    assert compared > 1000, counts
    assert SKIPPED["compared: stage-2 faults"] > 100, counts
    assert SKIPPED["compared: concatenated roots"] > 500, counts
    assert SKIPPED[S1PTW_REASON] < compared / 2, counts
    others = sum(n for why, n in SKIPPED.items() if not why.startswith("compared") and why != S1PTW_REASON)
    assert others < compared / 4, counts
