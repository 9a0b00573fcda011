"""Run every benchmark and its bar: ``python benchmarks/run_all.py``.

Each script measures ratios within one run (medians over repetitions) and
exits non-zero when its bar is missed. Pass ``--quick`` for shorter
streaming and simulate runs (10M addresses instead of 100M, one run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ("scalar Mmu.translate from Python (hit <= 250 ns, miss + walk <= 1 us)", ["bench_scalar.py"]),
    ("core batch vs a loop over the reference (>= 100x)", ["bench_reference.py"]),
    ("core batch vs scalar translate (>= 1.5x)", ["bench_batch.py"]),
    ("core batch vs pycachesim on six real traces (>= 3x each, equal counts)", ["bench_pycachesim.py"]),
    ("install a fetched page (<= 5 us of CPU)", ["bench_install.py"]),
    ("I/O-bound concurrency, nbdkit 2 ms reads (>= 7x at 8, >= 40x at 64)", ["bench_io.py", "--reps", "5"]),
    ("100M-address stream (< 500 MiB RSS)", ["bench_streaming.py"]),
    ("trace parsing (Lackey >= 10M/s, npy >= 50M/s, ChampSim >= 30M/s)", ["bench_parse.py"]),
    (
        "vmopt simulate end to end: 150M+-access Lackey (>= 10M/s, < 200 MiB, vs C) and 100M npy (>= 50M/s)",
        ["bench_simulate.py"],
    ),
    ("first run after install (< 2 s)", ["bench_first_run.py"]),
    ("vmopt inspect of a 4 GiB ELF core with a full direct map (< 1 s)", ["bench_inspect.py"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for title, argv in BENCHES:
        if quick and argv[0] == "bench_streaming.py":
            argv = [*argv, "--accesses", "10000000"]
        if quick and argv[0] == "bench_simulate.py":
            argv = [*argv, "--runs", "1", "--npy-accesses", "10000000"]
        print(f"== {title}", flush=True)
        rc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]]).returncode
        print(f"-> {'ok' if rc == 0 else 'MISSED'}\n", flush=True)
        if rc:
            failed.append(title)
    if failed:
        print("missed: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
