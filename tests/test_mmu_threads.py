"""vCPU threads translate (scalar and batch) while another thread edits the page table 10,000 times.

Ordering comes from one shared counter, never from wall-clock time: a vCPU
takes a tick before and after each translation (a whole batch is one
window), the editor before and after each edit, and the editor makes its
next edit only once every vCPU has finished a translation since the last
one (a condition variable, no timeouts). A translation may take effect
anywhere inside its window and an edit anywhere inside its own, so a
result is correct if some state of the page current at a moment of the
window gives exactly that result. In particular a translation that starts
after an edit returned never sees the state before it (a stale TLB entry,
or a mapping a racing walk wrote back).

Afterwards the table's ``mappings()`` must equal the editor's model
exactly: a walk that sets A/D bits with a plain read-then-write can write
an unmapped PTE back, or undo a protect; the core's compare-exchange walks
cannot.

``run`` takes the classes to test, so the same harness can be pointed at the
pure-Python reference, whose walks set A/D with a read-then-write: there it
fails (an unmapped page comes back mapped, so the editor's next ``map`` of it
is refused).
"""

from __future__ import annotations

import bisect
import logging
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from thread_model import Clock, Record, State, fast_thread_switching
from vmopt import MappingError, Mmu, PageFault, PageTable, Perm, PhysicalMemory, TlbConfig

pytestmark = pytest.mark.slow

K4 = 4096
BASE = 0x7000_0000
PAGES = 4  # few pages, so edits and translations often meet; page 0 stays mapped (its table stays)


class History:
    """The states of one page, in order, with their ticks indexed for bisection."""

    def __init__(self, states: list[State]) -> None:
        self.states = states
        self.starts = [s.start for s in states]
        self.dones = [s.done for s in states]
        #: State k can be seen from when its edit began until the next edit returned.
        self.until = [*self.dones[1:], 1 << 62]

    def allowed(self, rec: Record) -> list[object]:
        """Results of every state current at some moment of ``[rec.start, rec.end]``."""
        lo = bisect.bisect_left(self.until, rec.start)
        hi = bisect.bisect_right(self.starts, rec.end)
        return [s.result(rec.offset, rec.access) for s in self.states[lo:hi]]

    def last_done_before(self, tick: int) -> int:
        """Index of the last state whose edit returned before ``tick``."""
        return bisect.bisect_left(self.dones, tick) - 1


@contextmanager
def quiet_batch_log() -> Iterator[None]:
    """Batches log each failed index; here thousands fail on purpose."""
    logger = logging.getLogger("vmopt.batching")
    old = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old


@dataclass
class Progress:
    """The lockstep of the editor and the vCPUs, and the first error of any thread.

    ``epoch`` counts edits that returned; ``in_epoch[i]`` the translations vCPU
    ``i`` finished since. The editor edits once every vCPU finished one; a
    vCPU that finished two waits for the next edit, so each edit overlaps
    the vCPUs' next translations without the vCPUs racing far ahead.
    """

    vcpus: int
    ahead: int = 2
    cond: threading.Condition = field(default_factory=threading.Condition)
    epoch: int = 0
    in_epoch: list[int] = field(default_factory=list)
    stopped: bool = False
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.in_epoch = [0] * self.vcpus

    def translated(self, index: int) -> bool:
        """Called by vCPU ``index`` after each translation; False once the run is over."""
        with self.cond:
            self.in_epoch[index] += 1
            self.cond.notify_all()
            if self.in_epoch[index] >= self.ahead:
                epoch = self.epoch
                self.cond.wait_for(lambda: self.epoch != epoch or self.stopped)
            return not self.stopped

    def wait_for_vcpus(self) -> bool:
        """The editor waits until every vCPU finished a translation; False if one failed."""
        with self.cond:
            self.cond.wait_for(lambda: self.error is not None or min(self.in_epoch) >= 1)
            return self.error is None

    def edited(self) -> None:
        with self.cond:
            self.epoch += 1
            self.in_epoch = [0] * self.vcpus
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()


def vcpu_loop(mmu: Any, index: int, clock: Clock, progress: Progress, out: list[Record]) -> None:
    rng = random.Random(index)
    try:
        while True:
            access = "w" if rng.random() < 0.3 else "r"
            picks = [
                (rng.randrange(1, PAGES), rng.choice((0, 8, 4095))) for _ in range(rng.choice((1, 1, 8)))
            ]
            vas = [BASE + page * K4 + off for page, off in picks]
            if len(vas) == 1:
                start = clock.tick()
                try:
                    results: list[object] = [mmu.translate(vas[0], access)]
                except PageFault as fault:
                    results = [fault.cause]
            else:
                start = clock.tick()
                res = mmu.translate_batch(np.array(vas, dtype=np.uint64), access, errors="collect")
                results = [
                    int(res.values[i]) if res.ok[i] else res.errors[i].cause  # type: ignore[attr-defined]
                    for i in range(len(vas))
                ]
            end = clock.tick()
            out.extend(
                Record(start, end, page, off, access, r)
                for (page, off), r in zip(picks, results, strict=True)
            )
            if not progress.translated(index):
                return
    except BaseException as exc:  # reported by the editor and the test
        progress.fail(exc)


def expected_mappings(model: dict[int, tuple[int | None, bool]]) -> list[tuple[int, int, int, Perm]]:
    """The editor's model as ``mappings()`` coalesces it: contiguous in VA and PA, equal rights."""
    runs: list[list[Any]] = []
    for page in sorted(model):
        frame, writable = model[page]
        if frame is None:
            continue
        va, perms = BASE + page * K4, Perm.R | Perm.W if writable else Perm.R
        last = runs[-1] if runs else None
        if last is not None and last[0] + last[2] == va and last[1] + last[2] == frame and last[3] == perms:
            last[2] += K4
        else:
            runs.append([va, frame, K4, perms])
    return [(va, pa, size, perms) for va, pa, size, perms in runs]


def run(
    memory_cls: Any, table_cls: Any, mmu_cls: Any, *, edits: int = 10_000, vcpus: int = 3, ahead: int = 2
) -> dict[str, int]:
    """The whole experiment; raises AssertionError on the first wrong result."""
    mem = memory_cls(256 << 20)
    pt = table_cls(mem, "x86_64")
    clock = Clock()
    history: dict[int, list[State]] = {}
    model: dict[int, tuple[int | None, bool]] = {}
    for page in range(PAGES):
        frame = mem.alloc()
        pt.map(BASE + page * K4, frame, K4, "rw")
        model[page] = (frame, True)
        history[page] = [State(0, 0, frame, True)]
    mmus = [
        mmu_cls(pt, [TlbConfig(8, 4, name="l1"), TlbConfig(32, 4, name="l2")], asid=n) for n in range(vcpus)
    ]
    progress = Progress(vcpus, ahead)
    outs: list[list[Record]] = [[] for _ in mmus]
    threads = [
        threading.Thread(target=vcpu_loop, args=(m, n, clock, progress, outs[n]), daemon=True)
        for n, m in enumerate(mmus)
    ]
    rng = random.Random(2025)
    counts = {"map": 0, "unmap": 0, "protect": 0}
    with fast_thread_switching(1e-6), quiet_batch_log():
        for t in threads:
            t.start()
        try:
            for _ in range(edits):
                if not progress.wait_for_vcpus():
                    break
                page = rng.randrange(1, PAGES)
                va = BASE + page * K4
                frame, writable = model[page]
                if frame is None:
                    kind, new = "map", (mem.alloc(), True)
                    start = clock.tick()
                    try:
                        pt.map(va, new[0], K4, "rw")
                    except MappingError as exc:
                        raise AssertionError(f"{va:#x} is mapped again after its unmap returned") from exc
                elif rng.random() < 0.5:
                    kind, new = "unmap", (None, False)
                    start = clock.tick()
                    pt.unmap(va, K4)
                else:
                    kind, new = "protect", (frame, not writable)
                    start = clock.tick()
                    pt.protect(va, K4, "rw" if new[1] else "r")
                done = clock.tick()
                progress.edited()
                history[page].append(State(start, done, *new))
                model[page] = new
                counts[kind] += 1
                if kind == "unmap":
                    assert frame is not None
                    mem.free(frame)  # every vCPU was shot down before unmap returned
        finally:
            progress.stop()
            for t in threads:
                t.join()
    if progress.error is not None:
        raise progress.error
    got = [(m.va, m.pa, m.size, Perm(m.perms)) for m in pt.mappings()]
    assert got == expected_mappings(model), "the page table does not hold the editor's mappings"
    after_edit = racing = 0
    histories = {page: History(states) for page, states in history.items()}
    for rec in (r for o in outs for r in o):
        h = histories[rec.page]
        states = h.states
        ok = h.allowed(rec)
        assert rec.result in ok, (rec, states[-3:])
        racing += len(ok) > 1  # an edit of its page ran during the translation
        k = h.last_done_before(rec.start)
        nxt = states[k + 1].start if k + 1 < len(states) else float("inf")
        if k > 0 and rec.end < nxt:  # started after edit k returned, ended before the next began
            after_edit += 1
            assert rec.result == states[k].result(rec.offset, rec.access), rec
    return {**counts, "after_edit": after_edit, "racing": racing, "translations": sum(len(o) for o in outs)}


def test_vcpus_and_an_editor_agree_with_the_model() -> None:
    counts = run(PhysicalMemory, PageTable, Mmu)
    assert counts["map"] + counts["unmap"] + counts["protect"] == 10_000
    assert min(counts["map"], counts["unmap"], counts["protect"]) > 1000
    # The heart of the test: translations squarely after an edit, before the next one.
    assert counts["after_edit"] > 1000 and counts["translations"] > 30_000
    assert counts["racing"] > 100  # and translations that overlapped an edit of their page
