"""Entry point: ``vmopt <command> ...``.

Each subcommand lives in its own module and registers itself here. Errors
that come from bad input (any :class:`VmoptError`, or an unreadable file)
print one clear line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from vmopt import __version__
from vmopt.cli import bench, config_cmd, demo, inspect, simulate, sweep
from vmopt.errors import VmoptError

__all__ = ["main"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vmopt", description="Memory-system toolkit for virtual machines and emulators."
    )
    parser.add_argument("--version", action="version", version=f"vmopt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo.register(sub)
    bench.register(sub)
    inspect.register(sub)
    simulate.register(sub)
    sweep.register(sub)
    config_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        status: int = args.run(args)
    except (VmoptError, OSError) as exc:
        print(f"vmopt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vmopt {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
