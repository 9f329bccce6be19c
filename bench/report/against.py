"""Scores read against what is achievable: accuracy as a fraction of the Bayes ceiling (the `ceiling`
arch of results.parquet, scored per seed on the same test sequences), the training tokens an
architecture needed to reach a fraction of the ceiling on the fixed validation set, the per-family
flags where an architecture is below a trivial baseline (only on cells of at least MIN_SEQUENCES test
sequences per seed), and accuracy on the identifiable positions (where the mixture ceiling is 100 %,
from ceiling.parquet).

Example: a seed whose model scores 0.45 on iid_unseen where the ceiling scores 0.75 on the same
sequences has accuracy / ceiling 0.60; the headline shows the mean of that ratio over seeds.
"""

from __future__ import annotations

import pandas as pd

from bench.report.load import ALL, CEILING, PRIMARY, TRIVIAL, split_rows
from bench.report.stats import mean_ci
from bench.report.tables import family_cells, study_level

FRACTIONS = (0.5, 0.9)  # tokens to reach these fractions of the ceiling: the sample-efficiency columns
REACHED = 0.9  # "reached the ceiling": the lower end of the 95 % interval of accuracy / ceiling at least this
MIN_SEQUENCES = 20  # a below-baseline flag needs at least this many test sequences per seed in the cell
EXACT = 1e-9  # float round-off allowed when comparing a ratio or a score with a threshold


def ceiling_ratios(results: pd.DataFrame, splits: tuple[str, ...] = (PRIMARY, "ood")) -> pd.DataFrame:
    """arch, split, mean, half, n of accuracy / ceiling over seeds, the ratio taken per seed on the
    split's whole test set (each seed's ceiling row scores that seed's split)."""
    top = study_level(results)
    top = top[(top.metric == "accuracy") & top.split.isin(splits)]
    ceiling = top[top.arch == CEILING].set_index(["seed", "split", "length"])["value"]
    ratio = top.assign(value=top["value"].to_numpy() / top.set_index(["seed", "split", "length"]).index.map(ceiling))
    ratio = ratio[ratio["value"].notna()]
    rows = [(arch, split, *mean_ci(g["value"])) for (arch, split), g in ratio.groupby(["arch", "split"])]
    return pd.DataFrame(rows, columns=["arch", "split", "mean", "half", "n"])


def tokens_to_ceiling(history: pd.DataFrame | None, ceiling: pd.DataFrame | None, runs: pd.DataFrame,
                      fractions: tuple[float, ...] = FRACTIONS) -> pd.DataFrame:
    """arch, seed, replicate, fraction, tokens (one row per final run): the first validation at
    which the run's val_accuracy (on the fixed validation set) reached `fraction` × that seed's
    ceiling on the same set (ceiling.parquet, set 'validation'); tokens NaN where it never did.
    Finished runs only. E.g. a seed with ceiling 0.8 whose validations score 0.3, 0.45, 0.7 at 1k,
    2k, 3k tokens reaches 50 % (0.4) at 2k and 90 % (0.72) never."""
    columns = ["arch", "seed", "replicate", "fraction", "tokens"]
    if history is None or ceiling is None or not len(history) or "set" not in ceiling:
        return pd.DataFrame(columns=columns)
    val = ceiling[(ceiling["set"] == "validation") & (ceiling["family"] == ALL) & ceiling["position"].isna()]
    per_seed = val.groupby("seed")["accuracy"].first()
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    ok, history = (t if "replicate" in t else t.assign(replicate=0) for t in (ok, history))
    finished = set(zip(ok["arch"], ok["seed"], ok["replicate"], strict=True))
    rows = []
    acc = history[history["metric"] == "val_accuracy"]
    for (arch, seed, rep), h in acc.groupby(["arch", "seed", "replicate"]):
        if (arch, seed, rep) not in finished or seed not in per_seed.index:
            continue
        h = h.sort_values("tokens")
        for f in fractions:
            hit = h.loc[h["value"] >= f * per_seed[seed] - EXACT, "tokens"]
            rows.append((arch, seed, rep, f, float(hit.iloc[0]) if len(hit) else float("nan")))
    return pd.DataFrame(rows, columns=columns)


def tokens_text(per_seed: pd.DataFrame, arch: str, fraction: float) -> str:
    """The headline cell: the mean over seeds of the tokens to reach the fraction, 'not reached'
    where no seed did, 'not reached in k of n seeds' where some did not ('runs' with several search
    replicates), '—' without a ceiling."""
    t = per_seed.loc[(per_seed["arch"] == arch) & (per_seed["fraction"] == fraction), "tokens"]
    if not len(t):
        return "—"
    missed = int(t.isna().sum())
    if missed == len(t):
        return "not reached"
    if missed:  # several search replicates: a run is a (replicate, seed) pair
        replicated = "replicate" in per_seed and per_seed["replicate"].nunique() > 1
        return f"not reached in {missed} of {len(t)} {'runs' if replicated else 'seeds'}"
    return f"{t.mean():,.0f}"


def family_ratios(results: pd.DataFrame, split: str) -> pd.DataFrame:
    """arch × family mean over seeds of (accuracy / ceiling) per seed on `split` (baselines included)."""
    cells = family_cells(results, split=split)
    ceiling = cells[cells.arch == CEILING].set_index(["seed", "phase", "family"])["value"]
    ratio = cells["value"].to_numpy() / cells.set_index(["seed", "phase", "family"]).index.map(ceiling)
    return cells.assign(value=ratio).pivot_table(index="arch", columns="family", values="value", aggfunc="mean")


def cell_sequences(results: pd.DataFrame, split: str, splits: pd.DataFrame | None = None) -> pd.Series:
    """Test sequences per (seed, family) on `split`: splits.parquet's n_sequences where stored, else
    the largest count of predictions at any one position in results (every sequence predicts once per
    position; a position some family does not score has fewer rows)."""
    if splits is not None and len(splits) and "n_sequences" in splits:
        t = splits[splits["split"] == split]
        per = t.groupby(["seed", "family", "length"])["n_sequences"].sum()
        return per.groupby(level=["seed", "family"]).min().astype(float)
    rows = split_rows(results, split)
    rows = rows[rows["phase"].notna() & (rows["family"] != ALL) & rows["position"].notna()
                & (rows["metric"] == "accuracy")]
    return rows["n"].astype(float).groupby([rows["seed"], rows["family"]]).max()


def below_baselines(results: pd.DataFrame, archs: list[str], split: str,
                    splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """arch, family, baseline, accuracy, baseline_accuracy, sequences: every (architecture, family)
    whose mean accuracy on `split` is below a trivial baseline's (last value, extrapolate, lookup) on
    the same seeds' sequences, the strongest such baseline per cell; only cells with at least
    MIN_SEQUENCES test sequences on every one of those seeds (`cell_sequences`; sequences is the
    fewest), as a smaller cell's mean is too noisy to call. E.g. 12 sequences per seed: never flagged."""
    columns = ["arch", "family", "baseline", "accuracy", "baseline_accuracy", "sequences"]
    cells = family_cells(results, split=split)
    wide = cells.pivot_table(index=["seed", "family"], columns="arch", values="value")
    counts = cell_sequences(results, split, splits)
    rows = []
    for arch in archs:
        if arch not in wide:
            continue
        present = wide[wide[arch].notna()]
        have = present.groupby(level="family").mean()
        fewest = counts.reindex(present.index).fillna(0).groupby(level="family").min()  # unknown: 0
        for family, r in have.iterrows():
            n = fewest.get(family, 0)
            if n < MIN_SEQUENCES:
                continue
            beaten = [(r[b], b) for b in TRIVIAL if b in r and pd.notna(r[b]) and r[arch] < r[b] - EXACT]
            if beaten:
                value, base = max(beaten)
                rows.append((arch, family, base, float(r[arch]), float(value), int(n)))
    return pd.DataFrame(rows, columns=columns)


def identifiable_cells(ceiling: pd.DataFrame | None, length: int | None) -> pd.DataFrame:
    """family, position of the cells where the mixture ceiling (region train, the training length) is
    100 %: where the prefix determines the next term whatever family drew it."""
    if ceiling is None or "set" not in ceiling:
        return pd.DataFrame(columns=["family", "position"])
    c = ceiling[(ceiling["set"] == "mixture") & (ceiling["region"] == "train") & (ceiling["family"] != ALL)
                & ceiling["position"].notna() & (ceiling["accuracy"] >= 1 - EXACT)]
    if length is not None:
        c = c[c["length"] == length]
    return c[["family", "position"]].drop_duplicates().reset_index(drop=True)


def identifiable_accuracy(results: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """arch, mean, half, n: iid_unseen accuracy pooled over the identifiable (family, position) cells
    (weighted by predictions), per seed, then over seeds."""
    rows = split_rows(results, PRIMARY)
    rows = rows[(rows["metric"] == "accuracy") & rows["position"].notna() & (rows["family"] != ALL)]
    rows = rows.astype({"position": "int64"}).merge(cells.astype({"position": "int64"}), on=["family", "position"])
    rows = rows.assign(hits=rows["value"] * rows["n"])
    g = rows.groupby(["arch", "seed"])[["hits", "n"]].sum()
    per_seed = (g["hits"] / g["n"]).rename("value").reset_index()
    out = [(arch, *mean_ci(v["value"])) for arch, v in per_seed.groupby("arch")]
    return pd.DataFrame(out, columns=["arch", "mean", "half", "n"])
