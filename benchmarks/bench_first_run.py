"""The first run after install: ``vmopt simulate`` on its default workload in a fresh venv.

Builds a wheel of this checkout (``pip wheel``, not timed), installs it into
a new virtual environment (not timed), then times ``vmopt simulate
--no-progress`` in that venv, ``--reps`` times, each in a fresh process;
the first of them is the very first run after install. Nothing is compiled
at run time: the Rust core comes compiled in the wheel.

    python benchmarks/bench_first_run.py [--reps 5]

Exits 1 if the first run or the median takes 2 s or more.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median

BAR_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
            check=True,
        )
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        wheel = next(wheels.glob("vmopt-*.whl"))
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True)
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            subprocess.run(
                [str(venv / "bin" / "vmopt"), "simulate", "--no-progress"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - t0)
    first, med = times[0], median(times)
    ok = first < BAR_S and med < BAR_S
    print(
        f"vmopt simulate (default workload) in a fresh venv: first run {first:.2f} s,"
        f" median of {args.reps} {med:.2f} s (bar < {BAR_S:.0f} s: {'ok' if ok else 'MISSED'})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
