"""The pipelined driver: bounded channel, errors and Ctrl-C across the reader and simulation threads."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.errors import ConfigError
from vmopt.sim import pipeline
from vmopt.sim.pipeline import Channel, play
from vmopt.traces import TraceError

WAIT = 30.0  # safety bound on every wait: the events decide, this only stops a hung test


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the main thread during the test, whatever ran before."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("vmopt-reader", "vmopt-simulate")]


@pytest.fixture(autouse=True)
def no_threads_left() -> Iterator[None]:
    yield
    for t in workers():
        t.join(WAIT)
    assert not workers()


class Recorder:
    """A consumer that records the chunks and how many waited in the channel at once."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.busy = False

    def __call__(self, chunk: int) -> None:
        assert not self.busy  # one chunk at a time
        self.busy = True
        self.seen.append(chunk)
        self.busy = False


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 60), depth=st.integers(1, 5), inline=st.booleans())
def test_every_chunk_in_order(n: int, depth: int, inline: bool) -> None:
    rec = Recorder()
    assert play(iter(range(n)), rec, depth=None if inline else depth)
    assert rec.seen == list(range(n))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), depth=st.integers(1, 4))
def test_the_reader_never_runs_more_than_depth_ahead(n: int, depth: int) -> None:
    """Produced minus consumed never exceeds depth + 1 (depth waiting, one being put)."""
    produced = [0]
    consumed = [0]
    lead: list[int] = []

    def source() -> Iterator[int]:
        for i in range(n):
            lead.append(produced[0] - consumed[0])
            produced[0] += 1
            yield i

    def consume(chunk: int) -> None:
        consumed[0] += 1

    assert play(source(), consume, depth=depth)
    assert consumed[0] == n and max(lead) <= depth + 1


def test_channel_bound_and_cancel_wake_both_sides() -> None:
    ch: Channel[int] = Channel(2)
    ch.put(1)
    ch.put(2)
    blocked = threading.Event()
    outcome: list[str] = []

    def put() -> None:
        blocked.set()
        try:
            ch.put(3)
            outcome.append("put")
        except pipeline._Closed:
            outcome.append("closed")

    t = threading.Thread(target=put)
    t.start()
    assert blocked.wait(WAIT)
    assert ch.get() == 1  # room again: the put goes through
    t.join(WAIT)
    assert outcome == ["put"] and ch.high_water == 2
    assert ch.get() == 2 and ch.get() == 3
    getter = threading.Thread(target=lambda: outcome.append("got" if _get(ch) else "closed"))
    getter.start()
    ch.cancel()
    getter.join(WAIT)
    assert not getter.is_alive() and outcome[-1] == "closed"
    with pytest.raises(pipeline._Closed):
        ch.put(4)


def _get(ch: Channel[int]) -> bool:
    try:
        ch.get()
    except pipeline._Closed:
        return False
    return True


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_depth(bad: object) -> None:
    with pytest.raises(ConfigError, match="depth"):
        play(iter([1]), lambda c: None, depth=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("inline", [False, True])
def test_reader_error_is_reraised_unchanged_after_the_chunks_before_it(inline: bool) -> None:
    error = TraceError("t.lackey:7: cannot parse 'x'", path="t.lackey", line=7, content="x")
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield 1
            yield 2
            raise error
        finally:
            closed.set()

    rec = Recorder()
    with pytest.raises(TraceError) as info:
        play(source(), rec, depth=None if inline else 3)
    assert info.value is error and (info.value.line, info.value.content) == (7, "x")
    assert rec.seen == [1, 2] and closed.is_set()


def test_consumer_error_stops_an_endless_reader() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    def consume(chunk: int) -> None:
        if chunk == 5:
            raise ConfigError("numa.cpus: the trace uses vCPU 9")

    with pytest.raises(ConfigError, match="vCPU 9"):
        play(endless(), consume, depth=2)
    assert closed.is_set()  # the reader closed its stream and ended (the fixture checks the thread)


@pytest.mark.usefixtures("sigint_raises")
@pytest.mark.parametrize("inline", [False, True])
def test_ctrl_c_stops_both_threads_after_the_chunk_in_progress(
    inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT to the main thread during chunk 3: chunks 0-3 are played whole, nothing after.

    The source then blocks (as a pipe with no data would) until the test
    releases it, so the chunk count is exact, and the stuck reader is left
    behind, then ends once released without playing anything more.
    """
    monkeypatch.setattr(pipeline, "JOIN_GRACE_S", 0.01)
    release = threading.Event()
    closed = threading.Event()

    def source() -> Iterator[int]:
        try:
            yield from range(4)
            release.wait(WAIT)
            yield from range(4, 100)
        finally:
            closed.set()

    rec = Recorder()
    main = threading.main_thread().ident
    assert main is not None

    def consume(chunk: int) -> None:
        rec(chunk)
        if chunk == 3:
            signal.pthread_kill(main, signal.SIGINT)

    assert not play(source(), consume, depth=None if inline else 2)
    assert rec.seen == [0, 1, 2, 3]
    release.set()
    for t in workers():
        t.join(WAIT)
    assert closed.is_set() and rec.seen == [0, 1, 2, 3]


@pytest.mark.usefixtures("sigint_raises")
def test_ctrl_c_can_be_reraised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "JOIN_GRACE_S", 0.01)
    release = threading.Event()
    main = threading.main_thread().ident
    assert main is not None
    seen: list[int] = []

    def source() -> Iterator[int]:
        yield from range(2)
        release.wait(WAIT)
        yield 2

    def consume(chunk: int) -> None:
        seen.append(chunk)
        if chunk == 1:
            signal.pthread_kill(main, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        play(source(), consume, depth=1, on_interrupt="raise")
    release.set()
    for t in workers():
        t.join(WAIT)
    assert seen == [0, 1]
