"""`python -m bench.report study=<name> [key=value ...] [--out DIR] [--no-publish]`: a study's report.

Builds `reports/<study>/README.md` (or `--out DIR`, or `report_dir=`) and its PNG figures from what
`bench.run` stored in the study's `out_dir` (results, history, runs, trials, overlap, decay, cka, mutual tables,
config.yaml, meta.yaml, and the Optuna storage for hyperparameter importances). Nothing is retrained;
a study collected before `cka.parquet` existed gets its CKA table computed from the final models'
stored weights (`models/`), the same way `bench.run` computes it.
The overrides are `bench.run`'s, so `out_dir=`/`storage=` find a study stored elsewhere.

Sections: 1. what was run (budget, seeds, data, storage, the command that reproduces it, test-set
overlap with training); 2. headline table (best configuration, size, test scores as mean and 95 %
Student-t interval over seeds, baselines beside them, failed runs); 3. paired comparisons between
architectures on the same (seed, family) test cells (paired bootstrap, Holm-corrected); 4. figures;
5. findings generated from the numbers; 6. for a study with a mutual stage (`mutual.weight`), each
architecture's test accuracy trained jointly against alone, paired by seed and by test cell.

The report is built in a temporary directory beside the target and moved in with the README last,
so a failure never leaves a half-written README. `publish` then attaches it to the study's Optuna
studies for optuna-dashboard: the README and figures as artifacts of each `<study>/<arch>/final`
study (stored in `<out_dir>/artifacts`), the headline as the note of every search and final study.

Bad input exits with code 2 and one `error: ...` line on stderr (as `bench.run`): an unknown
study, a malformed override, a study with no stored results (naming the missing file).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from omegaconf import OmegaConf

from bench.config import Config, ConfigError
from bench.data import FAMILY_NAMES
from bench.metrics import ALL, BASELINES
from bench.run import compose_config, entry_point
from bench.study import final_name, first_line, open_storage, search_name

REQUIRED = ("results.parquet", "runs.parquet", "meta.yaml")  # without these there is nothing to report
# <name>.parquet; a missing one is noted in its section
OPTIONAL = ("history", "trials", "overlap", "decay", "cka", "mutual", "mutual_runs", "mutual_kl")
RESAMPLES = 10_000  # paired bootstrap resamples
BOOTSTRAP_SEED = 0
ALPHA = 0.05
REMEMBER = 0.10  # "remembers up to k": the decay curve is still above this fraction of its first value
RECALL = 0.5  # "recalls lag k": accuracy on the predictable positions at least this
FIGURES = {  # file -> what it shows
    "accuracy.png": "accuracy and distance error per architecture",
    "families.png": "accuracy per family",
    "learning_curves.png": "learning curves",
    "memory_decay.png": "memory-decay curves",
    "lag_accuracy.png": "accuracy against lag k",
    "pareto.png": "accuracy against parameters",
    "importance.png": "hyperparameter importances",
    "cka.png": "last-block representation similarity (linear CKA)",
    "cka_layers.png": "layer × layer representation similarity (linear CKA)",
    "mutual.png": "gain from mutual learning per architecture",
}
LAG = re.compile(r"lag_(\d+)$")
SIZE_COLUMNS = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")

# ---------------------------------------------------------------- statistics


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact finite sums)."""
    theta = math.atan(t / math.sqrt(df))
    s, c, c2 = math.sin(theta), math.cos(theta), math.cos(theta) ** 2
    if df % 2:
        total, term = 1.0, 1.0
        for k in range(1, (df - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * c * total if df > 1 else 0.0))
    total, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


@functools.cache
def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value t_{(1+level)/2, df}, e.g. t_quantile(2) = 4.303."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the Student-t interval (mean ± t·s/√n) and n; half-width NaN for n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(x[0]), math.nan, 1
    return float(x.mean()), t_quantile(n - 1, level) * float(x.std(ddof=1)) / math.sqrt(n), n


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(diffs: Any, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """Two-sided bootstrap p-value of mean(diffs) != 0, resampling the paired cells, and the 95 %
    percentile interval of the mean: p = 2 · min(#means <= 0, #means >= 0 (each + 1)) / (B + 1)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or not np.any(d):
        return 1.0, float(d.mean()) if len(d) else math.nan, float(d.mean()) if len(d) else math.nan
    means = d[np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    p = 2 * min((means <= 0).sum() + 1, (means >= 0).sum() + 1) / (resamples + 1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return min(1.0, float(p)), float(lo), float(hi)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# ---------------------------------------------------------------- tables from the stored results


@dataclass
class Stored:
    """What a study stored in its out_dir; optional tables are None when absent."""

    cfg: Config  # the configuration the study ran under (config.yaml), else the composed one
    meta: dict[str, Any]
    results: pd.DataFrame
    runs: pd.DataFrame
    history: pd.DataFrame | None
    trials: pd.DataFrame | None
    overlap: pd.DataFrame | None
    decay: pd.DataFrame | None
    cka: pd.DataFrame | None = None
    cka_note: str = ""  # where the cka table came from when not stored, or why there is none
    mutual: pd.DataFrame | None = None  # the mutual stage's test scores (schema of results)
    mutual_runs: pd.DataFrame | None = None
    mutual_kl: pd.DataFrame | None = None  # pairwise KL between architectures' predictions, alone and jointly


def load(cfg: Config) -> Stored:
    """Read the study's stored tables; ConfigError naming the first missing required file."""
    out = cfg.output_dir
    missing = [f for f in REQUIRED if not (out / f).is_file()]
    if missing:
        raise ConfigError(f"study '{cfg.name}' has no stored results in {out} ({missing[0]} is missing); "
                          f"run python -m bench.run study={cfg.name} first")
    stored_cfg = cfg
    if (out / "config.yaml").is_file():
        try:
            stored_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                             OmegaConf.load(out / "config.yaml")))
        except Exception:  # a config.yaml of an older schema: describe the run from the composed config
            stored_cfg = cfg
    optional = {name: pd.read_parquet(out / f"{name}.parquet") if (out / f"{name}.parquet").is_file() else None
                for name in OPTIONAL}
    stored = Stored(cfg=stored_cfg, meta=dict(OmegaConf.to_container(OmegaConf.load(out / "meta.yaml"))),
                    results=pd.read_parquet(out / "results.parquet"), runs=pd.read_parquet(out / "runs.parquet"),
                    **optional)
    if stored.cka is None:
        stored.cka, stored.cka_note = cka_from_weights(cfg, stored_cfg, stored.runs)
    return stored


def cka_from_weights(cfg: Config, stored_cfg: Config, runs: pd.DataFrame) -> tuple[pd.DataFrame | None, str]:
    """The CKA table of a study collected before `bench.run` stored one (cka.parquet), computed as
    `bench.run.cka_table_for` does from the final models' stored weights (nothing is retrained), with
    a note saying so; (None, why) where there are no weights or they cannot be loaded."""
    import torch

    from bench.run import cka_table_for
    from bench.study import Context

    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    have = [r for r in ok.to_dict("records")
            if (cfg.output_dir / "models" / f"{r['arch']}-seed{r['seed']}.pt").is_file()]
    if not have:
        return None, ("no representation similarity stored (cka.parquet missing) and no stored model weights to "
                      "compute it from")
    study_cfg = replace(stored_cfg, out_dir=str(cfg.output_dir))  # the run's settings, the weights where found
    try:
        table = cka_table_for(study_cfg, Context.build(study_cfg, torch.device("cpu")).test, have)
    except Exception as e:  # weights of an older model definition, ...: the report stands without it
        return None, f"cka.parquet missing, and computing it from the stored weights failed ({first_line(e)[:160]})"
    note = (f"cka.parquet was not stored with this study, so `bench.report` computed it from the stored weights "
            f"of {_n(len(have), 'final model')}")
    return table, note + (f" ({len(ok) - len(have)} without stored weights left out)" if len(have) < len(ok) else "")


def is_baseline(arch: str) -> bool:
    return arch in BASELINES or arch.startswith("baseline_")


def study_level(results: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, seed, metric) the score over the whole test set (phase <NA>, family 'all', position <NA>)."""
    top = results[results["phase"].isna() & (results["family"] == ALL) & results["position"].isna()]
    return top[["arch", "seed", "metric", "value"]].reset_index(drop=True)


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    """arch, metric, mean, half (95 % Student-t half-width over seeds; NaN for one seed), n."""
    rows = [(arch, metric, *mean_ci(g["value"])) for (arch, metric), g in per_seed.groupby(["arch", "metric"])]
    return pd.DataFrame(rows, columns=["arch", "metric", "mean", "half", "n"])


def family_cells(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per (arch, seed, phase, family) the family's score over all positions: the paired cells."""
    rows = results[results["phase"].notna() & (results["family"] != ALL) & results["position"].isna()
                   & (results["metric"] == metric)]
    return rows[["arch", "seed", "phase", "family", "value"]].reset_index(drop=True)


def paired_comparisons(cells: pd.DataFrame, archs: list[str], resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every pair (a, b) of `archs` on the (seed, phase, family) cells both have: mean difference a − b,
    its 95 % bootstrap interval, wins/ties/losses, bootstrap and sign-test p-values, Holm-adjusted
    bootstrap p-value and whether it is significant at ALPHA. Each cell is the same test sequences
    for both (the test set is fixed; seed s gives both the same training stream)."""
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
    table = pd.DataFrame(rows, columns=["a", "b", "cells", "diff", "lo", "hi", "wins", "ties", "losses", "p_boot",
                                        "p_sign"])
    table["p_holm"] = holm(table["p_boot"].tolist()) if len(table) else []
    table["significant"] = table["p_holm"] < ALPHA
    return table


def mutual_effect(results: pd.DataFrame, mutual: pd.DataFrame, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Per architecture: test accuracy trained alone (the final stage) and jointly (the mutual stage),
    and the gain joint − alone paired by seed (mean, 95 % Student-t half-width over seeds) and by
    (seed, phase, family) cell (paired bootstrap p-value, Holm-corrected over architectures). Both
    runs of a pair share the seed, hence the data stream, initialisation and test sequences."""
    alone, joint = study_level(results), study_level(mutual)
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
    table["p_holm"] = holm(table["p_boot"].tolist()) if len(table) else []
    table["significant"] = table["p_holm"] < ALPHA
    return table


def mutual_verdict(row: Any) -> str:
    """'helps', 'hurts' or 'no detectable effect', from the Holm-corrected cell test."""
    if not row.significant:
        return "no detectable effect"
    return "helps" if row.gain > 0 else "hurts"


def lag_accuracy(results: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (arch, seed, k) on the lag_k families over the predictable positions only.

    Position p predicts x[p+1], and x_t = x_{t-k} is determined only for t >= k, so only positions
    p >= k - 1 count; positions are pooled weighted by their number of predictions n.
    """
    rows = results[(results["metric"] == "accuracy") & results["position"].notna() & results["phase"].notna()]
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


CKA_KINDS = {  # cka_means' kind -> what a pair of that kind is
    "architectures": "two architectures on the same seed",
    "architectures_across_seeds": "two architectures on different seeds",
    "seeds": "one architecture on two different seeds",
    "model": "one model against itself (one seed)",
}


def cka_means(cka: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds (or seed pairs) of the layer × layer CKA of every ordered pair of architectures:
    arch_a, layer_a, arch_b, layer_b, kind (`CKA_KINDS`), last (both layers are their model's last
    block), cka, pairs (model pairs averaged). 'model' rows only for an architecture with one seed."""
    depth = pd.concat([cka[["arch_a", "seed", "layer_a"]].set_axis(["arch", "seed", "layer"], axis=1),
                       cka[["arch_b", "seed_b", "layer_b"]].set_axis(["arch", "seed", "layer"], axis=1)]
                      ).groupby(["arch", "seed"])["layer"].max()
    last = ((cka.set_index(["arch_a", "seed"]).index.map(depth) == cka["layer_a"].to_numpy())
            & (cka.set_index(["arch_b", "seed_b"]).index.map(depth) == cka["layer_b"].to_numpy()))
    t = cka.assign(last=np.asarray(last, dtype=bool))
    same_seed, same_arch = t.seed == t.seed_b, t.arch_a == t.arch_b
    kind = np.select([same_seed & ~same_arch, ~same_seed & ~same_arch, ~same_seed & same_arch],
                     ["architectures", "architectures_across_seeds", "seeds"], "model")
    t = t.assign(kind=kind)
    t = t[(t.kind != "model") | ~t.arch_a.isin(set(t.loc[t.kind == "seeds", "arch_a"]))]
    keys = ["arch_a", "layer_a", "arch_b", "layer_b", "kind", "last"]
    return t.groupby(keys, as_index=False)["cka"].agg(cka="mean", pairs="size")


def cka_floors(s: Stored, configs: pd.DataFrame) -> dict[str, float]:
    """What unrelated representations score, at the widest d_model d of the study: 'rows', the Gaussian
    floor √(d·d)/n over the table's n rows (`bench.analysis.cka.linear_cka`), and 'embedding', two
    independent random embedding tables on the probe tokens (`embedding_floor`), the floor for layer 0,
    whose rows repeat tokens; each left out where it cannot be had."""
    from bench.analysis.cka import embedding_floor

    if "d_model" not in configs or not configs["d_model"].notna().any() or "n" not in s.cka:
        return {}
    d, rows = int(configs["d_model"].max()), int(s.cka["n"].max())
    floors = {"rows": d / rows}
    try:
        import torch

        from bench.run import probe_tokens
        from bench.study import Context

        tokens = probe_tokens(Context.build(s.cfg, torch.device("cpu")).test)
        if tokens.numel() == rows:  # the same probe the table was computed on
            floors["embedding"] = embedding_floor(tokens, d)
            floors["distinct_tokens"] = float(tokens.unique().numel())
    except Exception:  # a config of an older schema: the row floor stands alone
        pass
    return floors


def cka_layer_kinds(means: pd.DataFrame) -> tuple[str, str]:
    """The kinds the layer × layer figure shows: off the diagonal two architectures on different seeds
    where there are several seeds (on one seed, layer 0 mostly measures the shared initialisation of the
    embedding, so early layers would look alike for that reason alone), and on the diagonal one
    architecture on two seeds; with one seed, same-seed pairs and each model against itself."""
    kinds = set(means.kind)
    return ("architectures_across_seeds" if "architectures_across_seeds" in kinds else "architectures",
            "seeds" if "seeds" in kinds else "model")


def cka_last_matrix(means: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Architecture × architecture CKA of the last blocks (`cka_means`), rows and columns in `order`:
    two architectures on the same seed off the diagonal, one architecture on two seeds on it (1 with
    one seed)."""
    diagonal = "seeds" if (means.kind == "seeds").any() else "model"
    last = means[means["last"] & means.kind.isin(["architectures", diagonal])]
    archs = [a for a in order if a in set(last.arch_a)]
    return last.pivot_table(index="arch_a", columns="arch_b", values="cka", aggfunc="mean").reindex(
        index=archs, columns=archs)


def cka_finding(means: pd.DataFrame, order: list[str], floor: dict[str, float] | None = None) -> str:
    """One paragraph part from the numbers: the most and least similar pair of architectures at the last
    block, the cross-architecture mean against the seed-to-seed reference, and the trend with depth."""
    rank = {a: i for i, a in enumerate(order)}
    position = lambda col: means[col].map(lambda a: rank.get(a, len(rank)))  # noqa: E731
    pairs = means[position("arch_a") < position("arch_b")]  # each pair of architectures once
    same = pairs[pairs.kind == "architectures"]
    last = same[same["last"]].dropna(subset=["cka"]).sort_values("cka", ascending=False)
    if not len(last):
        return "**Representations:** fewer than two architectures with stored models: no similarity to compare."
    pair = lambda r: f"{r.arch_a}–{r.arch_b} ({r.cka:.2f})"  # noqa: E731
    text = ("**Representations** (linear CKA of the last block's outputs, mean over seeds): the most similar pair "
            f"of architectures is {pair(last.iloc[0])}")
    mean = last["cka"].mean()
    if len(last) > 1:
        text += f", the least similar {pair(last.iloc[-1])}, the mean over {_n(len(last), 'pair')} {mean:.2f}"
    across = pairs[pairs.kind == "architectures_across_seeds"]
    across_last = across.loc[across["last"], "cka"].mean() if len(across) else math.nan
    if np.isfinite(across_last):
        text += f" ({across_last:.2f} between architectures on different seeds)"
    seeds = means[(means.kind == "seeds") & means["last"]].groupby("arch_a")["cka"].mean().sort_values()
    if len(seeds):
        fair = across_last if np.isfinite(across_last) else mean  # both sides on different seeds where possible
        spread = (f"{seeds.index[0]} {seeds.iloc[0]:.2f} to {seeds.index[-1]} {seeds.iloc[-1]:.2f}" if len(seeds) > 1
                  else str(seeds.index[0]))
        verdict = ("different architectures end up nearly as similar to each other as two trainings of one"
                   if fair >= 0.9 * seeds.mean() else
                   "different architectures end up less similar to each other than two trainings of one")
        text += (f", against {seeds.mean():.2f} for one architecture on two seeds ({spread}): {verdict} "
                 f"(ratio {fair / seeds.mean():.2f})")
    off = across if len(across) else pairs[pairs.kind == "architectures"]
    depth = [(label, off[(off.layer_a == layer) & (off.layer_b == layer)]["cka"].mean())
             for label, layer in (("the embedding", 0), ("block 1", 1))]
    depth = [(label, v) for label, v in depth if np.isfinite(v)]
    last_off = off.loc[off["last"], "cka"].mean()
    if depth and np.isfinite(last_off):
        trend = "rises" if last_off > depth[0][1] else "falls" if last_off < depth[0][1] else "stays level"
        shown = [f"{v:.2f} at {label}" for label, v in depth]
        if "embedding" in (floor or {}) and depth[0][0] == "the embedding":
            shown[0] += f" (two unrelated random embeddings: {floor['embedding']:.2f})"
        text += (f". Between architectures{' on different seeds' if len(across) else ''}, similarity {trend} with "
                 f"depth: {', '.join(shown)}, {last_off:.2f} at the last block")
        emb_same = same[(same.layer_a == 0) & (same.layer_b == 0)]["cka"].mean()
        if len(across) and np.isfinite(emb_same) and emb_same - depth[0][1] > 0.2:
            text += (f" (on the same seed the embeddings score {emb_same:.2f}, mostly because every architecture of a "
                     "seed starts from the same random stream)")
    return text + "."


def pareto_front(points: pd.DataFrame) -> list[str]:
    """Architectures no other one beats with fewer (or equal) parameters: arch, num_params, mean."""
    front, best = [], -math.inf
    for _, p in points.sort_values(["num_params", "mean"], ascending=[True, False]).iterrows():
        if p["mean"] > best:
            front.append(p["arch"])
            best = p["mean"]
    return front


def param_importances(cfg: Config, archs: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """PED-ANOVA importances (Optuna's default evaluator) of each architecture's search study, and a note
    per one skipped."""
    if cfg.search.n_trials == 0:
        return {}, ["no search stage (search.n_trials=0): every architecture trained at the study's model sizes"]
    storage, why = _existing_storage(cfg)
    if storage is None:
        return {}, [why]
    names = set(optuna.get_all_study_names(storage))
    values, notes = {}, []
    for arch in archs:
        name = search_name(cfg, arch)
        if name not in names:
            notes.append(f"{arch}: no search study `{name}`")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) < 2:
            notes.append(f"{arch}: {len(done)} completed search trial(s), importances need 2")
            continue
        try:
            values[arch] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except Exception as e:  # too few distinct values, a dynamic space Optuna cannot assess, ...
            notes.append(f"{arch}: importances failed ({first_line(e)[:120]})")
    return values, notes


def _existing_storage(cfg: Config) -> tuple[Any, str]:
    """The study's storage if there is one (never creates the default SQLite file), else (None, why)."""
    if cfg.storage is None and not (cfg.output_dir / "optuna.db").is_file():
        return None, f"no Optuna storage ({cfg.output_dir / 'optuna.db'} does not exist)"
    try:
        return open_storage(cfg), ""
    except ConfigError as e:
        return None, str(e)


# ---------------------------------------------------------------- formatting


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _fmt(mean: float, half: float, n: int, scale: float = 1.0, digits: int = 1) -> str:
    """'48.2 ± 0.6', or '48.2 (n=1)' when one seed gives no interval, or '—'."""
    if n == 0 or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(half):
        return f"{mean * scale:.{digits}f} (n=1)"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"


def _size(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or pd.isna(value):
        return "—"
    return f"{value:.2g}" if key == "lr" else str(int(value))


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _list(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else "none"


# ---------------------------------------------------------------- the report


@dataclass
class Numbers:
    """Everything the sections, figures and findings are drawn from."""

    order: list[str]  # architectures by mean test accuracy, best first
    summary: pd.DataFrame  # arch, metric, mean, half, n (architectures and baselines)
    configs: pd.DataFrame  # per arch: sizes, lr, num_params (from its final runs)
    cells: pd.DataFrame  # paired (seed, phase, family) accuracy cells
    pairs: pd.DataFrame  # paired_comparisons
    families: pd.DataFrame  # arch x family mean accuracy (baselines last)
    lag: pd.DataFrame | None  # arch, k, mean, half, n (lag studies)
    decay: pd.DataFrame | None  # mean decay curves
    points: pd.DataFrame  # arch, num_params, mean, half (final runs)
    front: list[str]
    importances: dict[str, dict[str, float]]
    importance_notes: list[str]
    cka: pd.DataFrame | None = None  # cka_means: layer × layer similarity, mean over seeds
    cka_floor: dict[str, float] | None = None  # cka_floors: what unrelated representations score
    mutual: pd.DataFrame | None = None  # mutual_effect: joint vs alone per architecture


def compute(s: Stored, cfg: Config, resamples: int = RESAMPLES) -> Numbers:
    summary = summarize(study_level(s.results))
    acc = summary[summary.metric == "accuracy"].set_index("arch")["mean"]
    archs = [a for a in s.results["arch"].unique() if not is_baseline(a)]
    order = sorted(archs, key=lambda a: (-acc.get(a, -1.0), a))
    ok = s.runs[s.runs["status"] == "ok"] if "status" in s.runs else s.runs
    configs = ok.groupby("arch")[[c for c in (*SIZE_COLUMNS, "num_params") if c in ok]].first()
    cells = family_cells(s.results)
    families = cells.pivot_table(index="arch", columns="family", values="value", aggfunc="mean")
    family_order = _family_order(families.columns)
    families = families.reindex(index=[*order, *[b for b in BASELINES if b in families.index]], columns=family_order)
    lag = None
    if is_lag_study(s.results):
        per_seed = lag_accuracy(s.results)
        lag = pd.DataFrame([(a, k, *mean_ci(g["value"])) for (a, k), g in per_seed.groupby(["arch", "k"])],
                           columns=["arch", "k", "mean", "half", "n"])
    points = summary[(summary.metric == "accuracy") & summary.arch.isin(order)].merge(
        configs["num_params"].reset_index(), on="arch") if "num_params" in configs else pd.DataFrame()
    importances, notes = param_importances(cfg, order)
    return Numbers(order=order, summary=summary, configs=configs, cells=cells,
                   pairs=paired_comparisons(cells, order, resamples), families=families, lag=lag,
                   decay=decay_means(s.decay) if s.decay is not None and len(s.decay) else None,
                   points=points, front=pareto_front(points) if len(points) else [],
                   importances=importances, importance_notes=notes,
                   cka=cka_means(s.cka) if s.cka is not None and len(s.cka) else None,
                   cka_floor=cka_floors(s, configs) if s.cka is not None and len(s.cka) else None,
                   mutual=mutual_effect(s.results, s.mutual, resamples)
                   if s.mutual is not None and len(s.mutual) else None)


def _family_order(names: Any) -> list[str]:
    """Families in the registry's order (phase by phase), unknown names last."""
    return sorted(names, key=lambda f: (FAMILY_NAMES.index(f) if f in FAMILY_NAMES else len(FAMILY_NAMES), f))


def draw_figures(s: Stored, n: Numbers, out: Path) -> dict[str, str]:
    """Write every figure the data allow into `out`; returns {file: ''} for drawn ones and {file: why} for
    the ones left out."""
    from bench import plots

    drawn: dict[str, str] = {}
    base = n.summary[n.summary.arch.isin(BASELINES)]
    plots.overall(n.summary[n.summary.arch.isin(n.order)], base, n.order, out / "accuracy.png")
    drawn["accuracy.png"] = ""
    if n.families.size:
        plots.family_heatmap(n.families, out / "families.png")
        drawn["families.png"] = ""
    else:
        drawn["families.png"] = "no per-family results"
    history = s.history if s.history is not None else pd.DataFrame(columns=["arch", "metric"])
    if (history["metric"] == "val_accuracy").any():  # failed runs' history up to the failure too
        plots.learning_curves(history, _with_others(n.order, history["arch"]), out / "learning_curves.png")
        drawn["learning_curves.png"] = ""
    else:
        drawn["learning_curves.png"] = "no validation history stored (history.parquet missing or empty)"
    if n.decay is not None:
        plots.memory_decay(n.decay, _with_others(n.order, n.decay["arch"]), out / "memory_decay.png")
        drawn["memory_decay.png"] = ""
    else:
        drawn["memory_decay.png"] = ("no memory-decay curves stored (decay.parquet missing)" if s.decay is None
                                     else "decay.parquet holds no curves (no final run finished)")
    if n.lag is not None:
        plots.lag_accuracy(n.lag, n.order, out / "lag_accuracy.png")
        drawn["lag_accuracy.png"] = ""
    if len(n.points):
        trials = s.trials if s.trials is not None else pd.DataFrame()
        if {"stage", "state", "num_params", "val_accuracy"} <= set(trials.columns):
            trials = trials[(trials.stage == "search") & (trials.state == "COMPLETE")].dropna(
                subset=["num_params", "val_accuracy"])
        else:
            trials = pd.DataFrame(columns=["arch", "num_params", "val_accuracy"])
        plots.pareto(n.points, n.front, trials, out / "pareto.png")
        drawn["pareto.png"] = ""
    else:
        drawn["pareto.png"] = "no finished final run"
    if n.importances:
        plots.importances(n.importances, out / "importance.png")
        drawn["importance.png"] = ""
    else:
        drawn["importance.png"] = "; ".join(n.importance_notes) or "no importances"
    if n.cka is not None:
        archs = _with_others(n.order, n.cka["arch_a"])
        rows = int(s.cka["n"].max()) if "n" in s.cka else None
        off, diagonal = cka_layer_kinds(n.cka)
        plots.cka_matrix(cka_last_matrix(n.cka, archs), out / "cka.png", rows,
                         "one architecture, two seeds" if diagonal == "seeds" else "1 (one seed: no seed-to-seed "
                         "reference)")
        plots.cka_layers(n.cka[n.cka.kind.isin([off, diagonal])], archs, out / "cka_layers.png",
                         f"{CKA_KINDS[off]} off the diagonal, {CKA_KINDS[diagonal]} on it (framed)")
        drawn["cka.png"] = drawn["cka_layers.png"] = ""
    else:
        why = s.cka_note or ("no representation similarity stored (cka.parquet missing)" if s.cka is None
                             else "cka.parquet holds no rows (no final run finished)")
        drawn["cka.png"] = drawn["cka_layers.png"] = why
    if n.mutual is not None and len(n.mutual):
        plots.mutual_gain(n.mutual, [a for a in n.order if a in set(n.mutual.arch)], out / "mutual.png")
        drawn["mutual.png"] = ""
    elif s.cfg.mutual.weight is not None:
        drawn["mutual.png"] = "no mutual-stage results stored (mutual.parquet missing or empty)"
    return drawn


def _with_others(order: list[str], archs: pd.Series) -> list[str]:
    """`order`, then any other architecture in `archs` (one without test results), sorted."""
    return [*order, *sorted(set(archs) - set(order) - set(BASELINES))]


def _figure(drawn: dict[str, str], name: str, caption: str) -> str:
    why = drawn.get(name)
    if why is None:
        return ""
    return f"![{caption}]({name})\n\n" if not why else f"*No figure: {why}.*\n\n"


def section_run(s: Stored, cfg: Config) -> str:
    c, m = s.cfg, s.meta
    search = (f"{c.search.n_trials} trials × {c.search.steps or c.train.steps} steps × batch {c.train.batch_size} "
              f"per architecture (seed {c.search.seed}; TPE, {c.search.pruner} pruner; space d_model "
              f"{list(c.search.space.d_model)}, layers {list(c.search.space.num_layers)}, lr {list(c.search.space.lr)})"
              if c.search.n_trials else
              f"none: every architecture at d_model {c.model.d_model}, {c.model.num_layers} layers, "
              f"d_state {c.model.d_state}")
    iso = f"; sized to equal {c.iso} (`iso={c.iso}`)" if c.iso != "none" else ""
    tokens = int(s.runs["tokens"].max()) if "tokens" in s.runs and s.runs["tokens"].notna().any() else None
    final = (f"{c.train.steps} steps × batch {c.train.batch_size} × length {c.data.length}"
             + (f" (up to {tokens:,} tokens)" if tokens else "") + f" per architecture and seed{iso}")
    fam = s.results[(s.results["family"] != ALL) & s.results["phase"].notna()][["phase", "family"]].drop_duplicates()
    data = "; ".join(f"phase {int(p)}: {', '.join(_family_order(g['family']))}" for p, g in fam.groupby("phase"))
    archs = [a for a in s.results["arch"].unique() if not is_baseline(a)]
    lines = [
        f"- **Command:** `{m.get('command') or '(not recorded)'}`",
        f"- **Commit:** `{m.get('commit', '?')}` · **date:** {m.get('date', '?')} · "
        f"**machine:** {m.get('machine', '?')} · **workers:** {m.get('workers', '?')}",
        f"- **Search:** {search}",
        f"- **Final:** {final}; early stopping {'on' if c.train.early_stopping else 'off'}",
        f"- **Seeds:** {', '.join(str(x) for x in sorted(s.results['seed'].unique()))} · "
        f"**architectures:** {', '.join(sorted(archs))}",
        f"- **Data:** {data or '—'} ({c.data.test_per_family} test sequences per family)",
        f"- **Storage:** `{m.get('storage', cfg.storage_url)}`",
        f"- **Reproduce:** `{m.get('command') or f'python -m bench.run study={cfg.name}'}` "
        f"(resumes if the storage is there; rebuild this report: `{rebuild_command(cfg)}`)",
        f"- **Test-set overlap with training:** {overlap_line(s.overlap)}",
    ]
    return "## 1. What was run\n\n" + "\n".join(lines) + "\n"


def rebuild_command(cfg: Config) -> str:
    extra = (f" out_dir={cfg.out_dir}" if cfg.out_dir else "") + (f" storage={cfg.storage}" if cfg.storage else "")
    return f"python -m bench.report study={cfg.name}{extra}"


def overlap_line(overlap: pd.DataFrame | None) -> str:
    """One line: share of test sequences drawn verbatim in training, plus the families where it is notable."""
    if overlap is None or not len(overlap):
        return "not recorded (overlap.parquet missing)."
    total = overlap["seen"].sum() / overlap["n"].sum()
    per = overlap.groupby("family")[["seen", "n"]].sum()
    per = per["seen"] / per["n"]
    per = per.reindex(sorted(per.index, key=lambda f: (-per[f], _family_order(per.index).index(f))))
    line = f"{_pct(total)} of the test sequences also occur verbatim in a seed's training budget"
    if (per >= 0.5).any():  # notable: some family is mostly seen in training
        shown = per[per >= 0.1]
        rest = len(per) - len(shown)
        line += ("; per family: " + ", ".join(f"{f} {100 * v:.0f} %" for f, v in shown.items())
                 + (f", the other {rest} below 10 %" if rest else "")
                 + " (where high, test accuracy may be recall rather than rule-following)")
    return line + "."


def section_headline(s: Stored, n: Numbers) -> str:
    metrics = [("accuracy", "accuracy (%)", 100.0, 1), ("distance_error", "distance error", 1.0, 2),
               ("loss", "loss (nats)", 1.0, 3), ("continuation_accuracy", "continuation acc. (%)", 100.0, 1)]
    metrics = [m for m in metrics if (n.summary.metric == m[0]).any()]
    summ = n.summary.set_index(["arch", "metric"])
    size_cols = [c for c in SIZE_COLUMNS if c in n.configs and n.configs[c].notna().any()]
    header = ["architecture", *size_cols, "params", *(m[1] for m in metrics), "seeds"]
    rows = []
    for arch in [*n.order, *[b for b in BASELINES if b in set(n.summary.arch)]]:
        base = is_baseline(arch)
        cfg_row = n.configs.loc[arch] if arch in n.configs.index else None
        cells = [f"*baseline: {arch.removeprefix('baseline_').replace('_', ' ')}*" if base else f"**{arch}**"]
        cells += ["—" if base or cfg_row is None else _size(cfg_row[c], c) for c in size_cols]
        no_size = base or cfg_row is None or "num_params" not in cfg_row
        cells.append("—" if no_size else f"{int(cfg_row['num_params']):,}")
        seeds = 0
        for metric, _, scale, digits in metrics:
            if (arch, metric) not in summ.index:
                cells.append("—")
                continue
            r = summ.loc[(arch, metric)]
            seeds = max(seeds, int(r["n"]))
            # a baseline is deterministic on the fixed test set: one value, no interval
            cells.append(f"{r['mean'] * scale:.{digits}f}" if base else _fmt(r["mean"], r["half"], int(r["n"]), scale,
                                                                               digits))
        cells.append("—" if base else str(seeds))
        rows.append(cells)
    one = (n.summary[n.summary.arch.isin(n.order)]["n"] == 1).any()
    text = ("## 2. Headline\n\n<!-- headline -->\n"
            "Test-set scores of each architecture's best configuration, mean ± half-width of the 95 % "
            "Student-t interval over seeds (mean ± t₀.₉₇₅,ₙ₋₁·s/√n), sorted by accuracy; baselines are "
            "non-learned predictors on the same test set. Distance error is |prediction − target| in values "
            "(0–255); loss is cross-entropy in nats; continuation accuracy is greedy generation of each "
            "sequence's second half from its first.\n\n" + _md_table(header, rows) + "\n")
    if one:
        text += "\n(n=1): a single seed gives no interval.\n"
    text += "<!-- /headline -->\n\n" + failed_runs(s.runs)
    return text


def failed_runs(runs: pd.DataFrame) -> str:
    if "status" not in runs:
        return "Run status not recorded.\n"
    bad = runs[runs["status"] != "ok"]
    if not len(bad):
        return f"All {len(runs)} final runs finished (status ok).\n"
    rows = [[str(r["arch"]), str(r["seed"]), str(r.get("reason") or "—").replace("|", "/").splitlines()[0]]
            for _, r in bad.iterrows()]
    return (f"**Failed runs ({len(bad)} of {len(runs)}):**\n\n"
            + _md_table(["architecture", "seed", "reason"], rows) + "\n")


def section_pairs(n: Numbers) -> str:
    head = "## 3. Paired comparisons\n\n"
    if len(n.order) < 2 or not len(n.pairs):
        return head + "Fewer than two architectures with results: nothing to compare.\n"
    cells = int(n.pairs["cells"].max())
    pairs = {(r.a, r.b): r for r in n.pairs.itertuples()}
    rows = []
    for a in n.order:
        row = [f"**{a}**"]
        for b in n.order:
            if a == b:
                row.append("·")
                continue
            r = pairs.get((a, b)) or pairs.get((b, a))
            if r is None:
                row.append("—")
                continue
            diff = r.diff if (r.a, r.b) == (a, b) else -r.diff
            row.append(f"{100 * diff:+.1f}{'*' if r.significant else ''}")
        rows.append(row)
    text = (head + f"Accuracy differences in percentage points, **row minus column**, averaged over the "
            f"{cells} (seed, family) cells both architectures have; every cell is the same test sequences for "
            f"both, and seed s gave both the same training stream. `*`: significant at 5 % by a paired "
            f"bootstrap over cells ({RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}), Holm-corrected over the "
            f"{_n(len(n.pairs), 'comparison')}. Per-sequence scores are not stored, so the cell is the unit; with "
            f"few cells the bootstrap is optimistic, and the sign test (below) is the conservative check.\n\n")
    text += _md_table(["", *n.order], rows) + "\n\n"
    detail = [[f"{r.a} − {r.b}", str(r.cells), f"{100 * r.diff:+.2f}", f"[{100 * r.lo:+.2f}, {100 * r.hi:+.2f}]",
               f"{r.wins}/{r.ties}/{r.losses}", f"{r.p_boot:.4f}", f"{r.p_sign:.4f}", f"{r.p_holm:.4f}",
               "yes" if r.significant else "no"] for r in n.pairs.sort_values("p_boot").itertuples()]
    text += ("<details><summary>All pairs (bootstrap and sign test)</summary>\n\n"
             + _md_table(["pair", "cells", "diff (pp)", "95 % bootstrap CI (pp)", "wins/ties/losses",
                          "p bootstrap", "p sign test", "p Holm", "significant"], detail)
             + "\n\n</details>\n")
    return text


def section_figures(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    text = "## 4. Figures\n\n"
    text += ("### a. Accuracy and distance error\n\nBars: mean over seeds; whiskers: 95 % Student-t interval; "
             "lines: baselines.\n\n" + _figure(drawn, "accuracy.png", "accuracy and distance error"))
    lag_note = ("All positions count here, including the first k of a `lag_k` sequence, which no model can "
                "predict; see d for the predictable positions only.\n\n" if n.lag is not None else "")
    text += "### b. Accuracy per family\n\n" + lag_note + _figure(drawn, "families.png", "accuracy per family")
    text += ("### c. Learning curves\n\nValidation accuracy and loss against training tokens, mean over seeds, "
             "band min–max over seeds.\n\n" + _figure(drawn, "learning_curves.png", "learning curves"))
    text += ("### d. Memory\n\nHow strongly the prediction of x_T (the value after the last input) depends on "
             "the input x_(T−k), k steps back (k = 1: the last input; a lag-k copy reads exactly k back), "
             "from `bench.analysis.memory_decay` on the final models: `gradient` "
             "is ‖∂logits/∂embedding‖ (the StableSSM paper's memory function), `perturbation` the "
             "total-variation distance of the prediction when that token is replaced; mean over test "
             "sequences and seeds, log scale.\n\n" + _figure(drawn, "memory_decay.png", "memory-decay curves"))
    if "lag_accuracy.png" in drawn:
        text += ("Accuracy against lag k on the `lag_k` families, counting only the predictable positions "
                 "(position p ≥ k − 1 predicts x_{p+1} = x_{p+1−k}), weighted by predictions.\n\n"
                 + _figure(drawn, "lag_accuracy.png", "accuracy against lag k"))
    text += ("### e. Accuracy against size\n\nFinal runs' test accuracy against parameters with the Pareto front "
             f"({' → '.join(n.front) or '—'}); crosses: search trials' validation accuracy at the search "
             "budget.\n\n" + _figure(drawn, "pareto.png", "accuracy against parameters"))
    text += "### f. Hyperparameter importance\n\n" + _figure(drawn, "importance.png", "hyperparameter importances")
    if n.importances and n.importance_notes:
        text += "Not shown: " + "; ".join(n.importance_notes) + ".\n\n"
    return text + section_cka(s, n, drawn)


def section_cka(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    text = ("### g. Representation similarity\n\nLinear CKA (centered kernel alignment, Kornblith et al. 2019) "
            "compares two models' hidden states on the same inputs: 1 means the same representation up to a "
            "rotation and a scale, and unrelated features score near √(d·d′)/n rather than 0")
    floor = n.cka_floor or {}
    if "rows" in floor:
        d, rows = int(n.configs["d_model"].max()), int(s.cka["n"].max())
        text += f" (≈ {floor['rows']:.3f} here, d = {d}, n = {rows:,} rows)"
    if "embedding" in floor:
        text += (f"; at the embedding, whose {rows:,} rows are lookups of {floor['distinct_tokens']:.0f} distinct "
                 f"tokens, two independent random embedding tables already score {floor['embedding']:.2f}")
    text += (". From `bench.analysis.cka` on the final models: the output of the embedding (layer 0, `emb`) and "
             "of every block, at every position of the same test sequences (one row per sequence and position). "
             "The matrix compares architectures on the same seed (same training stream), at the last block; its "
             "diagonal is one architecture on two different seeds, the reference for how similar two trainings of "
             "one architecture are. The layer × layer grid compares architectures on different seeds where there "
             "are several: every architecture of a seed starts from the same random stream, so on one seed the "
             "embeddings look alike from initialisation alone. Mean over seeds (or seed pairs).\n\n")
    if s.cka_note and s.cka is not None:
        text += f"*Note: {s.cka_note}.*\n\n"
    return (text + _figure(drawn, "cka.png", "last-block linear CKA, architecture × architecture")
            + _figure(drawn, "cka_layers.png", "layer × layer linear CKA per pair of architectures"))


def findings(s: Stored, n: Numbers) -> str:
    """A paragraph generated from the numbers: best overall, significance, baselines, families,
    memory, size."""
    if not n.order:
        return "## 5. Findings\n\nNo architecture has results.\n"
    acc = n.summary[n.summary.metric == "accuracy"].set_index("arch")
    parts = []
    best = n.order[0]
    b = acc.loc[best]
    interval = (f"95 % interval {_pct(max(0.0, b['mean'] - b['half']))}–{_pct(min(1.0, b['mean'] + b['half']))} "
                f"over {int(b['n'])} seeds"
                if np.isfinite(b["half"]) else "one seed, no interval")
    others = ", ".join(f"{a} {_pct(acc.loc[a, 'mean'])}" for a in n.order[1:4] if a in acc.index)
    parts.append(f"**Best overall:** {best} with {_pct(b['mean'])} test accuracy ({interval})"
                 + (f", ahead of {others}." if others else "."))
    if len(n.pairs):
        sig = n.pairs[n.pairs.significant]
        if len(sig):
            desc = [f"{r.a if r.diff > 0 else r.b} > {r.b if r.diff > 0 else r.a} ({100 * abs(r.diff):.1f} pp)"
                    for r in sig.sort_values("diff", key=abs, ascending=False).itertuples()]
            parts.append(f"**Significant** (5 %, Holm over {_n(len(n.pairs), 'pair')}): "
                         f"{_n(len(sig), 'difference')}: "
                         f"{', '.join(desc[:8])}{' …' if len(desc) > 8 else ''}.")
        else:
            parts.append(f"**No pairwise difference is significant** at 5 % after Holm correction over "
                         f"{_n(len(n.pairs), 'pair')} ({int(n.pairs['cells'].max())} cells each), so the ranking above "
                         f"is not established by these runs.")
    base = acc[acc.index.isin(BASELINES)]
    if len(base):
        top_base = base["mean"].idxmax()
        margin = {a: acc.loc[a, "mean"] - base.loc[top_base, "mean"] for a in n.order if a in acc.index}
        losers = [a for a, m in margin.items() if m <= 0]
        label = top_base.removeprefix("baseline_").replace("_", " ")
        if losers:
            parts.append(f"**Baselines:** {_list(losers)} {'does' if len(losers) == 1 else 'do'} not beat the "
                         f"best non-learned baseline "
                         f"({label}, {_pct(base.loc[top_base, 'mean'])}).")
        else:
            parts.append(f"**Baselines:** every architecture beats the best non-learned baseline ({label}, "
                         f"{_pct(base.loc[top_base, 'mean'])}), by at least {100 * min(margin.values()):.1f} pp.")
    fam = n.families.loc[[a for a in n.order if a in n.families.index]]
    if fam.size:
        winners = fam.idxmax(axis=0)
        groups = [f"{a} on {len(fs)} ({', '.join(fs)})" for a, fs in
                  sorted(((a, list(winners[winners == a].index)) for a in set(winners)), key=lambda t: -len(t[1]))]
        hardest = fam.max(axis=0).idxmin()
        parts.append(f"**Per family** (best mean accuracy): {'; '.join(groups)}. Hardest family: {hardest} "
                     f"(best {winners[hardest]}, {_pct(fam[hardest].max())}).")
    if n.decay is not None:
        reach = decay_reach(n.decay)
        if reach:
            k0 = int(n.decay["k"].min())
            parts.append(f"**Memory:** the perturbation effect stays above {REMEMBER:.0%} of its k={k0} value up to "
                         + ", ".join(f"k={k} ({a})" for a, k in sorted(reach.items(), key=lambda t: -t[1])) + ".")
    else:
        parts.append("**Memory:** no decay curves stored.")
    if n.lag is not None:
        recall = {a: g.loc[g["mean"] >= RECALL, "k"].max() for a, g in n.lag.groupby("arch") if not is_baseline(a)}
        parts.append(f"**Lag recall** (largest k with ≥ {RECALL:.0%} accuracy on predictable positions): "
                     + ", ".join(f"{a} {int(k) if pd.notna(k) else 'none'}"
                                 for a, k in sorted(recall.items(), key=lambda t: -(t[1] if pd.notna(t[1]) else 0)))
                     + ".")
    if n.front:
        pts = n.points.set_index("arch")
        parts.append("**Size:** the accuracy–parameter Pareto front is "
                     + " → ".join(f"{a} ({int(pts.loc[a, 'num_params']):,} params, {_pct(pts.loc[a, 'mean'])})"
                                  for a in n.front) + ".")
    if n.cka is not None:
        parts.append(cka_finding(n.cka, _with_others(n.order, n.cka["arch_a"]), n.cka_floor))
    else:
        parts.append("**Representations:** no similarity table (section 4g).")
    if n.mutual is not None and len(n.mutual):
        parts.append(mutual_finding(n.mutual, s.cfg.mutual.weight) + " (section 6)")
    if "status" in s.runs and (s.runs["status"] != "ok").any():
        parts.append(f"**Failed runs:** {int((s.runs['status'] != 'ok').sum())} (section 2).")
    return "## 5. Findings\n\n" + " ".join(parts) + "\n"


def section_mutual(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    """6. Does training the architectures together help, and whom?"""
    weight = s.cfg.mutual.weight
    head = ("## 6. Mutual learning\n\nAfter the final stage, each seed's architectures "
            f"({_list(sorted(set(s.mutual_runs['arch'])) if s.mutual_runs is not None else [])}) were trained "
            f"again, jointly on the same batches from the same initialisation, each with its own loss plus "
            f"{weight} × the mean KL divergence from the others' predictions (deep mutual learning, "
            f"`bench.mutual`), at the same budget. Each joint run is paired with the same architecture's "
            f"independent final run of the same seed.\n")
    if n.mutual is None or not len(n.mutual):
        return head + "\nNo mutual-stage results stored.\n"
    rows = []
    for r in n.mutual.itertuples():
        rows.append([r.arch, _fmt(r.alone, r.alone_half, r.seeds, 100), _fmt(r.joint, r.joint_half, r.seeds, 100),
                     f"{100 * r.gain:+.2f} ± {100 * r.half:.2f}" if np.isfinite(r.half) else f"{100 * r.gain:+.2f}",
                     f"{r.wins}/{r.cells - r.wins - r.losses}/{r.losses}", f"{r.p_holm:.3g}",
                     f"**{mutual_verdict(r)}**" if r.significant else mutual_verdict(r)])
    table = _md_table(["architecture", "alone: accuracy (%)", "jointly (%)", "gain (pp, 95 % CI over seeds)",
                       "cells better/tied/worse", "p (bootstrap, Holm)", "verdict"], rows)
    agree = ""
    if s.mutual_kl is not None and len(s.mutual_kl):
        kl = s.mutual_kl.groupby("training")["kl"].mean()
        if {"alone", "jointly"} <= set(kl.index):
            agree = (f"\nDid the pull act? The mean KL divergence between two architectures' predictions on the "
                     f"test probes (same seed, every position) is {kl['alone']:.3f} nats trained alone and "
                     f"{kl['jointly']:.3f} jointly ({kl['jointly'] / kl['alone']:.0%} of it).\n")
    failed = s.mutual_runs[s.mutual_runs["status"] != "ok"] if s.mutual_runs is not None else pd.DataFrame()
    note = (f"\nFailed joint runs: {', '.join(f'{r.arch} seed {r.seed} ({r.reason})' for r in failed.itertuples())}.\n"
            if len(failed) else "")
    return (head + "\n" + table + "\n\nThe gain's interval is over seeds (Student-t); the verdict tests the same "
            "difference over (seed, family) cells with a paired bootstrap, Holm-corrected over architectures. "
            "`mutual.weight=0` reproduces the independent runs exactly (tested), so any gain is the KL term's.\n"
            + agree + note + "\n" + _figure(drawn, "mutual.png", "Gain in test accuracy from training jointly, per "
                                     "architecture (mean over seeds, 95 % interval)."))


def mutual_finding(table: pd.DataFrame, weight: float | None) -> str:
    verdicts = {v: [f"{r.arch} ({100 * r.gain:+.1f} pp)" for r in table.itertuples() if mutual_verdict(r) == v]
                for v in ("helps", "hurts", "no detectable effect")}
    parts = [f"it helps {_list(verdicts['helps'])}" if verdicts["helps"] else "it helps no architecture detectably",
             f"hurts {_list(verdicts['hurts'])}" if verdicts["hurts"] else "",
             f"has no detectable effect on {_list(verdicts['no detectable effect'])}"
             if verdicts["no detectable effect"] else ""]
    return f"**Mutual learning** (KL weight {weight}): " + "; ".join(p for p in parts if p) + "."


def render(s: Stored, cfg: Config, n: Numbers, drawn: dict[str, str]) -> str:
    acc = n.summary[n.summary.metric == "accuracy"].set_index("arch")
    best = (f"Best: **{n.order[0]}** at {_pct(acc.loc[n.order[0], 'mean'])} test accuracy. " if n.order else "")
    intro = (f"# Report: study `{cfg.name}`\n\n{best}Generated by `{rebuild_command(cfg)}` on "
             f"{dt.datetime.now(dt.UTC).date()} from the stored results in `{cfg.output_dir}` (nothing retrained). "
             "Sections: 1. what was run · 2. headline · 3. paired comparisons · 4. figures · 5. findings"
             + (" · 6. mutual learning" if s.cfg.mutual.weight is not None or s.mutual is not None else "") + ".\n")
    sections = [intro, section_run(s, cfg), section_headline(s, n), section_pairs(n), section_figures(s, n, drawn),
                findings(s, n)]
    if s.cfg.mutual.weight is not None or s.mutual is not None:
        sections.append(section_mutual(s, n, drawn))
    return "\n".join(sections)


def build_report(cfg: Config, out: Path | None = None, *, publish: bool = True) -> Path:
    """Build the study's report into `out` (default cfg.report_path, i.e. reports/<study>) and return
    the README's path; attach it to the study's Optuna studies unless publish=False."""
    out = Path(out) if out is not None else cfg.report_path
    stored = load(cfg)  # fails (ConfigError) before anything is written
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report directory '{out}' exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        numbers = compute(stored, cfg)
        drawn = draw_figures(stored, numbers, tmp)
        (tmp / "README.md").write_text(render(stored, cfg, numbers, drawn))
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            if f.name != "README.md":
                os.replace(f, out / f.name)
        os.replace(tmp / "README.md", out / "README.md")  # last: a README is always whole and current
        for stale in set(FIGURES) - {f for f, why in drawn.items() if not why}:
            (out / stale).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if publish:
        try:
            for line in _publish(cfg, out):
                print(line, flush=True)
        except Exception as e:  # the report stands without the dashboard; say why it is not attached
            print(f"warning: report not attached to the dashboard: {first_line(e)}", file=sys.stderr)
    return out / "README.md"


def publish(cfg: Config, report_dir: Path) -> list[str]:
    """Attach the report to the study for optuna-dashboard: README and figures as artifacts of each
    `<study>/<arch>/final` study (replacing earlier uploads of the same files), and the headline plus a
    pointer to the report as the note of each search and final study. Returns what it did, one line each."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna_dashboard import save_note

    storage, why = _existing_storage(cfg)
    if storage is None:
        return [f"report not attached to the dashboard: {why}"]
    readme = report_dir / "README.md"
    files = [readme, *(report_dir / f for f in FIGURES if (report_dir / f).is_file())]
    text = readme.read_text()
    headline = text.split("<!-- headline -->", 1)[-1].split("<!-- /headline -->", 1)[0].strip()
    note = (f"## archbench report: {cfg.name}\n\n{headline}\n\nFull report with figures: `{readme}` "
            f"(also attached as artifacts to each `{cfg.name}/<arch>/final` study).\n")
    store_dir = cfg.output_dir / "artifacts"
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(base_path=store_dir)
    names = set(optuna.get_all_study_names(storage))
    archs = sorted({a for a in cfg.arch_list} | {n.split("/")[1] for n in names if n.startswith(f"{cfg.name}/")})
    noted = attached = 0
    for arch in archs:
        for name in (search_name(cfg, arch), final_name(cfg, arch)):
            if name not in names:
                continue
            study = optuna.load_study(study_name=name, storage=storage)
            save_note(study, note)
            noted += 1
            if name == final_name(cfg, arch):
                earlier = _artifact_ids(storage, storage.get_study_id_from_name(name))
                for f in files:
                    if f.name in earlier:  # re-publishing rewrites the same artifact, so none pile up
                        with f.open("rb") as body:
                            store.write(earlier[f.name], body)
                    else:
                        upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=study)
                attached += 1
    return [f"attached the report to {attached} final studies ({len(files)} files in {store_dir}) and noted "
            f"{noted} studies in {cfg.storage_url}"]


_publish = publish  # build_report's `publish` flag shadows the function's name there


def _artifact_ids(storage: Any, study_id: int) -> dict[str, str]:
    """{file name: artifact id} of the study's artifacts (the first of each name; entries that
    optuna-dashboard deleted are null and skipped)."""
    ids: dict[str, str] = {}
    for key, value in storage.get_study_system_attrs(study_id).items():
        meta = json.loads(value) if key.startswith("artifacts:") and isinstance(value, str) else None
        if meta:
            ids.setdefault(meta["filename"], meta["artifact_id"])
    return ids


USAGE = """usage: python -m bench.report [study=<name>] [key=value ...] [--out DIR] [--no-publish]

Builds reports/<study>/README.md and its figures from the study's stored results (runs/<study>/,
or out_dir=...), never retraining; attaches it to the study's Optuna studies (dashboard note and
artifacts) unless --no-publish. Overrides as for python -m bench.run."""


def parse(argv: list[str]) -> tuple[list[str], Path | None, bool]:
    overrides, out, publish_ = [], None, True
    args = iter(argv)
    for a in args:
        if a == "--no-publish":
            publish_ = False
        elif a == "--out" or a.startswith("--out="):
            value = a.split("=", 1)[1] if "=" in a else next(args, "")
            if not value:
                raise ConfigError("--out needs a directory")
            out = Path(value)
        elif a.startswith("-"):
            raise ConfigError(f"unknown flag '{a}' (try --help)")
        else:
            overrides.append(a)
    return overrides, out, publish_


def main(argv: list[str] | None = None) -> int:
    return entry_point(argv, USAGE, _report)


def _report(args: list[str]) -> int:
    overrides, out, publish_ = parse(args)
    print(f"wrote {build_report(compose_config(overrides), out, publish=publish_)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
