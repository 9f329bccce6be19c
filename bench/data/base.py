"""The `Family` interface and the sampling helpers every family shares.

A family is a rule that maps a few parameters to a sequence of integers. Every rule is taken
modulo 256, so each term is a class in 0..255 by construction. Generation is vectorised over the
batch; `check` re-derives every term from the rule written as a recurrence on the *observed*
previous terms, so tests can cross-check the two code paths against each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

VOCAB = 256
MIN_LENGTH = 3  # shorter sequences cannot show an order-2 rule

Params = dict[str, torch.Tensor]


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
    low, high = -offsets.min(dim=1).values, top - offsets.max(dim=1).values
    fits = low <= high
    return randint_between(torch.where(fits, low, 0), torch.where(fits, high, top), gen)


def positions(length: int) -> torch.Tensor:
    """(1, length) time index t, broadcastable against (n, 1) parameters."""
    return torch.arange(length).unsqueeze(0)


class Family(ABC):
    """A parameterised integer-sequence rule: sample parameters, build terms, verify terms.

    Subclasses set `name` (the public label), `phase` (1..3: the design's curriculum phases; 4: the
    memory probes) and `group` (the design's sub-heading) and implement the three abstract methods;
    parameters are dicts of tensors with leading dimension n, one row per sequence. A family that
    needs longer sequences than MIN_LENGTH sets a larger `min_length`, which `validate_length` enforces.
    """

    name: ClassVar[str]
    phase: ClassVar[int]
    group: ClassVar[str]
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

    def check(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        """BoolTensor (n,): the row is in 0..255 and obeys this family's rule."""
        in_range = ((seqs >= 0) & (seqs < VOCAB)).all(dim=1)
        return in_range & self.follows_rule(seqs, params)

    def generate(self, n: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, Params]:
        """n sequences (LongTensor (n, length)) and the parameters that produced them."""
        self.validate_length(length)
        if n < 0:
            raise ValueError(f"number of sequences must be non-negative, got {n}")
        params = self.sample_params(n, length, gen)
        return self.terms(params, length), params

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

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        params = self.sample_shape(n, length, gen)
        params["x0"] = place_start(self.offsets(params, length), gen)
        return params

    def terms(self, params: Params, length: int) -> torch.Tensor:
        return (params["x0"].unsqueeze(1) + self.offsets(params, length)) % VOCAB
