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
    """A configuration value is invalid (raised at construction).

    ``field`` names the config object's field at fault, when one is; a
    configuration file's section prefixes it with its dotted key
    (``tlb.l1.ways``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InputError(VmoptError, TypeError):
    """An argument of the wrong kind: ``None``, a float or a string where an int, a
    bool or an object of the API is expected. Also a :class:`TypeError`, so
    callers that already catch that keep working.
    """


def bad_input(call: str, why: object = None, /, **args: object) -> InputError:
    """The :class:`InputError` of ``call`` given ``args`` (each named with its value) and ``why``."""
    shown = ", ".join(f"{name}={value!r:.80}" for name, value in args.items())
    return InputError(f"{call}: invalid argument(s) {shown}" + (f": {why}" if why is not None else ""))


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


class PageFault(VmoptError):
    """A translation failed the way the hardware would fault.

    ``cause`` is one of ``FAULT_CAUSES``; ``level`` is where the walk stopped
    (0 is the last level, the one holding 4 KiB PTEs; ``None`` when no table
    was read, as for a non-canonical address). ``restartable`` is True for a
    not-present fault of a TLB miss's walk, the one a fault handler may
    resolve by mapping the page and restarting the access
    (:meth:`vmopt.Mmu.restart`, :meth:`vmopt.Mmu.install_page`); the core
    sets it.

    A fault of a two-stage walk has ``stage`` ``"guest"`` or ``"host"`` (else
    None); a host fault names ``gpa``, the guest-physical address the host
    tables could not translate, and ``on_table``: True if it was a guest
    page-table entry, False if the final access. ``level`` is then the host's.
    ``fsc`` is the architecture's fault status code where it has one:
    AArch64's 6-bit FSC (0b0000LL address size, 0b0001LL translation,
    0b0010LL access flag, 0b0011LL permission, 0b0101LL external abort on
    the walk), whose LL is the architecture's level, counted from the root
    (level 3 is the last), unlike ``level``. It is ``None`` for x86 and RISC-V.
    """

    def __init__(
        self, va: int, access: str, cause: str, level: int | None, *, user: bool = False,
        restartable: bool = False, stage: str | None = None, gpa: int | None = None,
        on_table: bool | None = None, fsc: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(va, access, cause, level)
        self.va = va
        self.access = access
        self.cause = cause
        self.level = level
        self.user = user
        self.restartable = restartable
        self.stage = stage
        self.gpa = gpa
        self.on_table = on_table
        self.fsc = fsc

    def __str__(self) -> str:
        # Built on demand: faults are frequent and most are handled, never printed.
        where = "" if self.level is None else f" at level {self.level}"
        mode = "user" if self.user else "supervisor"
        kind = {"r": "read", "w": "write", "x": "fetch", "p": "probe"}.get(self.access, self.access)
        fsc = "" if self.fsc is None else f" (FSC {self.fsc:#08b})"
        text = f"page fault: {mode} {kind} of {self.va:#x}: {self.cause}{where}{fsc}"
        if self.stage == "host" and self.gpa is not None:
            what = "guest table entry" if self.on_table else "final access"
            return f"{text} (host stage, {what} at guest-physical {self.gpa:#x})"
        if self.stage is not None:
            return f"{text} ({self.stage} stage)"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_fault,
            (
                self.va, self.access, self.cause, self.level, self.user, self.restartable,
                self.stage, self.gpa, self.on_table, self.fsc,
            ),
        )  # fmt: skip


def _rebuild_fault(
    va: int, access: str, cause: str, level: int | None, user: bool, restartable: bool = False,
    stage: str | None = None, gpa: int | None = None, on_table: bool | None = None,
    fsc: int | None = None,
) -> PageFault:  # fmt: skip
    return PageFault(
        va, access, cause, level, user=user, restartable=restartable, stage=stage, gpa=gpa,
        on_table=on_table, fsc=fsc,
    )  # fmt: skip
