"""NbdStore against real NBD servers: nbdkit (delay, pause and error filters) and qemu-nbd.

Every server listens on a Unix socket the test made (tests/nbd_servers.py);
waits are on events the servers signal (the pause filter's acknowledgement)
or on the store's own in-flight count, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vmopt
from nbd_servers import NbdServer, have, nbdkit_argv, pause, qemu_nbd_argv, snapshot_bytes
from vmopt import BatchOperationFailed, ConcurrencyConfig, MemoryOptimizer, NbdStore, NumaConfig
from vmopt.errors import ConfigError
from vmopt.stores import NbdError, StoreError, parse_nbd_uri

PAGES = 96
TAIL = 100  # a short last page, zero-padded by the store
PS = 4096

needs_nbdkit = pytest.mark.skipif(not have("nbdkit"), reason="nbdkit is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nbd") / "snap.img"
    path.write_bytes(snapshot_bytes(PAGES, TAIL))
    return path


@pytest.fixture(scope="module")
def expected(snapshot: Path) -> bytes:
    data = snapshot.read_bytes()
    return data + bytes(-len(data) % PS)


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp paths can be longer.
    short = Path(f"/tmp/vmopt-nbd-{os.getpid()}-{abs(hash(tmp_path)) % 10**8}")
    short.mkdir(exist_ok=True)
    yield short
    for p in short.iterdir():
        p.unlink()
    short.rmdir()


@pytest.fixture
def nbdkit(snapshot: Path, sock_dir: Path) -> Iterator[NbdServer]:
    if not have("nbdkit"):
        pytest.skip("nbdkit is not installed (.ci/run installs it)")
    with NbdServer(nbdkit_argv(snapshot, rdelay="2ms"), sock_dir / "nbd.sock") as server:
        yield server


SERVERS = [
    "nbdkit",
    pytest.param("qemu-nbd", marks=pytest.mark.skipif(not have("qemu-nbd"), reason="no qemu-nbd")),
]


@pytest.fixture(params=SERVERS)
def any_server(request: pytest.FixtureRequest, snapshot: Path, sock_dir: Path) -> Iterator[NbdServer]:
    if request.param == "nbdkit":
        if not have("nbdkit"):
            pytest.skip("nbdkit is not installed")
        argv = nbdkit_argv(snapshot)
    else:
        argv = qemu_nbd_argv(snapshot)
    with NbdServer(argv, sock_dir / "nbd.sock") as server:
        yield server


def _guest(store: NbdStore, max_concurrent: int = 8) -> tuple[MemoryOptimizer, int]:
    opt = MemoryOptimizer(
        NumaConfig(1, 64 << 20), concurrency=ConcurrencyConfig(max_concurrent=max_concurrent)
    )
    va = opt.allocate(store.num_pages * PS, store=store)
    return opt, va


# -- URIs ---------------------------------------------------------------------------------------


def test_uri_forms() -> None:
    a = parse_nbd_uri("nbd://example.org/disk%201")
    assert (a.host, a.port, a.export, a.socket) == ("example.org", 10809, "disk 1", None)
    b = parse_nbd_uri("nbd://[::1]:10900/")
    assert (b.host, b.port, b.export) == ("::1", 10900, "")
    c = parse_nbd_uri("nbd+unix:///exp?socket=/run/n.sock")
    assert (c.socket, c.export, c.host) == ("/run/n.sock", "exp", None)
    assert str(c) == "nbd+unix:///exp?socket=/run/n.sock"


@pytest.mark.parametrize(
    "uri",
    ["nbds://h/x", "http://h/x", "nbd:///x", "nbd+unix:///x", "nbd+unix://h/x?socket=/s", "nbd://h:99999/",
     "nbd://h/x?socket=/s", 7],
)  # fmt: skip
def test_bad_uris_name_the_uri(uri: object) -> None:
    with pytest.raises(ConfigError, match="NBD URI"):
        NbdStore(uri)  # type: ignore[arg-type]


def test_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        NbdStore(f"nbd+unix:///?socket={tmp_path / 'nobody.sock'}")


# -- reads ------------------------------------------------------------------------------------


def test_pages_sync_and_async_match_the_snapshot(any_server: NbdServer, expected: bytes) -> None:
    with NbdStore(any_server.uri) as store:
        assert store.num_pages == PAGES + 1
        size = PAGES * PS + TAIL
        # qemu-nbd serves whole 512-byte sectors (the tail it adds reads as zeros).
        assert store.export_size == (size if "nbdkit" in any_server.argv else -(-size // 512) * 512)
        for i in (0, 1, PAGES - 1, PAGES):
            assert store.fetch_sync(i) == expected[i * PS : (i + 1) * PS]

        async def all_pages() -> list[bytes]:
            return await asyncio.gather(*(store.fetch(i) for i in range(store.num_pages)))

        got = asyncio.run(all_pages())
        assert b"".join(got) == expected
        assert store.stats.reads == 4 + PAGES + 1
        with pytest.raises(StoreError, match="past the end"):
            store.fetch_sync(PAGES + 1)
    with pytest.raises(StoreError, match="closed"):
        store.fetch_sync(0)


def test_reads_pipeline_on_one_connection(nbdkit: NbdServer, expected: bytes) -> None:
    with NbdStore(nbdkit.uri, max_concurrent=16) as store:

        async def run() -> list[bytes]:
            return await asyncio.gather(*(store.fetch(i) for i in range(64)))

        assert b"".join(asyncio.run(run())) == expected[: 64 * PS]
        st_ = store.stats
        assert st_.max_in_flight == 16  # the cap, reached: nbdkit serves reads in parallel
        assert st_.connects == 2  # the blocking one and one async connection, however many reads


@settings(max_examples=10, deadline=None)
@given(pages=st.lists(st.integers(0, PAGES), min_size=1, max_size=40), mc=st.sampled_from([1, 4, 32]))
def test_concurrent_batch_equals_sequential(nbdkit_module: NbdServer, expected: bytes, pages: list[int],
                                            mc: int) -> None:  # fmt: skip
    with NbdStore(nbdkit_module.uri) as s1, NbdStore(nbdkit_module.uri) as s2:
        seq, va1 = _guest(s1)
        con, va2 = _guest(s2, mc)
        addrs1 = [va1 + p * PS + 8 for p in pages]
        addrs2 = [va2 + p * PS + 8 for p in pages]
        want = seq.batch_access(addrs1)
        got = asyncio.run(con.batch_access_concurrent(addrs2))
        assert [a - va1 for a in addrs1] == [a - va2 for a in addrs2]
        assert want == got  # the same frames, allocated in the same order
        for p in set(pages):
            assert con.read(va2 + p * PS, PS) == expected[p * PS : (p + 1) * PS]


@pytest.fixture(scope="module")
def nbdkit_module(snapshot: Path) -> Iterator[NbdServer]:
    if not have("nbdkit"):
        pytest.skip("nbdkit is not installed")
    path = Path(f"/tmp/vmopt-nbd-{os.getpid()}-module.sock")
    with NbdServer(nbdkit_argv(snapshot, rdelay="1ms"), path) as server:
        yield server


@needs_nbdkit
@pytest.mark.parametrize("code", ["EIO", "EPERM", "ENOSPC"])
def test_error_replies_name_the_code(snapshot: Path, sock_dir: Path, code: str) -> None:
    flag = sock_dir / "inject"
    argv = nbdkit_argv(snapshot, error=code, error_file=flag)
    with NbdServer(argv, sock_dir / "nbd.sock") as server, NbdStore(server.uri) as store:
        assert store.fetch_sync(1)  # no flag file: no errors
        flag.touch()
        with pytest.raises(NbdError, match=code) as info:
            store.fetch_sync(2)
        assert info.value.code == code and info.value.page_index == 2
        opt, va = _guest(store)
        with pytest.raises(BatchOperationFailed) as failed:
            asyncio.run(opt.batch_access_concurrent([va + PS * p for p in range(3, 9)]))
        assert (failed.value.success, failed.value.total) == (0, 6)
        assert all(isinstance(e, NbdError) and e.code == code for e in failed.value.errors.values())
        assert not opt.region_of(va).resident  # nothing half-installed
        flag.unlink()
        assert asyncio.run(opt.batch_access_concurrent([va + PS * p for p in range(3, 9)]))
        assert store.stats.errors == 7


# -- dropped connections ------------------------------------------------------------------------


async def _until(cond: object, what: str) -> None:
    """Wait (bounded) for ``cond()`` to hold, yielding to the loop between looks."""
    for _ in range(20_000):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.0005)
    raise AssertionError(f"timed out waiting for {what}")


@needs_nbdkit
def test_server_killed_mid_batch(snapshot: Path, sock_dir: Path, expected: bytes) -> None:
    """Reads a paused server holds fail when it dies (exact counts); after a restart the batch completes."""
    control = sock_dir / "pause.sock"
    server = NbdServer(nbdkit_argv(snapshot, pause=control), sock_dir / "nbd.sock").start()
    try:
        store = NbdStore(server.uri, max_concurrent=8)
        opt, va = _guest(store, 8)
        resident = list(range(0, 20, 2))
        asyncio.run(opt.batch_access_concurrent([va + p * PS for p in resident]))
        batch = [va + p * PS + 16 for p in range(20)]  # 10 resident, 10 to fetch
        pause(control)

        async def run() -> None:
            task = asyncio.ensure_future(opt.batch_access_concurrent(batch))
            await _until(lambda: store.stats.in_flight == 8, "8 reads in flight")
            server.stop()  # the held reads' connection drops; reconnects find no server
            await task

        with pytest.raises(BatchOperationFailed) as failed:
            asyncio.run(run())
        assert (failed.value.success, failed.value.total) == (10, 20)
        assert sorted(failed.value.errors) == list(range(1, 20, 2))
        assert sorted(opt.region_of(va).resident) == resident  # none of the failed pages went in
        assert store.stats.retries == 8

        server.start()  # a new server on the same socket path
        out = asyncio.run(opt.batch_access_concurrent(batch))
        assert len(out) == 20
        assert sorted(opt.region_of(va).resident) == list(range(20))
        assert opt.read(va, 20 * PS) == expected[: 20 * PS]
        store.close()
    finally:
        server.stop()


@needs_nbdkit
def test_dropped_reads_are_retried_on_a_new_connection(
    snapshot: Path, sock_dir: Path, expected: bytes
) -> None:
    """The server dies with reads in flight and another takes its socket: every read completes."""
    control = sock_dir / "pause.sock"
    server = NbdServer(nbdkit_argv(snapshot, pause=control), sock_dir / "nbd.sock").start()
    try:
        with NbdStore(server.uri, max_concurrent=8) as store:
            opt, va = _guest(store, 8)
            batch = np.array([va + p * PS for p in range(24)], dtype=np.uint64)
            pause(control)

            async def run() -> object:
                task = asyncio.ensure_future(opt.batch_access_concurrent(batch))
                await _until(lambda: store.stats.in_flight == 8, "8 reads in flight")
                server.kill()  # the listener stays: the reconnect waits for the next server
                server.argv = nbdkit_argv(snapshot)
                server.start()
                return await task

            out = asyncio.run(run())
            assert isinstance(out, np.ndarray) and len(out) == 24
            assert store.stats.retries == 8 and store.stats.connects == 3
            assert opt.read(va, 24 * PS) == expected[: 24 * PS]
    finally:
        server.stop()


@needs_nbdkit
def test_sync_fetch_reconnects_once(snapshot: Path, sock_dir: Path, expected: bytes) -> None:
    with NbdServer(nbdkit_argv(snapshot), sock_dir / "nbd.sock") as server, NbdStore(server.uri) as store:
        assert store.fetch_sync(3) == expected[3 * PS : 4 * PS]
        server.kill()
        server.start()
        assert store.fetch_sync(4) == expected[4 * PS : 5 * PS]
        assert store.stats.retries == 1
        server.stop()
        with pytest.raises(StoreError, match="page 5"):
            store.fetch_sync(5)


def test_exported_from_vmopt() -> None:
    assert vmopt.NbdStore is NbdStore and "NbdStore" in vmopt.__all__


# -- hostile servers ------------------------------------------------------------------------------

_GREETING = struct.pack(">QQH", 0x4E42444D41474943, 0x49484156454F5054, 3)


def _reply(rtype: int, payload: bytes) -> bytes:
    return struct.pack(">QIII", 0x3E889045565A9, 7, rtype, len(payload)) + payload


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not an NBD server"),
        (struct.pack(">QQ", 0x4E42444D41474943, 0x00420281861253) + bytes(8), "fixed newstyle"),
        (_GREETING + struct.pack(">QIII", 0x3E889045565A9, 7, 3, 1 << 31), "reply of 2147483648 bytes"),
        (_GREETING + _reply((1 << 31) | 6, b"no such export"), "NBD_REP_ERR_UNKNOWN.*no such export"),
        (_GREETING + _reply(1, b""), "without NBD_INFO_EXPORT"),
        (_GREETING[:10], "handshake"),
    ],
)
def test_hostile_handshakes_are_store_errors(sock_dir: Path, script: bytes, match: str) -> None:
    """A server that lies or breaks off: a StoreError naming what went wrong; nothing sized by its lengths."""
    path = sock_dir / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(script)
            conn.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):  # the client may reset the connection
                while conn.recv(4096):
                    pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        with pytest.raises(StoreError, match=match):
            NbdStore(f"nbd+unix:///?socket={path}", timeout=5)
    finally:
        server.join(10)
        listener.close()
    assert not server.is_alive()


def test_cancelled_reads_leave_the_connection_usable(nbdkit: NbdServer, expected: bytes) -> None:
    with NbdStore(nbdkit.uri, max_concurrent=4) as store:

        async def run() -> list[bytes]:
            doomed = [asyncio.ensure_future(store.fetch(i)) for i in range(12)]
            await asyncio.sleep(0)  # the fetches start; the first starts the dial
            await asyncio.sleep(0)  # the dial is under way (its handshake runs in a thread)
            for t in doomed:
                t.cancel()
            await asyncio.gather(*doomed, return_exceptions=True)
            first = await asyncio.gather(*(store.fetch(i) for i in range(20, 25)))
            # Now with the connection up: 4 reads on the wire and 8 in the backlog, all cancelled;
            # the server still answers the 4, and those replies must not break the connection.
            doomed = [asyncio.ensure_future(store.fetch(i)) for i in range(12)]
            await _until(lambda: store.stats.in_flight == 4, "4 reads on the wire")
            for t in doomed:
                t.cancel()
            await asyncio.gather(*doomed, return_exceptions=True)
            return first + await asyncio.gather(*(store.fetch(i) for i in range(25, 30)))

        assert b"".join(asyncio.run(run())) == expected[20 * PS : 30 * PS]
        assert store.stats.connects == 2 and store.stats.errors == 0
