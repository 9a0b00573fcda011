"""An address space whose page tables live in guest physical memory.

``PageTable`` edits the tree the way an OS kernel would (map, unmap, protect)
and walks it the way the MMU hardware would. The tables are the real bytes
in ``PhysicalMemory``; nothing about a mapping is cached here, so a real CPU
given the same memory and ``root`` translates every address the same way.

Changes that can leave stale TLB entries (unmap, protect) are announced to
subscribers before the call returns; MMUs subscribe to perform shootdown.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from reference.memory.physical import FRAME_SHIFT, FRAME_SIZE, PhysicalMemory
from reference.paging.format import PTES_PER_TABLE, PagingFormat
from reference.paging.gstage import GStage
from reference.paging.riscv import RiscV
from reference.paging.x86 import X86_64
from vmopt.errors import AddressError, ConfigError, MappingError
from vmopt.paging.types import Leaf, Mapping, PageFault, Perm, Translation, parse_access, perms_str
from vmopt.units import format_size

__all__ = ["FORMATS", "Leaf", "PageTable", "make_format"]

log = logging.getLogger(__name__)

#: Format names accepted by ``PageTable`` and their constructors.
FORMATS: dict[str, Callable[[], PagingFormat]] = {
    "x86_64": lambda: X86_64(4),
    "x86_64_5level": lambda: X86_64(5),
    "sv39": lambda: RiscV(3),
    "sv48": lambda: RiscV(4),
    "sv57": lambda: RiscV(5),
    "sv39x4": lambda: GStage(3),
    "sv48x4": lambda: GStage(4),
}

Invalidation = Callable[[int, int], None]


def root_bytes(fmt: PagingFormat) -> int:
    """Bytes of the root table: one frame, or the G-stage's 16 KiB."""
    size: int = getattr(fmt, "root_bytes", FRAME_SIZE)
    return size


def entries(fmt: PagingFormat, level: int) -> int:
    """Entries of a table at ``level`` (the G-stage root holds 2048)."""
    count = getattr(fmt, "entries", None)
    return PTES_PER_TABLE if count is None else int(count(level))


def make_format(fmt: str | PagingFormat) -> PagingFormat:
    """A format object from its name (or the object itself)."""
    if isinstance(fmt, PagingFormat):
        return fmt
    factory = FORMATS.get(fmt) if isinstance(fmt, str) else None
    if factory is None:
        raise ConfigError(f"unknown paging format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return factory()


class PageTable:
    """One guest address space: a tree of page tables rooted at ``root``.

    ``root`` is the value CR3 or satp points to. ``update_ad`` makes walks set
    the accessed and dirty bits as hardware does; turn it off for inspection.
    """

    def __init__(
        self,
        mem: PhysicalMemory,
        fmt: str | PagingFormat = "x86_64",
        *,
        update_ad: bool | None = None,
        _root: int | None = None,
    ) -> None:
        self.mem = mem
        self.fmt = make_format(fmt)
        self.update_ad = mem.writable if update_ad is None else update_ad
        self._lock = threading.RLock()
        self._subscribers: list[weakref.ref[Callable[[int, int], None]]] = []
        #: Bumped by every change that shoots down TLBs (a seqlock for readers).
        self.generation = 0
        self.owns_root = _root is None
        self.root = self._alloc_root() if _root is None else _root

    @classmethod
    def attach(
        cls,
        mem: PhysicalMemory,
        root: int,
        fmt: str | PagingFormat = "x86_64",
        *,
        update_ad: bool | None = None,
    ) -> PageTable:
        """Open page tables that already exist in ``mem`` at ``root``."""
        size = root_bytes(make_format(fmt))
        if not isinstance(root, int) or root & (size - 1) or not mem.contains(root, size):
            raise AddressError(
                f"page-table root must be a {format_size(size)} aligned address inside memory, got {root!r}"
            )
        return cls(mem, fmt, update_ad=update_ad, _root=root)

    def _alloc_root(self) -> int:
        """A zeroed root: one frame, or a naturally aligned block of the format's root size."""
        size = root_bytes(self.fmt)
        if size == FRAME_SIZE:
            return self.mem.alloc(FRAME_SIZE)
        pa = self.mem.allocator.alloc((size >> FRAME_SHIFT).bit_length() - 1) << FRAME_SHIFT
        self.mem.zero(pa, size)
        return pa

    def _free_table(self, table: int) -> None:
        size = root_bytes(self.fmt) if table == self.root else FRAME_SIZE
        if size == FRAME_SIZE:
            self.mem.free(table, FRAME_SIZE)
        else:
            self.mem.allocator.free(table >> FRAME_SHIFT, (size >> FRAME_SHIFT).bit_length() - 1)
            self.mem.zero(table, size)

    def __repr__(self) -> str:
        return f"PageTable({self.fmt.name}, root={self.root:#x})"

    @property
    def name(self) -> str:
        """The format's name, e.g. ``'x86_64'``."""
        return self.fmt.name

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """Page sizes this format can map."""
        return self.fmt.page_sizes

    # -- shootdown hooks ------------------------------------------------------------

    def subscribe(self, callback: Invalidation) -> None:
        """Call ``callback(va, size)`` after any change that may leave stale TLB entries.

        Bound methods are held weakly, so a dropped MMU unsubscribes itself.
        """
        ref: weakref.ref[Invalidation]
        if hasattr(callback, "__self__"):
            ref = weakref.WeakMethod(callback)
        else:
            ref = weakref.ref(callback)
        with self._lock:
            self._subscribers.append(ref)

    def unsubscribe(self, callback: Invalidation) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._subscribers = [r for r in self._subscribers if r() not in (None, callback)]

    def _announce(self, va: int, size: int) -> None:
        self.generation += 1
        live = []
        for ref in self._subscribers:
            cb = ref()
            if cb is not None:
                live.append(ref)
                cb(va, size)
        self._subscribers = live

    # -- walking --------------------------------------------------------------------

    def walk(
        self, va: int, access: str = "r", user: bool = False, *, update_ad: bool | None = None
    ) -> Translation:
        """Translate ``va`` as the MMU would, or raise :class:`PageFault`.

        ``access`` is ``'r'``, ``'w'`` or ``'x'``; ``'p'`` probes the tree
        without checking rights (what a TLB prefetcher does).
        """
        if access not in ("r", "w", "x", "p"):
            parse_access(access)
        if not isinstance(va, int) or not 0 <= va < 1 << 64:
            raise AddressError(f"virtual address must be a 64-bit unsigned int, got {va!r}")
        ad = self.update_ad if update_ad is None else update_ad
        return self.fmt.walk(self.mem, self.root, va, access, user, ad)

    def translate(self, va: int, access: str = "r", user: bool = False) -> int:
        """The physical address of ``va`` (a walk without a TLB)."""
        return self.walk(va, access, user).pa

    def lookup(self, va: int) -> Leaf | None:
        """The leaf PTE mapping ``va``, or None; no rights check, no A/D update."""
        fmt = self.fmt
        if not isinstance(va, int) or not 0 <= va < 1 << 64 or not fmt.is_canonical(va):
            return None
        table = self.root
        for level in range(fmt.levels - 1, -1, -1):
            pte_pa = table + fmt.index(va, level) * 8
            if not self.mem.contains(pte_pa, 8):
                return None
            pte = self.mem.read_u64(pte_pa)
            if not fmt.is_valid(pte):
                return None
            if fmt.is_leaf(pte, level) and level in fmt.leaf_sizes:
                info = fmt.decode_leaf(pte, level)
                size = fmt.leaf_sizes[level]
                return Leaf(
                    va=va & ~(size - 1),
                    page_pa=info.page_pa,
                    page_size=size,
                    level=level,
                    pte=pte,
                    pte_pa=pte_pa,
                    perms=info.perms,
                    user=info.user,
                    global_=info.global_,
                    accessed=info.accessed,
                    dirty=info.dirty,
                )
            if level == 0:
                return None
            table = fmt.table_pa(pte)
        return None

    def batch_lookup(self, vaddrs: Any) -> list[Leaf | None]:
        """:meth:`lookup` for each address, in order (entries or None)."""
        return [self.lookup(int(va)) for va in vaddrs]

    async def batch_lookup_concurrent(
        self, vaddrs: Any, *, threshold: int = 8, chunk_size: int = 10_000
    ) -> list[Leaf | None]:
        """The report's concurrent lookup: CPU-bound, so in order, yielding between chunks.

        Batches of ``threshold`` or fewer take :meth:`batch_lookup` directly.
        """
        import asyncio

        values = list(vaddrs)
        if len(values) <= threshold:
            return self.batch_lookup(values)
        out: list[Leaf | None] = []
        for start in range(0, len(values), chunk_size):
            out.extend(self.batch_lookup(values[start : start + chunk_size]))
            await asyncio.sleep(0)
        return out

    def walk_path(self, va: int) -> list[tuple[int, int, int]]:
        """The PTEs a walk of ``va`` reads: ``[(level, pte_pa, pte), ...]``, root first."""
        fmt = self.fmt
        path: list[tuple[int, int, int]] = []
        if not fmt.is_canonical(va):
            return path
        table = self.root
        for level in range(fmt.levels - 1, -1, -1):
            pte_pa = table + fmt.index(va, level) * 8
            if not self.mem.contains(pte_pa, 8):
                break
            pte = self.mem.read_u64(pte_pa)
            path.append((level, pte_pa, pte))
            if not fmt.is_valid(pte) or fmt.is_leaf(pte, level):
                break
            table = fmt.table_pa(pte)
        return path

    # -- validation -----------------------------------------------------------------

    def _check_va(self, va: int, size: int) -> None:
        if not isinstance(va, int) or not 0 <= va < 1 << 64:
            raise AddressError(f"virtual address must be a 64-bit unsigned int, got {va!r}")
        if va & (FRAME_SIZE - 1):
            raise AddressError(f"virtual address {va:#x} is not aligned to {format_size(FRAME_SIZE)}")
        last = va + size - 1
        if not self.fmt.is_canonical(va) or last >= 1 << 64 or not self.fmt.is_canonical(last):
            raise AddressError(
                f"virtual range [{va:#x}, {va + size:#x}) is not canonical for {self.fmt.name}"
                f" ({self.fmt.va_bits}-bit addresses)"
            )
        if not self.fmt.same_half(va, last):
            raise AddressError(f"virtual range [{va:#x}, {va + size:#x}) crosses the canonical hole")

    def _check_page_size(self, size: int) -> int:
        level = self.fmt.level_of_size(size) if isinstance(size, int) else None
        if level is None:
            sizes = ", ".join(format_size(s) for s in self.fmt.page_sizes)
            raise ConfigError(f"page size {size!r} is not supported by {self.fmt.name} ({sizes})")
        return level

    def _check_perms(self, perms: str | Perm) -> Perm:
        perm = Perm.parse(perms)
        why = self.fmt.check_perms(perm)
        if why:
            raise ConfigError(f"perms {perms!r}: {why}")
        return perm

    def _check_pa(self, pa: int, size: int) -> None:
        if not isinstance(pa, int) or pa & (size - 1):
            raise AddressError(f"physical address {pa!r} is not aligned to its {format_size(size)} page")
        if not self.mem.contains(pa, size) or pa + size > 1 << self.fmt.pa_bits:
            raise AddressError(
                f"physical range [{pa:#x}, {pa + size:#x}) is outside memory"
                f" [{self.mem.base:#x}, {self.mem.end:#x})"
            )

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
        level = self._check_page_size(size)
        perm = self._check_perms(perms)
        self._check_va(va, size)
        if va & (size - 1):
            raise AddressError(f"virtual address {va:#x} is not aligned to its {format_size(size)} page")
        self._check_pa(pa, size)
        with self._lock:
            self._map_locked(va, pa, level, perm, user, global_)

    def map_trusted(self, va: int, pa: int, size: int, perms: Perm, user: bool = False) -> None:
        """:meth:`map` for callers that validated the request already (the facade's demand
        paging, whose regions were checked at ``allocate``); overlap is still refused."""
        level = self.fmt.level_of_size(size)
        assert level is not None
        with self._lock:
            self._map_locked(va, pa, level, perms, user, False)

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
        """Map ``length`` bytes with pages of ``page_size``; all or nothing."""
        if not isinstance(length, int) or length <= 0 or length % page_size:
            raise AddressError(f"length {length!r} is not a positive multiple of {page_size}")
        self._check_page_size(page_size)
        self._check_perms(perms)
        self._check_va(va, length)
        done = 0
        with self._lock:
            try:
                for off in range(0, length, page_size):
                    self.map(va + off, pa + off, page_size, perms, user, global_)
                    done = off + page_size
            except BaseException:
                if done:
                    self.unmap(va, done)
                raise

    def _map_locked(self, va: int, pa: int, level: int, perm: Perm, user: bool, global_: bool) -> None:
        fmt, mem = self.fmt, self.mem
        table = self.root
        lvl = fmt.levels - 1
        while lvl > level:
            pte_pa = table + fmt.index(va, lvl) * 8
            pte = mem.read_u64(pte_pa)
            if not fmt.is_valid(pte):
                break
            if fmt.is_leaf(pte, lvl):
                raise MappingError(
                    f"cannot map {va:#x}: it lies inside the {format_size(fmt.level_span(lvl))}"
                    f" page at {va & ~(fmt.level_span(lvl) - 1):#x}"
                )
            table = fmt.table_pa(pte)
            lvl -= 1
        if lvl == level:
            pte_pa = table + fmt.index(va, lvl) * 8
            if fmt.is_valid(mem.read_u64(pte_pa)):
                raise MappingError(
                    f"cannot map {va:#x}: {format_size(fmt.level_span(level))} already mapped there"
                )
            mem.write_u64(pte_pa, fmt.make_leaf(pa, level, perm, user, global_))
            return
        # Build the missing tables bottom-up, then link them in with one store,
        # so a concurrent walker never sees a half-built path.
        new_tables: list[int] = []
        try:
            for _ in range(lvl - level):
                new_tables.append(mem.alloc(FRAME_SIZE))
        except BaseException:
            for t in new_tables:
                mem.free(t, FRAME_SIZE)
            raise
        # new_tables[0] is at level lvl-1, the last at `level`.
        leaf_table = new_tables[-1]
        mem.write_u64(leaf_table + fmt.index(va, level) * 8, fmt.make_leaf(pa, level, perm, user, global_))
        for depth in range(len(new_tables) - 1, 0, -1):
            parent, child = new_tables[depth - 1], new_tables[depth]
            parent_level = lvl - depth
            mem.write_u64(parent + fmt.index(va, parent_level) * 8, fmt.make_table(child, parent_level))
        mem.write_u64(table + fmt.index(va, lvl) * 8, fmt.make_table(new_tables[0], lvl))

    def _leaves_in(self, va: int, size: int) -> list[tuple[int, int, int, list[tuple[int, int]]]]:
        """Leaves covering ``[va, va+size)`` as (va, level, pte_pa, path); path = [(level, table_pa)].

        Raises MappingError unless the range is exactly a union of whole pages.
        """
        fmt, mem = self.fmt, self.mem
        end = va + size
        out = []
        cur = va
        while cur < end:
            table = self.root
            path: list[tuple[int, int]] = []
            level = fmt.levels - 1
            while True:
                path.append((level, table))
                pte_pa = table + fmt.index(cur, level) * 8
                pte = mem.read_u64(pte_pa)
                if not fmt.is_valid(pte) or (level == 0 and not fmt.is_leaf(pte, 0)):
                    raise MappingError(f"{cur:#x} is not mapped")
                if fmt.is_leaf(pte, level):
                    break
                table = fmt.table_pa(pte)
                level -= 1
            span = fmt.level_span(level)
            start = cur & ~(span - 1)
            if start < va or start + span > end:
                raise MappingError(
                    f"range [{va:#x}, {end:#x}) would split the {format_size(span)} page at {start:#x}"
                )
            out.append((start, level, pte_pa, path))
            cur = start + span
        return out

    def unmap(self, va: int, size: int = FRAME_SIZE) -> None:
        """Unmap ``[va, va+size)``, which must be covered by whole mapped pages.

        Table pages left empty go back to the allocator. Subscribed MMUs are
        shot down before this returns.
        """
        if not isinstance(size, int) or size <= 0 or size & (FRAME_SIZE - 1):
            raise AddressError(f"unmap size must be a positive multiple of 4096, got {size!r}")
        self._check_va(va, size)
        with self._lock:
            leaves = self._leaves_in(va, size)
            touched: dict[int, tuple[int, int]] = {}  # table -> (level, parent table)
            for _leaf_va, _level, pte_pa, path in leaves:
                self.mem.write_u64(pte_pa, 0)
                for i in range(1, len(path)):
                    level, table = path[i]
                    touched[table] = (level, path[i - 1][1])
            empty = self._unlink_empty_tables(touched)
            # Shoot down before the table pages go back: a walker on another
            # vCPU may still be reading them (Linux frees page tables only
            # after the TLB flush, for the same reason).
            self._announce(va, size)
            for table in empty:
                self.mem.free(table, FRAME_SIZE)

    def _unlink_empty_tables(self, touched: dict[int, tuple[int, int]]) -> list[int]:
        """Clear the parent entries of tables left empty, lowest level first; return them."""
        fmt, mem = self.fmt, self.mem
        empty: list[int] = []
        for table, (level, parent) in sorted(touched.items(), key=lambda kv: kv[1][0]):
            if not mem.frame_is_zero(table):
                continue
            # Find and clear the parent's entry that points at this table.
            parent_level = level + 1
            for idx in range(entries(fmt, parent_level)):
                entry_pa = parent + idx * 8
                pte = mem.read_u64(entry_pa)
                if fmt.is_valid(pte) and not fmt.is_leaf(pte, parent_level) and fmt.table_pa(pte) == table:
                    mem.write_u64(entry_pa, 0)
                    break
            empty.append(table)
        return empty

    def protect(self, va: int, size: int, perms: str | Perm) -> None:
        """Change the rights of every page in ``[va, va+size)`` (whole pages)."""
        perm = self._check_perms(perms)
        if not isinstance(size, int) or size <= 0 or size & (FRAME_SIZE - 1):
            raise AddressError(f"protect size must be a positive multiple of 4096, got {size!r}")
        self._check_va(va, size)
        with self._lock:
            leaves = self._leaves_in(va, size)
            for _leaf_va, level, pte_pa, _path in leaves:
                pte = self.mem.read_u64(pte_pa)
                self.mem.write_u64(pte_pa, self.fmt.set_perms(pte, level, perm))
            self._announce(va, size)

    def remap(self, va: int, pa: int, size: int = FRAME_SIZE, perms: str | Perm | None = None) -> None:
        """Point the page at ``va`` (of ``size``) at a new frame ``pa``, keeping its attributes."""
        with self._lock:
            leaf = self.lookup(va)
            if leaf is None or leaf.va != va or leaf.page_size != size:
                raise MappingError(f"no {format_size(size)} page is mapped at {va:#x}")
            # The new frame and rights are checked before the old page goes
            # (kept rights too: a corrupted leaf may hold a reserved encoding),
            # so a refused remap changes nothing.
            self._check_perms(perms_str(leaf.perms).replace("-", "") if perms is None else perms)
            self._check_pa(pa, size)
            self.unmap(va, size)
            try:
                self.map(va, pa, size, leaf.perms if perms is None else perms, leaf.user, leaf.global_)
            except BaseException:
                self.map(va, leaf.page_pa, size, leaf.perms, leaf.user, leaf.global_)
                raise

    def invalidate(self, va: int, size: int) -> None:
        """Announce an edit made behind vmopt's back (e.g. by writing PTEs directly)."""
        with self._lock:
            self._announce(va, size)

    # -- enumeration ----------------------------------------------------------------

    def leaves(self) -> Iterator[tuple[int, Leaf, Perm, bool, bool]]:
        """Every leaf in VA order: (va, leaf, effective perms, effective user, global)."""
        fmt, mem = self.fmt, self.mem
        all_rights = Perm.R | Perm.W | Perm.X

        def visit(
            table: int, level: int, base: int, perms: Perm, user: bool, global_: bool
        ) -> Iterator[tuple[int, Leaf, Perm, bool, bool]]:
            for idx in range(entries(fmt, level)):
                pte_pa = table + idx * 8
                if not mem.contains(pte_pa, 8):
                    return
                pte = mem.read_u64(pte_pa)
                if not fmt.is_valid(pte):
                    continue
                va = fmt.canonicalize(base | (idx << (12 + 9 * level)))
                if fmt.is_leaf(pte, level):
                    if level not in fmt.leaf_sizes:
                        continue
                    info = fmt.decode_leaf(pte, level)
                    size = fmt.leaf_sizes[level]
                    leaf = Leaf(va, info.page_pa, size, level, pte, pte_pa, info.perms, info.user,
                                info.global_, info.accessed, info.dirty)  # fmt: skip
                    eff_perms, eff_user = fmt.effective(pte, level, perms, user)
                    yield va, leaf, eff_perms, eff_user, info.global_ or global_
                elif level > 0:
                    tperms, tuser, tglobal = fmt.table_rights(pte)
                    yield from visit(
                        fmt.table_pa(pte), level - 1, va & ((1 << fmt.va_bits) - 1),
                        perms & tperms, user and tuser, global_ or tglobal,
                    )  # fmt: skip

        yield from visit(self.root, fmt.levels - 1, 0, all_rights, True, False)

    def mappings(self) -> Iterator[Mapping]:
        """The address space as coalesced regions, like QEMU's ``info mem``.

        Adjacent pages merge when they are contiguous in both VA and PA and
        share perms, user, global and page size.
        """
        cur: Mapping | None = None
        for va, leaf, perms, user, global_ in self.leaves():
            if (
                cur is not None
                and cur.va + cur.size == va
                and cur.pa + cur.size == leaf.page_pa
                and cur.perms == perms
                and cur.user == user
                and cur.global_ == global_
                and cur.page_size == leaf.page_size
            ):
                cur = Mapping(cur.va, cur.pa, cur.size + leaf.page_size, perms, leaf.page_size, user, global_)
                continue
            if cur is not None:
                yield cur
            cur = Mapping(va, leaf.page_pa, leaf.page_size, perms, leaf.page_size, user, global_)
        if cur is not None:
            yield cur

    def table_frames(self) -> list[int]:
        """Physical addresses of every table page, root first."""
        fmt, mem = self.fmt, self.mem
        out = [self.root]

        def visit(table: int, level: int) -> None:
            if level == 0:
                return
            for idx in range(entries(fmt, level)):
                pte = mem.read_u64(table + idx * 8)
                if fmt.is_valid(pte) and not fmt.is_leaf(pte, level):
                    child = fmt.table_pa(pte)
                    if mem.contains(child, FRAME_SIZE):
                        out.append(child)
                        visit(child, level - 1)

        visit(self.root, fmt.levels - 1)
        return out

    # -- guest-virtual access -------------------------------------------------------

    def _pieces(self, va: int, n: int, access: str, user: bool) -> list[tuple[int, int]]:
        if not isinstance(n, int) or n < 0:
            raise AddressError(f"length must be a non-negative int, got {n!r}")
        pieces = []
        pos = 0
        while pos < n:
            t = self.walk((va + pos) & ((1 << 64) - 1), access, user)
            chunk = min(t.page_size - (t.va & (t.page_size - 1)), n - pos)
            pieces.append((t.pa, chunk))
            pos += chunk
        return pieces

    def read_virt(self, va: int, n: int, *, user: bool = False) -> bytes:
        """Read ``n`` bytes at guest-virtual ``va``; faults at the first bad page."""
        return b"".join(self.mem.read(pa, k) for pa, k in self._pieces(va, n, "r", user))

    def write_virt(self, va: int, data: bytes | bytearray | memoryview, *, user: bool = False) -> None:
        """Write ``data`` at guest-virtual ``va``; every page is checked before any byte is written."""
        view = memoryview(data).cast("B")
        pos = 0
        for pa, k in self._pieces(va, len(view), "w", user):
            self.mem.write(pa, view[pos : pos + k])
            pos += k

    def destroy(self) -> None:
        """Unmap nothing, but free every table page (root included) this table allocated."""
        with self._lock:
            if not self.owns_root:
                raise MappingError("destroy() frees tables; it refuses tables opened with attach()")
            frames = self.table_frames()
            for t in frames:
                self._free_table(t)


__all__ += ["PageFault"]
