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
from vmopt.tlb import DEFAULT_SPLIT_TLB_LEVELS, SplitL1, TlbConfig


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parent.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def _geometry(cfgs: tuple[TlbConfig, ...] | list[TlbConfig]) -> list[tuple[object, ...]]:
    return [(c.entries, c.ways, c.policy, c.page_sizes, c.latency, c.name) for c in cfgs]


def test_defaults_match_the_split_default_hierarchy() -> None:
    cfg = load_config()
    levels = cfg.tlb_levels()
    assert cfg.split_l1 and [lv.name for lv in cfg.tlb] == ["l1i", "l1d", "l2"]
    assert len(levels) == len(DEFAULT_SPLIT_TLB_LEVELS)
    ours, theirs = levels[0], DEFAULT_SPLIT_TLB_LEVELS[0]
    assert isinstance(ours, SplitL1) and isinstance(theirs, SplitL1)
    assert _geometry(ours.itlb) == _geometry(theirs.itlb) and _geometry(ours.dtlb) == _geometry(theirs.dtlb)
    for level, default in zip(levels[1:], DEFAULT_SPLIT_TLB_LEVELS[1:], strict=True):
        assert isinstance(level, list) and not isinstance(default, SplitL1)
        assert _geometry(level) == _geometry(default)
    assert cfg.paging.walk_ref_cycles == 20
    assert cfg.paging.format == "x86_64" and cfg.paging.page_size == 4096
    assert cfg.pwc.enabled and cfg.numa.nodes == 2


def test_to_toml_round_trips() -> None:
    cfg = load_config(sets=["tlb.l1i.entries=32", "prefetch.kind=stride", "numa.policy=interleave:0,1"])
    raw = tomllib.loads(to_toml(cfg.to_raw()))
    assert from_raw(raw) == cfg
    assert raw["tlb"]["l1i"]["entries"] == 32 and list(raw["tlb"]) == ["l1i", "l1d", "l2"]


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
        (["tlb.l1d.entires=64"], "tlb.l1d.entires: unknown key"),
        (["tlb.l1d.ways=5"], "tlb.l1d.ways: entries .96. must be a multiple of ways .5."),
        (
            ["tlb.l1i.ways=2", "tlb.l1i.entries=12"],
            "tlb.l1i.ways: sets = entries / ways = 6 must be a power of two",
        ),
        (["tlb.l1d.policy=mru"], "tlb.l1d.policy: unknown TLB policy 'mru'"),
        (['tlb.l1i.page_sizes=["8K"]'], "tlb.l1i.page_sizes"),
        (['tlb.l1d.2m.page_sizes=["4K"]'], "already held by tlb.l1d"),
        (
            ['tlb.l1i.page_sizes=["1G"]', 'tlb.l1i.2m.page_sizes=["2M"]'],
            "tlb.l1i.page_sizes: .*can never hold",
        ),
        (["tlb.l1i.latency=-1"], "tlb.l1i.latency"),
        (["tlb.l1.entries=64"], "tlb.l1: a unified [tlb.l1] and a split L1"),
        (["tlb.l2i.entries=64"], "tlb.l2i: unknown key .TLB levels are named l1 .or l1i and l1d."),
        (["tlb.l01.entries=64"], "tlb.l01: unknown key"),
        (["tlb.l3.entries=64"], "tlb.l3.ways: missing"),
        (
            ["tlb.l4.entries=64", "tlb.l4.ways=4"],
            "tlb.l4: levels must be l1 .or l1i and l1d., l2, ... in order",
        ),
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
        (["tlb.l1d.entries.x=1"], "tlb.l1d.entries: is a value"),
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
    assert raw["tlb"]["l2"]["entries"] == 1024 and raw["tlb"]["l1d"]["entries"] == 96


def test_config_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "vmopt.cli.main", "config", "--set", "tlb.l1d.entires=64"]
    p = subprocess.run(env_cmd, capture_output=True, text=True, env=_env(), cwd=Path(__file__).parent.parent)
    assert p.returncode == 2
    assert "tlb.l1d.entires: unknown key" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "config", "--config", str(tmp_path / "none.toml")],
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert p.returncode == 2 and "none.toml" in p.stderr and "Traceback" not in p.stderr


def test_a_file_may_give_a_unified_or_a_split_l1(tmp_path: Path) -> None:
    split = tmp_path / "split.toml"
    split.write_text(
        "[tlb.l1d]\nentries = 16\nways = 4\n"
        '[tlb.l1i]\nentries = 8\nways = 8\n[tlb.l1i.big]\nentries = 4\nways = 4\npage_sizes = ["2M"]\n'
        "[tlb.l2]\nentries = 64\nways = 8\nlatency = 7\n"
    )
    cfg = load_config(split)
    assert [lv.name for lv in cfg.tlb] == ["l1i", "l1d", "l2"]  # ITLB first, whatever the file's order
    first, l2 = cfg.tlb_levels()
    assert isinstance(first, SplitL1) and isinstance(l2, list)
    assert [c.name for c in first.itlb] == ["l1i", "l1i_big"] and [c.name for c in first.dtlb] == ["l1d"]
    assert [(c.entries, c.ways) for c in first.itlb] == [(8, 8), (4, 4)] and l2[0].latency == 7
    assert from_raw(tomllib.loads(to_toml(cfg.to_raw()))) == cfg
    unified = tmp_path / "unified.toml"
    unified.write_text("[tlb.l1]\nentries = 32\nways = 4\n")
    cfg = load_config(unified)
    assert not cfg.split_l1 and [lv.name for lv in cfg.tlb] == ["l1"]
    assert [c.name for level in cfg.tlb_levels() for c in level] == ["l1"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tlb.l1]\nentries = 4\nways = 4\n[tlb.l1i]\nentries = 4\nways = 4\n", "tlb.l1: a unified"),
        ("[tlb.l1d]\nentries = 4\nways = 4\n[tlb.l1]\nentries = 4\nways = 4\n", r"\[tlb.l1d\]\) cannot"),
        ("[tlb.l1i]\nentries = 4\nways = 4\n", r"tlb.l1d: missing \(a split L1 needs both"),
        ("[tlb.l1d]\nentries = 4\nways = 4\n[tlb.l2]\nentries = 8\nways = 8\n", "tlb.l1i: missing"),
        ("[tlb.l1i]\nentries = 4\nways = 4\n[tlb.l1d]\nentries = 4\n", "tlb.l1d.ways: missing"),
        ("[tlb.l1i]\nentries = 4\nways = 4\n[tlb.l1d]\nentries = 4\nways = 4\nbogus = 1\n", "tlb.l1d.bogus"),
        ("[tlb.l2]\nentries = 4\nways = 4\n", "tlb.l2: levels must be l1"),
    ],
)
def test_split_l1_errors_name_the_section(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(f)


def test_eight_levels_with_a_split_l1_are_allowed_and_nine_are_not() -> None:
    sets = [f"tlb.l{i}.{k}=8" for i in range(3, 9) for k in ("entries", "ways")]
    assert len(load_config(sets=sets).tlb) == 9  # l1i, l1d, l2 .. l8: eight levels
    with pytest.raises(ConfigError, match="at most 8 levels, got 9"):
        load_config(sets=[*sets, "tlb.l9.entries=8", "tlb.l9.ways=8"])
