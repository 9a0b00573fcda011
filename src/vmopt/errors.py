"""The exception hierarchy.

Everything vmopt raises for bad input or for a guest-visible fault derives
from :class:`VmoptError`. Subclasses that stand for bad arguments also derive
from :class:`ValueError`, so callers that already catch ``ValueError`` keep
working. Nothing here shadows Python's built-in ``MemoryError``.
"""

from __future__ import annotations


class VmoptError(Exception):
    """Base class of every error vmopt raises on purpose."""


class ConfigError(VmoptError, ValueError):
    """A configuration value is invalid (raised at construction)."""


class AddressError(VmoptError, ValueError):
    """An address is out of range, unaligned or non-canonical."""


class PhysicalAccessError(AddressError):
    """A physical access falls outside guest memory."""


class ReadOnlyMemoryError(VmoptError):
    """A write to memory opened read-only (such as a dump)."""


class MappingError(VmoptError, ValueError):
    """A map/unmap/protect request conflicts with the current mappings."""


class OutOfFramesError(VmoptError):
    """No free physical block of the requested size.

    ``node`` is the NUMA node that ran out (``None`` for non-NUMA memory) and
    ``size`` the requested block size in bytes.
    """

    def __init__(self, message: str, *, size: int, node: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.node = node
