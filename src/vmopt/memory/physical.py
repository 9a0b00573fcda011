"""Guest physical memory: sparse 4 KiB frames, or a mapped raw image.

A thin wrapper over the Rust core's ``vmopt._core.PhysMem``. A frame costs
host memory only once something writes to it; reads of an untouched frame
see zeros. Frames are handed out by a buddy allocator, so page-table pages
and data pages come from one pool and never collide. Words are accessed
atomically in the core, so walkers on other threads may set accessed/dirty
bits while tables are edited.

The core takes unsigned 64-bit integers. Argument checks it cannot do (not
an int, negative, wider than 64 bits) stay here and give the same errors;
everything else is validated once, in the core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Final, NoReturn, cast

from vmopt import _core
from vmopt.errors import AddressError, ConfigError, PhysicalAccessError, ReadOnlyMemoryError, bad_input
from vmopt.memory.buddy import BuddyAllocator
from vmopt.units import format_size

__all__ = ["ALLOC_ORDERS", "FRAME_SHIFT", "FRAME_SIZE", "PhysicalMemory"]

log = logging.getLogger(__name__)

FRAME_SHIFT: Final = 12
FRAME_SIZE: Final = 1 << FRAME_SHIFT
_FRAME_MASK: Final = FRAME_SIZE - 1
_SAVE_CHUNK: Final = 16 << 20

#: Block sizes ``alloc`` hands out, mapped to their buddy order.
ALLOC_ORDERS: Final = {4096: 0, 2 << 20: 9, 1 << 30: 18}
_SIZES: Final = {size: size for size in ALLOC_ORDERS}


def block_size(size: object, what: str) -> int:
    """``size`` as the int block size the core takes, or the ConfigError naming ``what``.

    An int is checked by the core; any other value (a float, a numpy
    integer) is accepted when it equals one of the sizes, as a dict key would.
    """
    if type(size) is int:
        try:
            _core.PhysMem.block_order(size, what)
            return size
        except OverflowError:
            key = None  # negative or past 2**64
    else:
        try:
            key = _SIZES.get(size)  # type: ignore[call-overload]
        except TypeError:  # unhashable: a list, an array
            key = None
    if not isinstance(key, int):
        raise ConfigError(f"{what} size must be 4 KiB, 2 MiB or 1 GiB, got {size!r}")
    return key


class _ClosedImage:
    """Stands in for the core of a closed image: every use raises."""

    def __getattr__(self, name: str) -> NoReturn:
        raise ValueError("memory image is closed")


class PhysicalMemory:
    """Byte-addressable guest physical memory of ``size`` bytes.

    ``read``/``write`` work on any range and cross frames; out-of-range
    accesses raise :class:`PhysicalAccessError` before anything changes.
    ``alloc``/``free`` manage naturally aligned 4 KiB, 2 MiB and 1 GiB blocks.
    """

    core: _core.PhysMem
    """The core object this wraps; other layers' bindings (page tables, MMUs) take it."""

    def __init__(self, size: int, *, base: int = 0, node: int | None = None) -> None:
        if not isinstance(size, int) or size < 0 or isinstance(size, bool):
            raise ConfigError(f"memory size must be a positive multiple of 4096, got {size!r}")
        if not isinstance(base, int) or base < 0 or isinstance(base, bool):
            raise ConfigError(f"memory base must be a non-negative multiple of 4096, got {base!r}")
        if node is not None and (not isinstance(node, int) or isinstance(node, bool) or node < 0):
            raise ConfigError(f"node must be None or an int >= 0, got {node!r}")
        try:
            core = _core.PhysMem(size, base, node)
        except OverflowError:  # size or base past 2**64
            raise ConfigError(
                f"frames [{base >> FRAME_SHIFT:#x}, {(base + size) >> FRAME_SHIFT:#x})"
                " exceed the 64-bit physical space"
            ) from None
        self._attach(core)

    def _attach(self, core: _core.PhysMem) -> None:
        self.core = core
        self.base: int = core.base
        self.size: int = core.size
        self.end: int = self.base + self.size
        self.writable: bool = core.writable
        self._kind = "image" if core.is_image else "sparse"
        self._allocator: BuddyAllocator | None = None

    # -- construction from an image -------------------------------------------------

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], writable: bool = False, *, copy_on_write: bool = False
    ) -> PhysicalMemory:
        """Memory backed by a raw image (a guest memory dump), mapped, not loaded.

        Physical address 0 is the first byte of the file. The image's frames
        are in use by the guest as far as vmopt knows, so the allocator starts
        empty; ``free()`` donates frames to it. With ``writable=True`` writes
        (including accessed/dirty bits set by walks) go to the file; with
        ``copy_on_write=True`` the memory is writable but writes stay in this
        process (a private mapping) and the file is never changed.
        """
        if not isinstance(writable, bool | int) or not isinstance(copy_on_write, bool | int):
            raise bad_input("PhysicalMemory.from_file", writable=writable, copy_on_write=copy_on_write)
        mode = "cow" if copy_on_write else "w" if writable else "r"
        if not isinstance(path, str | os.PathLike):
            raise bad_input("PhysicalMemory.from_file", path=path)
        if os.path.isdir(path):
            raise ConfigError(f"memory image {os.fspath(path)!r} is a directory, not a file")
        mem = cls.__new__(cls)
        mem._attach(_core.PhysMem.from_file(os.fspath(path), mode))
        log.debug("mapped image %s (%s, mode %s)", path, format_size(mem.size), mode)
        return mem

    def close(self) -> None:
        """Release the image mapping, if any.

        The mapping goes once nothing built on :attr:`core` (a page table)
        still holds it; this object can no longer be used for an image.
        """
        if self._kind == "image":
            self.core = cast(_core.PhysMem, _ClosedImage())
            self._kind = "closed image"

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PhysicalMemory({format_size(self.size)} at {self.base:#x}, {self._kind})"

    # -- checks ---------------------------------------------------------------------

    def contains(self, pa: int, n: int = 1) -> bool:
        """True if ``[pa, pa+n)`` lies inside this memory."""
        if not (isinstance(pa, int) and isinstance(n, int)):
            raise bad_input("contains", pa=pa, n=n)
        return self.base <= pa and pa + n <= self.end

    def _access_error(self, pa: object, n: object) -> PhysicalAccessError:
        """The error for a range the core cannot take (not ints, negative, past 2**64)."""
        if not isinstance(pa, int) or not isinstance(n, int):
            return PhysicalAccessError(f"physical address and length must be ints, got {pa!r}, {n!r}")
        if n < 0:
            return PhysicalAccessError(f"negative length {n}")
        return PhysicalAccessError(
            f"physical access [{pa:#x}, {pa + n:#x}) is outside memory [{self.base:#x}, {self.end:#x})"
        )

    def _word_error(self, pa: int) -> AddressError:
        if pa & 7:
            return AddressError(f"64-bit access at {pa:#x} is not 8-byte aligned")
        return self._access_error(pa, 8)

    # -- byte access ---------------------------------------------------------------

    def read(self, pa: int, n: int) -> bytes:
        """Read ``n`` bytes at physical address ``pa``."""
        if isinstance(pa, int) and isinstance(n, int) and n >= 0:
            try:
                return self.core.read(pa, n)
            except OverflowError:
                pass
        raise self._access_error(pa, n)

    def write(self, pa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (bytes or any buffer) at physical address ``pa``.

        Every byte of the buffer is written: a 3-element uint64 array is 24
        bytes, a non-contiguous array its elements in C order.
        """
        if type(data) is bytes:
            n = len(data)
        else:
            try:
                view = memoryview(data)
            except TypeError:
                raise bad_input("PhysicalMemory.write", data=data) from None
            n = view.nbytes
            if not view.c_contiguous:
                data = view.tobytes()
        if isinstance(pa, int) and not isinstance(pa, bool):
            try:
                self.core.write(pa, data)
                return
            except OverflowError:
                pass
        raise self._access_error(pa, n)

    def read_u64(self, pa: int) -> int:
        """Read a little-endian 64-bit word (a PTE); ``pa`` must be 8-byte aligned."""
        try:
            return self.core.read_u64(pa)
        except OverflowError:
            raise self._word_error(pa) from None
        except TypeError:
            raise bad_input("read_u64", pa=pa) from None

    def write_u64(self, pa: int, value: int) -> None:
        """Write a little-endian 64-bit word; ``pa`` must be 8-byte aligned."""
        try:
            self.core.write_u64(pa, value)
        except TypeError:
            raise bad_input("write_u64", pa=pa, value=value) from None
        except OverflowError:
            if not 0 <= pa < 1 << 64:  # else the value does not fit
                raise self._word_error(pa) from None
            self.core.read_u64(pa)  # the address's own error, if any
            if not self.writable:
                raise ReadOnlyMemoryError(f"memory is read-only; 8-byte write at {pa:#x} refused") from None
            raise AddressError(f"write_u64 at {pa:#x}: value {value!r} does not fit in 64 bits") from None

    def frame_is_zero(self, pa: int) -> bool:
        """True if the 4 KiB frame at ``pa`` holds only zeros."""
        try:
            return self.core.frame_is_zero(pa)
        except TypeError:
            raise bad_input("frame_is_zero", pa=pa) from None
        except OverflowError:
            raise self._access_error(pa & ~_FRAME_MASK, FRAME_SIZE) from None

    def zero(self, pa: int, n: int) -> None:
        """Zero ``[pa, pa+n)``; whole sparse frames are dropped, costing nothing."""
        if isinstance(pa, int) and isinstance(n, int) and n >= 0:
            try:
                self.core.zero(pa, n)
                return
            except OverflowError:
                pass
        raise self._access_error(pa, n)

    def resident_frames(self) -> int:
        """Frames that cost host memory (written at least once, or the image's)."""
        return self.core.resident_frames()

    def iter_resident(self) -> Iterator[int]:
        """Physical addresses of the frames that hold host memory, in order."""
        return iter(self.core.resident_pas())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the memory as a raw image (a sparse file: untouched frames are holes)."""
        if self.base:
            raise ConfigError(f"only memory based at 0 can be saved as an image, base is {self.base:#x}")
        if not isinstance(path, str | os.PathLike):
            raise bad_input("PhysicalMemory.save", path=path)
        try:
            self._save(path)
        except OSError as exc:
            raise ConfigError(
                f"cannot save memory image to {os.fspath(path)!r}: {exc.strerror or exc}"
            ) from exc

    def _save(self, path: str | os.PathLike[str]) -> None:
        core = self.core
        with open(path, "wb") as f:
            f.truncate(self.size)
            if core.is_image:
                for off in range(0, self.size, _SAVE_CHUNK):
                    f.write(core.read(off, min(_SAVE_CHUNK, self.size - off)))
                return
            for pa in core.resident_pas():
                f.seek(pa)
                f.write(core.read(pa, FRAME_SIZE))

    # -- frame allocation ------------------------------------------------------------

    @property
    def allocator(self) -> BuddyAllocator:
        """The buddy allocator that owns this memory's frames (an image's starts full)."""
        if self._allocator is None:
            self._allocator = BuddyAllocator.from_core(self.core.allocator(0))
        return self._allocator

    def alloc(self, size: int = FRAME_SIZE) -> int:
        """Allocate a zero-filled, naturally aligned block; return its address.

        ``size`` is 4096, 2 MiB or 1 GiB. Raises :class:`OutOfFramesError`.
        """
        try:
            return self.core.alloc(size)
        except (TypeError, OverflowError):
            return self.core.alloc(block_size(size, "alloc"))

    def free(self, pa: int, size: int = FRAME_SIZE) -> None:
        """Return a block from :meth:`alloc` (or donate an image's frames)."""
        try:
            self.core.free(pa, size)
            return
        except (TypeError, OverflowError):
            size = block_size(size, "free")  # the size's own error comes first
        if isinstance(pa, int):
            try:
                self.core.free(pa, size)
                return
            except OverflowError:
                pass
        raise self._access_error(pa, size)

    @property
    def free_bytes(self) -> int:
        """Bytes the allocator can still hand out."""
        return self.core.free_bytes()
