"""What every paging format provides, and the formats whose bits and walks are the core's.

:class:`PagingFormat` is the interface: geometry, PTE encode/decode, the
rights rule and the walk. :class:`CoreFormat` implements it by delegating to
a ``vmopt._core.Format`` held in its public attribute ``core``; ``X86_64``
and ``RiscV`` are core formats, and ``PageTable`` accepts only those, since
its edits and walks run in the core.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from vmopt.paging.types import Perm, Translation

if TYPE_CHECKING:
    from vmopt.memory.physical import PhysicalMemory

__all__ = ["PTES_PER_TABLE", "CoreFormat", "LeafInfo", "PagingFormat"]

PTES_PER_TABLE: Final = 512

#: Perm for each value of its bits (R=4, W=2, X=1).
PERMS: Final = tuple(Perm(bits) for bits in range(8))


@dataclass(frozen=True, slots=True)
class LeafInfo:
    """A decoded leaf PTE, with the rights of the leaf alone."""

    page_pa: int
    perms: Perm
    user: bool
    global_: bool
    accessed: bool
    dirty: bool


class PagingFormat(abc.ABC):
    """One architecture's page-table format (a stateless description)."""

    name: str
    levels: int
    va_bits: int
    #: physical address bits the format can express
    pa_bits: int
    #: level -> page size for the levels that may hold leaves
    leaf_sizes: dict[int, int]
    #: bytes of the root table: one frame, the RISC-V G-stage's 16 KiB
    root_bytes: int = 4096

    # -- geometry ---------------------------------------------------------------

    @property
    def page_sizes(self) -> tuple[int, ...]:
        """Supported page sizes, smallest first."""
        return tuple(sorted(self.leaf_sizes.values()))

    def level_of_size(self, size: int) -> int | None:
        """The level whose leaves map pages of ``size``, or None."""
        for level, leaf_size in self.leaf_sizes.items():
            if leaf_size == size:
                return level
        return None

    @staticmethod
    def index(va: int, level: int) -> int:
        """Index of ``va`` in a table at ``level`` (0 = last level)."""
        return (va >> (12 + 9 * level)) & 0x1FF

    @staticmethod
    def level_span(level: int) -> int:
        """Bytes of address space one entry at ``level`` covers."""
        return 1 << (12 + 9 * level)

    def entries(self, level: int) -> int:
        """Entries of a table at ``level``."""
        return PTES_PER_TABLE

    def is_canonical(self, va: int) -> bool:
        """True if ``va`` is a canonical (sign-extended) address of this format."""
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def canonicalize(self, va: int) -> int:
        """Sign-extend a ``va_bits``-wide address to 64 bits."""
        va &= (1 << self.va_bits) - 1
        if va >> (self.va_bits - 1):
            va |= ((1 << 64) - 1) ^ ((1 << self.va_bits) - 1)
        return va

    def check_perms(self, perm: Perm) -> str | None:
        """Why ``perm`` cannot be encoded in a leaf of this format, or None."""
        return None

    # -- PTE encoding -----------------------------------------------------------

    @abc.abstractmethod
    def is_valid(self, pte: int) -> bool:
        """The present/valid bit."""

    @abc.abstractmethod
    def is_leaf(self, pte: int, level: int) -> bool:
        """A valid PTE that maps a page (rather than pointing to a table)."""

    @abc.abstractmethod
    def table_pa(self, pte: int) -> int:
        """Physical address of the next-level table a non-leaf PTE points to."""

    @abc.abstractmethod
    def make_table(self, table_pa: int, level: int) -> int:
        """A non-leaf PTE pointing at ``table_pa``, as an OS would write it."""

    @abc.abstractmethod
    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        """A leaf PTE mapping the page at ``page_pa``."""

    @abc.abstractmethod
    def decode_leaf(self, pte: int, level: int) -> LeafInfo:
        """Decode a leaf PTE."""

    @abc.abstractmethod
    def set_perms(self, pte: int, level: int, perms: Perm) -> int:
        """``pte`` with its permission bits replaced, other bits kept."""

    @abc.abstractmethod
    def table_rights(self, pte: int) -> tuple[Perm, bool, bool]:
        """Rights a non-leaf PTE contributes: (perms, user, global)."""

    @abc.abstractmethod
    def describe(self, pte: int, level: int) -> str:
        """A one-line human description of a PTE's bits."""

    @abc.abstractmethod
    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        """May an ``access`` in ``user`` mode use a page with these effective rights?"""

    # -- walk -------------------------------------------------------------------

    @abc.abstractmethod
    def walk(
        self,
        mem: PhysicalMemory,
        root: int,
        va: int,
        access: str,
        user: bool,
        update_ad: bool,
    ) -> Translation:
        """Translate ``va`` as the hardware would, or raise ``PageFault``.

        ``access`` is ``'r'``, ``'w'``, ``'x'``, or ``'p'`` for a probe: a
        structural walk without the rights check, as a TLB prefetcher does.
        """


class CoreFormat(PagingFormat):
    """A format whose encoding, rights rule and walk are the core's (``core``, a ``_core.Format``)."""

    core: Any

    def _bind(self, core: Any) -> None:
        """Take the geometry from ``core`` and keep it."""
        self.core = core
        self.name = core.name
        self.levels = core.levels
        self.va_bits = core.va_bits
        self.pa_bits = core.pa_bits
        self.leaf_sizes = dict(core.leaf_sizes)
        self.root_bytes = core.root_bytes

    def index(self, va: int, level: int) -> int:  # type: ignore[override]
        """Index of ``va`` in a table at ``level`` (0 = last level), as the core's walk takes it:
        the widths of a granule's levels, a root of several frames or concatenated tables."""
        return int(self.core.index(va, level))

    def level_span(self, level: int) -> int:  # type: ignore[override]
        """Bytes of address space one entry at ``level`` covers."""
        return int(self.core.level_span(level))

    def entries(self, level: int) -> int:
        """Entries of a table at ``level`` (a root may hold fewer, or several tables' worth)."""
        return int(self.core.entries(level))

    def check_perms(self, perm: Perm) -> str | None:
        result: str | None = self.core.check_perms(int(perm))
        return result

    def is_valid(self, pte: int) -> bool:
        return bool(self.core.is_valid(pte))

    def is_leaf(self, pte: int, level: int) -> bool:
        return bool(self.core.is_leaf(pte, level))

    def table_pa(self, pte: int) -> int:
        return int(self.core.table_pa(pte))

    def make_table(self, table_pa: int, level: int) -> int:
        return int(self.core.make_table(table_pa, level))

    def make_leaf(self, page_pa: int, level: int, perms: Perm, user: bool, global_: bool) -> int:
        return int(self.core.make_leaf(page_pa, level, int(perms), bool(user), bool(global_)))

    def decode_leaf(self, pte: int, level: int) -> LeafInfo:
        page_pa, perms, user, global_, accessed, dirty = self.core.decode_leaf(pte, level)
        return LeafInfo(page_pa, PERMS[perms], user, global_, accessed, dirty)

    def set_perms(self, pte: int, level: int, perms: Perm) -> int:
        return int(self.core.set_perms(pte, level, int(perms)))

    def table_rights(self, pte: int) -> tuple[Perm, bool, bool]:
        perms, user, global_ = self.core.table_rights(pte)
        return PERMS[perms], user, global_

    def describe(self, pte: int, level: int) -> str:
        return str(self.core.describe(pte, level))

    def allows(self, perms: Perm, page_user: bool, access: str, user: bool) -> bool:
        return bool(self.core.allows(int(perms), bool(page_user), access, bool(user)))

    def walk(
        self,
        mem: PhysicalMemory,
        root: int,
        va: int,
        access: str,
        user: bool,
        update_ad: bool,
    ) -> Translation:
        t: Translation = self.core.walk(mem.core, root, va, access, bool(user), bool(update_ad))
        return t
