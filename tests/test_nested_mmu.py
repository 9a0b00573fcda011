"""The MMU over a TwoStage: the nested cost model (nested TLB, page-walk caches in both dimensions).

Caches change what a translation costs, never what it returns: every
address an MMU with any nested configuration translates must equal the
uncached two-stage walk (or fault the same way), and its references can
only be fewer. Counts without caches are the (n+1)(m+1)-1 of the walk.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmopt import Mmu, PhysicalMemory
from vmopt.errors import ConfigError, PageFault
from vmopt.paging import Ept, PageTable, TwoStage
from vmopt.tlb import NestedConfig, PwcConfig, TlbConfig

MIB = 1 << 20
HOST_BASE = 32 * MIB
GVA = 0x5555_0000_0000


def build(host_fmt: object = "ept", pages: int = 64) -> tuple[TwoStage, PageTable, PageTable]:
    guest = PageTable(PhysicalMemory(16 * MIB), "x86_64")
    host = PageTable(PhysicalMemory(64 * MIB), host_fmt)  # type: ignore[arg-type]
    host.map_range(0, HOST_BASE, 16 * MIB, perms="rwx", user=True)
    for i in range(pages):
        guest.map(GVA + i * 4096 * 37, 0x80_0000 + i * 4096, perms="rw", user=True)
    return TwoStage(guest, host), guest, host


def nested_mmu(ts: TwoStage, config: NestedConfig, pwc: bool) -> Mmu:
    mmu = Mmu(ts.guest, TlbConfig(entries=16, ways=4), pwc=pwc, asid=3)
    mmu.set_nested(ts, config)
    return mmu


def test_uncached_misses_cost_24_and_split_by_dimension() -> None:
    ts, _, _ = build()
    mmu = nested_mmu(ts, NestedConfig(ntlb_entries=0, host_pwc=None), pwc=False)
    for i in range(5):
        gva = GVA + i * 4096 * 37
        assert mmu.translate(gva, "r", True) == ts.walk(gva, "r", True).pa
    assert (mmu.stats.walks, mmu.stats.walk_memory_refs) == (5, 5 * 24)
    n = mmu.nested_stats
    assert n is not None and (n.walks, n.guest_refs, n.host_refs) == (5, 20, 100)
    assert mmu.asid == 3


def test_caches_cut_references_in_both_dimensions() -> None:
    costs = {}
    for name, config, pwc in (
        ("none", NestedConfig(ntlb_entries=0, host_pwc=None), False),
        ("ntlb", NestedConfig(ntlb_entries=16, host_pwc=None), False),
        ("all", NestedConfig(ntlb_entries=16, host_pwc=PwcConfig()), True),
    ):
        ts, _, _ = build()
        mmu = nested_mmu(ts, config, pwc)
        for i in range(64):
            mmu.translate(GVA + i * 4096 * 37, "r", True)
        n = mmu.nested_stats
        assert n is not None and n.guest_refs + n.host_refs == mmu.stats.walk_memory_refs
        costs[name] = (n.guest_refs, n.host_refs)
    assert costs["none"] == (64 * 4, 64 * 20)
    assert costs["ntlb"][0] == costs["none"][0] and costs["ntlb"][1] < costs["none"][1] // 2
    assert costs["all"][0] < costs["ntlb"][0] and costs["all"][1] <= costs["ntlb"][1]


def test_host_changes_shoot_the_vm_down() -> None:
    ts, _, host = build()
    mmu = nested_mmu(ts, NestedConfig(), pwc=True)
    assert mmu.translate(GVA, "r") == HOST_BASE + 0x80_0000
    host.remap(0x80_0000, HOST_BASE + 0x100_0000)
    assert mmu.translate(GVA, "r") == HOST_BASE + 0x100_0000, "no stale GVA->HPA entry survives"
    host.unmap(0x80_0000)
    with pytest.raises(PageFault) as info:
        mmu.translate(GVA, "r")
    assert (info.value.stage, info.value.gpa, info.value.restartable) == ("host", 0x80_0000, False)
    n = mmu.nested_stats
    assert n is not None and n.host_faults == 1


def test_bad_nested_configs() -> None:
    with pytest.raises(ConfigError, match="vmid must be an integer in"):
        NestedConfig(vmid=0)
    with pytest.raises(ConfigError, match="nested TLB entries"):
        NestedConfig(ntlb_entries=-1)
    ts, _, _ = build(pages=1)
    other = Mmu(PageTable(PhysicalMemory(MIB), "x86_64"))
    with pytest.raises(ConfigError, match="guest table must be the MMU's current table"):
        other.set_nested(ts)
    assert other.nested_stats is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ntlb=st.sampled_from([0, 1, 4, 64]),
    host_pwc=st.sampled_from([None, PwcConfig(entries=1), PwcConfig(entries=8)]),
    pwc=st.booleans(),
    ad=st.booleans(),
    probes=st.lists(
        st.tuples(st.integers(0, 70), st.sampled_from("rwx"), st.booleans()), min_size=1, max_size=60
    ),
    holes=st.lists(st.integers(0, 63), max_size=4),
)
def test_caches_never_change_what_a_translation_returns(
    ntlb: int,
    host_pwc: PwcConfig | None,
    pwc: bool,
    ad: bool,
    probes: list[tuple[int, str, bool]],
    holes: list[int],
) -> None:
    ts, _, host = build(Ept(4, ad=ad))
    for h in holes:
        host.unmap(0x80_0000 + h * 4096)
        host.map(0x80_0000 + h * 4096, HOST_BASE + 0x80_0000 + h * 4096, perms="r", user=True)
    mmu = nested_mmu(ts, NestedConfig(vmid=7, ntlb_entries=ntlb, host_pwc=host_pwc), pwc)
    bare = TwoStage(ts.guest, ts.host)
    for pick, access, user in probes:
        gva = GVA + pick * 4096 * 37 + 8
        try:
            want: object = bare.walk(gva, access, user).pa
        except PageFault as f:
            want = (f.stage, f.cause, f.gpa)
        try:
            got: object = mmu.translate(gva, access, user)
        except PageFault as f:
            got = (f.stage, f.cause, f.gpa)
        assert got == want, (hex(gva), access, user)
    n = mmu.nested_stats
    assert n is not None and n.guest_refs + n.host_refs == mmu.stats.walk_memory_refs
    # Nested walks are the misses plus the re-walks (dirty, and a hit that faults finding its stage).
    assert mmu.stats.walks + mmu.stats.dirty_walks <= n.walks <= mmu.stats.translations
    assert mmu.stats.walk_memory_refs <= 24 * n.walks


@pytest.mark.parametrize("pwc", [False, True])
def test_a_nested_tlb_hit_still_checks_the_host_rights(pwc: bool) -> None:
    """A read caches the frame's GPA->HPA; a later write must still meet the host's read-only page."""
    ts, _, host = build()
    host.protect(0x80_0000, 4096, "r")
    mmu = nested_mmu(ts, NestedConfig(ntlb_entries=16), pwc)
    assert mmu.translate(GVA, "r", True) == HOST_BASE + 0x80_0000
    mmu.flush()  # the GVA->HPA entry gone, the nested TLB keeps the frame
    with pytest.raises(PageFault) as info:
        mmu.translate(GVA, "w", True)
    assert (info.value.stage, info.value.cause, info.value.gpa) == ("host", "protection", 0x80_0000)
    # Through the TLB hit path too: the entry's combined rights refuse, the re-walk names the stage.
    mmu.translate(GVA + 8, "r", True)
    with pytest.raises(PageFault) as info:
        mmu.translate(GVA + 8, "w", True)
    assert (info.value.stage, info.value.cause) == ("host", "protection")
