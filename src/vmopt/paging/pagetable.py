"""An address space whose page tables live in guest physical memory.

``PageTable`` edits the tree the way an OS kernel would (map, unmap, protect)
and walks it the way the MMU hardware would. The tables are the real bytes
in ``PhysicalMemory``, or in a host table's ``GuestMemory`` (every access
then host-translated); nothing about a mapping is cached here, so a real
CPU given the same memory and ``root`` translates every address the same way.

The work is done by a core page table (public attribute ``core``, a
``vmopt._core.PageTable``): walks set A/D bits with a compare-exchange and
take no lock; edits are serialised in the core and shoot down the core's
subscribers (MMUs) before table pages are freed. Python callbacks given to
:meth:`PageTable.subscribe` are called after that, before the edit returns.
Python keeps only the checks on values the core cannot take (non-ints,
negative or wider than 64 bits) and the parsing of ``perms`` strings.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Final

from vmopt import _core
from vmopt.errors import AddressError, ConfigError, MappingError, VmoptError, bad_input
from vmopt.memory.physical import FRAME_SIZE, PhysicalMemory
from vmopt.paging.aarch64 import AArch64
from vmopt.paging.format import CoreFormat, PagingFormat
from vmopt.paging.guestmem import GuestMemory
from vmopt.paging.hostfmt import AArch64Stage2, Ept, GStage, Npt
from vmopt.paging.riscv import RiscV
from vmopt.paging.types import Leaf, PageFault, Perm, Translation
from vmopt.paging.x86 import X86_64
from vmopt.units import format_size

__all__ = ["FORMATS", "Leaf", "PageFault", "PageTable", "make_format"]

#: Format names accepted by ``PageTable`` and their constructors.
FORMATS: dict[str, Callable[[], PagingFormat]] = {
    "x86_64": lambda: X86_64(4),
    "x86_64_5level": lambda: X86_64(5),
    "sv39": lambda: RiscV(3),
    "sv48": lambda: RiscV(4),
    "sv57": lambda: RiscV(5),
    "aarch64": lambda: AArch64(4096),
    "aarch64_16k": lambda: AArch64(16384),
    "aarch64_64k": lambda: AArch64(65536),
    "ept": lambda: Ept(4),
    "ept_5level": lambda: Ept(5),
    "npt": lambda: Npt(),
    "sv39x4": lambda: GStage(3),
    "sv48x4": lambda: GStage(4),
    "aarch64_s2": lambda: AArch64Stage2(4096),
    "aarch64_s2_16k": lambda: AArch64Stage2(16384),
    "aarch64_s2_64k": lambda: AArch64Stage2(65536),
}

Invalidation = Callable[[int, int], None]

_U64_LIMIT: Final = 1 << 64
_U64_MASK: Final = _U64_LIMIT - 1
#: What the core cannot take as a u64: the cue to word the error here.
_NOT_U64 = (TypeError, OverflowError)


def make_format(fmt: str | PagingFormat) -> PagingFormat:
    """A format object from its name (or the object itself)."""
    if isinstance(fmt, PagingFormat):
        return fmt
    factory = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if factory is None:
        raise ConfigError(f"unknown paging format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return factory()


def _is_u64(value: object) -> bool:
    return isinstance(value, int) and 0 <= value < _U64_LIMIT


def _max_tables(n: object) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < _U64_LIMIT:
        raise ConfigError(f"max_tables must be a positive int or None, got {n!r}")
    return n


class PageTable:
    """One guest address space: a tree of page tables rooted at ``root``.

    ``root`` is the value CR3 or satp points to. ``update_ad`` makes walks set
    the accessed and dirty bits as hardware does; turn it off for inspection.
    """

    def __init__(
        self,
        mem: PhysicalMemory | GuestMemory,
        fmt: str | PagingFormat = "x86_64",
        *,
        update_ad: bool | None = None,
        _root: int | None = None,
    ) -> None:
        if not isinstance(mem, PhysicalMemory | GuestMemory):
            raise bad_input("PageTable", mem=mem)
        #: The memory the tables live in: physical memory, or a host table's guest memory.
        self.mem = mem
        self.fmt = make_format(fmt)
        if not isinstance(self.fmt, CoreFormat):
            raise ConfigError(
                "PageTable needs a core-backed format (X86_64, RiscV or AArch64),"
                f" got {type(self.fmt).__name__}"
            )
        ad = None if update_ad is None else bool(update_ad)
        if _root is None:
            self.core = _core.PageTable(mem.core, self.fmt.core, ad)
        else:
            self.core = _core.PageTable.attach(mem.core, _root, self.fmt.core, ad)
        self.update_ad: bool = self.core.update_ad
        self.owns_root: bool = self.core.owns_root
        self.root: int = self.core.root
        self._sub_lock = threading.Lock()
        self._subscribers: list[weakref.ref[Invalidation]] = []
        #: perms already parsed and checked for this format -> their bits
        self._str_perms: dict[str, int] = {}
        self._perm_perms: dict[Perm, int] = {}
        self._core_walk = self.core.walk

    @classmethod
    def attach(
        cls,
        mem: PhysicalMemory | GuestMemory,
        root: int,
        fmt: str | PagingFormat = "x86_64",
        *,
        update_ad: bool | None = None,
    ) -> PageTable:
        """Open page tables that already exist in ``mem`` at ``root``."""
        if not _is_u64(root) or isinstance(root, bool):
            raise AddressError(f"page-table root must be a 4 KiB aligned address inside memory, got {root!r}")
        return cls(mem, fmt, update_ad=update_ad, _root=root)

    def __repr__(self) -> str:
        return f"PageTable({self.fmt.name}, root={self.root:#x})"

    def guest_memory(self, base: int = 0, size: int | None = None) -> GuestMemory:
        """The guest-physical memory ``[base, base + size)`` this host table maps, for guest
        page tables to be built on (``size`` None: up to the first GPA it does not map).

        The table must have a host format (EPT, NPT, G-stage) and map every
        page of the range now; see :class:`~vmopt.paging.GuestMemory`.
        """
        if not _is_u64(base) or isinstance(base, bool):
            raise AddressError(f"guest memory base must be a 4 KiB aligned 64-bit address, got {base!r}")
        if size is not None and (not _is_u64(size) or isinstance(size, bool)):
            raise AddressError(f"guest memory size must be a positive multiple of 4096 or None, got {size!r}")
        return GuestMemory(self.core.guest_memory(base, size), self)

    @property
    def name(self) -> str:
        """The format's name, e.g. ``'x86_64'``."""
        return self.fmt.name

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """Page sizes this format can map."""
        return self.fmt.page_sizes

    @property
    def generation(self) -> int:
        """Bumped by every change that shoots down TLBs (a seqlock for readers)."""
        gen: int = self.core.generation
        return gen

    # -- shootdown hooks ------------------------------------------------------------

    def subscribe(self, callback: Invalidation) -> None:
        """Call ``callback(va, size)`` after any change that may leave stale TLB entries.

        Bound methods are held weakly, so a dropped MMU unsubscribes itself.
        Callbacks run after the core has shot down its own subscribers.
        """
        ref: weakref.ref[Invalidation]
        if not callable(callback):
            raise bad_input("subscribe", callback=callback)
        if hasattr(callback, "__self__"):
            ref = weakref.WeakMethod(callback)
        else:
            ref = weakref.ref(callback)
        self.core.record_shootdowns()
        with self._sub_lock:
            self._subscribers.append(ref)

    def unsubscribe(self, callback: Invalidation) -> None:
        """Stop calling ``callback``."""
        with self._sub_lock:
            self._subscribers = [
                r for r in self._subscribers if (cb := r()) is not None and cb is not callback
            ]

    def _notify(self) -> None:
        """Pass the shootdowns the core recorded to the Python callbacks."""
        events = self.core.take_shootdowns()
        if not events:
            return
        with self._sub_lock:
            self._subscribers = [r for r in self._subscribers if r() is not None]
            refs = list(self._subscribers)
        for va, size in events:
            for ref in refs:
                cb = ref()
                if cb is not None:
                    cb(va, size)

    # -- walking --------------------------------------------------------------------

    def walk(
        self, va: int, access: str = "r", user: bool = False, *, update_ad: bool | None = None
    ) -> Translation:
        """Translate ``va`` as the MMU would, or raise :class:`PageFault`.

        ``access`` is ``'r'``, ``'w'`` or ``'x'``; ``'p'`` probes the tree
        without checking rights (what a TLB prefetcher does).
        """
        t: Translation = self._core_walk(va, access, user, update_ad)
        return t

    def translate(self, va: int, access: str = "r", user: bool = False) -> int:
        """The physical address of ``va`` (a walk without a TLB)."""
        pa: int = self.core.translate(va, access, user)
        return pa

    def lookup(self, va: int) -> Leaf | None:
        """The leaf PTE mapping ``va``, or None; no rights check, no A/D update."""
        leaf: Leaf | None = self.core.lookup(va)
        return leaf

    def batch_lookup(self, vaddrs: Any) -> list[Leaf | None]:
        """:meth:`lookup` for each address, in order (entries or None)."""
        try:
            out: list[Leaf | None] = self.core.batch_lookup(vaddrs)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("batch_lookup", exc, vaddrs=vaddrs) from None
        return out

    def walk_path(self, va: int) -> list[tuple[int, int, int]]:
        """The PTEs a walk of ``va`` reads: ``[(level, pte_pa, pte), ...]``, root first."""
        if not _is_u64(va):
            return []
        path: list[tuple[int, int, int]] = self.core.walk_path(va)
        return path

    # -- validation (what the core cannot be handed) ---------------------------------

    def _check_page_size(self, size: int) -> int:
        level = self.fmt.level_of_size(size) if isinstance(size, int) else None
        if level is None:
            sizes = ", ".join(format_size(s) for s in self.fmt.page_sizes)
            raise ConfigError(f"page size {size!r} is not supported by {self.fmt.name} ({sizes})")
        return level

    def _perm_bits(self, perms: str | Perm) -> int:
        """``perms`` parsed and checked for this format, as bits (cached per value)."""
        if type(perms) is str:
            bits = self._str_perms.get(perms)
        elif type(perms) is Perm:
            bits = self._perm_perms.get(perms)
        else:
            bits = None
        if bits is not None:
            return bits
        perm = Perm.parse(perms)
        why = self.fmt.check_perms(perm)
        if why:
            raise ConfigError(f"perms {perms!r}: {why}")
        if type(perms) is str:
            self._str_perms[perms] = int(perm)
        elif type(perms) is Perm:
            self._perm_perms[perms] = int(perm)
        return int(perm)

    def _known_perm(self, perms: str | Perm) -> int | None:
        if type(perms) is str:
            return self._str_perms.get(perms)
        if type(perms) is Perm:
            return self._perm_perms.get(perms)
        return None

    def _check_va(self, va: int, size: int) -> None:
        if not _is_u64(va):
            raise AddressError(f"virtual address must be a 64-bit unsigned int, got {va!r}")
        if not _is_u64(size):  # only a range past 2**64 gets here: not canonical
            raise AddressError(
                f"virtual range [{va:#x}, {va + size:#x}) is not canonical for {self.fmt.name}"
                f" ({self.fmt.va_bits}-bit addresses)"
            )
        self.core.check_va(va, size)

    def _reject_map(self, va: Any, pa: Any, size: int) -> None:
        """Raise the error ``map`` gives for a ``va`` or ``pa`` that is not a u64."""
        self._check_va(va, size)
        if va & (size - 1):
            raise AddressError(f"virtual address {va:#x} is not aligned to its {format_size(size)} page")
        if not isinstance(pa, int) or pa & (size - 1):
            raise AddressError(f"physical address {pa!r} is not aligned to its {format_size(size)} page")
        raise AddressError(
            f"physical range [{pa:#x}, {pa + size:#x}) is outside memory"
            f" [{self.mem.base:#x}, {self.mem.end:#x})"
        )

    def _check_edit_size(self, what: str, size: Any) -> None:
        if not isinstance(size, int) or size <= 0 or size & (FRAME_SIZE - 1):
            raise AddressError(f"{what} size must be a positive multiple of 4096, got {size!r}")

    # -- mapping --------------------------------------------------------------------

    def map(
        self,
        va: int,
        pa: int,
        size: int = FRAME_SIZE,
        perms: str | Perm = "rw",
        user: bool = False,
        global_: bool = False,
    ) -> None:
        """Map one page of ``size`` (4 KiB, 2 MiB or 1 GiB) at ``va`` to ``pa``.

        Raises before changing anything if the request is malformed or the
        page overlaps an existing mapping.
        """
        bits = self._known_perm(perms)
        if bits is None:
            self._check_page_size(size)
            bits = self._perm_bits(perms)
        try:
            self.core.map(va, pa, size, bits, user, global_)
        except _NOT_U64 as exc:
            if isinstance(exc, VmoptError):
                raise
            self._check_page_size(size)
            self._reject_map(va, pa, size)
            raise

    def map_trusted(self, va: int, pa: int, size: int, perms: Perm, user: bool = False) -> None:
        """:meth:`map` for callers that validated the request already (the facade's demand
        paging, whose regions were checked at ``allocate``); overlap is still refused."""
        try:
            self.core.map_trusted(va, pa, size, int(perms), user)
        except (TypeError, OverflowError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("map_trusted", exc, va=va, pa=pa, size=size, perms=perms) from None

    def map_range(
        self,
        va: int,
        pa: int,
        length: int,
        *,
        page_size: int = FRAME_SIZE,
        perms: str | Perm = "rw",
        user: bool = False,
        global_: bool = False,
    ) -> None:
        """Map ``length`` bytes with pages of ``page_size``; all or nothing.

        Every page is checked (alignment, memory, overlap) before the first
        write, so a refused request changes nothing.
        """
        if not isinstance(length, int) or length <= 0 or length % page_size:
            raise AddressError(f"length {length!r} is not a positive multiple of {page_size}")
        self._check_page_size(page_size)
        bits = self._perm_bits(perms)
        try:
            self.core.map_range(va, pa, length, page_size, bits, user, global_)
        except _NOT_U64 as exc:
            if isinstance(exc, VmoptError):
                raise
            self._check_va(va, length)
            self._reject_map(va, pa, page_size)
            raise
        finally:
            self._notify()

    def unmap(self, va: int, size: int = FRAME_SIZE) -> None:
        """Unmap ``[va, va+size)``, which must be covered by whole mapped pages.

        Table pages left empty go back to the allocator. Subscribed MMUs are
        shot down before this returns (and before the table pages are freed).
        """
        try:
            self.core.unmap(va, size)
        except _NOT_U64 as exc:
            if isinstance(exc, VmoptError):
                raise
            self._check_edit_size("unmap", size)
            self._check_va(va, size)
            raise
        if self._subscribers:
            self._notify()

    def protect(self, va: int, size: int, perms: str | Perm) -> None:
        """Change the rights of every page in ``[va, va+size)`` (whole pages)."""
        bits = self._perm_bits(perms)
        try:
            self.core.protect(va, size, bits)
        except _NOT_U64 as exc:
            if isinstance(exc, VmoptError):
                raise
            self._check_edit_size("protect", size)
            self._check_va(va, size)
            raise
        if self._subscribers:
            self._notify()

    def remap(self, va: int, pa: int, size: int = FRAME_SIZE, perms: str | Perm | None = None) -> None:
        """Point the page at ``va`` (of ``size``) at a new frame ``pa``, keeping its attributes.

        The new frame and rights are checked before the old page is unmapped,
        so a refused remap changes nothing.
        """
        try:
            if perms is None or not self._is_page(va, size):
                bits = None  # the core reports the missing page first
            else:
                bits = self._perm_bits(perms)
            self.core.remap(va, pa, size, bits)
        except _NOT_U64 as exc:
            if isinstance(exc, VmoptError):
                raise
            if not (isinstance(va, int) and isinstance(pa, int) and isinstance(size, int)):
                raise bad_input("remap", va=va, pa=pa, size=size) from None
            if not self._is_page(va, size):
                raise MappingError(f"no {format_size(size)} page is mapped at {va:#x}") from None
            if perms is not None:
                self._perm_bits(perms)
            if not isinstance(pa, int) or pa & (size - 1):
                raise AddressError(
                    f"physical address {pa!r} is not aligned to its {format_size(size)} page"
                ) from None
            raise AddressError(
                f"physical range [{pa:#x}, {pa + size:#x}) is outside memory"
                f" [{self.mem.base:#x}, {self.mem.end:#x})"
            ) from None
        finally:
            if self._subscribers:
                self._notify()

    def _is_page(self, va: Any, size: Any) -> bool:
        """True if a page of exactly ``size`` starts at ``va``."""
        leaf = self.lookup(va) if _is_u64(va) and isinstance(size, int) else None
        return leaf is not None and leaf.va == va and leaf.page_size == size

    def invalidate(self, va: int, size: int) -> None:
        """Announce an edit made behind vmopt's back (e.g. by writing PTEs directly)."""
        if not (isinstance(va, int) and isinstance(size, int)):
            raise bad_input("invalidate", va=va, size=size)
        self.core.invalidate(va & _U64_MASK, size & _U64_MASK)
        self._notify()

    def install(
        self,
        va: int,
        size: int,
        nodes: list[int],
        data: bytes | None,
        perms: Perm,
        user: bool,
    ) -> tuple[int, int] | None:
        """Allocate a zeroed block of ``size`` on the first of ``nodes`` with room, copy
        ``data`` into it and map it at ``va`` (refusing overlap): ``(pa, node)``.

        None when no node has room (the caller words the error); the block is
        freed again if the mapping is refused.
        """
        try:
            placed: tuple[int, int] | None = self.core.install(va, size, nodes, data, int(perms), user)
        except (TypeError, OverflowError, ValueError) as exc:
            if isinstance(exc, VmoptError):
                raise
            raise bad_input("install", exc, va=va, size=size, nodes=nodes, data=data, perms=perms) from None
        return placed

    # -- enumeration ----------------------------------------------------------------

    def leaves(self, *, max_tables: int | None = None) -> _core.LeafIter:
        """Every leaf in VA order: (va, leaf, effective perms, effective user, global).

        A streaming iterator, bounded for any memory contents: a table entry
        pointing back at a table on its own path is not descended (and, not
        being a leaf, not listed; :meth:`mappings` shows it), and at most
        ``max_tables`` tables are read (the iterator's ``truncated`` tells).
        """
        it: _core.LeafIter = self.core.leaves(_max_tables(max_tables))
        return it

    def mappings(self, *, max_tables: int | None = None) -> _core.MappingIter:
        """The address space as coalesced regions, like QEMU's ``info mem`` (streamed).

        Adjacent pages merge when they are contiguous in both VA and PA and
        share perms, user, global and page size. A table entry pointing back
        at a table on its own path (a self-map) is one ``recursive`` region,
        not descended. At most ``max_tables`` tables are read; the iterator's
        ``truncated`` is then True.
        """
        it: _core.MappingIter = self.core.mappings(_max_tables(max_tables))
        return it

    def table_frames(self) -> list[int]:
        """Physical addresses of every table page, root first."""
        frames: list[int] = self.core.table_frames()
        return frames

    # -- guest-virtual access -------------------------------------------------------

    def read_virt(self, va: int, n: int, *, user: bool = False) -> bytes:
        """Read ``n`` bytes at guest-virtual ``va``; faults at the first bad page."""
        if not isinstance(n, int) or n < 0 or n >= _U64_LIMIT:
            raise AddressError(f"length must be a non-negative int, got {n!r}")
        if not isinstance(va, int):
            raise bad_input("read_virt", va=va)
        if not n:
            return b""
        data: bytes = self.core.read_virt(va & _U64_MASK, n, user)
        return data

    def write_virt(self, va: int, data: bytes | bytearray | memoryview, *, user: bool = False) -> None:
        """Write ``data`` at guest-virtual ``va``; every page is checked before any byte is written."""
        if not isinstance(va, int):
            raise bad_input("write_virt", va=va)
        try:
            raw = data if type(data) is bytes else memoryview(data).tobytes()
        except TypeError:
            raise bad_input("write_virt", data=data) from None
        if raw:
            self.core.write_virt(va & _U64_MASK, raw, user)

    def destroy(self) -> None:
        """Unmap nothing, but free every table page (root included) this table allocated."""
        self.core.destroy()
