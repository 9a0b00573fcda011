"""The shared-clock model of the thread tests (test_shootdown, test_mmu_threads).

Events are ordered by one shared counter, never by wall-clock time: a vCPU
ticks before and after each translation, an editor before and after each
change, and a translation may show any state current at some moment
between its two ticks.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class Clock:
    """A shared counter: the only notion of time in these tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def tick(self) -> int:
        with self._lock:
            self._n += 1
            return self._n


@dataclass(frozen=True)
class State:
    """What a page maps to from one edit on: ``frame`` None when unmapped."""

    start: int  # tick just before the edit that began it
    done: int  # tick just after that edit returned
    frame: int | None
    writable: bool

    def result(self, offset: int, access: str) -> object:
        if self.frame is None:
            return "not_present"
        if access == "w" and not self.writable:
            return "protection"
        return self.frame + offset


@dataclass(frozen=True)
class Record:
    """One translation: its ticks, what it asked and what it got (a PA or a fault cause)."""

    start: int
    end: int
    page: int
    offset: int
    access: str
    result: object


@contextmanager
def fast_thread_switching(interval: float = 1e-5) -> Iterator[None]:
    """Switch threads often, so races get their chance."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
