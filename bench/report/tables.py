"""The analysis tables a report is drawn from, computed from the stored tables with pandas: the
study-level summary over seeds, the paired (seed, phase, family) cells and the comparisons on them,
lag recall, memory-decay reach, the accuracy–size Pareto front and the mutual-learning effect.
`compute` gathers them (and the CKA tables of `bench.report.cka`) into one `Numbers`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report.cka import cka_floors, cka_means
from bench.report.importance import param_importances
from bench.report.load import ALL, BASELINES, Stored, family_order, is_baseline
from bench.report.stats import ALPHA, RESAMPLES, holm, mean_ci, paired_bootstrap, sign_test

REMEMBER = 0.10  # "remembers up to k": the decay curve is still above this fraction of its first value
RECALL = 0.5  # "recalls lag k": accuracy on the predictable positions at least this
LAG = re.compile(r"lag_(\d+)$")
SIZE_COLUMNS = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")


def study_level(results: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, seed, metric) the score over the whole test set (phase <NA>, family 'all', position <NA>)."""
    top = results[results["phase"].isna() & (results["family"] == ALL) & results["position"].isna()]
    return top[["arch", "seed", "metric", "value"]].reset_index(drop=True)


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    """arch, metric, mean, half (95 % Student-t half-width over seeds; NaN for one seed), n."""
    rows = [(arch, metric, *mean_ci(g["value"])) for (arch, metric), g in per_seed.groupby(["arch", "metric"])]
    return pd.DataFrame(rows, columns=["arch", "metric", "mean", "half", "n"])


def family_cells(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (arch, seed, phase, family) the family's score over all positions: the paired cells."""
    rows = results[results["phase"].notna() & (results["family"] != ALL) & results["position"].isna()
                   & (results["metric"] == metric)]
    return rows[["arch", "seed", "phase", "family", "value"]].reset_index(drop=True)


def paired_comparisons(cells: pd.DataFrame, archs: list[str], resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every pair (a, b) of `archs` on the (seed, phase, family) cells both have: mean difference a − b,
    its 95 % bootstrap interval, wins/ties/losses, bootstrap and sign-test p-values, Holm-adjusted
    bootstrap p-value and whether it is significant at ALPHA. Each cell is the same test sequences
    for both (the test set is fixed; seed s gives both the same training stream)."""
    wide = cells.pivot_table(index=["seed", "phase", "family"], columns="arch", values="value")
    rows = []
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            if a not in wide or b not in wide:
                continue
            d = (wide[a] - wide[b]).dropna().to_numpy()
            if not len(d):
                continue
            p, lo, hi = paired_bootstrap(d, resamples)
            wins, losses = int((d > 0).sum()), int((d < 0).sum())
            rows.append({"a": a, "b": b, "cells": len(d), "diff": float(d.mean()), "lo": lo, "hi": hi, "wins": wins,
                         "ties": len(d) - wins - losses, "losses": losses, "p_boot": p,
                         "p_sign": sign_test(wins, losses)})
    table = pd.DataFrame(rows, columns=["a", "b", "cells", "diff", "lo", "hi", "wins", "ties", "losses", "p_boot",
                                        "p_sign"])
    return _holm_columns(table)


def _holm_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add p_holm (Holm over the table's rows) and significant (p_holm < ALPHA)."""
    table["p_holm"] = holm(table["p_boot"].tolist()) if len(table) else []
    table["significant"] = table["p_holm"] < ALPHA
    return table


def mutual_effect(results: pd.DataFrame, mutual: pd.DataFrame, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Per architecture: test accuracy trained alone (the final stage) and jointly (the mutual stage),
    and the gain joint − alone paired by seed (mean, 95 % Student-t half-width over seeds) and by
    (seed, phase, family) cell (paired bootstrap p-value, Holm-corrected over architectures). Both
    runs of a pair share the seed, hence the data stream, initialisation and test sequences."""
    alone, joint = study_level(results), study_level(mutual)
    cells = family_cells(results).merge(family_cells(mutual), on=["arch", "seed", "phase", "family"],
                                        suffixes=("_alone", "_joint"))
    rows = []
    for arch in sorted(set(joint["arch"])):
        a = alone[(alone.arch == arch) & (alone.metric == "accuracy")].set_index("seed")["value"]
        j = joint[(joint.arch == arch) & (joint.metric == "accuracy")].set_index("seed")["value"]
        seeds = sorted(set(a.index) & set(j.index))
        if not seeds:
            continue
        gain, half, n = mean_ci(j[seeds].to_numpy() - a[seeds].to_numpy())
        c = cells[cells.arch == arch]
        d = (c["value_joint"] - c["value_alone"]).to_numpy()
        p = paired_bootstrap(d, resamples)[0] if len(d) else float("nan")
        rows.append({"arch": arch, "alone": float(a[seeds].mean()), "alone_half": mean_ci(a[seeds])[1],
                     "joint": float(j[seeds].mean()), "joint_half": mean_ci(j[seeds])[1], "gain": gain,
                     "half": half, "seeds": n, "cells": len(d), "wins": int((d > 0).sum()),
                     "losses": int((d < 0).sum()), "p_boot": p})
    table = pd.DataFrame(rows, columns=["arch", "alone", "alone_half", "joint", "joint_half", "gain", "half", "seeds",
                                        "cells", "wins", "losses", "p_boot"])
    return _holm_columns(table)


def mutual_verdict(row: Any) -> str:
    """'helps', 'hurts' or 'no detectable effect', from the Holm-corrected cell test."""
    if not row.significant:
        return "no detectable effect"
    return "helps" if row.gain > 0 else "hurts"


def lag_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (arch, seed, k) on the lag_k families over the predictable positions only.

    Position p predicts x[p+1], and x_t = x_{t-k} is determined only for t >= k, so only positions
    p >= k - 1 count; positions are pooled weighted by their number of predictions n.
    """
    rows = results[(results["metric"] == "accuracy") & results["position"].notna() & results["phase"].notna()]
    k = rows["family"].str.extract(LAG, expand=False)
    rows = rows.assign(k=pd.to_numeric(k)).dropna(subset=["k"])
    rows = rows[rows["position"].astype(int) >= rows["k"] - 1]
    rows = rows.assign(k=rows["k"].astype(int), hits=rows["value"] * rows["n"])
    g = rows.groupby(["arch", "seed", "k"], as_index=False)[["hits", "n"]].sum()
    return g.assign(value=g["hits"] / g["n"])[["arch", "seed", "k", "value", "n"]]


def is_lag_study(results: pd.DataFrame) -> bool:
    families = set(results.loc[results["family"] != ALL, "family"])
    return bool(families) and all(LAG.match(f) for f in families)


def decay_means(decay: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each architecture's decay curve: arch, variant, k, value."""
    return decay.groupby(["arch", "variant", "k"], as_index=False)["value"].mean()


def decay_reach(curves: pd.DataFrame, variant: str = "perturbation", fraction: float = REMEMBER) -> dict[str, int]:
    """Per arch the largest k at which the (mean) curve is still above `fraction` of its value at its smallest k."""
    reach = {}
    for arch, c in curves[curves["variant"] == variant].groupby("arch"):
        c = c.sort_values("k")
        first = float(c["value"].iloc[0])
        if first > 0:
            reach[str(arch)] = int(c.loc[c["value"] >= fraction * first, "k"].max())
    return reach


def pareto_front(points: pd.DataFrame) -> list[str]:
    """Architectures no other one beats with fewer (or equal) parameters: arch, num_params, mean."""
    front, best = [], -math.inf
    for _, p in points.sort_values(["num_params", "mean"], ascending=[True, False]).iterrows():
        if p["mean"] > best:
            front.append(p["arch"])
            best = p["mean"]
    return front


@dataclass
class Numbers:
    """Everything the sections, figures and findings are drawn from."""

    order: list[str]  # architectures by mean test accuracy, best first
    summary: pd.DataFrame  # arch, metric, mean, half, n (architectures and baselines)
    configs: pd.DataFrame  # per arch: sizes, lr, num_params (from its final runs)
    cells: pd.DataFrame  # paired (seed, phase, family) accuracy cells
    pairs: pd.DataFrame  # paired_comparisons
    families: pd.DataFrame  # arch x family mean accuracy (baselines last)
    lag: pd.DataFrame | None  # arch, k, mean, half, n (lag studies)
    decay: pd.DataFrame | None  # mean decay curves
    points: pd.DataFrame  # arch, num_params, mean, half (final runs)
    front: list[str]
    importances: dict[str, dict[str, float]]
    importance_notes: list[str]
    cka: pd.DataFrame | None = None  # cka_means: layer × layer similarity, mean over seeds
    cka_floor: dict[str, float] | None = None  # cka_floors: what unrelated representations score
    mutual: pd.DataFrame | None = None  # mutual_effect: joint vs alone per architecture


def compute(s: Stored, storage_url: str | None = None, resamples: int = RESAMPLES) -> Numbers:
    """Every table of the report; importances from the Optuna storage at `storage_url` (default: the study's)."""
    summary = summarize(study_level(s.results))
    acc = summary[summary.metric == "accuracy"].set_index("arch")["mean"]
    archs = [a for a in s.results["arch"].unique() if not is_baseline(a)]
    order = sorted(archs, key=lambda a: (-acc.get(a, -1.0), a))
    ok = s.runs[s.runs["status"] == "ok"] if "status" in s.runs else s.runs
    configs = ok.groupby("arch")[[c for c in (*SIZE_COLUMNS, "num_params") if c in ok]].first()
    cells = family_cells(s.results)
    families = cells.pivot_table(index="arch", columns="family", values="value", aggfunc="mean")
    families = families.reindex(index=[*order, *[b for b in BASELINES if b in families.index]],
                                columns=family_order(families.columns, s.family_names))
    points = summary[(summary.metric == "accuracy") & summary.arch.isin(order)].merge(
        configs["num_params"].reset_index(), on="arch") if "num_params" in configs else pd.DataFrame()
    importances, notes = param_importances(s, order, storage_url or s.storage_url)
    has_cka = s.cka is not None and len(s.cka)
    return Numbers(order=order, summary=summary, configs=configs, cells=cells,
                   pairs=paired_comparisons(cells, order, resamples), families=families, lag=_lag_table(s.results),
                   decay=decay_means(s.decay) if s.decay is not None and len(s.decay) else None,
                   points=points, front=pareto_front(points) if len(points) else [],
                   importances=importances, importance_notes=notes,
                   cka=cka_means(s.cka) if has_cka else None,
                   cka_floor=cka_floors(s.cka, s.cka_floor, configs) if has_cka else None,
                   mutual=mutual_effect(s.results, s.mutual, resamples)
                   if s.mutual is not None and len(s.mutual) else None)


def _lag_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """arch, k, mean, half, n of the lag recall over seeds; None for a study not made of lag_k families."""
    if not is_lag_study(results):
        return None
    per_seed = lag_accuracy(results)
    return pd.DataFrame([(a, k, *mean_ci(g["value"])) for (a, k), g in per_seed.groupby(["arch", "k"])],
                        columns=["arch", "k", "mean", "half", "n"])

