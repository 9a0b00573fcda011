"""Random map/unmap/protect sequences agree with a plain dictionary model, for every format."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmopt import MappingError, PageFault, PageTable, PhysicalMemory
from vmopt.paging import Perm

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SIZES = (4 * KiB, 2 * MiB, GiB)
MEM = 4 * GiB


@dataclass(frozen=True)
class Page:
    va: int
    pa: int
    size: int
    perms: Perm
    user: bool


class Model:
    """The reference: a dict of pages, and the access rules written out plainly."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.pages: dict[int, Page] = {}

    def find(self, va: int) -> Page | None:
        for p in self.pages.values():
            if p.va <= va < p.va + p.size:
                return p
        return None

    def overlaps(self, va: int, size: int) -> bool:
        return any(p.va < va + size and va < p.va + p.size for p in self.pages.values())

    def pages_in(self, va: int, size: int) -> list[Page] | None:
        """Pages exactly covering [va, va+size), or None."""
        inside = sorted(
            (p for p in self.pages.values() if p.va < va + size and va < p.va + p.size),
            key=lambda p: p.va,
        )
        cur = va
        for p in inside:
            if p.va != cur or p.va + p.size > va + size:
                return None
            cur += p.size
        return inside if cur == va + size else None

    def expect(self, va: int, access: str, user: bool) -> int | str:
        p = self.find(va)
        if p is None:
            return "not_present"
        need = {"r": Perm.R, "w": Perm.W, "x": Perm.X}[access]
        ok = bool(p.perms & need)
        if self.fmt.startswith("x86"):
            ok = ok or access == "r"
            ok = ok and (p.user or not user)
        elif self.fmt.startswith("aarch64"):
            # EL1 reads and writes every page its AP allows; each EL executes only its own pages.
            ok = ok and (p.user == user if access == "x" else p.user or not user)
        else:
            ok = ok and (p.user if user else not p.user)
        return p.pa + (va - p.va) if ok else "protection"


X86_PERMS = ["r", "rw", "rx", "rwx"]
RV_PERMS = ["r", "rw", "rx", "rwx", "x"]

# A small universe of addresses so that overlaps happen often.
slot_va = st.sampled_from([0, 1, 2]).map(lambda g: g * GiB) | st.builds(
    lambda g, m, k: g * GiB + m * 2 * MiB + k * 4 * KiB,
    st.integers(0, 2),
    st.integers(0, 3),
    st.integers(0, 3),
)

op = st.one_of(
    st.tuples(
        st.just("map"),
        slot_va,
        st.sampled_from(SIZES),
        st.integers(0, 3),
        st.integers(0, 4),
        st.booleans(),
    ),
    st.tuples(st.just("unmap"), slot_va, st.sampled_from((*SIZES, 8 * KiB))),
    st.tuples(st.just("protect"), slot_va, st.sampled_from((*SIZES, 8 * KiB)), st.integers(0, 4)),
)


@pytest.mark.parametrize("fmt", ["x86_64", "x86_64_5level", "sv39", "sv48", "sv57", "aarch64"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=25), probes=st.lists(slot_va.map(lambda v: v + 0x10), max_size=12))
def test_pagetable_agrees_with_dict_model(fmt: str, ops: list[tuple], probes: list[int]) -> None:  # type: ignore[type-arg]
    mem = PhysicalMemory(MEM)
    pt = PageTable(mem, fmt)
    model = Model(fmt)
    perms_choices = RV_PERMS if fmt.startswith("sv") else X86_PERMS
    base_va = 0x40_0000_0000 if fmt != "sv39" else 0x10_0000_0000
    for o in ops:
        kind, va = o[0], base_va + o[1]
        if kind == "map":
            _, _, size, pa_slot, perm_i, user = o
            va &= ~(size - 1)
            pa = (pa_slot * size) % MEM
            perms = perms_choices[perm_i % len(perms_choices)]
            if model.overlaps(va, size):
                with pytest.raises(MappingError):
                    pt.map(va, pa, size, perms, user=user)
            else:
                pt.map(va, pa, size, perms, user=user)
                model.pages[va] = Page(va, pa, size, Perm.parse(perms), user)
        elif kind == "unmap":
            _, _, size = o
            va &= ~(size - 1)
            covered = model.pages_in(va, size)
            if covered is None:
                with pytest.raises(MappingError):
                    pt.unmap(va, size)
            else:
                pt.unmap(va, size)
                for p in covered:
                    del model.pages[p.va]
        else:
            _, _, size, perm_i = o
            va &= ~(size - 1)
            perms = perms_choices[perm_i % len(perms_choices)]
            covered = model.pages_in(va, size)
            if covered is None:
                with pytest.raises(MappingError):
                    pt.protect(va, size, perms)
            else:
                pt.protect(va, size, perms)
                for p in covered:
                    model.pages[p.va] = Page(p.va, p.pa, p.size, Perm.parse(perms), p.user)
    # Every probe translates (or faults) as the model says, for every access and mode.
    for probe in [base_va + p for p in probes] + [p.va + p.size - 1 for p in model.pages.values()]:
        for access in "rwx":
            for user in (False, True):
                want = model.expect(probe, access, user)
                try:
                    got: int | str = pt.walk(probe, access, user).pa
                except PageFault as f:
                    got = f.cause
                assert got == want, (hex(probe), access, user)
    # The enumeration sees exactly the model's pages.
    leaves = sorted((leaf.va, leaf.page_pa, leaf.page_size) for _, leaf, *_ in pt.leaves())
    assert leaves == sorted((p.va, p.pa, p.size) for p in model.pages.values())
    # Unmapping everything returns every table page but the root.
    for p in list(model.pages.values()):
        pt.unmap(p.va, p.size)
    assert pt.table_frames() == [pt.root]
    assert list(pt.mappings()) == []
