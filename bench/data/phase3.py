"""Phase 3: compositions, transformations and conditional rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from bench.data.base import (
    VOCAB,
    Dist,
    Family,
    Params,
    choice,
    expand_uniform,
    in_band,
    nonzero,
    nonzero_int,
    place_start,
    positions,
    product,
    randint,
    randint_between,
    signed,
    start_window,
    uniform,
)


class FibonacciMod(Family):
    """The Fibonacci recurrence reduced modulo a small m: x_t = (x_{t-1} + x_{t-2}) mod m.

    Parameters: m ~ U{2..16}; (x0, x1) uniform over the pairs in {0..m-1}^2 other than (0, 0),
    which would give all zeros.
    Example (m=3, x0=0, x1=1): [0, 1, 1, 2, 0, 2, 2, 1].
    Held-out region (extrapolation): a start value of 12 or more, max(x0, x1) >= 12 (so m >= 13),
    probability sum over m = 13..16 of (m^2 - 144) / (m^2 - 1) / 15 = 8.1 %. Training starts from
    values 0..11 only, though its later terms reach 15.
    """

    name, phase, group, held_out_kind = "fibonacci_mod", 3, "composition", "extrapolation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        m = randint(2, 16, n, gen)
        pair = randint_between(torch.ones_like(m), m * m - 1, gen)
        return {"m": m, "x0": pair // m, "x1": pair % m}

    def param_support(self, length: int) -> Dist:
        dist = uniform(m=torch.arange(2, 17))
        m = dist[0]["m"]
        params, prob = expand_uniform(dist, "pair", torch.ones_like(m), m * m - 1)
        return {"m": params["m"], "x0": params["pair"] // params["m"], "x1": params["pair"] % params["m"]}, prob

    def terms(self, params: Params, length: int) -> torch.Tensor:
        out = [params["x0"], params["x1"]]
        for _ in range(2, length):
            out.append((out[-1] + out[-2]) % params["m"])
        return torch.stack(out, dim=1)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        start = (seqs[:, 0] == params["x0"]) & (seqs[:, 1] == params["x1"])
        nxt = (seqs[:, 1:-1] + seqs[:, :-2]) % params["m"].unsqueeze(1)
        return start & (seqs[:, 2:] == nxt).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return torch.maximum(seqs[:, 0], seqs[:, 1]) >= 12


class DoubleEveryThird(Family):
    """An arithmetic sequence a_t = a_{t-1} + d with every third term doubled:
    x_t = 2 a_t if (t + shift) % 3 == 2 else a_t (mod 256).

    Parameters: d ~ U{-10..10} without 0; shift ~ U{0, 1, 2}; a0 uniform over the starts that keep
    every a_t in 0..127, so doubled terms stay below 256 (long sequences wrap).
    Example (a0=1, d=1, shift=0): [1, 2, 6, 4, 5, 12, 7, 8].
    Held-out region (extrapolation): |d| = 10, probability 2/20 = 10 %; training sees |d| <= 9.
    Read from the terms by trying each shift: its two undoubled terms among x0..x2 give d, and the
    hypothesis holds if it regenerates the sequence. Four terms decide |d| for every a0 in 0..127:
    three do not where long sequences wrap ([12, 4, 248] is d = -8, shift 0, or d = -10, shift 1;
    x3 = 244 or 238 tells them apart).
    """

    name, phase, group, held_out_kind = "double_every_third", 3, "composition", "extrapolation"
    held_out_terms = 4

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        d, shift = nonzero_int(10, n, gen), randint(0, 2, n, gen)
        a0 = place_start(d.unsqueeze(1) * positions(length), gen, top=127)
        return {"a0": a0, "d": d, "shift": shift}

    def param_support(self, length: int) -> Dist:
        dist = product(uniform(d=nonzero(10)), uniform(shift=torch.arange(3)))
        return expand_uniform(dist, "a0", *start_window(dist[0]["d"].unsqueeze(1) * positions(length), top=127))

    def terms(self, params: Params, length: int) -> torch.Tensor:
        t = positions(length)
        a = params["a0"].unsqueeze(1) + params["d"].unsqueeze(1) * t
        doubled = (t + params["shift"].unsqueeze(1)) % 3 == 2
        return torch.where(doubled, 2 * a, a) % VOCAB

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        ok, a = torch.ones(seqs.shape[0], dtype=torch.bool), params["a0"]
        for t in range(seqs.shape[1]):
            factor = torch.where((t + params["shift"]) % 3 == 2, 2, 1)
            ok &= seqs[:, t] == factor * a % VOCAB
            a = a + params["d"]
        return ok

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        x0, x1, x2 = seqs[:, 0], seqs[:, 1], seqs[:, 2]
        out = torch.zeros(seqs.shape[0], dtype=torch.bool)
        # shift s doubles x_{2-s}; d from the two undoubled terms among x0..x2, then a0 = a_t - d t
        hypotheses = {0: (signed(x1 - x0), x0), 1: (signed(x2 - x0) // 2, x0), 2: (signed(x2 - x1), x1)}
        for shift, (d, a) in hypotheses.items():
            params = {"a0": a - d * (shift == 2), "d": d, "shift": torch.full_like(d, shift)}
            fits = (self.terms(params, seqs.shape[1]) == seqs).all(dim=1)
            out |= fits & (d.abs() == 10)
        return out


class RoundedGeometric(Family):
    """x_t = rounding(a * r^t) (mod 256) for real a, r, computed in float64; rounding is floor or ceil.

    Parameters: growth or decay with probability 1/2 each.
    Growth: r ~ U[(1 + r_max) / 2, r_max] with r_max = min(1.6, 255^(1/(L-1))), then
    a ~ U[1, 255 / r^(L-1)), so the last term is at most 255.
    Decay: r ~ U[0.5, 0.9], a ~ U[64, 255].
    Held-out region (translation): a decay starting at x0 >= 224 (growth starts below 151 at every
    length), probability 1/2 * 31/191 = 8.1 % (floor) or 1/2 * 32/191 = 8.4 % (ceil).
    """

    group, held_out_kind = "transformation", "translation"
    rounding: ClassVar[Callable[[torch.Tensor], torch.Tensor]]  # torch.floor or torch.ceil

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        u = torch.rand(3, n, generator=gen, dtype=torch.float64)
        r_max = min(1.6, 255 ** (1 / (length - 1)))
        r_grow = (1 + r_max) / 2 + u[0] * (r_max - 1) / 2
        a_grow = 1 + u[1] * (255 / r_grow ** (length - 1) - 1)
        grow = u[2] < 0.5
        r = torch.where(grow, r_grow, 0.5 + 0.4 * u[0])
        a = torch.where(grow, a_grow, 64 + 191 * u[1])
        return {"a": a, "r": r}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        t = torch.arange(length, dtype=torch.float64)
        y = params["a"].unsqueeze(1) * params["r"].unsqueeze(1) ** t
        return self.rounding(y).long() % VOCAB

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        # The real sequence by repeated multiplication; it may differ from a * r^t in the last bits,
        # so a term is accepted if it is the rounding of any value within 1e-9 (relative) of y_t.
        ok, y = torch.ones(seqs.shape[0], dtype=torch.bool), params["a"]
        for t in range(seqs.shape[1]):
            low, high = self.rounding(y * (1 - 1e-9)).long(), self.rounding(y * (1 + 1e-9)).long()
            ok &= (seqs[:, t] - low) % VOCAB <= high - low
            y = y * params["r"]
        return ok

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return seqs[:, 0] >= 224


class FloorGeometric(RoundedGeometric):
    """x_t = floor(a * r^t) (mod 256); parameters as in `RoundedGeometric`.

    Example (a=5, r=1.6): [5, 8, 12, 20, 32, 52, 83, 134].
    """

    name, phase = "floor_geometric", 3
    rounding = staticmethod(torch.floor)


class CeilGeometric(RoundedGeometric):
    """x_t = ceil(a * r^t) (mod 256); parameters as in `RoundedGeometric`.

    Example (a=200, r=0.75): [200, 150, 113, 85, 64, 48, 36, 27].
    """

    name, phase = "ceil_geometric", 3
    rounding = staticmethod(torch.ceil)


class AlternatingSigns(Family):
    """An arithmetic sequence a_t = a_{t-1} + d with alternating signs around 128:
    x_t = 128 + (-1)^t a_t (mod 256).

    Parameters: d ~ U{-10..10} without 0; a0 uniform over the starts that keep every a_t in
    0..127, so terms lie in 1..255 (long sequences wrap).
    Example (a0=5, d=3): [133, 120, 139, 114, 145, 108, 151, 102].
    Held-out region (extrapolation): |d| = 10, probability 2/20 = 10 %; training sees |d| <= 9.
    From the terms: d = a1 - a0 = (128 - x1) - (x0 - 128) = -(x0 + x1) (mod 256).
    """

    name, phase, group, held_out_kind = "alternating_signs", 3, "transformation", "extrapolation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        d = nonzero_int(10, n, gen)
        return {"a0": place_start(d.unsqueeze(1) * positions(length), gen, top=127), "d": d}

    def param_support(self, length: int) -> Dist:
        dist = uniform(d=nonzero(10))
        return expand_uniform(dist, "a0", *start_window(dist[0]["d"].unsqueeze(1) * positions(length), top=127))

    def terms(self, params: Params, length: int) -> torch.Tensor:
        t = positions(length)
        a = params["a0"].unsqueeze(1) + params["d"].unsqueeze(1) * t
        sign = 1 - 2 * (t % 2)
        return (128 + sign * a) % VOCAB

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        # Undo the sign to recover a_t (mod 256), then check a_t = a_{t-1} + d.
        sign = 1 - 2 * (positions(seqs.shape[1]) % 2)
        a = sign * (seqs - 128)
        step_ok = ((a[:, 1:] - a[:, :-1] - params["d"].unsqueeze(1)) % VOCAB == 0).all(dim=1)
        return (seqs[:, 0] == (128 + params["a0"]) % VOCAB) & step_ok

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return signed(-seqs[:, 0] - seqs[:, 1]).abs() == 10


class EvenOdd(Family):
    """Increment if the previous term is even, double if odd:
    x_t = x_{t-1} + c if x_{t-1} is even else 2 x_{t-1} (mod 256).

    Parameters: x0 ~ U{0..255}; c ~ U{1, 3, 5} (odd, so an increment always leads to a doubling).
    Example (x0=4, c=3): [4, 7, 14, 17, 34, 37, 74, 77].
    Held-out region (translation): x0 in 240..255 (`BAND`), probability 16/256 = 6.25 %, shared with
    `alternating`: x0 = 256 - 2c or 256 - c makes a period-2 pattern, e.g. [246, 251, 246, ...].
    """

    name, phase, group, held_out_kind = "even_odd", 3, "conditional", "translation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"x0": randint(0, VOCAB - 1, n, gen), "c": choice((1, 3, 5), n, gen)}

    def param_support(self, length: int) -> Dist:
        return product(uniform(x0=torch.arange(VOCAB)), uniform(c=[1, 3, 5]))

    def terms(self, params: Params, length: int) -> torch.Tensor:
        out = [params["x0"]]
        for _ in range(1, length):
            x = out[-1]
            out.append(torch.where(x % 2 == 0, x + params["c"], 2 * x) % VOCAB)
        return torch.stack(out, dim=1)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        prev = seqs[:, :-1]
        nxt = torch.where(prev % 2 == 0, prev + params["c"].unsqueeze(1), 2 * prev) % VOCAB
        return (seqs[:, 0] == params["x0"]) & (seqs[:, 1:] == nxt).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0])


class RuleSwitch(Family):
    """Switch between two rules on the local trend: after a fall (x_{t-1} < x_{t-2}) take a
    Fibonacci step x_t = x_{t-1} + x_{t-2}, otherwise step down x_t = x_{t-1} - a (mod 256).

    Parameters: x0, x1 ~ U{0..255}; a ~ U{1..9}.
    Example (x0=10, x1=20, a=4): [10, 20, 16, 36, 32, 68, 64, 132].
    Held-out region (translation): x0 in 240..255 (`BAND`), probability 16/256 = 6.25 %, shared with
    `alternating` (x0 = 0 or x1 = 0 with the other below 10 makes a period-2 pattern, [3, 0, 3, ...]).
    """

    name, phase, group, held_out_kind = "rule_switch", 3, "conditional", "translation"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        x = randint(0, VOCAB - 1, 2 * n, gen)
        return {"x0": x[:n], "x1": x[n:], "a": randint(1, 9, n, gen)}

    def param_support(self, length: int) -> Dist:
        values = torch.arange(VOCAB)
        return product(uniform(x0=values), uniform(x1=values), uniform(a=torch.arange(1, 10)))

    def terms(self, params: Params, length: int) -> torch.Tensor:
        out = [params["x0"], params["x1"]]
        for _ in range(2, length):
            prev2, prev = out[-2], out[-1]
            out.append(torch.where(prev < prev2, prev + prev2, prev - params["a"]) % VOCAB)
        return torch.stack(out, dim=1)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        prev2, prev = seqs[:, :-2], seqs[:, 1:-1]
        nxt = torch.where(prev < prev2, prev + prev2, prev - params["a"].unsqueeze(1)) % VOCAB
        start = (seqs[:, 0] == params["x0"]) & (seqs[:, 1] == params["x1"])
        return start & (seqs[:, 2:] == nxt).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0])
