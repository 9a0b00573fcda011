"""NBD servers for tests and benchmarks: nbdkit and qemu-nbd on a Unix socket, started by socket activation.

The test makes the listening socket itself and hands it to the server as
fd 3 (``LISTEN_FDS=1``, the systemd protocol both servers speak), so the
server is reachable the moment it starts: no polling, no sleeps. Holding
the listener also lets a test kill the server and start another on the
same socket (a client's reconnect waits in the backlog until the new one
accepts), or close it so reconnects fail. Servers run with
``--exit-with-parent`` where the server has it, and every start is undone
by :meth:`NbdServer.stop` (pytest fixtures call it).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Seconds a server may take to exit once killed.
STOP_TIMEOUT = 10.0


def have(program: str) -> bool:
    """Whether ``program`` is on PATH."""
    return shutil.which(program) is not None


def nbdkit_argv(
    snapshot: Path,
    *,
    rdelay: str | None = None,
    pause: Path | None = None,
    error: str | None = None,
    error_file: Path | None = None,
    threads: int = 64,
) -> list[str]:
    """nbdkit serving ``snapshot`` read-only, with the delay, pause and error filters as asked."""
    argv = ["nbdkit", "-f", "-r", "--exit-with-parent", "--threads", str(threads)]
    args = []
    if pause is not None:
        argv.append("--filter=pause")
        args.append(f"pause-control={pause}")
    if error is not None:
        argv.append("--filter=error")
        args += [f"error={error}", "error-pread-rate=100%"]
        if error_file is not None:
            args.append(f"error-pread-file={error_file}")
    if rdelay is not None:
        argv.append("--filter=delay")
        args.append(f"rdelay={rdelay}")
    return [*argv, "file", str(snapshot), *args]


def qemu_nbd_argv(snapshot: Path, export: str = "") -> list[str]:
    """qemu-nbd serving ``snapshot`` read-only, raw, to many clients, until killed."""
    flags = ["--read-only", "--format=raw", "--persistent", "--shared=16"]
    return ["qemu-nbd", *flags, "-x", export, str(snapshot)]


class NbdServer:
    """A server process on a Unix socket ``path`` that this object listens on (see the module docstring)."""

    def __init__(self, argv: Sequence[str], path: Path) -> None:
        self.argv = list(argv)
        self.path = path
        self.listener: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The NBD URI of the default export."""
        return f"nbd+unix:///?socket={self.path}"

    def listen(self) -> None:
        """Bind and listen on the socket path (replacing a stale one)."""
        if self.listener is None:
            self.path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(self.path))
            sock.listen(128)
            self.listener = sock

    def start(self) -> NbdServer:
        """Start the server on the listener (listening first if need be)."""
        self.listen()
        assert self.listener is not None and self.proc is None
        # fd 0 is the listener; the shell moves it to fd 3 and execs the server with its own pid.
        script = 'exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
        self.proc = subprocess.Popen(
            ["sh", "-c", script, "sh", *self.argv],
            stdin=self.listener.fileno(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def kill(self) -> None:
        """SIGKILL the server and reap it (the listener stays)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    def close_listener(self) -> None:
        """Stop listening and remove the socket path: connects now fail."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Kill the server and close the listener."""
        self.kill()
        self.close_listener()

    def __enter__(self) -> NbdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pause(control: Path) -> None:
    """Pause an nbdkit pause filter: returns once every request received before it has finished."""
    _control(control, b"p", b"P")


def resume(control: Path) -> None:
    """Resume an nbdkit pause filter."""
    _control(control, b"r", b"R")


def _control(control: Path, cmd: bytes, ack: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(STOP_TIMEOUT)
        s.connect(str(control))
        s.sendall(cmd)
        got = s.recv(1)
    if got != ack:
        raise RuntimeError(f"pause filter answered {got!r} to {cmd!r}")


def snapshot_bytes(pages: int, tail: int = 0, page_size: int = 4096) -> bytes:
    """Distinct, reproducible contents: every 8 bytes hold their own offset, xor a tag."""
    n = pages * page_size + tail
    words = (n + 7) // 8
    import numpy as np

    data = (np.arange(words, dtype=np.uint64) * np.uint64(8)) ^ np.uint64(0x5EED_0000_0000_0000)
    return data.tobytes()[:n]
