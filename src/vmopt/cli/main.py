"""Entry point: ``vmopt <command> ...``.

Each subcommand lives in its own module and registers itself here. Errors
that come from bad input (any :class:`VmoptError`, or an unreadable file)
print one clear line and exit with status 2, never a traceback. A stdout
closed by its reader ends the command quietly (status 141).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from vmopt import __version__
from vmopt.cli import bench, config_cmd, demo, inspect, simulate, sweep
from vmopt.errors import VmoptError

__all__ = ["main"]

EXIT_USAGE = 2
#: A closed stdout: 128 + SIGPIPE, what a shell reports for a tool killed by the signal.
EXIT_PIPE = 141


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


def _closed_stdout() -> int:
    """stdout was closed by its reader (``| head``): end quietly, as a SIGPIPE'd tool would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


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
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_stdout()
    except (VmoptError, OSError) as exc:
        print(f"vmopt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vmopt {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
