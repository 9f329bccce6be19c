"""Next-term scores on real integer sequences (oeis.parquet): windows of OEIS sequences whose terms fit
in 0..255, grouped by the kind of rule they follow (the kinds the curriculum teaches, pooled as
'taught', and 'other'), each architecture beside the non-learned baselines on the same windows.

Example: an architecture right on 30 of 100 periodic predictions of seed 0 and 40 of seed 1 scores
35 % there (mean over seeds); last value, a deterministic rule, scores the same on every seed.
"""

from __future__ import annotations

import pandas as pd

from bench.report.stats import mean_ci

KINDS = ("periodic", "arithmetic", "recurrence_1", "recurrence_2", "taught", "other", "all")  # columns, in order
SOURCE = ("The windows come from the On-Line Encyclopedia of Integer Sequences (OEIS, https://oeis.org), "
          "licensed CC BY-SA 4.0, as the committed snapshot `bench/data/oeis.csv` (built by "
          "`scripts/build_oeis.py`).")


def oeis_scores(oeis: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """arch, kind, mean, half, seeds, n, windows: `metric` per architecture and kind over seeds, n
    (the scored predictions of that kind, the same for every arch and seed) and windows (the
    sequences' windows, where the table stores them; else <NA>)."""
    rows = oeis[oeis["metric"] == metric]
    out = [(arch, kind, *mean_ci(g["value"]), int(g["n"].max()),
            int(g["windows"].max()) if "windows" in g else pd.NA)
           for (arch, kind), g in rows.groupby(["arch", "kind"])]
    return pd.DataFrame(out, columns=["arch", "kind", "mean", "half", "seeds", "n", "windows"])


def kinds_present(scores: pd.DataFrame) -> list[str]:
    """The kinds of `scores` in the report's order (any other kind after them, by name)."""
    present = set(scores["kind"])
    return [k for k in KINDS if k in present] + sorted(present - set(KINDS))
