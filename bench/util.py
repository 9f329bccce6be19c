"""The two helpers every layer shares (stdlib only, so the core, the study engine and the reports
can all import it): atomic file writes and the one-line form of an exception.

    atomic_write(path, lambda p: p.write_text("..."))   # a reader sees the old file or the new one
    first_line(e)                                          # "storage unreachable / connection refused"
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place.

    A kill mid-write leaves the previous file (or none), never half of one; the temporary file is
    removed when `write` fails. Returns `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def first_line(e: BaseException) -> str:
    """The first line of `e` and of its cause (joined by ' / ', repeats dropped), else its type's name."""
    msgs = [str(x).strip().splitlines()[0] for x in (e, e.__cause__) if x is not None and str(x).strip()]
    return " / ".join(dict.fromkeys(msgs)) or type(e).__name__
