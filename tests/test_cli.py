"""The command line: ``vmopt demo`` runs for every format; bad input exits 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmopt.cli.main import main


@pytest.mark.parametrize("fmt", ["x86_64", "x86_64_5level", "sv39", "sv48", "sv57"])
def test_demo_walks_and_lists_every_page_size(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--format", fmt]) == 0
    out = capsys.readouterr().out
    for size in ("(4K)", "(2M)", "(1G)"):
        assert size in out
    assert "b'hello from guest-virtual memory'" in out
    assert "protection" in out and "not_present" in out


def test_bad_input_exits_2_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "demo", "--format", "mips"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "mips" in proc.stderr
