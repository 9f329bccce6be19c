"""Metrics and baselines, usable without the harness.

Every position of a sequence predicts the next value, so a sequence of length L gives L - 1
predictions; `position` p is the prediction of x[p + 1] from x[0..p]. Three metrics:

* `accuracy`        argmax == target                       (random baseline 1/256 ~ 0.39 %)
* `distance_error`  |argmax - target|                       (uniform guess vs uniform target: 85.33)
* `loss`            cross-entropy in nats                   (uniform prediction: ln 256 ~ 5.545)

Baselines are scored by the same code: `baseline_uniform` is the exact expectation of a uniform
random guess (accuracy 1/256, E|U - target|, ln 256) on the real targets; `baseline_last_value`
repeats the last value and `baseline_extrapolate` continues the last difference (x_t + (x_t - x_{t-1}),
clamped to [0, 255]). Point predictors have no distribution, so they get no `loss` row.

`baseline_lookup` (the memoriser: each prefix's most frequent next value in a seed's training
budget, `bench.data.lookup.LookupTable`) and `ceiling` (the Bayes-optimal predictor of the region a
split is drawn from, `bench.data.bayes.Bayes`) are scored by the same code too
(`evaluate_predictions`, `evaluate_log_probs`).

Score your own model (any callable LongTensor (B, L) -> logits (B, L, 256)) in five lines::

    from bench.data import make_test_set
    from bench.metrics import evaluate
    test = make_test_set(phases=(1, 2), length=8)
    table = evaluate(my_model, test)            # tidy DataFrame: phase, family, position, metric, value, n
    print(table.query("family == 'all' and position.isna()"))

Test splits (`bench.data.SPLITS`): `evaluate_splits(model, splits)` scores a dict of labelled sets
({"iid_unseen": ..., "ood": ..., "length_16": ...}) and adds the `split` and `length` columns.

Per-prediction scores (`per_prediction`, `prediction_rows`): the same per-element scores `evaluate`
averages, one row per (sequence, position) in small dtypes (`correct` bool, `distance` int16, `loss`
float32), so any analysis over sequences (bootstrap, paired tests) can be redone without the model.
Their means are `evaluate`'s: accuracy and distance exactly, loss up to float32 rounding. Example: a
set of 3 sequences of length 8 gives 3 x 7 = 21 rows; `sequence` is the row index unless ids are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.data import FAMILY_NAMES, VOCAB
from bench.data.curriculum import SequenceSet

METRICS = ("accuracy", "distance_error", "loss")
RANDOM_BASELINE = {"accuracy": 1 / VOCAB, "distance_error": (VOCAB**2 - 1) / (3 * VOCAB), "loss": math.log(VOCAB)}
BASELINES = ("baseline_uniform", "baseline_last_value", "baseline_extrapolate")  # seed-independent, non-learned
LOOKUP = "baseline_lookup"  # the memoriser, fit per seed on its training budget
CEILING = "ceiling"  # the Bayes-optimal predictor of each split's region
REFERENCES = (*BASELINES, LOOKUP, CEILING)  # every non-model arch of results.parquet
PREDICTION_COLUMNS = ("phase", "family", "sequence", "position", "correct", "distance", "loss")  # prediction_rows
ALL = "all"  # family value of rows aggregated over families; position is <NA> for rows over all positions
Predictor = Callable[[torch.Tensor], torch.Tensor]  # LongTensor (B, L) -> logits (B, L, 256)


def expected_uniform_distance(targets: torch.Tensor) -> torch.Tensor:
    """E|U - t| for U uniform on 0..255: (t(t+1) + (255-t)(256-t)) / (2 * 256). Mean 85.33 for uniform t."""
    t = targets.double()
    return (t * (t + 1) + (VOCAB - 1 - t) * (VOCAB - t)) / (2 * VOCAB)


def baseline_predictions(name: str, inputs: torch.Tensor) -> torch.Tensor:
    """Point predictions (B, L) of a non-learned baseline for the next value after each input position."""
    if name == "baseline_last_value":
        return inputs.clone()
    if name == "baseline_extrapolate":
        prev = torch.cat([inputs[:, :1], inputs[:, :-1]], dim=1)  # no difference known at position 0
        return (2 * inputs - prev).clamp(0, VOCAB - 1)
    raise ValueError(f"unknown point baseline '{name}'")


def _scored_rows(frame: pd.DataFrame, test: SequenceSet) -> pd.DataFrame:
    """`frame` (one row per (sequence, position), row-major) without the positions its family does not
    score (`Family.scored`: a lag's unpredictable first values, a mechanism's noise): they enter no
    metric, so `n` counts scored predictions only."""
    mask = test.scored()
    return frame if mask is None else frame[mask.reshape(-1).numpy()].reset_index(drop=True)


def _frame(test: SequenceSet, per_element: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per scored (sequence, position) with the per-element metric values."""
    n, npos = test.seqs.shape[0], test.seqs.shape[1] - 1
    frame = {
        "phase": np.repeat(test.phase.numpy(), npos),
        "family": np.repeat(np.asarray(FAMILY_NAMES, dtype=object)[test.family.numpy()], npos),
        "position": np.tile(np.arange(npos), n),
    }
    frame.update({k: v.reshape(-1).double().cpu().numpy() for k, v in per_element.items()})
    return _scored_rows(pd.DataFrame(frame), test)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-element values -> tidy rows (phase, family, position, metric, value, n).

    Levels: per family per position; per family (position <NA>); per phase over its families
    (family 'all') per position and overall; all phases together (phase <NA>, family 'all').
    """
    metrics = [c for c in frame.columns if c not in ("phase", "family", "position")]
    parts = []
    for keys in (["phase", "family", "position"], ["phase", "family"], ["phase", "position"], ["phase"], []):
        if keys:
            agg = frame.groupby(keys, sort=True)[metrics].agg(["mean", "size"])
            tab = pd.concat(
                {m: agg[m].rename(columns={"mean": "value", "size": "n"}) for m in metrics}, names=["metric"]
            ).reset_index(level=0).reset_index()
        else:
            tab = pd.DataFrame({"metric": metrics, "value": frame[metrics].mean().to_numpy(), "n": len(frame)})
        for col, default in (("phase", pd.NA), ("family", ALL), ("position", pd.NA)):
            if col not in tab:
                tab[col] = default
        parts.append(tab)
    out = pd.concat(parts, ignore_index=True)[["phase", "family", "position", "metric", "value", "n"]]
    out["phase"] = out["phase"].astype("Int64")
    out["position"] = out["position"].astype("Int64")
    out["n"] = out["n"].astype("int64")
    return out


@torch.no_grad()
def model_logits(model: Predictor, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits (B, L, 256) of `model` on `inputs`, in eval mode, batched, on the model's device, as float32 CPU."""
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else inputs.device
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    out = [model(chunk.to(device)).float().cpu() for chunk in inputs.split(batch_size)]
    if was_training:
        model.train()
    return torch.cat(out)


def score_logits(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-element accuracy, distance error and cross-entropy from logits (B, L, 256) and targets (B, L)."""
    pred = logits.argmax(-1)
    ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)
    return {
        "accuracy": (pred == targets).double(),
        "distance_error": (pred - targets).abs().double(),
        "loss": ce.double(),
    }


def prediction_rows(test: SequenceSet, per_element: dict[str, torch.Tensor],
                    sequence: torch.Tensor | np.ndarray | None = None) -> pd.DataFrame:
    """One row per scored (sequence, position) of `score_logits`' per-element scores (B, L-1) of
    `test`: PREDICTION_COLUMNS, `sequence` = `sequence[i]` for row i of `test` (default: i). Small dtypes,
    as a study keeps millions of these rows: phase int8, sequence int64, position and distance int16
    (|argmax - target| <= 255), correct bool, loss float32 (cross-entropy is computed in float32)."""
    n, npos = test.seqs.shape[0], test.seqs.shape[1] - 1
    ids = np.arange(n) if sequence is None else np.asarray(sequence)
    if ids.shape != (n,):
        raise ValueError(f"need one sequence id per row of the set ({n}), got shape {ids.shape}")
    frame = pd.DataFrame({
        "phase": np.repeat(test.phase.numpy().astype(np.int8), npos),
        "family": np.repeat(np.asarray(FAMILY_NAMES, dtype=object)[test.family.numpy()], npos),
        "sequence": np.repeat(ids.astype(np.int64), npos),
        "position": np.tile(np.arange(npos, dtype=np.int16), n),
        "correct": per_element["accuracy"].reshape(-1).cpu().numpy() == 1,
        "distance": per_element["distance_error"].reshape(-1).cpu().numpy().astype(np.int16),
        "loss": per_element["loss"].reshape(-1).cpu().numpy().astype(np.float32),
    }, columns=list(PREDICTION_COLUMNS))
    return _scored_rows(frame, test)


def per_prediction(model: Predictor, test: SequenceSet, batch_size: int = 1024,
                   sequence: torch.Tensor | np.ndarray | None = None) -> pd.DataFrame:
    """`model`'s teacher-forced predictions on `test`, one row each (`prediction_rows`), from the
    logits `evaluate` scores: `frame.groupby("family").correct.mean()` is `evaluate`'s accuracy per family."""
    logits = model_logits(model, test.seqs[:, :-1], batch_size)
    return prediction_rows(test, score_logits(logits, test.seqs[:, 1:]), sequence)


def evaluate(model: Predictor, test: SequenceSet, batch_size: int = 1024) -> pd.DataFrame:
    """Score `model` (LongTensor (B, L) -> logits (B, L, 256)) on `test`: tidy rows, see `aggregate`."""
    logits = model_logits(model, test.seqs[:, :-1], batch_size)
    return aggregate(_frame(test, score_logits(logits, test.seqs[:, 1:])))


def score_predictions(pred: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-element accuracy and distance error of point predictions (B, L) (no distribution: no loss)."""
    return {"accuracy": (pred == targets).double(), "distance_error": (pred - targets).abs().double()}


def baseline_scores(test: SequenceSet) -> dict[str, dict[str, torch.Tensor]]:
    """Per-element scores (B, L-1) of the three `BASELINES` on `test`, by baseline name."""
    inputs, targets = test.seqs[:, :-1], test.seqs[:, 1:]
    scores = {"baseline_uniform": {
        "accuracy": torch.full(targets.shape, 1 / VOCAB, dtype=torch.float64),
        "distance_error": expected_uniform_distance(targets),
        "loss": torch.full(targets.shape, math.log(VOCAB), dtype=torch.float64),
    }}
    for name in BASELINES[1:]:
        scores[name] = score_predictions(baseline_predictions(name, inputs), targets)
    return scores


def evaluate_scores(test: SequenceSet, per_element: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Tidy rows (see `aggregate`) from per-element scores (B, L-1) of `test`'s sequences."""
    return aggregate(_frame(test, per_element))


def evaluate_baselines(test: SequenceSet) -> pd.DataFrame:
    """Tidy rows for the three baselines, with an `arch` column naming each."""
    return pd.concat([evaluate_scores(test, per).assign(arch=name) for name, per in baseline_scores(test).items()],
                     ignore_index=True)


def evaluate_predictions(predict: Callable[[torch.Tensor], torch.Tensor], test: SequenceSet) -> pd.DataFrame:
    """Tidy rows of a point predictor (inputs (B, L-1) -> next values (B, L-1)), e.g. a fitted
    `LookupTable.predict`: accuracy and distance error, no loss."""
    return evaluate_scores(test, score_predictions(predict(test.seqs[:, :-1]), test.seqs[:, 1:]))


def evaluate_log_probs(log_probs: torch.Tensor, test: SequenceSet) -> pd.DataFrame:
    """Tidy rows of a predicted distribution given as log-probabilities (B, L-1, 256) of `test`'s
    next values (e.g. `Bayes.log_probs`): all three metrics, as `evaluate` scores a model's logits
    (log-probabilities are logits whose softmax is themselves)."""
    return evaluate_scores(test, score_logits(log_probs, test.seqs[:, 1:]))


def split_of(key: str) -> str:
    """The `split` column of a labelled test set's key: "length_16" -> "length", others as they are."""
    return "length" if key.startswith("length_") else key


def score_splits(score: Callable[[str, SequenceSet], pd.DataFrame], splits: dict[str, SequenceSet]) -> pd.DataFrame:
    """`score(key, set)` of every non-empty labelled set, with its `split` (`split_of(key)`) and
    `length` (its sequence length) columns; e.g. {"iid_unseen": a, "length_16": b} gives rows with
    split "iid_unseen", length 8 and split "length", length 16. An empty set (no `iid_seen` rows
    when the budget drew no test sequence) has no rows."""
    parts = [score(key, s).assign(split=split_of(key), length=s.seqs.shape[1])
             for key, s in splits.items() if len(s)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def evaluate_splits(model: Predictor, splits: dict[str, SequenceSet], batch_size: int = 1024) -> pd.DataFrame:
    """`evaluate` on every labelled test set of `splits`, with `split` and `length` columns."""
    return score_splits(lambda _, s: evaluate(model, s, batch_size), splits)


@torch.no_grad()
def continuation(model: torch.nn.Module, test: SequenceSet, prefix: int, batch_size: int = 1024) -> pd.DataFrame:
    """Greedy cached generation of the rest of each test sequence from its first `prefix` values.

    Metric `continuation_accuracy`: fraction of generated values equal to the true continuation,
    by (phase, family) and position (position = index of the generated value - 1, as above).
    """
    length = test.seqs.shape[1]
    device = next(model.parameters()).device
    gen = torch.cat([model.generate(chunk[:, :prefix].to(device), length - prefix).cpu()
                     for chunk in test.seqs.split(batch_size)])
    correct = (gen[:, prefix:] == test.seqs[:, prefix:]).double()
    full = torch.full((len(test), length - 1), float("nan"), dtype=torch.float64)
    full[:, prefix - 1:] = correct
    frame = _frame(test, {"continuation_accuracy": full}).dropna(subset=["continuation_accuracy"])
    return aggregate(frame)
