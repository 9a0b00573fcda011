"""``vmopt simulate`` end to end: a 150M+-access Lackey trace against a C loop, 100M-access npy, ChampSim.

(a) The Lackey trace of bzip2 from ``_common.large_lackey_trace`` (made once
with valgrind, cached in benchmarks/.traces): ``vmopt simulate TRACE`` as a
subprocess, timed from start to exit, accesses/s and peak RSS (from
``wait4``). Bars: >= 10M accesses/s, peak RSS < 200 MiB. A plain C program
(built here with gcc) parses the same file and plays it through a 64-entry
4-way LRU TLB of 4 KiB pages; vmopt runs with that as a unified L1
(``UNIFIED_L1``: the default L1 is split into an ITLB and a DTLB, which the C
loop does not model). Its time gives the ratio and its access and L1-miss
counts must equal vmopt's.

(b) 100M-access ``.npy`` traces made in /tmp: bar >= 50M accesses/s on each.
``zipf``: a zipf hot set over a 256 MiB working set, 1-16 accesses per page
visit (6% of accesses miss L1, 3% walk: the core's translation dominates);
``bzip2``: the addresses of the first 100M accesses of the Lackey trace
above (a real program's locality).

(c) A ChampSim trace (``input_instr`` records) of the first 20M+
instructions of the same bzip2 run, made in /tmp from the Lackey trace: each
``I`` line is an instruction's ``ip``, its loads fill ``src_mem`` and its
stores ``dst_mem`` (a modify is both; slots beyond 4 sources or 2
destinations are dropped, as ChampSim's tracer drops them). Bar >= 30M
accesses/s end to end, with the report's access count equal to the
records' own (fetches plus non-zero slots).

Start-up is timed as an installed vmopt starts: its modules compiled to
bytecode first (``compileall``, what ``pip install`` does for a wheel), so
an environment with PYTHONDONTWRITEBYTECODE does not recompile every
module on every run.

    python benchmarks/bench_simulate.py [--runs 3] [--npy-accesses 100000000] [--champsim 20000000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, large_lackey_trace, median

from trace_layouts import INPUT_INSTR

LACKEY_BAR = 10e6
NPY_BAR = 50e6
CHAMPSIM_BAR = 30e6
RSS_BAR_MIB = 200
#: The C loop's TLB as vmopt's unified L1, over the default STLB's 4 KiB / 2 MiB array.
UNIFIED_L1 = """[tlb.l1]
entries = 64
ways = 4
[tlb.l2]
entries = 2048
ways = 16
page_sizes = ["4K", "2M"]
latency = 8
"""

C_LOOP = r"""
/* Parse a Lackey trace and play it through a 16-set, 4-way LRU TLB of 4 KiB pages. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SETS 16
#define WAYS 4

static uint64_t tlb[SETS][WAYS]; /* most recent first; vpn + 1, 0 = empty */

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int main(int argc, char **argv) {
    static char buf[1 << 20];
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 1;
    uint64_t accesses = 0, misses = 0;
    size_t have = 0;
    for (;;) {
        size_t got = fread(buf + have, 1, sizeof buf - have, f);
        size_t end = have + got;
        if (end == 0) break;
        size_t pos = 0;
        for (;;) {
            char *nl = memchr(buf + pos, '\n', end - pos);
            if (!nl) break;
            char *line = buf + pos;
            pos = (size_t)(nl - buf) + 1;
            int rec = (line[0] == 'I' && line[1] == ' ') ||
                      (line[0] == ' ' && (line[1] == 'L' || line[1] == 'S' || line[1] == 'M'));
            if (!rec) continue;
            uint64_t addr = 0;
            char *p = line + 2;
            while (*p == ' ') p++;
            int v;
            while ((v = hexval(*p)) >= 0) { addr = addr << 4 | (uint64_t)v; p++; }
            uint64_t key = (addr >> 12) + 1;
            uint64_t *set = tlb[(addr >> 12) & (SETS - 1)];
            int way = 0;
            while (way < WAYS && set[way] != key) way++;
            if (way == WAYS) { misses++; way = WAYS - 1; }
            memmove(set + 1, set, (size_t)way * sizeof *set);
            set[0] = key;
            accesses++;
        }
        if (got == 0) break;
        have = end - pos;
        memmove(buf, buf + pos, have);
    }
    printf("%llu %llu\n", (unsigned long long)accesses, (unsigned long long)misses);
    return 0;
}
"""


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def timed(argv: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[float, float, int]:
    """Run ``argv``; its wall seconds, peak RSS in MiB and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, env=_env())
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss / 1024, proc.returncode


def simulate(trace: Path, work: Path, config: Path | None = None) -> tuple[float, float, dict[str, Any]]:
    """One end-to-end ``vmopt simulate`` run (``--config config``): seconds, peak RSS MiB, the JSON report."""
    out = work / "report.json"
    argv = [
        sys.executable,
        "-m",
        "vmopt.cli.main",
        "simulate",
        str(trace),
        "--no-progress",
        "--json",
        str(out),
        *(() if config is None else ("--config", str(config))),
    ]
    elapsed, rss, rc = timed(argv)
    if rc:
        raise SystemExit(f"vmopt simulate exited {rc}")
    report: dict[str, Any] = json.loads(out.read_text())
    return elapsed, rss, report


def c_loop(trace: Path, work: Path, runs: int) -> tuple[float, int, int] | None:
    """Median seconds of the C baseline on ``trace`` and its (accesses, L1 misses)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        print("no gcc: skipping the C baseline", file=sys.stderr)
        return None
    source = work / "lackey_tlb.c"
    source.write_text(C_LOOP)
    binary = work / "lackey_tlb"
    subprocess.run([gcc, "-O2", "-o", str(binary), str(source)], check=True)
    times = []
    counts = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        counts = subprocess.run([str(binary), str(trace)], check=True, capture_output=True, text=True).stdout
        times.append(time.perf_counter() - t0)
    accesses, misses = (int(x) for x in counts.split())
    return median(times), accesses, misses


def bench_lackey(runs: int, work: Path) -> bool:
    trace = large_lackey_trace()
    if trace is None:
        return True
    size = trace.stat().st_size
    print(f"(a) {trace.name}: {size / 2**30:.2f} GiB of Lackey text, {runs} runs each (medians)")
    baseline = c_loop(trace, work, runs)
    config = work / "unified.toml"
    config.write_text(UNIFIED_L1)
    times, rss = [], []
    report: dict[str, Any] = {}
    for _ in range(runs):
        elapsed, peak, report = simulate(trace, work, config)
        times.append(elapsed)
        rss.append(peak)
    n = report["accesses"]
    t = median(times)
    rate = n / t
    peak_rss = max(rss)
    ok = rate >= LACKEY_BAR and peak_rss < RSS_BAR_MIB
    print(f"    vmopt simulate: {n:,} accesses in {t:.1f} s = {rate / 1e6:.1f} M accesses/s end to end"
          f" (runs: {', '.join(f'{x:.1f}' for x in times)} s); peak RSS {peak_rss:.0f} MiB")  # fmt: skip
    print(f"    bars: >= {LACKEY_BAR / 1e6:.0f} M/s {'ok' if rate >= LACKEY_BAR else 'MISSED'},"
          f" RSS < {RSS_BAR_MIB} MiB {'ok' if peak_rss < RSS_BAR_MIB else 'MISSED'}")  # fmt: skip
    if baseline is not None:
        ct, c_accesses, c_misses = baseline
        l1 = report["tlb"]["l1"]
        same = c_accesses == n and c_misses == l1["misses"]
        print(f"    C parse + 64x4 LRU loop: {ct:.1f} s = {c_accesses / ct / 1e6:.1f} M/s;"
              f" vmopt takes {t / ct:.2f}x its time; counts {'equal' if same else 'DIFFER'}"
              f" (C: {c_accesses:,} accesses, {c_misses:,} L1 misses;"
              f" vmopt: {n:,}, {l1['misses']:,})")  # fmt: skip
        ok = ok and same
    return ok


def make_npy(path: Path, accesses: int) -> None:
    """A zipf hot set over 65,536 pages (256 MiB), 1-16 accesses per page visit, written chunk by chunk."""
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=(accesses,))
    base = np.uint64(0x7F00_0000_0000)
    done = 0
    while done < accesses:
        visits = rng.zipf(1.2, 1 << 18) % 65536
        repeat = rng.integers(1, 17, visits.shape[0])
        pages = np.repeat(visits.astype(np.uint64), repeat)[: accesses - done]
        offsets = rng.integers(0, 4096, pages.shape[0], dtype=np.uint64) & np.uint64(4096 - 8)
        out[done : done + pages.shape[0]] = base + (pages << np.uint64(12)) + offsets
        done += pages.shape[0]
    out.flush()
    del out


def lackey_npy(path: Path, accesses: int) -> None:
    """The addresses of the first ``accesses`` accesses of the large Lackey trace."""
    from vmopt.traces import open_trace

    trace = large_lackey_trace()
    if trace is None:
        raise SystemExit("the bzip2 npy needs the large Lackey trace (valgrind, bzip2)")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint64, shape=(accesses,))
    done = 0
    with open_trace(trace) as chunks:
        for chunk in chunks:
            n = min(len(chunk), accesses - done)
            out[done : done + n] = chunk.addrs[:n]
            done += n
            if done == accesses:
                break
    out.flush()
    del out
    if done < accesses:
        path.unlink()
        raise SystemExit(f"the Lackey trace has only {done:,} accesses")


def bench_npy(kind: str, runs: int, accesses: int, work: Path) -> bool:
    path = Path(tempfile.gettempdir()) / f"vmopt-bench-{kind}-{accesses}.npy"
    if not path.exists():
        partial = path.with_suffix(".partial.npy")
        (make_npy if kind == "zipf" else lackey_npy)(partial, accesses)
        partial.rename(path)
    print(f"(b) {kind} {path}: {accesses:,} accesses, {runs} runs (medians)")
    times, rss = [], []
    report: dict[str, Any] = {}
    for _ in range(runs):
        elapsed, peak, report = simulate(path, work)
        times.append(elapsed)
        rss.append(peak)
    assert report["accesses"] == accesses
    t = median(times)
    rate = accesses / t
    inner = report["accesses_per_s"]
    print(f"    vmopt simulate: {t:.1f} s = {rate / 1e6:.1f} M accesses/s end to end"
          f" (runs: {', '.join(f'{x:.1f}' for x in times)} s; the report's host throughput, without"
          f" start-up and report: {inner / 1e6:.1f} M/s); peak RSS {max(rss):.0f} MiB;"
          f" bar >= {NPY_BAR / 1e6:.0f} M/s end to end: {'ok' if rate >= NPY_BAR else 'MISSED'}")  # fmt: skip
    return rate >= NPY_BAR


def lackey_champsim(path: Path, instructions: int) -> int:
    """The first ``instructions`` instructions of the large Lackey trace as ChampSim records; accesses."""
    from vmopt.traces import AccessKind, open_trace

    trace = large_lackey_trace()
    if trace is None:
        raise SystemExit("the ChampSim trace needs the large Lackey trace (valgrind, bzip2)")
    done = accesses = 0
    with open_trace(trace) as chunks, open(path, "wb") as f:
        carry_addrs = np.zeros(0, np.uint64)
        carry_kinds = np.zeros(0, np.uint8)
        for chunk in chunks:
            addrs = np.concatenate((carry_addrs, chunk.addrs))
            kinds = np.concatenate((carry_kinds, chunk.kinds))
            starts = np.flatnonzero(kinds == AccessKind.FETCH)
            if len(starts) < 2:
                carry_addrs, carry_kinds = addrs, kinds
                continue
            # Whole instructions only: the last one may go on into the next chunk.
            cut = int(starts[-1])
            carry_addrs, carry_kinds = addrs[cut:], kinds[cut:]
            addrs, kinds, starts = addrs[:cut], kinds[:cut], starts[:-1]
            first = int(starts[0])
            addrs, kinds, starts = addrs[first:], kinds[first:], starts - first
            n = min(len(starts), instructions - done)
            rec = np.zeros(n, INPUT_INSTR)
            rec["ip"] = addrs[starts[:n]]
            owner = np.cumsum(kinds == AccessKind.FETCH) - 1
            for kind, field, slots in ((AccessKind.READ, "src_mem", 4), (AccessKind.WRITE, "dst_mem", 2)):
                at = np.flatnonzero((kinds == kind) & (owner < n))
                who = owner[at]
                # Rank of each access among its instruction's accesses of this kind.
                rank = np.arange(len(at)) - np.searchsorted(who, who, side="left")
                keep = (rank < slots) & (addrs[at] != 0)
                rec[field][who[keep], rank[keep]] = addrs[at][keep]
            accesses += n + int(np.count_nonzero(rec["src_mem"])) + int(np.count_nonzero(rec["dst_mem"]))
            f.write(rec.tobytes())
            done += n
            if done == instructions:
                break
    if done < instructions:
        path.unlink()
        raise SystemExit(f"the Lackey trace has only {done:,} instructions")
    return accesses


def bench_champsim(runs: int, instructions: int, work: Path) -> bool:
    path = Path(tempfile.gettempdir()) / f"vmopt-bench-bzip2-{instructions}.champsimtrace"
    count = path.with_suffix(".accesses")
    if not (path.exists() and count.exists()):
        partial = path.with_suffix(".partial")
        count.write_text(str(lackey_champsim(partial, instructions)))
        partial.rename(path)
    accesses = int(count.read_text())
    print(f"(c) champsim {path}: {instructions:,} instructions, {accesses:,} accesses, {runs} runs (medians)")
    times = []
    report: dict[str, Any] = {}
    for _ in range(runs):
        elapsed, _, report = simulate(path, work)
        times.append(elapsed)
    assert report["accesses"] == accesses, (report["accesses"], accesses)
    t = median(times)
    rate = accesses / t
    print(f"    vmopt simulate: {t:.2f} s = {rate / 1e6:.1f} M accesses/s end to end"
          f" (runs: {', '.join(f'{x:.2f}' for x in times)} s; host throughput in the report:"
          f" {report['accesses_per_s'] / 1e6:.1f} M/s); bar >= {CHAMPSIM_BAR / 1e6:.0f} M/s:"
          f" {'ok' if rate >= CHAMPSIM_BAR else 'MISSED'}")  # fmt: skip
    return rate >= CHAMPSIM_BAR


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--npy-accesses", type=int, default=100_000_000)
    p.add_argument("--skip-lackey", action="store_true")
    p.add_argument("--skip-npy", action="store_true")
    p.add_argument("--champsim", type=int, default=20_000_000, help="instructions in the ChampSim trace")
    p.add_argument("--skip-champsim", action="store_true")
    args = p.parse_args()
    import compileall

    compileall.compile_dir(ROOT / "src" / "vmopt", quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ok = True
        if not args.skip_lackey:
            ok = bench_lackey(args.runs, work) and ok
        if not args.skip_npy:
            for kind in ("zipf", "bzip2"):
                ok = bench_npy(kind, args.runs, args.npy_accesses, work) and ok
        if not args.skip_champsim:
            ok = bench_champsim(args.runs, args.champsim, work) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
