"""Write the seed inputs of the trace fuzz tests (tests/test_traces_fuzz.py).

Run from the repository root: ``python tests/corpus/traces/make_seeds.py``.
Seeds are tiny, one per format and compression plus the hostile inputs
found so far (negative and huge npy shapes, cut headers, oversized header
lengths). Add a file here, by hand or from this script, for every input
that ever broke a reader: the fuzz test replays them all on every run.
"""

from __future__ import annotations

import gzip
import io
import lzma
import struct
from pathlib import Path

import numpy as np
import zstandard

HERE = Path(__file__).parent


def npy(values: np.ndarray, version: tuple[int, int] = (1, 0)) -> bytes:  # type: ignore[type-arg]
    out = io.BytesIO()
    np.lib.format.write_array(out, values, version=version)
    return out.getvalue()


def npy_header(header: str, version: int = 1) -> bytes:
    raw = header.encode()
    size = struct.pack("<H", len(raw)) if version == 1 else struct.pack("<I", len(raw))
    return b"\x93NUMPY" + bytes([version, 0]) + size + raw


def main() -> None:
    lackey = b"==1== Lackey\nI  0400d7d4,8\n L 04222cac,8\n S 1f,4\n M 1f, 4\nSB 4000\n"
    text = b"# c\nR 0x1f\nW 20\nx,,30\n40\n"
    seeds = {
        "lackey.txt": lackey,
        "lackey.txt.gz": gzip.compress(lackey, mtime=0),
        "text.txt": text,
        "text.txt.zst": zstandard.ZstdCompressor().compress(text),
        "text.txt.xz": lzma.compress(text),
        "bad-text.txt": b"R 0xg\n\xff\xfe\nW 1 2\n7f000044cb63 X\n",
        "raw.bin": np.arange(1, 9, dtype="<u8").tobytes(),
        "npy-u8.npy": npy(np.arange(5, dtype=np.uint64)),
        "npy-i2-be-v2.npy": npy(np.array([1, -2, 3], dtype=">i2"), (2, 0)),
        "npy-neg-shape.npy": npy_header("{'descr': '<u8', 'fortran_order': False, 'shape': (-1,), }"),
        "npy-cut-header.npy": npy_header("{'descr': ("),
        "npy-huge-shape.npy": npy_header(
            "{'descr': '<u8', 'fortran_order': False, 'shape': (4611686018427387904,), }"
        ),
        "npy-header-4g.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'",
        "champsim.bin": np.arange(16, dtype="<u8").tobytes() * 2,
        "drmemtrace.bin": struct.pack("<HHQ", 25, 0, 5)
        + struct.pack("<HHQ", 22, 4, 7)
        + struct.pack("<HHQ", 10, 4, 0x400000),
    }
    for name, data in seeds.items():
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
