"""bench.report: statistics against hand computations, the report from a hand-made study (its stored
files written here, as collection writes them), the CLI's errors, publishing to the dashboard, and a
real study end to end (slow)."""

import importlib
import math
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf

from bench.experiment.config import compose_config, to_yaml
from bench.metrics import aggregate
from bench.models import mixer_names
from bench.report import FIGURES, MissingResults, ReportInputError, build_report, publish
from bench.report.ceiling_sections import reach_sentence
from bench.report.figures import ARCH_ORDER, PALETTE, arch_color
from bench.report.findings import _oeis_models
from bench.report.markdown import fmt_ci
from bench.report.stats import holm, mean_ci, sign_test, t_quantile
from bench.report.tables import cell_scores, lag_accuracy, paired_comparisons, verdict

SECTIONS = ["## 1. What was run", "## 2. Headline", "## 3. Against the ceiling", "## 4. Paired comparisons",
            "## 5. Real sequences (OEIS)", "## 6. Figures", "## 7. Findings"]
ARCHS = {"transformer": 0.9, "lstm": 0.5, "mamba": 0.5}  # iid_unseen accuracy on predictable positions
OOD = {"transformer": 0.4, "lstm": 0.8, "mamba": 0.8}  # the same on ood: transformer below lstm
SEEN = {"transformer": 0.0123, "lstm": 0.9876, "mamba": 0.0123}  # iid_seen accuracy: would reorder a pooled table
LENGTHS = {16: 0.5, 32: 0.25}  # the length split: accuracy = iid_unseen rate × this
FAMILIES = ("lag_1", "lag_2")
N_SEQ, LENGTH = 10, 8
SEEDS = (0, 1, 2, 3, 4)
VAL_CEILING = {0: 0.8, 1: 0.8, 2: 0.55, 3: 0.8, 4: 0.8}  # the ceiling on each seed's fixed validation set
# test sequences per seed (splits.parquet): lag_1 has 20 on iid_unseen and ood (below-baseline flags shown), lag_2
# fewer than 20 (never flagged)
SPLIT_SIZES = {f: [("iid_seen", LENGTH, seen), ("iid_unseen", LENGTH, unseen), ("ood", LENGTH, ood),
                   ("length", 16, 10), ("length", 32, 10)] for f, seen, unseen, ood in (("lag_1", 4, 20, 20),
                                                                                         ("lag_2", 1, 9, 10))}
OEIS_WINDOWS = {"periodic": 40, "arithmetic": 30, "recurrence_1": 20, "recurrence_2": 10, "taught": 100,
                "other": 50, "all": 150}
OEIS_MODEL = {"transformer": 0.30, "lstm": 0.20, "mamba": 0.10}  # + 0.01 · seed
OEIS_BASELINE = {"baseline_last_value": 0.55, "baseline_extrapolate": 0.45, "baseline_lookup": 0.05}
CKA_LAST = {("lstm", "mamba"): 0.8, ("lstm", "transformer"): 0.4, ("mamba", "transformer"): 0.5}  # last blocks
publish_module = importlib.import_module("bench.report.publish")  # the package's `publish` is the function
STUDIES = [name for arch in ARCHS for name in (f"smoke/{arch}", f"smoke/{arch}/final")]  # the Optuna studies


# ---------------------------------------------------------------- statistics


def test_t_quantile_matches_tables():
    for df, t in {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 10: 2.2281, 30: 2.0423}.items():
        assert t_quantile(df) == pytest.approx(t, abs=1e-4)


def test_interval_hand_computed():
    mean, half, n = mean_ci([1, 2, 3])  # s = 1, t_{0.975,2} = 4.3027
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert half == pytest.approx(2.484, abs=1e-3)
    mean, half, n = mean_ci([0.7])
    assert mean == 0.7 and n == 1 and math.isnan(half)  # one seed: no interval ...
    assert fmt_ci(mean, half, n, 100) == "70.0 (n=1)"  # ... and the table says so


def test_holm_and_sign_test():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert sign_test(6, 0) == pytest.approx(2 / 64) and sign_test(3, 3) == 1.0


def test_paired_test_flags_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=12)
    cells = pd.DataFrame([{"arch": arch, "seed": i // 4, "phase": 1, "family": f"f{i % 4}", "value": v}
                          for i, b in enumerate(base)
                          for arch, v in (("a", b + 0.05), ("b", b), ("c", b + (0.01 if i % 2 else -0.01)))])
    pairs = paired_comparisons(cell_scores(cells), ["a", "b", "c"]).set_index(["a", "b"])
    assert pairs.loc[("a", "b"), "significant"] and pairs.loc[("a", "b"), "wins"] == 12
    assert pairs.loc[("a", "b"), "diff"] == pytest.approx(0.05)
    assert not pairs.loc[("b", "c"), "significant"] and pairs.loc[("b", "c"), "p"] > 0.5
    assert (pairs["sequences"] == 4).all() and (pairs["seeds"] == 3).all()  # 4 cells (strata), 3 seeds the units
    # the sign test is a robustness column: 12 of 12 cells gives p 2/4096 (b−c: 6 wins, 6 losses)
    assert pairs.loc[("a", "b"), "p_sign"] == pytest.approx(2 / 4096) and pairs.loc[("a", "b"), "separable"]
    assert not pairs.loc[("b", "c"), "separable"] and pairs.loc[("a", "b"), "verdict"] == "a ahead"
    # b − c is ±1 pp by (fixed) cell and 0 on every seed: equivalent within the 1 pp margin, not within 0
    assert pairs.loc[("b", "c"), "verdict"] == "equivalent"
    assert pairs.loc[("b", "c"), "p_tost"] < 0.05 and pairs.loc[("a", "b"), "p_tost"] > 0.5


def test_verdict_names_a_best_only_when_it_is_separable_from_every_other():
    pairs = pd.DataFrame([{"a": "a", "b": "b", "diff": 0.1, "separable": True},
                          {"a": "a", "b": "c", "diff": 0.2, "separable": True},
                          {"a": "b", "b": "c", "diff": 0.1, "separable": False}])
    assert verdict(["a", "b", "c"], pairs) == ("a", ["a"])
    assert verdict(["a", "b", "c"], pairs.assign(separable=[False, True, False])) == (None, ["a", "b"])
    assert verdict(["a", "b", "c"], pairs.assign(diff=[-0.1, 0.2, 0.1])) == (None, ["a", "b"])  # b ahead of a
    assert verdict(["a", "c"], pairs.iloc[[1]]) == ("a", ["a"]) and verdict(["a"], pairs.iloc[:0]) == (None, ["a"])


def test_lag_accuracy_counts_only_predictable_positions():
    rows = []  # lag_k: positions p < k-1 are all right, p >= k-1 half right: only the latter may count
    for k in (1, 4):
        for p in range(7):
            rows.append({"arch": "x", "seed": 0, "split": "iid_unseen", "phase": 4, "family": f"lag_{k}",
                         "position": p, "metric": "accuracy", "value": 1.0 if p < k - 1 else 0.25 * (p % 2) + 0.5,
                         "n": 10})
            rows.append({**rows[-1], "split": "iid_seen", "value": 1.0})  # memorised: never counts
    rows.append({"arch": "x", "seed": 0, "split": "iid_unseen", "phase": 4, "family": "lag_4", "position": None,
                 "metric": "accuracy", "value": 0.9, "n": 70})  # the family row (all positions) must not count either
    table = lag_accuracy(pd.DataFrame(rows).astype({"position": "Int64"})).set_index("k")
    predictable = {1: [0.5, 0.75, 0.5, 0.75, 0.5, 0.75, 0.5], 4: [0.75, 0.5, 0.75, 0.5]}  # p >= k-1
    for k, values in predictable.items():
        assert table.loc[k, "value"] == pytest.approx(np.mean(values)) and table.loc[k, "n"] == 10 * len(values)


# ---------------------------------------------------------------- a hand-made study


def _scores(rates: dict[str, float]) -> pd.DataFrame:
    """Per-element scores of a lag study, aggregated as bench.metrics does: in family f, sequence i is
    right at the predictable positions (p >= k-1) iff i < rates[f]·N, and wrong everywhere else."""
    rows = []
    for family, rate in rates.items():
        k = int(family.split("_")[1])
        for i in range(N_SEQ):
            for p in range(LENGTH - 1):
                ok = p >= k - 1 and i < round(rate * N_SEQ)
                rows.append({"phase": 4, "family": family, "position": p, "accuracy": float(ok),
                             "distance_error": 0.0 if ok else 7.0, "loss": 0.1 if ok else 3.0})
    return aggregate(pd.DataFrame(rows))


def _cka(a: str, seed_a: int, la: int, b: str, seed_b: int, lb: int) -> float:
    """A hand-made CKA value: architectures on one seed share the embedding (0.95), on different seeds
    not (0.3); at the last blocks (layer 2) CKA_LAST, 0.05 lower across seeds; one architecture on two
    seeds 0.9 there."""
    if (a, seed_a) == (b, seed_b):
        return 1.0 if la == lb else 0.5
    if a == b:
        return 0.9 if la == lb == 2 else 0.3
    if la == lb == 2:
        return CKA_LAST[tuple(sorted((a, b)))] - (0.05 if seed_a != seed_b else 0.0)
    return (0.95 if seed_a == seed_b else 0.3) if la == lb == 0 else 0.4


def write_study(cfg, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    """The stored files of a study as collection writes them: every table, config.yaml, meta.yaml."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_parquet(out / f"{name}.parquet", index=False)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "meta.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))


SPLIT_RATES = {"iid_unseen": ARCHS, "ood": OOD}  # the splits a headline may show


def _top(arch: str, seed: int, split: str, length: int, **metrics: float) -> pd.DataFrame:
    """Rows over a whole split (phase <NA>, family 'all', position <NA>), as aggregate writes them."""
    return pd.DataFrame([{"phase": pd.NA, "family": "all", "position": pd.NA, "metric": m, "value": v, "n": 40}
                         for m, v in metrics.items()]).astype({"phase": "Int64", "position": "Int64"}).assign(
        arch=arch, seed=seed, split=split, length=length)


def _split_results(seed: int, failed: set) -> list[pd.DataFrame]:
    """Every arch's rows of one seed, per split: the models' (iid_seen planted at SEEN), the baselines'
    (last value right on lag_1, 0.5 of it on ood; lookup planted at 0.6 on lag_2 iid_unseen) and the
    ceiling's (every predictable position right); the length split at its two lengths, whole split only."""
    base = pd.DataFrame({"phase": 4, "family": np.repeat(FAMILIES, N_SEQ * (LENGTH - 1)),
                         "position": np.tile(np.arange(LENGTH - 1), N_SEQ * len(FAMILIES))})
    out = []
    for split in ("iid_seen", "iid_unseen", "ood"):
        lag_1 = (base.family == "lag_1").astype(float) * (0.5 if split == "ood" else 1.0)
        lookup = (base.family == "lag_2").astype(float) * (0.6 if split == "iid_unseen" else 0.0)
        frames = {"baseline_uniform": base.assign(accuracy=1 / 256, distance_error=85.33, loss=math.log(256)),
                  "baseline_last_value": base.assign(accuracy=lag_1, distance_error=40.0),
                  "baseline_extrapolate": base.assign(accuracy=0.0, distance_error=80.0),
                  "baseline_lookup": base.assign(accuracy=lookup, distance_error=30.0)}
        tables = {name: aggregate(f) for name, f in frames.items()}
        tables["ceiling"] = _scores({f: 1.0 for f in FAMILIES})
        for arch, rate in ARCHS.items():
            if (arch, seed) in failed:
                continue
            rates = {f: SPLIT_RATES.get(split, ARCHS)[arch] + (0.1 * (-1) ** (seed + i) if arch == "mamba" else 0.0)
                     for i, f in enumerate(FAMILIES)}
            tables[arch] = _scores(rates)
            if split == "iid_seen":  # memorised: never to be shown
                t = tables[arch]
                tables[arch] = t.assign(value=np.where(t.metric == "accuracy", SEEN[arch], t.value))
            else:
                out.append(_top(arch, seed, split, LENGTH, continuation_accuracy=rate * 0.9))
        out += [t.assign(arch=name, seed=seed, split=split, length=LENGTH) for name, t in tables.items()]
    for length, scale in LENGTHS.items():
        out.append(_top("ceiling", seed, "length", length, accuracy=scale))
        out += [_top(arch, seed, "length", length, accuracy=rate * scale) for arch, rate in ARCHS.items()
                if (arch, seed) not in failed]
    return out


def _ceiling_table() -> pd.DataFrame:
    """ceiling.parquet: the mixture and family-known ceilings per (region, family, position) at the
    training length (lag_1 every position, lag_2 from position 1: identifiable; lag_2's position 0 a
    Monte Carlo estimate), and each seed's ceiling on its fixed validation set (VAL_CEILING)."""
    rows = []
    for kind in ("mixture", "family_known"):
        for region in ("train", "held_out"):
            for family in FAMILIES:
                for p in [*range(LENGTH - 1), None]:
                    mc = family == "lag_2" and p == 0
                    acc = 0.5 if mc else 13 / 14 if p is None else 1.0
                    rows.append({"set": kind, "region": region, "length": LENGTH, "seed": pd.NA, "family": family,
                                 "position": p, "accuracy": acc, "loss": 0.0 if acc == 1 else 0.7,
                                 "method": "monte_carlo" if mc else "exact", "se": 0.01 if mc else 0.0})
    rows += [{"set": "validation", "region": "train", "length": LENGTH, "seed": seed, "family": "all",
              "position": pd.NA, "accuracy": c, "loss": 0.5, "method": "exact", "se": 0.0}
             for seed, c in VAL_CEILING.items()]
    return pd.DataFrame(rows).astype({"seed": "Int64", "position": "Int64"}).assign(study="smoke")


def _oeis_table(models: list[tuple[str, int]]) -> pd.DataFrame:
    """oeis.parquet: each model OEIS_MODEL + 0.01·seed on every kind, the baselines OEIS_BASELINE on every seed."""
    rows = [{"arch": arch, "seed": seed, "kind": kind, "metric": "accuracy", "value": value, "n": 7 * w, "windows": w}
            for kind, w in OEIS_WINDOWS.items()
            for arch, seed, value in [*((a, s, OEIS_MODEL[a] + 0.01 * s) for a, s in models),
                                      *((b, s, v) for b, v in OEIS_BASELINE.items() for s in SEEDS)]]
    return pd.DataFrame(rows).assign(study="smoke")


def make_study(tmp_path: Path, storage: bool = True) -> tuple:
    """A tiny stored study written as bench.run writes one, plus (if `storage`) its Optuna storage:
    transformer beats lstm and mamba in every (seed, family) cell of iid_unseen (and loses on ood);
    mamba differs from lstm by ±1 sequence, alternating; mamba's seed 2 failed; iid_seen planted
    with SEEN, which no headline may show."""
    out = tmp_path / "study"
    cfg = compose_config(["study=smoke", f"out_dir={out}", "archs=[lstm,mamba,transformer]",
                          f"seeds=[{','.join(map(str, SEEDS))}]", "search.n_trials=10", "progress=false",
                          "mutual.weight=1"])
    failed = {("mamba", 2)}
    results, history, runs, trials, decay, mutual, mutual_runs = [], [], [], [], [], [], []
    for seed in SEEDS:
        results += _split_results(seed, failed)
        for j, (arch, rate) in enumerate(ARCHS.items()):
            status = "failed" if (arch, seed) in failed else "ok"
            runs.append({"study": "smoke", "stage": "final", "arch": arch, "seed": seed, "status": status,
                         "reason": "non-finite loss (nan) at step 3" if status != "ok" else "",
                         "d_model": 32, "num_layers": 2, "d_state": 16.0 if arch == "mamba" else np.nan,
                         "d_conv": 4.0 if arch == "mamba" else np.nan, "expand": 2.0 if arch == "mamba" else np.nan,
                         "lr": 3e-3, "num_params": 10_000 * (j + 1), "tokens": 4 * 32 * 7})
            for step in (1, 2, 3, 4):  # fresh_accuracy (the monitor) planted high: tokens must read val_accuracy
                for metric, value in (("val_accuracy", rate * step / 4), ("val_loss", 3 / step),
                                      ("val_ce", 2.5 / step), ("train_loss", 3.2 / step), ("fresh_accuracy", 0.99),
                                      ("fresh_loss", 1.0), ("fresh_ce", 1.0), ("fresh_distance_error", 1.0)):
                    history.append({"study": "smoke", "arch": arch, "seed": seed, "step": step,
                                    "tokens": step * 32 * 7, "epoch": float(step), "metric": metric,
                                    "value": value + (0.01 * seed if not metric.startswith("fresh") else 0.0)})
            if status != "ok":
                continue
            # mutual stage: transformer gains 1 sequence in every cell, the others are unchanged
            rates = {f: rate + (0.1 * (-1) ** (seed + i) if arch == "mamba" else 0.0) for i, f in enumerate(FAMILIES)}
            gain = 1 / N_SEQ if arch == "transformer" else 0.0
            mutual.append(_scores({f: r + gain for f, r in rates.items()}).assign(arch=arch, seed=seed,
                                                                                 split="iid_unseen", length=LENGTH))
            mutual_runs.append({"study": "smoke", "stage": "mutual", "arch": arch, "seed": seed, "status": "ok",
                                "reason": ""})
            for variant in ("gradient", "perturbation"):
                for k in range(1, LENGTH):
                    decay.append({"study": "smoke", "arch": arch, "seed": seed, "variant": variant, "k": k,
                                  "value": math.exp(-(k - 1) / (1 + j)), "n": 20})
    for arch in ARCHS:
        for number in range(10):  # importances are drawn from at least 10 completed trials
            trials.append({"study": "smoke", "stage": "search", "arch": arch, "number": number, "state": "COMPLETE",
                           "value": 1.0 + number, "counted": True, "num_params": 5_000 * (number + 1),
                           "val_accuracy": 0.2 + 0.1 * number})
    cols = ["study", "stage", "arch", "seed", "split", "length", "phase", "family", "position", "metric", "value", "n"]
    models = [(r["arch"], r["seed"]) for r in runs if r["status"] == "ok"]
    tables = {
        "results": pd.concat(results, ignore_index=True).assign(study="smoke", stage="final")[cols],
        "history": pd.DataFrame(history), "runs": pd.DataFrame(runs), "trials": pd.DataFrame(trials),
        "overlap": pd.DataFrame([{"phase": 4, "family": f, "n": N_SEQ, "seen": 10 if f == "lag_1" else 1,
                                  "seen_fraction": 1.0 if f == "lag_1" else 0.1, "seed": s, "study": "smoke"}
                                 for s in SEEDS for f in FAMILIES]),
        "splits": pd.DataFrame([{"study": "smoke", "seed": s, "phase": 4, "family": f, "split": split, "length": L,
                                 "n_sequences": n}
                                for s in SEEDS for f in FAMILIES for split, L, n in SPLIT_SIZES[f]]),
        "ceiling": _ceiling_table(), "oeis": _oeis_table(models),
        "decay": pd.DataFrame(decay),
        "mutual": pd.concat(mutual, ignore_index=True).assign(study="smoke", stage="mutual")[cols],
        "mutual_runs": pd.DataFrame(mutual_runs),
        "cka": pd.DataFrame([{"study": "smoke", "seed": sa, "seed_b": sb, "arch_a": a, "layer_a": la, "arch_b": b,
                              "layer_b": lb, "cka": _cka(a, sa, la, b, sb, lb), "n": N_SEQ * (LENGTH - 1)}
                             for a, sa in models for b, sb in models for la in range(3) for lb in range(3)]),
        # two random embedding tables score 0.5 on the probe's rows (computed by collection)
        "cka_floor": pd.DataFrame([{"study": "smoke", "d_model": 32, "rows": N_SEQ * (LENGTH - 1),
                                    "distinct_tokens": 9, "embedding": 0.5}]),
    }
    write_study(cfg, tables, {"command": "python -m bench.run study=smoke", "commit": "abc1234",
                                "date": "2026-01-01T00:00:00+00:00", "machine": "test", "workers": 1,
                                "storage": cfg.storage_url})
    if not storage:
        return cfg, out
    storage = optuna.storages.RDBStorage(cfg.storage_url)
    dists = {"log2_d_model": optuna.distributions.IntDistribution(4, 6),
             "lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    for j, arch in enumerate(ARCHS):
        search = optuna.create_study(study_name=f"smoke/{arch}", storage=storage)
        for number in range(10):
            search.add_trial(optuna.trial.create_trial(
                params={"log2_d_model": 4 + number % 3, "lr": 1e-3 * (1 + number)}, distributions=dists,
                value=1.0 + number * (j + 1) + 0.1 * (number % 3)))
        final = optuna.create_study(study_name=f"smoke/{arch}/final", storage=storage)
        final.add_trial(optuna.trial.create_trial(value=1.0))
    return cfg, out


def _check_headline(text: str) -> list[str]:
    """Section 2 of the hand-made study's report; returns the architectures in the order shown."""
    # section 2: sorted by iid_unseen accuracy, intervals, ratios, splits, tokens to the ceiling, references
    headline = text[text.index(SECTIONS[1]):text.index(SECTIONS[2])]
    rows = [line for line in headline.splitlines() if line.startswith("| **")]
    order = [re.match(r"\| \*\*(\w+)\*\*", r).group(1) for r in rows[:3]]
    assert order[0] == "transformer" and sorted(order) == sorted(ARCHS)  # lstm and mamba tie on average
    transformer = mean_ci([0.9 * 13 / 14] * len(SEEDS))
    # iid_unseen 13/14 of 90 %; / ceiling (13/14) 90 %; ood 40 % of 13/14 and of the ceiling; lengths 16, 32
    assert (f"| {100 * transformer[0]:.1f} ± 0.0 | 90.0 ± 0.0 | 37.1 ± 0.0 | 40.0 ± 0.0 | 45.0 ± 0.0 | 22.5 ± 0.0 |"
            in rows[0])
    # tokens to 50 % / 90 % of each seed's validation ceiling (VAL_CEILING), val_accuracy rate·step/4 + 0.01·seed:
    # transformer: 448 on every seed; 896 on four, 672 on seed 2 (ceiling 0.55) -> 851
    assert rows[0].endswith("| 448 | 851 | 5 |")
    # lstm: 50 % at 896, 896, 672, 672, 672 -> 762; 90 % only on seed 2
    assert rows[1 + order[1:].index("lstm")].endswith("| 762 | not reached in 4 of 5 seeds | 5 |")
    assert rows[1 + order[1:].index("mamba")].endswith("| 784 | not reached | 4 |")  # seeds 0, 1, 3, 4
    table = headline[:headline.index("<!-- /headline -->")]
    refs = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| *")}
    assert {"*baseline: uniform*", "*baseline: last value*", "*baseline: extrapolate*", "*baseline: lookup*",
            "*ceiling (Bayes)*"} <= set(refs)
    assert "| 92.9 | 100.0 | 92.9 | 100.0 | 50.0 | 25.0 |" in refs["*ceiling (Bayes)*"]
    assert "non-finite loss (nan) at step 3" in headline and "Failed runs (1 of 15)" in headline
    return order


def _check_ceiling(text: str) -> None:
    """Section 3: accuracy / ceiling per family, flags, identifiable positions, the ceiling table."""
    # section 3: accuracy / ceiling per family, the below-baseline flags exactly where planted, on lag_1 only (20
    # sequences per seed); lstm and mamba under lookup on lag_2 (9 sequences per seed) shown without a flag
    ceiling = text[text.index(SECTIONS[2]):text.index(SECTIONS[3])]
    flagged = set()
    for split, part in zip(("iid_unseen", "ood"), ceiling.split("**iid_unseen**")[1].split("**ood**"), strict=True):
        for line in part.splitlines():
            cells = [c.strip() for c in line.split("|")[1:-1]]
            if line.startswith("| **"):
                flagged |= {(cells[0].strip("*"), f, split) for f, c in zip(FAMILIES, cells[1:], strict=True)
                            if c.endswith("↓")}
    assert flagged == {("transformer", "lag_1", "iid_unseen"), ("lstm", "lag_1", "iid_unseen"),
                       ("mamba", "lag_1", "iid_unseen"), ("transformer", "lag_1", "ood")}
    assert "| **transformer** | 90 ↓ | 90 |" in ceiling and "| **lstm** | 50 ↓ | 50 |" in ceiling
    assert "lstm on lag_1 (last value 100.0 % > 50.0 %)" in ceiling and "on lag_2" not in ceiling
    assert "flagged only where that family has at least 20 test sequences per seed on that split" in ceiling
    assert "| **transformer** | 40 ↓ | 40 |" in ceiling and "| *ceiling accuracy (%)* | 100.0 | 85.7 |" in ceiling
    # identifiable positions: lag_1 from position 0, lag_2 from 1 (its position 0 is a Monte Carlo 50 %)
    assert "13 (family, position) cells" in ceiling and "(per family: lag_1 7, lag_2 6)" in ceiling
    assert "| **transformer** | 90.0 ± 0.0 | 5 |" in ceiling and "| *ceiling (Bayes)* | 100.0 | 5 |" in ceiling
    assert "| train | lag_2 | 0 | 50.0 | 0.700 | 50.0 | 0.700 | monte_carlo | 1.00 |" in ceiling


def _check_pairs_and_oeis(text: str, order: list[str]) -> None:
    """Sections 4 and 5: paired comparisons per split, the OEIS scores."""
    # section 4: on iid_unseen transformer beats lstm in every cell (separable), mamba vs lstm is noise; on ood
    # the order turns
    pairs = text[text.index(SECTIONS[3]):text.index(SECTIONS[4])]
    for split, part in zip(("iid_unseen", "ood"), pairs.split("**iid_unseen**")[1].split("**ood**"), strict=True):
        matrix = {line.split("|")[1].strip(" *"): line.split("|")[2:-1]
                  for line in part.splitlines() if line.startswith("| **")}
        cell = lambda a, b: matrix[a][order.index(b)].strip()  # noqa: E731, B023
        sign = "+" if split == "iid_unseen" else "-"
        assert cell("transformer", "lstm").endswith("*") and cell("transformer", "lstm").startswith(sign), split
        assert cell("lstm", "transformer").endswith("*") and not cell("lstm", "mamba").endswith("*"), split
    # section 5: OEIS, each kind beside the baselines, with its window count and the source's licence
    oeis = text[text.index(SECTIONS[4]):text.index(SECTIONS[5])]
    assert "| **transformer** | 32.0 ± 2.0 | 32.0 ± 2.0 |" in oeis  # 0.30 + 0.01·seed: t₄·s/√5 = 0.0196
    assert "| **mamba** | 12.0 ± 2.9 |" in oeis and "| *baseline: last value* | 55.0 | 55.0 |" in oeis
    assert "| *windows* | 40 | 30 | 20 | 10 | 100 | 50 | 150 |" in oeis and "CC BY-SA 4.0" in oeis


def test_report_from_a_hand_made_study(tmp_path, capsys):
    cfg, out = make_study(tmp_path)
    readme = build_report(out, tmp_path / "report", storage_url=cfg.storage_url, study_names=STUDIES)
    text = readme.read_text()
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    for name in FIGURES:  # every figure drawn and embedded with a relative link
        assert (readme.parent / name).stat().st_size > 5000, name
        assert f"]({name})" in text, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    # section 1, with the split sizes per seed
    assert "python -m bench.run study=smoke" in text and "abc1234" in text and "lag_1 100 %" in text
    assert "| seed | iid_seen | iid_unseen | ood | length 16 | length 32 |" in text
    assert "| 4 | 5 | 29 | 30 | 20 | 20 |" in text
    # the first line: transformer is separable from both others on iid_unseen, and at 90 % of the ceiling
    assert text.splitlines()[2].startswith("Best: **transformer** at 83.6 % iid_unseen accuracy (90.0 % of the "
                                           "ceiling)")
    # 0.9 on every seed: the interval's lower end is 90 %, so reached
    assert ("transformer reached 90 % of the ceiling on iid_unseen (the lower end of the 95 % interval over seeds at "
            "least 90 %): transformer 90.0 % (interval 90.0–90.0 %).") in text.splitlines()[2]
    # iid_seen (planted at 98.76 % for lstm, 1.23 % for the others) shows nowhere
    assert not re.search(r"98\.[78]", text)
    order = _check_headline(text)
    _check_ceiling(text)
    _check_pairs_and_oeis(text, order)
    # section 7: generated from the numbers
    findings = text[text.index(SECTIONS[6]):]
    assert "**Best:** transformer" in findings and "transformer > lstm" in findings
    assert "on ood 2 differences of 3 pairs: lstm > transformer" in findings
    assert "mamba k=7" in findings  # exp(-(k-1)/3) > 0.1 up to k=7
    assert "transformer 2" in findings  # lag recall: 90 % of the predictable positions at lag 2
    # transformer 30.0–34.0 %, lstm 20.0–24.0 %: the intervals do not overlap, so the top one is named
    assert ("**Real sequences** (OEIS): on the taught kinds transformer scores highest, 32.0 % (interval 30.0–34.0 %), "
            "its 95 % interval over seeds clear of every other architecture's; the best baseline 55.0 % (last "
            "value)") in findings
    assert "families with at least 20 test sequences per seed): on iid_unseen, transformer on lag_1; lstm on " \
           "lag_1; mamba on lag_1; on ood, transformer on lag_1." in findings
    # 4g and its finding: representation similarity
    assert "### g. Representation similarity" in text and "](cka.png)" in text and "](cka_layers.png)" in text
    assert re.search(r"most similar pair of architectures is (lstm–mamba|mamba–lstm) \(0\.80\), the least similar "
                     r"transformer–lstm \(0\.40\), the mean over 3 pairs 0\.57 \(0\.52 between architectures on "
                     r"different seeds\), against 0\.90 for one architecture on two seeds", findings)
    assert "less similar to each other than two trainings of one (ratio 0.57)" in findings  # 0.517 / 0.9
    assert "similarity rises with depth: 0.30 at the embedding" in findings and "0.52 at the last block" in findings
    assert "on the same seed the embeddings score 0.95" in findings
    assert "70 rows are lookups of 9 distinct tokens, two independent random embedding tables already score 0.50" \
        in text and "0.30 at the embedding (two unrelated random embeddings: 0.50)" in findings
    # sections are referred to by anchor, and every anchor is a heading's
    slugs = {"#" + re.sub(r"[^\w\- ]", "", h.lstrip("#").strip().lower()).replace(" ", "-")
             for h in text.splitlines() if h.startswith("#")}
    links = re.findall(r"\]\((#[^)]+)\)", text)
    assert {"#d-memory", "#8-mutual-learning", "#2-headline", "#3-against-the-ceiling"} <= set(links) <= slugs
    # section 6: mutual learning helps transformer (one more sequence right in every cell), no one else
    mutual = text[text.index("## 8. Mutual learning"):]
    rows = {line.split("|")[1].strip(): line for line in mutual.splitlines() if line.startswith("| ")}
    assert "**helps**" in rows["transformer"] and "+9.29 ± 0.00" in rows["transformer"]  # 1/10 of 13/14 predictable
    assert "no detectable effect" in rows["lstm"] and "+0.00" in rows["lstm"] and "| 0/10/0 |" in rows["lstm"]
    assert "10/0/0" in rows["transformer"] and "](mutual.png)" in mutual
    assert "**Mutual learning** (KL weight 1.0): it helps transformer (+9.3 pp); has no detectable effect on " \
           "lstm (+0.0 pp) and mamba (+0.0 pp)" in findings
    # published: a note on every study, the README and figures as artifacts of every final study
    printed = capsys.readouterr().out
    n = len(FIGURES) + 1  # the README and every figure, per final study; the count says both
    assert f"attached the report to 3 final studies ({n} files each, {3 * n} artifacts in {out / 'artifacts'})" \
        in printed
    storage = optuna.storages.RDBStorage(cfg.storage_url)
    from optuna_dashboard import get_note

    for arch in ARCHS:
        for name in (f"smoke/{arch}", f"smoke/{arch}/final"):
            note = get_note(optuna.load_study(study_name=name, storage=storage))
            assert "archbench report: smoke" in note and "| **transformer** |" in note and str(readme) in note
        metas = optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name=f"smoke/{arch}/final",
                                                                         storage=storage))
        assert sorted(m.filename for m in metas) == sorted(["README.md", *FIGURES])
    files = len(list((out / "artifacts").rglob("*")))
    publish(readme.parent, study="smoke", out_dir=out, storage_url=cfg.storage_url,
            study_names=STUDIES)  # publishing again replaces, never piles up
    assert len(list((out / "artifacts").rglob("*"))) == files
    assert len(optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name="smoke/lstm/final",
                                                                        storage=storage))) == len(FIGURES) + 1


def test_a_tied_study_never_gets_best_and_says_how_far_it_got(tmp_path):
    """transformer given lstm's scores on every split: no architecture is separable on iid_unseen, so
    the first line names the top group, and none reached 90 % of the ceiling: the study's longer
    budget (`long_study` in its stored configuration) is named."""
    _, out = make_study(tmp_path, storage=False)
    results = pd.read_parquet(out / "results.parquet")
    keys = ["seed", "split", "length", "phase", "family", "position", "metric"]
    lstm = results[results.arch == "lstm"].set_index(keys)["value"]
    mine = results.arch == "transformer"
    results.loc[mine, "value"] = results.loc[mine].set_index(keys).index.map(lstm).to_numpy()
    results.to_parquet(out / "results.parquet", index=False)
    stored = OmegaConf.load(out / "config.yaml")
    stored.long_study = "smoke_long"
    OmegaConf.save(stored, out / "config.yaml")
    text = build_report(out, tmp_path / "report").read_text()
    assert "Best" not in text
    first = text.splitlines()[2]
    group = re.match(r"Top group \(not separable at this budget\): (.+?)\. ", first)
    assert group and sorted(group.group(1).split(", ")) == sorted(ARCHS)
    assert ("No architecture reached 90 % of the ceiling on iid_unseen at this budget with the lower end of its 95 % "
            "interval over seeds (closest: " in first
            and "at 50.0 % of it (interval 50.0–50.0 %)); a longer budget (`study=smoke_long`) aims for it." in first)
    assert "**Top group** (not separable at this budget, iid_unseen accuracy)" in text


def test_reached_the_ceiling_needs_the_lower_end_of_the_interval():
    """transformer at 0.95, 0.93, 0.85 of the ceiling: mean 91.0 %, s = 0.0529, t₂·s/√3 = 13.1 pp, so the
    interval 77.9–104.1 % does not clear 90 %; a single seed at 0.92 is its own point, said so."""
    def ratios(per_arch: dict[str, list[float]]) -> pd.DataFrame:
        return pd.DataFrame([(a, "iid_unseen", *mean_ci(v)) for a, v in per_arch.items()],
                            columns=["arch", "split", "mean", "half", "n"])

    stored = SimpleNamespace(setting=lambda key: None)
    spread = {"transformer": [0.95, 0.93, 0.85]}
    text = reach_sentence(stored, SimpleNamespace(order=["transformer"], ratios=ratios(spread)))
    assert text == ("No architecture reached 90 % of the ceiling on iid_unseen at this budget with the lower end of "
                    "its 95 % interval over seeds (closest: transformer at 91.0 % of it (interval 77.9–104.1 %)).")
    one = {**spread, "lstm": [0.92]}
    text = reach_sentence(stored, SimpleNamespace(order=["transformer", "lstm"], ratios=ratios(one)))
    assert text == ("lstm reached 90 % of the ceiling on iid_unseen (the lower end of the 95 % interval over seeds "
                    "at least 90 %): lstm 92.0 % (one seed: no interval).")


def test_oeis_finding_names_a_top_architecture_only_where_intervals_do_not_overlap():
    models = pd.DataFrame({"mean": [0.30, 0.28, 0.10], "half": [0.03, 0.04, 0.01], "seeds": [3, 3, 3]},
                          index=pd.Index(["transformer", "lstm", "mamba"], name="arch"))
    # transformer 27.0–33.0 % overlaps lstm 24.0–32.0 %; mamba 9.0–11.0 % overlaps neither
    assert _oeis_models("taught", models) == (
        "on the taught kinds transformer and lstm are not separable (their 95 % intervals over seeds overlap: the "
        "differences are within the seeds' spread; top by mean transformer, 30.0 % (interval 27.0–33.0 %))")
    assert _oeis_models("other", models.drop("lstm")) == (
        "on the other kinds transformer scores highest, 30.0 % (interval 27.0–33.0 %), its 95 % interval over seeds "
        "clear of every other architecture's")


def test_two_publishes_at_once_leave_one_artifact_per_file(tmp_path, monkeypatch):
    """Both read the study's artifacts before either uploads, unless they take turns: an upload made
    slow widens that window, so without the lock every file would be attached twice."""
    cfg, out = make_study(tmp_path)
    readme = build_report(out, tmp_path / "report")  # not published yet
    slow_upload = publish_module.upload_artifact

    def upload(**kwargs):
        time.sleep(0.05)
        return slow_upload(**kwargs)

    monkeypatch.setattr(publish_module, "upload_artifact", upload)
    go = lambda: publish(readme.parent, study="smoke", out_dir=out, storage_url=cfg.storage_url,  # noqa: E731
                         study_names=STUDIES)
    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for arch in ARCHS:
        metas = optuna.artifacts.get_all_artifact_meta(optuna.load_study(study_name=f"smoke/{arch}/final",
                                                                         storage=cfg.storage_url))
        assert sorted(m.filename for m in metas) == sorted(["README.md", *FIGURES])


def test_missing_decay_and_no_storage_are_said_and_stale_figures_removed(tmp_path):
    cfg, out = make_study(tmp_path, storage=False)
    (out / "decay.parquet").unlink()
    (out / "cka.parquet").unlink()  # collection always writes it: without it the section says so
    stale = tmp_path / "report" / "memory_decay.png"  # from an earlier report, when there were curves
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    text = build_report(out, tmp_path / "report", storage_url=cfg.storage_url, study_names=STUDIES).read_text()
    assert "No figure: no memory-decay curves stored (decay.parquet missing)" in text
    assert "no Optuna storage" in text and "**Memory:** no decay curves stored" in text
    assert ("*No figure: no representation similarity stored (cka.parquet missing).*" in text
            and "**Representations:** no similarity table (see [representation similarity]"
                "(#g-representation-similarity))" in text and "random embedding" not in text)
    assert not stale.exists() and not (stale.parent / "importance.png").exists()
    assert not (out / "optuna.db").exists()  # neither the report nor publishing creates a storage


def test_a_failure_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    _, out = make_study(tmp_path, storage=False)
    readme = tmp_path / "report" / "README.md"
    readme.parent.mkdir()
    readme.write_text("the previous report")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("bench.report.figures.pareto", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(out, readme.parent)
    assert readme.read_text() == "the previous report" and [p.name for p in readme.parent.iterdir()] == ["README.md"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_input_raises_before_anything_is_written(tmp_path):
    with pytest.raises(MissingResults, match=r"results\.parquet is missing"):
        build_report(tmp_path / "empty", tmp_path / "report")
    _, out = make_study(tmp_path, storage=False)
    (out / "config.yaml").unlink()  # the study's configuration is part of what the report reads
    with pytest.raises(MissingResults, match=r"config\.yaml is missing"):
        build_report(out, tmp_path / "report")
    assert not (tmp_path / "report").exists()
    (tmp_path / "file").write_text("not a directory")
    _, out = make_study(tmp_path / "again", storage=False)
    with pytest.raises(ReportInputError, match="exists and is not a directory"):
        build_report(out, tmp_path / "file")


def test_a_study_whose_runs_all_failed_still_reports(tmp_path):
    _, out = make_study(tmp_path, storage=False)
    results = pd.read_parquet(out / "results.parquet")
    results[results.arch.str.startswith("baseline")].to_parquet(out / "results.parquet", index=False)
    runs = pd.read_parquet(out / "runs.parquet").assign(status="failed", reason="non-finite loss")
    runs.to_parquet(out / "runs.parquet", index=False)
    text = build_report(out, tmp_path / "report").read_text()
    assert "Failed runs (15 of 15)" in text and "No architecture has results" in text
    assert "Fewer than two architectures" in text


def test_every_architecture_keeps_its_own_colour():
    """Every registered mixer has a fixed colour slot (a new one must be added to ARCH_ORDER, which
    moves no existing colour), no two share one, and a name not listed still gets a stable colour."""
    assert set(mixer_names()) <= set(ARCH_ORDER) and len(set(ARCH_ORDER)) == len(ARCH_ORDER) <= len(PALETTE)
    assert len({arch_color(a) for a in ARCH_ORDER}) == len(ARCH_ORDER)
    assert arch_color("ntk_attention") == "#bcbd22" and arch_color("transformer") == "#1f77b4"  # as before
    assert arch_color("not_yet_listed") == arch_color("not_yet_listed") in PALETTE[len(ARCH_ORDER):]


# ---------------------------------------------------------------- the CLI


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    from bench.report.__main__ import main as report_main

    cases = {
        "unknown study": (["study=nope"], "unknown study 'nope'"),
        "no stored results": (["study=smoke", f"out_dir={tmp_path / 'empty'}"], "results.parquet is missing"),
        "malformed override": (["study=smoke", "seeds=[1,2"], "malformed override"),
        "unknown flag": (["study=smoke", "--bogus"], "unknown flag"),
    }
    for case, (args, message) in cases.items():
        assert report_main([*args, "--out", str(tmp_path / "r")]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, (case, err)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_end_to_end_from_a_real_study(tmp_path, capsys):
    from bench.report.__main__ import main as report_main
    from bench.run import main as run_main

    overrides = ["study=smoke", f"out_dir={tmp_path / 'run'}", "archs=[lstm,transformer]", "seeds=[0,1]",
                 "train.steps=20", "train.val_every=10", "train.batch_size=8", "data.test_per_family=8",
                 "data.val_size=8", "search.n_trials=3", "search.steps=10", "search.space.d_model=[16,32]",
                 "search.space.d_state=[4,8]", "progress=false", "tracking=none", "report=false", "mutual.weight=1"]
    assert run_main(overrides) == 0
    cka, runs = pd.read_parquet(tmp_path / "run" / "cka.parquet"), pd.read_parquet(tmp_path / "run" / "runs.parquet")
    assert len(cka) == (runs["num_layers"] + 1).sum() ** 2  # every ordered pair of (model, layer), 4 models
    assert cka["cka"].between(0, 1 + 1e-9).all()
    assert report_main([*overrides, "--out", str(tmp_path / "report")]) == 0
    readme = tmp_path / "report" / "README.md"
    assert f"wrote {readme}" in capsys.readouterr().out
    text = readme.read_text()
    assert all(s in text for s in SECTIONS)
    # phase-1 families: no lag figure; 3 search trials: no importances (they need 10), said instead
    for name in set(FIGURES) - {"lag_accuracy.png", "importance.png"}:
        assert (readme.parent / name).is_file() and f"]({name})" in text, name
    assert not (readme.parent / "lag_accuracy.png").exists() and not (readme.parent / "importance.png").exists()
    assert "lstm: 3 completed search trial(s), importances need at least 10" in text
    assert "| **lstm** |" in text and "| **transformer** |" in text and "*baseline: extrapolate*" in text
    assert "two independent random embedding tables already score" in text  # collection stored cka_floor
    assert "## 8. Mutual learning" in text and "| lstm |" in text[text.index("## 8."):]
    assert len(optuna.artifacts.get_all_artifact_meta(optuna.load_study(
        study_name="smoke/lstm/final", storage=f"sqlite:///{tmp_path / 'run' / 'optuna.db'}"))) == len(FIGURES) - 1


def _predictions(failed: set) -> pd.DataFrame:
    """predictions.parquet of the hand-made study, as `_split_results` scores it: in family lag_k,
    sequence i of a final run is right at the predictable positions (p >= k-1) iff i < rate·N_SEQ."""
    frames = []
    for seed in SEEDS:
        for split in ("iid_unseen", "ood"):
            for arch in ARCHS:
                if (arch, seed) in failed:
                    continue
                for i, family in enumerate(FAMILIES):
                    rate = SPLIT_RATES.get(split, ARCHS)[arch] + (0.1 * (-1) ** (seed + i) if arch == "mamba" else 0.0)
                    k = int(family.removeprefix("lag_"))
                    seq, pos = np.divmod(np.arange(N_SEQ * (LENGTH - 1)), LENGTH - 1)
                    frames.append(pd.DataFrame({
                        "run": f"{arch}-seed{seed}", "study": "smoke", "stage": "final", "arch": arch, "seed": seed,
                        "replicate": 0, "split": split, "length": LENGTH, "phase": 4, "family": family,
                        "sequence": seq.astype("int64"), "position": pos.astype("int16"),
                        "correct": (seq < round(rate * N_SEQ)) & (pos >= k - 1), "distance": np.int16(0),
                        "loss": np.float32(0.5)}))
    return pd.concat(frames, ignore_index=True)


def test_report_reads_predictions_where_stored(tmp_path):
    """With predictions.parquet the comparisons and intervals are the hierarchical ones on sequences."""
    cfg, out = make_study(tmp_path)
    _predictions({("mamba", 2)}).to_parquet(out / "predictions.parquet", compression="zstd")
    text = build_report(out, tmp_path / "report").read_text()
    pairs = text[text.index(SECTIONS[3]):text.index(SECTIONS[4])]
    assert "from per-sequence scores (predictions.parquet" in pairs and "(20 test sequences, 5 seeds)" in pairs
    # per family 10 sequences, the same 4 (sequences 5-8) make transformer − lstm on every seed: p 0.04
    # before Holm; not a win
    assert "Per family" in pairs and "| lag_1 | — | lstm, mamba, transformer |" in pairs
    findings = text[text.index(SECTIONS[6]):]
    assert "**Best:** transformer" in findings and "hierarchical test on per-sequence scores" in findings
