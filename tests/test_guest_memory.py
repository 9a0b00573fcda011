"""``host_pt.guest_memory()``: guest-physical memory read and written through a host table.

Checked against host memory itself (bytes land at the HPA the host maps,
and back), against the host's edits (a remap, unmap or protect is seen by
the very next access), against the nested walker's A/D rules, and, for a
guest page table built on it, against the composition of the reference
guest walk (tests/reference/paging/x86.py) with reference EPT walks
(tests/reference/paging/ept.py) of every GPA it reads, over host memory's
bytes. A hypothesis state machine drives guest map/unmap, host
map/unmap/protect/remap, hypervisor writes to host memory, guest-physical
reads and writes and two-stage walks against a model of both tables and
the data bytes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from reference.paging import x86 as ref_x86
from reference.paging.ept import ept_walk
from vmopt import PhysicalMemory
from vmopt.errors import (
    AddressError,
    ConfigError,
    InputError,
    MappingError,
    PageFault,
    PhysicalAccessError,
)
from vmopt.paging import Ept, GuestMemory, PageTable, TwoStage, back_guest_memory

MIB = 1 << 20
#: Host memory [64 MiB, 96 MiB): its tables from the bottom, guest RAM backed above.
HOST_BASE, HOST_SIZE = 64 * MIB, 32 * MIB
#: Guest RAM GPA [0, 8 MiB) is backed at HPA GPA + BACKING.
BACKING = 72 * MIB
GUEST_RAM = 8 * MIB


def host_table(fmt: Any = "ept", scramble: bool = False) -> PageTable:
    """A host table mapping guest RAM, page by page (``scramble``: pages in reverse order)."""
    host = PageTable(PhysicalMemory(HOST_SIZE, base=HOST_BASE), fmt)
    pages = GUEST_RAM // 4096
    for i in range(pages):
        j = pages - 1 - i if scramble else i
        host.map(i * 4096, BACKING + j * 4096, perms="rwx", user=True)
    return host


def hpa_of(host: PageTable, gpa: int) -> int:
    return host.walk(gpa, "p", True).pa


def test_bytes_written_through_guest_memory_land_at_the_hpa_and_back() -> None:
    host = host_table(scramble=True)
    gm = host.guest_memory()
    assert isinstance(gm, GuestMemory) and (gm.base, gm.size, gm.end) == (0, GUEST_RAM, GUEST_RAM)
    data = bytes(range(256)) * 20  # 5120 bytes from 0x1F00: three pages, none adjacent in host memory
    gm.write(0x1F00, data)
    pos = 0
    for gpa in (0x1F00, 0x2000, 0x3000):
        k = min(len(data) - pos, 0x1000 - gpa % 0x1000)
        assert host.mem.read(hpa_of(host, gpa), k) == data[pos : pos + k], hex(gpa)
        pos += k
    assert gm.read(0x1F00, len(data)) == data
    host.mem.write_u64(hpa_of(host, 0x5008), 0xDEAD_BEEF_0BAD_F00D)
    assert gm.read_u64(0x5008) == 0xDEAD_BEEF_0BAD_F00D
    gm.write_u64(0x5010, 7)
    assert host.mem.read_u64(hpa_of(host, 0x5000) + 0x10) == 7
    assert gm.translate(0x5010, "w").pa == hpa_of(host, 0x5010)


def test_host_edits_are_seen_by_the_next_access() -> None:
    host = host_table()
    gm = host.guest_memory()
    gm.write(0x4000, b"old page")
    host.mem.write(BACKING + 6 * MIB, b"new page")
    host.remap(0x4000, BACKING + 6 * MIB)
    assert gm.read(0x4000, 8) == b"new page", "the remap, not a stale translation"
    host.protect(0x4000, 4096, "r")
    with pytest.raises(PageFault) as info:
        gm.write(0x4003, b"x")
    f = info.value
    assert (f.stage, f.gpa, f.cause, f.va) == ("host", 0x4003, "protection", 0x4003)
    assert gm.read(0x4000, 8) == b"new page", "still readable"
    host.unmap(0x4000)
    with pytest.raises(PageFault) as info:
        gm.read(0x3FFC, 8)  # the first page is fine, the second is gone
    assert (info.value.gpa, info.value.cause, info.value.on_table) == (0x4000, "not_present", False)
    assert "guest-physical 0x4000" in str(info.value)
    host.map(0x4000, BACKING + 0x4000, perms="rw", user=True)
    assert gm.read(0x4000, 8) == b"old page"


@pytest.mark.parametrize("fmt", [Ept(ad=True), "npt", "sv48x4"], ids=["ept_ad", "npt", "sv48x4"])
def test_reads_set_the_host_accessed_bit_and_writes_the_dirty_bit(fmt: Any) -> None:
    host = host_table(fmt)
    gm = host.guest_memory(0, 64 * 1024)

    def ad(gpa: int) -> tuple[bool, bool]:
        leaf = host.lookup(gpa)
        assert leaf is not None
        return leaf.accessed, leaf.dirty

    assert ad(0x3000) == (False, False)
    gm.read(0x3000, 16)
    assert ad(0x3000) == (True, False)
    gm.write_u64(0x3008, 1)
    assert ad(0x3000) == (True, True)
    # A guest table on it: its walk's A/D update of a guest entry is a host write too.
    guest = PageTable(gm, "x86_64")
    guest.map(0x40_0000, 0x8000, perms="rw")
    assert ad(0x8000) == (False, False)
    TwoStage(guest, host).walk(0x40_0000, "w")
    assert ad(0x8000) == (True, True), "the final access's host page"
    leaf = guest.lookup(0x40_0000)
    assert leaf is not None and leaf.dirty and ad(leaf.pte_pa & ~0xFFF) == (True, True)


def test_errors_name_the_gpa_and_the_bad_value() -> None:
    host = host_table()
    gm = host.guest_memory(0, MIB)
    with pytest.raises(
        PhysicalAccessError, match=r"\[0x100000, 0x100008\) is outside guest memory \[0x0, 0x100000\)"
    ):
        gm.read(MIB, 8)
    with pytest.raises(AddressError, match="64-bit access at guest-physical 0x1004 is not 8-byte aligned"):
        gm.read_u64(0x1004)
    with pytest.raises(PhysicalAccessError, match="must be ints"):
        gm.read("0", 8)  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="does not fit in 64 bits"):
        gm.write_u64(0, 1 << 64)
    with pytest.raises(ConfigError, match="access must be"):
        gm.translate(0, "q")
    with pytest.raises(
        MappingError, match=r"guest memory \[0x700000, 0x900000\): the host ept table does not map 0x800000"
    ):
        host.guest_memory(7 * MIB, 2 * MIB)
    with pytest.raises(AddressError, match="non-empty 4 KiB aligned range"):
        host.guest_memory(0x800, 4096)
    with pytest.raises(AddressError, match="guest memory size must be"):
        host.guest_memory(0, -1)
    guest = PageTable(PhysicalMemory(MIB), "x86_64")
    with pytest.raises(ConfigError, match="needs a host format"):
        guest.guest_memory()
    # A guest table in one host's memory is not walked through another host.
    other = host_table()
    on_gm = PageTable(gm, "x86_64")
    with pytest.raises(ConfigError, match="guest memory of another host table"):
        TwoStage(on_gm, other)
    with pytest.raises(InputError, match=r"made by PageTable\.guest_memory"):
        GuestMemory(object(), host)  # type: ignore[arg-type]


def test_a_guest_table_on_guest_memory_builds_walks_and_frees_through_the_host() -> None:
    host = host_table(scramble=True)
    gm = host.guest_memory()
    guest = PageTable(gm, "x86_64")
    assert guest.mem is gm and gm.contains(guest.root, 4096)
    free = gm.free_bytes
    guest.map(0x7F00_0000_0000, 0x60_0000, perms="rw", user=True)
    assert gm.free_bytes == free - 3 * 4096
    frames = guest.table_frames()
    assert all(gm.contains(t, 4096) for t in frames)
    # Every table frame's bytes are in host memory at the HPA of its GPA.
    for t in frames:
        assert host.mem.read(hpa_of(host, t), 4096) == gm.read(t, 4096)
    ts = TwoStage(guest, host)
    t = ts.walk(0x7F00_0000_0123, "w", True)
    assert (t.gpa, t.pa, t.memory_refs) == (0x60_0123, hpa_of(host, 0x60_0123), 24)
    assert guest.read_virt(0x7F00_0000_0123, 0) == b""
    guest.write_virt(0x7F00_0000_0123, b"via the guest")
    assert host.mem.read(t.pa, 13) == b"via the guest"
    # attach on the same guest memory sees the same tables.
    again = PageTable.attach(gm, guest.root, "x86_64")
    assert list(again.mappings()) == list(guest.mappings())
    guest.unmap(0x7F00_0000_0000)
    guest.destroy()
    assert gm.free_bytes == free + 4096, "the root went back too"


def test_the_memslot_view_keeps_working_for_back_guest_memory() -> None:
    guest = PageTable(PhysicalMemory(8 * MIB), "x86_64")
    guest.map(0x40_0000, 0x30_0000, perms="rw", user=True)
    ts = back_guest_memory(guest, "ept", 2 * MIB)
    assert ts.walk(0x40_0008, "r", True).pa == 0x30_0008


# -- the composition of reference walks ---------------------------------------------------------


class HostFault(Exception):
    """A reference host walk faulted on ``gpa`` (``table``: a guest entry's read)."""

    def __init__(self, gpa: int, table: bool, fault: PageFault) -> None:
        super().__init__(gpa)
        self.gpa, self.table, self.fault = gpa, table, fault


class HostTranslated:
    """Guest-physical words for a reference guest walk: each read walks the reference EPT."""

    def __init__(self, host: PageTable) -> None:
        self.host, self.host_refs = host, 0

    def host_walk(self, gpa: int, access: str, table: bool) -> Any:
        try:
            t = ept_walk(self.host.mem, self.host.root, gpa, access)
        except PageFault as f:
            self.host_refs += self.host.fmt.levels - (
                f.level if f.level is not None else self.host.fmt.levels
            )
            raise HostFault(gpa, table, f) from None
        self.host_refs += t.memory_refs
        return t

    def read_u64(self, gpa: int) -> int:
        value: int = self.host.mem.read_u64(self.host_walk(gpa, "r", True).pa)
        return value


def composed(guest: PageTable, host: PageTable, gva: int, access: str) -> tuple[str, Any]:
    """The reference two-stage walk: ``('ok', (gpa, hpa, refs))`` or ``('fault', ...)``."""
    view = HostTranslated(host)
    try:
        gt = ref_x86.X86_64(4).walk(view, guest.root, gva, access, True, False)
        ht = view.host_walk(gt.pa, access, False)
    except HostFault as h:
        return "fault", ("host", h.gpa, h.table, h.fault.cause)
    except PageFault as f:
        return "fault", ("guest", None, None, f.cause)
    return "ok", (gt.pa, ht.pa, gt.memory_refs + view.host_refs)


def product(ts: TwoStage, gva: int, access: str) -> tuple[str, Any]:
    try:
        t = ts.walk(gva, access, True)
    except PageFault as f:
        return "fault", (f.stage, f.gpa, f.on_table, f.cause)
    return "ok", (t.gpa, t.pa, t.memory_refs)


# -- the state machine ----------------------------------------------------------------------------

#: Data pages are GPAs [4 MiB, 4 MiB + 6 pages), backed by a pool of 8 host frames of their own;
#: the host rules touch only them.
DATA_GPA, DATA_PAGES = 4 * MIB, 6
POOL_HPA, POOL_PAGES = BACKING + GUEST_RAM, 8
GVA_BASE, GVA_PAGES = 0x5555_0000_0000, 5


class GuestMemoryMachine(RuleBasedStateMachine):
    """Guest and host tables, host memory and guest-physical accesses against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.host = PageTable(PhysicalMemory(HOST_SIZE, base=HOST_BASE), Ept(ad=True))
        # Guest RAM [0, 8 MiB), one buddy block: the guest's table frames come from its bottom, far
        # from the data pages at 4 MiB, which are mapped while the guest memory is made, then left to
        # the rules (the rest of guest RAM stays mapped).
        self.host.map_range(0, BACKING, GUEST_RAM, perms="rw", user=True)
        self.gm = self.host.guest_memory()
        assert (self.gm.base, self.gm.end) == (0, GUEST_RAM)
        self.host.unmap(DATA_GPA, DATA_PAGES * 4096)
        self.guest = PageTable(self.gm, "x86_64")
        self.ts = TwoStage(self.guest, self.host)
        #: data GPA page -> (host pool frame, writable)
        self.host_model: dict[int, tuple[int, bool]] = {}
        #: host pool frame -> its bytes
        self.bytes_model: dict[int, bytearray] = {i: bytearray(4096) for i in range(POOL_PAGES)}
        #: GVA page -> (data GPA page, writable)
        self.guest_model: dict[int, tuple[int, bool]] = {}

    @staticmethod
    def gpa(page: int) -> int:
        return DATA_GPA + page * 4096

    @staticmethod
    def hpa(frame: int) -> int:
        return POOL_HPA + frame * 4096

    def expect_error(self, call: Any, error: type[Exception]) -> None:
        with pytest.raises(error):
            call()

    # -- host edits ---------------------------------------------------------------------------

    @rule(page=st.integers(0, DATA_PAGES - 1), frame=st.integers(0, POOL_PAGES - 1), writable=st.booleans())
    def host_map(self, page: int, frame: int, writable: bool) -> None:
        perms = "rw" if writable else "r"
        if page in self.host_model:
            self.expect_error(
                lambda: self.host.map(self.gpa(page), self.hpa(frame), perms=perms), MappingError
            )
            return
        self.host.map(self.gpa(page), self.hpa(frame), perms=perms, user=True)
        self.host_model[page] = (frame, writable)

    @rule(page=st.integers(0, DATA_PAGES - 1))
    def host_unmap(self, page: int) -> None:
        if page not in self.host_model:
            self.expect_error(lambda: self.host.unmap(self.gpa(page)), MappingError)
            return
        self.host.unmap(self.gpa(page))
        del self.host_model[page]

    @rule(page=st.integers(0, DATA_PAGES - 1), writable=st.booleans())
    def host_protect(self, page: int, writable: bool) -> None:
        if page not in self.host_model:
            self.expect_error(lambda: self.host.protect(self.gpa(page), 4096, "r"), MappingError)
            return
        self.host.protect(self.gpa(page), 4096, "rw" if writable else "r")
        self.host_model[page] = (self.host_model[page][0], writable)

    @rule(page=st.integers(0, DATA_PAGES - 1), frame=st.integers(0, POOL_PAGES - 1))
    def host_remap(self, page: int, frame: int) -> None:
        if page not in self.host_model:
            self.expect_error(lambda: self.host.remap(self.gpa(page), self.hpa(frame)), MappingError)
            return
        self.host.remap(self.gpa(page), self.hpa(frame))
        self.host_model[page] = (frame, self.host_model[page][1])

    @rule(
        frame=st.integers(0, POOL_PAGES - 1),
        off=st.integers(0, 4095),
        data=st.binary(min_size=1, max_size=16),
    )
    def hypervisor_write(self, frame: int, off: int, data: bytes) -> None:
        """The host writes its own memory (a VMM filling a guest page)."""
        data = data[: 4096 - off]
        self.host.mem.write(self.hpa(frame) + off, data)
        self.bytes_model[frame][off : off + len(data)] = data

    # -- guest edits --------------------------------------------------------------------------

    @rule(data=st.data(), vpage=st.integers(0, GVA_PAGES - 1), writable=st.booleans())
    def guest_map(self, data: st.DataObject, vpage: int, writable: bool) -> None:
        page = data.draw(self.mostly(list(self.host_model), DATA_PAGES), label="page")
        gva = GVA_BASE + vpage * 4096
        perms = "rw" if writable else "r"
        if vpage in self.guest_model:
            self.expect_error(lambda: self.guest.map(gva, self.gpa(page), perms=perms), MappingError)
            return
        self.guest.map(gva, self.gpa(page), perms=perms, user=True)
        self.guest_model[vpage] = (page, writable)

    @rule(vpage=st.integers(0, GVA_PAGES - 1))
    def guest_unmap(self, vpage: int) -> None:
        gva = GVA_BASE + vpage * 4096
        if vpage not in self.guest_model:
            self.expect_error(lambda: self.guest.unmap(gva), MappingError)
            return
        self.guest.unmap(gva)
        del self.guest_model[vpage]

    # -- guest-physical accesses --------------------------------------------------------------

    def pieces(self, gpa: int, n: int, write: bool) -> list[tuple[int, int, int]] | int:
        """``[(frame, offset, length)]`` of ``[gpa, gpa + n)``, or the GPA the host refuses first."""
        out = []
        pos = 0
        while pos < n:
            page, off = divmod(gpa + pos - DATA_GPA, 4096)
            entry = self.host_model.get(page)
            if entry is None or (write and not entry[1]):
                return gpa + pos
            k = min(4096 - off, n - pos)
            out.append((entry[0], off, k))
            pos += k
        return out

    @rule(
        page=st.integers(0, DATA_PAGES - 2),
        off=st.sampled_from([0, 8, 4090, 4095]),
        data=st.binary(max_size=24),
    )
    def gm_write(self, page: int, off: int, data: bytes) -> None:
        gm = self.gm
        gpa = self.gpa(page) + off
        want = self.pieces(gpa, len(data), True)
        if isinstance(want, int):
            with pytest.raises(PageFault) as info:
                gm.write(gpa, data)
            assert (info.value.stage, info.value.gpa) == ("host", want)
            return
        gm.write(gpa, data)
        pos = 0
        for frame, o, k in want:
            self.bytes_model[frame][o : o + k] = data[pos : pos + k]
            pos += k

    @rule(page=st.integers(0, DATA_PAGES - 2), off=st.sampled_from([0, 8, 4090, 4095]), n=st.integers(0, 24))
    def gm_read(self, page: int, off: int, n: int) -> None:
        gm = self.gm
        gpa = self.gpa(page) + off
        want = self.pieces(gpa, n, False)
        if isinstance(want, int):
            with pytest.raises(PageFault) as info:
                gm.read(gpa, n)
            assert (info.value.stage, info.value.gpa, info.value.cause) == ("host", want, "not_present")
            return
        expect = b"".join(bytes(self.bytes_model[f][o : o + k]) for f, o, k in want)
        assert gm.read(gpa, n) == expect

    # -- walks ----------------------------------------------------------------------------------

    @staticmethod
    def mostly(chosen: list[int], n: int) -> st.SearchStrategy[int]:
        """Mostly one of ``chosen`` (the mapped ones), else any of ``range(n)``."""
        anything = st.integers(0, n - 1)
        return st.one_of(st.sampled_from(chosen), st.sampled_from(chosen), anything) if chosen else anything

    @rule(data=st.data(), off=st.sampled_from([0, 0x18, 4095]), access=st.sampled_from("rwxp"))
    def walk(self, data: st.DataObject, off: int, access: str) -> None:
        vpage = data.draw(self.mostly(list(self.guest_model), GVA_PAGES), label="vpage")
        gva = GVA_BASE + vpage * 4096 + off
        got = product(self.ts, gva, access)
        assert got == composed(self.guest, self.host, gva, access)
        # ... and the model's view of both stages.
        entry = self.guest_model.get(vpage)
        if entry is None:
            assert got == ("fault", ("guest", None, None, "not_present"))
            return
        page, gw = entry
        if (access == "w" and not gw) or access == "x":
            assert got[0] == "fault" and got[1][0] == "guest"
            return
        host = self.host_model.get(page)
        gpa = self.gpa(page) + off
        if host is None:
            assert got == ("fault", ("host", gpa, False, "not_present"))
        elif access == "w" and not host[1]:
            assert got == ("fault", ("host", gpa, False, "protection"))
        else:
            assert got[0] == "ok" and got[1][:2] == (gpa, self.hpa(host[0]) + off)

    @invariant()
    def tables_match_the_model(self) -> None:
        assert all(t < DATA_GPA for t in self.guest.table_frames()), "guest tables stay clear of the data"
        for page in range(DATA_PAGES):
            leaf = self.host.lookup(self.gpa(page))
            want = self.host_model.get(page)
            got = None if leaf is None else ((leaf.page_pa - POOL_HPA) // 4096, "w" in str(leaf.perms))
            assert got == want, page
        for vpage in range(GVA_PAGES):
            gleaf = self.guest.lookup(GVA_BASE + vpage * 4096)
            gwant = self.guest_model.get(vpage)
            ggot = None if gleaf is None else ((gleaf.page_pa - DATA_GPA) // 4096, "w" in str(gleaf.perms))
            assert ggot == gwant, vpage


def test_guest_memory_against_a_model() -> None:
    case = GuestMemoryMachine.TestCase
    case.settings = settings(
        max_examples=40,
        stateful_step_count=50,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    case("runTest").runTest()
