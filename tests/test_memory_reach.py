"""The memory-decay reach (bench/report/tables.py `decay_reach`): the largest k such that the curve is
above the threshold at EVERY probed k' <= k, so a curve that dips and recovers reaches only as far as
its first dip (the old rule, the largest k above the threshold, let an LSTM with lag recall 1 "reach"
k = 127 on a noisy tail)."""

from __future__ import annotations

import math

import pandas as pd

from bench.report.tables import REMEMBER, decay_reach


def curves(values: dict[str, list[float]], ks: list[int], variant: str = "perturbation") -> pd.DataFrame:
    return pd.DataFrame([{"arch": a, "variant": variant, "k": k, "value": v}
                         for a, vs in values.items() for k, v in zip(ks, vs, strict=True)])


KS = [1, 2, 3, 4, 6, 8]


def test_a_curve_that_dips_and_recovers_reaches_only_its_first_dip():
    # 0.05 at k = 3 is below 10 % of 1.0; the recovery to 0.4 and 0.3 at k = 4, 6 does not count
    table = curves({"lstm": [1.0, 0.5, 0.05, 0.4, 0.3, 0.01]}, KS)
    assert decay_reach(table) == decay_reach(table, fraction=REMEMBER) == {"lstm": 2}
    assert decay_reach(table, fraction=0.04) == {"lstm": 6}  # now only k = 8 is below


def test_a_curve_above_everywhere_reaches_the_last_k_and_one_that_drops_at_once_the_first():
    table = curves({"transformer": [0.2, 0.2, 0.1, 0.05, 0.04, 0.03], "s4d": [1.0, 0.09, 1.0, 1.0, 1.0, 1.0]}, KS)
    assert decay_reach(table) == {"transformer": 8, "s4d": 1}


def test_threshold_is_inclusive_and_relative_to_the_smallest_k_whatever_the_row_order():
    table = curves({"mamba": [2.0, 0.2, 0.2, 0.19, 2.0, 2.0]}, KS)  # 0.2 = exactly 10 % of 2.0
    shuffled = table.sample(frac=1.0, random_state=0)
    assert decay_reach(shuffled, fraction=0.1) == decay_reach(table, fraction=0.1) == {"mamba": 3}


def test_only_the_named_variant_counts_and_unusable_curves_are_left_out():
    table = pd.concat([curves({"a": [1.0, 0.5, 0.5, 0.5, 0.5, 0.5]}, KS),
                       curves({"a": [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]}, KS, variant="gradient"),
                       curves({"zero": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]}, KS),
                       curves({"hole": [1.0, 0.9, math.nan, 0.9, 0.9, 0.9]}, KS)], ignore_index=True)
    assert decay_reach(table) == {"a": 8, "hole": 2}  # NaN ends the reach; a zero first value has none
    assert decay_reach(table, variant="gradient") == {"a": 1}
