"""The backbone ablation's report: which variant (embedding, distance weight, ...) lets a mixer learn
phase 2's arithmetic families, read from each variant's stored tables only.

`python -m bench.run study=backbone` runs every variant as its own study in `<out_dir>/<variant>/`
(`Config.variants`) and then calls `build_ablation_report`. Every score here is next-term accuracy on
the `iid_unseen` split (test sequences never drawn in training), with `ood` beside it; never
`iid_seen`. Per seed, "steps" pools the three arithmetic families (alternating, growing, shrinking
steps) by their test counts, and "/ ceiling" divides by the Bayes-optimal predictor scored on the same
rows (`arch = "ceiling"`). Over seeds: mean ± the 95 % Student-t half-width (`stats.mean_ci`).

Separability is paired over seeds: the best variant's steps accuracy minus the runner-up's, seed by
seed, and its t interval. For example, seeds 0 and 1 with differences 0.10 and 0.12 give 0.11 ± 0.127
(t = 12.7 with one degree of freedom): the interval holds 0, so the two are "not separable at this
budget"; three seeds at 0.10, 0.12, 0.11 give 0.11 ± 0.025, which is.
When the variants form a full grid over the keys they set (3 embeddings x 2 alphas), each key is also
judged on its own: its values compared per seed, averaged over the other keys' values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report.figures import arch_color  # noqa: E402
from bench.report.load import ReportInputError  # noqa: E402
from bench.report.stats import lower_end, mean_ci  # noqa: E402
from bench.util import atomic_write  # noqa: E402

STEPS_FAMILIES = ("alternating_steps", "growing_steps", "shrinking_steps")
SPLITS = ("iid_unseen", "ood")  # the headline splits; iid_seen (memorised) and length never enter here
CEILING = "ceiling"
LEARNED = 0.9  # fraction of the ceiling at which a mixer "learns" the steps families
COLUMNS = {"overall": "overall", "overall_ratio": "overall / ceiling", "steps": "steps",
           "steps_ratio": "steps / ceiling"}
FIGURE = "steps_accuracy.png"


# ---------------------------------------------------------------- scores per seed


def seed_scores(results: pd.DataFrame) -> pd.DataFrame:
    """One variant's results table -> rows (arch, seed, split, overall, steps, overall_ratio, steps_ratio).

    overall = the study-level accuracy (phase <NA>, family "all", position <NA>); steps = the steps
    families' accuracies pooled by n; the ratios divide by the ceiling's on the same seed and split
    (NaN when the table holds no ceiling). Baselines and the ceiling itself are dropped.
    """
    r = results
    if "stage" in r.columns:
        r = r[r["stage"] == "final"]
    r = r[(r["metric"] == "accuracy") & r["split"].isin(SPLITS) & r["position"].isna()]
    keys = ["arch", "seed", "split"]
    overall = r[(r["family"] == "all") & r["phase"].isna()].groupby(keys)["value"].mean().rename("overall")
    fam = r[r["family"].isin(STEPS_FAMILIES)].assign(hits=lambda f: f["value"] * f["n"])
    pooled = fam.groupby(keys)[["hits", "n"]].sum()
    steps = (pooled["hits"] / pooled["n"]).rename("steps")
    table = pd.concat([overall, steps], axis=1).reset_index()
    ceiling = table[table["arch"] == CEILING].drop(columns="arch")
    table = table.merge(ceiling, on=["seed", "split"], how="left", suffixes=("", "_ceiling"))
    for col in ("overall", "steps"):
        table[f"{col}_ratio"] = table[col] / table[f"{col}_ceiling"]
    models = table[(table["arch"] != CEILING) & ~table["arch"].str.startswith("baseline_")]
    return models[[*keys, "overall", "steps", "overall_ratio", "steps_ratio"]].reset_index(drop=True)


def load_scores(variant_dirs: Mapping[str, Path]) -> pd.DataFrame:
    """`seed_scores` of every variant's `results.parquet`, with a `variant` column, in the given order."""
    parts = []
    for variant, folder in variant_dirs.items():
        path = Path(folder) / "results.parquet"
        if not path.is_file():
            raise ReportInputError(f"variant {variant}: no results table at {path} (run its study first)")
        parts.append(seed_scores(pd.read_parquet(path)).assign(variant=variant))
    return pd.concat(parts, ignore_index=True)


def ceiling_line(variant_dirs: Mapping[str, Path]) -> str:
    """The Bayes ceiling (family unknown) of the steps families from the first stored ceiling table."""
    for folder in variant_dirs.values():
        path = Path(folder) / "ceiling.parquet"
        if not path.is_file():
            continue
        c = pd.read_parquet(path)
        c = c[(c["set"] == "mixture") & c["position"].isna() & c["family"].isin(("all", *STEPS_FAMILIES))]
        if c.empty:
            continue
        c = c[c["length"] == c["length"].min()]
        parts = []
        for region, label in (("train", "iid (training region)"),
                              ("held_out", "ood, for a predictor told the sequence is held out (an upper bound: the "
                                           "ood / ceiling columns divide by the predictor of the whole distribution)")):
            rows = c[c["region"] == region].sort_values("family")
            cells = [f"{r.family} {100 * r.accuracy:.1f} %" + ("" if r.method == "exact" else f" ({r.method})")
                     for r in rows.itertuples()]
            parts += [f"{label}: {', '.join(cells)}"] if cells else []
        return "Bayes ceiling (family unknown; exact unless marked): " + "; ".join(parts) + "."
    return "No ceiling.parquet is stored beside the variants' results."


# ---------------------------------------------------------------- comparisons


def summary_table(scores: pd.DataFrame, split: str = "iid_unseen") -> pd.DataFrame:
    """Variant x arch rows of mean, half-width and n over seeds for every score column."""
    rows = []
    for (variant, arch), g in scores[scores["split"] == split].groupby(["variant", "arch"], sort=False):
        row = {"variant": variant, "arch": arch, "seeds": g["seed"].nunique()}
        for col in COLUMNS:
            row[col], row[f"{col}_ci"], _ = mean_ci(g[col])
        rows.append(row)
    return pd.DataFrame(rows)


def paired(best: pd.Series, other: pd.Series) -> tuple[float, float, bool]:
    """best - other over the seeds both have: mean, t half-width, and whether the interval excludes 0."""
    diff = (best - other).dropna()
    mean, half, n = mean_ci(diff)
    return mean, half, n >= 2 and math.isfinite(half) and abs(mean) > half


def rank(per_seed: pd.DataFrame) -> dict:
    """Columns = choices, index = seed: the best choice by mean, the runner-up, and their paired gap."""
    means = per_seed.mean().dropna().sort_values(ascending=False, kind="stable")  # a tie: the first listed
    if len(means) < 2:
        return {"best": means.index[0] if len(means) else None, "mean": means.iloc[0] if len(means) else math.nan,
                "runner_up": None, "diff": math.nan, "half": math.nan, "separable": False}
    best, second = means.index[:2]
    diff, half, separable = paired(per_seed[best], per_seed[second])
    return {"best": best, "mean": means.iloc[0], "runner_up": second, "diff": diff, "half": half,
            "separable": separable}


def compare_variants(scores: pd.DataFrame, metric: str = "steps", split: str = "iid_unseen") -> pd.DataFrame:
    """Per arch: the best variant on `metric`, the runner-up and whether they are separable."""
    s = scores[scores["split"] == split]
    rows = [{"arch": arch, **rank(g.pivot_table(index="seed", columns="variant", values=metric))}
            for arch, g in s.groupby("arch", sort=False)]
    return pd.DataFrame(rows)


def factors(overrides: Mapping[str, list[str]]) -> dict[str, dict[str, str]]:
    """{key: {variant: value}} for each key every variant sets and whose value differs between them,
    when the variants are the full grid over those keys (else {}): 3 embeddings x 2 alphas -> 2 keys."""
    parsed = {v: dict(o.split("=", 1) for o in ovs) for v, ovs in overrides.items()}
    if not parsed:
        return {}
    common = set.intersection(*(set(p) for p in parsed.values()))
    varying = sorted(k for k in common if len({p[k] for p in parsed.values()}) > 1)
    levels = [sorted({p[k] for p in parsed.values()}) for k in varying]
    cells = {tuple(p[k] for k in varying) for p in parsed.values()}
    if not varying or len(cells) != len(parsed) or cells != set(product(*levels)):
        return {}
    return {k: {v: p[k] for v, p in parsed.items()} for k in varying}


def compare_factor(scores: pd.DataFrame, levels: Mapping[str, str], metric: str = "steps",
                   split: str = "iid_unseen") -> pd.DataFrame:
    """Per arch: the best value of one key (per seed, averaged over the other keys' values) vs the runner-up."""
    s = scores[scores["split"] == split].assign(level=lambda f: f["variant"].map(levels))
    rows = [{"arch": arch, **rank(g.pivot_table(index="seed", columns="level", values=metric, aggfunc="mean"))}
            for arch, g in s.groupby("arch", sort=False)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- words


def pct(mean: float, half: float = math.nan, unit: str = " %") -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + (f" ± {100 * half:.1f}" if math.isfinite(half) else "") + unit


def gap_words(row: Mapping) -> str:
    """'+12.0 ± 3.1 pp over numeric_a0: separable' or '...: not separable at this budget'."""
    if row["runner_up"] is None:
        return "no runner-up"
    verdict = "separable" if row["separable"] else "not separable at this budget"
    return f"{pct(row['diff'], row['half'], ' pp')} over {row['runner_up']}: {verdict}"


def clear_winner(table: pd.DataFrame) -> str | None:
    """The choice that is best and separable from the runner-up for every arch, else None."""
    best = set(table["best"])
    return table["best"].iloc[0] if len(best) == 1 and table["separable"].all() and len(table) else None


def learning_sentence(scores: pd.DataFrame) -> str:
    """Which variants bring each arch to LEARNED of the ceiling on the steps families (iid_unseen): those
    whose 95 % t interval over seeds of steps / ceiling has its lower end at LEARNED or above (one seed:
    its point, said so). Otherwise the variant closest by mean, with its interval. E.g. 0.875, 0.9375,
    0.9125 (90.8 ± 7.8 %) has not learned them: its lower end is 83.0 %."""
    s = scores[scores["split"] == "iid_unseen"]
    parts = []
    for arch, g in s.groupby("arch", sort=False):
        ratio = {v: mean_ci(r["steps_ratio"]) for v, r in g.groupby("variant", sort=False)}
        steps = g.groupby("variant", sort=False)["steps"].mean()
        good = [v for v, ci in ratio.items() if math.isfinite(ci[0]) and lower_end(*ci) >= LEARNED - 1e-9]
        known = {v: ci for v, ci in ratio.items() if math.isfinite(ci[0])}
        if good:
            parts.append(f"{arch} learns them (≥ {LEARNED:.0%} of the ceiling at the lower end of the 95 % interval "
                         f"over seeds) with " + ", ".join(f"{v} at {_interval(*ratio[v])}" for v in good))
        elif known:
            top = max(known, key=lambda v: known[v][0])
            parts.append(f"{arch} is not shown to learn them at this budget (closest: {top} at "
                         f"{_interval(*known[top])}, steps accuracy {pct(steps[top])})")
        else:
            top = steps.idxmax()
            parts.append(f"{arch} gets at most {pct(steps[top])} ({top}; no ceiling stored)")
    return "On the arithmetic (steps) families, iid_unseen: " + "; ".join(parts) + "."


def _interval(mean: float, half: float, n: int) -> str:
    """'92% of the ceiling (interval 78%–107%)', or '(one seed: no interval)'."""
    if n < 2 or not math.isfinite(half):
        return f"{mean:.0%} of the ceiling (one seed: no interval)"
    return f"{mean:.0%} of the ceiling (interval {mean - half:.0%}–{mean + half:.0%})"


def choice_sentence(what: str, table: pd.DataFrame) -> str:
    """One key's (or the variants') verdict: a clear winner for every mixer, or the best per mixer."""
    winner = clear_winner(table)
    if winner is not None:
        return (f"{what}: `{winner}` is clearly better for every mixer (best and separable from the runner-up "
                f"for each): it should be the default (the lead decides).")
    per_arch = "; ".join(f"{r['arch']}: {r['best']} ({gap_words(r)})" for _, r in table.iterrows())
    return f"{what}: no choice is clearly better for every mixer. Best per mixer: {per_arch}."


def verdict(scores: pd.DataFrame, overrides: Mapping[str, list[str]] | None = None) -> str:
    """The verdict paragraph: what lets a mixer learn the steps families, then each key's (or, without a
    full grid, the variants') choice, with "it should be the default" only for a clear winner."""
    lines = [learning_sentence(scores)]
    grid = factors(overrides or {})
    for key, levels in grid.items():
        table = compare_factor(scores, levels)
        table["best"] = [f"{key}={b}" if b is not None else None for b in table["best"]]
        table["runner_up"] = [f"{key}={b}" if b is not None else None for b in table["runner_up"]]
        lines.append(choice_sentence(f"Choice of {key} (averaged over the other keys)", table))
    if not grid:
        lines.append(choice_sentence("Choice of variant", compare_variants(scores)))
    return "\n\n".join(lines)


# ---------------------------------------------------------------- the report


def markdown_table(summary: pd.DataFrame) -> str:
    head = ["variant", "arch", *COLUMNS.values(), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [pct(r[c], r[f"{c}_ci"]) for c in COLUMNS]
        lines.append("| " + " | ".join([r["variant"], r["arch"], *cells, str(r["seeds"])]) + " |")
    return "\n".join(lines)


def figure(summary: pd.DataFrame, path: Path) -> Path:
    """Steps-family accuracy (mean, 95 % t interval clipped to 0–100 %) by variant, one series per arch;
    no software stamp in the PNG, so a rebuild writes the same bytes."""
    variants = list(dict.fromkeys(summary["variant"]))
    archs = list(dict.fromkeys(summary["arch"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(variants)), 3.6))
    for i, arch in enumerate(archs):
        g = summary[summary["arch"] == arch].set_index("variant").reindex(variants)
        x = [j + (i - (len(archs) - 1) / 2) * 0.12 for j in range(len(variants))]
        half = g["steps_ci"].fillna(0)
        low, high = (g["steps"] - half).clip(0, 1), (g["steps"] + half).clip(0, 1)
        ax.errorbar(x, 100 * g["steps"], yerr=[100 * (g["steps"] - low), 100 * (high - g["steps"])], fmt="o",
                    capsize=3, color=arch_color(arch), label=arch)
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("steps families accuracy, iid_unseen (%)")
    ax.legend(frameon=False, fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def build_ablation_report(study: str, variant_dirs: Mapping[str, Path], report_dir: Path | str,
                          overrides: Mapping[str, list[str]] | None = None) -> Path:
    """Write `<report_dir>/README.md` (and the figure) comparing the variants; returns the README's path."""
    scores = load_scores(variant_dirs)
    if scores.empty:
        raise ReportInputError(f"study {study}: the variants' results hold no iid_unseen or ood accuracy")
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_table(scores)
    ood = summary_table(scores, "ood")
    figure(summary, report_dir / FIGURE)
    described = "\n".join(f"- `{v}`: {', '.join(f'`{o}`' for o in (overrides or {}).get(v, [])) or 'as the study'}"
                          f" (tables and full report in `{Path(d)}`)" for v, d in variant_dirs.items())
    best = "\n".join(f"- {r['arch']}: best {r['best']} ({pct(r['mean'])}), {gap_words(r)}"
                     for _, r in compare_variants(scores).iterrows())
    text = f"""# Backbone ablation: {study}

Variants (each its own study, same data, seeds and budget):
{described}

## Accuracy on iid_unseen (mean ± 95 % t interval over seeds)

"steps" pools alternating_steps, growing_steps and shrinking_steps; "/ ceiling" divides by the Bayes-optimal
predictor on the same test rows. {ceiling_line(variant_dirs)}

{markdown_table(summary)}

On ood (the held-out region):

{markdown_table(ood) if len(ood) else "no ood rows stored."}

![steps-family accuracy by variant]({FIGURE})

## Best variant on the steps families, per architecture (paired over seeds)

{best}

## Verdict

{verdict(scores, overrides)}
"""
    return atomic_write(report_dir / "README.md", lambda tmp: tmp.write_text(text))
