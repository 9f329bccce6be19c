"""Everything a report is drawn from, computed once from the stored tables (`compute` -> `Numbers`):
the per-split summaries, the scores against the ceiling (`bench.report.against`), the paired
comparisons on iid_unseen and on ood cells (`bench.report.tables`), the OEIS scores, and the CKA,
memory and mutual-learning tables. Rankings, comparisons and everything not about splits read
iid_unseen; ood is reported beside it, iid_seen never in a headline."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bench.report import against
from bench.report.cka import cka_floors, cka_means
from bench.report.importance import param_importances
from bench.report.load import BASELINES, CEILING, PRIMARY, Stored, family_order, is_baseline
from bench.report.oeis import oeis_scores
from bench.report.stats import RESAMPLES, mean_ci
from bench.report.tables import (
    SIZE_COLUMNS,
    decay_means,
    family_cells,
    is_lag_study,
    lag_accuracy,
    mutual_effect,
    paired_comparisons,
    pareto_front,
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
    configs: pd.DataFrame  # per arch: sizes, lr, num_params (from its final runs)
    cells: pd.DataFrame  # paired (seed, phase, family) accuracy cells on iid_unseen
    pairs: pd.DataFrame  # paired_comparisons on iid_unseen cells
    pairs_ood: pd.DataFrame  # paired_comparisons on ood cells
    best: str | None  # the architecture separably ahead of every other on iid_unseen, if any
    top: list[str]  # the leader and every architecture it is not separably ahead of
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
    ok = s.runs[s.runs["status"] == "ok"] if "status" in s.runs else s.runs
    configs = ok.groupby("arch")[[c for c in (*SIZE_COLUMNS, "num_params") if c in ok]].first()
    cells = family_cells(s.results)
    family_acc = {sp: _ordered(family_cells(s.results, split=sp).pivot_table(
        index="arch", columns="family", values="value", aggfunc="mean"), order, s.family_names)
        for sp in (PRIMARY, "ood")}
    families = family_acc[PRIMARY]
    points = summary[(summary.metric == "accuracy") & summary.arch.isin(order)].merge(
        configs["num_params"].reset_index(), on="arch") if "num_params" in configs else pd.DataFrame()
    importances, notes = param_importances(s, order, storage_url or s.storage_url)
    pairs = paired_comparisons(cells, order, resamples)
    best, top = verdict(order, pairs)
    identifiable = against.identifiable_cells(s.ceiling, s.setting("data.length"))
    has_cka = s.cka is not None and len(s.cka)
    mutual = s.mutual is not None and len(s.mutual) and "split" in s.mutual
    return Numbers(order=order, summary=summary, by_split=by_split, ratios=against.ceiling_ratios(s.results),
                   tokens=against.tokens_to_ceiling(s.history, s.ceiling, s.runs), configs=configs, cells=cells,
                   pairs=pairs, pairs_ood=paired_comparisons(family_cells(s.results, split="ood"), order, resamples),
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
                   mutual=mutual_effect(s.results, s.mutual, resamples) if mutual else None)


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
