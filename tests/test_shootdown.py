"""TLB shootdown: once unmap/protect/remap returns, no vCPU uses the old translation.

Several MMUs (vCPUs, each with its own ASID) share one page table; each is
hammered by its own thread, translating a set of pages in a loop, while the
OS thread unmaps, maps, remaps and write-protects those pages.

Events are ordered by one shared, monotonically increasing counter, never by
wall-clock time: a vCPU takes a tick before and after each translation, the
OS thread before and after each page-table change. A translation may take
effect anywhere between its two ticks, and a change anywhere between its
two, so a translation is correct if some state of the page that was current
at a moment inside its window gives exactly its result (the physical address,
or the fault). In particular, a translation that *starts* after ``unmap()``
returned, and before the page is mapped again, must fault, and one that starts
after ``protect(..., "r")`` returned must not allow a write.

With ``Mmu(..., shootdown=False)`` nobody invalidates for the MMU: it keeps
using the stale translation until ``invlpg()``, exactly as hardware does.
"""

from __future__ import annotations

import random
import threading
from contextlib import suppress

import pytest

from thread_model import Clock, Record, State, fast_thread_switching
from vmopt import Mmu, PageFault, PageTable, PhysicalMemory, TlbConfig

pytestmark = pytest.mark.slow

K4 = 4096
BASE = 0x7000_0000
PAGES = 12  # page 0 is never touched, so the page-table page is never freed


def tlb() -> list[TlbConfig]:
    return [
        TlbConfig(8, 4, page_sizes=(K4,), name="l1"),
        TlbConfig(32, 4, page_sizes=(K4, 2 << 20), name="l2"),
    ]


def vcpu_loop(
    mmu: Mmu, clock: Clock, stop: threading.Event, seed: int, out: list[Record], progress: threading.Condition
) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        page = rng.randrange(1, PAGES)
        offset = rng.choice((0, 8, 4095))
        access = "w" if rng.random() < 0.3 else "r"
        start = clock.tick()
        try:
            result: object = mmu.translate(BASE + page * K4 + offset, access)
        except PageFault as fault:
            result = fault.cause
        out.append(Record(start, clock.tick(), page, offset, access, result))
        with progress:
            progress.notify_all()


def allowed(states: list[State], rec: Record) -> list[object]:
    """Results of every state current at some moment in [rec.start, rec.end]."""
    ok = []
    for k, s in enumerate(states):
        # State k can be observed from when its change began until the next change returned.
        until = states[k + 1].done if k + 1 < len(states) else float("inf")
        if s.start <= rec.end and rec.start <= until:
            ok.append(s.result(rec.offset, rec.access))
    return ok


def test_no_vcpu_uses_a_translation_after_the_change_returns() -> None:
    mem = PhysicalMemory(256 << 20)
    pt = PageTable(mem, "x86_64")
    clock = Clock()
    history: dict[int, list[State]] = {}
    frames: dict[int, int | None] = {}
    for page in range(PAGES):
        frames[page] = mem.alloc()
        pt.map(BASE + page * K4, frames[page], perms="rw", global_=page % 4 == 1)
        history[page] = [State(0, 0, frames[page], True)]

    vcpus = [Mmu(pt, tlb(), asid=n) for n in range(3)]
    outs: list[list[Record]] = [[] for _ in vcpus]
    stop = threading.Event()
    progress = threading.Condition()
    threads = [
        threading.Thread(target=vcpu_loop, args=(m, clock, stop, n, outs[n], progress), daemon=True)
        for n, m in enumerate(vcpus)
    ]
    rng = random.Random(2024)
    changes = {"unmap": 0, "map": 0, "remap": 0, "protect": 0}

    def let_vcpus_run(n: int) -> None:
        """Wait until every vCPU has finished ``n`` more translations."""
        marks = [len(o) for o in outs]

        def ready() -> bool:
            if not all(t.is_alive() for t in threads):
                return True  # a vCPU died: its error is reported below
            return all(len(o) >= m + n for o, m in zip(outs, marks, strict=True))

        with progress:
            # The timeout only turns a deadlock into a failure instead of a hang.
            assert progress.wait_for(ready, timeout=300), "a vCPU thread stopped making progress"
        assert all(t.is_alive() for t in threads), "a vCPU thread died"

    with fast_thread_switching():
        for t in threads:
            t.start()
        editor_errors: list[BaseException] = []

        def edit() -> None:
            try:
                for _ in range(150):
                    let_vcpus_run(4)
                    page = rng.randrange(1, PAGES)
                    va = BASE + page * K4
                    cur = history[page][-1]
                    old = frames[page]
                    if cur.frame is None:
                        kind = "map"
                        frames[page] = mem.alloc()
                        start = clock.tick()
                        pt.map(va, frames[page], perms="rw", global_=page % 4 == 1)
                        state = (frames[page], True)
                    else:
                        kind = rng.choice(("unmap", "unmap", "remap", "protect"))
                        start = clock.tick()
                        if kind == "unmap":
                            pt.unmap(va)
                            state = (None, False)
                            frames[page] = None
                        elif kind == "remap":
                            frames[page] = mem.alloc()
                            pt.remap(va, frames[page])
                            state = (frames[page], cur.writable)
                        else:
                            pt.protect(va, K4, "rw" if not cur.writable else "r")
                            state = (cur.frame, not cur.writable)
                    done = clock.tick()
                    if kind == "remap":  # an unmap then a map: briefly not present, as in an OS
                        history[page].append(State(start, done, None, False))
                    history[page].append(State(start, done, *state))
                    changes[kind] += 1
                    if kind in ("unmap", "remap") and old is not None:
                        mem.free(old)  # safe: every vCPU was shot down before the change returned
                let_vcpus_run(4)
            except BaseException as e:  # reported below
                editor_errors.append(e)

        editor = threading.Thread(target=edit, daemon=True)
        editor.start()
        editor.join(120)  # a deadlock between the page table and an MMU fails, never hangs
        stop.set()
        for t in threads:
            t.join(10)
    assert not editor.is_alive(), "the page-table editor is stuck (deadlock?)"
    if editor_errors:
        raise editor_errors[0]
    assert not any(t.is_alive() for t in threads)

    records = [r for o in outs for r in o]
    after_unmap = after_protect = 0
    for r in records:
        ok = allowed(history[r.page], r)
        assert r.result in ok, (r, history[r.page])
        # Count the translations that started after an unmap/protect had returned
        # and finished before anything else changed that page: the heart of the test.
        states = history[r.page]
        k = max(i for i, s in enumerate(states) if s.done < r.start)
        nxt = states[k + 1].start if k + 1 < len(states) else float("inf")
        if r.end < nxt and k > 0:
            if states[k].frame is None:
                after_unmap += 1
                assert r.result == "not_present", r
            elif not states[k].writable and r.access == "w":
                after_protect += 1
                assert r.result == "protection", r
    assert after_unmap > 100 and after_protect > 10
    assert all(c > 0 for c in changes.values()), changes
    # map() needs no shootdown; unmap, remap (an unmap then a map) and protect do, one each.
    shot = changes["unmap"] + changes["remap"] + changes["protect"]
    for m in vcpus:
        assert m.stats.shootdowns == shot
        assert m.stats.translations > 150


def test_unmap_returns_only_after_every_vcpu_is_shot_down() -> None:
    """A vCPU in the middle of a translation delays the shootdown, never misses it."""
    mem = PhysicalMemory(64 << 20)
    pt = PageTable(mem)
    pt.map(BASE, mem.alloc())
    pt.map(BASE + K4, mem.alloc())
    vcpus = [Mmu(pt, tlb(), asid=n) for n in range(4)]
    for m in vcpus:
        m.translate(BASE + K4)
        assert m.cached(BASE + K4)
    pt.unmap(BASE + K4)
    for m in vcpus:
        assert not m.cached(BASE + K4)
        with pytest.raises(PageFault):
            m.translate(BASE + K4)
    assert [m.stats.shootdowns for m in vcpus] == [1, 1, 1, 1]


def test_switch_while_another_thread_unmaps_does_not_deadlock() -> None:
    mem = PhysicalMemory(256 << 20)
    a, b = PageTable(mem), PageTable(mem)
    a.map(BASE, mem.alloc())
    b.map(BASE, mem.alloc())
    mmu = Mmu(a, tlb(), asid=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def switcher() -> None:
        i = 0
        while not stop.is_set():
            mmu.switch(a if i % 2 else b, asid=1 if i % 2 else 2)
            with suppress(PageFault):
                mmu.translate(BASE)
            i += 1

    def editor() -> None:
        try:
            for _ in range(1500):
                for pt in (a, b):
                    frame = mem.alloc()
                    pt.map(BASE + K4, frame)
                    pt.unmap(BASE + K4)
                    mem.free(frame)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    with fast_thread_switching():
        t1 = threading.Thread(target=switcher, daemon=True)
        t2 = threading.Thread(target=editor, daemon=True)
        t1.start()
        t2.start()
        t2.join(30)
        stop.set()
        t1.join(5)
    assert not t2.is_alive() and not t1.is_alive(), "switch() and unmap() deadlocked"
    assert not errors


def test_inactive_address_space_is_shot_down_too() -> None:
    """Entries kept for a switched-out ASID must not survive an unmap in its tables."""
    mem = PhysicalMemory(64 << 20)
    a, b = PageTable(mem), PageTable(mem)
    fa = mem.alloc()
    a.map(BASE, fa, perms="rw")
    b.map(BASE, mem.alloc())
    mmu = Mmu(a, tlb(), asid=1)
    assert mmu.translate(BASE, "w") == fa
    mmu.switch(b, asid=2)
    a.protect(BASE, K4, "r")
    mmu.switch(a, asid=1)
    with pytest.raises(PageFault) as info:
        mmu.translate(BASE, "w")
    assert info.value.cause == "protection"


def test_explicit_invalidation_mode_keeps_stale_entries_until_invlpg() -> None:
    mem = PhysicalMemory(64 << 20)
    pt = PageTable(mem)
    old, new = mem.alloc(), mem.alloc()
    pt.map(BASE, old, perms="rw")
    pt.map(BASE + K4, mem.alloc())
    manual = Mmu(pt, tlb(), shootdown=False)
    auto = Mmu(pt, tlb())
    for m in (manual, auto):
        assert m.translate(BASE + 5, "w") == old + 5
    pt.remap(BASE, new)
    assert auto.translate(BASE + 5) == new + 5
    assert manual.translate(BASE + 5) == old + 5  # stale, as on hardware
    pt.protect(BASE, K4, "r")
    assert manual.translate(BASE + 5, "w") == old + 5  # still the stale, writable entry
    manual.invlpg(BASE + 5)
    assert manual.translate(BASE + 5) == new + 5
    with pytest.raises(PageFault):
        manual.translate(BASE + 5, "w")  # the fault also drops the entry
    assert manual.translate(BASE + 5) == new + 5
    pt.unmap(BASE)
    assert manual.translate(BASE + 7) == new + 7  # stale again until invalidated
    with pytest.raises(PageFault):
        auto.translate(BASE + 7)
    manual.flush_range(BASE, K4)
    with pytest.raises(PageFault) as info:
        manual.translate(BASE + 7)
    assert info.value.cause == "not_present"
    assert manual.stats.shootdowns == 0 and auto.stats.shootdowns == 3
