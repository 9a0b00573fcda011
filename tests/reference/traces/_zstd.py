"""Streaming zstd decompression that notices truncated input.

``zstandard``'s ``stream_reader`` reports a clean EOF when the compressed
data stops in the middle of a frame, which would silently turn a cut-off
trace into a shorter (and possibly wrong, if a line is cut) one. This module
follows the frame and block headers of the compressed bytes as they stream
past (a few Python operations per <= 128 KiB block) so that EOF inside a
frame can be reported as an error. Output stays bounded because the actual
decompression is still done by ``stream_reader``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["FrameTracker", "ZstdReader"]

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class FrameTracker:
    """Tracks zstd frame structure over a byte stream fed in pieces.

    ``at_boundary`` is true when the bytes fed so far end exactly between
    frames. Unknown or reserved structures stop tracking (``lost``): the
    decompressor itself will reject such data.
    """

    def __init__(self) -> None:
        self._pending = b""  # bytes of a header being collected
        self._need = 4  # header bytes wanted in the current state
        self._skip = 0  # payload bytes to pass over
        self._state = "magic"
        self._checksum = False
        self.lost = False

    @property
    def at_boundary(self) -> bool:
        """Whether the stream so far consists of whole frames only."""
        return self.lost or (self._state == "magic" and not self._pending and not self._skip)

    def feed(self, data: bytes) -> None:
        """Advance over ``data``."""
        pos = 0
        n = len(data)
        while pos < n and not self.lost:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                if self._skip == 0 and self._state == "payload":
                    self._state = "block"
                    self._need = 3
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                header, self._pending = self._pending, b""
                self._on_header(header)

    def _on_header(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = "skippable", 4
            else:
                self.lost = True
        elif state == "skippable":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            fhd = header[0]
            fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
            self._checksum = bool((fhd >> 2) & 1)
            fcs = (1 if single else 0) if fcs_flag == 0 else (2, 4, 8)[fcs_flag - 1]
            self._skip = (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + fcs
            self._state, self._need = "block", 3
        elif state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                self.lost = True
                return
            self._skip = 1 if kind == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4
            else:
                self._state = "payload" if self._skip else "block"
                self._need = 3


class _Tee:
    """Reads from ``raw`` and shows every byte to a :class:`FrameTracker`."""

    def __init__(self, raw: _Readable, tracker: FrameTracker) -> None:
        self._raw = raw
        self._tracker = tracker

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._tracker.feed(data)
        return data


class ZstdReader:
    """A zstd ``stream_reader`` (across frames) that raises ``EOFError`` on truncation."""

    def __init__(self, raw: _Readable) -> None:
        import zstandard

        self._tracker = FrameTracker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _Tee(raw, self._tracker),  # type: ignore[arg-type]
            read_across_frames=True,
            closefd=False,
        )

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._reader.read(size)
        if not data and size != 0 and not self._tracker.at_boundary:
            raise EOFError("compressed data ends in the middle of a zstd frame")
        return data

    def close(self) -> None:
        self._reader.close()  # type: ignore[no-untyped-call]
