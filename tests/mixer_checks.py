"""The step-mode oracle shared by the mixer tests: prefill on x[:, :p], then step the rest."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def step_through(mixer: nn.Module, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """Step x (B, T, d) position by position -> (B, T, d) and the final state."""
    ys = [x[:, :0]]
    for t in range(x.shape[1]):
        y_t, state = mixer.step(x[:, t], state)
        ys.append(y_t[:, None])
    return torch.cat(ys, dim=1), state


def prefill_then_step(mixer: nn.Module, x: Tensor, p: int) -> tuple[Tensor, Any]:
    """forward_with_state on the first p positions (the empty state for p = 0), then step the rest:
    (B, L, d) to compare with forward(x), and the final state."""
    if p == 0:
        y_pre, state = x[:, :0], mixer.init_state(x.shape[0])
    else:
        y_pre, state = mixer.forward_with_state(x[:, :p])
    y_rest, state = step_through(mixer, x[:, p:], state)
    return torch.cat((y_pre, y_rest), dim=1), state
