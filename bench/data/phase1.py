"""Phase 1: simple recurrences on the past terms, of order 0, 1 and 2."""

from __future__ import annotations

import torch

from bench.data.base import VOCAB, AdditiveFamily, Family, Params, nonzero_int, positions, randint


class Constant(Family):
    """Order 0: x_t = x_{t-1} = c.

    Parameters: c ~ U{0..255}.
    Example (c=7): [7, 7, 7, 7, 7, 7, 7, 7].
    """

    name, phase, group = "constant", 1, "recurrence"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"c": randint(0, VOCAB - 1, n, gen)}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        return params["c"].unsqueeze(1).repeat(1, length)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        return (seqs[:, 0] == params["c"]) & (seqs[:, 1:] == seqs[:, :-1]).all(dim=1)


class Arithmetic(AdditiveFamily):
    """Order 1: x_t = x_{t-1} + d (mod 256).

    Parameters: d ~ U{-10..10} without 0 (d = 0 is `constant`); x0 uniform over the starts that
    keep all terms in 0..255 (see `place_start`).
    Example (x0=2, d=2): [2, 4, 6, 8, 10, 12, 14, 16].
    """

    name, phase, group = "arithmetic", 1, "recurrence"

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"d": nonzero_int(10, n, gen)}

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        return params["d"].unsqueeze(1) * positions(length)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        step = (seqs[:, :-1] + params["d"].unsqueeze(1)) % VOCAB
        return (seqs[:, 0] == params["x0"]) & (seqs[:, 1:] == step).all(dim=1)


class Alternating(Family):
    """Order 2: x_t = x_{t-2}, a period-2 pattern of two distinct values.

    Parameters: x0 ~ U{0..255}; x1 ~ U{0..255} without x0.
    Example (x0=1, x1=0): [1, 0, 1, 0, 1, 0, 1, 0].
    """

    name, phase, group = "alternating", 1, "recurrence"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        x0 = randint(0, VOCAB - 1, n, gen)
        return {"x0": x0, "x1": (x0 + randint(1, VOCAB - 1, n, gen)) % VOCAB}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        even = positions(length) % 2 == 0
        return torch.where(even, params["x0"].unsqueeze(1), params["x1"].unsqueeze(1))

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        start = (seqs[:, 0] == params["x0"]) & (seqs[:, 1] == params["x1"])
        return start & (seqs[:, 2:] == seqs[:, :-2]).all(dim=1)
