"""Command line: parse, build a config, call the library. No logic lives here.

parser.py builds the options, commands.py runs each command, checks.py checks option values and
failures.py turns a full disk or a diverged run into one line; Ctrl-C is one line and exit 130."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from logitsam.cli.failures import is_training_diverged, storage_error
from logitsam.cli.parser import build_parser
from logitsam.errors import UserError, one_line

__all__ = ["build_parser", "guarded", "main"]


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the one place: Ctrl-C in any command, at any moment (imports included)
        print("\nlogitsam: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("train", "sft"):  # their overrides are checked (and named) by apply_overrides
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides = rest
    if not sys.stderr.isatty():  # a log file: no progress bars (Hub, transformers, Trainer); the log lines stay
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return guarded(lambda: args.func(args))


def guarded(command: Callable[[], int], prog: str = "logitsam") -> int:
    """Run ``command``: a user mistake, a full disk or a diverged run becomes one line on stderr and exit
    code 2 (3: diverged); a bug keeps its traceback. The experiments' entry points use it too."""
    try:
        return command()
    except Exception as e:
        if is_training_diverged(e):  # checked first: it may become a UserError subclass
            print(f"{prog}: training diverged: {one_line(e)}", file=sys.stderr)
            return 3
        if isinstance(e, UserError):
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            return 2
        storage = storage_error(e)
        if storage is not None:
            print(f"{prog}: error: {storage}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
