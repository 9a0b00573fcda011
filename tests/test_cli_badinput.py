"""The command line under bad input (issue 12): outputs checked first, nothing lost, clear messages.

Items 4-7, 9, 14-18, 20-22. Commands that must end early are given work
that would take minutes otherwise; the Ctrl-C and closed-pipe tests are
driven by events (a line read, a pipe closed before the child starts), with
generous timeouts, never by sleeping.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.sim.config import load_config
from vmopt.sim.report import header

ROOT = Path(__file__).resolve().parent.parent
LONG = ["--param", "length=500000000"]  # minutes of work, if a check came too late


def _vmopt(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, check=False, **kwargs,
    )  # fmt: skip


# -- item 4: output paths are checked before the run --------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["simulate", *LONG, "--json", "{dir}"], "--json '{dir}' is a directory"),
        (["simulate", *LONG, "--json", "{dir}/missing/r.json"], "missing' does not exist"),
        (["simulate", *LONG, "--plot", "{file}"], "--plot '{file}' exists and is not a directory"),
        (["simulate", *LONG, "--json", "/proc/version"], "'/proc/version'"),
        (["sweep", "--grid", "tlb.l1d.entries=48,96", *LONG, "--out", "{file}"], "--out '{file}' exists"),
        (["inspect", "{file}", "--root", "0", "--json", "{dir}"], "--json '{dir}' is a directory"),
        (["bench", "--json", "{dir}"], "--json '{dir}' is a directory"),
        (["bench", "--plot", "{dir}"], "--plot '{dir}' is a directory"),
    ],
)
def test_unwritable_outputs_fail_before_the_run(tmp_path: Path, args: list[str], needle: str) -> None:
    d, f = tmp_path / "outdir", tmp_path / "file.bin"
    d.mkdir()
    f.write_bytes(bytes(4096))
    fill = {"dir": str(d), "file": str(f)}
    p = _vmopt(*(a.format(**fill) for a in args), timeout=60, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert needle.format(**fill) in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.glob("*.png"))  # item 16: nothing written beside the directory


# -- item 5: one bad trace does not lose the sweep ------------------------------------------------


def test_a_sweep_with_a_bad_trace_writes_the_good_points_and_lists_failures(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("".join(f"R {0x1000 * i:x}\n" for i in range(200)))
    bad = tmp_path / "bad.txt"
    bad.write_text("R 1000\nthis is not a trace line\n")
    out = tmp_path / "out"
    p = _vmopt("sweep", str(good), str(bad), "--grid", "tlb.l1d.entries=48,96", "--out", str(out),
               "--workers", "2", "--format", "text")  # fmt: skip
    assert p.returncode == 2, p.stderr
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["partial"] is True and doc["points"] == 4
    assert {(r["input"], r["params"]["tlb.l1d.entries"]) for r in doc["runs"]} == {
        (str(good), 48),
        (str(good), 96),
    }
    assert [(f["input"], f["params"]["tlb.l1d.entries"]) for f in doc["failures"]] == [
        (str(bad), 48),
        (str(bad), 96),
    ]
    assert "2 of 4 points failed" in p.stderr and p.stderr.count(str(bad)) >= 2
    assert (out / "sweep.csv").read_text().count(str(good)) == 2


def test_duplicate_grid_values_are_refused(tmp_path: Path) -> None:
    p = _vmopt("sweep", "--grid", "tlb.l1d.entries=48,96,48", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "value 48 given twice" in p.stderr


def test_a_plot_of_many_series_has_no_legend_covering_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from vmopt.sim import plots, sweep

    plt = plots.pyplot()
    figures: list[Any] = []
    real = plt.subplots

    def spy(*a: Any, **k: Any) -> Any:
        fig, ax = real(*a, **k)
        figures.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy)
    rows = [{"input": f"t{i}", "a.b": x, "l1_miss_rate": 0.1, "walks_per_access": 0.1}
            for i in range(sweep.LEGEND_SERIES + 1) for x in (1, 2)]  # fmt: skip
    sweep._plot(rows, ["a.b"], tmp_path / "many.png")
    assert figures[-1].get_legend() is None and "series" in figures[-1].get_title()
    sweep._plot(rows[:4], ["a.b"], tmp_path / "few.png")
    assert figures[-1].get_legend() is not None


# -- item 6: a closed stdout ends quietly and still writes the files --------------------------------


@pytest.mark.parametrize("command", [["simulate", "--param", "length=20000", "--json", "{json}"], ["demo"]])
def test_a_closed_stdout_is_quiet_and_loses_no_file(tmp_path: Path, command: list[str]) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first byte: every write gets EPIPE
    json_path = tmp_path / "r.json"
    try:
        p = subprocess.run(
            [sys.executable, "-m", "vmopt.cli.main", *(c.format(json=json_path) for c in command)],
            stdout=w, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert p.stderr == ""
    if "--json" in command:
        assert json.loads(json_path.read_text())["accesses"] == 20000


# -- item 7: Ctrl-C in a sweep stops promptly and keeps the finished points -----------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_in_a_sweep_writes_the_finished_points_marked_partial(tmp_path: Path, workers: str) -> None:
    out = tmp_path / "out"
    values = ",".join(str(48 << i) for i in range(8))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmopt.cli.main", "sweep", "--grid", f"tlb.l1d.entries={values}",
         "--param", "length=3000000", "--workers", workers, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the event: one point has finished
        assert "L1 hit rate" in first, first
        proc.send_signal(signal.SIGINT)
        _rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["partial"] is True and doc["interrupted"] is True and doc["points"] == 8
    assert 1 <= len(doc["runs"]) < 8
    assert all("report" in r for r in doc["runs"])


# -- item 9: stdin closed ---------------------------------------------------------------------------------


def test_simulate_stdin_when_stdin_is_closed() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "simulate", "-"],
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=lambda: os.close(0),
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "standard input, which is closed" in p.stderr and "Traceback" not in p.stderr


# -- items 14, 15: workload parameters --------------------------------------------------------------------


def test_a_too_small_footprint_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--param", "footprint=1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the bound is footprint (1); raise footprint or lower page_size" in err


@pytest.mark.parametrize(("param", "flag"), [("length=5", ["--length", "7"]), ("seed=1", ["--seed", "2"])])
def test_conflicting_param_and_flag_are_refused(
    capsys: pytest.CaptureFixture[str], param: str, flag: list[str]
) -> None:
    assert main(["simulate", "--workload", "sequential", "--param", param, *flag, "--no-progress"]) == 2
    key = param.partition("=")[0]
    assert f"--param {param} and --{key} {flag[1]} disagree" in capsys.readouterr().err


def test_agreeing_param_and_flag_are_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["simulate", "--workload", "sequential", "--param", "length=5", "--length", "5", "--no-progress"]
        )
        == 0
    )
    assert "5 accesses" in capsys.readouterr().out


# -- item 17: most accesses faulted ---------------------------------------------------------------------


def test_a_run_where_everything_faults_warns_with_the_likely_cause(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["simulate", "--set", "paging.format=sv39", "--param", "length=4000", "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: 4,000 of 4,000 accesses (100.00%) faulted" in err and "paging.format is sv39" in err
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(16000))
    assert main(["simulate", str(noise), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "faulted and were not served" in err and "read as format 'raw'" in err
    assert main(["simulate", "--param", "length=4000", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err


# -- item 18: a TLB level that can never hit ---------------------------------------------------------------


def test_a_tlb_level_that_cannot_hold_the_mapped_pages_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[tlb.l1]\nentries = 16\nways = 4\npage_sizes = ["1G"]\n')
    with pytest.raises(ConfigError, match=r"tlb\.l1\.page_sizes: \['1G'\] can never hold the 4K pages"):
        load_config(f)
    load_config(f, ["paging.page_size=1G"])  # 1 GiB pages fit a 1G array
    f.write_text('[tlb.l1]\nentries = 16\nways = 4\npage_sizes = ["2M"]\n')
    load_config(f, ["paging.page_size=1G"])  # splintered into 2M entries: hits are possible


# -- item 21: the header says what ran -----------------------------------------------------------


def test_the_header_explains_vcpus_the_workload_does_not_drive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--set", "numa.cpus=6", "--param", "length=1000", "--no-progress"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "on 6 vCPU(s) (numa.cpus sets 6; the workload's accesses come from 2 of them)" in out
    report = {"source": {"kind": "workload", "params": {"cpus": 2}, "description": "w"}, "cpus": 2,
              "accesses": 1, "kinds": {"read": 1, "write": 0, "fetch": 0}}  # fmt: skip
    assert header(report).endswith("on 2 vCPU(s)")


# -- item 22: a slow start says what is happening ----------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_run_says_it_is_preparing_before_the_first_update(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["simulate", "--workload", "sequential", "--param", "length=1000"]) == 0
    text = err.getvalue()
    assert text.startswith("vmopt simulate: preparing sequential ...")
