"""Configuration bounds and hostile configuration files (issue 12, items 2 and 10).

Every limit fails fast, before anything is allocated, and names the limit;
each check here would take minutes and gigabytes (or a traceback) without it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmopt import _core
from vmopt.errors import ConfigError
from vmopt.numa.config import MAX_CPUS, MAX_NODE_MEMORY, MAX_NODES, NumaConfig
from vmopt.sim.config import MAX_CONFIG_NESTING, load_config
from vmopt.tlb.config import (
    MAX_LATENCY,
    MAX_PREFETCH_DEGREE,
    MAX_PREFETCH_QUEUE,
    MAX_PWC_ENTRIES,
    MAX_TLB_ENTRIES,
    MAX_TLB_WAYS,
    PrefetchConfig,
    PwcConfig,
    TlbConfig,
)


def _fast(f: object, *args: object, match: str, **kwargs: object) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=match):
        f(*args, **kwargs)  # type: ignore[operator]
    assert time.monotonic() - start < 2


def test_domain_configs_name_their_upper_bounds() -> None:
    _fast(TlbConfig, MAX_TLB_ENTRIES * 2, 1, match=f"entries must be at most {MAX_TLB_ENTRIES:,}")
    _fast(TlbConfig, 10**9, 10**9, match="at most")
    _fast(TlbConfig, MAX_TLB_WAYS * 2, MAX_TLB_WAYS * 2, match=f"ways must be at most {MAX_TLB_WAYS:,}")
    _fast(TlbConfig, 4, 4, latency=MAX_LATENCY + 1, match="latency must be at most")
    _fast(PwcConfig, MAX_PWC_ENTRIES + 1, match="pwc entries must be at most")
    _fast(PwcConfig, 4, 1 << 70, match="pwc latency must be at most")
    _fast(PrefetchConfig, "next_page", MAX_PREFETCH_DEGREE + 1, match="prefetch degree must be at most 512")
    _fast(PrefetchConfig, queue_limit=MAX_PREFETCH_QUEUE + 1, match="queue_limit must be at most")
    _fast(NumaConfig, 10**6, 4096, match=f"num_nodes must be at most {MAX_NODES}")
    _fast(NumaConfig, 2, MAX_NODE_MEMORY + 4096, match="node 0 memory must be at most 65536 GiB")
    _fast(NumaConfig, 2, 4096, cpus_per_node=10**5, match=f"more than {MAX_CPUS} vCPUs")
    _fast(NumaConfig, 1, 4096, cpu_nodes=[0] * (MAX_CPUS + 1), match="at most 4096")
    # The limits themselves are allowed.
    assert TlbConfig(MAX_TLB_ENTRIES, MAX_TLB_WAYS).sets == MAX_TLB_ENTRIES // MAX_TLB_WAYS
    assert NumaConfig(MAX_NODES, 4096).num_nodes == MAX_NODES


def test_the_core_checks_the_same_limits() -> None:
    too_many = (MAX_TLB_ENTRIES * 2, 1, "lru", [4096], 1, "l1", 0)
    with pytest.raises(ConfigError, match=f"entries must be at most {MAX_TLB_ENTRIES}"):
        _core.TlbLevel([too_many])
    with pytest.raises(ConfigError, match=f"ways must be at most {MAX_TLB_WAYS}"):
        _core.TlbLevel([(MAX_TLB_WAYS * 2, MAX_TLB_WAYS * 2, "lru", [4096], 1, "l1", 0)])
    with pytest.raises(ConfigError, match="pwc entries must be at most"):
        _core.PageWalkCache(MAX_PWC_ENTRIES + 1, 1, 4)
    with pytest.raises(ConfigError, match="prefetch degree must be at most 512"):
        _core.Prefetcher("next_page", MAX_PREFETCH_DEGREE + 1)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("tlb.l1d.entries=1000000000", "tlb.l1d.entries: entries must be at most 1,048,576"),
        ("numa.nodes=1000000", "numa.nodes: must be at most 64"),
        ("numa.cpus=100000", "numa.cpus: must be at most 4,096"),
        ("pwc.entries=100000000", "pwc.entries: pwc entries must be at most 65,536"),
        ("prefetch.degree=100000", "prefetch.degree: prefetch degree must be at most 512"),
        ("paging.walk_ref_cycles=10000000000", "paging.walk_ref_cycles: must be at most"),
    ],
)
def test_settings_past_a_limit_fail_fast_naming_it(assignment: str, message: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        load_config(None, [assignment])
    assert time.monotonic() - start < 2


def test_config_command_with_a_million_nodes_exits_2_quickly() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "vmopt.cli.main", "config", "--set", "numa.nodes=1000000"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 2 and "numa.nodes: must be at most 64" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes('[numa]\npolicy = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml.*not UTF-8 text \(byte 20: 0xe9\)"):
        load_config(f)


@pytest.mark.parametrize("text", ["x = " + "[" * 100_000, "x = " + "[" * 40 + "]" * 40, "x = " + "{a=" * 50])
def test_deeply_nested_config_files_are_refused(tmp_path: Path, text: str) -> None:
    f = tmp_path / "deep.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_CONFIG_NESTING}"):
        load_config(f)


def test_deep_set_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(None, ["numa.distances=" + "[" * 100_000])


def test_an_unreadable_config_path_names_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config '.*': cannot read: Is a directory"):
        load_config(tmp_path)


def test_a_workload_asking_for_too_many_vcpus_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    from vmopt.cli.main import main

    start = time.monotonic()
    args = ["simulate", "--param", "cpus=30000", "--param", "footprint=1G", "--param", "length=100"]
    assert main([*args, "--no-progress"]) == 2
    assert time.monotonic() - start < 10
    assert f"places 30,000 vCPUs; at most {MAX_CPUS}" in capsys.readouterr().err
