"""Shared test set-up: one torch thread per test process (two threads collapse ~100x on a busy
2-core machine), W&B never online, and a fixed default dtype."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
