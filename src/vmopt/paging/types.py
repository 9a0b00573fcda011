"""Plain values the paging layer hands out: permissions, translations, leaves, mappings, faults."""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass
from typing import Final, Literal

from vmopt.errors import ConfigError, PageFault

__all__ = [
    "ACCESS_KINDS",
    "FAULT_CAUSES",
    "Access",
    "FaultCause",
    "Leaf",
    "Mapping",
    "NestedTranslation",
    "PageFault",
    "Perm",
    "Translation",
    "parse_access",
]

Access = Literal["r", "w", "x"]
FaultCause = Literal[
    "not_present",
    "protection",
    "reserved",
    "non_canonical",
    "misaligned",
    "table_outside_memory",
    "misconfigured",
    "access_flag",
    "address_size",
]

ACCESS_KINDS: Final = ("r", "w", "x")
FAULT_CAUSES: Final = (
    "not_present",
    "protection",
    "reserved",
    "non_canonical",
    "misaligned",
    "table_outside_memory",
    "misconfigured",
    "access_flag",
    "address_size",
)


class _PermType(enum.EnumType):
    """Refuses a non-int value before the enum machinery compares it (an array would be ambiguous)."""

    def __call__(cls, value: object, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        if not args and not kwargs and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ConfigError(f"Perm takes an int of R|W|X bits (0..7), got {value!r:.80}")
        return super().__call__(value, *args, **kwargs)  # type: ignore[call-overload]


class Perm(enum.IntFlag, metaclass=_PermType):
    """Page permissions: read, write, execute."""

    NONE = 0
    R = 4
    W = 2
    X = 1

    @classmethod
    def _missing_(cls, value: object) -> Perm:
        if isinstance(value, int) and not isinstance(value, bool):
            return super()._missing_(value)  # type: ignore[no-any-return]
        raise ConfigError(f"Perm takes an int of R|W|X bits (0..7), got {value!r}")

    @classmethod
    def parse(cls, text: str | Perm) -> Perm:
        """``'rw' -> Perm.R | Perm.W``; letters r, w, x in any order, each at most once."""
        if isinstance(text, Perm):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"perms must be a string of r, w and x, got {text!r}")
        perm = cls.NONE
        for ch in text:
            bit = _PERM_LETTERS.get(ch)
            if bit is None or perm & bit:
                raise ConfigError(f"perms must be a string of r, w and x, got {text!r}")
            perm |= bit
        return perm

    def __str__(self) -> str:
        return "".join(ch if self & bit else "-" for ch, bit in _PERM_LETTERS.items())


_PERM_LETTERS: Final = {"r": Perm.R, "w": Perm.W, "x": Perm.X}
_ACCESS_PERM: Final = {"r": Perm.R, "w": Perm.W, "x": Perm.X}


def parse_access(access: str) -> Access:
    """Check an access kind: ``'r'`` read, ``'w'`` write, ``'x'`` instruction fetch."""
    if access not in _ACCESS_PERM:
        raise ConfigError(f"access must be 'r', 'w' or 'x', got {access!r}")
    return access  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Translation:
    """The result of a successful page walk.

    ``pa`` is the physical address of ``va``; the page starts at
    ``pa - (va & (page_size - 1))``. ``perms`` are the effective rights (for
    x86 the AND of every level); ``user`` and ``global_`` likewise.
    ``memory_refs`` counts the PTE reads of this walk. ``level`` is the leaf's
    level, 0 for a 4 KiB page. ``dirty`` is the leaf's D bit after the walk.
    """

    va: int
    pa: int
    page_size: int
    perms: Perm
    user: bool
    global_: bool
    dirty: bool
    memory_refs: int
    level: int
    pte_pa: int

    @property
    def vpn(self) -> int:
        """Virtual page number, in units of this page's size."""
        return self.va // self.page_size

    @property
    def pfn(self) -> int:
        """4 KiB frame number of the page's first frame."""
        return (self.pa - (self.va & (self.page_size - 1))) >> 12

    @property
    def page_pa(self) -> int:
        """Physical address of the first byte of the page."""
        return self.pa - (self.va & (self.page_size - 1))


@dataclass(frozen=True, slots=True)
class NestedTranslation:
    """The result of a successful two-stage walk (:class:`vmopt.paging.TwoStage`).

    ``pa`` is the host-physical address of ``va`` and ``gpa`` its
    guest-physical one. ``page_size`` is what a TLB may cache for the GVA:
    the smaller of ``guest_page_size`` and ``host_page_size``; ``perms`` are
    the rights both stages grant. ``memory_refs`` is ``guest_refs`` (guest
    page-table entries read) plus ``host_refs`` (host entries read, for each
    guest entry's GPA and for the final GPA). ``level`` and ``pte_pa`` are the
    guest leaf's (``pte_pa`` a GPA); ``dirty`` is the guest and host leaves' D.
    """

    va: int
    pa: int
    gpa: int
    page_size: int
    perms: Perm
    user: bool
    global_: bool
    dirty: bool
    memory_refs: int
    guest_refs: int
    host_refs: int
    level: int
    pte_pa: int
    guest_page_size: int
    host_page_size: int

    @property
    def page_pa(self) -> int:
        """Host-physical address of the first byte of the cached page."""
        return self.pa - (self.va & (self.page_size - 1))


@dataclass(frozen=True, slots=True)
class Leaf:
    """A leaf PTE found by ``PageTable.lookup`` (no rights check, no A/D update)."""

    va: int
    page_pa: int
    page_size: int
    level: int
    pte: int
    pte_pa: int
    perms: Perm
    user: bool
    global_: bool
    accessed: bool
    dirty: bool


@dataclass(frozen=True, slots=True)
class Mapping:
    """A run of virtually and physically contiguous pages with equal attributes.

    ``recursive`` marks a table entry that points back at a table on its own
    path (a self-map): ``pa`` is that table and ``size`` the entry's span;
    listings show it once and do not descend it.
    """

    va: int
    pa: int
    size: int
    perms: Perm
    page_size: int
    user: bool
    global_: bool
    recursive: bool = False

    def __str__(self) -> str:
        flags = ("u" if self.user else "s") + ("g" if self.global_ else "-")
        if self.recursive:
            return (
                f"{self.va:016x}-{self.va + self.size:016x} {self.size:016x}"
                f" {perms_str(self.perms)}{flags} -> {self.pa:012x} (recursive: table on its own path)"
            )
        return (
            f"{self.va:016x}-{self.va + self.size:016x} {self.size:016x}"
            f" {perms_str(self.perms)}{flags} -> {self.pa:012x} ({page_size_name(self.page_size)})"
        )


def perms_str(perm: Perm) -> str:
    """``Perm.R | Perm.W -> 'rw-'``."""
    return str(Perm(perm))


def page_size_name(size: int) -> str:
    """``4096 -> '4K'``, ``2 MiB -> '2M'``, ``1 GiB -> '1G'``."""
    for unit, name in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{name}"
    return f"{size}B"
