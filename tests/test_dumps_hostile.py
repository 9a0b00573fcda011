"""Hostile dumps: the committed corpus (tests/corpus/dumps) and hypothesis-mutated files of every format.

Each must give a clear error naming the field and its value (exit 2, one
line, no traceback) or a bounded, correct listing; never a hang, a panic or
an exception that is not a VmoptError.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dump_layouts import Cpu, Guest, avml_bytes, flatten, kdump_bytes, lime_bytes, write_elf
from vmopt.cli.main import main
from vmopt.dumps import DumpError, info_mem, open_dump
from vmopt.errors import VmoptError
from vmopt.paging import PageTable

CORPUS = Path(__file__).resolve().parent / "corpus" / "dumps"
sys.path.insert(0, str(CORPUS))
from make_corpus import EXPECT, corpus  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
SUMMARY = re.compile(r"^summary: regions (\d+)(?:, (\d+) recursive)?;", re.M)


def test_the_corpus_is_what_its_script_writes() -> None:
    files = corpus()
    assert set(files) == set(EXPECT)
    on_disk = {p.name for p in CORPUS.iterdir() if p.suffix in (".elf", ".kdump", ".flat", ".lime", ".avml")}
    assert on_disk == set(files)
    for name, data in files.items():
        assert (CORPUS / name).read_bytes() == data, name


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_each_corpus_file(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    expect = EXPECT[name]
    path = CORPUS / name
    status = main(["inspect", str(path), "--max-tables", "10000"])
    out, err = capsys.readouterr()
    if expect[0] == "read":
        assert status == 0, err  # the tables are intact: the listing works
        pa, why = expect[1], expect[2]
        assert main(["inspect", str(path), "read", "--pa", hex(pa), "--length", "16"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err and f"pa {pa:#x}" in err, err
    elif expect[0] == "error":
        assert status == 2, out
        lines = err.splitlines()
        assert len(lines) == 1 and "Traceback" not in err and out == ""
        with pytest.raises(DumpError) as exc:
            open_dump(path)
        assert exc.value.field == expect[1], exc.value
        assert exc.value.value is not None and f"{expect[1]} {exc.value.value:#x}" in lines[0]
        assert exc.value.path == str(path)
    else:
        assert status == 0, err
        m = SUMMARY.search(out)
        assert m is not None, out
        assert (int(m.group(1)), int(m.group(2) or 0)) == expect[1:]


def test_a_corpus_error_in_a_subprocess_has_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "inspect", str(CORPUS / "kdump_bitmaps_disagree.kdump")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "bitmap2 pfn 0x0" in proc.stderr


def _seeds(tmp: Path) -> dict[str, bytes]:
    pages = {0x1000 * i: bytes([i]) * 4096 for i in range(1, 6)}
    guest = Guest(ranges=[(0, 0x8000)], pages=pages, cpus=[Cpu(cr3=0x1000)], vmcoreinfo=b"SYMBOL(x)=1\n")
    write_elf(guest, tmp / "seed.elf")
    return {
        "elf": (tmp / "seed.elf").read_bytes(),
        "kdump-zlib": kdump_bytes(guest, "zlib"),
        "kdump-lzo": kdump_bytes(guest, "lzo"),
        "kdump-snappy": kdump_bytes(guest, "snappy"),
        "kdump-zstd": kdump_bytes(guest, "zstd"),
        "kdump-flat": flatten(kdump_bytes(guest, "zlib")),
        "lime": lime_bytes(guest),
        "avml": avml_bytes(guest),
    }


SEEDS = _seeds(Path(__import__("tempfile").mkdtemp()))
#: Where each format's header fields are (the mutations land there half the time).
HEADER = {"elf": 400, "kdump-flat": 4096 + 64, "lime": 32, "avml": 64}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(st.integers(0, 1 << 20), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)),
        min_size=1,
        max_size=4,
    ),
    header=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 1 << 20)),
)
def test_mutated_files_give_vmopt_errors_or_bounded_listings(
    seed: str, edits: list[tuple[int, int, int]], header: bool, cut: int | None, tmp_path: Path
) -> None:
    data = bytearray(SEEDS[seed])
    span = HEADER.get(seed, 3 * 4096 + 128) if header else len(data)
    for at, width, value in edits:
        at %= max(1, min(span, len(data)) - width)
        data[at : at + width] = value.to_bytes(8, "little")[:width]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    path = tmp_path / f"m.{seed}"
    path.write_bytes(bytes(data))
    start = time.monotonic()
    try:
        dump = open_dump(path)
        for s, e in dump.ranges()[:16]:
            with contextlib.suppress(VmoptError):
                dump.memory.read(s, min(e - s, 8192))
        for cpu in dump.cpus:
            root = (cpu.cr3 or 0) & ~0xFFF
            info_mem(dump.memory, root, max_tables=200, max_lines=1000)
            if dump.memory.contains(root, 4096):
                list(PageTable.attach(dump.memory, root, "x86_64").mappings(max_tables=200))
    except VmoptError:
        pass
    status = main(["inspect", str(path), "--max-tables", "200", "--max-regions", "1000"])
    assert status in (0, 2)
    assert time.monotonic() - start < 20
