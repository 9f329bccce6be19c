"""The paired comparisons section: every two architectures on the same (seed, family) cells, on
iid_unseen and, separately, on ood (never on a pooled test set, never on memorised sequences). A
difference counts (`*`) only under the report's conservative test: the paired bootstrap and the
sign test, each Holm-corrected over the pairs, both below 5 %."""

from __future__ import annotations

import pandas as pd

from bench.report.load import PRIMARY
from bench.report.markdown import heading, md_table, plural
from bench.report.numbers import Numbers
from bench.report.stats import BOOTSTRAP_SEED, RESAMPLES


def pair_matrix(pairs: pd.DataFrame, order: list[str]) -> list[list[str]]:
    """Row minus column accuracy difference (pp) for every two architectures, `*` where separable."""
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
            row.append(f"{100 * diff:+.1f}{'*' if r.separable else ''}")
        rows.append(row)
    return rows


def _split_part(pairs: pd.DataFrame, order: list[str], split: str) -> str:
    if not len(pairs):
        return f"**{split}**: no cells both architectures of a pair have.\n\n"
    detail = [[f"{r.a} − {r.b}", str(r.cells), f"{100 * r.diff:+.2f}", f"[{100 * r.lo:+.2f}, {100 * r.hi:+.2f}]",
               f"{r.wins}/{r.ties}/{r.losses}", f"{r.p_boot:.4f}", f"{r.p_holm:.4f}", f"{r.p_sign:.4f}",
               f"{r.p_sign_holm:.4f}", "yes" if r.separable else "no"]
              for r in pairs.sort_values(["p_boot", "a", "b"]).itertuples()]
    return (f"**{split}** ({int(pairs['cells'].max())} (seed, family) cells per pair)\n\n"
            + md_table(["", *order], pair_matrix(pairs, order)) + "\n\n"
            + f"<details><summary>All pairs on {split} (bootstrap and sign test)</summary>\n\n"
            + md_table(["pair", "cells", "diff (pp)", "95 % bootstrap CI (pp)", "wins/ties/losses", "p bootstrap",
                        "p bootstrap Holm", "p sign test", "p sign Holm", "separable"], detail)
            + "\n\n</details>\n\n")


def section_pairs(n: Numbers) -> str:
    head = f"{heading('pairs')}\n\n"
    if len(n.order) < 2 or not len(n.pairs) and not len(n.pairs_ood):
        return head + "Fewer than two architectures with results: nothing to compare.\n"
    text = (head + "Accuracy differences in percentage points, **row minus column**, averaged over the (seed, family) "
            "cells both architectures have, on iid_unseen and separately on ood; every cell is the same test "
            "sequences for both, and seed s gave both the same training stream. `*`: separable under the report's "
            f"conservative test, a paired bootstrap over cells ({RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}) "
            f"and an exact sign test, each Holm-corrected over the {plural(len(n.pairs), 'comparison')}, both "
            "below 5 %. Per-sequence scores are not stored, so the cell is the unit.\n\n")
    return (text + _split_part(n.pairs, n.order, PRIMARY) + _split_part(n.pairs_ood, n.order, "ood")).rstrip() + "\n"
