"""The backing-store interface shared by store-backed guest memory.

A *backing store* supplies guest pages on demand: the first touch of a page in
a store-backed region faults, and the fault handler awaits
``store.fetch(page_index)`` for the page's bytes. Stores are asynchronous so
that a batch can overlap many slow fetches (disk, network, a simulated
device) on one event loop.
"""

from __future__ import annotations

import operator
from typing import Protocol, runtime_checkable

from vmopt.errors import ConfigError, InputError, VmoptError

__all__ = ["DEFAULT_PAGE_SIZE", "BackingStore", "StoreError"]

DEFAULT_PAGE_SIZE = 4096
"""The page size every store uses unless told otherwise (bytes)."""


class StoreError(VmoptError):
    """A backing store could not supply a page (or could not be opened).

    ``page_index`` is the page that failed, or ``None`` for errors that concern
    the store as a whole (such as a snapshot file that cannot be opened).
    ``reason`` is the explanation without the page prefix.
    """

    def __init__(self, reason: str, *, page_index: int | None = None) -> None:
        message = reason if page_index is None else f"page {page_index}: {reason}"
        super().__init__(message)
        self.reason = reason
        self.page_index = page_index


@runtime_checkable
class BackingStore(Protocol):
    """What a store-backed memory region needs from its page source.

    ``fetch`` returns exactly ``page_size`` bytes or raises :class:`StoreError`;
    ``num_pages`` is ``None`` when the store has no fixed size.
    """

    @property
    def page_size(self) -> int:
        """Size of every page this store returns, in bytes."""
        ...

    @property
    def num_pages(self) -> int | None:
        """Number of pages the store holds, or ``None`` if unbounded."""
        ...

    async def fetch(self, page_index: int) -> bytes:
        """Return page ``page_index`` (exactly ``page_size`` bytes)."""
        ...

    def fetch_sync(self, page_index: int) -> bytes:
        """Blocking twin of :meth:`fetch`, same result (the guest's synchronous faults use it)."""
        ...

    def close(self) -> None:
        """Release the store's resources; later fetches raise StoreError."""
        ...


def check_page_size(page_size: object) -> int:
    """Validate a page size (a positive power of two) and return it."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise ConfigError(f"page_size must be an int, got {page_size!r}")
    if page_size <= 0 or page_size & (page_size - 1):
        raise ConfigError(f"page_size must be a positive power of two, got {page_size}")
    return page_size


def check_page_index(page_index: object, num_pages: int | None, *, where: str = "the store") -> int:
    """Validate a page index against ``num_pages`` and return it as an int.

    Non-integers raise :class:`InputError` (a ``TypeError``); negative or
    out-of-range indexes raise :class:`StoreError` naming the page.
    """
    if isinstance(page_index, bool):
        raise InputError(f"page_index must be an integer, got {page_index!r}")
    try:
        index = operator.index(page_index)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"page_index must be an integer, got {page_index!r}") from None
    if index < 0:
        raise StoreError("negative page index", page_index=index)
    if num_pages is not None and index >= num_pages:
        raise StoreError(
            f"past the end of {where} ({num_pages} pages, valid indexes 0..{num_pages - 1})"
            if num_pages
            else f"past the end of {where} (it holds no pages)",
            page_index=index,
        )
    return index
