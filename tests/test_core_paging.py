"""The core's page tables against the pure-Python reference (tests/reference/paging), step by step.

A hypothesis state machine drives the same random requests, valid and
invalid, through a product ``PageTable`` (Rust core) and a reference one,
each on its own memory, for every format (and some option sets): map,
map_range, unmap, protect, remap, PTE corruption behind the table's back,
walks (every access, both modes, A/D updates on and off), lookups and
guest-virtual reads and writes. After every step both sides must agree on
the result or the exception (class and message), and on the whole state:
the table frames, their bytes, the mappings and the free memory. A refused
request must leave the product's state exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from reference.memory.physical import PhysicalMemory as RefMemory
from reference.paging import aarch64 as ref_aarch64
from reference.paging import gstage as ref_gstage
from reference.paging import riscv as ref_riscv
from reference.paging import x86 as ref_x86
from reference.paging.pagetable import PageTable as RefPageTable
from vmopt import PhysicalMemory
from vmopt.errors import ConfigError, PageFault
from vmopt.paging import X86_64, AArch64, GStage, PageTable, PagingFormat, Perm, RiscV

pytestmark = pytest.mark.slow

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MEM = 2 * GiB
#: Data pages live in the upper GiB; tables come from the bottom of the allocator.
DATA = GiB

#: name -> (product format factory, reference format factory)
FORMATS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "x86_64": (lambda: X86_64(4), lambda: ref_x86.X86_64(4)),
    "x86_64_5level": (lambda: X86_64(5), lambda: ref_x86.X86_64(5)),
    "x86_64_nonxe_nowp": (
        lambda: X86_64(4, maxphyaddr=40, nxe=False, wp=False),
        lambda: ref_x86.X86_64(4, maxphyaddr=40, nxe=False, wp=False),
    ),
    "x86_64_smep_smap": (
        lambda: X86_64(5, smep=True, smap=True),
        lambda: ref_x86.X86_64(5, smep=True, smap=True),
    ),
    "sv39": (lambda: RiscV(3), lambda: ref_riscv.RiscV(3)),
    "sv48_sum_mxr": (lambda: RiscV(4, sum=True, mxr=True), lambda: ref_riscv.RiscV(4, sum=True, mxr=True)),
    "sv48_svade": (lambda: RiscV(4, svade=True), lambda: ref_riscv.RiscV(4, svade=True)),
    "sv57": (lambda: RiscV(5), lambda: ref_riscv.RiscV(5)),
    "sv39x4": (lambda: GStage(3), lambda: ref_gstage.GStage(3)),
    "sv48x4_svade": (lambda: GStage(4, svade=True), lambda: ref_gstage.GStage(4, svade=True)),
    "aarch64": (lambda: AArch64(), lambda: ref_aarch64.AArch64()),
    "aarch64_va39_upper_ha_hd": (
        lambda: AArch64(4096, va_bits=39, upper=True, ha=True, hd=True),
        lambda: ref_aarch64.AArch64(4096, va_bits=39, upper=True, ha=True, hd=True),
    ),
    "aarch64_tbi_pa40": (
        lambda: AArch64(4096, tbi=True, pa_bits=40),
        lambda: ref_aarch64.AArch64(4096, tbi=True, pa_bits=40),
    ),
}

SIZES = (4 * KiB, 2 * MiB, GiB)
#: Mostly page sizes; some sizes no edit accepts.
EDIT_SIZES = st.sampled_from(SIZES * 3 + (8 * KiB, 4 * MiB, 0, 4097))
MAP_SIZES = st.sampled_from(SIZES * 4 + (8 * KiB,))
#: Mostly perms every format takes; then ones some refuse, and malformed ones.
PERMS = st.sampled_from(
    ("rw", "rwx", "rx", "r") * 3 + ("x", "w", "wx", "", "rr", "q", Perm.R | Perm.W, Perm.X)
)
ACCESSES = ("r", "w", "x", "p")

#: (GiB slot, 2 MiB slot, 4 KiB slot): few, so that pages share tables and overlap.
slots = st.tuples(st.integers(0, 2), st.integers(0, 3), st.integers(0, 3))


def slot_va(base: int, s: tuple[int, int, int], size: int) -> int:
    """The address of slot ``s`` above ``base``, aligned down to ``size``."""
    off = s[0] * GiB + s[1] * 2 * MiB + s[2] * 4 * KiB
    return base + off - off % size if size in SIZES else base + off


#: A frame index of the page size in the upper GiB; the last ones fall outside memory.
pa_index = st.sampled_from([0, 1, 2, 3, 4, 5, 0, 1, 511, -1])
misalign = st.sampled_from([0] * 12 + [0x800, 4 * KiB])


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """``('ok', value)`` or ``('error', (class name, message, fault fields))``."""
    try:
        value = call()
    except PageFault as f:
        return "error", ("PageFault", str(f), (f.va, f.access, f.cause, f.level, f.user))
    except Exception as e:
        return "error", (type(e).__name__, str(e), None)
    if hasattr(value, "__next__"):
        value = list(value)
    return "ok", value


class PagingMachine(RuleBasedStateMachine):
    """Product and reference page tables fed the same requests."""

    fmt_name = "x86_64"

    def __init__(self) -> None:
        super().__init__()
        make_product, make_reference = FORMATS[self.fmt_name]
        self.mem = PhysicalMemory(MEM)
        self.ref_mem = RefMemory(MEM)
        self.pt = PageTable(self.mem, make_product())
        self.ref = RefPageTable(self.ref_mem, make_reference())
        assert self.pt.root == self.ref.root
        fmt = self.pt.fmt
        # A low base, and one in the high (kernel) half.
        self.bases = [fmt.canonicalize(1 << (fmt.va_bits - 3)), fmt.canonicalize(1 << (fmt.va_bits - 1))]
        self.shootdowns: list[tuple[int, int]] = []
        self.ref_shootdowns: list[tuple[int, int]] = []
        self.pt.subscribe(self._on_shootdown)
        self.ref.subscribe(self._on_ref_shootdown)

    def _on_shootdown(self, va: int, size: int) -> None:
        self.shootdowns.append((va, size))

    def _on_ref_shootdown(self, va: int, size: int) -> None:
        self.ref_shootdowns.append((va, size))

    # -- comparison -----------------------------------------------------------------

    def frame_bytes(self, table: int) -> int:
        """Bytes of the table at ``table``: the whole root (16 KiB for the G-stage), else a frame."""
        return self.pt.fmt.root_bytes if table == self.pt.root else 4096

    def state(self) -> tuple[Any, ...]:
        frames = self.pt.table_frames()
        return (
            frames,
            [self.mem.read(f, self.frame_bytes(f)) for f in frames],
            list(self.pt.mappings()),
            self.mem.free_bytes,
        )

    def same(
        self,
        product: Callable[[PageTable], Any],
        reference: Callable[[RefPageTable], Any],
        *,
        edit: bool = False,
    ) -> Any:
        """Both outcomes; for an ``edit`` that is refused, also the product's state is unchanged."""
        before = self.state() if edit else None
        got = outcome(lambda: product(self.pt))
        want = outcome(lambda: reference(self.ref))
        assert got == want
        if edit and got[0] == "error":
            assert self.state() == before, "a refused edit changed the product's tables"
        return got

    @invariant()
    def tables_agree(self) -> None:
        frames = self.pt.table_frames()
        assert frames == self.ref.table_frames()
        for f in frames:
            assert self.mem.read(f, self.frame_bytes(f)) == self.ref_mem.read(f, self.frame_bytes(f)), hex(f)
        assert list(self.pt.mappings()) == list(self.ref.mappings())
        assert self.mem.free_bytes == self.ref_mem.free_bytes
        assert self.shootdowns == self.ref_shootdowns

    # -- edits ----------------------------------------------------------------------

    @staticmethod
    def pa_of(index: int, size: int, skew: int) -> int:
        """Frame ``index`` of ``size`` in the upper GiB plus ``skew``; index -1 is far outside memory."""
        if index < 0:
            return 1 << 56
        return DATA + index * (size if size in SIZES else 4 * KiB) + skew

    @rule(
        base=st.integers(0, 1),
        where=slots,
        index=pa_index,
        skew=misalign,
        size=MAP_SIZES,
        perms=PERMS,
        user=st.booleans(),
        global_=st.booleans(),
    )
    def map(
        self, base: int, where: tuple[int, int, int], index: int, skew: int, size: int, perms: Any,
        user: bool, global_: bool,
    ) -> None:  # fmt: skip
        va = slot_va(self.bases[base], where, size)
        pa = self.pa_of(index, size, skew)
        self.same(
            lambda t: t.map(va, pa, size, perms, user, global_),
            lambda t: t.map(va, pa, size, perms, user, global_),
            edit=True,
        )

    @rule(
        base=st.integers(0, 1),
        where=slots,
        index=pa_index,
        pages=st.integers(0, 5),
        page_size=st.sampled_from((4 * KiB, 4 * KiB, 2 * MiB)),
        perms=PERMS,
        user=st.booleans(),
    )
    def map_range(
        self, base: int, where: tuple[int, int, int], index: int, pages: int, page_size: int, perms: Any,
        user: bool,
    ) -> None:  # fmt: skip
        va = slot_va(self.bases[base], where, page_size)
        pa = self.pa_of(index, page_size, 0)
        length = pages * page_size
        seen = len(self.ref_shootdowns)
        result = self.same(
            lambda t: t.map_range(va, pa, length, page_size=page_size, perms=perms, user=user),
            lambda t: t.map_range(va, pa, length, page_size=page_size, perms=perms, user=user),
            edit=True,
        )
        if result[0] == "error":
            # The reference maps page by page and undoes (a shootdown) on a refusal;
            # the core checks every page first and has nothing to undo.
            del self.ref_shootdowns[seen:]

    @rule(data=st.data(), skew=misalign)
    def unmap(self, data: st.DataObject, skew: int) -> None:
        va, size = data.draw(self.ranges())
        va += skew
        self.same(lambda t: t.unmap(va, size), lambda t: t.unmap(va, size), edit=True)

    @rule(data=st.data(), perms=PERMS)
    def protect(self, data: st.DataObject, perms: Any) -> None:
        va, size = data.draw(self.ranges())
        self.same(lambda t: t.protect(va, size, perms), lambda t: t.protect(va, size, perms), edit=True)

    @rule(data=st.data(), index=pa_index, skew=misalign, perms=st.none() | PERMS)
    def remap(self, data: st.DataObject, index: int, skew: int, perms: Any) -> None:
        va, size = data.draw(self.ranges())
        pa = self.pa_of(index, size, skew)
        self.same(lambda t: t.remap(va, pa, size, perms), lambda t: t.remap(va, pa, size, perms), edit=True)

    def ranges(self) -> st.SearchStrategy[tuple[int, int]]:
        """Mostly a mapped page (or two, as one range), else a slot; with a size edits may refuse."""
        pages = [(leaf.va, leaf.page_size) for _va, leaf, *_ in self.pt.leaves()]
        slot_ranges = st.builds(
            lambda base, s, size: (slot_va(base, s, size), size),
            st.sampled_from(self.bases),
            slots,
            EDIT_SIZES,
        )
        if not pages:
            return slot_ranges
        page = st.sampled_from(pages)
        double = page.map(lambda p: (p[0], 2 * p[1]))
        odd = st.tuples(page.map(lambda p: p[0]), EDIT_SIZES)
        return st.one_of(page, page, page, double, odd, slot_ranges)

    def addresses(self, size: int = 4 * KiB) -> st.SearchStrategy[int]:
        """Mostly the first byte of a mapped page, else a slot."""
        mapped = [leaf.va for _va, leaf, *_ in self.pt.leaves()]
        slot_vas = st.builds(slot_va, st.sampled_from(self.bases), slots, st.just(size))
        return st.one_of(st.sampled_from(mapped), st.sampled_from(mapped), slot_vas) if mapped else slot_vas

    @rule(data=st.data())
    def corrupt(self, data: st.DataObject) -> None:
        """Flip a bit of a valid PTE behind both tables' backs, then announce it."""
        entries = [(leaf.pte_pa, leaf.va, leaf.page_size) for _va, leaf, *_ in self.pt.leaves()] + [
            (self.pt.root + 8 * i, 0, 4096) for i in range(0, 512, 37)
        ]
        pte_pa, va, size = data.draw(st.sampled_from(entries))
        if self.pt.fmt.name.startswith("x86"):
            bits = [1, 2, 5, 6, 7, 8, 12, 13, 20, 21, 29, 40, 45, 47, 51, 52, 63]
        elif self.pt.fmt.name.startswith("aarch64"):
            # T, AP, AF, nG, address bits (one past a 40-bit IPS), DBM, XN, table limits. Not the
            # valid bit (nor do the other lists clear P or V): an invalid entry left holding bits is a
            # free slot that a map_range refused midway fills and zeroes in the reference (it maps,
            # then undoes) but never touches in the core (it checks first), so the bytes differ.
            bits = [1, 6, 7, 10, 11, 13, 21, 40, 47, 51, 53, 54, 59, 60, 61, 62]
        else:
            bits = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 19, 28, 54, 60, 63]
        bit = data.draw(st.sampled_from(bits))
        pte = self.mem.read_u64(pte_pa)
        if not self.pt.fmt.is_valid(pte):
            return
        assert pte == self.ref_mem.read_u64(pte_pa)
        self.mem.write_u64(pte_pa, pte ^ (1 << bit))
        self.ref_mem.write_u64(pte_pa, pte ^ (1 << bit))
        self.same(lambda t: t.invalidate(va, size), lambda t: t.invalidate(va, size))

    # -- queries --------------------------------------------------------------------

    @rule(
        data=st.data(),
        off=st.sampled_from([0x18, 0x18, 0x18, 4096 - 8, 2 * MiB - 8, 1 << 62]),
        access=st.sampled_from(ACCESSES),
        user=st.booleans(),
        update_ad=st.sampled_from((None, True, False)),
    )
    def walk(self, data: st.DataObject, off: int, access: str, user: bool, update_ad: bool | None) -> None:
        va = (data.draw(self.addresses()) + off) % (1 << 64)
        for acc in (access, "r"):
            self.same(
                lambda t, acc=acc: t.walk(va, acc, user, update_ad=update_ad),
                lambda t, acc=acc: t.walk(va, acc, user, update_ad=update_ad),
            )

    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        va = data.draw(self.addresses()) + 0x20
        self.same(lambda t: t.lookup(va), lambda t: t.lookup(va))
        self.same(lambda t: t.walk_path(va), lambda t: t.walk_path(va))
        self.same(lambda t: t.batch_lookup([va, va + GiB]), lambda t: t.batch_lookup([va, va + GiB]))

    @rule(data=st.data(), n=st.sampled_from([0, 8, 5000]), user=st.booleans())
    def virtual_access(self, data: st.DataObject, n: int, user: bool) -> None:
        va = data.draw(self.addresses()) + 4090
        raw = bytes(range(256)) * (n // 256) + bytes(n % 256)
        self.same(lambda t: t.write_virt(va, raw, user=user), lambda t: t.write_virt(va, raw, user=user))
        self.same(lambda t: t.read_virt(va, n, user=user), lambda t: t.read_virt(va, n, user=user))

    @rule()
    def leaves(self) -> None:
        self.same(lambda t: t.leaves(), lambda t: t.leaves())


RUNS = settings(
    max_examples=15,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("fmt_name", list(FORMATS))
def test_core_page_tables_match_the_reference(fmt_name: str) -> None:
    machine = type(f"PagingMachine_{fmt_name}", (PagingMachine,), {"fmt_name": fmt_name})
    case = machine.TestCase
    case.settings = RUNS
    case("runTest").runTest()


# -- what the reference does not have -------------------------------------------------


def test_install_fills_maps_and_refuses_overlap() -> None:
    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv57")
    placed = pt.install(0x1000, 4096, [0], b"hello", Perm.R | Perm.W, True)
    assert placed is not None
    pa, node = placed
    assert node == 0 and mem.read(pa, 5) == b"hello"
    assert pt.read_virt(0x1000, 5, user=True) == b"hello"
    free = mem.free_bytes
    with pytest.raises(Exception, match="already mapped"):
        pt.install(0x1000, 4096, [0], None, Perm.R, True)
    assert mem.free_bytes == free
    assert PageTable(PhysicalMemory(2 * MiB), "x86_64").install(0, 2 * MiB, [0], None, Perm.R, False) is None


def test_page_table_refuses_a_python_format() -> None:
    class Fake(PagingFormat):
        name = "fake"

    Fake.__abstractmethods__ = frozenset()
    with pytest.raises(
        ConfigError, match=r"needs a core-backed format \(X86_64, RiscV or AArch64\), got Fake"
    ):
        PageTable(PhysicalMemory(16 * MiB), Fake())


def test_inspect_reads_an_sv57_satp(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from vmopt.cli.main import main

    mem = PhysicalMemory(64 * MiB)
    pt = PageTable(mem, "sv57", update_ad=False)
    pt.map(0xFF60_0000_0000_0000, 0x20_0000, 2 * MiB, "rw", global_=True)
    image = tmp_path / "sv57.img"
    mem.save(image)
    satp = (10 << 60) | (0x42 << 44) | (pt.root >> 12)
    assert main(["inspect", str(image), "--root", hex(satp), "--format", "sv57"]) == 0
    out = capsys.readouterr().out
    assert "sv57 (5 levels, 57-bit VA)" in out and "MODE 10 (sv57), ASID 0x42" in out
    assert "ff60000000000000-ff60000000200000 0000000000200000 rw-sg -> 000000200000 (2M)" in out
    assert main(["inspect", str(image), "--root", hex(satp)]) == 2
    assert "--format sv57 for an Sv57 satp" in capsys.readouterr().err
