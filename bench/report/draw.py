"""Which figures a study's tables allow, drawn into the report's directory: each figure is either
drawn ({file: ''}) or left out with the reason the report prints in its place ({file: why})."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report import figures
from bench.report.cka import CKA_KINDS, cka_last_matrix, cka_layer_kinds
from bench.report.importance import completed_trials
from bench.report.load import PRIMARY, Stored, with_others
from bench.report.numbers import Numbers
from bench.report.tables import study_level

FIGURES = {  # file -> what it shows
    "accuracy.png": "accuracy (iid_unseen, ood) and distance error per architecture",
    "families.png": "accuracy / ceiling per family (iid_unseen, ood)",
    "learning_curves.png": "learning curves",
    "memory_decay.png": "memory-decay curves",
    "lag_accuracy.png": "accuracy against lag k",
    "pareto.png": "accuracy against parameters",
    "importance.png": "hyperparameter importances",
    "cka.png": "last-block representation similarity (linear CKA)",
    "cka_layers.png": "layer × layer representation similarity (linear CKA)",
    "mutual.png": "gain from mutual learning per architecture",
}


def draw_figures(s: Stored, n: Numbers, out: Path, storage_url: str | None = None) -> dict[str, str]:
    """Write every figure the data allow into `out`; returns {file: ''} for drawn ones and {file: why} for
    the ones left out (a file absent from the answer has no place in this report, e.g. lag accuracy).
    `storage_url`: the Optuna storage the importances came from (default: the study's)."""
    drawn: dict[str, str] = {}
    figures.overall(_panels(n), n.order, out / "accuracy.png", _seed_points(s))
    drawn["accuracy.png"] = ""
    ratios = {sp: m.drop(index=[a for a in m.index if a in ("ceiling", "baseline_uniform")])
              for sp, m in n.family_ratio.items() if m.size}
    if ratios:
        figures.family_heatmap(ratios, {sp: set(zip(b["arch"], b["family"], strict=True)) for sp, b in n.below.items()},
                               out / "families.png")
        drawn["families.png"] = ""
    else:
        drawn["families.png"] = "no per-family results"
    _draw_training(s, n, out, drawn)
    _draw_size(s, n, out, drawn, storage_url or s.storage_url)
    _draw_cka(s, n, out, drawn)
    if n.mutual is not None and len(n.mutual):
        figures.mutual_gain(n.mutual, [a for a in n.order if a in set(n.mutual.arch)], out / "mutual.png")
        drawn["mutual.png"] = ""
    elif s.setting("mutual.weight") is not None:
        drawn["mutual.png"] = "no mutual-stage results stored (mutual.parquet missing or empty)"
    return drawn


def _panels(n: Numbers) -> list[tuple[str, str, float, pd.DataFrame]]:
    """accuracy.png's panels: accuracy on iid_unseen and on ood, distance error on iid_unseen."""
    t = n.by_split
    pick = lambda split, metric: t[(t.split == split) & (t.metric == metric)][["arch", "mean", "half"]]  # noqa: E731
    return [("iid_unseen accuracy (higher is better)", "accuracy (%)", 100.0, pick(PRIMARY, "accuracy")),
            ("ood accuracy (higher is better)", "accuracy (%)", 100.0, pick("ood", "accuracy")),
            ("iid_unseen distance error (lower is better)", "mean |prediction − target| (values)", 1.0,
             pick(PRIMARY, "distance_error"))]


def _seed_points(s: Stored) -> list[pd.DataFrame]:
    """Each (arch, seed[, replicate])'s score for accuracy.png's panels (`_panels`' order): arch, value."""
    per_seed = study_level(s.results)
    pick = lambda split, metric: per_seed[(per_seed.split == split) & (per_seed.metric == metric)][  # noqa: E731
        ["arch", "value"]].reset_index(drop=True)
    return [pick(PRIMARY, "accuracy"), pick("ood", "accuracy"), pick(PRIMARY, "distance_error")]


def _validation_ceiling(s: Stored) -> float | None:
    """The ceiling on the fixed validation set, mean over seeds (ceiling.parquet, set 'validation')."""
    c = s.ceiling
    if c is None or "set" not in c:
        return None
    v = c[(c["set"] == "validation") & (c["family"] == "all") & c["position"].isna()]["accuracy"]
    return float(v.mean()) if len(v) else None


def _draw_training(s: Stored, n: Numbers, out: Path, drawn: dict[str, str]) -> None:
    """Learning curves, memory decay and lag accuracy."""
    history = s.history if s.history is not None else pd.DataFrame(columns=["arch", "metric"])
    if (history["metric"] == "val_accuracy").any():  # failed runs' history up to the failure too
        figures.learning_curves(history, with_others(n.order, history["arch"]), out / "learning_curves.png",
                                _validation_ceiling(s))
        drawn["learning_curves.png"] = ""
    else:
        drawn["learning_curves.png"] = "no validation history stored (history.parquet missing or empty)"
    if n.decay is not None:
        figures.memory_decay(n.decay, with_others(n.order, n.decay["arch"]), out / "memory_decay.png")
        drawn["memory_decay.png"] = ""
    else:
        drawn["memory_decay.png"] = ("no memory-decay curves stored (decay.parquet missing)" if s.decay is None
                                     else "decay.parquet holds no curves (no final run finished)")
    if n.lag is not None:
        figures.lag_accuracy(n.lag, n.order, out / "lag_accuracy.png")
        drawn["lag_accuracy.png"] = ""


def _draw_size(s: Stored, n: Numbers, out: Path, drawn: dict[str, str], storage_url: str) -> None:
    """Accuracy against parameters (with the search trials) and hyperparameter importances."""
    if len(n.points):
        trials = s.trials if s.trials is not None else pd.DataFrame()
        if {"stage", "state", "num_params", "val_accuracy"} <= set(trials.columns):
            trials = trials[(trials.stage == "search") & (trials.state == "COMPLETE")].dropna(
                subset=["num_params", "val_accuracy"])
        else:
            trials = pd.DataFrame(columns=["arch", "num_params", "val_accuracy"])
        figures.pareto(n.points, n.front, trials, out / "pareto.png")
        drawn["pareto.png"] = ""
    else:
        drawn["pareto.png"] = "no finished final run"
    if n.importances:
        replicates = int(s.setting("search.replicates", 1) or 1)
        figures.importances(n.importances, out / "importance.png",
                            completed_trials(s, list(n.importances), storage_url),
                            "; replicate 0's search" if replicates > 1 else "")
        drawn["importance.png"] = ""
    else:
        drawn["importance.png"] = "; ".join(n.importance_notes) or "no importances"


def _draw_cka(s: Stored, n: Numbers, out: Path, drawn: dict[str, str]) -> None:
    """The last blocks' architecture × architecture matrix and the layer × layer grid."""
    if n.cka is None or s.cka is None:
        why = ("no representation similarity stored (cka.parquet missing)" if s.cka is None
               else "cka.parquet holds no rows (no final run finished)")
        drawn["cka.png"] = drawn["cka_layers.png"] = why
        return
    archs = with_others(n.order, n.cka["arch_a"])
    rows = int(s.cka["n"].max()) if "n" in s.cka else None
    off, diagonal = cka_layer_kinds(n.cka)
    figures.cka_matrix(cka_last_matrix(n.cka, archs), out / "cka.png", rows,
                       "one architecture, two seeds" if diagonal == "seeds" else "1 (one seed: no seed-to-seed "
                       "reference)")
    figures.cka_layers(n.cka[n.cka.kind.isin([off, diagonal])], archs, out / "cka_layers.png",
                       f"{CKA_KINDS[off]} off the diagonal, {CKA_KINDS[diagonal]} on it (framed)")
    drawn["cka.png"] = drawn["cka_layers.png"] = ""
