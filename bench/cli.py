"""What every `python -m bench.*` command shares: `--help`, and every expected failure as one line.

A user gets one `error: ...` line on stderr and an exit code, never a traceback: 2 for bad input
(a ConfigError or a report's ReportInputError: a malformed override, a missing or corrupt stored
table, an unusable folder, a busy port), 1 for a run that failed (a file system refusing a write
mid-run, a worker that died, anything unforeseen). `ARCHBENCH_TRACEBACK=1` re-raises the unforeseen
ones, for whoever debugs the code rather than uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from bench.experiment.config import ConfigError
from bench.report import ReportInputError
from bench.util import first_line

TRACEBACK_ENV = "ARCHBENCH_TRACEBACK"
MAX_MESSAGE = 500  # characters of one error line: a 50,000-character value is shown by its ends


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise ConfigError (one `error:` line, exit 2 through `entry_point`)
    instead of printing the usage and exiting on its own."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (try --help)")


def one_line(text: str) -> str:
    """`text` on one line, at most MAX_MESSAGE characters (the middle of a longer one elided)."""
    text = " ".join(text.split())
    half = MAX_MESSAGE // 2
    return text if len(text) <= MAX_MESSAGE else f"{text[:half]} ... {text[-half:]}"


def describe_os_error(e: OSError) -> str:
    """'Permission denied: /path' (the file named, shortened), else the error's own words."""
    if e.strerror and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    return first_line(e)


def entry_point(argv: list[str] | None, usage: str, command: Callable[[list[str]], int]) -> int:
    """`-h`/`--help` prints `usage`; otherwise `command(args)` returns the exit code, and whatever it
    raises becomes one `error:` line (see the module docstring for the codes)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    try:
        return command(args)
    except (ConfigError, ReportInputError) as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except OSError as e:
        return _fail(describe_os_error(e), 1)
    except Exception as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        return _fail(f"{type(e).__name__}: {first_line(e)} (set {TRACEBACK_ENV}=1 for the traceback)", 1)


def _fail(message: str, code: int) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code
