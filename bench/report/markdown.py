"""Markdown building blocks: the report's section titles (numbered and lettered from their order
here, so prose links to a section by its anchor and never spells its number), tables and numbers."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

SECTIONS = {  # key -> title; numbered 1, 2, ... in this order (mutual learning only where there is a mutual stage)
    "run": "What was run",
    "headline": "Headline",
    "ceiling": "Against the ceiling",
    "pairs": "Paired comparisons",
    "oeis": "Real sequences (OEIS)",
    "figures": "Figures",
    "findings": "Findings",
    "mutual": "Mutual learning",
}
FIGURE_PARTS = {  # key -> title of a part of the figures section; lettered a, b, ... in this order
    "accuracy": "Accuracy and distance error",
    "families": "Accuracy per family",
    "curves": "Learning curves",
    "memory": "Memory",
    "size": "Accuracy against size",
    "importance": "Hyperparameter importance",
    "cka": "Representation similarity",
}


def title(key: str) -> str:
    """'1. What was run', 'g. Representation similarity'."""
    if key in SECTIONS:
        return f"{list(SECTIONS).index(key) + 1}. {SECTIONS[key]}"
    return f"{'abcdefghijklmnopqrstuvwxyz'[list(FIGURE_PARTS).index(key)]}. {FIGURE_PARTS[key]}"


def heading(key: str) -> str:
    """The section's markdown heading line: '## 1. What was run', '### g. Representation similarity'."""
    return f"{'##' if key in SECTIONS else '###'} {title(key)}"


def anchor(key: str) -> str:
    """The heading's anchor as GitHub (and most renderers) derive it: lower case, punctuation dropped,
    spaces as hyphens: '#1-what-was-run'."""
    return "#" + re.sub(r"[^\w\- ]", "", title(key).lower()).replace(" ", "-")


def link(key: str, text: str | None = None) -> str:
    """A link to a section: '[representation similarity](#g-representation-similarity)'."""
    name = text if text is not None else (SECTIONS.get(key) or FIGURE_PARTS[key]).lower()
    return f"[{name}]({anchor(key)})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def fmt_ci(mean: float, half: float, n: int, scale: float = 1.0, digits: int = 1) -> str:
    """'48.2 ± 0.6', or '48.2 (n=2)' when fewer than 3 seeds give no interval, or '—'."""
    if n == 0 or not np.isfinite(mean):
        return "—"
    if n == 1 or not np.isfinite(half):
        return f"{mean * scale:.{digits}f} (n={n})"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"


def interval_text(mean: float, half: float, n: int, after: str = "") -> str:
    """'92.0 %<after> (interval 88.1–95.9 %)' of a fraction over seeds (mean ± half, n seeds), or
    '92.0 %<after> (one seed: no interval)' ('2 seeds: no interval': below 3 seeds there is none)."""
    if n < 2 or not np.isfinite(half):
        return f"{pct(mean)}{after} ({'one seed' if n < 2 else f'{n} seeds'}: no interval)"
    return f"{pct(mean)}{after} (interval {100 * (mean - half):.1f}–{100 * (mean + half):.1f} %)"


def fmt_size(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or pd.isna(value):
        return "—"
    return f"{value:.2g}" if key == "lr" else str(int(value))


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def and_list(items: list[str]) -> str:
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1] if items else "none"
