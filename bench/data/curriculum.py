"""Curriculum mixtures, the deterministic training stream, and the validation and test sets.

Every random draw comes from a named stream (`bench.seeding.generator`): training chunks from
("train", seed, chunk), validation sets from ("val", seed, index) and the fixed test set from
("test", eval_seed, family, length). Training can therefore never reproduce the test stream, and
every architecture trained with the same seed reads exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from bench.data.base import Family, check_length
from bench.data.registry import FAMILY_INDEX, FAMILY_NAMES, PHASES, get_family
from bench.data.registry import families as registry_families
from bench.seeding import generator

EVAL_SEED = 20240229


@dataclass
class SequenceSet:
    """Sequences with their labels: global family index (into FAMILY_NAMES) and phase, per row."""

    seqs: torch.Tensor  # (n, L) int64 in 0..255
    family: torch.Tensor  # (n,) int64
    phase: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return self.seqs.shape[0]

    def subset(self, index: torch.Tensor | slice | Sequence[int]) -> SequenceSet:
        """The rows selected by a boolean mask, an index tensor/list or a slice."""
        return SequenceSet(self.seqs[index], self.family[index], self.phase[index])

    def family_names(self) -> list[str]:
        return [FAMILY_NAMES[i] for i in self.family.tolist()]

    @staticmethod
    def cat(sets: Sequence[SequenceSet]) -> SequenceSet:
        if not sets:
            raise ValueError("cannot concatenate an empty list of sequence sets")
        return SequenceSet(*(torch.cat([getattr(s, k) for s in sets]) for k in ("seqs", "family", "phase")))


@dataclass(frozen=True)
class Curriculum:
    """Which phases are trained, in which order, and how the mixture moves from one to the next.

    With P = phase_epochs and T = transition_epochs, phase i (0-based) is trained pure on
    [i(P+T), i(P+T) + P) and blended linearly into phase i+1 over the next T epochs (T = 0 is a
    strict jump); the last phase is pure from `final_epoch()` = (n-1)(P+T) on. Within a phase,
    families are equally likely.
    """

    phases: tuple[int, ...] = (1,)
    families: tuple[str, ...] | None = None  # None = every family of each phase
    phase_epochs: int = 10
    transition_epochs: int = 5

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        if self.families is not None:
            object.__setattr__(self, "families", tuple(self.families))
        if not self.phases:
            raise ValueError("a curriculum needs at least one phase")
        for p in self.phases:
            if p not in PHASES:
                raise ValueError(f"unknown phase {p} (known: {', '.join(map(str, PHASES))})")
        if len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases must not repeat, got {self.phases}")
        if self.phase_epochs < 0 or self.transition_epochs < 0:
            raise ValueError(
                f"phase_epochs and transition_epochs must be non-negative, "
                f"got {self.phase_epochs} and {self.transition_epochs}"
            )
        for name in self.families or ():
            phase = get_family(name).phase
            if phase not in self.phases:
                raise ValueError(f"family '{name}' belongs to phase {phase}, not in {self.phases}")
        for p in self.phases:
            if not self.phase_families(p):
                raise ValueError(f"phase {p} has none of the families {self.families}")

    def phase_families(self, phase: int) -> list[Family]:
        """The families sampled in `phase`, in registry order."""
        if phase not in self.phases:
            raise ValueError(f"phase {phase} is not in this curriculum's phases {self.phases}")
        return [f for f in registry_families(phase) if self.families is None or f.name in self.families]

    def validate_length(self, length: int) -> None:
        """Raise a one-line ValueError if any family of this curriculum cannot make sequences of
        `length` terms (e.g. `lag_64` needs 66); every sampler of the curriculum calls it first."""
        check_length(length)
        for p in self.phases:
            for fam in self.phase_families(p):
                fam.validate_length(length)

    def final_epoch(self) -> float:
        """The epoch from which the last phase is trained pure (0 for a single phase)."""
        return float((len(self.phases) - 1) * (self.phase_epochs + self.transition_epochs))

    def phase_weights(self, epoch: float | torch.Tensor) -> torch.Tensor:
        """Mixture weights over `phases` at `epoch`: shape (len(phases),), or (n, len(phases)) for a
        tensor of n epochs. Each row sums to 1."""
        e = torch.as_tensor(epoch, dtype=torch.float64)
        if (e < 0).any():
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        n = len(self.phases)
        weights = torch.zeros(*e.shape, n, dtype=torch.float64)
        cycle = self.phase_epochs + self.transition_epochs
        if cycle == 0:  # no epochs in any phase: the last phase from the start
            weights[..., -1] = 1
            return weights
        current = torch.clamp(torch.div(e, cycle, rounding_mode="floor").long(), max=n - 1)
        into = e - current * cycle  # epochs since phase `current` started
        blend = ((into - self.phase_epochs) / max(self.transition_epochs, 1)).clamp(0, 1)
        blend = torch.where(current < n - 1, blend, 0.0)
        weights.scatter_(-1, current.unsqueeze(-1), (1 - blend).unsqueeze(-1))
        weights.scatter_add_(-1, (current + 1).clamp(max=n - 1).unsqueeze(-1), blend.unsqueeze(-1))
        return weights

    def sample(self, n: int, length: int, gen: torch.Generator, epoch: float | torch.Tensor) -> SequenceSet:
        """n labelled sequences from the mixture at `epoch` (a float, or a per-row tensor of shape (n,)).

        Each row draws its phase from `phase_weights`, then a family uniformly within that phase; each
        family then generates all of its rows in one vectorised call. Rows keep their sampled order.
        """
        self.validate_length(length)
        if isinstance(epoch, torch.Tensor) and epoch.dim() > 0 and epoch.shape != (n,):
            raise ValueError(f"epoch must be a float or have shape ({n},), got {tuple(epoch.shape)}")
        weights = self.phase_weights(epoch).expand(n, len(self.phases))
        u = torch.rand(2, n, generator=gen, dtype=torch.float64)
        phase_idx = (u[0].unsqueeze(1) >= weights.cumsum(dim=1)).sum(dim=1).clamp(max=len(self.phases) - 1)

        pools = [[FAMILY_INDEX[f.name] for f in self.phase_families(p)] for p in self.phases]
        table = torch.tensor([pool + [-1] * (max(map(len, pools)) - len(pool)) for pool in pools])
        counts = torch.tensor([len(pool) for pool in pools])[phase_idx]
        family = table[phase_idx, torch.minimum((u[1] * counts).long(), counts - 1)]

        seqs = torch.empty(n, length, dtype=torch.long)
        for index in family.unique().tolist():  # sorted: a fixed order of draws from `gen`
            rows = (family == index).nonzero().squeeze(1)
            seqs[rows] = get_family(FAMILY_NAMES[index]).generate(len(rows), length, gen)[0]
        return SequenceSet(seqs, family, torch.tensor(self.phases)[phase_idx])


class TrainStream:
    """Random-access, deterministic training stream: batch(step) depends only on the seed, the step,
    the curriculum and the shape arguments. Every architecture trained with the same seed sees the
    identical batches, and resuming from step k reproduces the batches from k on.

    Batches are generated `chunk_batches` at a time from generator("train", seed, chunk); each row's
    mixture is taken at its own step's epoch (step / steps_per_epoch), so transitions are smooth.
    """

    def __init__(
        self,
        curriculum: Curriculum,
        length: int,
        batch_size: int,
        seed: int,
        steps_per_epoch: int,
        chunk_batches: int = 64,
    ) -> None:
        curriculum.validate_length(length)
        for arg, value in (("batch_size", batch_size), ("steps_per_epoch", steps_per_epoch),
                           ("chunk_batches", chunk_batches)):
            if value < 1:
                raise ValueError(f"{arg} must be positive, got {value}")
        self.curriculum, self.length, self.batch_size, self.seed = curriculum, length, batch_size, seed
        self.steps_per_epoch, self.chunk_batches = steps_per_epoch, chunk_batches
        self._chunk_index: int | None = None
        self._chunk: SequenceSet | None = None

    def _make_chunk(self, chunk: int) -> SequenceSet:
        rows = torch.arange(self.chunk_batches * self.batch_size)
        steps = chunk * self.chunk_batches + rows // self.batch_size
        gen = generator("train", self.seed, chunk)
        return self.curriculum.sample(len(steps), self.length, gen, steps.double() / self.steps_per_epoch)

    def labelled_batch(self, step: int) -> SequenceSet:
        """The batch of `step` with its family and phase labels."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        chunk, k = divmod(step, self.chunk_batches)
        if chunk != self._chunk_index:
            self._chunk, self._chunk_index = self._make_chunk(chunk), chunk
        rows = self._chunk.subset(slice(k * self.batch_size, (k + 1) * self.batch_size))
        return SequenceSet(rows.seqs.clone(), rows.family.clone(), rows.phase.clone())  # callers own it

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor (batch_size, length) for `step`."""
        return self.labelled_batch(step).seqs

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches from step 0 on, without end."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1


def validation_set(
    curriculum: Curriculum, length: int, seed: int, index: int, epoch: float, size: int = 100
) -> SequenceSet:
    """`size` fresh sequences (the design's 100 per validation) from the mixture at `epoch`,
    drawn from generator("val", seed, index): identical for every architecture of a seed."""
    return curriculum.sample(size, length, generator("val", seed, index), epoch)


def make_test_set(
    phases: Sequence[int] = (1,),
    length: int = 8,
    per_family: int = 100,
    eval_seed: int = EVAL_SEED,
    families: Sequence[str] | None = None,
) -> SequenceSet:
    """The fixed test set: `per_family` sequences of every family of `phases` (or only `families`),
    each family from its own stream generator("test", eval_seed, family, length), so a family's test
    rows do not change when other families are added or removed."""
    if per_family < 1:
        raise ValueError(f"per_family must be positive, got {per_family}")
    curriculum = Curriculum(phases=tuple(phases), families=tuple(families) if families else None)
    curriculum.validate_length(length)
    parts = []
    for p in curriculum.phases:
        for fam in curriculum.phase_families(p):
            seqs, _ = fam.generate(per_family, length, generator("test", eval_seed, fam.name, length))
            labels = torch.full((per_family,), FAMILY_INDEX[fam.name]), torch.full((per_family,), p)
            parts.append(SequenceSet(seqs, *labels))
    return SequenceSet.cat(parts)


def seen_in_training(test: SequenceSet, stream: TrainStream, steps: int) -> torch.Tensor:
    """BoolTensor (len(test),): does each test sequence occur verbatim in the first `steps` batches?

    The test set comes from its own random stream, but several families have small parameter spaces
    (`constant` has 256 members), so fresh draws from the same distribution repeat training
    sequences, as the design accepts ("generate new sequences using the same parameter
    distributions"). This measures how much, so results can say how much of a family's test
    accuracy could be recall rather than rule-following.
    """
    if test.seqs.shape[1] != stream.length:
        raise ValueError(f"test length {test.seqs.shape[1]} differs from the stream's {stream.length}")
    seen: set[bytes] = set()
    for step in range(steps):
        seen.update(map(bytes, stream.batch(step).to(torch.uint8).numpy()))
    return torch.tensor([bytes(row) in seen for row in test.seqs.to(torch.uint8).numpy()], dtype=torch.bool)

