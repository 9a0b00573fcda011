"""``vmopt inspect`` on a 4 GiB guest's ELF core with a full kernel direct map: under 1 s.

The dump is synthesized with tests/dump_layouts.py: one PT_LOAD of 4 GiB,
a sparse file (only the page tables and a few data pages are written, so it
costs a few MiB of disk), one vCPU whose CR3 roots tables holding

- the kernel direct map of all 4 GiB at 0xffff888000000000: the first
  1 GiB with 2 MiB pages, the other 3 GiB with 1 GiB pages;
- the kernel image at 0xffffffff81000000: 16 MiB of 4 KiB pages;
- a user process: 8,192 4 KiB pages in 64 runs, alternating rights.

Timed, each the median of ``--reps`` runs: the whole ``vmopt inspect
guest.elf`` command (a fresh interpreter: import, open, list every
region, summary) with stdout to /dev/null, and ``--info mem``/``--info
tlb`` likewise; and, in this process, opening the dump and listing
``PageTable.mappings()``.

    python benchmarks/bench_inspect.py [--reps R]

Exits 1 if the full listing command takes 1 s or more.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median

from dump_layouts import Cpu, guest_from_memory, write_elf
from vmopt import PageTable, PhysicalMemory
from vmopt.dumps import open_dump

GiB, MiB, PAGE = 1 << 30, 1 << 20, 4096
DIRECT = 0xFFFF_8880_0000_0000
KTEXT = 0xFFFF_FFFF_8100_0000
BAR_S = 1.0


def build(path: Path) -> tuple[int, int]:
    """Write the dump; (its root, the number of regions it lists)."""
    mem = PhysicalMemory(4 * GiB)
    pt = PageTable(mem, "x86_64")
    for pa in range(0, GiB, 2 * MiB):
        pt.map(DIRECT + pa, pa, 2 * MiB, "rw", global_=True)
    for pa in range(GiB, 4 * GiB, GiB):
        pt.map(DIRECT + pa, pa, GiB, "rw", global_=True)
    for i in range(16 * MiB // PAGE):
        pt.map(KTEXT + i * PAGE, 16 * MiB + i * PAGE, PAGE, "rx", global_=True)
    for run in range(64):
        perms = "rw" if run % 2 else "r"
        for i in range(128):
            va = 0x5555_0000_0000 + run * 0x100_0000 + i * PAGE
            pt.map(va, 64 * MiB + (run * 128 + i) * PAGE, PAGE, perms, user=True)
    guest = guest_from_memory(mem, [(0, 4 * GiB)], [Cpu(cr3=pt.root)])
    write_elf(guest, path)
    return pt.root, sum(1 for _ in pt.mappings())


def timed_command(args: list[str], reps: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        with open(os.devnull, "w") as null:
            subprocess.run(
                [sys.executable, "-m", "vmopt.cli.main", "inspect", *args], stdout=null, check=True, env=env
            )
        times.append(time.perf_counter() - start)
    return median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "guest.elf"
        root, regions = build(path)
        disk = os.stat(path).st_blocks * 512
        size = path.stat().st_size / GiB
        print(f"dump: {size:.1f} GiB ELF core, {disk / MiB:.1f} MiB on disk, {regions} regions")
        inproc = []
        for _ in range(opts.reps):
            start = time.perf_counter()
            with open_dump(path) as dump:
                n = sum(1 for _ in PageTable.attach(dump.memory, root, "x86_64").mappings())
            inproc.append(time.perf_counter() - start)
            assert n == regions
        full = timed_command([str(path)], opts.reps)
        mem = timed_command([str(path), "--info", "mem"], opts.reps)
        tlb = timed_command([str(path), "--info", "tlb"], opts.reps)
    print(f"open + PageTable.mappings() in process: {median(inproc):.3f} s (median of {opts.reps})")
    print(f"vmopt inspect guest.elf (whole command):  {full:.3f} s (median of {opts.reps}; bar < {BAR_S} s)")
    print(f"vmopt inspect guest.elf --info mem:       {mem:.3f} s")
    print(f"vmopt inspect guest.elf --info tlb:       {tlb:.3f} s")
    return 0 if full < BAR_S else 1


if __name__ == "__main__":
    sys.exit(main())
