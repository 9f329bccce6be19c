"""The analysis tables a report is drawn from, computed from the stored tables with pandas: the
study-level summary over seeds, the per-sequence scores of predictions.parquet (or, for studies
collected before it, the (seed, phase, family) cells) and the comparisons on them with their
verdicts (pairs, best / top group, per-family winners, rank stability across search replicates),
lag recall, memory-decay reach, the accuracy–size Pareto front and the mutual-learning effect, each
on one test split (iid_unseen unless named). `bench.report.numbers.compute` gathers them.

Verdict rules: a pair is "<a> ahead" where its Holm-adjusted hierarchical p-value is below ALPHA,
"equivalent" where the Holm-adjusted TOST p-value at the equivalence margin is, else "not
separable"; "best" is the leader only where it is ahead of every other architecture, else the top
group (the leader and every architecture it is not ahead of); a family has a winner only on the
same rule within the family. E.g. leader 71 %, runner-up 70 % with p_holm 0.3: top group of two."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench.report.load import ALL, PRIMARY, split_rows
from bench.report.stats import ALPHA, RESAMPLES, hierarchical_ci, holm, mean_ci, paired, sign_test

REMEMBER = 0.10  # "remembers up to k": the decay curve is still above this fraction of its first value
RECALL = 0.5  # "recalls lag k": accuracy on the predictable positions at least this
LAG = re.compile(r"lag_(\d+)$")
MARGIN = 0.01  # the default equivalence margin (config `equivalence_margin`): 1 pp of accuracy
SIZE_COLUMNS = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")


def study_level(results: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, seed, split, length, metric) the score over a whole test split (phase <NA>, family
    'all', position <NA>), the mean over search replicates where there are several: a seed is the
    unit of a Student-t interval, never a (replicate, seed) pair (the hierarchical intervals of
    `bench.report.stats` carry the replicates' share)."""
    top = results[results["phase"].isna() & (results["family"] == ALL) & results["position"].isna()]
    keys = ["arch", "seed", "split", "length", "metric"]
    return top.groupby(keys, as_index=False, sort=False, dropna=False)["value"].mean()[[*keys, "value"]]


def summarize(per_seed: pd.DataFrame, keys: tuple[str, ...] = ("arch", "metric")) -> pd.DataFrame:
    """`keys`, mean, half (95 % Student-t half-width over seeds; NaN for one seed), n."""
    rows = [(*k, *mean_ci(g["value"])) for k, g in per_seed.groupby(list(keys))]
    return pd.DataFrame(rows, columns=[*keys, "mean", "half", "n"])


def family_cells(results: pd.DataFrame, metric: str = "accuracy", split: str = PRIMARY) -> pd.DataFrame:
    """Per (arch, seed, phase, family) a family's score over all positions on one split (the mean over
    search replicates where there are several): the cells of the per-family tables, and the fallback
    unit of the comparisons for studies without predictions.parquet."""
    rows = split_rows(results, split)
    rows = rows[rows["phase"].notna() & (rows["family"] != ALL) & rows["position"].isna() & (rows["metric"] == metric)]
    keys = ["arch", "seed", "phase", "family"]
    return rows.groupby(keys, as_index=False, sort=False)["value"].mean()[[*keys, "value"]]


def sequence_scores(predictions: pd.DataFrame, split: str, metric: str = "correct",
                    stage: str = "final") -> pd.DataFrame:
    """arch, replicate, seed, family, sequence, value: per (arch, replicate, seed, family, sequence)
    the mean over positions of `metric` (correct: accuracy) on one split of predictions.parquet, the
    unit of the hierarchical statistics (`bench.report.stats`). A sequence is identified by its id and
    its length (ids are unique within a length); `n` is its number of scored positions, which weighs
    its family as the headline's pooling over predictions does (a lag_1 sequence of length 128 scores
    127 positions, a lag_64 one 64). E.g. a sequence of 7 scored positions, 5 right: 0.714, n 7."""
    p = predictions[(predictions["split"] == split) & (predictions["stage"] == stage)]
    p = p if "replicate" in p else p.assign(replicate=0)
    key = p["sequence"].astype("int64") + p["length"].astype("int64") * (1 << 32)
    return p.assign(sequence=key, value=p[metric].astype(float)).groupby(
        ["arch", "replicate", "seed", "family", "sequence"], as_index=False, observed=True).agg(
        value=("value", "mean"), n=("value", "size"))


def cell_scores(cells: pd.DataFrame) -> pd.DataFrame:
    """The fallback without predictions.parquet: each (phase, family) cell of `family_cells` is its
    own stratum (families are fixed, not sampled) holding one 'sequence', so the crossed construction
    reduces to a Student-t over the seeds' (equally) cell-weighted means: the unit is the seed, never
    the cell (27 cells of 3 seeds are 3 observations), and the sequences' share of the variance cannot
    be estimated (the report says so)."""
    c = cells if "replicate" in cells else cells.assign(replicate=0)
    return c.assign(family=c["phase"].astype(str) + "/" + c["family"].astype(str), sequence=0)[
        ["arch", "replicate", "seed", "family", "sequence", "value"]]


PAIR_COLUMNS = ["a", "b", "seeds", "replicates", "sequences", "diff", "lo", "hi", "df", "p", "p_tost", "wins",
                "losses", "p_sign"]


def paired_comparisons(scores: pd.DataFrame, archs: list[str], margin: float = MARGIN,
                       resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every pair (a, b) of `archs` on the per-sequence scores both have (`sequence_scores`, or
    `cell_scores` as the fallback): difference a − b, its hierarchical 95 % interval (lo, hi; NaN
    below 3 seeds), Satterthwaite df, p (two-sided), p_tost (equivalence within ±margin), each
    Holm-adjusted over the pairs (p_holm, p_tost_holm), `significant`/`separable` (p_holm < ALPHA),
    `equivalent` (p_tost_holm < ALPHA) and the pair's `verdict` ("a ahead", "b ahead", "equivalent",
    "not separable"). wins/losses/p_sign: the sign test over (seed, sequence) differences, a
    robustness column only (it ignores the crossed structure)."""
    by = {a: g for a, g in scores.groupby("arch", observed=True)}
    rows = []
    for i, a in enumerate(archs):
        for b in archs[i + 1:]:
            if a not in by or b not in by:
                continue
            est, p_tost = paired(by[a], by[b], margin, resamples=resamples)
            if not est.sequences:
                continue
            keys = [k for k in ("replicate", "seed", "family", "sequence") if k in by[a] and k in by[b]]
            d = by[a].merge(by[b], on=keys)
            d = (d["value_x"] - d["value_y"]).to_numpy()
            wins, losses = int((d > 0).sum()), int((d < 0).sum())
            rows.append([a, b, est.seeds, est.replicates, est.sequences, est.mean, est.lo, est.hi, est.df, est.p,
                         p_tost, wins, losses, sign_test(wins, losses)])
    table = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    table["p_holm"] = holm(table["p"].tolist())
    table["p_tost_holm"] = holm(table["p_tost"].tolist())
    table["significant"] = table["separable"] = table["p_holm"] < ALPHA
    table["equivalent"] = table["p_tost_holm"] < ALPHA
    table["verdict"] = [pair_verdict(r) for r in table.itertuples()]
    return table


def pair_verdict(row: Any) -> str:
    """'<a> ahead' / '<b> ahead' where the Holm-adjusted test says so, else 'equivalent' where the
    Holm-adjusted TOST does, else 'not separable' (no interval: always 'not separable')."""
    if row.significant:
        return f"{row.a if row.diff > 0 else row.b} ahead"
    return "equivalent" if row.equivalent else "not separable"


def verdict(order: list[str], pairs: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(best, top group): `best` is the leader of `order` only where it is significantly ahead
    (`paired_comparisons`' Holm-adjusted test) of every other architecture; otherwise None, and the
    top group is the leader with every architecture it is not significantly ahead of (no shared
    sequences: not separable); a lone architecture is never 'best'. E.g. order [a, b, c] with only
    a − c significant: (None, [a, b])."""
    if not order:
        return None, []
    leader, group = order[0], [order[0]]
    ahead = {(r.b if r.a == leader else r.a) for r in pairs.itertuples()
             if leader in (r.a, r.b) and r.separable and (r.diff > 0) == (r.a == leader)}
    group += [a for a in order[1:] if a not in ahead]
    return (leader if len(group) == 1 < len(order) else None), group


def family_winners(scores: pd.DataFrame, archs: list[str], margin: float = MARGIN,
                   resamples: int = RESAMPLES) -> pd.DataFrame:
    """family, leader (highest mean), winner (the leader where it is significantly ahead of every
    other architecture on that family, Holm over the family's pairs; else None), group (the
    leader's top group, comma-joined). Ties are not wins: e.g. 0.71 vs 0.70 on 3 seeds: no winner."""
    rows = []
    for family, g in scores.groupby("family", sort=False):
        means = g.groupby("arch", observed=True)["value"].mean()
        order = sorted((a for a in archs if a in means.index), key=lambda a: (-means[a], a))
        if not order:
            continue
        best, group = verdict(order, paired_comparisons(g, order, margin, resamples))
        rows.append((family, order[0], best, ", ".join(group)))
    return pd.DataFrame(rows, columns=["family", "leader", "winner", "group"])


def rank_stability(scores: pd.DataFrame, archs: list[str], margin: float = MARGIN,
                   resamples: int = RESAMPLES) -> pd.DataFrame:
    """Per (arch, replicate): the replicate's mean score, the arch's rank in it (1 = highest) and
    whether it is in that replicate's top group (`verdict` on the replicate's own paired tests, its
    seeds the units); `share_top` per arch: the share of replicates whose top group holds it. E.g.
    ranks 1, 2, 1 over three replicates, always in the top group: share_top 1.0."""
    rows = []
    for replicate, g in scores.groupby("replicate"):
        means = g.groupby("arch", observed=True)["value"].mean()
        order = sorted((a for a in archs if a in means.index), key=lambda a: (-means[a], a))
        _, top = verdict(order, paired_comparisons(g, order, margin, resamples))
        rows += [(a, int(replicate), float(means[a]), rank, a in top) for rank, a in enumerate(order, 1)]
    table = pd.DataFrame(rows, columns=["arch", "replicate", "mean", "rank", "top"])
    return table.assign(share_top=table.groupby("arch", observed=True)["top"].transform("mean"))


def mutual_effect(results: pd.DataFrame, mutual: pd.DataFrame, resamples: int = RESAMPLES,
                  predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per architecture: iid_unseen accuracy trained alone (the final stage) and jointly (the mutual stage),
    and the gain joint − alone paired by seed (mean, 95 % Student-t half-width over seeds) and its
    p-value (Holm-corrected over architectures) from the hierarchical paired test of
    `bench.report.stats` on per-sequence scores where `predictions` holds both stages, else on the
    (seed, phase, family) cells (seed the unit). Both runs of a pair share the seed, hence the data
    stream, initialisation and test sequences."""
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
        p = _mutual_p(arch, c.assign(value=d), predictions, resamples) if len(d) else float("nan")
        rows.append({"arch": arch, "alone": float(a[seeds].mean()), "alone_half": mean_ci(a[seeds])[1],
                     "joint": float(j[seeds].mean()), "joint_half": mean_ci(j[seeds])[1], "gain": gain,
                     "half": half, "seeds": n, "cells": len(d), "wins": int((d > 0).sum()),
                     "losses": int((d < 0).sum()), "p": p})
    table = pd.DataFrame(rows, columns=["arch", "alone", "alone_half", "joint", "joint_half", "gain", "half", "seeds",
                                        "cells", "wins", "losses", "p"])
    table["p_holm"] = holm(table["p"].tolist())
    table["significant"] = table["p_holm"] < ALPHA
    return table


def _mutual_p(arch: str, cells: pd.DataFrame, predictions: pd.DataFrame | None, resamples: int) -> float:
    """The p-value of joint − alone: on per-sequence scores of both stages where stored, else on cells."""
    if predictions is not None and (predictions["stage"] == "mutual").any():
        own = predictions[predictions["arch"] == arch]
        joint, alone = (sequence_scores(own, PRIMARY, stage=st) for st in ("mutual", "final"))
        if len(joint) and len(alone):
            return paired(joint, alone, margin=MARGIN, resamples=resamples)[0].p
    return hierarchical_ci(cell_scores(cells), resamples=resamples).p


def mutual_verdict(row: Any) -> str:
    """'helps', 'hurts' or 'no detectable effect', from the Holm-corrected hierarchical paired test
    (`mutual_effect`)."""
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
    """Per arch the largest probed k such that the (mean) curve is at or above `fraction` of its value
    at its smallest k for EVERY probed k' <= k: the first dip below ends the reach, a later recovery
    does not extend it (a curve that is noise far back, or an LSTM whose lag recall is 1, does not
    "reach" the end of the sequence). Example, fraction 0.1: values 1.0, 0.5, 0.05, 0.4 at k = 1, 2,
    3, 4 reach k = 2. Architectures whose first value is not positive (or NaN) are left out."""
    reach = {}
    for arch, c in curves[curves["variant"] == variant].groupby("arch"):
        c = c.sort_values("k")
        first = float(c["value"].iloc[0])
        if first > 0:
            above = (c["value"] >= fraction * first).cummin()  # True up to the first dip (NaN counts as one)
            reach[str(arch)] = int(c.loc[above, "k"].max())
    return reach


def pareto_front(points: pd.DataFrame) -> list[str]:
    """Architectures no other one beats with fewer (or equal) parameters: arch, num_params, mean."""
    front, best = [], -math.inf
    for _, p in points.sort_values(["num_params", "mean"], ascending=[True, False]).iterrows():
        if p["mean"] > best:
            front.append(p["arch"])
            best = p["mean"]
    return front
