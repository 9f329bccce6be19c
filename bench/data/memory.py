"""Phase 4: memory probes, outside the phase 1 -> 3 curriculum (select them with `phases=(4,)`).

One rule at several lags: the next value repeats the one k steps back. Trained and tested per
family, the accuracy of `lag_1 .. lag_64` is a task-space memory curve (accuracy against lag k).
"""

from __future__ import annotations

import torch

from bench.data.base import VOCAB, Family, Params, check_length

LAGS = (1, 2, 4, 8, 16, 32, 64)


class Lag(Family):
    """Period k: x_t = x_{t-k} for t >= k; the first k values are i.i.d. uniform on 0..255.

    Parameters: prefix = (x_0 .. x_{k-1}), each ~ U{0..255} independently (so a prefix with a shorter
    period, e.g. [a, a] for k = 2, occurs with its natural probability). `lag_1` is `constant`'s rule.
    Example (k=4, prefix=[7, 200, 3, 91]): [7, 200, 3, 91, 7, 200, 3, 91, 7, 200].

    Learnable targets are x_t with t >= k only: x_0 .. x_{k-1} are independent of everything before
    them, so no model beats chance (1/256) there. In `bench.metrics`, where position p predicts x_{p+1},
    these are positions p >= k - 1. A sequence must hold at least two learnable targets, so one repeat
    is already in context before the last: length >= k + 2 (`min_length`), else `validate_length` raises.
    """

    phase, group = 4, "memory"

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"lag k must be positive, got {k}")
        self.k = k
        self.name = f"lag_{k}"
        self.min_length = k + 2

    def validate_length(self, length: int) -> None:
        check_length(length)  # the generic message first, as for every family
        if length < self.min_length:
            raise ValueError(f"family '{self.name}' (lag k={self.k}) needs sequence length >= k + 2 = "
                             f"{self.min_length}, got length {length}")

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"prefix": torch.randint(0, VOCAB, (n, self.k), generator=gen)}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        prefix = params["prefix"]
        return prefix.repeat(1, -(-length // self.k))[:, :length]

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        k = self.k
        start = (seqs[:, :k] == params["prefix"]).all(dim=1)
        return start & (seqs[:, k:] == seqs[:, :-k]).all(dim=1)
