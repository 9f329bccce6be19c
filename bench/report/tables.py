"""The analysis tables a report is drawn from, computed from the stored tables with pandas: the
study-level summary over seeds, the paired (seed, phase, family) cells and the comparisons on them,
lag recall, memory-decay reach, the accuracy–size Pareto front and the mutual-learning effect, each
on one test split (iid_unseen unless named). `bench.report.numbers.compute` gathers them."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench.report.load import ALL, PRIMARY, split_rows
from bench.report.stats import ALPHA, RESAMPLES, holm, mean_ci, paired_bootstrap, sign_test

REMEMBER = 0.10  # "remembers up to k": the decay curve is still above this fraction of its first value
RECALL = 0.5  # "recalls lag k": accuracy on the predictable positions at least this
LAG = re.compile(r"lag_(\d+)$")
SIZE_COLUMNS = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")


def study_level(results: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, seed, split, length, metric) the score over a whole test split (phase <NA>, family
    'all', position <NA>)."""
    top = results[results["phase"].isna() & (results["family"] == ALL) & results["position"].isna()]
    return top[["arch", "seed", "split", "length", "metric", "value"]].reset_index(drop=True)


def summarize(per_seed: pd.DataFrame, keys: tuple[str, ...] = ("arch", "metric")) -> pd.DataFrame:
    """`keys`, mean, half (95 % Student-t half-width over seeds; NaN for one seed), n."""
    rows = [(*k, *mean_ci(g["value"])) for k, g in per_seed.groupby(list(keys))]
    return pd.DataFrame(rows, columns=[*keys, "mean", "half", "n"])


def family_cells(results: pd.DataFrame, metric: str = "accuracy", split: str = PRIMARY) -> pd.DataFrame:
    """Per (arch, seed, phase, family) a family's score over all positions on one split: the paired cells."""
    rows = split_rows(results, split)
    rows = rows[rows["phase"].notna() & (rows["family"] != ALL) & rows["position"].isna() & (rows["metric"] == metric)]
    return rows[["arch", "seed", "phase", "family", "value"]].reset_index(drop=True)


def paired_comparisons(cells: pd.DataFrame, archs: list[str], resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every pair (a, b) of `archs` on the (seed, phase, family) cells both have: mean difference a − b,
    its 95 % bootstrap interval, wins/ties/losses, bootstrap and sign-test p-values, each Holm-adjusted
    over the pairs (p_holm, p_sign_holm), `significant` (bootstrap-Holm below ALPHA) and `separable`
    (the conservative verdict: both Holm-adjusted tests below ALPHA). Each cell is the same test
    sequences for both (the test set is fixed; seed s gives both the same training stream)."""
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
    table = _holm_columns(pd.DataFrame(rows, columns=["a", "b", "cells", "diff", "lo", "hi", "wins", "ties", "losses",
                                                      "p_boot", "p_sign"]))
    table["p_sign_holm"] = holm(table["p_sign"].tolist()) if len(table) else []
    table["separable"] = table["significant"] & (table["p_sign_holm"] < ALPHA)
    return table


def verdict(order: list[str], pairs: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(best, top group): `best` is the leader of `order` only where it is separably ahead
    (`paired_comparisons`' conservative test) of every other architecture; otherwise None, and the
    top group is the leader with every architecture it is not separably ahead of (no shared cells:
    not separable); a lone architecture is never 'best'. E.g. order [a, b, c] with only a − c
    separable: (None, [a, b])."""
    if not order:
        return None, []
    leader, group = order[0], [order[0]]
    ahead = {(r.b if r.a == leader else r.a) for r in pairs.itertuples()
             if leader in (r.a, r.b) and r.separable and (r.diff > 0) == (r.a == leader)}
    group += [a for a in order[1:] if a not in ahead]
    return (leader if len(group) == 1 < len(order) else None), group


def _holm_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Add p_holm (Holm over the table's rows) and significant (p_holm < ALPHA)."""
    table["p_holm"] = holm(table["p_boot"].tolist()) if len(table) else []
    table["significant"] = table["p_holm"] < ALPHA
    return table


def mutual_effect(results: pd.DataFrame, mutual: pd.DataFrame, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Per architecture: iid_unseen accuracy trained alone (the final stage) and jointly (the mutual stage),
    and the gain joint − alone paired by seed (mean, 95 % Student-t half-width over seeds) and by
    (seed, phase, family) cell (paired bootstrap p-value, Holm-corrected over architectures). Both
    runs of a pair share the seed, hence the data stream, initialisation and test sequences."""
    alone, joint = study_level(split_rows(results, PRIMARY)), study_level(split_rows(mutual, PRIMARY))
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
    """Accuracy per (arch, seed, k) on the lag_k families over the predictable positions only, on the
    iid_unseen split (a lag study's sequences at length 128 are almost never drawn in training).

    Position p predicts x[p+1], and x_t = x_{t-k} is determined only for t >= k, so only positions
    p >= k - 1 count; positions are pooled weighted by their number of predictions n.
    """
    rows = split_rows(results, PRIMARY)
    rows = rows[(rows["metric"] == "accuracy") & rows["position"].notna() & rows["phase"].notna()]
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
