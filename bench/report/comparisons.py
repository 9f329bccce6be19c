"""The paired comparisons section: every two architectures on the same test sequences and seeds, on
iid_unseen and, separately, on ood (never on a pooled test set, never on memorised sequences), with
the hierarchical interval of `bench.report.stats` (seeds, search replicates and sequences within
family strata are the crossed sources of variance), Holm over the pairs, and an equivalence test
(TOST) at the study's margin; then the per-family winners and, with several search replicates, the
rank stability. A difference counts (`*`) only where its Holm-adjusted p-value is below 5 %."""

from __future__ import annotations

import pandas as pd

from bench.report.load import PRIMARY
from bench.report.markdown import heading, md_table, plural
from bench.report.numbers import Numbers
from bench.report.stats import ALPHA, MIN_SEEDS, RESAMPLES


def pair_matrix(pairs: pd.DataFrame, order: list[str]) -> list[list[str]]:
    """Row minus column accuracy difference (pp) for every two architectures, `*` where significant,
    `≈` where equivalent within the margin."""
    by = {(r.a, r.b): r for r in pairs.itertuples()}
    rows = []
    for a in order:
        row = [f"**{a}**"]
        for b in order:
            r = by.get((a, b)) or by.get((b, a))
            if a == b or r is None:
                row.append("·" if a == b else "—")
                continue
            diff = r.diff if (r.a, r.b) == (a, b) else -r.diff
            row.append(f"{100 * diff:+.1f}{'*' if r.separable else '≈' if r.equivalent else ''}")
        rows.append(row)
    return rows


def _pp(x: float) -> str:
    return "—" if pd.isna(x) else f"{100 * x:+.2f}"


def _p(x: float) -> str:
    return "—" if pd.isna(x) else f"{x:.4f}"


def _split_part(pairs: pd.DataFrame, order: list[str], split: str, unit: str) -> str:
    if not len(pairs):
        return f"**{split}**: no sequences both architectures of a pair have.\n\n"
    r0 = pairs.iloc[0]
    what = (f"{int(pairs['sequences'].max())} test sequences" if unit == "predictions"
            else f"{int(pairs['sequences'].max())} (phase, family) cells")
    base = f"{int(r0.seeds)} seeds" + (f" × {int(r0.replicates)} search replicates" if r0.replicates > 1 else "")
    detail = [[f"{r.a} − {r.b}", _pp(r.diff), f"[{_pp(r.lo)}, {_pp(r.hi)}]", "—" if pd.isna(r.lo) else f"{r.df:.1f}",
               _p(r.p), _p(r.p_holm), _p(r.p_tost_holm), f"{r.wins}/{r.losses}", _p(r.p_sign), r.verdict]
              for r in pairs.sort_values(["p", "a", "b"]).itertuples()]
    return (f"**{split}** ({what}, {base})\n\n" + md_table(["", *order], pair_matrix(pairs, order)) + "\n\n"
            + f"<details><summary>All pairs on {split}</summary>\n\n"
            + md_table(["pair", "diff (pp)", "95 % CI (pp)", "df", "p", "p Holm", "p TOST Holm", "wins/losses",
                        "p sign test", "verdict"], detail)
            + "\n\n</details>\n\n")


def _winners_part(n: Numbers) -> str:
    """Per family: the leader, and the winner only where it is significantly ahead of every other."""
    if not n.winners:
        return ""
    text = ("**Per family** (a winner only where the family's leader is significantly ahead of every other "
            "architecture on that family, Holm over the family's pairs; otherwise the top group):\n\n")
    for split, w in n.winners.items():
        if not len(w):
            continue
        rows = [[r.family, r.winner if isinstance(r.winner, str) else "—", r.group] for r in w.itertuples()]
        text += f"{split}:\n\n" + md_table(["family", "winner", "top group"], rows) + "\n\n"
    return text


def section_ranks(n: Numbers) -> str:
    """Rank stability across search replicates: each architecture's rank on iid_unseen in every
    replicate and the share of replicates whose top group holds it; '' with one replicate."""
    if n.ranks is None or not len(n.ranks):
        return ""
    wide = n.ranks.pivot_table(index="arch", columns="replicate", values="rank")
    share = n.ranks.groupby("arch")["share_top"].first()
    rows = [[a, *(str(int(wide.loc[a, r])) if pd.notna(wide.loc[a, r]) else "—" for r in wide.columns),
             f"{100 * share[a]:.0f} %"] for a in n.order if a in wide.index]
    return ("**Rank stability across search replicates** (iid_unseen; each replicate reran the search with another "
            "sampler seed on the same data, then the final runs; top group per replicate as above, its seeds the "
            "units):\n\n" + md_table(["arch", *(f"rank in replicate {r}" for r in wide.columns),
                                      "share of replicates in the top group"], rows) + "\n\n")


def section_pairs(n: Numbers) -> str:
    head = f"{heading('pairs')}\n\n"
    if len(n.order) < 2 or not len(n.pairs) and not len(n.pairs_ood):
        return head + "Fewer than two architectures with results: nothing to compare.\n"
    unit = ("per-sequence scores (predictions.parquet: each test sequence's accuracy over its positions)"
            if n.unit == "predictions" else
            "(seed, phase, family) cells of results.parquet (this study was collected before per-prediction "
            "scores were stored, so the cell is the finest unit: the intervals cover seeds and cells, not "
            "sequences)")
    text = (head + "Accuracy differences in percentage points, **row minus column**, on iid_unseen and separately "
            f"on ood, from {unit}; both architectures are scored on the same test sequences, and seed s gave both "
            "the same training stream. Interval and p-value: seeds (and search replicates) and sequences within "
            "each family are crossed random factors; the variance of the difference is the sum of their bootstrap "
            f"components ({RESAMPLES:,} resamples each) without the double-counted interaction, with a "
            "Satterthwaite t (see `bench/report/stats.py`). `*`: significant after Holm's correction over the "
            f"{plural(len(n.pairs), 'comparison')} (p < {100 * ALPHA:g} %); `≈`: equivalent within "
            f"±{100 * n.margin:g} pp "
            f"(two one-sided tests, Holm-corrected). With fewer than {MIN_SEEDS} seeds there is no interval and no "
            "verdict. The sign test over (seed, sequence) differences is a robustness column only: it treats the "
            "crossed scores as independent.\n\n")
    return (text + _split_part(n.pairs, n.order, PRIMARY, n.unit) + _split_part(n.pairs_ood, n.order, "ood", n.unit)
            + _winners_part(n) + section_ranks(n)).rstrip() + "\n"
