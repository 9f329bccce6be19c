"""What the models are read against, computed once per study in `collect`: the non-learned
baselines, the memoriser and the Bayes ceiling on every test split, the ceiling tables, how many
test rows each split holds, and the real (OEIS) sequences.

    results rows   baseline_uniform, baseline_last_value, baseline_extrapolate, ceiling: scored once
                   per test set (per element), then aggregated per seed's split labels (a seed's
                   iid_seen / iid_unseen rows differ); baseline_lookup: a `LookupTable` fit per
                   seed on exactly its training budget, scored by the same code.
    ceiling        set mixture / family_known (`bench.data.ceiling`, regions train and
                   held_out at the study's length; held_out is the predictor told the region, an
                   upper bound beside the results' ood ceiling) and validation (the Bayes predictor
                   scored on each seed's fixed validation set: the learning curves' line).
    splits         rows per (seed, phase, family, split, length), zeros included.
    oeis           each final model and the point baselines on `oeis_windows(data.length)`, by kind:
                   n scored predictions and `windows` OEIS windows of that kind.

The ceiling of a split is the best a model trained on the training streams could be (`bayes_for`):
the Bayes predictor of the training distribution (region "train") for the iid, unseen and length
sets, at their own length, and of the families' whole distribution (region "any") for ood, over
the split's families with equal weights, as the test sets hold them. Example: for phase 2 at
length 8 the iid and unseen rows are scored once by Bayes(phase-2 families, 8, region="train"), and
seed 0's iid_seen and iid_unseen rows of `results` are those per-element tables aggregated over
its row masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from bench.data import FAMILY_NAMES, SequenceSet
from bench.data.bayes import Bayes, ceiling
from bench.data.lookup import LookupTable
from bench.data.oeis import KINDS, TAUGHT, oeis_windows
from bench.experiment.context import Context
from bench.metrics import (
    CEILING,
    LOOKUP,
    baseline_predictions,
    baseline_scores,
    evaluate_predictions,
    evaluate_scores,
    model_logits,
    score_logits,
    score_predictions,
    score_splits,
    split_of,
)

PerElement = dict[str, torch.Tensor]  # metric -> per-element scores (B, L-1)
CEILING_COLUMNS = ["study", "set", "region", "length", "seed", "family", "position", "accuracy", "loss", "method",
                   "se"]
SPLITS_COLUMNS = ["study", "seed", "phase", "family", "split", "length", "n_sequences"]
OEIS_COLUMNS = ["study", "arch", "seed", "kind", "metric", "value", "n", "windows"]
OEIS_POOLS = {**{k: (k,) for k in KINDS}, "taught": TAUGHT, "all": KINDS}


def family_names(test: SequenceSet) -> list[str]:
    """The families of `test`, in label (registry) order."""
    return [FAMILY_NAMES[i] for i in sorted(test.family.unique().tolist())]


def bayes_for(key: str, test: SequenceSet) -> Bayes:
    """The Bayes predictor a model could at best be, over the families of test set `key`: told the
    training distribution (region "train") for the iid, unseen and length sets; for ood, the families'
    whole distribution (region "any"): a predictor told that a sequence is held out would know more
    than any model trained on the training region can (e.g. that geometric's x0 <= 8 means r = 3)."""
    return Bayes(family_names(test), test.seqs.shape[1], region="any" if key == "ood" else "train")


class References:
    """Per-element scores of the seed-independent references (`BASELINES` and the ceiling) on every
    test set of `ctx`, computed once; `rows(seed)` aggregates them over that seed's splits."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.scores: dict[str, dict[str, PerElement]] = {}
        for key, test in ctx.sets.items():
            log_probs = bayes_for(key, test).log_probs(test.seqs[:, :-1])
            self.scores[key] = {**baseline_scores(test), CEILING: score_logits(log_probs, test.seqs[:, 1:])}
        self.fixed = {key: self._tidy(test, self.scores[key]) for key, test in ctx.sets.items()
                      if key not in ("iid", "unseen")}

    @staticmethod
    def _tidy(test: SequenceSet, by_arch: dict[str, PerElement]) -> pd.DataFrame:
        return pd.concat([evaluate_scores(test, per).assign(arch=arch) for arch, per in by_arch.items()],
                         ignore_index=True)

    def rows(self, seed: int) -> pd.DataFrame:
        """Tidy rows (with split, length, arch) of every reference on `seed`'s labelled splits."""
        seen, iid, unseen = self.ctx.seen(seed), self.scores["iid"], self.scores["unseen"]
        picks = {"iid_seen": lambda arch, m: iid[arch][m][seen],  # in the order of ctx.splits(seed)
                 "iid_unseen": lambda arch, m: torch.cat([unseen[arch][m], iid[arch][m][~seen]])}

        def score(key: str, test: SequenceSet) -> pd.DataFrame:
            if key not in picks:
                return self.fixed[key]
            return self._tidy(test, {arch: {m: picks[key](arch, m) for m in per} for arch, per in iid.items()})

        return score_splits(score, self.ctx.splits(seed))


def lookup_rows(ctx: Context, seed: int, table: LookupTable) -> pd.DataFrame:
    """`baseline_lookup` on `seed`'s labelled splits: the memoriser fit on that seed's budget."""
    return score_splits(lambda _, s: evaluate_predictions(table.predict, s), ctx.splits(seed)).assign(arch=LOOKUP)


def ceiling_table(ctx: Context) -> pd.DataFrame:
    """ceiling.parquet: the Bayes ceiling per family and position (set mixture and family_known, regions
    train and held_out, at the study's length) and per seed on its fixed validation set (set validation:
    family "all", position <NA>; `se` the standard error of that accuracy over the set's positions)."""
    cfg, curriculum = ctx.cfg, ctx.curriculum
    length, families = cfg.data.length, list(curriculum.families) if curriculum.families else None
    parts = [ceiling(curriculum.phases, length, families, region=region, family_known=known)
             .assign(set="family_known" if known else "mixture", region=region)
             for region in ("train", "held_out") for known in (False, True)]
    last = [f.name for f in curriculum.phase_families(curriculum.phases[-1])]  # the validation set's mixture
    bayes = Bayes(last, length, region="train")
    method = "exact" if set(bayes.methods.values()) == {"exact"} else "monte_carlo"
    for seed in cfg.seeds:
        val = ctx.validation(seed)
        scores = score_logits(bayes.log_probs(val.seqs[:, :-1]), val.seqs[:, 1:])
        mask = val.scored()  # the positions validation scores (None = all), as the learning curves read them
        acc, loss = ((scores[k].flatten() if mask is None else scores[k][mask]) for k in ("accuracy", "loss"))
        parts.append(pd.DataFrame([{"set": "validation", "region": "train", "seed": seed, "family": "all",
                                    "position": pd.NA, "accuracy": float(acc.mean()),
                                    "loss": float(loss.mean()), "method": method,
                                    "se": float(acc.std() / math.sqrt(acc.numel()))}]))
    table = pd.concat(parts, ignore_index=True).assign(study=cfg.name, length=length)
    table["seed"] = table["seed"].astype("Int64")
    table["position"] = table["position"].astype("Int64")
    return table.reindex(columns=CEILING_COLUMNS)


def splits_table(ctx: Context) -> pd.DataFrame:
    """splits.parquet: test sequences per (seed, phase, family, split, length); iid_seen and
    iid_unseen count every family of the iid set, zeros included, and iid_unseen adds the unseen
    (reserved) rows, as `Context.splits` does."""
    cfg, rows = ctx.cfg, []
    for seed in cfg.seeds:
        seen = ctx.seen(seed).numpy()
        for key, test in ctx.sets.items():
            frame = pd.DataFrame({"phase": test.phase.numpy(), "family": test.family_names(),
                                  "seen": seen if key == "iid" else np.zeros(len(test), bool)})
            counts = frame.groupby(["phase", "family"], sort=False)["seen"].agg(n="size", seen="sum").reset_index()
            labelled = ({"iid_seen": counts["seen"], "iid_unseen": counts["n"] - counts["seen"]} if key == "iid"
                        else {"iid_unseen" if key == "unseen" else split_of(key): counts["n"]})
            for split, n in labelled.items():
                rows.append(counts[["phase", "family"]].assign(seed=seed, split=split, length=test.seqs.shape[1],
                                                               n_sequences=n.astype("int64")))
    table = pd.concat(rows, ignore_index=True).groupby(["seed", "phase", "family", "split", "length"], sort=False)
    return table["n_sequences"].sum().reset_index().assign(study=cfg.name)[SPLITS_COLUMNS]


def _by_kind(kinds: np.ndarray, npos: int, per: PerElement) -> pd.DataFrame:
    """Mean of each per-element metric over the windows of each kind and pool (OEIS_POOLS); n is the
    scored predictions and windows the OEIS windows of that kind (npos predictions each)."""
    rows = []
    for pool, members in OEIS_POOLS.items():
        of_kind = np.isin(kinds, members)
        mask = np.repeat(of_kind, npos)
        if mask.any():
            rows += [{"kind": pool, "metric": m, "value": float(v.flatten()[torch.from_numpy(mask)].mean()),
                      "n": int(mask.sum()), "windows": int(of_kind.sum())} for m, v in per.items()]
    return pd.DataFrame(rows)


class Oeis:
    """The OEIS windows at the study's length (none where the snapshot holds no sequence that long)."""

    def __init__(self, length: int) -> None:
        self.windows = oeis_windows(length)
        self.kinds = np.asarray(self.windows.kind, dtype=object)

    def _rows(self, per: PerElement, **labels: object) -> pd.DataFrame:
        return _by_kind(self.kinds, self.windows.seqs.shape[1] - 1, per).assign(**labels)

    def points(self, seed: int, predictors: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> list[pd.DataFrame]:
        """Rows of point predictors (arch -> inputs (B, L-1) -> predictions) for `seed`."""
        if not len(self.windows):
            return []
        inputs, targets = self.windows.seqs[:, :-1], self.windows.seqs[:, 1:]
        return [self._rows(score_predictions(predict(inputs), targets), arch=arch, seed=seed)
                for arch, predict in predictors.items()]

    def model(self, arch: str, seed: int, model: torch.nn.Module, batch_size: int) -> list[pd.DataFrame]:
        """Rows of a trained model (accuracy, distance_error, loss)."""
        if not len(self.windows):
            return []
        logits = model_logits(model, self.windows.seqs[:, :-1], batch_size)
        return [self._rows(score_logits(logits, self.windows.seqs[:, 1:]), arch=arch, seed=seed)]


def point_baselines(table: LookupTable) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The OEIS point predictors of one seed: last value, extrapolate and its lookup table."""
    return {"baseline_last_value": lambda x: baseline_predictions("baseline_last_value", x),
            "baseline_extrapolate": lambda x: baseline_predictions("baseline_extrapolate", x),
            LOOKUP: table.predict}


def oeis_table(frames: list[pd.DataFrame], study: str) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=OEIS_COLUMNS)
    table = pd.concat(frames, ignore_index=True).assign(study=study)
    return table[OEIS_COLUMNS]
