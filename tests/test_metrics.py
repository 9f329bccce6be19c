"""Metrics: exact random baselines, non-learned baselines, aggregation levels, continuation."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

from bench.data import FAMILY_NAMES
from bench.data.curriculum import SequenceSet, make_split_test_sets, make_test_set
from bench.metrics import (
    ALL,
    BASELINES,
    CEILING,
    LOOKUP,
    RANDOM_BASELINE,
    REFERENCES,
    baseline_predictions,
    continuation,
    evaluate,
    evaluate_baselines,
    evaluate_log_probs,
    evaluate_predictions,
    evaluate_splits,
    expected_uniform_distance,
    per_prediction,
    prediction_rows,
    score_logits,
    split_of,
)


def labelled(seqs: torch.Tensor, family: str = "constant") -> SequenceSet:
    n = seqs.shape[0]
    idx = FAMILY_NAMES.index(family)
    return SequenceSet(seqs=seqs, family=torch.full((n,), idx), phase=torch.ones(n, dtype=torch.long))


def top(table: pd.DataFrame) -> pd.Series:
    rows = table[table.phase.isna() & (table.family == ALL) & table.position.isna()]
    return rows.set_index("metric")["value"]


def test_random_baseline_constants():
    assert RANDOM_BASELINE["accuracy"] == 1 / 256
    assert RANDOM_BASELINE["distance_error"] == pytest.approx(85.33, abs=0.005)
    assert RANDOM_BASELINE["loss"] == pytest.approx(5.545, abs=0.001)


def test_uniform_predictor_reproduces_the_three_baselines_on_uniform_targets():
    # every value 0..255 equally often as a target
    targets = torch.arange(256).repeat(4)
    mean_distance = expected_uniform_distance(targets).mean().item()
    assert mean_distance == pytest.approx(RANDOM_BASELINE["distance_error"], rel=1e-12)
    # a predictor with uniform logits has CE ln 256 exactly
    scores = score_logits(torch.zeros(1, targets.numel(), 256), targets.view(1, -1))
    assert scores["loss"].mean().item() == pytest.approx(math.log(256), rel=1e-6)
    # a uniform random guesser converges to 1/256 and 85.33
    g = torch.Generator().manual_seed(0)
    big = targets.repeat(400)
    guesses = torch.randint(0, 256, big.shape, generator=g)
    assert (guesses == big).double().mean().item() == pytest.approx(1 / 256, rel=0.05)
    assert (guesses - big).abs().double().mean().item() == pytest.approx(85.33, rel=0.01)
    # and the baseline rows of the evaluator hold the exact expectations
    seqs = torch.cat([torch.zeros(1024, 1, dtype=torch.long), targets.view(-1, 1)], dim=1)
    base = evaluate_baselines(labelled(seqs))
    uni = top(base[base.arch == "baseline_uniform"])
    assert uni["accuracy"] == pytest.approx(1 / 256)
    assert uni["distance_error"] == pytest.approx(85.33, abs=0.005)
    assert uni["loss"] == pytest.approx(math.log(256))


def test_point_baselines_are_exact_on_their_own_families():
    test = make_test_set(phases=(1,), per_family=50)
    base = evaluate_baselines(test)
    last = base[(base.arch == "baseline_last_value") & (base.family == "constant") & base.position.isna()]
    assert last.set_index("metric").loc["accuracy", "value"] == 1.0
    ext = base[(base.arch == "baseline_extrapolate") & (base.family == "arithmetic") & (base.position >= 1)]
    assert (ext[ext.metric == "accuracy"].value == 1.0).all()  # a constant difference is extrapolated exactly
    assert "loss" not in set(base[base.arch != "baseline_uniform"].metric)


class Oracle(nn.Module):
    """Logits peaked on the true next value of known sequences (looked up by their prefix)."""

    def __init__(self, seqs: torch.Tensor, wrong_rows: int = 0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.table = {tuple(s[:-1].tolist()): s[1:] for s in seqs}
        self.wrong_rows = wrong_rows

    def forward(self, x):
        targets = torch.stack([self.table[tuple(r.tolist())] for r in x])
        logits = torch.full((*x.shape, 256), -10.0)
        logits.scatter_(-1, targets.unsqueeze(-1), 10.0)
        return logits

    def generate(self, prefix, n_new):
        rows = [next(v for k, v in self.table.items() if list(k[: prefix.shape[1]]) == p.tolist()) for p in prefix]
        full = torch.cat([prefix, torch.stack(rows)[:, prefix.shape[1] - 1:]], dim=1)
        full[: self.wrong_rows, -1] = (full[: self.wrong_rows, -1] + 1) % 256
        return full


def test_evaluate_levels_and_oracle():
    test = make_test_set(phases=(1, 2), per_family=10)
    table = evaluate(Oracle(test.seqs), test)
    assert set(table.columns) == {"phase", "family", "position", "metric", "value", "n"}
    acc = table[table.metric == "accuracy"]
    assert (acc.value == 1.0).all() and (table[table.metric == "distance_error"].value == 0).all()
    # levels: per family per position, per family, per phase (family 'all'), overall (phase NA)
    fam = acc[(acc.family == "arithmetic") & acc.position.notna()]
    assert list(fam.position) == list(range(7)) and (fam.n == 10).all()
    assert acc[(acc.phase == 2) & (acc.family == ALL) & acc.position.isna()].n.item() == 9 * 10 * 7
    assert acc[acc.phase.isna()].n.item() == 12 * 10 * 7


def test_continuation_accuracy_counts_generated_values():
    test = make_test_set(phases=(1,), per_family=10)
    # the oracle continues perfectly except the last value of the first 15 rows
    table = continuation(Oracle(test.seqs, wrong_rows=15), test, prefix=4)
    overall = top(table)["continuation_accuracy"]
    assert overall == pytest.approx(1 - 15 / (30 * 4))
    positions = table[(table.family == ALL) & table.phase.notna() & table.position.notna()]
    assert sorted(positions.position.unique()) == [3, 4, 5, 6]


def test_reference_names():
    assert BASELINES == ("baseline_uniform", "baseline_last_value", "baseline_extrapolate")
    assert (LOOKUP, CEILING) == ("baseline_lookup", "ceiling")
    assert (*BASELINES, LOOKUP, CEILING) == REFERENCES


def test_a_point_predictor_is_scored_like_the_baselines_and_a_distribution_like_a_model():
    test = make_test_set(phases=(1, 2), per_family=10)
    last = evaluate_predictions(lambda x: baseline_predictions("baseline_last_value", x), test)
    base = evaluate_baselines(test)
    pd.testing.assert_frame_equal(last, base[base.arch == "baseline_last_value"].drop(columns="arch")
                                  .reset_index(drop=True))
    assert set(last.metric) == {"accuracy", "distance_error"}
    # uniform log-probabilities: loss ln 256; argmax ties go to value 0, so accuracy = share of zero targets
    targets = test.seqs[:, 1:]
    uniform = evaluate_log_probs(torch.full((*targets.shape, 256), -math.log(256)), test)
    row = top(uniform)
    assert row["loss"] == pytest.approx(math.log(256))
    assert row["accuracy"] == pytest.approx((targets == 0).double().mean().item())
    assert row["distance_error"] == pytest.approx(targets.double().mean().item())


def test_splits_are_scored_each_with_its_split_and_length():
    sets = make_split_test_sets(phases=(1,), length=8, per_family=6, lengths=(16,))
    iid = sets["iid"]
    labelled = {"iid_seen": iid.subset(slice(0, 5)), "iid_unseen": iid.subset(slice(5, None)), "ood": sets["ood"],
                "length_16": sets["length_16"], "iid_none": iid.subset(slice(0, 0))}
    known = [s.seqs for s in sets.values()]
    oracle = Oracle(torch.cat([k for k in known if k.shape[1] == 8]))
    oracle.table.update(Oracle(sets["length_16"].seqs).table)
    table = evaluate_splits(oracle, labelled)
    assert split_of("length_16") == "length" and split_of("ood") == "ood"
    pairs = sorted(set(zip(table.split, table.length, strict=True)))
    assert pairs == [("iid_seen", 8), ("iid_unseen", 8), ("length", 16), ("ood", 8)]  # the empty set has no rows
    assert (table[table.metric == "accuracy"].value == 1.0).all()
    overall = table[table.phase.isna() & (table.metric == "accuracy")].set_index("split").n
    assert overall.to_dict() == {"iid_seen": 5 * 7, "iid_unseen": 13 * 7, "ood": 18 * 7, "length": 18 * 15}


class Bigram(nn.Module):
    """Logits from the last input value only (a random table): right on some rows, wrong on others."""

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(256, 256)

    def forward(self, x):
        return self.table(x)


def test_per_prediction_rows_aggregate_to_evaluate_exactly():
    """The per-prediction rows are `evaluate`'s per-element scores: their means per family and
    position (and overall) are its accuracy and distance error exactly, its loss to float32 rounding."""
    torch.manual_seed(0)
    model, test = Bigram(), make_test_set(phases=(1, 2), per_family=12)
    table, rows = evaluate(model, test), per_prediction(model, test, batch_size=7)
    assert list(rows.columns) == ["phase", "family", "sequence", "position", "correct", "distance", "loss"]
    assert [str(t) for t in rows.dtypes.iloc[[0, 2, 3, 4, 5, 6]]] == ["int8", "int64", "int16", "bool", "int16",
                                                                       "float32"]
    assert len(rows) == len(test) * 7 and 0 < rows.correct.mean() < 1  # neither all right nor all wrong
    cells = table[table.phase.notna() & (table.family != ALL) & table.position.notna()]
    for metric, column in (("accuracy", "correct"), ("distance_error", "distance")):
        expect = cells[cells.metric == metric].set_index(["family", "position"]).value
        got = rows.groupby(["family", "position"])[column].mean()
        assert (got.reindex(expect.index) == expect).all(), metric  # exact, not approximate
    assert rows.correct.mean() == top(table)["accuracy"]
    assert rows.loss.astype("float64").mean() == pytest.approx(top(table)["loss"], rel=1e-6)
    assert rows.groupby("family").phase.first().to_dict() == {f: 1 if f in ("constant", "arithmetic", "alternating")
                                                                   else 2 for f in set(test.family_names())}


def test_prediction_rows_take_the_given_sequence_ids_row_by_row():
    test = make_test_set(phases=(1,), per_family=2)  # 6 rows of 8 values: 7 predictions each
    per = score_logits(torch.zeros(6, 7, 256), test.seqs[:, 1:])
    rows = prediction_rows(test, per, torch.tensor([50, 40, 30, 20, 10, 0]))
    assert list(rows.sequence[::7]) == [50, 40, 30, 20, 10, 0] and list(rows.position[:7]) == list(range(7))
    assert list(rows.distance[:7]) == test.seqs[0, 1:].tolist()  # argmax of zero logits is value 0
    assert list(prediction_rows(test, per).sequence[::7]) == list(range(6))
    with pytest.raises(ValueError, match="one sequence id per row"):
        prediction_rows(test, per, torch.arange(5))
