"""Output paths of the commands: checked before a run, named in every write error.

A long run must not end with "cannot write": :func:`check_file` and
:func:`check_dir` refuse a path that cannot be written (a directory where a
file is wanted, a file where a directory is wanted, a missing or read-only
parent) before any work starts, and :func:`write_error` words an ``OSError``
of the write itself with the option and the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmopt.errors import ConfigError

__all__ = ["check_dir", "check_file", "write_error"]


def _writable_ancestor(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {str(path)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {str(path)!r}: directory {str(parent)!r} is not writable")


def check_file(path: str, option: str) -> None:
    """Refuse an output file ``path`` that cannot be written, naming ``option`` and the path."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {path!r} is a directory; give a file name")
    if p.exists():
        if not p.is_file():
            raise ConfigError(f"{option} {path!r} exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise ConfigError(f"{option} {path!r} is not writable")
        if p.resolve().is_relative_to("/proc") or p.resolve().is_relative_to("/sys"):
            raise ConfigError(f"{option} {path!r} is a kernel interface file, not an output file")
        return
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path!r}: directory {str(parent)!r} is not writable")


def check_dir(path: str, option: str) -> None:
    """Refuse an output directory ``path`` that cannot be created or written into."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise ConfigError(f"{option} {path!r} exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path!r}: directory is not writable")
        return
    _writable_ancestor(p, option)


def write_error(option: str, path: str | os.PathLike[str], exc: OSError) -> ConfigError:
    """The error for a failed write of ``path``: the option, the path and the reason."""
    reason = exc.strerror or str(exc)
    return ConfigError(f"{option}: cannot write {os.fspath(path)!r}: {reason}")
