"""Built-in synthetic workloads: deterministic address streams with known shape.

Each workload is a function taking keyword parameters and returning an
iterator of :class:`~vmopt.traces.chunk.TraceChunk`. Parameters are checked
when the function is called (not on first ``next``), and bad values raise
:class:`~vmopt.errors.ConfigError` naming the parameter.

Common parameters:

``length``
    Number of accesses to produce.
``footprint``
    Bytes of address space touched; every address lies in
    ``[base, base + footprint)``. At most ``2**47`` (128 TiB).
``base``
    First virtual address, default ``0x7f00_0000_0000`` (a canonical x86-64
    4-level user address). It is above ``2**38``, so for RISC-V Sv39 (or
    any smaller address space) pass a lower ``base``.
``seed``
    Seed of the ``numpy.random.Generator(PCG64(seed))`` that drives the
    randomness. The output depends only on the parameters and the seed,
    never on ``chunk_size`` (data is generated in fixed-size blocks and
    re-cut afterwards).
``write_ratio``
    Probability that an access is a write (where the workload has one).
``chunk_size``
    Maximum accesses per yielded chunk.

Use :func:`make_workload` to build one by name (as the CLI does), or call
the functions directly.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from vmopt.errors import ConfigError
from vmopt.traces.chunk import DEFAULT_CHUNK_SIZE, AccessKind, TraceChunk, rechunk

__all__ = [
    "DEFAULT_BASE",
    "WORKLOADS",
    "WorkloadFactory",
    "make_workload",
    "matmul",
    "matmul_length",
    "numa_mix",
    "pointer_chase",
    "sequential",
    "strided",
    "uniform",
    "zipf",
]

logger = logging.getLogger(__name__)

#: Default first address: canonical x86-64 user space (NOT below 2**38: set
#: ``base`` yourself for Sv39 and other small address spaces).
DEFAULT_BASE: Final = 0x7F00_0000_0000
DEFAULT_LENGTH: Final = 1_000_000
DEFAULT_FOOTPRINT: Final = 64 << 20
MAX_FOOTPRINT: Final = 1 << 47
#: Bound on per-page / per-node tables (zipf CDF, pointer-chase permutation).
MAX_ZIPF_PAGES: Final = 1 << 24
MAX_CHASE_NODES: Final = 1 << 28
MAX_MATMUL_N: Final = 1 << 16

# Data is generated in blocks of this many accesses, then re-cut to chunk_size.
_BLOCK: Final = 1 << 16

U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]

WorkloadFactory = Callable[..., Iterator[TraceChunk]]


# -- parameter checks -------------------------------------------------------


def _int(
    workload: str,
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    maximum_of: str | None = None,
) -> int:
    """``value`` as an int within bounds, else ConfigError naming ``name``.

    ``maximum_of`` names the parameter ``maximum`` comes from, so a too small
    footprint is reported as such rather than as a too large element size.
    """
    bounds = []
    if minimum is not None:
        bounds.append(f">= {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    want = f"an integer {' and '.join(bounds)}".rstrip()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{workload}: {name} must be {want}, got {value!r}")
    number = int(value)
    if maximum_of is not None and maximum is not None and number > maximum:
        raise ConfigError(
            f"{workload}: {name} must be {want}, got {value!r}: the bound is {maximum_of} ({maximum});"
            f" raise {maximum_of} or lower {name}"
        )
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ConfigError(f"{workload}: {name} must be {want}, got {value!r}")
    return int(number)


def _float(
    workload: str,
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite float within bounds, else ConfigError naming ``name``."""
    lo = f"{'>' if open_min else '>='} {minimum}"
    hi = "" if maximum is None else f" and {'<' if open_max else '<='} {maximum}"
    want = f"a number {lo}{hi}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{workload}: {name} must be {want}, got {value!r}")
    number = float(value)
    bad = (
        not math.isfinite(number)
        or number < minimum
        or (open_min and number == minimum)
        or (maximum is not None and (number > maximum or (open_max and number == maximum)))
    )
    if bad:
        raise ConfigError(f"{workload}: {name} must be {want}, got {value!r}")
    return number


def _common(
    workload: str, length: object, footprint: object, base: object, seed: object, chunk_size: object
) -> tuple[int, int, int, int, int]:
    """Check the parameters every footprint-based workload shares."""
    n = _int(workload, "length", length, minimum=1)
    fp = _int(workload, "footprint", footprint, minimum=1, maximum=MAX_FOOTPRINT)
    b = _int(workload, "base", base, minimum=0, maximum=(1 << 64) - fp)
    s = _int(workload, "seed", seed, minimum=0)
    cs = _int(workload, "chunk_size", chunk_size, minimum=1)
    return n, fp, b, s, cs


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _kinds(rng: np.random.Generator, n: int, write_ratio: float) -> U8:
    """READ/WRITE kinds with P(write) = ``write_ratio`` (no draws when it is 0)."""
    if write_ratio == 0.0:
        return np.zeros(n, np.uint8)
    writes = rng.random(n) < write_ratio
    return np.where(writes, np.uint8(AccessKind.WRITE), np.uint8(AccessKind.READ))


def _blocks(length: int) -> Iterator[tuple[int, int]]:
    """``(start, count)`` of the fixed-size generation blocks covering ``length``."""
    for start in range(0, length, _BLOCK):
        yield start, min(_BLOCK, length - start)


# -- workloads --------------------------------------------------------------


def sequential(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    elem_size: int = 8,
    write_ratio: float = 0.25,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Scan the footprint element by element, wrapping around (streaming access).

    The best case for TLBs and prefetchers: every page is used fully before
    the next one. ``elem_size`` is the step in bytes.
    """
    w = "sequential"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    elem_size = _int(w, "elem_size", elem_size, minimum=1, maximum=footprint, maximum_of="footprint")
    write_ratio = _float(w, "write_ratio", write_ratio, minimum=0.0, maximum=1.0)
    elems = footprint // elem_size

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        for start, n in _blocks(length):
            index = (np.arange(start, start + n, dtype=np.uint64)) % np.uint64(elems)
            addrs = np.uint64(base) + index * np.uint64(elem_size)
            yield TraceChunk(addrs, _kinds(rng, n, write_ratio))

    return rechunk(gen(), chunk_size)


def strided(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    stride: int = 4096 + 64,
    write_ratio: float = 0.25,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Access ``base + (i * stride) % footprint``: one access per page and more.

    The default stride of 4096 + 64 bytes touches a new page (and a new
    cache set) on every access, the classic TLB-thrashing pattern.
    """
    w = "strided"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    stride = _int(w, "stride", stride, minimum=1)
    write_ratio = _float(w, "write_ratio", write_ratio, minimum=0.0, maximum=1.0)
    step = np.uint64(stride % footprint)
    fp = np.uint64(footprint)

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        for start, n in _blocks(length):
            first = np.uint64(start * (stride % footprint) % footprint)
            # i * step < 2**16 * 2**47, so no uint64 overflow.
            offsets = (first + (np.arange(n, dtype=np.uint64) * step) % fp) % fp
            yield TraceChunk(np.uint64(base) + offsets, _kinds(rng, n, write_ratio))

    return rechunk(gen(), chunk_size)


def uniform(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    elem_size: int = 8,
    write_ratio: float = 0.25,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Independent uniformly random ``elem_size``-aligned accesses over the footprint.

    No locality at all: the TLB hit rate approaches (TLB reach / footprint).
    """
    w = "uniform"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    elem_size = _int(w, "elem_size", elem_size, minimum=1, maximum=footprint, maximum_of="footprint")
    write_ratio = _float(w, "write_ratio", write_ratio, minimum=0.0, maximum=1.0)
    elems = footprint // elem_size

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        for _, n in _blocks(length):
            index = rng.integers(0, elems, n, dtype=np.uint64)
            addrs = np.uint64(base) + index * np.uint64(elem_size)
            yield TraceChunk(addrs, _kinds(rng, n, write_ratio))

    return rechunk(gen(), chunk_size)


def zipf(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    alpha: float = 1.1,
    page_size: int = 4096,
    elem_size: int = 8,
    write_ratio: float = 0.25,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Zipf-popular pages (a hot set) with a random aligned offset inside the page.

    Page popularity follows a *bounded* Zipf law over the
    ``footprint // page_size`` pages: the page of rank ``k`` (1-based) is
    chosen with probability proportional to ``k ** -alpha``, sampled by
    inverting the exact CDF (unlike ``numpy.random.zipf``, whose support is
    unbounded). Ranks are mapped to pages by a random permutation so hot
    pages are scattered. Any ``alpha > 0`` is valid; larger is more skewed.
    The CDF and permutation take 16 bytes per page (at most 2**24 pages).
    """
    w = "zipf"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    alpha = _float(w, "alpha", alpha, minimum=0.0, open_min=True)
    page_size = _int(w, "page_size", page_size, minimum=1, maximum=footprint, maximum_of="footprint")
    elem_size = _int(w, "elem_size", elem_size, minimum=1, maximum=page_size, maximum_of="page_size")
    write_ratio = _float(w, "write_ratio", write_ratio, minimum=0.0, maximum=1.0)
    pages = footprint // page_size
    if pages > MAX_ZIPF_PAGES:
        raise ConfigError(
            f"{w}: footprint {footprint} / page_size {page_size} gives {pages} pages, more "
            f"than the {MAX_ZIPF_PAGES} supported; use a larger page_size"
        )
    slots = page_size // elem_size

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        cdf = np.cumsum(np.arange(1, pages + 1, dtype=np.float64) ** -alpha)
        cdf /= cdf[-1]
        page_of_rank = rng.permutation(pages).astype(np.uint64)
        last = pages - 1
        for _, n in _blocks(length):
            rank = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), last)
            slot = rng.integers(0, slots, n, dtype=np.uint64)
            offsets = page_of_rank[rank] * np.uint64(page_size) + slot * np.uint64(elem_size)
            yield TraceChunk(np.uint64(base) + offsets, _kinds(rng, n, write_ratio))

    return rechunk(gen(), chunk_size)


def pointer_chase(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    line_size: int = 64,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Follow a random cyclic linked list of ``line_size``-byte nodes (all reads).

    The ``footprint // line_size`` nodes are linked in one random cycle, so
    each access's address is the pointer loaded by the previous one
    (latency-bound, defeats prefetching) and every node is visited exactly
    once per ``footprint // line_size`` accesses. The permutation takes 4
    bytes per node (at most 2**28 nodes).
    """
    w = "pointer_chase"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    line_size = _int(w, "line_size", line_size, minimum=1, maximum=footprint, maximum_of="footprint")
    nodes = footprint // line_size
    if nodes > MAX_CHASE_NODES:
        raise ConfigError(
            f"{w}: footprint {footprint} / line_size {line_size} gives {nodes} nodes, more "
            f"than the {MAX_CHASE_NODES} supported; use a larger line_size"
        )

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        # Visiting order[0], order[1], ... is the cycle order[i] -> order[i + 1].
        order = np.arange(nodes, dtype=np.uint32)
        rng.shuffle(order)
        for start, n in _blocks(length):
            index = np.arange(start, start + n, dtype=np.int64) % nodes
            addrs = np.uint64(base) + order[index].astype(np.uint64) * np.uint64(line_size)
            yield TraceChunk(addrs, np.zeros(n, np.uint8))

    return rechunk(gen(), chunk_size)


def matmul_length(n: int, tile: int) -> int:
    """Accesses in one tiled ``n``x``n`` multiply: ``2 * n**2 * (n + ceil(n / tile))``.

    Per (i, j) and k-tile: one load and one store of C, plus a load of A and
    of B per k; summed over the k-tiles that is ``2 * ceil(n/tile) + 2 * n``.
    """
    return 2 * n * n * (n + -(-n // tile))


def matmul(
    *,
    n: int = 256,
    tile: int = 32,
    base: int = DEFAULT_BASE,
    length: int | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Tiled ``C += A @ B`` over three row-major ``n``x``n`` float64 matrices.

    A, B and C lie back to back from ``base`` (8 * n * n bytes each). The
    loop nest is ``for ii, jj, kk`` (tiles of ``tile``) ``for i, j``: load
    ``C[i][j]``, then ``for k``: load ``A[i][k]``, load ``B[k][j]``; then
    store ``C[i][j]`` (a WRITE). B's column walk is the TLB-hostile part;
    smaller tiles trade it for more C traffic. ``length`` defaults to one
    full multiply (:func:`matmul_length`); a larger one repeats the multiply,
    a smaller one truncates it. ``seed`` is accepted for uniformity and
    ignored (the pattern is deterministic).
    """
    w = "matmul"
    n = _int(w, "n", n, minimum=1, maximum=MAX_MATMUL_N)
    tile = _int(w, "tile", tile, minimum=1, maximum=n, maximum_of="n")
    base = _int(w, "base", base, minimum=0, maximum=(1 << 64) - 24 * n * n)
    _int(w, "seed", seed, minimum=0)
    chunk_size = _int(w, "chunk_size", chunk_size, minimum=1)
    total = matmul_length(n, tile) if length is None else _int(w, "length", length, minimum=1)
    a_base = np.uint64(base)
    b_base = np.uint64(base + 8 * n * n)
    c_base = np.uint64(base + 16 * n * n)
    nn = np.uint64(n)
    eight = np.uint64(8)

    def one_pass() -> Iterator[TraceChunk]:
        for ii in range(0, n, tile):
            for jj in range(0, n, tile):
                for kk in range(0, n, tile):
                    tk = min(tile, n - kk)
                    row = 2 + 2 * tk  # accesses per (i, j)
                    tj = min(tile, n - jj)
                    j_step = min(tj, max(1, _BLOCK // row))
                    i_step = max(1, _BLOCK // (j_step * row)) if j_step == tj else 1
                    k = np.arange(kk, kk + tk, dtype=np.uint64)
                    for i0 in range(ii, min(ii + tile, n), i_step):
                        i = np.arange(i0, min(i0 + i_step, ii + tile, n), dtype=np.uint64)
                        for j0 in range(jj, jj + tj, j_step):
                            j = np.arange(j0, min(j0 + j_step, jj + tj), dtype=np.uint64)
                            yield _matmul_piece(i, j, k, nn, eight, a_base, b_base, c_base)

    def gen() -> Iterator[TraceChunk]:
        left = total
        while left > 0:
            for piece in one_pass():
                if len(piece) >= left:
                    yield piece.slice(0, left)
                    return
                left -= len(piece)
                yield piece

    return rechunk(gen(), chunk_size)


def _matmul_piece(
    i: U64,
    j: U64,
    k: U64,
    nn: np.uint64,
    eight: np.uint64,
    a_base: np.uint64,
    b_base: np.uint64,
    c_base: np.uint64,
) -> TraceChunk:
    """Accesses of rows ``i`` x columns ``j`` for one k-tile, in loop order."""
    ti, tj, tk = i.shape[0], j.shape[0], k.shape[0]
    out = np.empty((ti, tj, 2 + 2 * tk), np.uint64)
    c = c_base + (i[:, None] * nn + j[None, :]) * eight
    out[:, :, 0] = c
    out[:, :, 1:-1:2] = (a_base + (i[:, None] * nn + k[None, :]) * eight)[:, None, :]
    out[:, :, 2:-1:2] = (b_base + (k[None, :] * nn + j[:, None]) * eight)[None, :, :]
    out[:, :, -1] = c
    kinds = np.zeros(out.shape, np.uint8)
    kinds[:, :, -1] = AccessKind.WRITE
    return TraceChunk(out.reshape(-1), kinds.reshape(-1))


def numa_mix(
    *,
    length: int = DEFAULT_LENGTH,
    footprint: int = DEFAULT_FOOTPRINT,
    base: int = DEFAULT_BASE,
    seed: int = 0,
    cpus: int = 2,
    shared_fraction: float = 0.2,
    burst: int = 64,
    page_size: int = 4096,
    elem_size: int = 8,
    write_ratio: float = 0.25,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[TraceChunk]:
    """Several vCPUs, each with a private region, sharing one region; fills ``cpus``.

    The footprint is split into a shared region of ``shared_fraction`` of it
    (at ``base``) followed by ``cpus`` equal private regions, all
    ``page_size``-aligned. vCPUs take turns in round-robin bursts of
    ``burst`` accesses; each access goes to the shared region with
    probability ``shared_fraction`` (so access density is even across the
    footprint), else to the vCPU's private region, at a uniformly random
    ``elem_size``-aligned offset. Good for NUMA placement and TLB-shootdown
    studies: private pages belong on the vCPU's node, shared pages do not.
    """
    w = "numa_mix"
    length, footprint, base, seed, chunk_size = _common(w, length, footprint, base, seed, chunk_size)
    cpus = _int(w, "cpus", cpus, minimum=1, maximum=0xFFFF + 1)
    shared_fraction = _float(w, "shared_fraction", shared_fraction, minimum=0.0, maximum=1.0, open_max=True)
    burst = _int(w, "burst", burst, minimum=1)
    page_size = _int(w, "page_size", page_size, minimum=1, maximum=footprint, maximum_of="footprint")
    elem_size = _int(w, "elem_size", elem_size, minimum=1, maximum=page_size, maximum_of="page_size")
    write_ratio = _float(w, "write_ratio", write_ratio, minimum=0.0, maximum=1.0)
    shared_bytes = int(footprint * shared_fraction) // page_size * page_size
    private_bytes = (footprint - shared_bytes) // cpus // page_size * page_size
    if private_bytes < page_size or (shared_fraction > 0 and shared_bytes < page_size):
        raise ConfigError(
            f"{w}: footprint {footprint} is too small for {cpus} private regions and a "
            f"shared fraction of {shared_fraction} in {page_size}-byte pages"
        )
    shared_slots = shared_bytes // elem_size
    private_slots = private_bytes // elem_size

    def gen() -> Iterator[TraceChunk]:
        rng = _rng(seed)
        for start, n in _blocks(length):
            cpu = (np.arange(start, start + n, dtype=np.int64) // burst) % cpus
            shared = rng.random(n) < shared_fraction
            slot: U64 = np.where(
                shared,
                rng.integers(0, max(shared_slots, 1), n, dtype=np.uint64),
                rng.integers(0, private_slots, n, dtype=np.uint64),
            ).astype(np.uint64, copy=False)
            private_start = np.uint64(shared_bytes) + cpu.astype(np.uint64) * np.uint64(private_bytes)
            region: U64 = np.where(shared, np.uint64(0), private_start).astype(np.uint64, copy=False)
            addrs = np.uint64(base) + region + slot * np.uint64(elem_size)
            yield TraceChunk(addrs, _kinds(rng, n, write_ratio), cpu.astype(np.uint16))

    return rechunk(gen(), chunk_size)


#: The built-in workloads by name (read-only).
WORKLOADS: Final[Mapping[str, WorkloadFactory]] = MappingProxyType(
    {
        "sequential": sequential,
        "strided": strided,
        "uniform": uniform,
        "zipf": zipf,
        "pointer_chase": pointer_chase,
        "matmul": matmul,
        "numa_mix": numa_mix,
    }
)


def make_workload(name: str, **params: Any) -> Iterator[TraceChunk]:
    """Build the workload ``name`` from :data:`WORKLOADS` with keyword ``params``.

    Unknown names and parameters raise :class:`ConfigError` listing what is
    accepted; parameter values are checked by the workload itself.
    """
    factory = WORKLOADS.get(name)
    if factory is None:
        raise ConfigError(f"unknown workload {name!r}; expected one of: {', '.join(sorted(WORKLOADS))}")
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"workload {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    logger.debug("workload %s with %s", name, params)
    return factory(**params)
