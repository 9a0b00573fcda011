"""The error raised for unreadable or malformed dump files."""

from __future__ import annotations

from vmopt.errors import VmoptError

__all__ = ["DumpError"]


class DumpError(VmoptError, ValueError):
    """A dump cannot be opened or is malformed.

    The message is complete on its own (``'guest.elf': ELF core segment 3
    p_filesz 0x100000: the bytes at p_offset 0x2000 pass the end of the file
    (8192 bytes)``); the attributes give the same facts to programs:

    ``path``
        The dump as the user named it.
    ``field``
        The header field at fault (``e_phnum``, ``block_size``, ``page
        descriptor 12 size``, ...), or ``None`` for the file as a whole.
    ``value``
        That field's value, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        field: str | None = None,
        value: int | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.field = field
        self.value = value
