"""Phase 4: memory probes, outside the phase 1 -> 3 curriculum (select them with `phases=(4,)`).

One rule at several lags: the next value repeats the one k steps back. Trained and tested per
family, the accuracy of `lag_1 .. lag_64` is a task-space memory curve (accuracy against lag k).
"""

from __future__ import annotations

import math

import torch

from bench.data.base import REGIONS, VOCAB, Family, Params, Region, check_length

LAGS = (1, 2, 4, 8, 16, 32, 64)
HELD_OUT_BAND = (240, 255)  # first values reserved for the `ood` split: 16 of 256, 6.25 % of each lag's mass


class Lag(Family):
    """Period k: x_t = x_{t-k} for t >= k; the first k values are i.i.d. uniform on 0..255.

    Parameters: prefix = (x_0 .. x_{k-1}), each ~ U{0..255} independently (so a prefix with a shorter
    period, e.g. [a, a] for k = 2, occurs with its natural probability). `lag_1` is `constant`'s rule.
    Example (k=4, prefix=[7, 200, 3, 91]): [7, 200, 3, 91, 7, 200, 3, 91, 7, 200].

    Learnable targets are x_t with t >= k only: x_0 .. x_{k-1} are independent of everything before
    them, so no model beats chance (1/256) there. In `bench.metrics`, where position p predicts x_{p+1},
    these are positions p >= k - 1. A sequence must hold at least two learnable targets, so one repeat
    is already in context before the last: length >= k + 2 (`min_length`), else `validate_length` raises.

    Held-out region (translation): x_0 in 240..255 (`HELD_OUT_BAND`, probability 16/256 = 6.25 %).
    Training streams see every lag pattern, but never one that starts in that band, so the `ood`
    split asks whether copying k steps back transfers to start values never seen first.

    There are 256^k parameter settings, so there is no `support`; instead `prefix_mass` and
    `next_distribution` give the exact probability of any prefix (the optional protocol of
    `bench.data.bayes`), so the Bayes predictor of a mixture with lags is still exact.
    """

    phase, group, held_out_kind = 4, "memory", "translation"

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

    def scored(self, seqs: torch.Tensor) -> torch.Tensor:
        """Positions p >= k - 1 (targets x_t, t >= k): the learnable ones, see the class docstring."""
        n, length = seqs.shape
        return (torch.arange(max(length - 1, 0)) >= self.k - 1).repeat(n, 1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        low, high = HELD_OUT_BAND
        return (seqs[:, 0] >= low) & (seqs[:, 0] <= high)

    def prefix_mass(self, prefixes: torch.Tensor, region: Region = "train") -> torch.Tensor:
        """DoubleTensor (n,): P(a sequence of this family, conditioned on `region`, starts with prefixes[i]).

        The first min(q, k) terms are free (x_0 uniform on the region's band, the rest uniform on
        0..255); every later term must equal the one k steps back. Example (k=2, region "any"):
        [5, 9, 5] has mass 1/256^2, [5, 9, 6] has mass 0, and the empty prefix has mass 1. Region
        "train" puts x_0 uniform on 0..239 (mass 1/240 each), "held_out" on 240..255 (1/16 each).
        """
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        n, q = prefixes.shape
        if q == 0:
            return torch.ones(n, dtype=torch.float64)
        k = self.k
        ok = ((prefixes >= 0) & (prefixes < VOCAB)).all(dim=1) & (prefixes[:, k:] == prefixes[:, :-k]).all(dim=1)
        band, width = self.held_out(prefixes), HELD_OUT_BAND[1] - HELD_OUT_BAND[0] + 1
        first = {"any": torch.full((n,), 1 / VOCAB, dtype=torch.float64),
                 "train": (~band).double() / (VOCAB - width), "held_out": band.double() / width}[region]
        return first * ok.double() * float(VOCAB) ** -(min(q, k) - 1)

    def next_distribution(self, inputs: torch.Tensor, region: Region = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """For every position p at once: log P(the sequence starts with inputs[b, :p+1]) (DoubleTensor
        (B, T), log `prefix_mass`) and P(x[p+1] = v | that prefix) (DoubleTensor (B, T, 256)).

        The next term is uniform (1/256) while p + 1 < k, then a copy of inputs[b, p + 1 - k] (the
        region only moves x_0's mass). Example (k=1, region "any"): inputs [[4, 4]] give log prefix
        masses [log(1/256), log(1/256)] and all next mass on 4 at both positions. Log space keeps
        long lags exact (256^-64 is near float64's floor).
        """
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        n, t_len = inputs.shape
        k, log_v = self.k, math.log(VOCAB)
        ok = (inputs >= 0) & (inputs < VOCAB)
        ok[:, k:] &= inputs[:, k:] == inputs[:, :-k]
        band, width = self.held_out(inputs), HELD_OUT_BAND[1] - HELD_OUT_BAND[0] + 1
        first = torch.full((n,), -math.log({"any": VOCAB, "train": VOCAB - width, "held_out": width}[region]),
                           dtype=torch.float64)
        if region != "any":  # x_0 outside the region's band has no mass
            first = first.masked_fill(band != (region == "held_out"), -math.inf)
        free = (torch.arange(1, t_len + 1).clamp(max=k) - 1).double() * -log_v  # terms 1..min(q, k)-1
        prefix = torch.where(ok.cumprod(dim=1).bool(), first.unsqueeze(1) + free, -math.inf)
        src = torch.arange(t_len) + 1 - k  # the term the next value copies, when it is in the prefix
        copy = inputs[:, src.clamp(min=0)].clamp(0, VOCAB - 1)
        nxt = torch.zeros(n, t_len, VOCAB, dtype=torch.float64).scatter_(2, copy.unsqueeze(2), 1.0)
        nxt[:, src < 0] = 1 / VOCAB
        return prefix, nxt
