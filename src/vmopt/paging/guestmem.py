"""Guest-physical memory: the memory a host (stage-2) page table maps, run by the core.

``host_pt.guest_memory(base, size)`` is ``[base, base + size)`` of the
guest-physical addresses (GPAs) ``host_pt`` (EPT, NPT, G-stage) maps. Every
read and write walks the host table as the CPU's nested walker does (a
user access; reads need the read right, writes the write right; the host's
accessed/dirty bits set as hardware sets them) and then touches host memory
at the host-physical address. Nothing is cached: a host unmap, remap or
protect is seen by the next access. A GPA the host does not map, or maps
without the right, raises :class:`~vmopt.errors.PageFault` with
``stage="host"`` and ``gpa`` naming it; an access that crosses host pages
translates every page before the first byte moves.

A guest :class:`~vmopt.paging.PageTable` is built on it (``PageTable(gm,
"x86_64")``, ``PageTable.attach(gm, root, fmt)``): its tables are bytes in
host memory, read and written through the host, and its frames come from a
buddy allocator over ``[base, base + size)``, which the host must map whole
when the memory is made. ``TwoStage(guest_pt, host_pt)`` then reads the
guest's entries at the HPAs its host walks give.
"""

from __future__ import annotations

from typing import Any

from vmopt import _core
from vmopt.errors import AddressError, PhysicalAccessError, bad_input
from vmopt.paging.types import Translation, parse_access

__all__ = ["GuestMemory"]

_U64_LIMIT = 1 << 64


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64_LIMIT


class GuestMemory:
    """Guest-physical memory behind a host page table (made by ``PageTable.guest_memory``)."""

    core: _core.GuestMemory
    """The core object; ``PageTable`` builds guest tables on it."""

    def __init__(self, core: _core.GuestMemory, host: Any) -> None:
        if not isinstance(core, _core.GuestMemory):
            raise bad_input("GuestMemory (made by PageTable.guest_memory)", core=core)
        self.core = core
        #: The host page table (GPA -> HPA).
        self.host = host
        self.base: int = core.base
        self.size: int = core.size
        self.end: int = self.base + self.size
        self.writable: bool = core.writable

    def __repr__(self) -> str:
        return repr(self.core)

    @property
    def free_bytes(self) -> int:
        """Bytes the allocator of guest frames (for guest tables) can still hand out."""
        free: int = self.core.free_bytes
        return free

    def contains(self, gpa: int, n: int = 1) -> bool:
        """True if ``[gpa, gpa + n)`` lies inside this memory."""
        if not (isinstance(gpa, int) and isinstance(n, int)):
            raise bad_input("GuestMemory.contains", gpa=gpa, n=n)
        return self.base <= gpa and gpa + n <= self.end

    def _range_error(self, gpa: object, n: object) -> PhysicalAccessError:
        if not isinstance(gpa, int) or not isinstance(n, int):
            return PhysicalAccessError(f"guest-physical address and length must be ints, got {gpa!r}, {n!r}")
        if n < 0:
            return PhysicalAccessError(f"negative length {n}")
        return PhysicalAccessError(
            f"guest-physical access [{gpa:#x}, {gpa + n:#x}) is outside guest memory"
            f" [{self.base:#x}, {self.end:#x})"
        )

    def _word_error(self, gpa: object) -> AddressError:
        if isinstance(gpa, int) and gpa & 7:
            return AddressError(f"64-bit access at guest-physical {gpa:#x} is not 8-byte aligned")
        return self._range_error(gpa, 8)

    def read(self, gpa: int, n: int) -> bytes:
        """``n`` bytes at ``gpa``, read through the host table."""
        if _is_u64(gpa) and _is_u64(n):
            data: bytes = self.core.read(gpa, n)
            return data
        raise self._range_error(gpa, n)

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (any buffer) at ``gpa`` through the host table; refused whole if any
        page is outside this memory or refused by the host."""
        if type(data) is not bytes:
            try:
                view = memoryview(data)
            except TypeError:
                raise bad_input("GuestMemory.write", data=data) from None
            data = view.tobytes()
        if not _is_u64(gpa):
            raise self._range_error(gpa, len(data))
        self.core.write(gpa, data)

    def read_u64(self, gpa: int) -> int:
        """The little-endian 64-bit word at 8-byte aligned ``gpa``."""
        if not _is_u64(gpa):
            raise self._word_error(gpa)
        value: int = self.core.read_u64(gpa)
        return value

    def write_u64(self, gpa: int, value: int) -> None:
        """Store a little-endian 64-bit word at 8-byte aligned ``gpa``."""
        if not _is_u64(gpa):
            raise self._word_error(gpa)
        if not _is_u64(value):
            raise AddressError(
                f"write_u64 at guest-physical {gpa:#x}: value {value!r} does not fit in 64 bits"
            )
        self.core.write_u64(gpa, value)

    def translate(self, gpa: int, access: str = "r") -> Translation:
        """The host walk of ``gpa`` for ``access`` (``'r'``, ``'w'``, ``'x'``): ``pa`` is the HPA."""
        if not isinstance(access, str):
            raise bad_input("GuestMemory.translate", access=access)
        parse_access(access)
        if not _is_u64(gpa):
            raise AddressError(f"guest-physical address must be a 64-bit unsigned int, got {gpa!r}")
        t: Translation = self.core.translate(gpa, access)
        return t
