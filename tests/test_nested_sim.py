"""``vmopt simulate`` under ``[paging] nested``: configuration, the facade's host stage, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_simulate import check_consistent
from vmopt import MemoryOptimizer, NumaConfig
from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.sim.config import from_raw, load_config
from vmopt.units import parse_size

MIB = 1 << 20
SMALL = ("--length", "30000", "--workload", "zipf", "--param", "footprint=8M", "--seed", "3")


def run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "r.json"
    assert main(["simulate", *SMALL, *args, "--no-progress", "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    check_consistent(report)
    return report


def test_config_keys_validate_and_round_trip() -> None:
    cfg = load_config(
        None, ['paging.nested="npt"', 'paging.nested_page_size="1G"', "paging.nested_tlb_entries=4"]
    )
    assert (cfg.paging.nested, cfg.paging.nested_page_size, cfg.paging.nested_tlb_entries) == (
        "npt",
        1 << 30,
        4,
    )
    assert from_raw(cfg.to_raw()) == cfg
    assert "nested" not in load_config().to_raw()["paging"], "the default keeps the one-stage keys"
    with pytest.raises(ConfigError, match=r"paging\.nested: unknown value 'vmx'"):
        load_config(None, ['paging.nested="vmx"'])
    with pytest.raises(ConfigError, match=r"paging\.format: unknown value 'ept'"):
        load_config(None, ['paging.format="ept"'])
    with pytest.raises(ConfigError, match="'sv39' is not x86"):
        load_config(None, ['paging.format="sv39"', 'paging.nested="ept"'])
    with pytest.raises(ConfigError, match="would take 8,388,608 mappings"):
        load_config(None, ['paging.nested="ept"', 'paging.nested_page_size="4K"'])
    with pytest.raises(ConfigError, match="2M host pages cannot back a 3M NUMA node"):
        load_config(None, ['paging.nested="ept"', 'numa.mem_per_node="3M"'])


def test_cli_refuses_a_bad_nested_value_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *SMALL, "--no-progress", "--set", 'paging.nested="ept9"']) == 2
    err = capsys.readouterr().err
    assert "paging.nested" in err and "Traceback" not in err


def test_ept_run_against_the_same_run_without_it(tmp_path: Path) -> None:
    plain = run(tmp_path)
    ept = run(tmp_path, "--set", 'paging.nested="ept"')
    assert plain["nested"] is None
    n = ept["nested"]
    # The TLBs see the same misses (GVA->HPA entries keep the guest's 4 KiB pages) ...
    assert ept["tlb"] == plain["tlb"] and ept["page_walks"] == plain["page_walks"]
    # ... the guest dimension costs what the one-stage walks cost, the host dimension adds to it.
    assert n["guest_refs"] == plain["walk_memory_refs"]
    assert n["guest_refs"] + n["host_refs"] == ept["walk_memory_refs"] > plain["walk_memory_refs"]
    assert n["walks"] >= ept["page_walks"] and n["host_faults"] == 0
    assert ept["cycles"]["per_access"] > plain["cycles"]["per_access"]
    assert (n["host_format"], n["host_page_size"]) == ("ept", 2 * MIB)
    assert 0 < n["nested_tlb"]["hits"] <= n["nested_tlb"]["lookups"]


@pytest.mark.parametrize(
    ("guest", "host", "page"),
    [("aarch64", "aarch64_s2", "2M"), ("sv48", "sv48x4", "2M"), ("sv48", "sv48x4", "1G")],
)
def test_other_architectures_under_their_own_host_stage(
    tmp_path: Path, guest: str, host: str, page: str
) -> None:
    """AArch64 under stage 2 and RISC-V under the G-stage: the run of each against the same run without it."""
    fmt = ("--set", f'paging.format="{guest}"', "--set", 'numa.mem_per_node="1G"')
    plain = run(tmp_path, *fmt)
    host_stage = ("--set", f'paging.nested="{host}"', "--set", f'paging.nested_page_size="{page}"')
    nested = run(tmp_path, *fmt, *host_stage)
    n = nested["nested"]
    assert nested["tlb"] == plain["tlb"] and nested["page_walks"] == plain["page_walks"]
    # A host with A/D bits (G-stage, stage 2 here; NPT too, unlike EPT without A/D) caches a translation
    # as clean until its host page is written: the first write re-walks, a few guest references more.
    assert 0 <= n["guest_refs"] - plain["walk_memory_refs"] <= n["walks"] - nested["page_walks"] <= 4
    assert n["host_refs"] > 0 and n["host_faults"] == 0
    assert (n["host_format"], n["host_page_size"]) == (host, parse_size(page))


def test_smaller_host_pages_and_no_caches_cost_more(tmp_path: Path) -> None:
    mem = ("--set", 'numa.mem_per_node="1G"')
    cached = run(tmp_path, *mem, "--set", 'paging.nested="ept"')["nested"]
    bare = run(tmp_path, *mem, "--set", 'paging.nested="ept"', "--set", "paging.nested_tlb_entries=0",
               "--set", "pwc.enabled=false", "--set", 'paging.nested_page_size="4K"')  # fmt: skip
    nb = bare["nested"]
    # No caches: every walk is a full 4 + 4 walk, 24 references (demand faults only add to it).
    assert nb["guest_refs"] + nb["host_refs"] >= 24 * bare["page_walks"]
    assert nb["host_refs"] > 2 * cached["host_refs"]


def test_the_facade_backs_all_guest_memory_identity_mapped() -> None:
    opt = MemoryOptimizer(NumaConfig(2, 64 * MIB), nested="npt", nested_page_size=2 * MIB, cpus=2)
    assert opt.two_stage is not None
    host = opt.two_stage.host
    for gpa in (0, 64 * MIB + 0x1234, 128 * MIB - 8):
        assert host.walk(gpa, "w", True).pa == gpa
    assert host.mem.base >= 128 * MIB, "the host's own tables sit above guest memory"
    va = opt.allocate(16 * 4096)
    pa = opt.translate(va + 8, "w", cpu=1)
    assert opt.two_stage.walk(va + 8, "r").pa == pa
    stats = opt.mmus[1].nested_stats
    assert stats is not None and stats.walks >= 1 and opt.mmus[0].nested_stats is not None
