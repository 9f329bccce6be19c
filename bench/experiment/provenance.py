"""Where a study's tables came from, for meta.yaml: the command, the code's commit, the machine."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from bench.experiment.config import Config


def git_commit() -> str:
    """Short commit of the checkout, with '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return (commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device) -> str:
    """e.g. 'host x86_64 16 cpus, torch 2.5.1, cuda'."""
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {device}"


def meta(cfg: Config, command: str, device: torch.device) -> dict[str, Any]:
    """meta.yaml: how to reproduce the study's tables, and what produced them."""
    return {
        "command": command,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "workers": cfg.workers,
        "storage": cfg.storage_url,
    }
