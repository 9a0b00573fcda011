"""What every paging format provides to the generic page-table code.

A format knows its PTE bit layout and its walk. ``PageTable`` builds and
edits trees through the small encode/decode interface below; ``walk`` is
written per format because the permission rules differ (x86 ANDs rights
across levels, RISC-V looks only at the leaf).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Final

from reference.memory.physical import PhysicalMemory
from vmopt.paging.types import Perm, Translation

__all__ = ["PTES_PER_TABLE", "LeafInfo", "PagingFormat"]

PTES_PER_TABLE: Final = 512


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

    def is_canonical(self, va: int) -> bool:
        """True if ``va`` is a canonical (sign-extended) address of this format."""
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def same_half(self, va: int, last: int) -> bool:
        """No address between the canonical ``va`` and ``last`` falls in the canonical hole."""
        return va >> (self.va_bits - 1) == last >> (self.va_bits - 1)

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

    def effective(self, pte: int, level: int, perms: Perm, user: bool) -> tuple[Perm, bool]:
        """A leaf's effective (perms, user) under the rights its tables grant."""
        info = self.decode_leaf(pte, level)
        return info.perms & perms, info.user and user

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
