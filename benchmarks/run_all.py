"""Run every benchmark and its bar: ``python benchmarks/run_all.py``.

Each script measures ratios within one run (medians over repetitions) and
exits non-zero when its bar is missed. Pass ``--quick`` for a shorter
streaming run (10M addresses instead of 100M).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ("core batch vs scalar translate (>= 1.5x)", ["bench_batch.py"]),
    ("I/O-bound concurrency (>= 6x at 8, >= 40x at 64)", ["bench_io.py", "--reps", "5"]),
    (
        "core batch vs pycachesim (>= 1x, equal counts)",
        [
            "bench_pycachesim.py",
            "--trace",
            str(HERE.parent / "tests" / "data" / "ls_small.lackey.gz"),
            "--reps",
            "5",
        ],
    ),
    ("100M-address stream (< 500 MiB RSS)", ["bench_streaming.py"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for title, argv in BENCHES:
        if quick and argv[0] == "bench_streaming.py":
            argv = [*argv, "--accesses", "10000000"]
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
