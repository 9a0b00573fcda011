"""`vmopt sweep`: grids, parallel runs, CSV/JSON/PNG output, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.sim.sweep import parse_grid

LACKEY = Path(__file__).resolve().parent / "data" / "ls.lackey.gz"


def test_parse_grid() -> None:
    assert parse_grid(["tlb.l1d.entries=48,96", "prefetch.kind=none,stride"]) == [
        ("tlb.l1d.entries", [48, 96]),
        ("prefetch.kind", ["none", "stride"]),
    ]
    for bad in ("entries=1", "tlb.l1d.entries=", "tlb.l1d.entries"):
        with pytest.raises(ConfigError):
            parse_grid([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["a.b=1", "a.b=2"])


def test_sweep_default_workload_in_parallel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [
        "sweep",
        "--grid",
        "tlb.l1d.entries=48,192",
        "--length",
        "20000",
        "--out",
        str(out),
        "--workers",
        "2",
    ]
    assert main(args) == 0
    assert "L1 hit rate" in capsys.readouterr().out
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["tlb.l1d.entries"]) for r in rows] == [48, 192]
    # a bigger L1 never misses more
    assert float(rows[1]["l1d_miss_rate"]) <= float(rows[0]["l1d_miss_rate"])
    data = json.loads((out / "sweep.json").read_text())
    assert data["grid"] == ["tlb.l1d.entries"] and len(data["runs"]) == 2
    assert data["runs"][1]["report"]["config"]["tlb"]["l1d"]["entries"] == 192
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")


def test_sweep_cartesian_product_over_traces(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("".join(f"{0x7F0000000000 + 4096 * (i % 40):x}\n" for i in range(400)))
    out = tmp_path / "o"
    args = ["sweep", str(LACKEY), str(text), "--grid", "tlb.l1d.entries=48,96", "--grid",
            "prefetch.kind=none,next_page", "--out", str(out), "--workers", "1"]  # fmt: skip
    assert main(args) == 0
    with open(out / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert {r["input"] for r in rows} == {str(LACKEY), str(text)}


def test_sweep_errors_exit_2(tmp_path: Path) -> None:
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    for args, message in (
        (["--grid", "tlb.l1d.ways=5,6"], "tlb.l1d.ways: entries (96) must be a multiple of ways (5)"),
        (["--grid", "tlb.l1d.entires=16"], "tlb.l1d.entires: unknown key"),
        (["--grid", "tlb.l1d.entries=48", "missing.txt"], "missing.txt"),
    ):
        cmd = [sys.executable, "-m", "vmopt.cli.main", "sweep", *args, "--out", str(tmp_path / "o")]
        if "missing.txt" not in args:
            cmd += ["--length", "10"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert p.returncode == 2, p.stderr
        assert message in p.stderr and "Traceback" not in p.stderr
