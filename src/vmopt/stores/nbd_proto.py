"""The NBD protocol's wire format, for :class:`vmopt.stores.NbdStore` (no I/O here but the handshake).

Only what a read-only client needs, from the NBD protocol document
(NetworkBlockDevice/nbd ``doc/proto.md``): the fixed newstyle handshake with
``NBD_OPT_GO`` (asking for ``NBD_INFO_EXPORT`` and ``NBD_INFO_BLOCK_SIZE``),
simple replies, ``NBD_CMD_READ`` and ``NBD_CMD_DISC``. Structured replies
are never negotiated, so every reply is the 16-byte simple header (plus the
data of a successful read).

Every length the server sends is checked before anything is allocated for
it: an option reply longer than :data:`MAX_OPTION_REPLY` is a protocol error.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from vmopt.errors import ConfigError
from vmopt.stores.base import StoreError

__all__ = [
    "ERRNO_NAMES",
    "NBD_DEFAULT_PORT",
    "REPLY_HEADER",
    "ExportInfo",
    "NbdAddress",
    "NbdError",
    "dial",
    "encode_disc",
    "encode_read",
    "errno_name",
    "handshake",
    "parse_nbd_uri",
]

NBD_DEFAULT_PORT: Final = 10809
"""The IANA port of NBD, used when an ``nbd://`` URI names none."""

NBDMAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC_OPT: Final = 0x3E889045565A9
REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698

FLAG_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_NO_ZEROES: Final = 1 << 1
FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_C_NO_ZEROES: Final = 1 << 1

OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_GO: Final = 7
REP_ACK: Final = 1
REP_INFO: Final = 3
REP_FLAG_ERROR: Final = 1 << 31
INFO_EXPORT: Final = 0
INFO_BLOCK_SIZE: Final = 3

CMD_READ: Final = 0
CMD_DISC: Final = 2

#: An option reply longer than this is refused (the largest we ask for is 18 bytes;
#: error replies carry a short message).
MAX_OPTION_REPLY: Final = 1 << 16
#: Option replies read before NBD_REP_ACK; a server sending more is broken.
MAX_OPTION_REPLIES: Final = 64

_REP_ERRORS: Final = {
    REP_FLAG_ERROR | 1: "NBD_REP_ERR_UNSUP",
    REP_FLAG_ERROR | 2: "NBD_REP_ERR_POLICY",
    REP_FLAG_ERROR | 3: "NBD_REP_ERR_INVALID",
    REP_FLAG_ERROR | 4: "NBD_REP_ERR_PLATFORM",
    REP_FLAG_ERROR | 5: "NBD_REP_ERR_TLS_REQD",
    REP_FLAG_ERROR | 6: "NBD_REP_ERR_UNKNOWN",
    REP_FLAG_ERROR | 7: "NBD_REP_ERR_SHUTDOWN",
    REP_FLAG_ERROR | 8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
    REP_FLAG_ERROR | 9: "NBD_REP_ERR_TOO_BIG",
}

ERRNO_NAMES: Final = {
    1: "EPERM",
    5: "EIO",
    12: "ENOMEM",
    22: "EINVAL",
    28: "ENOSPC",
    75: "EOVERFLOW",
    95: "ENOTSUP",
    108: "ESHUTDOWN",
}
"""The error values of NBD replies (the protocol fixes them; they are Linux's numbers)."""

_REQUEST = struct.Struct(">IHHQQI")
REPLY_HEADER: Final = struct.Struct(">IIQ")
"""A simple reply: magic, error, cookie (the request's handle)."""


def errno_name(code: int) -> str:
    """The name of an NBD error value (``5`` -> ``EIO``); an unknown one reads ``error 42``."""
    return ERRNO_NAMES.get(code, f"error {code}")


class NbdError(StoreError):
    """An NBD server answered a read with an error; ``code`` names it (``EIO``, ``EPERM``, ...)."""

    def __init__(self, reason: str, *, code: str, page_index: int | None = None) -> None:
        super().__init__(reason, page_index=page_index)
        self.code = code


@dataclass(frozen=True, slots=True)
class NbdAddress:
    """Where an NBD export is: a TCP ``host``/``port`` or a Unix ``socket`` path, and the export name."""

    export: str
    host: str | None = None
    port: int = NBD_DEFAULT_PORT
    socket: str | None = None

    def __str__(self) -> str:
        if self.socket is not None:
            return f"nbd+unix:///{self.export}?socket={self.socket}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{self.export}"


def parse_nbd_uri(uri: object) -> NbdAddress:
    """Parse an NBD URI (the NBD URI spec): ``nbd://HOST[:PORT]/[EXPORT]`` or
    ``nbd+unix:///[EXPORT]?socket=PATH``. TLS schemes (``nbds``) are refused."""
    if not isinstance(uri, str):
        raise ConfigError(f"NBD URI must be a string, got {uri!r}")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"NBD URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme.startswith("nbds"):
        raise ConfigError(f"NBD URI {uri!r}: TLS (nbds) is not supported; use nbd:// or nbd+unix://")
    export = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if len(export.encode()) > 4096:
        raise ConfigError(f"NBD URI {uri!r}: export name longer than 4096 bytes")
    query = parse_qs(parts.query, keep_blank_values=True)
    if scheme in ("nbd", "nbd+tcp"):
        if not parts.hostname:
            raise ConfigError(f"NBD URI {uri!r}: no host (expected nbd://HOST[:PORT]/EXPORT)")
        if "socket" in query:
            raise ConfigError(f"NBD URI {uri!r}: socket= belongs to nbd+unix:// URIs")
        return NbdAddress(export, host=parts.hostname, port=NBD_DEFAULT_PORT if port is None else port)
    if scheme == "nbd+unix":
        if parts.netloc:
            raise ConfigError(f"NBD URI {uri!r}: nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)")
        paths = query.get("socket", [])
        if len(paths) != 1 or not paths[0]:
            raise ConfigError(f"NBD URI {uri!r}: nbd+unix:// needs exactly one socket=PATH")
        return NbdAddress(export, socket=paths[0])
    raise ConfigError(f"NBD URI {uri!r}: expected scheme nbd:// or nbd+unix://, got {parts.scheme or 'none'}")


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What NBD_OPT_GO told of the export: size, transmission flags and block-size constraints."""

    size: int
    flags: int
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = 32 << 20


def dial(addr: NbdAddress, timeout: float) -> socket.socket:
    """A connected, blocking socket to ``addr`` (raises OSError); TCP_NODELAY on TCP."""
    if addr.socket is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(addr.socket)
        except BaseException:
            sock.close()
            raise
        return sock
    assert addr.host is not None  # parse_nbd_uri gives a host or a socket
    sock = socket.create_connection((addr.host, addr.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, n: int, where: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"server closed the connection during {where}")
        buf += chunk
    return bytes(buf)


def handshake(sock: socket.socket, export: str, where: str) -> ExportInfo:
    """The fixed newstyle handshake and NBD_OPT_GO on a connected blocking socket.

    Raises :class:`StoreError` for a server that speaks something else or
    refuses the export, and OSError/ConnectionError if the connection fails.
    """
    magic, opt_magic, flags = struct.unpack(">QQH", _recv_exact(sock, 18, "the handshake"))
    if magic != NBDMAGIC:
        raise StoreError(f"{where} is not an NBD server (greeting {magic:#018x})")
    if opt_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
        raise StoreError(f"{where} does not speak the fixed newstyle NBD handshake (oldstyle server?)")
    no_zeroes = bool(flags & FLAG_NO_ZEROES)
    sock.sendall(struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | (FLAG_C_NO_ZEROES if no_zeroes else 0)))
    name = export.encode()
    infos = (INFO_EXPORT, INFO_BLOCK_SIZE)
    data = struct.pack(">I", len(name)) + name + struct.pack(f">H{len(infos)}H", len(infos), *infos)
    sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    size: int | None = None
    tflags = 0
    blocks = (1, 4096, 32 << 20)
    for _ in range(MAX_OPTION_REPLIES):
        rmagic, option, rtype, length = struct.unpack(">QIII", _recv_exact(sock, 20, "NBD_OPT_GO"))
        if rmagic != REPLY_MAGIC_OPT or option != OPT_GO:
            raise StoreError(f"{where}: bad option reply (magic {rmagic:#x}, option {option})")
        if length > MAX_OPTION_REPLY:
            raise StoreError(f"{where}: option reply of {length} bytes (more than {MAX_OPTION_REPLY})")
        payload = _recv_exact(sock, length, "NBD_OPT_GO")
        if rtype & REP_FLAG_ERROR:
            name_of = _REP_ERRORS.get(rtype, f"error reply {rtype:#x}")
            message = payload.decode("utf-8", "replace")
            raise StoreError(
                f"{where}: export {export!r} refused: {name_of}" + (f" ({message})" if message else "")
            )
        if rtype == REP_ACK:
            break
        if rtype == REP_INFO and length >= 2:
            (info,) = struct.unpack(">H", payload[:2])
            if info == INFO_EXPORT and length == 12:
                size, tflags = struct.unpack(">QH", payload[2:])
            elif info == INFO_BLOCK_SIZE and length == 14:
                blocks = struct.unpack(">III", payload[2:])
    else:
        raise StoreError(f"{where}: more than {MAX_OPTION_REPLIES} replies to NBD_OPT_GO")
    if size is None:
        raise StoreError(f"{where}: NBD_OPT_GO succeeded without NBD_INFO_EXPORT (no export size)")
    return ExportInfo(size, tflags, *blocks)


def encode_read(handle: int, offset: int, length: int) -> bytes:
    """An NBD_CMD_READ request."""
    return _REQUEST.pack(REQUEST_MAGIC, 0, CMD_READ, handle, offset, length)


def encode_disc() -> bytes:
    """An NBD_CMD_DISC request (the server closes after the requests before it)."""
    return _REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0)
