"""Experiment tracking: one Weights & Biases run per search trial and per final run.

Runs are grouped by study (`group=<study>`), typed by stage (`job_type=search|final`) and tagged
with architecture, phases and stage, so the W&B workspace filters the way the report does. Metric
history is logged once per validation against tokens seen (the shared x-axis of every curve), and
the run's summary carries the final scores or the failure reason. The run id goes into the Optuna
trial's attributes (`wandb_run_id`), so a trial in the dashboard leads to its W&B run.

Nothing outside `out_dir`: wandb's run files, cache, config, data and artifact folders (and the
temporary folder its service process starts with, where it writes its debug log) are pointed into
`<out_dir>/wandb/` when a run starts, unless the user set them (`WANDB_DIR`, `WANDB_CACHE_DIR`,
`WANDB_CONFIG_DIR`, `WANDB_DATA_DIR`, `WANDB_ARTIFACT_DIR`, `TMPDIR`), and restored when it finishes.

Never online by surprise, never blocking: `WANDB_MODE` decides when set; otherwise the run is
online only if an API key is configured (`WANDB_API_KEY` or a netrc entry), else offline. Offline
runs land in `<out_dir>/wandb/offline-run-*` and go up later with `wandb sync <dir>`. An online
start that cannot reach the server within `INIT_TIMEOUT_S` falls back to offline with one warning,
instead of wandb's 90 s wait per run; the rest of that process's runs then go offline directly.
"""

from __future__ import annotations

import math
import netrc
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.util import first_line

INIT_TIMEOUT_S = 15.0
# wandb's folders, relative to <out_dir>/wandb (None: out_dir itself, where wandb adds its wandb/ level)
WANDB_DIRS = {"WANDB_DIR": None, "WANDB_CACHE_DIR": ".cache", "WANDB_CONFIG_DIR": ".config",
              "WANDB_DATA_DIR": ".data", "WANDB_ARTIFACT_DIR": ".artifacts", "TMPDIR": ".tmp"}
_online_failed = False  # set by the first online start that fails: this process stays offline


def wandb_mode() -> str:
    """online | offline | disabled: the user's WANDB_MODE, else online only with a configured key."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode:
        return "offline" if mode == "dryrun" else mode
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _clean(row: Mapping[str, Any]) -> dict[str, Any]:
    """W&B-loggable scalars only (numbers, strings, bools); NaN kept as None."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    return out


class NullRun:
    """tracking=none (or WANDB_MODE=disabled): the same calls, nothing written anywhere."""

    id = ""
    dir = None

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any] | None = None, failure: str | None = None) -> None:
        pass


class WandbRun:
    """A thin handle on one wandb run: history rows against tokens, a summary, a clean finish."""

    def __init__(self, run: Any) -> None:
        self._run, self._open = run, True
        self.id: str = run.id
        self.dir: str | None = run.dir
        run.define_metric("tokens")
        run.define_metric("*", step_metric="tokens")  # every curve against tokens seen

    def log(self, row: Mapping[str, Any]) -> None:
        self._run.log(_clean(row))

    def finish(self, summary: Mapping[str, Any] | None = None, failure: str | None = None) -> None:
        """Write the summary and close the run; a second call does nothing (a failed slot closes the
        runs it left open, some of which may already be finished)."""
        if not self._open:
            return
        self._open = False
        try:
            for k, v in _clean(summary or {}).items():
                self._run.summary[k] = v
            if failure:
                self._run.summary["failure_reason"] = failure
            self._run.finish(exit_code=1 if failure else 0)
        finally:
            _release_env()


def start_run(tracking: str, *, out_dir: Path, project: str, study: str, name: str, stage: str, arch: str,
              tags: list[str], config: Mapping[str, Any]) -> NullRun | WandbRun:
    """Open the run of one trial or final run (see the module docstring for the mode rules)."""
    global _online_failed
    mode = wandb_mode() if tracking == "wandb" else "disabled"
    if mode == "online" and _online_failed:
        mode = "offline"
    if mode == "disabled":
        return NullRun()
    import wandb  # imported only when tracking: ~0.6 s

    kwargs = dict(project=project, group=study, job_type=stage, name=name, tags=[arch, stage, *tags],
                  config=dict(config), dir=str(out_dir), reinit="create_new", save_code=False)
    settings = dict(silent=True, console="off", x_disable_stats=True, init_timeout=INIT_TIMEOUT_S)
    _hold_env(out_dir)
    try:
        try:
            run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to reach W&B must not cost the trial
            if mode != "online":
                raise
            _online_failed = True
            print(f"warning: W&B online start failed ({first_line(e)[:200]}); logging offline to "
                  f"{out_dir}/wandb, upload later with `wandb sync`", file=sys.stderr)
            run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
    except BaseException:
        _release_env()
        raise
    return WandbRun(run)


_env = {"users": 0, "previous": {}}  # open runs of this process, and what their folders replaced


def _hold_env(out_dir: Path) -> None:
    """The first open run points wandb's folders into out_dir; runs that overlap it (a mutual
    cohort's members) share that, and the last one to finish restores the environment."""
    if _env["users"] == 0:
        _env["previous"] = point_wandb_into(out_dir)
    _env["users"] += 1


def _release_env() -> None:
    _env["users"] -= 1
    if _env["users"] == 0:
        restore_env(_env["previous"])


def point_wandb_into(out_dir: Path) -> dict[str, str | None]:
    """Point wandb's folder variables that the user has not set into `out_dir` (wandb reads them
    whenever it needs a folder, so they hold until the run finishes); returns what they were.
    TMPDIR too: wandb's service process, started by the first run, keeps it for its temporary
    files and debug log."""
    previous: dict[str, str | None] = {}
    for key, sub in WANDB_DIRS.items():
        if not os.environ.get(key):
            path = out_dir if sub is None else out_dir / "wandb" / sub
            path.mkdir(parents=True, exist_ok=True)  # wandb warns about a missing dir's git root otherwise
            previous[key], os.environ[key] = os.environ.get(key), str(path.resolve())
    return previous


def restore_env(previous: Mapping[str, str | None]) -> None:
    """Undo `point_wandb_into`: nothing of a finished run's folders outlives it in this process's
    environment (nor reaches a process it starts later)."""
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if "TMPDIR" in previous:
        tempfile.tempdir = None  # `tempfile` caches the folder it found first: make it look again
