"""Shared pieces of the benchmarks: medians, the repository on sys.path, real program traces."""

from __future__ import annotations

import gzip
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE_DIR = ROOT / "benchmarks" / ".traces"

# The reference implementation (tests/reference) is importable as `reference`.
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


def median(xs: Sequence[float]) -> float:
    """The median (benchmarks report medians: machines are noisy)."""
    return statistics.median(xs)


def _inputs(work: Path) -> None:
    """Deterministic inputs for the traced programs."""
    import random

    rnd = random.Random(1)
    text = "".join(rnd.choice("abcdefghij klmnop\n") for _ in range(6000))
    (work / "in6k.txt").write_text(text)
    (work / "in3k.txt").write_text(text[:3000])
    lines = [f"{rnd.randrange(10**9):09d} {rnd.choice('xyz') * rnd.randrange(1, 20)}" for _ in range(700)]
    (work / "lines.txt").write_text("\n".join(lines) + "\n")


#: Programs traced with Lackey: (name, argv); 1-3M accesses each, from a few hundred to thousands of pages.
PROGRAMS: list[tuple[str, list[str]]] = [
    ("gzip", ["gzip", "-c", "in6k.txt"]),  # ~1.6M accesses, ~200 pages
    ("bzip2", ["bzip2", "-c", "in3k.txt"]),  # ~3.4M, ~220 pages
    ("sort", ["sort", "lines.txt"]),  # ~2.5M, ~260 pages
    ("awk", ["awk", "BEGIN { for (i = 0; i < 3000; i++) a[i] = i }"]),  # ~2.8M, ~330 pages
    ("xz", ["xz", "-3", "-c", "in3k.txt"]),  # ~3.8M, ~1,900 pages
    ("perl", ["perl", "-e", 'my $x = "ab" x 2000000; print length($x), "\\n"']),  # thousands of pages
]


def lackey_traces(names: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """Lackey traces (``valgrind --tool=lackey --trace-mem=yes``) of real programs, made once and cached."""
    TRACE_DIR.mkdir(parents=True, exist_ok=True)
    out = []
    for name, argv in PROGRAMS:
        if names is not None and name not in names:
            continue
        path = TRACE_DIR / f"{name}.lackey.gz"
        if not path.exists():
            if shutil.which("valgrind") is None or shutil.which(argv[0]) is None:
                print(f"skipping {name}: valgrind or {argv[0]} is not installed", file=sys.stderr)
                continue
            _inputs(TRACE_DIR)
            raw = TRACE_DIR / f"{name}.lackey"
            subprocess.run(
                ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={raw}", *argv],
                check=True, cwd=TRACE_DIR, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            with open(raw, "rb") as src, gzip.open(path, "wb", compresslevel=3) as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()
        out.append((name, path))
    return out


#: The large trace of bench_simulate: bzip2 compressing ~380 KB of words, ~175M accesses (~2.5 GB of text).
LARGE_WORDS = 64_000


def large_lackey_trace() -> Path | None:
    """A Lackey trace of at least 150M accesses of a real program, made once and cached (uncompressed).

    Recipe: ``LARGE_WORDS`` words drawn (``random.Random(1)``) from 5,000 random
    2-8 letter words, joined by spaces into ``large.txt``; then
    ``valgrind --tool=lackey --trace-mem=yes --log-file=bzip2-large.lackey bzip2 -c large.txt``.
    bzip2 makes about 460 accesses per input byte; valgrind takes a few minutes.
    None when valgrind or bzip2 is missing.
    """
    import random

    TRACE_DIR.mkdir(parents=True, exist_ok=True)
    path = TRACE_DIR / "bzip2-large.lackey"
    if path.exists():
        return path
    if shutil.which("valgrind") is None or shutil.which("bzip2") is None:
        print("skipping the large trace: valgrind or bzip2 is not installed", file=sys.stderr)
        return None
    rnd = random.Random(1)
    words = ["".join(rnd.choice("abcdefghijklmnop") for _ in range(rnd.randrange(2, 9))) for _ in range(5000)]
    (TRACE_DIR / "large.txt").write_text(" ".join(rnd.choice(words) for _ in range(LARGE_WORDS)))
    partial = path.with_suffix(".partial")
    subprocess.run(
        ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={partial}", "bzip2", "-c", "large.txt"],
        check=True, cwd=TRACE_DIR, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    partial.rename(path)
    return path
