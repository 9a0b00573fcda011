"""``vmopt bench``: the table's structure, JSON and plot; bad options exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmopt.cli.main import main


def test_bench_writes_table_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", "--reps", "1", "--sizes", "10,40", "--io-sizes", "8", "--latency", "0.0001",
            "--working-set", "1M", "--json", str(out_json), "--plot", str(out_png)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "resident pages" in text and "faulting pages" in text and "Python" in text
    data = json.loads(out_json.read_text())
    assert data["environment"]["dependencies"]["numpy"]
    assert [r["batch"] for r in data["resident"]["rows"]] == [10, 40]
    for section in ("resident", "faulting"):
        for row in data[section]["rows"]:
            assert row["sequential"]["speedup"] == 1.0
            for path in ("concurrent_8", "concurrent_64", "vectorized"):
                cell = row[path]
                assert cell["seconds"] > 0
                assert cell["per_second"] == pytest.approx(row["batch"] / cell["seconds"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "bad", [["--sizes", "10,x"], ["--sizes", "0"], ["--reps", "0"], ["--working-set", "1T"]]
)
def test_bench_bad_options_exit_2(bad: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *bad]) == 2
    assert "error" in capsys.readouterr().err
