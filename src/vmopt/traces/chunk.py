"""The trace data model: chunks of accesses as parallel NumPy arrays.

A trace is an iterator of :class:`TraceChunk`. Chunks keep traces of any
length in bounded memory while letting consumers work on whole arrays
instead of one access at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "AccessKind",
    "TraceChunk",
    "concat_chunks",
    "rechunk",
]

#: Default number of accesses per chunk.
DEFAULT_CHUNK_SIZE = 65536

AddrArray = npt.NDArray[np.uint64]
KindArray = npt.NDArray[np.uint8]
CpuArray = npt.NDArray[np.uint16]
AsidArray = npt.NDArray[np.uint16]


class AccessKind(IntEnum):
    """What an access does; the values are those stored in ``TraceChunk.kinds``."""

    READ = 0
    WRITE = 1
    FETCH = 2


@dataclass(frozen=True, eq=False, slots=True)
class TraceChunk:
    """A run of accesses: ``addrs[i]`` is accessed as ``kinds[i]`` by vCPU ``cpus[i]``.

    ``addrs`` is ``uint64`` virtual addresses, ``kinds`` is ``uint8``
    :class:`AccessKind` values and ``cpus`` (``uint16`` vCPU numbers) is
    ``None`` for single-vCPU traces. ``asids`` (``uint16`` address-space
    ids, from formats that carry them: ChampSim cloudsuite, drmemtrace) is
    ``None`` for traces of one address space; the simulator does not use it
    yet. All arrays are 1-D and equally long. Treat the arrays as
    read-only: readers may hand out views of buffers.
    """

    addrs: AddrArray
    kinds: KindArray
    cpus: CpuArray | None = None
    asids: AsidArray | None = None

    def __post_init__(self) -> None:
        if self.addrs.dtype != np.uint64 or self.addrs.ndim != 1:
            raise TypeError(f"addrs must be a 1-D uint64 array, got {self.addrs.dtype} {self.addrs.shape}")
        if self.kinds.dtype != np.uint8 or self.kinds.shape != self.addrs.shape:
            raise TypeError(
                f"kinds must be a uint8 array shaped like addrs {self.addrs.shape}, "
                f"got {self.kinds.dtype} {self.kinds.shape}"
            )
        if self.cpus is not None and (self.cpus.dtype != np.uint16 or self.cpus.shape != self.addrs.shape):
            raise TypeError(
                f"cpus must be None or a uint16 array shaped like addrs {self.addrs.shape}, "
                f"got {self.cpus.dtype} {self.cpus.shape}"
            )
        if self.asids is not None and (self.asids.dtype != np.uint16 or self.asids.shape != self.addrs.shape):
            raise TypeError(
                f"asids must be None or a uint16 array shaped like addrs {self.addrs.shape}, "
                f"got {self.asids.dtype} {self.asids.shape}"
            )

    def __len__(self) -> int:
        return int(self.addrs.shape[0])

    def slice(self, start: int, stop: int) -> TraceChunk:
        """Return accesses ``start:stop`` as a chunk of views (no copy)."""
        return TraceChunk(
            self.addrs[start:stop],
            self.kinds[start:stop],
            None if self.cpus is None else self.cpus[start:stop],
            None if self.asids is None else self.asids[start:stop],
        )


def concat_chunks(chunks: Sequence[TraceChunk]) -> TraceChunk:
    """Join chunks into one; ``cpus`` and ``asids`` are kept only if every chunk has them.

    An empty sequence gives an empty chunk. Mixing chunks with and without
    ``cpus`` (or ``asids``) is a ``ValueError`` (it would silently lose them).
    """
    if not chunks:
        return TraceChunk(np.empty(0, np.uint64), np.empty(0, np.uint8))
    if len(chunks) == 1:
        return chunks[0]
    return TraceChunk(
        np.concatenate([c.addrs for c in chunks]),
        np.concatenate([c.kinds for c in chunks]),
        _concat_optional([c.cpus for c in chunks], "cpus"),
        _concat_optional([c.asids for c in chunks], "asids"),
    )


def _concat_optional(parts: Sequence[CpuArray | None], what: str) -> CpuArray | None:
    """Concatenate an optional array of every chunk: all present, or all ``None``."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ValueError(f"cannot concatenate chunks with and without {what}")
    return np.concatenate(present)


def rechunk(chunks: Iterable[TraceChunk], chunk_size: int) -> Iterator[TraceChunk]:
    """Re-cut a stream of chunks into chunks of exactly ``chunk_size`` accesses.

    Only the last chunk may be shorter; empty input chunks are dropped and no
    empty chunk is ever produced. Memory stays within about two chunks plus
    the largest input chunk.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    pending: list[TraceChunk] = []
    pending_len = 0
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        if not pending and n == chunk_size:
            yield chunk
            continue
        pending.append(chunk)
        pending_len += n
        if pending_len < chunk_size:
            continue
        joined = concat_chunks(pending)
        start = 0
        while pending_len - start >= chunk_size:
            yield joined.slice(start, start + chunk_size)
            start += chunk_size
        pending = [joined.slice(start, pending_len)] if start < pending_len else []
        pending_len -= start
    if pending_len:
        yield concat_chunks(pending)
