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
    """The inputs (N, L-1) of the PROBE_SEQUENCES test sequences every probe of the final models uses:
    spread evenly over the test set, hence over every family."""
    index = torch.linspace(0, len(test) - 1, min(PROBE_SEQUENCES, len(test))).round().long().unique()
    return test.seqs[index, :-1]


@torch.no_grad()
def validation_scores(model: torch.nn.Module, seqs: torch.Tensor, alpha: float, weight: str, batch_size: int
                      ) -> dict[str, float]:
    """loss (the training objective, distance-weighted CE), ce, accuracy and distance_error of `model`
    on `seqs` (N, L), each the mean over every predicted position, scored `batch_size` rows at a time."""
    sums = dict.fromkeys(("loss", "ce", "accuracy", "distance_error"), 0.0)
    for chunk in seqs.split(batch_size):
        logits, targets = model(chunk[:, :-1]), chunk[:, 1:]
        scores = score_logits(logits, targets)
        part = {"loss": distance_weighted_ce(logits, targets, alpha, weight, reduce=False), "ce": scores["loss"],
                "accuracy": scores["accuracy"], "distance_error": scores["distance_error"]}
        for k, v in part.items():
            sums[k] += float(v.double().sum())
    count = seqs.shape[0] * (seqs.shape[1] - 1)
    return {k: v / count for k, v in sums.items()}


@dataclass
class Context:
    """Data, validation sets and test splits of a study on one device; the same for every architecture."""

    cfg: Config
    device: torch.device
    curriculum: Curriculum
    sets: dict[str, SequenceSet]  # make_split_test_sets: "iid", "ood", "length_<L>" for each test length
    val_cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # fresh sets, (seed, index)
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

    def validator(self, seed: int) -> Callable[[torch.nn.Module, int, float], dict[str, float]]:
        """Validation `index` of `seed`: val_* on the fixed validation set (model selection), fresh_* on
        that validation's fresh sequences (drawn once, then scored for every model: the monitor)."""
        d, t = self.cfg.data, self.cfg.train
        fixed = self.validation(seed).seqs.to(self.device)

        def validate(model: torch.nn.Module, index: int, epoch: float) -> dict[str, float]:
            if (seed, index) not in self.val_cache:
                fresh = validation_set(self.curriculum, d.length, seed, index, epoch, d.val_size)
                self.val_cache[(seed, index)] = fresh.seqs.to(self.device)
            args = (t.alpha, t.distance_weight, self.cfg.eval.batch_size)
            return {**{f"val_{k}": v for k, v in validation_scores(model, fixed, *args).items()},
                    **{f"fresh_{k}": v for k, v in validation_scores(model, self.val_cache[(seed, index)],
                                                                    *args).items()}}

        return validate
