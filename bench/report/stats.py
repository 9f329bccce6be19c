"""The report's statistics, in plain numpy: Student-t intervals over seeds, the exact sign test, a
paired bootstrap over test cells and Holm's correction. No scipy: the t quantile comes from exact
finite sums, so every number in a report is reproducible from the stored tables alone."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

RESAMPLES = 10_000  # paired bootstrap resamples
BOOTSTRAP_SEED = 0
ALPHA = 0.05


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


def lower_end(mean: float, half: float, n: int) -> float:
    """The lower end of the 95 % interval mean ± half over n seeds; the point itself where n < 2 gives
    no interval. E.g. 0.93 ± 0.05 over 3 seeds -> 0.88: not "at least 0.9"."""
    return mean if n < 2 or not math.isfinite(half) else mean - half


def intervals_overlap(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Whether two (mean, half, n) intervals overlap (a missing interval, n < 2, is its point)."""
    lo = lambda m, h, n: lower_end(m, h, n)  # noqa: E731
    hi = lambda m, h, n: m if n < 2 or not math.isfinite(h) else m + h  # noqa: E731
    return lo(*a) <= hi(*b) and lo(*b) <= hi(*a)


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
