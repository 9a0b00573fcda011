"""The guest facade against a plain model: regions, bytes, migration and rebalance.

A hypothesis state machine drives random writes, reads, translations,
migrations (page ranges to random nodes), rebalances and frees through a
``MemoryOptimizer`` on every vCPU, and keeps a model of what each guest byte
holds and which node each resident page must be on. Migration and
rebalance must never lose a byte; a translation after a migration must
land on the page's new frame; frees must return every frame.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from vmopt import MemoryOptimizer, MemPolicy, NumaConfig, OutOfFramesError

PAGE = 4096
NODES = 3
NODE_SIZE = 4 << 20


class GuestMachine(RuleBasedStateMachine):
    regions = Bundle("regions")

    def __init__(self) -> None:
        super().__init__()
        self.opt = MemoryOptimizer(NumaConfig(NODES, NODE_SIZE), cpus=NODES, pwc=True)
        self.bytes: dict[int, bytearray] = {}  # page va -> expected contents of a touched page
        self.sizes: dict[int, int] = {}  # region va -> size

    @rule(
        target=regions,
        pages=st.integers(1, 12),
        policy=st.sampled_from(["local", "interleave", "preferred", "bind"]),
    )
    def allocate(self, pages: int, policy: str) -> int:
        pol = {
            "local": MemPolicy.local(),
            "interleave": MemPolicy.interleave(list(range(NODES))),
            "preferred": MemPolicy.preferred(1),
            "bind": MemPolicy.bind([2]),
        }[policy]
        va = self.opt.allocate(pages * PAGE, policy=pol)
        self.sizes[va] = pages * PAGE
        return va

    def _page(self, region: int, index: int) -> int:
        return region + (index % (self.sizes[region] // PAGE)) * PAGE

    @rule(region=regions, index=st.integers(0, 11), off=st.integers(0, PAGE - 1),
          data=st.binary(min_size=1, max_size=64), cpu=st.integers(0, NODES - 1))  # fmt: skip
    def write(self, region: int, index: int, off: int, data: bytes, cpu: int) -> None:
        page = self._page(region, index)
        data = data[: PAGE - off]
        try:
            self.opt.write(page + off, data, cpu)
        except OutOfFramesError:
            assert page not in self.bytes  # only a first touch can run out of frames
            return
        self.bytes.setdefault(page, bytearray(PAGE))[off : off + len(data)] = data

    @rule(region=regions, index=st.integers(0, 11), cpu=st.integers(0, NODES - 1))
    def read(self, region: int, index: int, cpu: int) -> None:
        page = self._page(region, index)
        if page in self.bytes:
            assert self.opt.read(page, PAGE, cpu) == bytes(self.bytes[page])

    @rule(region=regions, first=st.integers(0, 11), count=st.integers(1, 12), node=st.integers(0, NODES - 1))
    def migrate(self, region: int, first: int, count: int, node: int) -> None:
        start = self._page(region, first)
        length = min(count * PAGE, region + self.sizes[region] - start)
        try:
            moved = self.opt.migrate(start, length, node)
        except OutOfFramesError:
            return
        assert moved % PAGE == 0
        reg = self.opt.region_of(start)
        assert reg is not None
        for page in range(start, start + length, PAGE):
            pa = reg.resident.get((page - reg.va) // PAGE)
            if pa is not None:
                assert self.opt.node_of(pa) == node
                assert self.opt.translate(page, "r", 0) == pa  # no stale translation survives

    @rule()
    def rebalance(self) -> None:
        self.opt.rebalance()

    @rule(region=consumes(regions))
    def free(self, region: int) -> None:
        self.opt.free(region)
        for page in range(region, region + self.sizes.pop(region), PAGE):
            self.bytes.pop(page, None)

    @invariant()
    def contents_and_frames_agree(self) -> None:
        used = 0
        for reg in self.opt.regions():
            for index, pa in reg.resident.items():
                page = reg.va + index * PAGE
                expect = self.bytes.get(page, bytearray(PAGE))
                assert self.opt.mem.read(pa, PAGE) == bytes(expect)
                used += PAGE
        table_pages = self.opt.mem.used_bytes(0) + sum(self.opt.mem.used_bytes(n) for n in range(1, NODES))
        assert table_pages >= used  # data frames plus page-table pages


TestGuestMachine = GuestMachine.TestCase
TestGuestMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
