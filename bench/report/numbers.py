"""Everything a report is drawn from, computed once from the stored tables (`compute` -> `Numbers`):
the per-split summaries, the scores against the ceiling (`bench.report.against`), the paired
comparisons on iid_unseen and on ood (`bench.report.tables`: per-sequence scores of
predictions.parquet where stored, else cells; `unit` says which), the hierarchical intervals, seed
points, per-family winners and rank stability across search replicates, the OEIS scores, and the
CKA, memory and mutual-learning tables. Rankings, comparisons and everything not about splits read
iid_unseen; ood is reported beside it, iid_seen never in a headline. With predictions stored, the
accuracy intervals on iid_unseen and ood in `summary`/`by_split` are the hierarchical ones (seeds,
search replicates and sequences), every other interval a Student-t over seeds of the
replicate-averaged score."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report import against
from bench.report.cka import cka_floors, cka_means
from bench.report.importance import param_importances
from bench.report.load import BASELINES, CEILING, PRIMARY, Stored, family_order, is_baseline
from bench.report.oeis import oeis_scores
from bench.report.stats import RESAMPLES, hierarchical_ci, mean_ci
from bench.report.tables import (
    MARGIN,
    SIZE_COLUMNS,
    cell_scores,
    decay_means,
    family_cells,
    family_winners,
    is_lag_study,
    lag_accuracy,
    mutual_effect,
    paired_comparisons,
    pareto_front,
    rank_stability,
    sequence_scores,
    study_level,
    summarize,
    verdict,
)


@dataclass
class Numbers:
    """Everything the sections, figures and findings are drawn from."""

    order: list[str]  # architectures by mean iid_unseen accuracy, best first
    summary: pd.DataFrame  # arch, metric, mean, half, n on iid_unseen (architectures, baselines, ceiling)
    by_split: pd.DataFrame  # arch, split, length, metric, mean, half, n: every split and length
    ratios: pd.DataFrame  # arch, split, mean, half, n of accuracy / ceiling (iid_unseen and ood)
    tokens: pd.DataFrame  # arch, seed, fraction, tokens to reach the fraction of the validation ceiling
    configs: pd.DataFrame  # per arch: sizes, lr, num_params (from its final runs; replicate 0's)
    cells: pd.DataFrame  # paired (seed, phase, family) accuracy cells on iid_unseen
    pairs: pd.DataFrame  # paired_comparisons on iid_unseen (per-sequence scores, else cells: `unit`)
    pairs_ood: pd.DataFrame  # paired_comparisons on ood
    best: str | None  # the architecture significantly ahead of every other on iid_unseen, if any
    top: list[str]  # the leader and every architecture it is not significantly ahead of
    families: pd.DataFrame  # arch x family mean iid_unseen accuracy (baselines and ceiling last)
    family_acc: dict[str, pd.DataFrame]  # split -> arch x family mean accuracy (iid_unseen: `families`)
    family_ratio: dict[str, pd.DataFrame]  # split -> arch x family accuracy / ceiling
    below: dict[str, pd.DataFrame]  # split -> below_baselines flags
    identifiable: pd.DataFrame  # arch, mean, half, n on the identifiable positions
    identifiable_cells: pd.DataFrame  # family, position where the mixture ceiling is 100 %
    oeis: pd.DataFrame | None  # oeis_scores
    lag: pd.DataFrame | None  # arch, k, mean, half, n (lag studies)
    decay: pd.DataFrame | None  # mean decay curves
    points: pd.DataFrame  # arch, num_params, mean, half (final runs, iid_unseen)
    front: list[str]
    importances: dict[str, dict[str, float]]
    importance_notes: list[str]
    cka: pd.DataFrame | None = None  # cka_means: layer × layer similarity, mean over seeds
    cka_floor: dict[str, float] | None = None  # cka_floors: what unrelated representations score
    mutual: pd.DataFrame | None = None  # mutual_effect: joint vs alone per architecture (iid_unseen)
    # per (arch, replicate) the same columns as `configs`, where the replicates chose differently
    replicate_configs: pd.DataFrame | None = None
    # the statistics' unit: "predictions" (per-sequence scores of predictions.parquet) or "cells" (the
    # (seed, phase, family) cells of results.parquet: studies collected before predictions were stored)
    unit: str = "cells"
    margin: float = MARGIN  # the TOST equivalence margin (config `equivalence_margin`), accuracy fraction
    intervals: pd.DataFrame | None = None  # arch, split, mean, lo, hi, half, df, seeds, replicates, sequences
    seed_points: pd.DataFrame | None = None  # arch, split, replicate, seed, value: each unit's accuracy
    winners: dict[str, pd.DataFrame] | None = None  # split -> family_winners (iid_unseen, ood)
    ranks: pd.DataFrame | None = None  # rank_stability on iid_unseen (studies with more than one replicate)


def reference_order(index: pd.Index | list[str]) -> list[str]:
    """The baselines in the report's order, then the ceiling: those present in `index`."""
    return [b for b in (*BASELINES, CEILING) if b in set(index)]


def compute(s: Stored, storage_url: str | None = None, resamples: int = RESAMPLES) -> Numbers:
    """Every table of the report; importances from the Optuna storage at `storage_url` (default: the study's)."""
    by_split = summarize(study_level(s.results), ("arch", "split", "length", "metric"))
    summary = by_split[by_split.split == PRIMARY].drop(columns=["split", "length"]).reset_index(drop=True)
    acc = summary[summary.metric == "accuracy"].set_index("arch")["mean"]
    archs = [a for a in s.results["arch"].unique() if not is_baseline(a)]
    order = sorted(archs, key=lambda a: (-acc.get(a, -1.0), a))
    margin = float(s.setting("equivalence_margin", MARGIN))
    unit, scores = _scores(s)
    hierarchical = _hierarchical(scores, order, margin, resamples)
    hierarchical["winners"] = {sp: w.set_index("family").loc[family_order(w["family"], s.family_names)].reset_index()
                               for sp, w in hierarchical["winners"].items()}
    if unit == "predictions":
        by_split = _hierarchical_halves(by_split, hierarchical["intervals"])
        summary = by_split[by_split.split == PRIMARY].drop(columns=["split", "length"]).reset_index(drop=True)
    ok = s.runs[s.runs["status"] == "ok"] if "status" in s.runs else s.runs
    columns = [c for c in (*SIZE_COLUMNS, "num_params") if c in ok]
    configs = ok.sort_values("replicate").groupby("arch")[columns].first() if "replicate" in ok \
        else ok.groupby("arch")[columns].first()
    by_rep = ok.groupby(["arch", "replicate"])[columns].first() if "replicate" in ok else None
    differ = by_rep is not None and (by_rep.groupby(level="arch").nunique(dropna=True) > 1).any().any()
    cells = family_cells(s.results)
    family_acc = {sp: _ordered(family_cells(s.results, split=sp).pivot_table(
        index="arch", columns="family", values="value", aggfunc="mean"), order, s.family_names)
        for sp in (PRIMARY, "ood")}
    families = family_acc[PRIMARY]
    points = summary[(summary.metric == "accuracy") & summary.arch.isin(order)].merge(
        configs["num_params"].reset_index(), on="arch") if "num_params" in configs else pd.DataFrame()
    importances, notes = param_importances(s, order, storage_url or s.storage_url)
    pairs = paired_comparisons(scores[PRIMARY], order, margin, resamples)
    best, top = verdict(order, pairs)
    identifiable = against.identifiable_cells(s.ceiling, s.setting("data.length"))
    has_cka = s.cka is not None and len(s.cka)
    mutual = s.mutual is not None and len(s.mutual) and "split" in s.mutual
    return Numbers(order=order, summary=summary, by_split=by_split,
                   ratios=_ratio_halves(against.ceiling_ratios(s.results), by_split, unit),
                   tokens=against.tokens_to_ceiling(s.history, s.ceiling, s.runs), configs=configs, cells=cells,
                   replicate_configs=by_rep if differ else None,
                   pairs=pairs, pairs_ood=paired_comparisons(scores["ood"], order, margin, resamples),
                   best=best, top=top, families=families, family_acc=family_acc,
                   family_ratio={sp: _ordered(against.family_ratios(s.results, sp), order, s.family_names)
                                  for sp in (PRIMARY, "ood")},
                   below={sp: _by_family(against.below_baselines(s.results, order, sp, s.splits), order,
                                           s.family_names)
                          for sp in (PRIMARY, "ood")},
                   identifiable=against.identifiable_accuracy(s.results, identifiable),
                   identifiable_cells=identifiable, oeis=oeis_scores(s.oeis) if s.oeis is not None else None,
                   lag=_lag_table(s.results), decay=decay_means(s.decay) if s.decay is not None and len(s.decay)
                   else None, points=points, front=pareto_front(points) if len(points) else [],
                   importances=importances, importance_notes=notes,
                   cka=cka_means(s.cka) if has_cka else None,
                   cka_floor=cka_floors(s.cka, s.cka_floor, configs) if has_cka else None,
                   mutual=mutual_effect(s.results, s.mutual, resamples, s.predictions) if mutual else None,
                   unit=unit, margin=margin, **hierarchical)


def _scores(s: Stored) -> tuple[str, dict[str, pd.DataFrame]]:
    """The statistics' unit and, per split (iid_unseen, ood), the scores the comparisons read:
    per-sequence scores from predictions.parquet, else (older studies) the cells of results.parquet."""
    if s.predictions is not None and len(s.predictions):
        return "predictions", {sp: sequence_scores(s.predictions, sp) for sp in (PRIMARY, "ood")}
    return "cells", {sp: cell_scores(family_cells(s.results, split=sp)) for sp in (PRIMARY, "ood")}


def _ratio_halves(ratios: pd.DataFrame, by_split: pd.DataFrame, unit: str) -> pd.DataFrame:
    """accuracy / ceiling with the same sources of variance as the accuracy beside it: where the
    accuracy's interval is hierarchical (`unit` predictions), the ratio's half-width is the accuracy's
    over the split's ceiling (the ceiling is a fixed function of the test sequences, the same for
    every seed and replicate); otherwise the per-seed Student-t interval stays."""
    if unit != "predictions":
        return ratios
    acc = by_split[(by_split.metric == "accuracy") & by_split.split.isin(ratios["split"].unique())]
    half = acc.set_index(["arch", "split"])["half"]
    ceiling = acc[acc.arch == CEILING].set_index("split")["mean"]
    out = ratios.copy()
    for i, r in out.iterrows():
        if (r.arch, r.split) in half.index and r.split in ceiling.index and not is_baseline(r.arch):
            out.loc[i, "half"] = half[(r.arch, r.split)] / ceiling[r.split]
    return out


def _hierarchical_halves(by_split: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """by_split with the accuracy's half-width on iid_unseen and ood replaced by the hierarchical one
    (seeds, replicates and sequences), kept centred on the headline mean (every seed's own unseen
    sequences; the hierarchical mean reads the sequences every seed has, a few tenths of a pp away).
    Below 3 seeds both are NaN."""
    half = intervals.set_index(["arch", "split"])["half"]
    keys = pd.MultiIndex.from_arrays([by_split["arch"], by_split["split"]])
    hit = (by_split["metric"] == "accuracy").to_numpy() & keys.isin(half.index)
    out = by_split.copy()
    out.loc[hit, "half"] = half.reindex(keys[hit]).to_numpy()
    return out


def _hierarchical(scores: dict[str, pd.DataFrame], order: list[str], margin: float,
                  resamples: int) -> dict[str, object]:
    """Numbers' hierarchical fields: per (arch, split) the interval of the accuracy and each unit's
    point, per split the family winners, and (several replicates) the rank stability."""
    rows, points = [], []
    for sp, sc in scores.items():
        for arch in order:
            g = sc[sc["arch"] == arch]
            if not len(g):
                continue
            est = hierarchical_ci(g, resamples=resamples)
            rows.append((arch, sp, est.mean, est.lo, est.hi, est.half, est.df, est.seeds, est.replicates,
                         est.sequences))
            per_family = g.groupby(["replicate", "seed", "family"])["value"].agg(["mean", "size"]).reset_index()
            unit = per_family.groupby(["replicate", "seed"]).apply(
                lambda u: float((u["mean"] * u["size"]).sum() / u["size"].sum()), include_groups=False)
            points += [(arch, sp, int(r), int(sd), v) for (r, sd), v in unit.items()]
    families = {sp: sc for sp, sc in scores.items() if sc["sequence"].nunique() > 1}  # cells: no winners
    replicated = scores[PRIMARY]["replicate"].nunique() > 1 if len(scores[PRIMARY]) else False
    return {"intervals": pd.DataFrame(rows, columns=["arch", "split", "mean", "lo", "hi", "half", "df", "seeds",
                                                     "replicates", "sequences"]),
            "seed_points": pd.DataFrame(points, columns=["arch", "split", "replicate", "seed", "value"]),
            "winners": {sp: family_winners(f, order, margin, resamples) for sp, f in families.items() if len(f)},
            "ranks": rank_stability(scores[PRIMARY], order, margin, resamples) if replicated else None}


def _ordered(matrix: pd.DataFrame, order: list[str], known: list[str]) -> pd.DataFrame:
    """Rows: architectures in `order`, then the baselines and the ceiling; columns in the test set's order."""
    return matrix.reindex(index=[*[a for a in order if a in matrix.index], *reference_order(matrix.index)],
                          columns=family_order(matrix.columns, known))


def _by_family(flags: pd.DataFrame, order: list[str], known: list[str]) -> pd.DataFrame:
    """`below_baselines` rows by architecture (in `order`), then family (in the test set's order)."""
    families = family_order(flags["family"].unique(), known)
    return flags.sort_values(["arch", "family"], key=lambda c: c.map(
        {a: i for i, a in enumerate(order if c.name == "arch" else families)})).reset_index(drop=True)


def _lag_table(results: pd.DataFrame) -> pd.DataFrame | None:
    """arch, k, mean, half, n of the lag recall over seeds; None for a study not made of lag_k families."""
    if not is_lag_study(results):
        return None
    per_seed = lag_accuracy(results)
    return pd.DataFrame([(a, k, *mean_ci(g["value"])) for (a, k), g in per_seed.groupby(["arch", "k"])],
                        columns=["arch", "k", "mean", "half", "n"])
