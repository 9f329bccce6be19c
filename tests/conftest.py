"""Shared test set-up: one torch thread per test process (two threads collapse ~100x on a busy
2-core machine), W&B never online, a fixed default dtype, and each test run from its own empty
directory, so default outputs (runs/, reports/, wandb/) never land in the checkout."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
