"""Phase 2: nested recurrences, where the step or factor itself follows a recurrence."""

from __future__ import annotations

import torch

from bench.data.base import (
    VOCAB,
    AdditiveFamily,
    Dist,
    Family,
    Params,
    choice,
    expand_uniform,
    in_band,
    nonzero,
    nonzero_int,
    positions,
    product,
    randint,
    randint_between,
    signed,
    uniform,
)

# 3 generates a cyclic subgroup of order 64 in the units mod 256, so 3^k mod 256 repeats every 64.
_POW3 = torch.tensor([pow(3, k, VOCAB) for k in range(64)])


def pow23(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2^a * 3^b mod 256 for non-negative integer tensors, without overflowing int64."""
    pow2 = torch.where(a < 8, 1 << a.clamp(max=7), 0)  # 2^8 = 256 = 0 (mod 256)
    return pow2 * _POW3[b % 64] % VOCAB


def _first_terms_match(seqs: torch.Tensor, params: Params) -> torch.Tensor:
    return seqs[:, 0] == params["x0"]


def _steps_match(seqs: torch.Tensor, params: Params, step: torch.Tensor) -> torch.Tensor:
    """x_0 = x0 and x_t = x_{t-1} + step[:, t-1] (mod 256) for every t >= 1."""
    return _first_terms_match(seqs, params) & (seqs[:, 1:] == (seqs[:, :-1] + step) % VOCAB).all(dim=1)


class AlternatingSteps(AdditiveFamily):
    """Steps alternate s1, s2, s1, ...: x_t = x_{t-1} + (s1 if t is odd else s2) (mod 256).

    Parameters: |s1|, |s2| distinct in 1..6 with independent random signs, so s1 != s2 and
    s1 + s2 != 0 (s1 = -s2 would be `alternating`, a zero step would be `two_step`); x0 placed.
    Example (x0=1, s1=2, s2=1): [1, 3, 4, 6, 7, 9, 10, 12].
    Held-out region (composition): s1 > 0 > s2 with |s1| > |s2| (a net rise whose first step is up),
    probability 1/4 * 1/2 = 12.5 %. Training sees each sign and each magnitude of s1 and s2, and
    the pairing s1 > 0 > s2 only with |s1| < |s2|.
    """

    name, phase, group, held_out_kind = "alternating_steps", 2, "steps", "composition"

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        m1, m2 = randint(1, 6, n, gen), randint(1, 5, n, gen)
        m2 = m2 + (m2 >= m1).long()  # uniform over 1..6 without m1
        signs = torch.randint(2, (2, n), generator=gen) * 2 - 1
        return {"s1": signs[0] * m1, "s2": signs[1] * m2}

    def shape_support(self, length: int) -> Dist:
        s1, s2 = torch.cartesian_prod(nonzero(6), nonzero(6)).T
        keep = s1.abs() != s2.abs()  # the 30 magnitude pairs times the 4 sign pairs, 1/120 each
        return uniform(s1=s1[keep], s2=s2[keep])

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        t = positions(length)
        return params["s1"].unsqueeze(1) * ((t + 1) // 2) + params["s2"].unsqueeze(1) * (t // 2)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        odd = positions(seqs.shape[1])[:, 1:] % 2 == 1
        step = torch.where(odd, params["s1"].unsqueeze(1), params["s2"].unsqueeze(1))
        return _steps_match(seqs, params, step)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        s1, s2 = signed(seqs[:, 1] - seqs[:, 0]), signed(seqs[:, 2] - seqs[:, 1])
        return (s1 > 0) & (s2 < 0) & (s1 > -s2)


class GrowingSteps(AdditiveFamily):
    """Steps grow linearly: x_t = x_{t-1} + s0 + g(t-1) (mod 256); constant second difference g > 0.

    Parameters: s0 ~ U{0..5}, g ~ U{1..3}; x0 placed.
    Example (x0=1, s0=1, g=1): [1, 2, 4, 7, 11, 16, 22, 29].
    Held-out region (extrapolation): s0 = 5, probability 1/6 = 16.7 %; training sees s0 in 0..4.
    """

    name, phase, group, held_out_kind = "growing_steps", 2, "steps", "extrapolation"
    s0_range, sign = (0, 5), 1
    held_out_s0 = 5  # the first step x1 - x0 that only the `ood` split draws

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"s0": randint(*self.s0_range, n, gen), "g": randint(1, 3, n, gen)}

    def shape_support(self, length: int) -> Dist:
        low, high = self.s0_range
        return product(uniform(s0=torch.arange(low, high + 1)), uniform(g=torch.arange(1, 4)))

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        t = positions(length)
        s0, g = params["s0"].unsqueeze(1), self.sign * params["g"].unsqueeze(1)
        return s0 * t + g * (t * (t - 1) // 2)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        t = positions(seqs.shape[1])[:, 1:]
        step = params["s0"].unsqueeze(1) + self.sign * params["g"].unsqueeze(1) * (t - 1)
        return _steps_match(seqs, params, step)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return signed(seqs[:, 1] - seqs[:, 0]) == self.held_out_s0


class ShrinkingSteps(GrowingSteps):
    """Steps shrink linearly: x_t = x_{t-1} + s0 - g(t-1) (mod 256); constant second difference -g.

    The steps keep decreasing past zero, so long sequences rise, turn and fall.
    Parameters: s0 ~ U{3..10}, g ~ U{1..3}; x0 placed.
    Example (x0=1, s0=4, g=1): [1, 5, 8, 10, 11, 11, 10, 8].
    Held-out region (extrapolation): s0 = 10, probability 1/8 = 12.5 %; training sees s0 in 3..9.
    """

    name, phase, group = "shrinking_steps", 2, "steps"
    s0_range, sign, held_out_s0 = (3, 10), -1, 10


class Geometric(Family):
    """x_t = r * x_{t-1} (mod 256).

    Parameters: r ~ U{2, 3}; x0 ~ U{1..32}, small so the first terms show the growth before they wrap.
    Example (x0=2, r=2): [2, 4, 8, 16, 32, 64, 128, 0].
    Held-out region (composition): r = 3 with x0 in 1..8, probability 1/2 * 8/32 = 12.5 %. Training
    sees r = 3 from x0 in 9..32 and x0 in 1..8 with r = 2.
    """

    name, phase, group, held_out_kind = "geometric", 2, "geometric", "composition"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"r": choice((2, 3), n, gen), "x0": randint(1, 32, n, gen)}

    def param_support(self, length: int) -> Dist:
        return product(uniform(r=[2, 3]), uniform(x0=torch.arange(1, 33)))

    def terms(self, params: Params, length: int) -> torch.Tensor:
        t, two = positions(length), (params["r"] == 2).unsqueeze(1)
        return params["x0"].unsqueeze(1) * pow23(t * two, t * ~two) % VOCAB

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        nxt = params["r"].unsqueeze(1) * seqs[:, :-1] % VOCAB
        return _first_terms_match(seqs, params) & (seqs[:, 1:] == nxt).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return (seqs[:, 1] == 3 * seqs[:, 0]) & (seqs[:, 0] <= 8)


class AlternatingFactors(Family):
    """Factors alternate f1, f2, f1, ...: x_t = x_{t-1} * (f1 if t is odd else f2) (mod 256).

    Parameters: (f1, f2) ~ U{(2, 3), (3, 2)}; x0 ~ U{1..32}.
    Example (x0=1, f1=2, f2=3): [1, 2, 6, 12, 36, 72, 216, 176].
    Held-out region (composition): f1 = 3 with x0 in 25..32, probability 1/2 * 8/32 = 12.5 %.
    Training sees f1 = 3 from x0 in 1..24 and x0 in 25..32 with f1 = 2.
    """

    name, phase, group, held_out_kind = "alternating_factors", 2, "geometric", "composition"

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        f1 = choice((2, 3), n, gen)
        return {"f1": f1, "f2": 5 - f1, "x0": randint(1, 32, n, gen)}

    def param_support(self, length: int) -> Dist:
        params, prob = product(uniform(f1=[2, 3]), uniform(x0=torch.arange(1, 33)))
        return params | {"f2": 5 - params["f1"]}, prob

    def terms(self, params: Params, length: int) -> torch.Tensor:
        t = positions(length)
        n1, n2 = (t + 1) // 2, t // 2  # how many times f1 and f2 have been applied by step t
        f1_is_two = (params["f1"] == 2).unsqueeze(1)
        power = pow23(torch.where(f1_is_two, n1, n2), torch.where(f1_is_two, n2, n1))
        return params["x0"].unsqueeze(1) * power % VOCAB

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        odd = positions(seqs.shape[1])[:, 1:] % 2 == 1
        factor = torch.where(odd, params["f1"].unsqueeze(1), params["f2"].unsqueeze(1))
        return _first_terms_match(seqs, params) & (seqs[:, 1:] == factor * seqs[:, :-1] % VOCAB).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return (seqs[:, 1] == 3 * seqs[:, 0]) & (seqs[:, 0] >= 25)


class RationalFactors(Family):
    """Rational factors alternate: x_t = floor(x_{t-1} * p_t / q_t) (mod 256), (p_t, q_t) cycling two pairs.

    Parameters: the factor pair ~ U{(1/2, 3/2), (2/3, 3/2), (1/2, 2)}, applied in either order (U);
    x0 ~ U{64..min(255, floor(255 / first factor))}, so the largest term is at most 255.
    The floor makes the rule genuinely sequential, so generation loops over time.
    Example (x0=8, factors 1/2, 3/2): [8, 4, 6, 3, 4, 2, 3, 1].
    Held-out region (translation): x0 in 240..255 (`BAND`, reachable when the first factor is below
    1), probability 1/2 * 16/192 = 4.2 %. The band is `alternating`'s: the pairs (2/3, 3/2) and
    (1/2, 2) make period-2 patterns from some starts ([240, 120, 240, ...], [64, 128, 64, ...]), so
    such a pattern lies on the same side of the split in both families.
    """

    name, phase, group, held_out_kind = "rational_factors", 2, "geometric", "translation"
    PAIRS = torch.tensor([[[1, 2], [3, 2]], [[2, 3], [3, 2]], [[1, 2], [2, 1]]])  # (pair, step, (p, q))

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        pairs = self.PAIRS[torch.randint(len(self.PAIRS), (n,), generator=gen)]
        swap = torch.randint(2, (n,), generator=gen).bool()
        pairs = torch.where(swap[:, None, None], pairs.flip(1), pairs)
        p, q = pairs[..., 0], pairs[..., 1]
        high = torch.clamp(255 * q[:, 0] // p[:, 0], max=VOCAB - 1)
        return {"p": p, "q": q, "x0": randint_between(torch.full((n,), 64), high, gen)}

    def param_support(self, length: int) -> Dist:
        pairs = torch.cat([self.PAIRS, self.PAIRS.flip(1)])  # the 3 pairs in both orders, 1/6 each
        dist = uniform(p=pairs[..., 0], q=pairs[..., 1])
        high = torch.clamp(255 * dist[0]["q"][:, 0] // dist[0]["p"][:, 0], max=VOCAB - 1)
        return expand_uniform(dist, "x0", torch.full_like(high, 64), high)

    def terms(self, params: Params, length: int) -> torch.Tensor:
        x, out = params["x0"], [params["x0"]]
        for t in range(1, length):
            k = (t - 1) % 2
            x = x * params["p"][:, k] // params["q"][:, k] % VOCAB
            out.append(x)
        return torch.stack(out, dim=1)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        k = (positions(seqs.shape[1])[0, 1:] - 1) % 2
        p, q = params["p"][:, k], params["q"][:, k]
        return _first_terms_match(seqs, params) & (seqs[:, 1:] == seqs[:, :-1] * p // q % VOCAB).all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0])


class Repeated(AdditiveFamily):
    """Each value is repeated `period` times, then advances by d: x_t = x0 + d * floor(t / period)."""

    group, period, held_out_kind = "periodic", 2, "translation"
    held_out_band = (112, 143)  # the middle of the range: every step d can start there at every length

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        return {"d": nonzero_int(10, n, gen)}

    def shape_support(self, length: int) -> Dist:
        return uniform(d=nonzero(10))

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        return params["d"].unsqueeze(1) * (positions(length) // self.period)

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        new_value = positions(seqs.shape[1])[:, 1:] % self.period == 0
        return _steps_match(seqs, params, params["d"].unsqueeze(1) * new_value)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, 0], self.held_out_band)


class TwoStep(Repeated):
    """Period-2 staircase: x_t = x_{t-1} + (d if t is even else 0) (mod 256).

    Parameters: d ~ U{-10..10} without 0; x0 placed.
    Example (x0=1, d=1): [1, 1, 2, 2, 3, 3, 4, 4].
    Held-out region (translation): x0 in 112..143 (`held_out_band`, mid-range so every d can start
    there), probability 13.4 % at length 8 (14.8 % at 16, 14.2 % at 32: the start windows narrow).
    """

    name, phase, period = "two_step", 2, 2


class ThreeStep(Repeated):
    """Period-3 staircase: x_t = x_{t-1} + (d if t % 3 == 0 else 0) (mod 256).

    Parameters: d ~ U{-10..10} without 0; x0 placed.
    Example (x0=1, d=1): [1, 1, 1, 2, 2, 2, 3, 3].
    Held-out region (translation): x0 in 112..143 (`held_out_band`), probability 13.1 % at length 8
    (14.1 % at 16, 16.3 % at 32).
    """

    name, phase, period = "three_step", 2, 3


class MixedPeriod(AdditiveFamily):
    """Values repeat c1 times, then c2 times, then c1 times, ...; each new value adds d (mod 256).

    Parameters: (c1, c2) ~ U{(1,2), (2,1), (1,3), (3,1), (2,3), (3,2)}; d ~ U{-10..10} without 0;
    x0 placed.
    Example (x0=1, c1=1, c2=2, d=1): [1, 2, 2, 3, 4, 4, 5, 6].
    Held-out region (composition): c1 = 2 with d < 0, probability 2/6 * 1/2 = 16.7 %. Training sees
    c1 = 2 with d > 0 and d < 0 with c1 in {1, 3}. Read from the terms: x0 = x1 and x2 < x1.
    """

    name, phase, group, held_out_kind = "mixed_period", 2, "periodic", "composition"
    COUNTS = torch.tensor([[1, 2], [2, 1], [1, 3], [3, 1], [2, 3], [3, 2]])

    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        counts = self.COUNTS[torch.randint(len(self.COUNTS), (n,), generator=gen)]
        return {"c1": counts[:, 0], "c2": counts[:, 1], "d": nonzero_int(10, n, gen)}

    def shape_support(self, length: int) -> Dist:
        return product(uniform(c1=self.COUNTS[:, 0], c2=self.COUNTS[:, 1]), uniform(d=nonzero(10)))

    def offsets(self, params: Params, length: int) -> torch.Tensor:
        t, c1 = positions(length), params["c1"].unsqueeze(1)
        period = c1 + params["c2"].unsqueeze(1)
        values_before = 2 * (t // period) + (t % period >= c1).long()
        return params["d"].unsqueeze(1) * values_before

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        ok = _first_terms_match(seqs, params)
        run = torch.ones_like(ok, dtype=torch.long)  # terms so far in the current block
        second = torch.zeros_like(ok)  # is the current block a c2 block?
        for t in range(1, seqs.shape[1]):
            new = run >= torch.where(second, params["c2"], params["c1"])
            ok &= seqs[:, t] == (seqs[:, t - 1] + params["d"] * new) % VOCAB
            second, run = second ^ new, torch.where(new, 1, run + 1)
        return ok

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return (seqs[:, 0] == seqs[:, 1]) & (signed(seqs[:, 2] - seqs[:, 1]) < 0)
