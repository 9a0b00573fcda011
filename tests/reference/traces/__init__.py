"""The pure-Python trace readers the core's ``vmopt.traces`` replaced: the reference.

``open_trace`` here reads Lackey, text, raw and npy traces (gzip/zstd/xz via
Python's own decompressors) with the exact messages and ``skip_bad`` counts
the product must keep; tests/test_traces_core.py feeds both the same bytes.
"""

from reference.traces.readers import FORMATS, Trace, open_trace

__all__ = ["FORMATS", "Trace", "open_trace"]
