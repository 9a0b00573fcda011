"""Trace parsing alone: the core's readers against the Python reference reader.

Measures accesses/s of reading a trace to its end (open, decompress,
parse, chunks into NumPy) with ``vmopt.traces.open_trace`` (the Rust core)
and with ``reference.traces.open_trace`` (the former Python reader), on:

* the Lackey traces of real programs in benchmarks/.traces (made with
  valgrind by _common.py), gzip-compressed as stored and decompressed to
  plain text in a temporary directory;
* a 100M-access ``.npy`` trace (memory-mapped), made in /tmp;
* a synthetic ChampSim trace of 20M instructions (raw), made in /tmp.

Medians over ``--reps`` runs. Bars, parsing alone: plain Lackey >= 10M
accesses/s, npy >= 50M/s, ChampSim >= 30M/s (the issue's end-to-end bars
need the pipelined driver).

    python benchmarks/bench_parse.py [--reps 3] [--npy 100000000] [--champsim 20000000]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import lackey_traces, median

from reference.traces import open_trace as ref_open_trace
from trace_layouts import INPUT_INSTR as CHAMPSIM
from vmopt.traces import open_trace

BARS = {"lackey": 10e6, "npy": 50e6, "champsim": 30e6}


def drain(opener: Callable[..., Any], path: Path, **kw: Any) -> int:
    n = 0
    with opener(path, **kw) as trace:
        for chunk in trace:
            n += len(chunk)
    return n


def rate(opener: Callable[..., Any], paths: list[Path], reps: int, **kw: Any) -> tuple[int, float]:
    """(accesses, median accesses/s) of reading every path once per rep."""
    times = []
    total = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        total = sum(drain(opener, p, **kw) for p in paths)
        times.append(time.perf_counter() - t0)
    return total, total / median(times)


def make_npy(path: Path, n: int) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=(n,))
    rng = np.random.default_rng(0)
    step = 1 << 24
    for i in range(0, n, step):
        m = min(step, n - i)
        out[i : i + m] = np.uint64(0x7F00_0000_0000) + rng.integers(0, 1 << 30, m, dtype=np.uint64)
    out.flush()
    del out


def make_champsim(path: Path, n: int) -> int:
    """Write ``n`` instructions (about half with one read, a quarter with a write); return accesses."""
    rng = np.random.default_rng(1)
    accesses = 0
    step = 1 << 20
    with open(path, "wb") as f:
        for i in range(0, n, step):
            m = min(step, n - i)
            rec = np.zeros(m, CHAMPSIM)
            rec["ip"] = 0x400000 + 4 * (np.arange(m, dtype=np.uint64) + np.uint64(i))
            reads = rng.random(m) < 0.5
            writes = rng.random(m) < 0.25
            rec["src_mem"][reads, 0] = rng.integers(1 << 40, 1 << 41, int(reads.sum()), dtype=np.uint64)
            rec["dst_mem"][writes, 0] = rng.integers(1 << 40, 1 << 41, int(writes.sum()), dtype=np.uint64)
            accesses += m + int(reads.sum()) + int(writes.sum())
            f.write(rec.tobytes())
    return accesses


def report(name: str, core: tuple[int, float], ref: tuple[int, float] | None, bar: float | None) -> bool:
    n, core_rate = core
    line = f"{name:<28} {n:>12,} accesses   core {core_rate / 1e6:7.1f} M/s"
    if ref is not None:
        assert ref[0] == n, f"{name}: the reference read {ref[0]} accesses, the core {n}"
        line += f"   reference {ref[1] / 1e6:6.2f} M/s   x{core_rate / ref[1]:.0f}"
    ok = bar is None or core_rate >= bar
    if bar is not None:
        line += f"   bar >= {bar / 1e6:.0f} M/s: {'ok' if ok else 'MISSED'}"
    print(line, flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--npy", type=int, default=100_000_000, help="accesses in the npy trace")
    p.add_argument("--champsim", type=int, default=20_000_000, help="instructions in the ChampSim trace")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) reference reader")
    args = p.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp_dir:
        tmp = Path(tmp_dir)
        traces = lackey_traces()
        if traces:
            gz = [path for _, path in traces]
            plain = []
            for name, path in traces:
                out = tmp / f"{name}.lackey"
                with gzip.open(path, "rb") as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                plain.append(out)
            with_ref = not args.no_reference
            ok &= report(
                "lackey, plain text",
                rate(open_trace, plain, args.reps),
                rate(ref_open_trace, plain, 1) if with_ref else None,
                BARS["lackey"],
            )
            report(
                "lackey, gzip",
                rate(open_trace, gz, args.reps),
                rate(ref_open_trace, gz, 1) if with_ref else None,
                None,
            )
        npy = tmp / "trace.npy"
        make_npy(npy, args.npy)
        ok &= report(
            f"npy, {args.npy // 1_000_000}M uint64",
            rate(open_trace, [npy], args.reps),
            None if args.no_reference else rate(ref_open_trace, [npy], 1),
            BARS["npy"],
        )
        npy.unlink()
        champ = tmp / "trace.champsimtrace"
        want = make_champsim(champ, args.champsim)
        core = rate(open_trace, [champ], args.reps)
        assert core[0] == want, f"ChampSim: read {core[0]} accesses, wrote {want}"
        ok &= report(f"champsim, {args.champsim // 1_000_000}M instructions", core, None, BARS["champsim"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
