"""Tests of the backing stores: FileStore and LatencyStore."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmopt.errors import ConfigError, VmoptError
from vmopt.stores import BackingStore, FileStore, LatencyStore, StoreError

PS = 4096


def _snapshot(tmp_path: Path, size: int, *, seed: int = 1, name: str = "mem.bin") -> Path:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------- errors


def test_store_error_names_page_and_reason() -> None:
    err = StoreError("disk on fire", page_index=7)
    assert isinstance(err, VmoptError)
    assert err.page_index == 7
    assert err.reason == "disk on fire"
    assert str(err) == "page 7: disk on fire"
    assert StoreError("cannot open").page_index is None


# ------------------------------------------------------------------ FileStore


def test_file_store_pages_match_file(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, 5 * PS)
    raw = path.read_bytes()
    with FileStore(path) as store:
        assert store.num_pages == 5
        assert store.page_size == PS
        pages = asyncio.run(_gather(store, range(5)))
    for i, page in enumerate(pages):
        assert page == raw[i * PS : (i + 1) * PS]


def test_file_store_offset_and_zero_padding(tmp_path: Path) -> None:
    size = 100 + 2 * PS + 123
    path = _snapshot(tmp_path, size)
    raw = path.read_bytes()
    with FileStore(str(path), offset=100) as store:
        assert store.num_pages == 3
        p0, p1, p2 = asyncio.run(_gather(store, [0, 1, 2]))
        assert p0 == raw[100 : 100 + PS]
        assert p1 == raw[100 + PS : 100 + 2 * PS]
        assert len(p2) == PS
        assert p2[:123] == raw[100 + 2 * PS :]
        assert p2[123:] == bytes(PS - 123)
        assert store.stats.reads == 3
        assert store.stats.bytes_read == size - 100  # padding is not counted


def test_file_store_custom_page_size(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, 3000)
    raw = path.read_bytes()
    with FileStore(path, page_size=1024) as store:
        assert store.num_pages == 3
        assert store.fetch_sync(2) == raw[2048:] + bytes(72)


def test_file_store_past_eof_and_negative(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, 2 * PS + 1)
    with FileStore(path) as store:
        assert store.num_pages == 3
        with pytest.raises(StoreError, match=r"page 3: past the end of snapshot") as info:
            asyncio.run(store.fetch(3))
        assert info.value.page_index == 3
        assert str(path) in str(info.value)
        with pytest.raises(StoreError, match="negative page index"):
            store.fetch_sync(-1)
        with pytest.raises(TypeError):
            store.fetch_sync(1.0)  # type: ignore[arg-type]
        assert store.fetch_sync(np.int64(1)) == path.read_bytes()[PS : 2 * PS]  # type: ignore[arg-type]
        assert store.stats.errors == 2


def test_file_store_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    with FileStore(path) as store:
        assert store.num_pages == 0
        with pytest.raises(StoreError, match="holds no pages"):
            store.fetch_sync(0)


def test_file_store_bad_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "mem.bin"
    with pytest.raises(StoreError, match="cannot open snapshot file") as info:
        FileStore(missing)
    assert str(missing) in str(info.value)
    assert info.value.page_index is None


def test_file_store_rejects_unseekable(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Opening a FIFO read-only blocks until a writer appears: hold one open.
    writer = threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True)
    writer.start()
    try:
        with pytest.raises(StoreError, match="not seekable") as info:
            FileStore(fifo)
        assert str(fifo) in str(info.value)
    finally:
        writer.join(timeout=5)


def test_file_store_validates_arguments(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, PS)
    with pytest.raises(ConfigError, match="page_size must be a positive power of two, got 1000"):
        FileStore(path, page_size=1000)
    with pytest.raises(ConfigError, match="offset must be a non-negative int, got -1"):
        FileStore(path, offset=-1)
    with pytest.raises(ConfigError, match=r"offset 4097 is past the end"):
        FileStore(path, offset=PS + 1)


def test_file_store_close_and_context_manager(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, PS)
    with FileStore(path) as store:
        assert not store.closed
        assert isinstance(store, BackingStore)
        assert "1 pages" in repr(store)
    assert store.closed
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(store.fetch(0))
    with pytest.raises(StoreError, match="closed"):
        store.fetch_sync(0)


def test_file_store_fetch_uses_worker_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _snapshot(tmp_path, 4 * PS)
    calls: list[str] = []
    real_to_thread = asyncio.to_thread

    async def spy(func: Callable[..., Any], /, *args: Any) -> Any:
        calls.append(getattr(func, "__name__", "?"))
        return await real_to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    with FileStore(path) as store:
        asyncio.run(_gather(store, range(4)))
    assert calls == ["_read_page"] * 4


def test_file_store_does_not_block_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pread blocks until the event loop itself releases it.

    If a fetch ran pread on the loop thread, the loop could never run the
    coroutine that sets the event and the read would time out.
    """
    path = _snapshot(tmp_path, 32 * PS)
    raw = path.read_bytes()
    release = threading.Event()
    entered = threading.Semaphore(0)
    real_pread = os.pread

    def gated_pread(fd: int, n: int, off: int) -> bytes:
        entered.release()
        if not release.wait(timeout=30):
            raise AssertionError("pread was never released: the event loop was blocked")
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", gated_pread)

    async def main(store: FileStore) -> tuple[list[bytes], int]:
        fetches = asyncio.gather(*(store.fetch(i) for i in range(32)))
        ticks = 0
        # The loop keeps running while reads are stuck in worker threads.
        while not entered.acquire(blocking=False):
            await asyncio.sleep(0.001)
            ticks += 1
        for _ in range(10):
            await asyncio.sleep(0)
            ticks += 1
        assert not fetches.done()
        release.set()
        return list(await fetches), ticks

    with FileStore(path) as store:
        pages, ticks = asyncio.run(main(store))
    assert ticks >= 10
    assert pages == [raw[i * PS : (i + 1) * PS] for i in range(32)]


def test_file_store_handles_short_preads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _snapshot(tmp_path, 2 * PS + 10)
    raw = path.read_bytes()
    real_pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: real_pread(fd, min(n, 1000), off))
    with FileStore(path) as store:
        assert store.fetch_sync(0) == raw[:PS]
        assert store.fetch_sync(2) == raw[2 * PS :] + bytes(PS - 10)


def test_file_store_truncated_after_open(tmp_path: Path) -> None:
    path = _snapshot(tmp_path, 3 * PS)
    with FileStore(path) as store:
        os.truncate(path, PS + 5)
        assert store.fetch_sync(0) == path.read_bytes()[:PS]
        with pytest.raises(StoreError, match=r"page 1: short read .* got 5 of 4096"):
            store.fetch_sync(1)


def test_file_store_os_error_becomes_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _snapshot(tmp_path, PS)

    def failing_pread(fd: int, n: int, off: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pread", failing_pread)
    with FileStore(path) as store:
        with pytest.raises(StoreError, match=r"page 0: reading .* failed: Input/output error"):
            asyncio.run(store.fetch(0))
        assert store.stats.errors == 1


def test_file_store_close_waits_for_running_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _snapshot(tmp_path, PS)
    raw = path.read_bytes()
    entered, release = threading.Event(), threading.Event()
    real_pread = os.pread

    def gated_pread(fd: int, n: int, off: int) -> bytes:
        entered.set()
        release.wait(timeout=30)
        return real_pread(fd, n, off)

    monkeypatch.setattr(os, "pread", gated_pread)
    store = FileStore(path)
    fd = store._fd
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(store.fetch_sync(0)))
    reader.start()
    assert entered.wait(timeout=30)
    store.close()
    os.fstat(fd)  # still open: the read holds it
    release.set()
    reader.join(timeout=30)
    assert result == [raw]
    with pytest.raises(OSError):
        os.fstat(fd)


# --------------------------------------------------------------- LatencyStore


async def _gather(store: BackingStore, pages: Any) -> list[bytes]:
    return list(await asyncio.gather(*(store.fetch(i) for i in pages)))


async def _outcomes(store: LatencyStore, pages: list[int]) -> dict[int, bool]:
    """page -> failed?, fetching all pages concurrently in the given order."""
    results = await asyncio.gather(*(store.fetch(i) for i in pages), return_exceptions=True)
    out: dict[int, bool] = {}
    for page, result in zip(pages, results, strict=True):
        if isinstance(result, BaseException):
            assert isinstance(result, StoreError)
            assert result.page_index == page
            out[page] = True
        else:
            out[page] = False
    return out


def test_latency_store_is_a_backing_store() -> None:
    store = LatencyStore(0.0)
    assert isinstance(store, BackingStore)
    assert store.page_size == PS
    assert store.num_pages is None
    assert asyncio.run(store.fetch(10**9)) == bytes(PS)


def test_latency_store_jitter_is_deterministic_per_page() -> None:
    a = LatencyStore(0.01, jitter_s=0.005, seed=42)
    b = LatencyStore(0.01, jitter_s=0.005, seed=42)
    c = LatencyStore(0.01, jitter_s=0.005, seed=43)
    lat_a = [a.latency_for(i) for i in range(200)]
    assert lat_a == [b.latency_for(i) for i in reversed(range(200))][::-1]
    assert lat_a != [c.latency_for(i) for i in range(200)]
    assert all(0.01 <= x <= 0.015 for x in lat_a)
    assert max(lat_a) - min(lat_a) > 0.004  # really jittered, across the range
    assert LatencyStore(0.01, seed=42).latency_for(5) == 0.01  # no jitter configured


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(-(2**70), 2**70),
    page=st.integers(0, 2**40),
    jitter=st.floats(0, 1, allow_nan=False),
)
def test_latency_store_draws_in_range_and_repeatable(seed: int, page: int, jitter: float) -> None:
    s1 = LatencyStore(0.002, jitter_s=jitter, fail_rate=0.5, seed=seed)
    s2 = LatencyStore(0.002, jitter_s=jitter, fail_rate=0.5, seed=seed)
    assert 0.002 <= s1.latency_for(page) <= 0.002 + jitter
    assert s1.latency_for(page) == s2.latency_for(page)
    assert s1.will_fail(page) == s2.will_fail(page)


def test_latency_store_failures_deterministic_and_order_independent() -> None:
    pages = list(range(300))
    first = asyncio.run(_outcomes(LatencyStore(0.0, fail_rate=0.3, seed=7), pages))
    second = asyncio.run(_outcomes(LatencyStore(0.0, fail_rate=0.3, seed=7), pages[::-1]))
    assert first == second
    store = LatencyStore(0.0, fail_rate=0.3, seed=7)
    assert first == {p: store.will_fail(p) for p in pages}
    assert 0.2 < sum(first.values()) / len(pages) < 0.4
    other = asyncio.run(_outcomes(LatencyStore(0.0, fail_rate=0.3, seed=8), pages))
    assert other != first


def test_latency_store_fail_rate_extremes() -> None:
    always = LatencyStore(0.0, fail_rate=1.0)
    for i in range(20):
        with pytest.raises(StoreError, match=rf"page {i}: injected failure") as info:
            asyncio.run(always.fetch(i))
        assert info.value.page_index == i
    assert always.stats.failures == 20
    assert always.stats.fetches == 20
    assert always.stats.bytes_served == 0
    never = LatencyStore(0.0, fail_rate=0.0)
    asyncio.run(_gather(never, range(100)))
    assert never.stats.failures == 0
    assert never.stats.bytes_served == 100 * PS


def test_latency_store_sync_matches_async() -> None:
    data = bytes(range(256)) * 64  # 4 pages
    store = LatencyStore(0.0, data=data, fail_rate=0.4, seed=3, page_size=1024)
    for i in range(store.num_pages or 0):
        try:
            expected: bytes | None = asyncio.run(store.fetch(i))
        except StoreError:
            expected = None
        if expected is None:
            with pytest.raises(StoreError):
                store.fetch_sync(i)
        else:
            assert store.fetch_sync(i) == expected


def test_latency_store_fetch_sync_sleeps() -> None:
    slept: list[float] = []
    store = LatencyStore(0.02, jitter_s=0.01, sleep=slept.append)
    assert store.fetch_sync(0) == bytes(PS)
    assert store.fetch_sync(1) == bytes(PS)
    assert slept == [store.latency_for(0), store.latency_for(1)]
    assert all(0.02 <= d < 0.03 for d in slept) and slept[0] != slept[1]


def test_latency_store_in_flight_tracking() -> None:
    store = LatencyStore(0.005)

    async def main() -> None:
        assert store.stats.in_flight == 0
        await _gather(store, range(20))

    asyncio.run(main())
    stats = store.stats
    # gather starts all 20 before the first 5 ms sleep can end.
    assert stats.max_in_flight == 20
    assert stats.in_flight == 0
    assert stats.fetches == 20


def test_latency_store_in_flight_bounded_by_semaphore() -> None:
    store = LatencyStore(0.001)

    async def main() -> None:
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> bytes:
            async with sem:
                return await store.fetch(i)

        await asyncio.gather(*(one(i) for i in range(40)))

    asyncio.run(main())
    assert store.stats.max_in_flight == 4


def test_latency_store_concurrent_fetches_overlap() -> None:
    started = 0

    async def sleep(delay: float) -> None:
        nonlocal started
        started += 1
        # Every fetch is asleep at once: none finishes before the last has started.
        while started < 100:
            await asyncio.sleep(0)

    store = LatencyStore(0.010, async_sleep=sleep)
    asyncio.run(_gather(store, range(100)))
    assert store.stats.max_in_flight == 100 and store.stats.fetches == 100


def test_latency_store_cancelled_fetch_is_not_a_failure() -> None:
    store = LatencyStore(10.0)

    async def main() -> None:
        task = asyncio.ensure_future(store.fetch(0))
        await asyncio.sleep(0)
        assert store.stats.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert store.stats.in_flight == 0
    assert store.stats.failures == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda d: bytes(d),
        lambda d: bytearray(d),
        lambda d: memoryview(bytes(d)),
        lambda d: np.frombuffer(bytes(d), dtype=np.uint8),
        lambda d: np.frombuffer(bytes(d), dtype=np.uint8).reshape(-1, 16),
    ],
    ids=["bytes", "bytearray", "memoryview", "ndarray", "ndarray-2d"],
)
def test_latency_store_buffer_data(make: Callable[[bytes], Any]) -> None:
    raw = np.random.default_rng(5).integers(0, 256, 2 * PS + 16, dtype=np.uint8).tobytes()
    store = LatencyStore(0.0, data=make(raw))
    assert store.num_pages == 3
    pages = asyncio.run(_gather(store, range(3)))
    assert pages[0] == raw[:PS]
    assert pages[1] == raw[PS : 2 * PS]
    assert pages[2] == raw[2 * PS :] + bytes(PS - 16)
    with pytest.raises(StoreError, match="page 3: past the end"):
        asyncio.run(store.fetch(3))


def test_latency_store_buffer_is_copied() -> None:
    buf = bytearray(PS)
    store = LatencyStore(0.0, data=buf)
    buf[0] = 0xFF
    assert store.fetch_sync(0) == bytes(PS)


def test_latency_store_num_pages_beyond_buffer_serves_zeros() -> None:
    store = LatencyStore(0.0, data=b"\x01" * PS, num_pages=3)
    assert store.fetch_sync(0) == b"\x01" * PS
    assert store.fetch_sync(2) == bytes(PS)
    with pytest.raises(StoreError):
        store.fetch_sync(3)


def test_latency_store_callable_data() -> None:
    store = LatencyStore(0.0, data=lambda i: bytes([i % 256]) * PS, num_pages=300)
    assert asyncio.run(store.fetch(257)) == b"\x01" * PS
    bad = LatencyStore(0.0, data=lambda i: b"short")
    with pytest.raises(StoreError, match="page 0: data callable returned 5 bytes, expected 4096"):
        bad.fetch_sync(0)

    def boom(i: int) -> bytes:
        raise RuntimeError("backend down")

    with pytest.raises(StoreError, match="page 2: data callable raised") as info:
        LatencyStore(0.0, data=boom).fetch_sync(2)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert bad.stats.failures == 1


def test_latency_store_closed() -> None:
    store = LatencyStore(0.0)
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        asyncio.run(store.fetch(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"latency_s": -0.1}, r"latency_s must be finite and >= 0, got -0\.1"),
        ({"latency_s": float("nan")}, "latency_s must be finite"),
        ({"latency_s": "1"}, "latency_s must be a number of seconds, got '1'"),
        ({"jitter_s": float("inf")}, "jitter_s must be finite"),
        ({"fail_rate": 1.5}, r"fail_rate must be in \[0, 1\], got 1\.5"),
        ({"fail_rate": float("nan")}, r"fail_rate must be in \[0, 1\]"),
        ({"seed": 1.5}, "seed must be an int, got 1.5"),
        ({"page_size": 3000}, "page_size must be a positive power of two, got 3000"),
        ({"page_size": 0}, "page_size must be a positive power of two, got 0"),
        ({"num_pages": -1}, "num_pages must be None or an int >= 0, got -1"),
        ({"data": np.zeros(8, dtype=np.int32)}, "dtype uint8, got int32"),
        ({"data": 12}, "data must be bytes, .* got int"),
    ],
)
def test_latency_store_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"latency_s": 0.0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        LatencyStore(**args)
