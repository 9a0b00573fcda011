"""Two-stage walks (vmopt.paging.TwoStage) against their composition from the single-stage references.

The oracle is the definition of nested paging: the reference guest walk
(tests/reference/paging) run over guest-physical words whose every access
is first translated by a reference host walk (reference x86 for NPT, walked
as a user; tests/reference/paging/ept.py for EPT), then the final GPA
translated the same way. Random guest and host tables, with host holes,
reduced rights, large pages and corrupted host entries, must give the same
HPA, GPA and guest/host reference split, or the same fault (stage, cause,
level, GPA, table-or-final). Uncached counts are (n+1)(m+1)-1 for every
pair of formats; hand-worked EPT bit patterns from the SDM check the
misconfiguration/violation split through a whole two-stage walk.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from reference.paging import riscv as ref_riscv
from reference.paging import x86 as ref_x86
from reference.paging.ept import ept_walk
from vmopt import PhysicalMemory
from vmopt.errors import ConfigError, PageFault, PhysicalAccessError
from vmopt.paging import Ept, NestedTranslation, PageTable, TwoStage
from vmopt.paging.types import Translation

MIB = 1 << 20
GUEST_RAM = 8 * MIB
HOST_RAM = 64 * MIB
#: Where the host puts guest frame 0 (guest RAM is backed at HPA + this).
HOST_BASE = 32 * MIB

GUESTS: dict[str, Callable[[], Any]] = {
    "x86_64": lambda: ref_x86.X86_64(4),
    "x86_64_5level": lambda: ref_x86.X86_64(5),
    "sv39": lambda: ref_riscv.RiscV(3),
    "sv48": lambda: ref_riscv.RiscV(4),
    "sv57": lambda: ref_riscv.RiscV(5),
}
HOSTS = ("ept", "ept_5level", "ept_ad", "npt")
HOST_LEVELS = {"ept": 4, "ept_5level": 5, "ept_ad": 4, "npt": 4}


def host_format(name: str) -> Any:
    if name == "ept_ad":
        return Ept(4, ad=True)
    return name


@dataclass
class Pair:
    """A guest table on guest RAM and a host table on host RAM, and the oracle's view of them."""

    guest_name: str
    host_name: str
    gmem: PhysicalMemory
    hmem: PhysicalMemory
    guest: PageTable
    host: PageTable
    ts: TwoStage

    @classmethod
    def build(cls, guest_name: str, host_name: str) -> Pair:
        gmem = PhysicalMemory(GUEST_RAM)
        hmem = PhysicalMemory(HOST_RAM)
        guest = PageTable(gmem, guest_name, update_ad=False)
        host = PageTable(hmem, host_format(host_name), update_ad=False)
        return cls(guest_name, host_name, gmem, hmem, guest, host, TwoStage(guest, host))

    def back_all(self, perms: str = "rwx") -> None:
        """The host maps every guest frame, 4 KiB pages."""
        self.host.map_range(0, HOST_BASE, GUEST_RAM, perms=perms, user=True)

    # -- the oracle ----------------------------------------------------------------

    def host_ref(self, gpa: int, access: str) -> Translation:
        if self.host_name == "npt":
            walk: Translation = ref_x86.X86_64(4).walk(self.hmem, self.host.root, gpa, access, True, False)
            return walk
        levels = HOST_LEVELS[self.host_name]
        return ept_walk(self.hmem, self.host.root, gpa, access, levels=levels, ad=self.host_name == "ept_ad")

    def oracle(self, gva: int, access: str, user: bool) -> tuple[Any, ...]:
        """What the composition of the references says: ('ok', hpa, gpa, guest_refs, host_refs) or a fault."""
        table_access = "w" if self.host_name == "ept_ad" else "r"
        refs = {"guest": 0, "host": 0}
        stopped: list[tuple[Any, ...]] = []
        host_levels = HOST_LEVELS[self.host_name]

        def host_or_fault(gpa: int, access: str, table: bool) -> Translation | None:
            try:
                t = self.host_ref(gpa, access)
            except PageFault as f:
                refs["host"] += 0 if f.level is None else host_levels - f.level
                stopped.append(("host", f.cause, f.level, gpa, table))
                return None
            refs["host"] += t.memory_refs
            return t

        pair = self

        class NestedWords:
            """Guest-physical words: each access host-translated first (once, if contains() asked)."""

            translated: int | None = None

            def contains(self, gpa: int, n: int) -> bool:
                if host_or_fault(gpa, table_access, True) is None:
                    return False
                self.translated = gpa
                return bool(pair.gmem.contains(gpa, n))

            def read_u64(self, gpa: int) -> int:
                if self.translated != gpa and host_or_fault(gpa, table_access, True) is None:
                    raise PhysicalAccessError(f"host fault at {gpa:#x}")
                self.translated = None
                word = pair.gmem.read_u64(gpa)
                refs["guest"] += 1
                return word

            def write_u64(self, gpa: int, value: int) -> None:  # A/D updates: not made (update_ad off)
                raise AssertionError("the oracle walks without A/D updates")

        try:
            gt = GUESTS[self.guest_name]().walk(NestedWords(), self.guest.root, gva, access, user, False)
        except PageFault as f:
            if stopped:
                return (*stopped[0], refs["guest"], refs["host"])
            return ("guest", f.cause, f.level, None, None, refs["guest"], refs["host"])
        ht = host_or_fault(gt.pa, access, False)
        if ht is None:
            return (*stopped[0], refs["guest"], refs["host"])
        return ("ok", ht.pa, gt.pa, refs["guest"], refs["host"])

    def product(self, gva: int, access: str, user: bool) -> tuple[Any, ...]:
        g, h = self.ts.walk_refs(gva, access, user)
        try:
            t = self.ts.walk(gva, access, user)
        except PageFault as f:
            assert f.stage in ("guest", "host")
            return (f.stage, f.cause, f.level, f.gpa, f.on_table, g, h)
        assert isinstance(t, NestedTranslation)
        assert (t.guest_refs, t.host_refs) == (g, h)
        assert t.memory_refs == g + h
        return ("ok", t.pa, t.gpa, t.guest_refs, t.host_refs)


# -- reference counts ----------------------------------------------------------------


@pytest.mark.parametrize("host_name", HOSTS)
@pytest.mark.parametrize("guest_name", list(GUESTS))
def test_uncached_refs_are_n_plus_1_times_m_plus_1_minus_1(guest_name: str, host_name: str) -> None:
    pair = Pair.build(guest_name, host_name)
    pair.back_all()
    gva = 0x1234_5000
    pair.guest.map(gva, 0x30_0000, perms="rw", user=True)
    t = pair.ts.walk(gva + 0x18, "r", True)
    n, m = pair.guest.fmt.levels, pair.host.fmt.levels
    assert t.memory_refs == (n + 1) * (m + 1) - 1
    assert (t.guest_refs, t.host_refs) == (n, n * m + m)
    assert (t.gpa, t.pa) == (0x30_0018, HOST_BASE + 0x30_0018)
    assert pair.oracle(gva + 0x18, "r", True) == pair.product(gva + 0x18, "r", True)


def test_24_for_four_over_four_and_35_for_five_over_five() -> None:
    for guest_name, host_name, want in (("x86_64", "ept", 24), ("x86_64_5level", "ept_5level", 35)):
        pair = Pair.build(guest_name, host_name)
        pair.back_all()
        pair.guest.map(0x4000_0000, 0x10_0000, perms="r")
        assert pair.ts.walk(0x4000_0000, "r").memory_refs == want


def test_large_pages_shorten_both_dimensions() -> None:
    pair = Pair.build("x86_64", "ept")
    # Host: guest RAM as 2 MiB pages (3 host refs per GPA); guest: one 2 MiB page (3 guest entries).
    pair.host.map_range(0, HOST_BASE, GUEST_RAM, page_size=2 * MIB, perms="rwx")
    pair.guest.map(0x4000_0000, 0x20_0000, 2 * MIB, perms="rw")
    t = pair.ts.walk(0x4000_1234, "w")
    assert (t.guest_refs, t.host_refs, t.memory_refs) == (3, 3 * 3 + 3, 15)
    assert (t.guest_page_size, t.host_page_size, t.page_size) == (2 * MIB, 2 * MIB, 2 * MIB)
    assert t.pa == HOST_BASE + 0x20_1234


# -- faults ----------------------------------------------------------------------------


def test_host_fault_on_a_guest_table_and_on_the_final_access() -> None:
    pair = Pair.build("x86_64", "ept")
    pair.back_all()
    pair.guest.map(0x40_0000, 0x50_0000, perms="rw")
    pair.host.unmap(0x50_0000)
    with pytest.raises(PageFault) as info:
        pair.ts.walk(0x40_0008, "w")
    f = info.value
    assert (f.stage, f.gpa, f.on_table, f.cause, f.level, f.va) == (
        "host",
        0x50_0008,
        False,
        "not_present",
        0,
        0x40_0008,
    )
    assert "host stage, final access at guest-physical 0x500008" in str(f)
    pair.host.unmap(pair.guest.root)
    with pytest.raises(PageFault) as info:
        pair.ts.walk(0x40_0008, "r")
    assert (info.value.stage, info.value.on_table) == ("host", True)
    assert info.value.gpa == pair.guest.root + ((0x40_0008 >> 39) & 511) * 8
    with pytest.raises(PageFault) as info:
        Pair.build("x86_64", "npt").ts.walk(0x1000, "r")
    assert info.value.stage == "host", "a guest root the host does not map is a host fault"


def test_guest_faults_say_guest() -> None:
    pair = Pair.build("sv48", "npt")
    pair.back_all()
    with pytest.raises(PageFault) as info:
        pair.ts.walk(0x7000_0000, "x", True)
    assert (info.value.stage, info.value.cause, info.value.gpa) == ("guest", "not_present", None)


def test_ept_misconfiguration_versus_violation_through_a_nested_walk() -> None:
    """SDM bit patterns in the host leaf that backs the final GPA."""
    pair = Pair.build("x86_64", "ept")
    pair.back_all()
    pair.guest.map(0x40_0000, 0x50_0000, perms="rw")
    leaf = pair.host.lookup(0x50_0000)
    assert leaf is not None and leaf.pte == (HOST_BASE + 0x50_0000) | 0b110_111  # WB, RWX
    frame = HOST_BASE + 0x50_0000
    cases = [
        (frame | 0b110_010, "misconfigured"),  # W-only
        (frame | 0b110_110, "misconfigured"),  # WX-only
        (frame | 0b010_011, "misconfigured"),  # memory type 2
        (frame | 0b011_011, "misconfigured"),  # memory type 3
        (frame | 0b111_011, "misconfigured"),  # memory type 7
        (frame | 1 << 50 | 0b110_011, "misconfigured"),  # above MAXPHYADDR 46
        (frame | 0b110_000, "not_present"),  # 000: violation
        (frame | 0b110_101, "protection"),  # RX, a write: violation
        (frame | 0b110_100, "protection"),  # execute-only, a write
    ]
    for pte, cause in cases:
        pair.hmem.write_u64(leaf.pte_pa, pte)
        with pytest.raises(PageFault) as info:
            pair.ts.walk(0x40_0000, "w")
        assert (info.value.stage, info.value.cause, info.value.level) == ("host", cause, 0), hex(pte)
        assert pair.oracle(0x40_0000, "w", False) == pair.product(0x40_0000, "w", False)
    pair.hmem.write_u64(leaf.pte_pa, frame | 0b000_100)  # execute-only, UC: a fetch is fine
    pair.guest.protect(0x40_0000, 4096, "rx")
    assert pair.ts.walk(0x40_0000, "x").pa == frame


def test_accessed_and_dirty_in_both_dimensions() -> None:
    gmem, hmem = PhysicalMemory(GUEST_RAM), PhysicalMemory(HOST_RAM)
    guest = PageTable(gmem, "x86_64")
    host = PageTable(hmem, Ept(4, ad=True))
    host.map_range(0, HOST_BASE, GUEST_RAM, perms="rwx")
    guest.map(0x40_0000, 0x50_0000, perms="rw")
    ts = TwoStage(guest, host)
    t = ts.walk(0x40_0000, "r")
    assert not t.dirty
    g, h = guest.lookup(0x40_0000), host.lookup(0x50_0000)
    assert g is not None and h is not None
    assert (g.accessed, g.dirty, h.accessed, h.dirty) == (True, False, True, False)
    assert ts.walk(0x40_0000, "w").dirty
    g, h = guest.lookup(0x40_0000), host.lookup(0x50_0000)
    assert g is not None and h is not None and g.dirty and h.dirty
    # EPT A/D: the guest's table pages were written (their A bits), so their host D is set.
    root = host.lookup(guest.root)
    assert root is not None and root.accessed and root.dirty
    # Without EPT A/D, host bits stay clear; a read-only host page under a guest table faults the A update.
    host2 = PageTable(PhysicalMemory(HOST_RAM), Ept(4))
    host2.map_range(0, HOST_BASE, GUEST_RAM, perms="rx")
    guest2 = PageTable(PhysicalMemory(GUEST_RAM), "x86_64")
    guest2.map(0x40_0000, 0x50_0000, perms="r")
    with pytest.raises(PageFault) as info:
        TwoStage(guest2, host2).walk(0x40_0000, "r")
    assert (info.value.stage, info.value.cause, info.value.on_table) == ("host", "protection", True)


def test_bad_arguments_are_config_errors() -> None:
    gmem = PhysicalMemory(MIB)
    a, b = PageTable(gmem, "x86_64"), PageTable(gmem, "sv39")
    with pytest.raises(ConfigError, match=r"needs a host format.*got sv39"):
        TwoStage(a, b)
    with pytest.raises(ConfigError, match="must be a PageTable"):
        TwoStage(a, "ept")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="EPT has 4 or 5 levels, got 3"):
        Ept(3)
    with pytest.raises(ConfigError, match="W without R"):
        PageTable(PhysicalMemory(MIB), "ept").map(0, 0, perms="w")


# -- random tables against the composition --------------------------------------------


def random_pair(rng: random.Random, guest_name: str, host_name: str) -> tuple[Pair, list[int]]:
    """Random guest pages, host backing with holes, odd rights, 2 MiB pages and corrupted entries."""
    pair = Pair.build(guest_name, host_name)
    ept = host_name != "npt"
    host_perms = ["rwx"] * 12 + ["rw", "rx", "r"] + (["x"] if ept else [])
    for chunk in range(0, GUEST_RAM, 2 * MIB):
        if rng.random() < 0.25:
            pair.host.map(chunk, HOST_BASE + chunk, 2 * MIB, perms=rng.choice(host_perms), user=True)
            continue
        for gpa in range(chunk, chunk + 2 * MIB, 4096):
            if rng.random() < 0.97:
                pair.host.map(gpa, HOST_BASE + gpa, perms=rng.choice(host_perms), user=True)
    gvas = []
    for _ in range(rng.randint(1, 12)):
        gva = rng.randrange(0, 1 << 30, 4096)
        try:
            pair.guest.map(gva, rng.randrange(0, GUEST_RAM, 4096), perms=rng.choice(["rw", "rwx", "r", "rx"]),
                           user=rng.random() < 0.5)  # fmt: skip
        except Exception as exc:  # an overlap with an earlier page: skip it
            assert type(exc).__name__ == "MappingError", exc
            continue
        gvas.append(gva)
    for _ in range(rng.choice([0, 0, 1, 2])):
        gpa = rng.randrange(0, GUEST_RAM, 8)
        path = pair.host.walk_path(gpa)
        if path:
            _, pte_pa, pte = rng.choice(path)
            pair.hmem.write_u64(pte_pa, pte ^ (1 << rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 47, 50])))
    return pair, gvas


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    guest_name=st.sampled_from(list(GUESTS)),
    host_name=st.sampled_from(HOSTS),
    probes=st.lists(
        st.tuples(st.integers(0, 15), st.sampled_from("rwxp"), st.booleans()), min_size=1, max_size=12
    ),
)
def test_random_two_stage_walks_equal_the_composition(
    seed: int, guest_name: str, host_name: str, probes: list[tuple[int, str, bool]]
) -> None:
    rng = random.Random(seed)
    pair, gvas = random_pair(rng, guest_name, host_name)
    for pick, access, user in probes:
        gva = (
            gvas[pick % len(gvas)] + rng.randrange(0, 4096, 8)
            if gvas and pick < 12
            else rng.randrange(0, 1 << 32)
        )
        assert pair.product(gva, access, user) == pair.oracle(gva, access, user), (hex(gva), access, user)


class TwoStageMachine(RuleBasedStateMachine):
    """Map and unmap in both stages, walking after each step, against the composition."""

    def __init__(self) -> None:
        super().__init__()
        self.pair: Pair

    @initialize(guest_name=st.sampled_from(list(GUESTS)), host_name=st.sampled_from(HOSTS))
    def setup(self, guest_name: str, host_name: str) -> None:
        self.pair = Pair.build(guest_name, host_name)
        # The guest's root table frame must be backed for any walk to start.
        self.pair.host.map(self.pair.guest.root, HOST_BASE + self.pair.guest.root, perms="rw", user=True)
        self.gvas: list[int] = []

    @rule(
        vpn=st.integers(0, 63),
        gfn=st.integers(0, GUEST_RAM // 4096 - 1),
        perms=st.sampled_from(["r", "rw", "rx"]),
    )
    def guest_map(self, vpn: int, gfn: int, perms: str) -> None:
        gva = 0x10_0000_0000 + vpn * 0x20_1000
        if gva in self.gvas:
            return
        self.pair.guest.map(gva, gfn * 4096, perms=perms, user=True)
        self.gvas.append(gva)

    @rule(data=st.data())
    def guest_unmap(self, data: st.DataObject) -> None:
        if self.gvas:
            gva = data.draw(st.sampled_from(self.gvas))
            self.pair.guest.unmap(gva)
            self.gvas.remove(gva)

    @rule(gfn=st.integers(0, GUEST_RAM // 4096 - 1), perms=st.sampled_from(["r", "rw", "rx", "rwx"]))
    def host_map(self, gfn: int, perms: str) -> None:
        if self.pair.host.lookup(gfn * 4096) is None:
            self.pair.host.map(gfn * 4096, HOST_BASE + gfn * 4096, perms=perms, user=True)

    @rule(data=st.data())
    def host_back_guest_tables(self, data: st.DataObject) -> None:
        """Back one of the guest's table frames (else most walks stop at the first host fault)."""
        frames = self.pair.guest.table_frames()
        gpa = data.draw(st.sampled_from(frames))
        if self.pair.host.lookup(gpa) is None:
            self.pair.host.map(gpa, HOST_BASE + gpa, perms="rw", user=True)

    @rule(gfn=st.integers(0, GUEST_RAM // 4096 - 1))
    def host_unmap(self, gfn: int) -> None:
        if self.pair.host.lookup(gfn * 4096) is not None:
            self.pair.host.unmap(gfn * 4096)

    @rule(pick=st.integers(0, 63), access=st.sampled_from("rwx"), user=st.booleans())
    def walk(self, pick: int, access: str, user: bool) -> None:
        gva = self.gvas[pick % len(self.gvas)] + 8 * pick if self.gvas else 0x10_0000_0000
        assert self.pair.product(gva, access, user) == self.pair.oracle(gva, access, user)


TwoStageMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_two_stage_state_machine = TwoStageMachine.TestCase
