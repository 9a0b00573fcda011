"""Guest physical memory: sparse 4 KiB frames, or an mmap of a raw image.

A frame costs host memory only once something writes to it; reads of an
untouched frame see zeros. Frames are handed out by a buddy allocator, so
page-table pages and data pages come from one pool and never collide.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Iterator
from typing import Final

from reference.memory.buddy import BuddyAllocator
from vmopt.errors import AddressError, ConfigError, PhysicalAccessError, ReadOnlyMemoryError
from vmopt.units import format_size

__all__ = ["FRAME_SHIFT", "FRAME_SIZE", "PhysicalMemory"]

log = logging.getLogger(__name__)

FRAME_SHIFT: Final = 12
FRAME_SIZE: Final = 1 << FRAME_SHIFT
_FRAME_MASK: Final = FRAME_SIZE - 1
_U64 = struct.Struct("<Q")
_ZERO_FRAME: Final = bytes(FRAME_SIZE)

#: Block sizes ``alloc`` hands out, mapped to their buddy order.
ALLOC_ORDERS: Final = {4096: 0, 2 << 20: 9, 1 << 30: 18}


class PhysicalMemory:
    """Byte-addressable guest physical memory of ``size`` bytes.

    ``read``/``write`` work on any range and cross frames; out-of-range
    accesses raise :class:`PhysicalAccessError` before anything changes.
    ``alloc``/``free`` manage naturally aligned 4 KiB, 2 MiB and 1 GiB blocks.
    """

    def __init__(self, size: int, *, base: int = 0, node: int | None = None) -> None:
        if not isinstance(size, int) or size <= 0 or size & _FRAME_MASK:
            raise ConfigError(f"memory size must be a positive multiple of 4096, got {size!r}")
        if not isinstance(base, int) or base < 0 or base & _FRAME_MASK:
            raise ConfigError(f"memory base must be a non-negative multiple of 4096, got {base!r}")
        self.base = base
        self.size = size
        self.end = base + size
        self.writable = True
        self._frames: dict[int, bytearray] = {}
        self._image: mmap.mmap | None = None
        self._allocator: BuddyAllocator | None = BuddyAllocator(
            base >> FRAME_SHIFT, size >> FRAME_SHIFT, node=node
        )

    # -- construction from an image -------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], writable: bool = False) -> PhysicalMemory:
        """Memory backed by a raw image (a guest memory dump), mapped, not loaded.

        Physical address 0 is the first byte of the file. The image's frames
        are in use by the guest as far as vmopt knows, so the allocator starts
        empty; ``free()`` donates frames to it. With ``writable=True`` writes
        (including accessed/dirty bits set by walks) go to the file.
        """
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as exc:
            raise ConfigError(f"cannot open memory image {os.fspath(path)!r}: {exc}") from exc
        try:
            length = os.fstat(fd).st_size
            if length == 0 or length & _FRAME_MASK:
                raise ConfigError(
                    f"memory image {os.fspath(path)!r} has {length} bytes;"
                    " expected a positive multiple of 4096"
                )
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            image = mmap.mmap(fd, length, access=access)
        finally:
            os.close(fd)
        mem = cls.__new__(cls)
        mem.base = 0
        mem.size = length
        mem.end = length
        mem.writable = writable
        mem._frames = {}
        mem._image = image
        mem._allocator = None
        log.debug("mapped image %s (%s, writable=%s)", path, format_size(length), writable)
        return mem

    def close(self) -> None:
        """Release the image mapping, if any."""
        if self._image is not None:
            self._image.close()
            self._image = None

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "image" if self._image is not None else "sparse"
        return f"PhysicalMemory({format_size(self.size)} at {self.base:#x}, {kind})"

    # -- checks -------------------------------------------------------------------

    def contains(self, pa: int, n: int = 1) -> bool:
        """True if ``[pa, pa+n)`` lies inside this memory."""
        return self.base <= pa and pa + n <= self.end

    def _check(self, pa: int, n: int) -> None:
        if not isinstance(pa, int) or not isinstance(n, int):
            raise PhysicalAccessError(f"physical address and length must be ints, got {pa!r}, {n!r}")
        if n < 0:
            raise PhysicalAccessError(f"negative length {n}")
        if pa < self.base or pa + n > self.end:
            raise PhysicalAccessError(
                f"physical access [{pa:#x}, {pa + n:#x}) is outside memory [{self.base:#x}, {self.end:#x})"
            )

    # -- byte access ---------------------------------------------------------------

    def read(self, pa: int, n: int) -> bytes:
        """Read ``n`` bytes at physical address ``pa``."""
        self._check(pa, n)
        if self._image is not None:
            return self._image[pa : pa + n]
        out = bytearray(n)
        pos = 0
        frames = self._frames
        while pos < n:
            cur = pa + pos
            off = cur & _FRAME_MASK
            chunk = min(FRAME_SIZE - off, n - pos)
            frame = frames.get(cur >> FRAME_SHIFT)
            if frame is not None:
                out[pos : pos + chunk] = frame[off : off + chunk]
            pos += chunk
        return bytes(out)

    def write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at physical address ``pa``."""
        n = len(data)
        self._check(pa, n)
        if not self.writable:
            raise ReadOnlyMemoryError(f"memory is read-only; write of {n} bytes at {pa:#x} refused")
        if self._image is not None:
            self._image[pa : pa + n] = data
            return
        if n == FRAME_SIZE and not pa & _FRAME_MASK:
            self._frames[pa >> FRAME_SHIFT] = bytearray(data)  # a whole frame: one copy
            return
        view = memoryview(data).cast("B")
        pos = 0
        frames = self._frames
        while pos < n:
            cur = pa + pos
            off = cur & _FRAME_MASK
            chunk = min(FRAME_SIZE - off, n - pos)
            pfn = cur >> FRAME_SHIFT
            frame = frames.get(pfn)
            if frame is None:
                frame = frames[pfn] = bytearray(FRAME_SIZE)
            frame[off : off + chunk] = view[pos : pos + chunk]
            pos += chunk

    def read_u64(self, pa: int) -> int:
        """Read a little-endian 64-bit word (a PTE); ``pa`` must be 8-byte aligned."""
        if pa & 7 or pa < self.base or pa + 8 > self.end:
            self._check_word(pa)
        if self._image is not None:
            return int(_U64.unpack_from(self._image, pa)[0])
        frame = self._frames.get(pa >> FRAME_SHIFT)
        if frame is None:
            return 0
        return int(_U64.unpack_from(frame, pa & _FRAME_MASK)[0])

    def write_u64(self, pa: int, value: int) -> None:
        """Write a little-endian 64-bit word; ``pa`` must be 8-byte aligned."""
        if pa & 7 or pa < self.base or pa + 8 > self.end:
            self._check_word(pa)
        if not self.writable:
            raise ReadOnlyMemoryError(f"memory is read-only; 8-byte write at {pa:#x} refused")
        if not 0 <= value < 1 << 64:
            raise AddressError(f"write_u64 at {pa:#x}: value {value!r} does not fit in 64 bits")
        if self._image is not None:
            _U64.pack_into(self._image, pa, value)
            return
        pfn = pa >> FRAME_SHIFT
        frame = self._frames.get(pfn)
        if frame is None:
            if value == 0:
                return
            frame = self._frames[pfn] = bytearray(FRAME_SIZE)
        _U64.pack_into(frame, pa & _FRAME_MASK, value)

    def _check_word(self, pa: int) -> None:
        if pa & 7:
            raise AddressError(f"64-bit access at {pa:#x} is not 8-byte aligned")
        self._check(pa, 8)

    def frame_is_zero(self, pa: int) -> bool:
        """True if the 4 KiB frame at ``pa`` holds only zeros."""
        self._check(pa & ~_FRAME_MASK, FRAME_SIZE)
        if self._image is not None:
            start = pa & ~_FRAME_MASK
            return self._image[start : start + FRAME_SIZE] == _ZERO_FRAME
        frame = self._frames.get(pa >> FRAME_SHIFT)
        return frame is None or frame == _ZERO_FRAME

    def zero(self, pa: int, n: int) -> None:
        """Zero ``[pa, pa+n)``; whole sparse frames are dropped, costing nothing."""
        self._check(pa, n)
        if self._image is not None:
            self.write(pa, bytes(n))
            return
        end = pa + n
        head_end = min(end, (pa + _FRAME_MASK) & ~_FRAME_MASK)
        if head_end > pa:
            self.write(pa, bytes(head_end - pa))
        first, last = head_end >> FRAME_SHIFT, end >> FRAME_SHIFT
        if last - first > len(self._frames):
            for pfn in [p for p in self._frames if first <= p < last]:
                del self._frames[pfn]
        else:
            for pfn in range(first, last):
                self._frames.pop(pfn, None)
        tail = last << FRAME_SHIFT
        if end > tail >= head_end:
            self.write(tail, bytes(end - tail))

    def resident_frames(self) -> int:
        """Frames that cost host memory (written at least once, or the image's)."""
        if self._image is not None:
            return self.size >> FRAME_SHIFT
        return len(self._frames)

    def iter_resident(self) -> Iterator[int]:
        """Physical addresses of the frames that hold host memory, in order."""
        if self._image is not None:
            yield from range(0, self.size, FRAME_SIZE)
            return
        for pfn in sorted(self._frames):
            yield pfn << FRAME_SHIFT

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the memory as a raw image (a sparse file: untouched frames are holes)."""
        if self.base:
            raise ConfigError(f"only memory based at 0 can be saved as an image, base is {self.base:#x}")
        with open(path, "wb") as f:
            f.truncate(self.size)
            if self._image is not None:
                f.write(self._image[:])
                return
            for pfn in sorted(self._frames):
                f.seek(pfn << FRAME_SHIFT)
                f.write(self._frames[pfn])

    # -- frame allocation ------------------------------------------------------------

    @property
    def allocator(self) -> BuddyAllocator:
        """The buddy allocator that owns this memory's frames."""
        if self._allocator is None:
            # An image's frames all start in use: the guest owns them.
            self._allocator = BuddyAllocator(0, self.size >> FRAME_SHIFT)
            self._reserve_range(0, self.size >> FRAME_SHIFT)
        return self._allocator

    def _reserve_range(self, pfn: int, npages: int) -> None:
        assert self._allocator is not None
        end = pfn + npages
        while pfn < end:
            order = 18
            while order and (pfn & ((1 << order) - 1) or pfn + (1 << order) > end):
                order -= 1
            self._allocator.alloc_at(pfn, order)
            pfn += 1 << order

    def alloc(self, size: int = FRAME_SIZE) -> int:
        """Allocate a zero-filled, naturally aligned block; return its address.

        ``size`` is 4096, 2 MiB or 1 GiB. Raises :class:`OutOfFramesError`.
        """
        order = ALLOC_ORDERS.get(size)
        if order is None:
            raise ConfigError(f"alloc size must be 4 KiB, 2 MiB or 1 GiB, got {size!r}")
        pa = self.allocator.alloc(order) << FRAME_SHIFT
        if self.writable:
            self.zero(pa, size)
        return pa

    def free(self, pa: int, size: int = FRAME_SIZE) -> None:
        """Return a block from :meth:`alloc` (or donate an image's frames)."""
        order = ALLOC_ORDERS.get(size)
        if order is None:
            raise ConfigError(f"free size must be 4 KiB, 2 MiB or 1 GiB, got {size!r}")
        self._check(pa, size)
        self.allocator.free(pa >> FRAME_SHIFT, order)
        if self._image is None:
            self.zero(pa, size)

    @property
    def free_bytes(self) -> int:
        """Bytes the allocator can still hand out."""
        return self.allocator.free_pages << FRAME_SHIFT
