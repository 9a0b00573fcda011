"""The error raised for unreadable or malformed address traces."""

from __future__ import annotations

from vmopt.errors import VmoptError

__all__ = ["TraceError"]


class TraceError(VmoptError, ValueError):
    """A trace cannot be opened, detected or parsed.

    The message is complete on its own (``trace.txt:17: cannot parse 'zz12'
    as an address``); the attributes give the same facts to programs:

    ``path``
        The trace as the user named it (``"<stdin>"`` for ``-``), or ``None``.
    ``line``
        The 1-based line number of the offending line in a text trace, or
        ``None`` when the problem is not tied to a line.
    ``content``
        The offending text (or value), or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        content: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.content = content
