"""``deltapatch`` command line: the outermost layer. Each command is one module here that parses
arguments and calls the library; nothing in the library imports this package."""

from __future__ import annotations

import argparse
import sys

import torch

from .. import __version__
from ..errors import DeltaPatchError
from . import (  # noqa: F401  (register commands)
    bench,
    demo,
    evaluate,
    export,
    info,
    predict,
    serve,
    train,
    verify,
)
from .common import COMMANDS, HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltapatch", description="Patch frozen pretrained CNNs with Δ-Networks.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"deltapatch {__version__}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a shared, loaded machine "
                             "1 is often several times faster (docs/PERFORMANCE.md)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in sorted(COMMANDS.items()):
        cmd.arguments(sub.add_parser(name, help=cmd.help, description=cmd.help,
                                     formatter_class=HelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok; 1 a check failed (verify, failed bench runs) or the system refused
    (disk full); 2 bad input, said in one line on stderr; 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        return COMMANDS.get(args.command).run(args)
    except (DeltaPatchError, ValueError) as err:
        return _fail(args.command, err, 2)
    except OSError as err:  # disk full, permission denied: the system, not the input
        return _fail(args.command, err, 1)
    except KeyboardInterrupt as err:  # Ctrl-C; SIGTERM where a command asks (common.Terminated)
        print(str(err) or "interrupted; run the same command again to resume", file=sys.stderr)
        return getattr(err, "exit_code", 130)


def _fail(command: str, err: Exception, code: int) -> int:
    text = " ".join(str(err).split()) or type(err).__name__
    print(f"deltapatch {command}: error: {text}", file=sys.stderr)
    return code
