"""Address traces for ``vmopt simulate``: streaming readers and synthetic workloads.

A trace is an iterator of :class:`TraceChunk` (parallel NumPy arrays of
addresses, :class:`AccessKind` values and optional vCPU numbers). Read one
from a file with :func:`open_trace` (Lackey, text, ``.npy``, raw uint64,
ChampSim or DynamoRIO drmemtrace, optionally gzip/zstd/xz compressed, or
stdin; parsed in the Rust core) or generate one with :func:`make_workload`.
"""

from vmopt.traces.chunk import (
    DEFAULT_CHUNK_SIZE,
    AccessKind,
    TraceChunk,
    concat_chunks,
    rechunk,
)
from vmopt.traces.errors import TraceError
from vmopt.traces.readers import COMPRESSIONS, FORMATS, Trace, open_trace
from vmopt.traces.workloads import (
    DEFAULT_BASE,
    WORKLOADS,
    WorkloadFactory,
    make_workload,
    matmul_length,
)

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_BASE",
    "DEFAULT_CHUNK_SIZE",
    "FORMATS",
    "WORKLOADS",
    "AccessKind",
    "Trace",
    "TraceChunk",
    "TraceError",
    "WorkloadFactory",
    "concat_chunks",
    "make_workload",
    "matmul_length",
    "open_trace",
    "rechunk",
]
