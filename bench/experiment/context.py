"""What every trial of one worker shares: the curriculum, the fixed test splits, the validation sets
(identical for every architecture of a seed, built once) and the device.

Test splits (`bench.data.SPLITS`): `make_split_test_sets` gives the iid rows (what the training
streams draw), the unseen rows (the training distribution's reserved slice, which no stream draws),
the ood rows (each family's held-out region) and the same families at the longer `test_lengths`.
Which iid rows a seed's training budget drew verbatim depends on the seed, so `splits(seed)` labels
them against `training_budget(stream(seed), steps)` (computed once per seed and kept): drawn ones
are `iid_seen`; `iid_unseen` is the unseen rows plus the iid rows the budget never drew. Example:
phase 2 at length 8 with 300 rows per family: seed 0's 8000 steps x 64 draw about 98 % of the
2,700 iid rows (iid_seen); iid_unseen is the 2,700 reserved rows (300 of every family) and the ~35
iid rows never drawn.

Validation: each seed's fixed validation set (`fixed_validation_set`, `data.val_fixed_size` rows,
disjoint from every row of iid_unseen, ood and length) is what model selection reads (`val_*`:
early stopping, pruning, the Optuna value); the design's `data.val_size` fresh sequences per
validation are the logged monitor (`fresh_*`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.analysis.memory_decay import random_tokens
from bench.data import (
    Curriculum,
    SequenceSet,
    TrainStream,
    fixed_validation_set,
    make_split_test_sets,
    seen_in,
    training_budget,
    validation_set,
)
from bench.experiment.config import Config, ConfigError
from bench.metrics import score_logits
from bench.train import distance_weighted_ce

PROBE_SEQUENCES = 256  # test sequences the memory-decay and CKA probes average over (spread over every family)


def resolve_device(name: str) -> torch.device:
    """`device=auto` is CUDA when there is one; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def probe_tokens(test: SequenceSet) -> torch.Tensor:
    """The inputs (N, L-1) of the PROBE_SEQUENCES test sequences the CKA and agreement probes of the
    final models use: spread evenly over the test set, hence over every family."""
    index = torch.linspace(0, len(test) - 1, min(PROBE_SEQUENCES, len(test))).round().long().unique()
    return test.seqs[index, :-1]


def decay_tokens(test: SequenceSet) -> torch.Tensor:
    """The memory-decay probe's inputs: PROBE_SEQUENCES uniform random sequences (seeded, the same for
    every study, architecture and seed) as long as the test rows' inputs (L-1), not test sequences,
    whose family mix would shape the curve and differ between studies (`bench.analysis.memory_decay`)."""
    return random_tokens(PROBE_SEQUENCES, test.seqs.shape[1] - 1)


@torch.no_grad()
def validation_scores(model: torch.nn.Module, seqs: torch.Tensor, alpha: float, weight: str, batch_size: int,
                      mask: torch.Tensor | None = None) -> dict[str, float]:
    """loss (the training objective, distance-weighted CE), ce, accuracy and distance_error of `model`
    on `seqs` (N, L), each the mean over every predicted position that `mask` (N, L-1; None = all,
    `SequenceSet.scored`) scores, scored `batch_size` rows at a time."""
    sums = dict.fromkeys(("loss", "ce", "accuracy", "distance_error"), 0.0)
    masks = [None] * len(seqs.split(batch_size)) if mask is None else mask.split(batch_size)
    for chunk, keep in zip(seqs.split(batch_size), masks, strict=True):
        logits, targets = model(chunk[:, :-1]), chunk[:, 1:]
        scores = score_logits(logits, targets)
        part = {"loss": distance_weighted_ce(logits, targets, alpha, weight, reduce=False), "ce": scores["loss"],
                "accuracy": scores["accuracy"], "distance_error": scores["distance_error"]}
        for k, v in part.items():
            sums[k] += float((v if keep is None else v * keep).double().sum())
    count = seqs.shape[0] * (seqs.shape[1] - 1) if mask is None else max(int(mask.sum()), 1)
    return {k: v / count for k, v in sums.items()}


@dataclass
class Context:
    """Data, validation sets and test splits of a study on one device; the same for every architecture."""

    cfg: Config
    device: torch.device
    curriculum: Curriculum
    sets: dict[str, SequenceSet]  # make_split_test_sets: "iid", "ood", "length_<L>" for each test length
    # fresh sets (sequences, scored mask) by (seed, index)
    val_cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    fixed_cache: dict[int, SequenceSet] = field(default_factory=dict)  # the fixed validation set, per seed
    seen_cache: dict[int, torch.Tensor] = field(default_factory=dict)  # iid rows drawn in training, per seed

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Context:
        curriculum, d = cfg.curriculum(), cfg.data
        sets = make_split_test_sets(curriculum.phases, d.length, d.test_per_family, d.eval_seed, curriculum.families,
                                    lengths=cfg.test_length_list)
        return cls(cfg, device, curriculum, sets)

    @property
    def test(self) -> SequenceSet:
        """The iid test rows (`make_test_set`'s): what the memory-decay and CKA probes read."""
        return self.sets["iid"]

    def stream(self, seed: int) -> TrainStream:
        d, t = self.cfg.data, self.cfg.train
        return TrainStream(self.curriculum, d.length, t.batch_size, seed, steps_per_epoch=t.val_every)

    def budget(self, seed: int) -> torch.Tensor:
        """Every sequence `seed`'s final-stage budget (train.steps) draws; labels its iid rows on the way."""
        rows = training_budget(self.stream(seed), self.cfg.train.steps)
        self.seen_cache.setdefault(seed, seen_in(self.test.seqs, rows))
        return rows

    def seen(self, seed: int) -> torch.Tensor:
        """BoolTensor over the iid rows: drawn verbatim by `seed`'s training budget (`iid_seen`)."""
        if seed not in self.seen_cache:
            self.budget(seed)
        return self.seen_cache[seed]

    def splits(self, seed: int) -> dict[str, SequenceSet]:
        """The labelled test sets of `seed`: iid_seen, iid_unseen (the unseen rows, then the iid rows
        the budget never drew), ood, then length_<L> per test length."""
        seen = self.seen(seed)
        rest = {k: v for k, v in self.sets.items() if k not in ("iid", "unseen")}
        unseen = SequenceSet.cat([self.sets["unseen"], self.test.subset(~seen)])
        return {"iid_seen": self.test.subset(seen), "iid_unseen": unseen, **rest}

    def split_ids(self, seed: int) -> dict[str, torch.Tensor]:
        """Stable ids (LongTensor) of the rows of `splits(seed)`, key by key and row by row: the same
        test row has the same id for every architecture, seed and replicate, whichever of iid_seen and
        iid_unseen it falls in. iid rows keep their index in the "iid" set, reserved rows get n_iid +
        their index in "unseen", ood and length_<L> rows their index in their own set; so ids are
        unique within (split source, length). Example: 6 iid rows of which seed 0 drew rows 1 and 4,
        3 reserved rows: iid_seen [1, 4], iid_unseen [6, 7, 8, 0, 2, 3, 5]."""
        seen, n_iid = self.seen(seed), len(self.test)
        rows = torch.arange(n_iid)
        reserved = n_iid + torch.arange(len(self.sets["unseen"]))
        rest = {k: torch.arange(len(v)) for k, v in self.sets.items() if k not in ("iid", "unseen")}
        return {"iid_seen": rows[seen], "iid_unseen": torch.cat([reserved, rows[~seen]]), **rest}

    def validation(self, seed: int) -> SequenceSet:
        """`seed`'s fixed validation set (on the CPU, built once), disjoint from every row the headlines
        read: its region keeps out the unseen and ood rows, and the iid rows the budget never drew
        are excluded; it may share iid_seen rows, which are training sequences."""
        if seed not in self.fixed_cache:
            d = self.cfg.data
            splits = self.splits(seed)
            exclude = [v for k, v in splits.items() if k != "iid_seen"]
            self.fixed_cache[seed] = fixed_validation_set(self.curriculum, d.length, seed, d.val_fixed_size,
                                                          exclude=exclude)
        return self.fixed_cache[seed]

    def _on_device(self, rows: SequenceSet) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A validation set's sequences and scored-position mask (None = all) on the study's device."""
        mask = rows.scored()
        return rows.seqs.to(self.device), None if mask is None else mask.to(self.device)

    def validator(self, seed: int) -> Callable[[torch.nn.Module, int, float], dict[str, float]]:
        """Validation `index` of `seed`: val_* on the fixed validation set (model selection), fresh_* on
        that validation's fresh sequences (drawn once, then scored for every model: the monitor)."""
        d, t = self.cfg.data, self.cfg.train
        fixed = self._on_device(self.validation(seed))

        def validate(model: torch.nn.Module, index: int, epoch: float) -> dict[str, float]:
            if (seed, index) not in self.val_cache:
                fresh = validation_set(self.curriculum, d.length, seed, index, epoch, d.val_size)
                self.val_cache[(seed, index)] = self._on_device(fresh)
            args = (t.alpha, t.distance_weight, self.cfg.eval.batch_size)
            fresh_seqs, fresh_mask = self.val_cache[(seed, index)]
            return {**{f"val_{k}": v for k, v in validation_scores(model, fixed[0], *args, fixed[1]).items()},
                    **{f"fresh_{k}": v for k, v in validation_scores(model, fresh_seqs, *args, fresh_mask).items()}}

        return validate
