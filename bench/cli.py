"""What every `python -m bench.*` command shares: `--help`, and bad input as one `error:` line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench.experiment.config import ConfigError


def entry_point(argv: list[str] | None, usage: str, command: Callable[[list[str]], int]) -> int:
    """`-h`/`--help` prints `usage`; a ConfigError (bad input, unreachable storage, a study run under
    another configuration) becomes one `error:` line and exit code 2. `command(args)` does the rest
    and returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    try:
        return command(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
