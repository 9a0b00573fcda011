"""Batch translation: one engine behind every ``*_batch*`` call.

It sits at the bottom of the layers (beside :mod:`vmopt.errors`): it knows
nothing of memory, tables or TLBs, only callables over addresses, so
:class:`vmopt.Mmu` and the guest facade both use it without an upward
import. :mod:`vmopt.batch` re-exports its public names.

Three ways through a batch, with identical results:

- **sequential**: ``translate`` in a loop; the reference.
- **array**: NumPy arrays go through the Rust core's translate loop
  (:meth:`vmopt.Mmu.translate_into`: uint64 in, uint64 out, no copies, no
  GIL), which has exactly the scalar semantics and stops at the first
  address whose translation raises; that address is finished as the scalar
  ``translate`` would finish it (demand paging and a restart, or a recorded
  failure), and the loop resumes after it.
- **concurrent** (asyncio): only pays when translations wait on I/O. Pages
  of store-backed regions that the batch will fault on are fetched ahead,
  at most ``max_concurrent`` at a time, while the batch is replayed in
  input order; each fault then finds its page's data staged and installs it
  exactly as the sequential path would, so frames are allocated in the same
  order and every translation is identical.

Errors never stop a batch: every address is tried, a batch with failures
logs one WARNING (how many, the first few indices and the first error),
and ``errors="raise"`` raises :class:`BatchOperationFailed` with the true
success count at the end; ``errors="collect"`` returns a
:class:`BatchResult` instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from vmopt.errors import AddressError, ConfigError, VmoptError

__all__ = [
    "Addrs",
    "ArrayPath",
    "BatchOperationFailed",
    "BatchResult",
    "as_addresses",
    "bad_address",
    "finish",
    "is_address",
    "run_sequential",
]

log = logging.getLogger(__name__)

Addrs = Sequence[int] | npt.NDArray[np.integer[Any]]
ErrorMode = Literal["raise", "collect"]
U64 = npt.NDArray[np.uint64]


class ArrayPath(NamedTuple):
    """How ``run_sequential`` translates arrays.

    ``translate(vas, out)`` translates a prefix of ``vas`` into ``out`` and
    returns ``(done, error)``: ``error`` is the exception of address
    ``done`` (or None when all were done). ``resume(va, error)`` finishes
    that address as the scalar operation would: it returns the value or
    raises (a :class:`VmoptError` is recorded as that index's failure).
    """

    translate: Callable[[U64, U64], tuple[int, BaseException | None]]
    resume: Callable[[int, BaseException], Any]


class BatchOperationFailed(VmoptError):
    """Some operations of a batch failed.

    The message reads ``batch operation failed: {success}/{total} succeeded``.
    ``failed`` lists the failing indices in order; ``errors`` maps each to
    its exception.
    """

    def __init__(self, success: int, total: int, errors: dict[int, BaseException]) -> None:
        super().__init__(f"batch operation failed: {success}/{total} succeeded")
        self.success = success
        self.total = total
        self.errors = errors
        self.failed = sorted(errors)


@dataclass
class BatchResult:
    """What ``errors="collect"`` returns.

    ``values`` is in input order (a list with None, or a uint64 array with 0,
    where an operation failed); ``ok`` is the success mask; ``errors`` maps
    failing indices to their exceptions.
    """

    values: list[Any] | npt.NDArray[np.uint64]
    ok: npt.NDArray[np.bool_]
    errors: dict[int, BaseException] = field(default_factory=dict)

    @property
    def success(self) -> int:
        """Operations that succeeded."""
        return int(self.ok.sum())

    @property
    def total(self) -> int:
        """Operations in the batch."""
        return len(self.ok)

    @property
    def failed(self) -> list[int]:
        """Indices that failed, in order."""
        return sorted(self.errors)


def check_errors_mode(errors: str) -> ErrorMode:
    """Validate the ``errors`` argument."""
    if not isinstance(errors, str) or errors not in ("raise", "collect"):
        raise ConfigError(f"errors must be 'raise' or 'collect', got {errors!r}")
    return errors  # type: ignore[return-value]


def is_address(a: object) -> bool:
    """True for an integer (NumPy's too) that is not a bool: what a list batch may hold."""
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def bad_address(index: int, a: object) -> AddressError:
    """The failure recorded for a list entry that is not an address."""
    return AddressError(f"batch index {index}: an address must be an integer, got {a!r}")


def as_addresses(addrs: Addrs) -> tuple[list[Any] | npt.NDArray[np.uint64], bool]:
    """Normalise input: (addresses, is_array). Arrays become uint64; lists stay lists.

    A list entry that is not an integer (see :func:`is_address`) is kept as it
    is, to fail at its own index; input that is neither an array nor an
    iterable of entries raises :class:`AddressError`.
    """
    if isinstance(addrs, np.ndarray):
        if addrs.ndim != 1 or not np.issubdtype(addrs.dtype, np.integer):
            raise ConfigError(
                f"address array must be 1-D of an integer dtype, got {addrs.dtype}{list(addrs.shape)}"
            )
        if np.issubdtype(addrs.dtype, np.signedinteger) and addrs.size and int(addrs.min()) < 0:
            raise ConfigError(f"address array holds a negative value: {int(addrs.min())}")
        return addrs.astype(np.uint64, copy=False), True
    if isinstance(addrs, (str, bytes, bytearray)) or not isinstance(addrs, Iterable):
        raise AddressError(f"addresses must be a sequence of integers or an integer array, got {addrs!r}")
    return [int(a) if is_address(a) else a for a in addrs], False


#: Failed indices a batch's summary line names.
SUMMARY_INDICES: Final = 5


def record_failure(errors: dict[int, BaseException], index: int, va: object, exc: BaseException) -> None:
    """Note one failed operation (logged at DEBUG; :func:`finish` logs the batch's summary).

    The exception is kept without its traceback: that would only show the
    batch loop, and would tie every recorded failure to the loop's frames in
    a reference cycle.
    """
    errors[index] = exc.with_traceback(None)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "batch index %d (va %s) failed: %s", index, hex(va) if isinstance(va, int) else repr(va), exc
        )


def log_summary(errors: dict[int, BaseException], total: int) -> None:
    """One WARNING for a batch with failures: the count, the first indices, the first error."""
    failed = sorted(errors)
    shown = ", ".join(map(str, failed[:SUMMARY_INDICES])) + (", ..." if len(failed) > SUMMARY_INDICES else "")
    log.warning(
        "batch: %d of %d operations failed (indices %s); first error: %s",
        len(failed), total, shown, errors[failed[0]],
    )  # fmt: skip


def finish(
    values: list[Any] | npt.NDArray[np.uint64],
    errors: dict[int, BaseException],
    mode: ErrorMode,
    total: int,
    *,
    log_failures: bool = True,
) -> Any:
    """Return values, raise :class:`BatchOperationFailed`, or wrap a :class:`BatchResult`.

    ``log_failures=False`` skips the summary WARNING (for callers that expect
    failures and count them, such as a trace replay).
    """
    if errors and log_failures:
        log_summary(errors, total)
    if mode == "collect":
        ok = np.ones(total, dtype=bool)
        if errors:
            ok[list(errors)] = False
        return BatchResult(values, ok, errors)
    if errors:
        raise BatchOperationFailed(total - len(errors), total, errors)
    return values


def run_sequential(
    op: Callable[[int], Any],
    addrs: Addrs,
    errors: str = "raise",
    *,
    chunk_size: int = 10_000,
    array_path: ArrayPath | None = None,
    log_failures: bool = True,
) -> Any:
    """Apply ``op`` to every address in order.

    Array input goes through ``array_path`` when given (see
    :class:`ArrayPath`), ``chunk_size`` addresses per call; ``log_failures``
    as for :func:`finish`.
    """
    mode = check_errors_mode(errors)
    values, is_array = as_addresses(addrs)
    total = len(values)
    failures: dict[int, BaseException] = {}
    if not is_array:
        results: list[Any] = [None] * total
        for i, va in enumerate(values):
            try:
                if not is_address(va):
                    raise bad_address(i, va)
                results[i] = op(va)
            except VmoptError as exc:
                record_failure(failures, i, va, exc)
        return finish(results, failures, mode, total, log_failures=log_failures)
    arr = np.ascontiguousarray(values, dtype=np.uint64)
    # Every slot is written below (failures with 0): np.empty reuses freed
    # memory as it is, where zeros would clear it or fault in fresh pages.
    out = np.empty(total, dtype=np.uint64)
    for start in range(0, total, chunk_size):
        end = min(start + chunk_size, total)
        pos = start
        while pos < end:
            if array_path is None:
                error: BaseException | None = None
                try:
                    out[pos] = op(int(arr[pos]))
                except VmoptError as exc:
                    out[pos] = 0
                    record_failure(failures, pos, int(arr[pos]), exc)
                pos += 1
                continue
            done, error = array_path.translate(arr[pos:end], out[pos:end])
            pos += done
            if error is None:
                break
            va = int(arr[pos])
            try:
                out[pos] = array_path.resume(va, error)
            except VmoptError as exc:
                out[pos] = 0
                record_failure(failures, pos, va, exc)
            pos += 1
    return finish(out, failures, mode, total, log_failures=log_failures)


async def run_chunked_async(op: Callable[[int], Any], addrs: Addrs, errors: str, *, chunk_size: int) -> Any:
    """CPU-bound work under asyncio: in order, yielding to the loop between chunks.

    Concurrency cannot speed CPU-bound lookups in Python (one interpreter
    thread, nothing to await); this keeps an event loop responsive instead.
    """
    mode = check_errors_mode(errors)
    values, is_array = as_addresses(addrs)
    total = len(values)
    failures: dict[int, BaseException] = {}
    results: Any = np.zeros(total, dtype=np.uint64) if is_array else [None] * total
    for start in range(0, total, chunk_size):
        for i in range(start, min(start + chunk_size, total)):
            va = values[i]
            try:
                if not is_address(va):
                    raise bad_address(i, va)
                results[i] = op(int(va))
            except VmoptError as exc:
                record_failure(failures, i, va, exc)
        await asyncio.sleep(0)
    return finish(results, failures, mode, total)
