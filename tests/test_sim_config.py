"""Simulation configuration: defaults, TOML files, --set overrides, named-key errors, `vmopt config`."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vmopt.cli.main import main
from vmopt.errors import ConfigError
from vmopt.sim.config import apply_set, from_raw, load_config, parse_value, to_toml
from vmopt.tlb.mmu import DEFAULT_TLB_LEVELS


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def test_defaults_match_the_mmu_default_hierarchy() -> None:
    cfg = load_config()
    levels = cfg.tlb_levels()
    assert len(levels) == len(DEFAULT_TLB_LEVELS)
    for ours, theirs in zip(levels, DEFAULT_TLB_LEVELS, strict=True):
        assert [(c.entries, c.ways, c.policy, c.page_sizes, c.latency) for c in ours] == [
            (c.entries, c.ways, c.policy, c.page_sizes, c.latency) for c in theirs
        ]
    assert cfg.paging.walk_ref_cycles == 20
    assert cfg.paging.format == "x86_64" and cfg.paging.page_size == 4096
    assert cfg.pwc.enabled and cfg.numa.nodes == 2


def test_to_toml_round_trips() -> None:
    cfg = load_config(sets=["tlb.l1.entries=32", "prefetch.kind=stride", "numa.policy=interleave:0,1"])
    raw = tomllib.loads(to_toml(cfg.to_raw()))
    assert from_raw(raw) == cfg
    assert raw["tlb"]["l1"]["entries"] == 32


def test_file_tlb_replaces_default_and_split_arrays(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        '[paging]\npage_size = "2M"\n'
        '[tlb.l1]\nentries = 16\nways = 16\npage_sizes = ["4K"]\n'
        '[tlb.l1.big]\nentries = 8\nways = 8\npage_sizes = ["2M", "1G"]\n'
        '[numa]\nnodes = 4\nmem_per_node = "1G"\n'
    )
    cfg = load_config(f)
    assert [lv.name for lv in cfg.tlb] == ["l1"]
    assert [c.name for c in cfg.tlb_levels()[0]] == ["l1", "l1_big"]
    assert cfg.paging.page_size == 2 << 20
    assert cfg.numa.nodes == 4 and cfg.numa.mem_per_node == (1 << 30,) * 4


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["tlb.l1.entires=64"], "tlb.l1.entires: unknown key"),
        (["tlb.l1.ways=3"], "tlb.l1.ways: entries .64. must be a multiple of ways .3."),
        (
            ["tlb.l1.ways=2", "tlb.l1.entries=12"],
            "tlb.l1.ways: sets = entries / ways = 6 must be a power of two",
        ),
        (["tlb.l1.policy=mru"], "tlb.l1.policy: unknown TLB policy 'mru'"),
        (['tlb.l1.page_sizes=["8K"]'], "tlb.l1.page_sizes"),
        (['tlb.l1.2m.page_sizes=["4K"]'], "already held by tlb.l1"),
        (["tlb.l1.latency=-1"], "tlb.l1.latency"),
        (["tlb.l3.entries=64"], "tlb.l3.ways: missing"),
        (["tlb.l4.entries=64", "tlb.l4.ways=4"], "tlb.l4: levels must be named l1, l2"),
        (["tlb.x1.entries=4"], "tlb.x1: unknown key"),
        (["paging.format=arm64"], "paging.format: unknown value 'arm64'"),
        (['paging.page_size="3K"'], "paging.page_size"),
        (["paging.fmt=1"], "paging.fmt: unknown key"),
        (["prefetch.kind=markov"], "prefetch.kind"),
        (["prefetch.degree=0"], "prefetch.degree: prefetch degree must be a positive integer, got 0"),
        (["pwc.enabled=3"], "pwc.enabled: expected true or false"),
        (["numa.policy=bind:7"], "numa.policy"),
        (["numa.distances=[[10, 5], [5, 10]]"], "numa.distances[0][1]"),
        (["numa.nodes=3"], None),
        (['numa.mem_per_node="lots"'], "numa.mem_per_node"),
        (["concurrency.max_concurrent=0"], "concurrency.max_concurrent"),
        (["bogus.key=1"], "bogus: unknown section"),
        (["noequals"], "expected section.key=value"),
        (["tlb.l1.entries.x=1"], "tlb.l1.entries: is a value"),
    ],
)
def test_bad_values_name_the_key(sets: list[str], message: str | None) -> None:
    if message is None:
        assert load_config(sets=sets).numa.nodes == 3  # distances default with the node count
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(sets=sets)


def test_parse_value_and_apply_set() -> None:
    assert parse_value("64") == 64
    assert parse_value('["4K", "2M"]') == ["4K", "2M"]
    assert parse_value("true") is True
    assert parse_value("lru") == "lru"
    raw: dict[str, object] = {}
    apply_set(raw, "a.b.c=1.5")
    assert raw == {"a": {"b": {"c": 1.5}}}


def test_invalid_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[tlb.l1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(f)


def test_config_command_prints_effective_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[prefetch]\nkind = "next_page"\ndegree = 2\n')
    assert main(["config", "--config", str(f), "--set", "tlb.l2.entries=1024"]) == 0
    raw = tomllib.loads(capsys.readouterr().out)
    assert raw["prefetch"]["kind"] == "next_page" and raw["prefetch"]["degree"] == 2
    assert raw["tlb"]["l2"]["entries"] == 1024 and raw["tlb"]["l1"]["entries"] == 64


def test_config_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "vmopt.cli.main", "config", "--set", "tlb.l1.entires=64"]
    p = subprocess.run(env_cmd, capture_output=True, text=True, env=_env(), cwd=Path(__file__).parent.parent)
    assert p.returncode == 2
    assert "tlb.l1.entires: unknown key" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "config", "--config", str(tmp_path / "none.toml")],
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert p.returncode == 2 and "none.toml" in p.stderr and "Traceback" not in p.stderr
