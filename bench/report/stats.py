"""The report's statistics, on scipy.stats: Student-t intervals over seeds, the exact sign test
(`binomtest`), Holm's correction, and the hierarchical interval and paired test on per-sequence
scores (`hierarchical_ci`, `paired`) with a two-one-sided-tests equivalence p-value.

Why not a plain bootstrap. Test sequences are shared by every seed (one evaluation seed), so seeds
(and search replicates) and sequences are *crossed* factors: a per-sequence score is
d[r, s, q] = mu + a_r + b_s + c_q + (ab)_rs + (ac)_rq + (bc)_sq + e_rsq (replicate r, seed s,
sequence q within its family). The variance of the grand mean has one term per factor and per
interaction. Resampling seeds alone misses the sequences' share (under-covers when sequences vary,
84 % in the lead's simulation); resampling both at once (the "pigeonhole" bootstrap) counts the
interaction three times (Owen 2007, Ann. Appl. Stat. 1(2), "The pigeonhole bootstrap") and
over-covers (100 %). The construction here removes the double counting explicitly, the
random-effects (ANOVA) decomposition of Clark (1973, "The language-as-fixed-effect fallacy",
J. Verb. Learn. Verb. Behav. 12) with Satterthwaite (1946) degrees of freedom:

  V = [MS_r + MS_s - MS_rs] / (RN)                                    (units: replicate x seed)
    + sum_f w_f^2 [MS_q - MS_sq - MS_rq + MS_rsq]_f / (R N M_f)        (sequences within family f)

where the main-effect terms MS_r/(RN), MS_s/(RN), MS_q/(RNM_f) are bootstrap variances
(`scipy.stats.bootstrap`: resample that factor's levels alone, every other fixed, sequences within
their family; multiplied by n/(n-1), the bootstrap's known shrinkage of a mean's variance) and the
interaction mean squares come from the two- and three-way residuals. Each bracket is a variance
component's estimate; a negative one is set to 0 (the usual truncation), and V is never below the
residual interaction's own share sum_f w_f^2 MS_res,f / (R N M_f) (otherwise one right sequence per
seed, a different one each, would get a zero-width interval). The interval is
mean +- t_{0.975, df} sqrt(V), `scipy.stats.t`, with df = V^2 / sum_i (term_i^2 / df_i)
(Satterthwaite over the signed terms), and the paired test's p-value is the same t. Replicates:
a (replicate, seed) unit is not an independent seed: replicates and seeds are crossed too (the same
seed in two replicates shares its data stream), so they enter as two factors with R - 1 and N - 1
degrees of freedom, never RN - 1. A single level of a factor drops its terms.

Checked by simulation (tests/test_stats.py): 5 seeds x 3 families x 100 sequences, seed-, sequence-
and interaction-dominated variance: coverage within 95 % +- 3 % over 400 simulations in each.

Worked example: 3 seeds x 2 sequences with d = [[1, 2], [2, 3], [3, 4]] (no interaction): the seed
means 1.5, 2.5, 3.5 give MS_s/(NM) = 1/3 (their variance 1 over 3 seeds), the sequence means 2, 3
give MS_q/(NM) = 1/4, the residual is 0; V = 7/12, df = V^2 / ((1/3)^2/2 + (1/4)^2/1) = 2.88, so
the interval is 2.5 +- t_{0.975, 2.88} * 0.764 = 2.5 +- 2.49.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

RESAMPLES = 2_000  # bootstrap resamples per variance component
BOOTSTRAP_SEED = 0
ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds: no interval (the seed points are shown instead)
KEYS = ("replicate", "seed", "family", "sequence")  # a per-sequence score's identity in `hierarchical_ci`


def t_quantile(df: float, level: float = 0.95) -> float:
    """Two-sided Student-t critical value t_{(1+level)/2, df}, e.g. t_quantile(2) = 4.303."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(stats.t.ppf((1 + level) / 2, df))


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float, int]:
    """Mean, half-width of the Student-t interval (mean ± t·s/√n) and n; half-width NaN for n below
    MIN_SEEDS (2 seeds give t = 12.7: an interval from -9 % to 102 % says nothing)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, 0
    if n < MIN_SEEDS:
        return float(x.mean()), math.nan, n
    return float(x.mean()), t_quantile(n - 1, level) * float(x.std(ddof=1)) / math.sqrt(n), n


def lower_end(mean: float, half: float, n: int) -> float:
    """The lower end of the 95 % interval mean ± half over n seeds; the point itself where there is no
    interval. E.g. 0.93 ± 0.05 over 3 seeds -> 0.88: not "at least 0.9"."""
    return mean if n < 2 or not math.isfinite(half) else mean - half


def intervals_overlap(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Whether two (mean, half, n) intervals overlap; a missing interval (NaN half: fewer than
    MIN_SEEDS seeds) overlaps everything, since it cannot show two architectures apart."""
    if not (math.isfinite(a[1]) and math.isfinite(b[1])):
        return True
    return a[0] - a[1] <= b[0] + b[1] and b[0] - b[1] <= a[0] + a[1]


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties dropped), `scipy.stats.binomtest`."""
    n = wins + losses
    return 1.0 if n == 0 else float(stats.binomtest(wins, n, 0.5).pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN and is not counted).
    scipy has no Holm (`false_discovery_control` is Benjamini–Hochberg)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    adjusted, running = [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _boot_var(x: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Unbiased variance of the mean of the last axis's items by bootstrap: the bootstrap variance of
    the mean (scipy.stats.bootstrap's standard error squared) times n/(n-1). Batched over leading axes."""
    n = x.shape[-1]
    if n < 2:
        return np.zeros(x.shape[:-1])
    if np.ptp(x, axis=-1).max(initial=0.0) == 0:
        return np.zeros(x.shape[:-1])
    res = stats.bootstrap((x,), np.mean, n_resamples=resamples, axis=-1, vectorized=True, method="percentile",
                          rng=rng)
    return np.asarray(res.standard_error) ** 2 * n / (n - 1)


def _residual_ms(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Mean square of the interaction of `axes` (negative axes of x, the others averaged out) and
    its degrees of freedom, from the inclusion–exclusion of the marginal means."""
    dims = (-3, -2, -1)
    other = tuple(a for a in dims if a not in axes)
    m = x.mean(axis=other, keepdims=True) if other else x
    resid = np.zeros_like(m)
    for k in range(len(axes) + 1):
        for sub in _subsets(axes, k):
            sign = (-1) ** k
            resid = resid + sign * m.mean(axis=sub, keepdims=True) if sub else resid + sign * m
    df = int(np.prod([x.shape[a] - 1 for a in axes]))
    cells = int(np.prod([x.shape[a] for a in other])) if other else 1
    return (resid ** 2).sum(axis=dims) * cells / df, df


def _subsets(items: tuple[int, ...], k: int) -> list[tuple[int, ...]]:
    if k == 0:
        return [()]
    return [(items[i], *rest) for i in range(len(items)) for rest in _subsets(items[i + 1:], k - 1)]


def crossed_variance(blocks: list[np.ndarray], weights: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, V, df) of sum_f w_f · mean(block_f), each block (..., R, N, M_f) per-sequence scores of
    one family (replicates, seeds, sequences; leading axes batch independent data sets), by the
    construction of the module docstring. Terms of a factor with one level are dropped."""
    rng = np.random.default_rng(seed)
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    units = sum(wf * b.mean(axis=-1) for wf, b in zip(w, blocks, strict=True))  # (..., R, N)
    R, N = units.shape[-2:]
    mean = units.mean(axis=(-2, -1))
    terms, floors = [], []  # (signed term, df); the residuals' own shares
    if R > 1 and N > 1:
        rs = _residual_ms(units[..., None], (-3, -2))[0] / (R * N)
        terms += _unit_terms(_boot_var(units.mean(axis=-2), resamples, rng),
                             _boot_var(units.mean(axis=-1), resamples, rng), rs, R, N)
    elif R > 1:  # one seed: only the replicates vary (no interval is shown below MIN_SEEDS anyway)
        terms.append((_boot_var(units.mean(axis=-1), resamples, rng), R - 1))
    else:
        terms.append((_boot_var(units.mean(axis=-2), resamples, rng), N - 1))
    for wf, b in zip(w, blocks, strict=True):
        M = b.shape[-1]
        if M < 2:
            continue
        total = R * N * M
        part, floor = [(_boot_var(b.mean(axis=(-3, -2)), resamples, rng) * wf**2, M - 1)], None
        for axes, sign in (((-2, -1), -1), ((-3, -1), -1), ((-3, -2, -1), 1)):
            if all(b.shape[a] > 1 for a in axes):
                ms, df = _residual_ms(b, axes)
                part.append((sign * wf**2 * ms / total, df))
                floor = (ms * wf**2 / total, df)  # the last one present: the residual (highest interaction)
        terms += _truncated(part)
        floors += [floor] if len(part) > 1 else []
    return (mean, *_satterthwaite(terms, floors, mean))


def _satterthwaite(terms: list[tuple[np.ndarray, int]], floors: list[tuple[np.ndarray, int]],
                   mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V = the sum of the signed terms and its Satterthwaite df; V never below the residual's own
    share (sum of the floors: the seed x sequence noise every estimate carries), which truncation of
    both components to 0 would otherwise allow (e.g. every seed right on one sequence, each a
    different one: seed and sequence components 0, the variance not)."""
    def total(parts):
        var = sum(t for t, _ in parts) if parts else np.zeros_like(mean)
        denom = sum((t**2 / d for t, d in parts if d > 0), np.zeros_like(mean))  # a 1-level factor: no term
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(denom > 0, np.maximum(var**2 / np.where(denom > 0, denom, 1), 1.0), np.inf)
        return np.asarray(var, dtype=float), df

    var, df = total(terms)
    low, low_df = total(floors)
    below = var < low
    return np.where(below, low, var), np.where(below, low_df, df)


def _unit_terms(seeds: np.ndarray, reps: np.ndarray, rs: np.ndarray, R: int, N: int) -> list[tuple[np.ndarray, int]]:
    """The (replicate, seed) units' share of V with each component truncated at 0 on its own:
    sigma_s^2/N ~ seeds - rs, sigma_r^2/R ~ reps - rs, sigma_rs^2/(RN) ~ rs (seeds, reps, rs: the seed
    means', replicate means' and interaction's mean squares over RN), so V_units = max(seeds, rs) +
    max(reps, rs) - rs, never below the interaction's own rs. Truncating their sum instead would drop
    the interaction whenever one replicate's seeds disagree with the other's (with 2 replicates MS_r has
    one degree of freedom and is often below MS_rs): a sub-pp interval around a difference whose
    per-seed values spread over 3 pp. Returned as Satterthwaite terms of the case that holds."""
    s_up, r_up = seeds > rs, reps > rs
    d = (R - 1) * (N - 1)
    return [(np.where(s_up, seeds, 0.0), N - 1), (np.where(r_up, reps, 0.0), R - 1),
            (np.where(s_up & r_up, -rs, np.where(~s_up & ~r_up, rs, 0.0)), d)]


def _truncated(terms: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
    """A variance component's signed terms, set to 0 where their sum (the component) is negative."""
    keep = sum(t for t, _ in terms) > 0
    return [(np.where(keep, t, 0.0), d) for t, d in terms]


@dataclass(frozen=True)
class Interval:
    """A hierarchical estimate: mean, its 95 % interval (lo, hi, half; NaN below MIN_SEEDS), the
    standard error, Satterthwaite df, the two-sided p-value of mean = 0, and what it rests on."""

    mean: float
    half: float
    se: float
    df: float
    p: float
    seeds: int
    replicates: int
    sequences: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def blocks_of(frame: pd.DataFrame, value: str = "value") -> tuple[list[np.ndarray], np.ndarray]:
    """Per family the (R, N, M_f) array of `value` from a frame with the KEYS columns (replicate
    optional), and the family weights (the family's share of the frame's scored predictions, column
    `n`, else of its rows: the headline's pooling). Crossed design, complete cases: only seeds present
    in every replicate and (replicate, seed) units present in every family, and per family only the
    sequences every unit has (on iid_unseen a sequence a seed trained on is not its)."""
    f = frame if "replicate" in frame else frame.assign(replicate=0)
    reps = sorted(f["replicate"].unique())
    per_seed = f.groupby("seed")["replicate"].nunique()
    f = f[f["seed"].isin(per_seed[per_seed == len(reps)].index)]
    units = f[["family", "replicate", "seed"]].drop_duplicates()
    common = units.groupby(["replicate", "seed"])["family"].nunique() == units["family"].nunique()
    keep = pd.MultiIndex.from_frame(f[["replicate", "seed"]]).isin(common[common].index)
    f = f[keep]
    per_seed = f.groupby("seed")["replicate"].nunique()
    f = f[f["seed"].isin(per_seed[per_seed == len(reps)].index)]
    blocks, weights = [], []
    for _, g in f.groupby("family", sort=True):
        wide = g.pivot_table(index=["replicate", "seed"], columns="sequence", values=value, aggfunc="mean")
        wide = wide.dropna(axis=1)
        if wide.shape[1] == 0:
            continue
        R, N = len(reps), wide.shape[0] // len(reps)
        blocks.append(wide.to_numpy(dtype=float).reshape(R, N, wide.shape[1]))
        weights.append(float(g["n"].sum()) if "n" in g else len(g))
    return blocks, np.asarray(weights, dtype=float)


def hierarchical_ci(frame: pd.DataFrame, value: str = "value", level: float = 0.95, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> Interval:
    """The crossed (replicate x seed x sequence-within-family) estimate of the family-weighted mean
    of per-sequence scores (`blocks_of`), interval and p-value of the module docstring. E.g. 5 seeds x
    300 sequences of accuracies: mean 0.62, half 0.03, df ~ 4.6; 2 seeds: half NaN."""
    blocks, weights = blocks_of(frame, value)
    if not blocks:
        return Interval(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, 0)
    R, N = blocks[0].shape[:2]
    mean, var, df = (float(np.asarray(v)) for v in crossed_variance(blocks, weights, resamples, seed))
    se = math.sqrt(max(var, 0.0))
    sequences = sum(b.shape[-1] for b in blocks)
    if N < MIN_SEEDS:
        return Interval(mean, math.nan, se, df, math.nan, N, R, sequences)
    p = (1.0 if mean == 0 else 0.0) if se == 0 else float(2 * stats.t.sf(abs(mean) / se, df))
    return Interval(mean, float(stats.t.ppf((1 + level) / 2, df)) * se, se, df, p, N, R, sequences)


def tost(est: Interval, margin: float) -> float:
    """Two one-sided tests p-value that |mean| < margin (equivalence), on the same t: the larger of
    P(T >= (mean + margin)/se) and P(T <= (mean - margin)/se). NaN without an interval."""
    if not math.isfinite(est.half):
        return math.nan
    if est.se == 0:
        return 0.0 if abs(est.mean) < margin else 1.0
    lower = stats.t.sf((est.mean + margin) / est.se, est.df)  # H0: mean <= -margin
    upper = stats.t.cdf((est.mean - margin) / est.se, est.df)  # H0: mean >= +margin
    return float(max(lower, upper))


def paired(a: pd.DataFrame, b: pd.DataFrame, margin: float, value: str = "value", resamples: int = RESAMPLES,
           seed: int = BOOTSTRAP_SEED) -> tuple[Interval, float]:
    """The difference a − b of two architectures' per-sequence scores on the units and sequences both
    have (both arms on the same resamples: the construction runs on the paired differences), and the
    TOST p-value at `margin`."""
    keys = [k for k in KEYS if k in a and k in b]
    extra = ["n"] if "n" in a else []  # scored positions per sequence: the same for both arms
    d = a[[*keys, value, *extra]].merge(b[[*keys, value]], on=keys, suffixes=("_a", "_b"))
    d = d.assign(value=d[f"{value}_a"] - d[f"{value}_b"])
    est = hierarchical_ci(d, "value", resamples=resamples, seed=seed)
    return est, tost(est, margin)
