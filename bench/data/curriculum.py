"""Curriculum mixtures, the deterministic training stream, and the validation and test sets.

Every random draw comes from a named stream (`bench.seeding.generator`): training chunks from
("train", seed, chunk), validation sets from ("val", seed, index) and ("val-fixed", seed), the
test splits from ("test", eval_seed, family, length), ("test-unseen", eval_seed, family, length) and
("test-ood", eval_seed, family, length).
Training can therefore never reproduce the test stream, and every architecture trained with the
same seed reads exactly the same batches.

Regions: every training and validation stream draws each family's region "stream" (the family
conditioned on not `Family.held_out` and not in the `reserved` slice), so no training or validation
stream ever draws a held-out or a reserved sequence; only the `ood` test split draws region
"held_out", and the reserved slice is the core of `iid_unseen`. `tests/test_splits.py` walks whole
training budgets to check it. The test splits (`SPLITS`, `make_split_test_sets`) and the helpers
that say which test rows a seed's budget drew (`training_budget`, `seen_in`) live here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.data.base import VOCAB, DrawRegion, Family, check_length
from bench.data.registry import FAMILY_INDEX, FAMILY_NAMES, PHASES, get_family, scored_positions
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

    def scored(self) -> torch.Tensor | None:
        """BoolTensor (n, L-1) of the prediction positions each row's family scores
        (`Family.scored`), or None where every position is scored (the curriculum's families), so
        the training loss and every metric skip the mask at no cost there."""
        mask = scored_positions(self.seqs, self.family)
        return None if bool(mask.all()) else mask

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
        family then generates all of its rows in one vectorised call, always from its region "stream"
        (never a held-out or reserved sequence). Rows keep their sampled order.
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
            seqs[rows] = get_family(FAMILY_NAMES[index]).generate(len(rows), length, gen, region="stream")[0]
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
        self._chunk_scored: torch.Tensor | None = None  # the chunk's scored positions (None = all)

    def _make_chunk(self, chunk: int) -> SequenceSet:
        rows = torch.arange(self.chunk_batches * self.batch_size)
        steps = chunk * self.chunk_batches + rows // self.batch_size
        gen = generator("train", self.seed, chunk)
        return self.curriculum.sample(len(steps), self.length, gen, steps.double() / self.steps_per_epoch)

    def labelled_batch(self, step: int) -> SequenceSet:
        """The batch of `step` with its family and phase labels."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        rows = self._chunk_rows(step)
        return SequenceSet(rows.seqs.clone(), rows.family.clone(), rows.phase.clone())  # callers own it

    def _chunk_rows(self, step: int) -> SequenceSet:
        """`step`'s rows of its chunk, the chunk made (with its scored positions) when first needed."""
        chunk = step // self.chunk_batches
        if chunk != self._chunk_index:
            self._chunk, self._chunk_index = self._make_chunk(chunk), chunk
            self._chunk_scored = self._chunk.scored()
        return self._chunk.subset(self._rows(step))

    def _rows(self, step: int) -> slice:
        """`step`'s rows within its chunk."""
        k = step % self.chunk_batches
        return slice(k * self.batch_size, (k + 1) * self.batch_size)

    def batch(self, step: int) -> torch.Tensor:
        """LongTensor (batch_size, length) for `step`."""
        return self.labelled_batch(step).seqs

    def scored_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch of `step` and the positions its loss scores (`SequenceSet.scored`; None = all):
        what the training loop reads. The mask is computed once per chunk, not on every step."""
        seqs = self.labelled_batch(step).seqs  # makes the step's chunk and its mask if need be
        if self._chunk_scored is None:
            return seqs, None
        mask = self._chunk_scored[self._rows(step)]
        return seqs, None if bool(mask.all()) else mask.clone()

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Batches from step 0 on, without end."""
        step = 0
        while True:
            yield self.batch(step)
            step += 1


SPLITS = ("iid_seen", "iid_unseen", "ood", "length")
SPLIT_LENGTHS = (16, 32)  # the `length` split's sequence lengths, for models trained at 8
FIXED_VALIDATION_SIZE = 1000
_MAX_ROUNDS = 100  # rounds of the fixed validation set; each draws up to 100 x size rows


def validation_set(
    curriculum: Curriculum, length: int, seed: int, index: int, epoch: float, size: int = 100
) -> SequenceSet:
    """`size` fresh sequences (the design's 100 per validation) from the mixture at `epoch`,
    drawn from generator("val", seed, index): identical for every architecture of a seed."""
    return curriculum.sample(size, length, generator("val", seed, index), epoch)


def fixed_validation_set(
    curriculum: Curriculum,
    length: int,
    seed: int,
    size: int = FIXED_VALIDATION_SIZE,
    exclude: SequenceSet | torch.Tensor | Iterable[SequenceSet | torch.Tensor] | None = None,
) -> SequenceSet:
    """The validation set model selection reads (early stopping, pruning, the best checkpoint):
    `size` sequences drawn once from generator("val-fixed", seed) at `curriculum.final_epoch()`
    (the mixture the test set measures), region "stream" (like every training stream), disjoint
    from the rows of `exclude`.

    Why: 100 fresh sequences per validation make the selected step depend on which 100 were drawn
    (a +-3-4 pp sawtooth, larger than the gaps between architectures); one fixed set of 1,000 is
    the same yardstick at every step and for every architecture of a seed. Dropping the rows of the
    splits the headlines read keeps selection from looking at them. Dropped rows are replaced by
    further rounds from the same generator, so the set depends only on the arguments. It never
    holds a reserved (`unseen`) or held-out (`ood`) row, by its region; what a study excludes on top
    (`Context.validation`) is the iid test rows its seed's budget never drew (the rest of
    `iid_unseen`); the iid rows the budget drew are training sequences (`iid_seen`, in no headline),
    so the set may share them, and small families (`geometric`: 56 training-region sequences) keep
    their share of the mixture.

    Example: with the iid rows a seed never drew as `exclude`, a draw of `alternating_steps` that
    equals one of them is dropped and another mixture row drawn in its place; the result has
    exactly `size` rows and no row equal to an excluded row.

    `exclude`: a SequenceSet, a LongTensor (n, L) or an iterable of them (e.g. the values of
    `make_split_test_sets`); rows of another length cannot equal a validation row and are ignored.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    curriculum.validate_length(length)
    banned = set(_row_keys(_rows_of_length(exclude, length)))
    gen, epoch = generator("val-fixed", seed), curriculum.final_epoch()
    parts, drawn, kept = [], 0, 0
    for _ in range(_MAX_ROUNDS):
        want = size - kept
        draw = want if not drawn else min(100 * size, max(16, 2 * want * drawn // max(kept, 1)))
        rows = curriculum.sample(draw, length, gen, epoch)
        keys = _row_keys(rows.seqs)
        part = rows.subset(torch.tensor([k not in banned for k in keys], dtype=torch.bool))
        parts.append(part)
        drawn, kept = drawn + draw, kept + len(part)
        if kept >= size:
            return SequenceSet.cat(parts).subset(slice(0, size))
    raise RuntimeError(f"could not draw {size} validation sequences outside the {len(banned)} excluded rows")


def _rows_of_length(
    sets: SequenceSet | torch.Tensor | Iterable[SequenceSet | torch.Tensor] | None, length: int
) -> torch.Tensor:
    """The rows (m, length) of a SequenceSet, a tensor or an iterable of them; other lengths dropped."""
    if sets is None:
        items = []
    elif isinstance(sets, (SequenceSet, torch.Tensor)):
        items = [sets]
    else:
        items = list(sets)
    mats = [s.seqs if isinstance(s, SequenceSet) else s for s in items]
    for m in mats:
        if m.dim() != 2:
            raise ValueError(f"excluded rows must be a 2-d tensor, got shape {tuple(m.shape)}")
    return torch.cat([m for m in mats if m.shape[1] == length] + [torch.empty(0, length, dtype=torch.long)])


def _per_family(curriculum: Curriculum, n: int, length: int, keys: tuple[object, ...], region: DrawRegion
                ) -> SequenceSet | None:
    """`n` rows of every family of `curriculum` that supports `length`, each from its own stream
    generator(*keys, family, length) and `region`; None when no family supports `length`."""
    parts = []
    for p in curriculum.phases:
        for fam in curriculum.phase_families(p):
            if length < fam.min_length:
                continue
            seqs, _ = fam.generate(n, length, generator(*keys, fam.name, length), region=region)
            parts.append(SequenceSet(seqs, torch.full((n,), FAMILY_INDEX[fam.name]), torch.full((n,), p)))
    return SequenceSet.cat(parts) if parts else None


def _test_curriculum(phases: Sequence[int], families: Sequence[str] | None, per_family: int) -> Curriculum:
    if per_family < 1:
        raise ValueError(f"per_family must be positive, got {per_family}")
    return Curriculum(phases=tuple(phases), families=tuple(families) if families else None)


def make_test_set(
    phases: Sequence[int] = (1,),
    length: int = 8,
    per_family: int = 100,
    eval_seed: int = EVAL_SEED,
    families: Sequence[str] | None = None,
) -> SequenceSet:
    """The fixed iid test set: `per_family` sequences of every family of `phases` (or only
    `families`), region "stream" (what training streams draw), each family from its own stream
    generator("test", eval_seed, family, length), so a family's test rows do not change when other
    families are added or removed. `seen_in_training` splits it into `iid_seen` and `iid_unseen`."""
    curriculum = _test_curriculum(phases, families, per_family)
    curriculum.validate_length(length)
    return _per_family(curriculum, per_family, length, ("test", eval_seed), "stream")


def make_split_test_sets(
    phases: Sequence[int] = (1,),
    length: int = 8,
    per_family: int = 100,
    eval_seed: int = EVAL_SEED,
    families: Sequence[str] | None = None,
    lengths: Sequence[int] = SPLIT_LENGTHS,
) -> dict[str, SequenceSet]:
    """The test sets behind `SPLITS`, `per_family` rows of every family each:

    - "iid": `make_test_set`'s rows (region "stream"); a seed's budget splits them into `iid_seen`
      (drawn verbatim in training) and the rest (never drawn), see `seen_in_training`;
    - "unseen": region "reserved" from generator("test-unseen", eval_seed, family, length): the
      training distribution's reserved slice, which no stream draws, so every family has rows that
      are unseen for every seed whatever the budget (`iid_unseen` = these and the iid rows its
      budget never drew);
    - "ood": region "held_out" from generator("test-ood", eval_seed, family, length): sequences no
      training or validation stream draws (a start in a reserved band, an unseen parameter
      combination or a parameter just past the training range; `Family.held_out_kind` says which);
    - f"length_{L}" for each L in `lengths` other than `length`: region "stream" at L terms from
      generator("test", eval_seed, family, L) (the rows `make_test_set(..., length=L)` returns;
      rules stay mod 256). A family that needs more than L terms (`lag_32` needs 34) is left out at
      that L, and an L no family supports gets no key; L == `length` would repeat "iid" and is skipped.

    Example: `make_split_test_sets((2,), 8, 100)` has keys iid, unseen, ood, length_16, length_32, each with
    900 rows (9 families x 100), family-major like `make_test_set`.
    """
    curriculum = _test_curriculum(phases, families, per_family)
    curriculum.validate_length(length)
    sets = {"iid": _per_family(curriculum, per_family, length, ("test", eval_seed), "stream"),
            "unseen": _per_family(curriculum, per_family, length, ("test-unseen", eval_seed), "reserved"),
            "ood": _per_family(curriculum, per_family, length, ("test-ood", eval_seed), "held_out")}
    for n in lengths:
        check_length(n)
        part = None if n == length else _per_family(curriculum, per_family, n, ("test", eval_seed), "stream")
        if part is not None:
            sets[f"length_{n}"] = part
    return sets


def training_budget(stream: TrainStream, steps: int) -> torch.Tensor:
    """LongTensor (steps * batch_size, length): every sequence the first `steps` batches draw, in
    order (row s * batch_size + i is row i of `stream.batch(s)`).

    Why: the memoriser baseline (`baseline_lookup`) is fit on exactly what a seed trained on, and
    `seen_in_training` tells `iid_seen` from `iid_unseen` against it. Built in one pass over the
    stream's chunks (each generated once), not step by step.

    Example: a stream with batch_size 64 and chunk_batches 64 over 2000 steps generates chunks
    0..31 (the last one only partly used) and returns 128,000 rows.
    """
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    rows, per_chunk = steps * stream.batch_size, stream.chunk_batches * stream.batch_size
    budget = torch.empty(rows, stream.length, dtype=torch.long)
    for chunk in range(-(-steps // stream.chunk_batches)):
        start = chunk * per_chunk
        take = min(per_chunk, rows - start)
        budget[start:start + take] = stream._make_chunk(chunk).seqs[:take]
    return budget


def _row_keys(seqs: torch.Tensor) -> list[bytes]:
    """Each row of terms in 0..255 as bytes (one byte a term), for hashing; a list in row order."""
    if seqs.numel() and (int(seqs.min()) < 0 or int(seqs.max()) >= VOCAB):
        raise ValueError(f"terms must lie in 0..{VOCAB - 1}")
    rows = np.ascontiguousarray(seqs.to(torch.uint8).numpy())
    return rows.view(np.dtype((np.void, max(rows.shape[1], 1)))).ravel().tolist() if len(rows) else []


def seen_in(seqs: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """BoolTensor (n,): does row i of `seqs` (n, L) occur verbatim as a row of `budget` (m, L)?

    Rows are hashed as bytes, so the cost is one pass over each (m = 512,000 rows in well under a
    second). Example: seqs [[1, 2, 3], [3, 2, 1]] against budget [[0, 0, 0], [1, 2, 3]] gives
    [True, False].
    """
    if seqs.dim() != 2 or budget.dim() != 2 or seqs.shape[1] != budget.shape[1]:
        raise ValueError(f"need two 2-d tensors of equal length, got {tuple(seqs.shape)} and {tuple(budget.shape)}")
    members = set(_row_keys(budget))
    return torch.tensor([k in members for k in _row_keys(seqs)], dtype=torch.bool)


def seen_in_training(test: SequenceSet, stream: TrainStream, steps: int) -> torch.Tensor:
    """BoolTensor (len(test),): does each test sequence occur verbatim in the first `steps` batches?

    The test set comes from its own random stream, but several families have small parameter spaces
    (`constant` has 256 members), so fresh draws from the same distribution repeat training
    sequences, as the design accepts ("generate new sequences using the same parameter
    distributions"). This measures how much: True rows are the `iid_seen` split, False rows
    `iid_unseen`, so results can say how much of a family's test accuracy could be recall.
    """
    if test.seqs.shape[1] != stream.length:
        raise ValueError(f"test length {test.seqs.shape[1]} differs from the stream's {stream.length}")
    return seen_in(test.seqs, training_budget(stream, steps))
