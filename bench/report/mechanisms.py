"""The mechanism studies' report (studies/selective_copy, mqar, recall): accuracy against each
mixer's state size, one line per architecture (Zoology's and Based's recall-state plots), and a
literature check that reads each published finding against this run's intervals.

A mechanism study runs one variant per width (`d16`, `d32`, `d64`: each its own study in
`<out_dir>/<variant>/`, choosing every architecture's learning rate and retraining it on the same
seeds, data streams and test sequences). This report reads their stored tables only: runs.parquet
(each final run's `state_size`, its mixer's `bench.models` count of the floats carried from one
step to the next at the study's length, and its learning rate), predictions.parquet (one row per
scored answer), trials.parquet (wall time), config.yaml (budget, seeds, the lr grid) and meta.yaml
(command, commit). Every score is accuracy on the scored positions of `iid_unseen` test sequences
(never drawn in training; the ceiling there is 100 %), pooled over a family's answers, with the
crossed replicate x seed x sequence interval of `bench.report.stats`.

The checks (`Claim`), each at the widths its finding is about (`where`):
* `solves a`: a's accuracy is at least SOLVED (90 %): reproduced when the interval's lower end is,
  not reproduced when its upper end is below, else inconclusive at this budget.
* `order a > b`: the paired difference a - b (same seeds, same sequences, `stats.paired`), its
  p-value Holm-adjusted over every ordered test of the report: reproduced when a is ahead at every
  width asked, not reproduced when b is ahead, or the two are equivalent (TOST at the margin) while
  a has learned the task at least in part (>= FLOOR), at one of them; otherwise inconclusive.
* `grows a`: a at the widest minus a at the narrowest width (paired the same way): reproduced when
  significantly positive, not reproduced when significantly negative, or equivalent while the
  narrowest is neither at chance nor solved; else inconclusive.
Every accuracy a claim reads is pooled over the claim's own families (noisy_recall_* in the recall
study, not its variable_lag_* ones).
E.g. mamba - s4d = +12.0 pp [+4.0, +20.0], p_holm 0.01 at d64: "reproduced"; +3.0 pp [-5.0, +11.0]:
"inconclusive at this budget".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bench.report.load import PRIMARY, ReportInputError
from bench.report.mechanism_claims import CLAIMS, Claim
from bench.report.stats import ALPHA, RESAMPLES, Interval, hierarchical_ci, holm, paired
from bench.report.tables import MARGIN, sequence_scores

SOLVED = 0.9  # accuracy at which a mixer "solves" a task (Zoology and the Mamba paper report 97-100 %)
FLOOR = 0.1  # below it a mixer has not learned the task (chance on an answer: 1/128 = 0.8 %)
POOLED = "all"  # the pooled row of a claim's families
READ = ["arch", "stage", "seed", "replicate", "split", "length", "family", "sequence", "correct"]


@dataclass
class Widths:
    """What the report reads: per width (variant) its final runs and per-sequence scores."""

    runs: pd.DataFrame  # variant, arch, state_size, lr, d_model (one row per variant and arch)
    scores: pd.DataFrame  # variant, arch, replicate, seed, family, sequence, value, n (iid_unseen)
    ood: pd.DataFrame  # the same on the ood split
    cost_s: float  # summed wall time of every search and final run
    order: list[str]  # variants, narrowest first
    configs: dict[str, dict]  # variant -> its config.yaml (budget, seeds, lr grid)
    meta: dict[str, dict]  # variant -> its meta.yaml (command, commit, date, machine)


def load_widths(variant_dirs: Mapping[str, Path]) -> Widths:
    """Every variant's stored tables (module docstring); ReportInputError naming a missing one.
    Widths are ordered by d_model, whatever the variants are called."""
    runs, scores, ood, cost, configs, meta = [], [], [], 0.0, {}, {}
    for variant, folder in variant_dirs.items():
        folder = Path(folder)
        for name in ("runs.parquet", "predictions.parquet", "trials.parquet", "config.yaml"):
            if not (folder / name).is_file():
                raise ReportInputError(f"variant {variant}: {folder / name} is missing (run the study first)")
        configs[variant] = yaml.safe_load((folder / "config.yaml").read_text())
        meta[variant] = yaml.safe_load((folder / "meta.yaml").read_text()) if (folder / "meta.yaml").is_file() else {}
        r = pd.read_parquet(folder / "runs.parquet")
        r = r[(r["stage"] == "final") & (r["status"] == "ok")]
        runs.append(r.groupby("arch", as_index=False).agg(state_size=("state_size", "first"), lr=("lr", "first"),
                                                          d_model=("d_model", "first")).assign(variant=variant))
        p = pd.read_parquet(folder / "predictions.parquet", columns=READ)
        scores.append(sequence_scores(p, PRIMARY).assign(variant=variant))
        ood.append(sequence_scores(p, "ood").assign(variant=variant))
        cost += float(pd.read_parquet(folder / "trials.parquet", columns=["wall_s"])["wall_s"].fillna(0).sum())
    runs_t = pd.concat(runs, ignore_index=True)
    order = runs_t.groupby("variant")["d_model"].max().sort_values(kind="stable").index.tolist()
    return Widths(runs_t, pd.concat(scores, ignore_index=True), pd.concat(ood, ignore_index=True), cost, order,
                  configs, meta)


def accuracy_table(scores: pd.DataFrame, families: list[str], resamples: int = RESAMPLES) -> pd.DataFrame:
    """variant, arch, family (each of `families` and POOLED over them), mean, half, lo, hi, seeds:
    the hierarchical interval of each cell."""
    rows = []
    for (variant, arch), g in scores.groupby(["variant", "arch"], sort=False):
        for fam in [*families, POOLED]:
            part = g if fam == POOLED else g[g["family"] == fam]
            part = part[part["family"].isin(families)]
            if part.empty:
                continue
            est = hierarchical_ci(part, resamples=resamples)
            rows.append((variant, arch, fam, est.mean, est.half, est.lo, est.hi, est.seeds))
    return pd.DataFrame(rows, columns=["variant", "arch", "family", "mean", "half", "lo", "hi", "seeds"])


@dataclass
class Check:
    """One claim's outcome: the verdict and the numbers it rests on, per width."""

    claim: Claim
    verdict: str  # reproduced | not reproduced | inconclusive at this budget | not run
    evidence: str


def _where(claim: Claim, order: list[str]) -> list[str]:
    return {"all": order, "narrowest": order[:1], "widest": order[-1:]}[claim.where]


def _claim_scores(c: Claim, w: Widths) -> pd.DataFrame:
    return w.scores[w.scores["family"].isin(c.families(w.scores["family"].unique()))]


def _level(c: Claim, w: Widths, arch: str, variant: str, resamples: int) -> Interval | None:
    """arch's accuracy at one width, pooled over the claim's families (None: no scores)."""
    s = _claim_scores(c, w)
    part = s[(s["variant"] == variant) & (s["arch"] == arch)]
    return hierarchical_ci(part, resamples=resamples) if len(part) else None


def _pairs(c: Claim, w: Widths) -> list[tuple[str, str, str]]:
    """(label, variant of a, variant of the comparison) for each test the claim asks for."""
    if c.kind == "order":
        return [(v, v, v) for v in _where(c, w.order)]
    if c.kind == "grows" and len(w.order) > 1:
        return [(f"{w.order[-1]} - {w.order[0]}", w.order[-1], w.order[0])]
    return []


def _tests(claims: list[Claim], w: Widths, margin: float,
           resamples: int) -> dict[tuple[int, str], tuple[Interval, float]]:
    """The paired estimates every ordered claim needs, keyed by (claim index, width label): a − b at
    one width (order), or a at the widest minus a at the narrowest (grows: the same seeds, data streams
    and test sequences at every width, so the pairing holds)."""
    out = {}
    for i, c in enumerate(claims):
        s = _claim_scores(c, w)
        for label, va, vb in _pairs(c, w):
            a = s[(s["variant"] == va) & (s["arch"] == c.a)].drop(columns="variant")
            b = s[(s["variant"] == vb) & (s["arch"] == (c.b or c.a))].drop(columns="variant")
            if len(a) and len(b):
                out[i, label] = paired(a, b, margin, resamples=resamples)
    return out


def pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _diff_words(est: Interval, p_holm: float) -> str:
    if not math.isfinite(est.half):
        return f"{pp(est.mean)} (fewer than 3 seeds: no interval)"
    return f"{pp(est.mean)} [{pp(est.lo)}, {pp(est.hi)}], p_holm {p_holm:.2g}"


def _equivalence_counts(c: Claim, w: Widths, label: str, resamples: int) -> bool:
    """Whether "equivalent" may refute the claim there: for an order, only where a learned the task at
    least in part (its accuracy >= FLOOR; two mixers at chance are equivalent and say nothing); for
    growth, only where the narrowest width is neither at chance nor already solved (a flat line at
    0 % or at 100 % shows no trade-off at this scale)."""
    if c.kind == "order":
        lv = _level(c, w, c.a, label, resamples)
        return lv is not None and lv.mean >= FLOOR
    lv = _level(c, w, c.a, w.order[0], resamples)
    return lv is not None and FLOOR <= lv.mean < SOLVED


def check_claims(claims: list[Claim], w: Widths, margin: float = MARGIN, resamples: int = RESAMPLES) -> list[Check]:
    """The verdict of every claim (module docstring), Holm over all ordered tests of the report."""
    tests = _tests(claims, w, margin, resamples)
    keys = list(tests)
    p_adj = dict(zip(keys, holm([tests[k][0].p for k in keys]), strict=True))
    e_adj = dict(zip(keys, holm([tests[k][1] for k in keys]), strict=True))
    checks = []
    for i, c in enumerate(claims):
        if c.kind == "solves":
            checks.append(_solves(c, w, resamples))
            continue
        asked = [label for label, _, _ in _pairs(c, w)]
        mine = [(i, label) for label in asked if (i, label) in tests]
        if not mine:
            checks.append(Check(c, "not run", "an architecture or width it needs is missing from this study"))
            continue
        ahead = [tests[k][0].mean > 0 and p_adj[k] < ALPHA for k in mine]
        equivalent = [e_adj[k] < ALPHA and _equivalence_counts(c, w, k[1], resamples) for k in mine]
        against = [(tests[k][0].mean < 0 and p_adj[k] < ALPHA) or eq for k, eq in zip(mine, equivalent, strict=True)]
        complete = len(mine) == len(asked)
        verdict = ("not reproduced" if any(against) else "reproduced" if all(ahead) and complete
                   else "inconclusive at this budget")
        what = f"{c.a} − {c.b}" if c.kind == "order" else f"{c.a}"
        parts = [f"{what} at {k[1]}: {_diff_words(tests[k][0], p_adj[k])}" + (" (equivalent)" if eq else "")
                 for k, eq in zip(mine, equivalent, strict=True)]
        parts += [f"no scores at {label}" for label in asked if (i, label) not in tests]
        checks.append(Check(c, verdict, "; ".join(parts)))
    return checks


def _solves(c: Claim, w: Widths, resamples: int) -> Check:
    parts, verdicts = [], []
    for v in _where(c, w.order):
        r = _level(c, w, c.a, v, resamples)
        if r is None:
            return Check(c, "not run", f"{c.a} has no scores at {v}")
        if not math.isfinite(r.half):
            verdicts.append("inconclusive at this budget")
            parts.append(f"{c.a} at {v}: {100 * r.mean:.1f} % (fewer than 3 seeds: no interval)")
            continue
        verdicts.append("reproduced" if r.lo >= SOLVED else "not reproduced" if r.hi < SOLVED
                        else "inconclusive at this budget")
        parts.append(f"{c.a} at {v}: {100 * r.mean:.1f} % [{100 * max(r.lo, 0):.1f}, {100 * min(r.hi, 1):.1f}]")
    verdict = ("not reproduced" if "not reproduced" in verdicts else "reproduced"
               if all(x == "reproduced" for x in verdicts) else "inconclusive at this budget")
    return Check(c, verdict, "; ".join(parts))


def claims_for(families: list[str]) -> list[Claim]:
    """The published findings that bear on a study's families (selective_copy, mqar, noisy_recall)."""
    groups = {f.rsplit("_", 1)[0] for f in families}
    return [c for c in CLAIMS if c.task in groups]
