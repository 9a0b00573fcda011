"""Line parsers for the text and Lackey trace formats.

Each format has two parsers that agree by construction:

* a vectorized NumPy *fast path* that handles a whole block of lines at
  once, but only accepts lines in the canonical shape (e.g. ``W 0x1f``,
  `` L 04222cac,8``); it never rejects anything, it only declines;
* a per-line Python *reference parser* that defines the format and gives
  precise error messages. It runs only on lines the fast path declined
  (comments, banners, unusual spacing, errors), so it costs nothing on
  well-formed traces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vmopt.traces.chunk import AccessKind

__all__ = [
    "BadLine",
    "BlockResult",
    "is_lackey_banner",
    "parse_block",
    "parse_lackey_line",
    "parse_text_line",
]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_MAX_HEX_DIGITS = 16
_MAX_SIZE_DIGITS = 6


def _lut(table: dict[int, int], default: int = 255) -> U8:
    """A read-only byte -> value lookup table."""
    lut = np.full(256, default, np.uint8)
    for byte, value in table.items():
        lut[byte] = value
    lut.flags.writeable = False
    return lut


# Access letters of the text format (either case) and of Lackey records.
# Lackey's M (modify = read-modify-write) counts as ONE write access.
_TEXT_KIND_OF = {
    "R": AccessKind.READ,
    "W": AccessKind.WRITE,
    "X": AccessKind.FETCH,
    "I": AccessKind.FETCH,
    "L": AccessKind.READ,
    "S": AccessKind.WRITE,
    "M": AccessKind.WRITE,
}
_LACKEY_KIND_OF = {
    "I": AccessKind.FETCH,
    "L": AccessKind.READ,
    "S": AccessKind.WRITE,
    "M": AccessKind.WRITE,
}

# Byte -> nibble value, 255 for anything that is not a hex digit.
_HEX_LUT = _lut({ord(c): int(c, 16) for c in "0123456789abcdefABCDEF"})
_DEC_OK = _lut({ord(c): 1 for c in "0123456789"}, 0).astype(np.bool_)
_SEP_LUT = _lut({ord(c): 1 for c in " \t,"}, 0).astype(np.bool_)
_KIND_LUT = _lut({ord(c): int(k) for letter, k in _TEXT_KIND_OF.items() for c in (letter, letter.lower())})
_LACKEY_LUT = _lut({ord(c): int(k) for c, k in _LACKEY_KIND_OF.items()})


_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_TEXT_SPLIT_RE = re.compile(r"[\s,]+")
_LACKEY_RECORD_RE = re.compile(r"([ILSM])\s+([0-9a-fA-F]+),\s*(\d+)")
_LACKEY_BANNER_RE = re.compile(r"==\d+==")
_LACKEY_SB_RE = re.compile(r"SB\s+[0-9a-fA-F]+")


class BadLine(Exception):
    """A line the reference parser rejects; ``reason`` completes ``file:line: ...``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _parse_hex(token: str) -> int:
    digits = token[2:] if token[:2] in ("0x", "0X") else token
    if not _HEX_RE.fullmatch(digits):
        raise BadLine(f"cannot parse {token!r} as an address")
    value = int(digits, 16)
    if value >= 1 << 64:
        raise BadLine(f"address {token!r} does not fit in 64 bits")
    return value


def _decode(line: bytes) -> str:
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise BadLine(f"non-ASCII bytes in line {line[:80]!r}") from None


def is_lackey_banner(line: bytes) -> bool:
    """Whether ``line`` is a Valgrind ``==PID==`` message line."""
    return _LACKEY_BANNER_RE.match(line.strip().decode("ascii", errors="replace")) is not None


def parse_text_line(line: bytes) -> tuple[int, int] | None:
    """Parse one text-format line into ``(address, kind)``; ``None`` if blank/comment.

    Grammar: ``[KIND sep] ADDRESS`` where KIND is one of R W X (read, write,
    fetch) or I L S M (as in Lackey), any case; sep is whitespace and/or a
    comma; ADDRESS is hex with an optional ``0x``. ``#`` starts a comment.
    """
    text = _decode(line).split("#", 1)[0].strip()
    if not text:
        return None
    tokens = _TEXT_SPLIT_RE.split(text)
    if len(tokens) == 1:
        return _parse_hex(tokens[0]), AccessKind.READ
    if len(tokens) == 2:
        kind = _TEXT_KIND_OF.get(tokens[0].upper())
        if kind is None:
            raise BadLine(f"unknown access kind {tokens[0]!r} (expected one of R W X I L S M)")
        return _parse_hex(tokens[1]), kind
    raise BadLine(f"expected '[KIND] ADDRESS', got {text!r}")


def parse_lackey_line(line: bytes) -> tuple[int, int] | None:
    """Parse one Lackey line into ``(address, kind)``; ``None`` for banners, ``SB`` and blanks.

    Records are ``I  addr,size`` (fetch), `` L addr,size`` (read),
    `` S addr,size`` (write) and `` M addr,size`` (modify, counted as one
    write). The size is checked but not kept.
    """
    text = _decode(line).strip()
    if not text or _LACKEY_BANNER_RE.match(text) or _LACKEY_SB_RE.fullmatch(text):
        return None
    m = _LACKEY_RECORD_RE.fullmatch(text)
    if m is None:
        raise BadLine(f"cannot parse {text!r} as a Lackey record")
    return _parse_hex(m.group(2)), _LACKEY_KIND_OF[m.group(1)]


@dataclass(frozen=True, slots=True)
class BlockResult:
    """Records parsed from a block of lines.

    ``bad`` lists rejected lines as ``(index in block, reason, raw line)``.
    """

    addrs: U64
    kinds: U8
    n_lines: int
    bad: list[tuple[int, str, bytes]]


class _Block:
    """A block of bytes with per-byte lookup tables shared by the field parsers."""

    def __init__(self, buf: U8) -> None:
        self.buf = buf
        nib = _HEX_LUT[buf]
        # Prefix count of non-hex bytes: a field is valid iff it adds nothing.
        self.nonhex = np.zeros(buf.shape[0] + 1, np.int32)
        np.cumsum(nib == 255, dtype=np.int32, out=self.nonhex[1:])
        # Nibble values with every non-hex byte read as 0 (used as padding).
        nib[nib == 255] = 0
        self.nib = nib

    def hex_fields(self, start: I64, end: I64) -> tuple[U64, npt.NDArray[np.bool_]]:
        """Parse ``buf[start:end]`` per row as hex; returns values and a validity mask.

        Works column by column from the last digit, so the cost scales with
        the longest field in the block rather than with 16 digits. Positions
        before ``start`` are clamped to ``start - 1``, which always holds a
        non-hex byte (separator, ``x`` of ``0x`` or the previous newline) or
        lies outside the line range, and so contributes 0.
        """
        length = end - start
        ok = (length >= 1) & (length <= _MAX_HEX_DIGITS)
        start = np.clip(start, 0, end)  # rows with start > end are already not ok
        ok &= self.nonhex[end] == self.nonhex[start]
        n = start.shape[0]
        values = np.zeros(n, np.uint64)
        if n == 0:
            return values, ok
        width = int(np.clip(length.max(), 0, _MAX_HEX_DIGITS))
        floor = start - 1
        for j in range(width):
            idx = np.maximum(end - 1 - j, floor)
            digit = self.nib[idx].astype(np.uint64)
            if j:
                digit <<= np.uint64(4 * j)
            values |= digit
        return values, ok


def _split_lines(buf: U8) -> tuple[I64, I64]:
    """Line [start, end) offsets of ``buf`` (which ends with ``\\n``), without ``\\r``."""
    nl = np.flatnonzero(buf == 10)
    starts = np.empty(nl.shape[0], np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl.astype(np.int64)
    ends -= (ends > starts) & (buf[ends - 1] == 13)
    return starts, ends


def _fast_text(buf: U8, starts: I64, ends: I64) -> tuple[U64, U8, npt.NDArray[np.bool_]]:
    last = buf.shape[0] - 1
    length = ends - starts
    b0 = buf[starts]
    b1 = buf[np.minimum(starts + 1, last)]
    b2 = buf[np.minimum(starts + 2, last)]
    kinds = _KIND_LUT[b0]
    has_kind = (kinds != 255) & (length >= 3) & _SEP_LUT[b1] & ~_SEP_LUT[b2]
    kinds = np.where(has_kind, kinds, np.uint8(AccessKind.READ))
    a = starts + 2 * has_kind
    c0 = buf[np.minimum(a, last)]
    c1 = buf[np.minimum(a + 1, last)]
    has_0x = (ends - a >= 3) & (c0 == ord("0")) & ((c1 | 0x20) == ord("x"))
    a += 2 * has_0x
    addrs, ok = _Block(buf).hex_fields(a, ends)
    return addrs, kinds, ok


def _fast_lackey(buf: U8, starts: I64, ends: I64) -> tuple[U64, U8, npt.NDArray[np.bool_]]:
    n = starts.shape[0]
    last = buf.shape[0] - 1
    b0 = buf[starts]
    b1 = buf[np.minimum(starts + 1, last)]
    b2 = buf[np.minimum(starts + 2, last)]
    is_i = (b0 == ord("I")) & (b1 == 32)
    is_lsm = (b0 == 32) & (_LACKEY_LUT[b1] != 255) & (b1 != ord("I"))
    kinds = np.where(is_i, np.uint8(AccessKind.FETCH), _LACKEY_LUT[b1])
    ok = (is_i | is_lsm) & (b2 == 32) & (ends - starts >= 6)
    commas = np.flatnonzero(buf == ord(","))
    if commas.shape[0] == 0:
        return np.zeros(n, np.uint64), kinds, np.zeros(n, np.bool_)
    ci = np.searchsorted(commas, starts + 3)
    ok &= ci < commas.shape[0]
    comma = commas[np.minimum(ci, commas.shape[0] - 1)].astype(np.int64)
    ok &= comma < ends
    addrs, hex_ok = _Block(buf).hex_fields(starts + 3, comma)
    ok &= hex_ok
    size_len = ends - comma - 1
    ok &= (size_len >= 1) & (size_len <= _MAX_SIZE_DIGITS)
    nondec = np.zeros(buf.shape[0] + 1, np.int32)
    np.cumsum(~_DEC_OK[buf], dtype=np.int32, out=nondec[1:])
    ok &= nondec[ends] == nondec[np.minimum(comma + 1, ends)]
    return addrs, kinds, ok


def parse_block(data: bytes | bytearray, fmt: str) -> BlockResult:
    """Parse a block of complete lines of format ``fmt`` ("text" or "lackey").

    ``data`` must end with ``\n``. Lines the fast path declines go through
    the reference parser; those it rejects are reported in
    :attr:`BlockResult.bad` (and left out of the records) so the caller can
    raise or count them.
    """
    buf = np.frombuffer(data, np.uint8)
    starts, ends = _split_lines(buf)
    fast = _fast_lackey if fmt == "lackey" else _fast_text
    addrs, kinds, ok = fast(buf, starts, ends)
    declined = np.flatnonzero(~ok & (ends > starts))
    bad: list[tuple[int, str, bytes]] = []
    if declined.shape[0] == 0 and ok.all():
        return BlockResult(addrs, kinds, starts.shape[0], bad)
    reference = parse_lackey_line if fmt == "lackey" else parse_text_line
    keep = ok.copy()
    for idx in declined.tolist():
        line = bytes(data[starts[idx] : ends[idx]])
        try:
            rec = reference(line)
        except BadLine as exc:
            bad.append((idx, exc.reason, line))
            continue
        if rec is not None:
            addrs[idx], kinds[idx] = rec
            keep[idx] = True
    return BlockResult(addrs[keep], kinds[keep], starts.shape[0], bad)
