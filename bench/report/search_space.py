"""Does the search box bind? Each architecture's chosen configuration (its final runs in runs.parquet,
per search replicate) against the range its search covered: a knob sitting at the edge of its range
says the best value may lie outside it, so the range should be widened before the ranking is read.

The searched range of a knob is, with `search.sampler: grid`, the first and last value of
`search.grid.<knob>` (sorted; with n_trials below the core grid's size, the configured grid's ends,
which a seeded subset need not have tried), and with TPE (the default sampler) the `[min, max]` of
`search.space.<knob>` (`expand`: its choices). A knob whose range holds a single value was not searched
and is never "on the boundary", nor is one with two values (`MIN_VALUES`): either choice is an end,
so the flag would say nothing (the grid's d_conv and expand are such knobs). Sizes and `expand` are
exact values, so a value equal to an end is at the edge; the learning rate is continuous under TPE,
so it counts as at an edge within `LR_EDGE` of the range's log-width (a TPE draw never lands exactly
on the bound). Worked example: lr searched in
[1e-3, 1e-2] and chosen 9.5e-3 is log10-distance 0.02 from the top, 2 % of the width 1: on the
boundary (top); 5e-3 (30 % below the top) is not.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.report.load import Stored

KNOBS = ("lr", "d_model", "num_layers", "d_state", "d_conv", "expand")  # as runs.parquet names them
LR_EDGE = 0.05  # share of the lr range's log-width within which a continuous draw counts as at an edge
MIN_VALUES = 3  # a knob searched over fewer values has no inside: every choice is an edge, never flagged
COLUMNS = ["arch", "replicate", "knob", "value", "low", "high", "side"]


def searched_ranges(s: Stored) -> dict[str, tuple[float, float]]:
    """{knob: (low, high)} of the knobs the study's search covered with at least MIN_VALUES values;
    empty without a search (search.n_trials=0)."""
    if not s.setting("search.n_trials"):
        return {}
    grid = s.setting("search.sampler", "tpe") == "grid"
    ranges = {}
    for knob in KNOBS:
        values = s.setting(f"search.grid.{knob}" if grid else f"search.space.{knob}")
        if values is None or len(values) == 0:
            continue
        low, high = min(float(v) for v in values), max(float(v) for v in values)
        if _count(knob, values, low, high, grid) >= MIN_VALUES:
            ranges[knob] = (low, high)
    return ranges


def _count(knob: str, values: Any, low: float, high: float, grid: bool) -> float:
    """How many values the search could choose for `knob`: a grid's list; under TPE the powers of two
    (sizes) or integers (num_layers) in [low, high], the choices of `expand`, and lr without limit."""
    if grid or knob == "expand":
        return len(set(float(v) for v in values))
    if knob == "lr":
        return math.inf if low < high else 1
    if knob == "num_layers":
        return high - low + 1
    return math.log2(high) - math.log2(low) + 1


def _side(knob: str, value: float, low: float, high: float, continuous: bool) -> str | None:
    """'top', 'bottom' or None: where `value` sits in [low, high]."""
    if continuous and knob == "lr":
        width = math.log10(high) - math.log10(low)
        if math.log10(high) - math.log10(value) <= LR_EDGE * width:
            return "top"
        return "bottom" if math.log10(value) - math.log10(low) <= LR_EDGE * width else None
    if math.isclose(value, high, rel_tol=1e-9):
        return "top"
    return "bottom" if math.isclose(value, low, rel_tol=1e-9) else None


def boundary_flags(s: Stored) -> pd.DataFrame:
    """One row per (arch, replicate, knob) whose chosen value is at an edge of its searched range:
    arch, replicate, knob, value, low, high, side ('top' | 'bottom'), sorted by arch, replicate, knob
    order. The chosen configuration is that of the architecture's final runs that finished (the same on
    every seed of a replicate)."""
    ranges = searched_ranges(s)
    runs = s.runs[s.runs["status"] == "ok"] if "status" in s.runs else s.runs
    if not ranges or not len(runs):
        return pd.DataFrame(columns=COLUMNS)
    runs = runs if "replicate" in runs else runs.assign(replicate=0)
    continuous = s.setting("search.sampler", "tpe") != "grid"
    rows = []
    for (arch, replicate), group in runs.groupby(["arch", "replicate"], sort=True):
        chosen = group.iloc[0]
        for knob, (low, high) in ranges.items():
            value = chosen.get(knob)
            if value is None or pd.isna(value):  # a knob this mixer does not have
                continue
            side = _side(knob, float(value), low, high, continuous)
            if side:
                rows.append([str(arch), int(replicate), knob, float(value), low, high, side])
    return pd.DataFrame(rows, columns=COLUMNS)


def fmt_knob(knob: str, value: Any) -> str:
    """A knob's value as the configuration writes it: sizes as integers, the learning rate as 1e-2."""
    if knob == "lr":
        mantissa, exponent = f"{float(value):.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(int(value))


def boundary_line(flags: pd.DataFrame, ranges: dict[str, tuple[float, float]]) -> str:
    """The search section's sentence: which chosen values sit on the boundary of their range, e.g.
    'on the boundary: mamba lr = 1e-2 (top of [1e-3, 1e-2])', or that none does."""
    if not ranges:
        return "no search, so no boundary to check"
    if not len(flags):
        return (f"no chosen configuration is on the boundary of its searched range "
                f"({', '.join(f'{k} [{fmt_knob(k, lo)}, {fmt_knob(k, hi)}]' for k, (lo, hi) in ranges.items())})")
    several = flags["replicate"].nunique() > 1 or (flags["replicate"] > 0).any()
    items = [f"{r.arch}{f' (replicate {r.replicate})' if several else ''} {r.knob} = {fmt_knob(r.knob, r.value)} "
             f"({r.side} of [{fmt_knob(r.knob, r.low)}, {fmt_knob(r.knob, r.high)}])" for r in flags.itertuples()]
    return "on the boundary (widen the range before reading the ranking): " + "; ".join(items)
