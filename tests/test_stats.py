"""bench.report.stats and the verdicts built on it: the crossed (seed x sequence) interval covers at
its nominal rate in seed-, sequence- and interaction-dominated regimes (and with search replicates),
a tied study never gets "best" and is "equivalent" within a margin, a clear winner does, Holm is
monotone, fewer than 3 seeds give no interval, per-family winners only where significant, and rank
stability across replicates. Predictions frames are made here with the columns of predictions.parquet."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.comparisons import section_pairs
from bench.report.findings import _oeis_models
from bench.report.numbers import _hierarchical, _scores
from bench.report.stats import crossed_variance, hierarchical_ci, holm, intervals_overlap, paired, sign_test, t_quantile
from bench.report.tables import family_winners, paired_comparisons, rank_stability, sequence_scores, verdict

SIMULATIONS = 400
REGIMES = {  # (seed sd, sequence sd, seed x sequence sd): which share of the variance dominates
    "seed": (1.0, 0.1, 0.3),
    "sequence": (0.1, 1.0, 0.3),
    "interaction": (0.1, 0.1, 1.0),
}


def _simulate(rng, sd_seed, sd_seq, sd_inter, seeds=5, families=3, per_family=100, replicates=1, sd_rep=0.0):
    """d[r, s, q] = a_s + rep_r + b_q + e_rsq with true mean 0, per family a (sims, R, N, M) block:
    seeds and sequences crossed (every seed scores every sequence), families fixed strata."""
    a = rng.normal(0, sd_seed, (SIMULATIONS, 1, seeds, 1))
    rep = rng.normal(0, sd_rep, (SIMULATIONS, replicates, 1, 1))
    return [a + rep + rng.normal(0, sd_seq, (SIMULATIONS, 1, 1, per_family))
            + rng.normal(0, sd_inter, (SIMULATIONS, replicates, seeds, per_family)) for _ in range(families)]


def _coverage(blocks, weights) -> float:
    mean, var, df = crossed_variance(blocks, np.asarray(weights, dtype=float), resamples=200)
    return float(np.mean(np.abs(mean) <= stats.t.ppf(0.975, df) * np.sqrt(var)))


@pytest.mark.parametrize("regime", list(REGIMES))
def test_interval_covers_at_its_nominal_rate(regime):
    rng = np.random.default_rng(list(REGIMES).index(regime))
    coverage = _coverage(_simulate(rng, *REGIMES[regime]), [1, 2, 3])
    assert 0.92 <= coverage <= 0.98, coverage


def test_interval_covers_with_search_replicates():
    """3 replicates x 5 seeds: a replicate effect shared by every seed and sequence of the replicate."""
    coverage = _coverage(_simulate(np.random.default_rng(9), 0.5, 0.5, 0.5, replicates=3, sd_rep=0.5), [1, 1, 1])
    assert 0.92 <= coverage <= 0.98, coverage


def test_the_naive_constructions_miss_the_nominal_rate():
    """Why the construction: seeds alone (sequences fixed) under-cover where sequences vary (86 % here)."""
    blocks = _simulate(np.random.default_rng(3), *REGIMES["sequence"])
    units = sum(b.mean(axis=-1) for b in blocks)[:, 0] / 3  # (sims, seeds)
    half = stats.t.ppf(0.975, 4) * units.std(axis=1, ddof=1) / np.sqrt(5)
    assert np.mean(np.abs(units.mean(axis=1)) <= half) < 0.9


def _frame(values: np.ndarray) -> pd.DataFrame:
    """values[s, q] as a KEYS frame, one family."""
    s, q = np.indices(values.shape)
    return pd.DataFrame({"seed": s.ravel(), "family": "f", "sequence": q.ravel(), "value": values.ravel()})


def test_worked_example_of_the_docstring():
    est = hierarchical_ci(_frame(np.array([[1.0, 2], [2, 3], [3, 4]])), resamples=50_000)
    assert est.mean == 2.5 and est.se**2 == pytest.approx(7 / 12, rel=0.03)
    assert est.df == pytest.approx(2.88, rel=0.05) and est.half == pytest.approx(2.49, rel=0.05)


def test_fewer_than_three_seeds_give_no_interval():
    est = hierarchical_ci(_frame(np.array([[0.5, 0.6, 0.7], [0.6, 0.7, 0.9]])))
    assert est.seeds == 2 and est.mean == pytest.approx(2 / 3)
    assert math.isnan(est.half) and math.isnan(est.p) and math.isnan(est.lo)


def test_pure_interaction_still_gets_an_interval():
    """Every seed right on one sequence, a different one each: seed means equal, sequence component
    negative; the residual's share keeps the interval open (it was 0 wide before the floor)."""
    est = hierarchical_ci(_frame(np.eye(3, 10)))
    assert est.mean == pytest.approx(0.1) and est.half > 0.05 and est.p > 0.05


def test_a_missing_interval_separates_nothing():
    assert intervals_overlap((0.5, math.nan, 2), (0.9, 0.01, 5)) and not intervals_overlap((0.5, 0.1, 3), (0.9, 0.1, 3))
    models = pd.DataFrame({"mean": [0.30, 0.10], "half": [math.nan, math.nan], "seeds": [2, 2]},
                          index=pd.Index(["transformer", "mamba"], name="arch"))
    assert "transformer and mamba are not separable (fewer than 3 seeds: no interval" in _oeis_models("taught", models)


def test_holm_is_monotone_and_above_the_raw_p():
    raw = list(np.random.default_rng(0).uniform(0, 0.2, 12)) + [math.nan]
    adjusted = holm(raw)
    ordered = [adjusted[i] for i in np.argsort(raw[:-1])]
    assert ordered == sorted(ordered) and all(a >= p for a, p in zip(adjusted, raw[:-1], strict=False))
    assert math.isnan(adjusted[-1]) and holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_scipy_backs_the_quantile_and_the_sign_test():
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-4) and t_quantile(4.5) > t_quantile(5)
    assert sign_test(6, 0) == pytest.approx(2 / 64) and sign_test(3, 3) == 1.0


# ---------------------------------------------------------------- verdicts on predictions frames

LENGTH, PER_FAMILY, FAMILIES = 9, 40, ("lag_1", "lag_2", "count")


def predictions(rates: dict[str, float], seeds=(0, 1, 2, 3, 4), replicates=(0,), noise=0.1, seed=0) -> pd.DataFrame:
    """A predictions.parquet frame (the columns of common4): every arch scores the same sequences on
    iid_unseen; position p of sequence q is right iff a shared per-(seed, sequence, position) draw is
    below the arch's rate plus a seed effect, then a fraction `noise` of the arch's positions flipped
    independently: two archs of one rate are tied up to that noise."""
    rng = np.random.default_rng(seed)
    n = len(FAMILIES) * PER_FAMILY * (LENGTH - 1)
    frames = []
    for r in replicates:
        for s in seeds:
            draw = rng.uniform(size=n) + rng.normal(0, 0.03)
            for arch, rate in rates.items():
                right = (draw < rate) ^ (rng.uniform(size=n) < noise)
                q = np.repeat(np.arange(len(FAMILIES) * PER_FAMILY), LENGTH - 1)
                frames.append(pd.DataFrame({
                    "run": f"{arch}-seed{s}", "study": "t", "stage": "final", "arch": arch, "seed": s,
                    "replicate": r, "split": "iid_unseen", "length": LENGTH, "phase": 1,
                    "family": np.asarray(FAMILIES)[q // PER_FAMILY], "sequence": q.astype("int64"),
                    "position": np.tile(np.arange(LENGTH - 1), len(FAMILIES) * PER_FAMILY).astype("int16"),
                    "correct": right, "distance": (~right).astype("int16"),
                    "loss": np.where(right, 0.1, 2.0).astype("float32")}))
    return pd.concat(frames, ignore_index=True)


def _order(scores: pd.DataFrame) -> list[str]:
    means = scores.groupby("arch")["value"].mean()
    return sorted(means.index, key=lambda a: (-means[a], a))


def test_sequence_scores_are_per_sequence_means_over_positions():
    p = predictions({"a": 0.6}, seeds=(0,))
    scores = sequence_scores(p, "iid_unseen")
    assert len(scores) == len(FAMILIES) * PER_FAMILY
    assert scores["value"].mean() == pytest.approx(p["correct"].mean())


@pytest.mark.parametrize("study", range(5))
def test_a_tied_study_never_gets_best_and_is_equivalent_when_the_margin_allows(study):
    scores = sequence_scores(predictions({"a": 0.6, "b": 0.6, "c": 0.6}, seed=study), "iid_unseen")
    order = _order(scores)
    pairs = paired_comparisons(scores, order, margin=0.05, resamples=500)
    best, top = verdict(order, pairs)
    assert best is None and sorted(top) == ["a", "b", "c"]
    assert (pairs["verdict"] == "equivalent").all()
    tight = paired_comparisons(scores, order, margin=0.001, resamples=500)
    assert not tight["equivalent"].any() and verdict(order, tight)[0] is None


def test_a_clear_winner_is_best():
    scores = sequence_scores(predictions({"a": 0.8, "b": 0.6, "c": 0.55}), "iid_unseen")
    order = _order(scores)
    pairs = paired_comparisons(scores, order, resamples=500)
    assert verdict(order, pairs) == ("a", ["a"])
    assert set(pairs.loc[pairs.a == "a", "verdict"]) == {"a ahead"} and (pairs["lo"] < pairs["diff"]).all()


def test_pairs_of_two_seeds_have_no_interval_and_no_verdict():
    scores = sequence_scores(predictions({"a": 0.9, "b": 0.3}, seeds=(0, 1)), "iid_unseen")
    pairs = paired_comparisons(scores, ["a", "b"], resamples=200)
    assert pairs["lo"].isna().all() and pairs["verdict"].tolist() == ["not separable"]
    assert verdict(["a", "b"], pairs) == (None, ["a", "b"])


def test_family_winners_only_where_significant():
    """a beats b clearly on lag_1 only; elsewhere they are the same predictor: no winner there."""
    p = predictions({"a": 0.6, "b": 0.6})
    better = (p["arch"] == "a") & (p["family"] == "lag_1")
    p.loc[better, "correct"] = p.loc[better, "correct"] | (np.arange(better.sum()) % 2 == 0)
    w = family_winners(sequence_scores(p, "iid_unseen"), ["a", "b"], resamples=300).set_index("family")
    assert w.loc["lag_1", "winner"] == "a"
    assert w.loc[["lag_2", "count"], "winner"].isna().all()


def test_rank_stability_across_replicates():
    p = predictions({"a": 0.8, "b": 0.5, "c": 0.5}, replicates=(0, 1))
    ranks = rank_stability(sequence_scores(p, "iid_unseen"), ["a", "b", "c"], resamples=200)
    a = ranks[ranks.arch == "a"]
    assert sorted(a["replicate"]) == [0, 1] and (a["rank"] == 1).all() and (a["share_top"] == 1.0).all()
    assert set(ranks.loc[ranks.arch != "a", "share_top"]) == {0.0}


def test_paired_uses_the_same_units_for_both_arms():
    """A constant difference is estimated exactly, whatever the per-sequence noise both arms share."""
    base = _frame(np.random.default_rng(1).uniform(size=(4, 30)))
    est, p_tost = paired(base.assign(value=base["value"] + 0.02), base, margin=0.01)
    assert est.mean == pytest.approx(0.02) and est.se == pytest.approx(0, abs=1e-12) and p_tost == 1.0


# ---------------------------------------------------------------- the report's fields and section


def _numbers(p: pd.DataFrame) -> SimpleNamespace:
    """The Numbers fields the pairs section reads, computed as `numbers.compute` does from predictions."""
    unit, scores = _scores(SimpleNamespace(predictions=p, results=None))
    scores["ood"] = scores["iid_unseen"].iloc[:0]
    order = _order(scores["iid_unseen"])
    pairs = paired_comparisons(scores["iid_unseen"], order, resamples=200)
    return SimpleNamespace(order=order, unit=unit, margin=0.01, pairs=pairs, pairs_ood=pairs.iloc[:0],
                           **_hierarchical(scores, order, 0.01, 200))


def test_numbers_fields_from_predictions():
    n = _numbers(predictions({"a": 0.8, "b": 0.5}, replicates=(0, 1)))
    assert n.unit == "predictions"
    iv = n.intervals.set_index("arch")
    assert (iv["seeds"] == 5).all() and (iv["replicates"] == 2).all() and (iv["lo"] < iv["mean"]).all()
    assert len(n.seed_points) == 2 * 5 * 2 and n.seed_points["value"].between(0, 1).all()  # arch x seed x rep
    assert set(n.winners["iid_unseen"]["winner"]) == {"a"} and n.ranks["share_top"].max() == 1.0
    text = section_pairs(n)
    assert "from per-sequence scores" in text and "× 2 search replicates" in text
    assert re.search(r"\| \*\*a\*\* \| · \| \+2\d\.\d\* \|", text)  # a − b ≈ (0.74 − 0.5): significant
    assert "rank in replicate 1" in text and "| a | 1 | 1 | 100 % |" in text and "| count | a | a |" in text


def test_without_predictions_the_cells_are_strata_and_the_seed_the_unit():
    results = pd.DataFrame([{"arch": arch, "seed": s, "split": "iid_unseen", "phase": 1, "family": f,
                             "position": None, "metric": "accuracy", "value": v + 0.01 * s, "n": 10}
                            for s in range(3) for f in FAMILIES for arch, v in (("a", 0.7), ("b", 0.5))])
    unit, scores = _scores(SimpleNamespace(predictions=None, results=results))
    assert unit == "cells" and scores["iid_unseen"]["family"].nunique() == len(FAMILIES)
    est = hierarchical_ci(scores["iid_unseen"][scores["iid_unseen"].arch == "a"])
    assert est.seeds == 3 and est.sequences == len(FAMILIES)
    # seed means 0.70, 0.71, 0.72: s = 0.01, the bootstrap's variance of the mean s²/3 up to resampling noise
    assert est.half == pytest.approx(t_quantile(2) * 0.01 / math.sqrt(3), rel=0.03)


def _units(families: dict[str, tuple[float, int]], seeds: int = 4, sequences: int = 30) -> pd.DataFrame:
    """Per-sequence scores with `n` scored positions: {family: (value, n)}, plus seed noise."""
    rng = np.random.default_rng(0)
    rows = [{"replicate": 0, "seed": s, "family": f, "sequence": q, "value": v + 0.01 * rng.standard_normal(), "n": n}
            for f, (v, n) in families.items() for s in range(seeds) for q in range(sequences)]
    return pd.DataFrame(rows)


def test_families_weigh_by_their_scored_predictions_as_the_headline_pools_them():
    """lag_1 at length 128 scores 127 positions per sequence, lag_64 64: the headline pools
    predictions, so the interval's mean must weigh the families 127 : 64, not 1 : 1."""
    frame = _units({"lag_1": (1.0, 127), "lag_64": (0.0, 64)})
    pooled = 127 / (127 + 64)
    assert hierarchical_ci(frame).mean == pytest.approx(pooled, abs=0.01)
    assert hierarchical_ci(frame.drop(columns="n")).mean == pytest.approx(0.5, abs=0.01)  # rows only


def test_a_unit_missing_from_one_family_is_left_out_not_a_crash():
    frame = _units({"a": (0.5, 7), "b": (0.6, 7)})
    gappy = frame[~((frame.family == "b") & (frame.seed == 3))]  # seed 3 has no rows of family b
    est = hierarchical_ci(gappy)
    assert est.seeds == 3 and math.isfinite(est.half)


def test_a_replicate_by_seed_interaction_is_not_truncated_away():
    """Two replicates whose seeds disagree (the search picked different configurations, each seed
    then landing differently): no replicate or seed main effect, a large replicate x seed interaction.
    MS_r then often falls below MS_rs, and truncating their sum dropped the interaction (sub-pp
    intervals around differences spread over 3 pp, phase2 2026-12-01); truncating each component on
    its own covers at the nominal rate."""
    rng = np.random.default_rng(7)
    sims, R, N, M = SIMULATIONS, 2, 5, 60
    inter = rng.standard_normal((sims, R, N, 1))
    blocks = [inter + 0.3 * rng.standard_normal((sims, R, N, M)) for _ in range(3)]
    mean, var, df = crossed_variance(blocks, np.ones(3), resamples=300)
    covered = np.abs(mean) <= stats.t.ppf(0.975, df) * np.sqrt(var)
    assert 0.92 <= covered.mean() <= 0.99, covered.mean()
