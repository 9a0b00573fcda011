"""Write the tiny ChampSim, cloudsuite and drmemtrace samples in this directory.

Run from the repository root: ``python tests/data/make_trace_samples.py``.
The samples are built from the struct layouts in tests/trace_layouts.py
with a fixed seed, so running it again gives the same files.
"""

from __future__ import annotations

import gzip
import lzma
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from trace_layouts import (  # noqa: E402
    CLOUDSUITE_INSTR,
    DR_FOOTER,
    DR_HEADER,
    DR_INSTR,
    DR_MARKER,
    DR_PID,
    DR_READ,
    DR_THREAD,
    DR_WRITE,
    INPUT_INSTR,
    TRACE_ENTRY,
)


def champsim(dtype: np.dtype[np.void], n: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, dtype)
    rec["ip"] = 0x400000 + 4 * np.arange(n)
    for field in ("src_mem", "dst_mem"):
        slots = rec[field].shape[1]
        values = rng.integers(0x7F0000000000, 0x7F0000100000, (n, slots), dtype=np.uint64)
        values[rng.random((n, slots)) < 0.6] = 0  # most slots are empty
        rec[field] = values
    rec["is_branch"] = rng.random(n) < 0.2
    if "asid" in (dtype.names or ()):
        rec["asid"][:, 0] = rng.integers(0, 3, n)
    return rec


def drmemtrace(n: int, seed: int) -> np.ndarray:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    entries = [(DR_HEADER, 0, 5), (DR_THREAD, 4, 1001), (DR_PID, 4, 77), (DR_MARKER, 2, 123)]
    for i in range(n):
        if i % 40 == 39:
            entries.append((DR_THREAD, 4, int(rng.choice([1001, 1002, 1003]))))
            entries.append((DR_PID, 4, int(rng.choice([77, 88]))))
        ty = int(rng.choice([DR_INSTR, DR_INSTR, DR_READ, DR_WRITE, 13, 16, DR_MARKER, 2, 29]))
        entries.append((ty, 8, int(rng.integers(0x1000, 0x7FFF_FFFF_F000))))
    entries.append((DR_FOOTER, 0, 0))
    return np.array(entries, TRACE_ENTRY)


def main() -> None:
    (HERE / "sample.champsimtrace.xz").write_bytes(lzma.compress(champsim(INPUT_INSTR, 300, 1).tobytes()))
    (HERE / "sample_cloudsuite.champsimtrace.gz").write_bytes(
        gzip.compress(champsim(CLOUDSUITE_INSTR, 200, 2).tobytes(), mtime=0)
    )
    (HERE / "sample.drmemtrace.gz").write_bytes(gzip.compress(drmemtrace(400, 3).tobytes(), mtime=0))


if __name__ == "__main__":
    main()
