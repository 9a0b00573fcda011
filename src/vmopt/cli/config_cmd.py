"""``vmopt config``: print the effective simulation configuration as TOML."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vmopt.cli.simulate import add_config_args
from vmopt.sim.config import load_config, to_toml

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add the ``config`` subcommand."""
    p = sub.add_parser(
        "config", help="print the effective simulation configuration (defaults, --config, --set) as TOML"
    )
    add_config_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate and print."""
    config = load_config(args.config, args.sets)
    sys.stdout.write(to_toml(config.to_raw()))
    return 0
