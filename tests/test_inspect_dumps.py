"""``vmopt inspect DUMP``: the root from the dump's vCPU state or VMCOREINFO, QEMU's listings, reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dump_layouts import Guest, qemu_info_mem, qemu_info_tlb, write_all, write_elf
from test_dumps import HIGH, READERS, build_guest
from vmopt.cli.inspect import hexdump
from vmopt.cli.main import main
from vmopt.paging.types import Mapping

SRC = Path(__file__).resolve().parents[1] / "src"
RAW_READ = ["--va", "0x400123", "--length", "11", "--raw"]


@pytest.fixture(scope="module", params=["x86_64", "x86_64_5level"])
def dumped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    fmt = request.param
    guest, pt, mappings = build_guest(fmt)
    return fmt, guest, pt, mappings, write_all(guest, tmp_path_factory.mktemp(fmt))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["inspect", *args]) == 0
    return capsys.readouterr().out


def _regions(out: str) -> list[str]:
    return [line for line in out.splitlines() if "->" in line]


def test_root_and_paging_mode_come_from_vcpu_0(dumped: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    fmt, _guest, pt, mappings, paths = dumped
    for name in ("elf", "kdump", "kdump-flat"):
        out = _run(capsys, str(paths[name]))
        header = out.splitlines()[0]
        assert header.startswith(f"dump {paths[name]} ({name}, ")
        assert f"{fmt} (" in header and f"root {pt.root:#x}" in header and "vCPU 0 CR3" in header
        assert "LA57 set" in header if fmt == "x86_64_5level" else "LA57 clear" in header
        assert "PCID/flags 0x5" in header  # vCPU 0's CR3 has low bits set
        assert _regions(out) == [str(m) for m in mappings]


def test_cpu_and_all_cpus(dumped: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fmt, _guest, pt, mappings, paths = dumped
    out = _run(capsys, str(paths["elf"]), "--cpu", "1")
    assert "vCPU 1 CR3" in out.splitlines()[0] and "PCID" not in out.splitlines()[0]
    js = tmp_path / "all.json"
    out = _run(capsys, str(paths["elf"]), "--all-cpus", "--json", str(js))
    assert out.count("vCPU ") == 2 and _regions(out) == [str(m) for m in mappings] * 2
    doc = json.loads(js.read_text())
    assert [s["cpu"] for s in doc["spaces"]] == [0, 1]
    assert all(s["root"] == pt.root and s["dump_format"] == "elf" for s in doc["spaces"])
    assert main(["inspect", str(paths["elf"]), "--cpu", "2"]) == 2
    assert "records 2 vCPU(s), 0-1" in capsys.readouterr().err


def test_explicit_roots_override(dumped: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    fmt, _guest, pt, mappings, paths = dumped
    for option in ("--root", "--cr3"):
        out = _run(capsys, str(paths["lime"]), option, hex(pt.root), "--format", fmt)
        assert _regions(out) == [str(m) for m in mappings]
    # --cr3 on a dump with vCPU state takes 4/5 levels from vCPU 0's CR4.
    out = _run(capsys, str(paths["kdump"]), "--cr3", hex(pt.root))
    assert f"{fmt} (" in out.splitlines()[0]
    # No state and no root: a clear error.
    assert main(["inspect", str(paths["avml"])]) == 2
    err = capsys.readouterr().err
    assert "records no vCPU state and no VMCOREINFO" in err and err.count("\n") == 1


def test_info_mem_and_tlb_print_qemus_lines_exactly(
    dumped: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt, guest, pt, _mappings, paths = dumped
    la57 = fmt == "x86_64_5level"
    for name in READERS:
        args = [str(paths[name])] + (
            [] if name in ("elf", "kdump", "kdump-flat") else ["--cr3", hex(pt.root)]
        )
        if name not in ("elf", "kdump", "kdump-flat"):
            args += ["--format", fmt]
        want = qemu_info_mem(guest, pt.root, la57, max_tables=300)
        assert _run(capsys, *args, "--info", "mem", "--max-tables", "300").splitlines() == want
        js = tmp_path / f"{name}.json"
        out = _run(capsys, *args, "--info", "tlb", "--json", str(js))
        assert out.splitlines() == qemu_info_tlb(guest, pt.root, la57)
        doc = json.loads(js.read_text())
        assert doc["info"] == "tlb" and len(doc["lines"]) == len(out.splitlines())
        assert {"va", "frame", "pte", "page_size"} == set(doc["lines"][0])


def test_read_virtual_and_physical(dumped: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _fmt, _guest, pt, _mappings, paths = dumped
    pa = pt.walk(0x40_0123, "r", user=True).pa
    out = _run(capsys, str(paths["kdump"]), "read", "--va", "0x400123", "--length", "11")
    assert out.splitlines()[1] == hexdump(b"hello, dump", 0x400123)[0]
    assert "hello, dump" in out
    out = _run(capsys, str(paths["avml"]), "read", "--pa", hex(pa), "--length", "40")
    assert len(out.splitlines()) == 1 + 3 and out.splitlines()[1].startswith(f"{pa:016x}  68 65 6c 6c")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    raw = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "inspect", str(paths["elf"]), "read", *RAW_READ],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert raw.returncode == 0 and raw.stdout == b"hello, dump"
    # A page that is not mapped is a fault, exit 2.
    assert main(["inspect", str(paths["elf"]), "read", "--va", "0x1000"]) == 2
    assert "not_present" in capsys.readouterr().err


def test_va_walk_on_a_dump(dumped: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    fmt, _guest, _pt, _mappings, paths = dumped
    out = _run(capsys, str(paths["kdump-flat"]), "--va", hex(HIGH[fmt] + 0x1234))
    walk = out.split("walk ")[1].splitlines()
    levels = 5 if fmt == "x86_64_5level" else 4
    assert len([line for line in walk if " pte@" in line]) == levels - 2  # a 1 GiB leaf at level 3
    assert walk[-1].startswith("  => pa 0x1234 (1G page")


def test_kernel_root_from_vmcoreinfo_when_no_cpu_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    guest, pt, mappings = build_guest("x86_64")
    phys_base = -(256 << 20)  # the kernel loaded below its link address: NUMBER() prints it signed
    va = 0xFFFFFFFF80000000 + pt.root - phys_base
    guest = Guest(ranges=guest.ranges, pages=guest.pages, cpus=[])
    guest.vmcoreinfo = f"SYMBOL(swapper_pg_dir)={va:x}\nNUMBER(phys_base)={phys_base}\n".encode()
    write_elf(guest, tmp_path / "k.elf")
    out = _run(capsys, str(tmp_path / "k.elf"))
    assert f"root {pt.root:#x}" in out.splitlines()[0] and "swapper_pg_dir" in out.splitlines()[0]
    assert _regions(out) == [str(m) for m in mappings]


def test_format_forces_a_reader_and_mixes_with_a_paging_format(
    dumped: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt, _guest, pt, _mappings, paths = dumped
    out = _run(capsys, str(paths["raw"]), "--format", "raw", "--format", fmt, "--root", hex(pt.root))
    assert out.startswith(f"image {paths['raw']} (")
    assert main(["inspect", str(paths["elf"]), "--format", "lime"]) == 2
    err = capsys.readouterr().err
    assert "LiME" in err and "range 0 magic" in err and "0x464c457f" in err
    assert main(["inspect", str(paths["elf"]), "--format", "lime", "--format", "avml"]) == 2
    assert "two dump formats" in capsys.readouterr().err


def test_json_schema_of_one_space(dumped: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fmt, _guest, pt, mappings, paths = dumped
    js = tmp_path / "one.json"
    _run(capsys, str(paths["kdump"]), "--json", str(js), "--va", "0x400000")
    doc = json.loads(js.read_text())
    assert doc["dump_format"] == "kdump" and doc["cpu"] == 0 and doc["format"] == fmt
    assert doc["root"] == pt.root and doc["root_value"] == pt.root | 5
    assert doc["root_source"].startswith("vCPU 0 CR3")
    assert [(r["va"], r["size"], r["pa"]) for r in doc["regions"]] == [
        (m.va, m.size, m.pa) for m in mappings if isinstance(m, Mapping)
    ]
    assert doc["walks"][0]["translation"]["page_size"] == 2 << 20
    assert doc["truncated"] is False and doc["summary"]["regions"] == len(mappings)
