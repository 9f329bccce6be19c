"""Phase 1: simple recurrences on the past terms, of order 0, 1 and 2."""

from __future__ import annotations

import torch

from bench.data.base import (
    VOCAB,
    AdditiveFamily,
    Dist,
    Family,
    Params,
    in_band,
    nonzero,
    nonzero_int,
    positions,
    product,
    randint,
    signed,
    uniform,
)


class Constant(Family):
    """Order 0: x_t = x_{t-1} = c.

    Parameters: c ~ U{0..255}.
    Example (c=7): [7, 7, 7, 7, 7, 7, 7, 7].
    Held-out region (translation): c in 240..255 (`BAND`), probability 16/256 = 6.25 %; training
    sees the rule only on values 0..239.
    """

    name, phase, group, held_out_kind = "constant", 1, "recurrence", "translation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"c": randint(0, VOCAB - 1, n, gen)}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        return params["c"].unsqueeze(1).repeat(1, length)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        return (seqs[:, 0] == params["c"]) & (seqs[:, 1:] == seqs[:, :-1]).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0])

    def param_support(self, length: int) -> Dist:
        return uniform(c=torch.arange(VOCAB))


class Arithmetic(AdditiveFamily):
    """Order 1: x_t = x_{t-1} + d (mod 256).

    Parameters: d ~ U{-10..10} without 0 (d = 0 is `constant`); x0 uniform over the starts that
    keep all terms in 0..255 (see `place_start`).
    Example (x0=2, d=2): [2, 4, 6, 8, 10, 12, 14, 16].
    Held-out region (extrapolation): |d| = 10, probability 2/20 = 10 %; training sees |d| <= 9.
    """

    name, phase, group, held_out_kind = "arithmetic", 1, "recurrence", "extrapolation"

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"d": nonzero_int(10, n, gen)}

    def shape_support(self, length: int) -> Dist:
        return uniform(d=nonzero(10))

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        return params["d"].unsqueeze(1) * positions(length)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        step = (seqs[:, :-1] + params["d"].unsqueeze(1)) % VOCAB
        return (seqs[:, 0] == params["x0"]) & (seqs[:, 1:] == step).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return signed(seqs[:, 1] - seqs[:, 0]).abs() == 10


class Alternating(Family):
    """Order 2: x_t = x_{t-2}, a period-2 pattern of two distinct values.

    Parameters: x0 ~ U{0..255}; x1 ~ U{0..255} without x0.
    Example (x0=1, x1=0): [1, 0, 1, 0, 1, 0, 1, 0].
    Held-out region (translation): x0 in 240..255 (`BAND`), probability 16/256 = 6.25 %. The band is
    shared with `even_odd` and `rule_switch`, whose sequences can be period-2 patterns too (even_odd's
    [246, 251, 246, ...], rule_switch's [3, 0, 3, ...]), so a held-out pattern is held out in all three.
    """

    name, phase, group, held_out_kind = "alternating", 1, "recurrence", "translation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        x0 = randint(0, VOCAB - 1, n, gen)
        return {"x0": x0, "x1": (x0 + randint(1, VOCAB - 1, n, gen)) % VOCAB}

    def param_support(self, length: int) -> Dist:
        params, prob = product(uniform(x0=torch.arange(VOCAB)), uniform(k=torch.arange(1, VOCAB)))
        return {"x0": params["x0"], "x1": (params["x0"] + params["k"]) % VOCAB}, prob

    def terms(self, params: Params, length: int) -> torch.Tensor:
        even = positions(length) % 2 == 0
        return torch.where(even, params["x0"].unsqueeze(1), params["x1"].unsqueeze(1))

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        start = (seqs[:, 0] == params["x0"]) & (seqs[:, 1] == params["x1"])
        return start & (seqs[:, 2:] == seqs[:, :-2]).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0])
