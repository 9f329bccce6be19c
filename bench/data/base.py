"""The `Family` interface and the sampling helpers every family shares.

A family is a rule that maps a few parameters to a sequence of integers. Every rule is taken
modulo 256, so each term is a class in 0..255 by construction. Generation is vectorised over the
batch; `check` re-derives every term from the rule written as a recurrence on the *observed*
previous terms, so tests can cross-check the two code paths against each other.

Each family also reserves a held-out region of its parameter space (`held_out`, decided from the
first terms) for the `ood` split, and, where its parameters are discrete, enumerates its exact
distribution (`support`, built from `param_support` with the helpers `uniform`, `product` and
`expand_uniform`), which `bench.data.bayes` turns into Bayes-optimal predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

VOCAB = 256
MIN_LENGTH = 3  # shorter sequences cannot show an order-2 rule

Params = dict[str, torch.Tensor]
Region = Literal["train", "held_out", "any"]
REGIONS: tuple[str, ...] = ("train", "held_out", "any")  # the distributions a Bayes predictor can be told
# What `generate` can draw: a region, or the training region split by `reserved` into what every
# training and validation stream draws ("stream") and the never-drawn slice of it ("reserved": the
# `iid_unseen` split, the same distribution as training for any model that cannot compute the hash).
DrawRegion = Literal["train", "held_out", "any", "stream", "reserved"]
DRAW_REGIONS: tuple[str, ...] = (*REGIONS, "stream", "reserved")
RESERVED_EIGHTHS = 1  # the reserved slice: this many eighths of each family's training-region sequences
HELD_OUT_KINDS = ("translation", "composition", "extrapolation")
# First terms reserved for the `ood` split by the translation-kind families whose sequences can coincide
# (constant, alternating, even_odd, rule_switch; memory.py's lag_k use the same band): 16 of 256 values.
BAND = (240, 255)


@dataclass
class Support:
    """A family's exact distribution over its sequences of one length: row i of `seqs` (m, L) has
    probability `prob[i]` (float64, summing to 1) and was made by `params` row i. Rows may repeat
    (two parameter settings can make the same sequence); consumers merge them by summing."""

    seqs: torch.Tensor
    prob: torch.Tensor
    params: Params

    def __len__(self) -> int:
        return self.seqs.shape[0]

    def restrict(self, keep: torch.Tensor) -> Support:
        """The distribution conditioned on the rows in `keep` (a BoolTensor (m,)), renormalised."""
        if not bool(keep.any()):
            raise ValueError("cannot condition a support on an empty set of sequences")
        prob = self.prob[keep]
        return Support(self.seqs[keep], prob / prob.sum(), {k: v[keep] for k, v in self.params.items()})


def sequence_ids(seqs: torch.Tensor) -> torch.Tensor:
    """LongTensor (n,): equal rows of `seqs` (n, L, terms in 0..255) get equal ids, distinct rows distinct
    ids (0, 1, ... in the rows' lexicographic order, as torch.unique's inverse). Exact, and faster than
    torch.unique(dim=0): each chunk packs into one int64, and rows sort chunk by chunk (stable).
    Example: [[1, 2], [3, 4], [1, 2]] -> [0, 1, 0]."""
    n, length = seqs.shape
    chunks = [seqs[:, i:i + 7] for i in range(0, length, 7)]
    keys = torch.stack([(c << (8 * torch.arange(c.shape[1] - 1, -1, -1))).sum(dim=1) for c in chunks], dim=1)
    order = torch.arange(n)
    for j in reversed(range(keys.shape[1])):
        order = order[torch.argsort(keys[order, j], stable=True)]
    ordered = keys[order]
    new = torch.ones(n, dtype=torch.long)
    new[1:] = (ordered[1:] != ordered[:-1]).any(dim=1).long()
    ids = torch.empty(n, dtype=torch.long)
    ids[order] = torch.cumsum(new, 0) - 1
    return ids


def reserved(seqs: torch.Tensor) -> torch.Tensor:
    """BoolTensor (n,): is each whole sequence in the reserved slice (about RESERVED_EIGHTHS / 8 of all
    sequences, by a hash of every term), which no training or validation stream draws?

    The hash is a polynomial in the terms (kept below 2^40) mixed like splitmix64; the multiply of
    the mix wraps around in int64, which torch does deterministically on every platform. It is
    unrelated to any family's rule, so the slice is a pseudo-random subset of each family's
    sequences and every family with more than a handful of sequences has some in it; for a small
    family the share is noisy. It is a property of the full sequence: its prefixes also start other
    sequences, which training does draw.
    Example: of phase 2's 56 training-region `geometric` sequences at length 8, 12 are reserved (21 %).
    """
    mask = (1 << 40) - 1
    h = torch.zeros(seqs.shape[0], dtype=torch.long)
    for t in range(seqs.shape[1]):
        h = (h * 1_000_003 + seqs[:, t] + 1) & mask
    h = h ^ (h >> 17)
    h = (h * 0x2545F491) & mask
    h = h ^ (h >> 23)
    return (h & 7) < RESERVED_EIGHTHS


def check_length(length: int) -> None:
    if length < MIN_LENGTH:
        raise ValueError(f"sequence length must be at least {MIN_LENGTH}, got {length}")


def randint(low: int, high: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) integers uniform on low..high, both ends included."""
    return torch.randint(low, high + 1, (n,), generator=gen)


def randint_between(low: torch.Tensor, high: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-row uniform integers on low[i]..high[i] (inclusive); the bounds may differ per row."""
    u = torch.rand(low.shape, generator=gen, dtype=torch.float64)
    width = (high - low + 1).double()
    return low + torch.minimum((u * width).long(), high - low)


def nonzero_int(bound: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) integers uniform on {-bound..-1, 1..bound}: a zero step would collapse a rule into `constant`."""
    k = randint(1, 2 * bound, n, gen)
    return torch.where(k > bound, k - 2 * bound - 1, k)


def choice(values: Sequence[int], n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) entries drawn uniformly from `values`."""
    return torch.tensor(values)[torch.randint(len(values), (n,), generator=gen)]


def place_start(offsets: torch.Tensor, gen: torch.Generator, top: int = VOCAB - 1) -> torch.Tensor:
    """Start x0 for terms x0 + offsets[:, t], uniform over the starts that keep every term in 0..top.

    The window is [-min(offset), top - max(offset)]; rows whose span exceeds `top` have no such start,
    so x0 is uniform on 0..top and their terms wrap (the family's rule includes the modulus).
    """
    return randint_between(*start_window(offsets, top), gen)


def start_window(offsets: torch.Tensor, top: int = VOCAB - 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`place_start`'s per-row bounds (low, high), both included."""
    low, high = -offsets.min(dim=1).values, top - offsets.max(dim=1).values
    fits = low <= high
    return torch.where(fits, low, 0), torch.where(fits, high, top)


# --- exact parameter distributions, for `Family.support` -------------------------------------------

Dist = tuple[Params, torch.Tensor]  # parameter rows and their probabilities (float64)


def uniform(**values: Sequence[int] | torch.Tensor) -> Dist:
    """Parameter rows uniform over one table: uniform(d=[-1, 1]) is d = -1 or 1, 1/2 each. Several
    keyword tables of equal length are read as joint rows (uniform(c1=[1, 2], c2=[2, 1]))."""
    params = {k: torch.as_tensor(v) for k, v in values.items()}
    m = len(next(iter(params.values())))
    return params, torch.full((m,), 1 / m, dtype=torch.float64)


def nonzero(bound: int) -> torch.Tensor:
    """The values `nonzero_int(bound, ...)` draws, uniformly: -bound..-1, 1..bound."""
    return torch.cat([torch.arange(-bound, 0), torch.arange(1, bound + 1)])


def product(*dists: Dist) -> Dist:
    """Independent parameter tables joined: every combination of rows, probabilities multiplied."""
    index = torch.cartesian_prod(*[torch.arange(len(p)) for _, p in dists]).reshape(-1, len(dists))
    params, prob = {}, torch.ones(index.shape[0], dtype=torch.float64)
    for j, (table, p) in enumerate(dists):
        params |= {k: v[index[:, j]] for k, v in table.items()}
        prob = prob * p[index[:, j]]
    return params, prob


def expand_uniform(dist: Dist, key: str, low: torch.Tensor, high: torch.Tensor) -> Dist:
    """Row i of `dist` split into one row per value of `key` on low[i]..high[i] (`randint_between`),
    each with probability prob[i] / (high[i] - low[i] + 1)."""
    params, prob = dist
    width = high - low + 1
    rows = torch.repeat_interleave(torch.arange(len(prob)), width)
    first = torch.cumsum(width, 0) - width
    value = low[rows] + torch.arange(len(rows)) - first[rows]
    return {k: v[rows] for k, v in params.items()} | {key: value}, prob[rows] / width[rows]


def in_band(x: torch.Tensor, band: tuple[int, int] = BAND) -> torch.Tensor:
    """BoolTensor: band[0] <= x <= band[1]."""
    return (x >= band[0]) & (x <= band[1])


def signed(x: torch.Tensor) -> torch.Tensor:
    """A difference of terms read as a small signed step: ((x + 128) mod 256) - 128, so 253 -> -3."""
    return (x + VOCAB // 2) % VOCAB - VOCAB // 2


def positions(length: int) -> torch.Tensor:
    """(1, length) time index t, broadcastable against (n, 1) parameters."""
    return torch.arange(length).unsqueeze(0)


class Family(ABC):
    """A parameterised integer-sequence rule: sample parameters, build terms, verify terms.

    Subclasses set `name` (the public label), `phase` (1..3: the design's curriculum phases; 4: the
    memory probes; 5: the mechanism tasks of `bench.data.mechanisms`), `group` (the design's
    sub-heading) and `held_out_kind`, implement the three abstract methods and `held_out`, and, where
    the parameters are discrete, `param_support`; parameters are dicts of tensors with leading
    dimension n, one row per sequence. A family that needs longer sequences than MIN_LENGTH sets a
    larger `min_length`, which `validate_length` enforces. A family whose rule leaves some next terms
    undetermined overrides `scored` (the predictions that count).
    """

    name: ClassVar[str]
    phase: ClassVar[int]
    group: ClassVar[str]
    held_out_kind: ClassVar[str]  # one of HELD_OUT_KINDS: how the held-out region differs from training
    held_out_terms: ClassVar[int] = MIN_LENGTH  # `held_out` reads no further than this many first terms
    min_length: int = MIN_LENGTH

    @abstractmethod
    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        """Draw parameters for n sequences of `length` terms (ranges may depend on the length)."""

    @abstractmethod
    def terms(self, params: Params, length: int) -> torch.Tensor:
        """LongTensor (n, length) of terms in 0..255, vectorised over the batch."""

    @abstractmethod
    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        """BoolTensor (n,): every term obeys the recurrence given the parameters and earlier terms."""

    def validate_length(self, length: int) -> None:
        """Raise a one-line ValueError if this family cannot make sequences of `length` terms."""
        check_length(length)
        if length < self.min_length:
            raise ValueError(f"family '{self.name}' needs sequence length >= {self.min_length}, got {length}")

    @abstractmethod
    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        """BoolTensor (n,): does each sequence of this family lie in its held-out region?

        Decided from the terms alone (no parameters), so any stream can be audited: training and
        validation streams never draw a row for which this is True; the `ood` test split draws only
        such rows. Every family implements it (a family without one cannot be instantiated) and
        documents its region and `held_out_kind`. The answer depends on the first `held_out_terms`
        terms only, so `generate` rejects rows before building the rest of their terms.
        """

    def scored(self, seqs: torch.Tensor) -> torch.Tensor:
        """BoolTensor (n, L-1): which predictions of rows `seqs` (n, L) count, position p being the
        prediction of x[p+1] from x[0..p] (as in `bench.metrics`). Training loss, metrics and ceilings
        read only these; the others (terms no rule determines, e.g. lag_k's first k values or a recall
        task's keys and noise) contribute nothing. Decided from the terms alone and vectorised; every
        position by default. Example: a family that overrides nothing scores all 7 predictions of a
        length-8 row; `lag_4` scores positions 3..6 (`bench.data.memory.Lag`)."""
        n, length = seqs.shape
        return torch.ones(n, max(length - 1, 0), dtype=torch.bool)

    def support(self, length: int) -> Support | None:
        """The exact distribution over this family's sequences of `length` terms (region "any"), or
        None where the parameter space is continuous or too large to enumerate (the ceiling is then
        estimated by Monte Carlo and labelled so). Built from `param_support`."""
        self.validate_length(length)
        dist = self.param_support(length)
        if dist is None:
            return None
        params, prob = dist
        return Support(self.terms(params, length), prob, params)

    def param_support(self, length: int) -> Dist | None:
        """Every parameter row `sample_params(n, length, ...)` can draw, with its exact probability
        (the same keys, so `check` accepts them); None for a continuous distribution."""
        return None

    def check(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        """BoolTensor (n,): the row is in 0..255 and obeys this family's rule."""
        in_range = ((seqs >= 0) & (seqs < VOCAB)).all(dim=1)
        return in_range & self.follows_rule(seqs, params)

    def generate(self, n: int, length: int, gen: torch.Generator, region: DrawRegion = "train"
                 ) -> tuple[torch.Tensor, Params]:
        """n sequences (LongTensor (n, length)) and the parameters that produced them.

        `region`: "train" (the default: the family's distribution conditioned on not `held_out`),
        "held_out" (conditioned on it: the `ood` split), "any" (the unconditioned parameter
        distribution), "stream" ("train" without the `reserved` slice: what every training and
        validation stream draws) or "reserved" ("train" within the slice: the `iid_unseen` split).
        Conditioning is by
        rejection: rounds of draws from `gen` until n rows are kept, so it is deterministic. After
        the first round (n draws) each round draws 1.1 times what the acceptance rate so far says is
        missing, so even the rarest region (about 4 % of the mass) needs two or three rounds.
        """
        self.validate_length(length)
        if n < 0:
            raise ValueError(f"number of sequences must be non-negative, got {n}")
        if region not in DRAW_REGIONS:
            raise ValueError(f"region must be one of {', '.join(DRAW_REGIONS)}, got {region!r}")
        if region == "any":
            params = self.sample_params(n, length, gen)
            return self.terms(params, length), params
        parts: list[tuple[torch.Tensor, Params]] = []
        kept, drawn, draw = 0, 0, max(n, 16)
        for _ in range(100):
            params = self.sample_params(draw, length, gen)
            first = self.terms(params, min(length, self.held_out_terms))
            keep = self.held_out(first) == (region == "held_out")
            params = {k: v[keep] for k, v in params.items()}
            seqs = self.terms(params, length)
            if region in ("stream", "reserved"):
                keep = reserved(seqs) == (region == "reserved")
                seqs, params = seqs[keep], {k: v[keep] for k, v in params.items()}
            parts.append((seqs, params))
            kept, drawn = kept + seqs.shape[0], drawn + draw
            if kept >= n:
                seqs = torch.cat([s for s, _ in parts])[:n]
                return seqs, {k: torch.cat([p[k] for _, p in parts])[:n] for k in params}
            draw = 16 + int(1.1 * (n - kept) * drawn / max(kept, 1))  # the missing rows at the rate so far
        raise RuntimeError(f"family '{self.name}': region {region!r} too rare to sample")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, phase={self.phase}, group={self.group!r})"


class AdditiveFamily(Family):
    """Terms x_t = (x0 + offset_t) mod 256 with integer offsets that depend on the other parameters.

    `sample_params` places x0 with `place_start`, so a sequence whose span fits in 0..255 (all of
    them at the default length 8) never wraps and reads like the design's examples.
    """

    @abstractmethod
    def sample_shape(self, n: int, length: int, gen: torch.Generator) -> Params:
        """The parameters other than the start x0."""

    @abstractmethod
    def offsets(self, params: Params, length: int) -> torch.Tensor:
        """LongTensor (n, length) of x_t - x0 before the modulus; offsets[:, 0] == 0."""

    @abstractmethod
    def shape_support(self, length: int) -> Dist:
        """`sample_shape`'s exact distribution (see `param_support`)."""

    def param_support(self, length: int) -> Dist:
        """`shape_support` with every start in `place_start`'s window of each row, uniformly."""
        shape = self.shape_support(length)
        return expand_uniform(shape, "x0", *start_window(self.offsets(shape[0], length)))

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        params = self.sample_shape(n, length, gen)
        params["x0"] = place_start(self.offsets(params, length), gen)
        return params

    def terms(self, params: Params, length: int) -> torch.Tensor:
        return (params["x0"].unsqueeze(1) + self.offsets(params, length)) % VOCAB
