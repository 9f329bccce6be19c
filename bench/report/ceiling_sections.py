"""The report's parts that read scores against what is achievable: the first line (best architecture
or top group, and how far the study got towards the ceiling), the test splits' sizes, the section
'Against the ceiling' (accuracy / ceiling per family with the below-baseline flags, accuracy on the
identifiable positions, the ceiling table itself) and the OEIS section."""

from __future__ import annotations

import math

import pandas as pd

from bench.report.against import EXACT, MIN_SEQUENCES, REACHED
from bench.report.load import ALL, CEILING, PRIMARY, TRIVIAL, Stored, family_order, is_baseline
from bench.report.markdown import and_list, fmt_ci, heading, interval_text, md_table, pct, plural
from bench.report.numbers import Numbers, reference_order
from bench.report.oeis import SOURCE, kinds_present
from bench.report.stats import lower_end

FLAG = "↓"  # marks a cell where the architecture is below a trivial baseline


def label(arch: str) -> str:
    """A row's name: an architecture in bold, a baseline or the ceiling in italics."""
    if arch == CEILING:
        return "*ceiling (Bayes)*"
    return f"*baseline: {arch.removeprefix('baseline_').replace('_', ' ')}*" if is_baseline(arch) else f"**{arch}**"


def _ratio(n: Numbers, arch: str, split: str = PRIMARY) -> float | None:
    r = n.ratios[(n.ratios.arch == arch) & (n.ratios.split == split)]
    return float(r["mean"].iloc[0]) if len(r) else None


def first_line(s: Stored, n: Numbers) -> str:
    """'Best: X' only where X is separably ahead of every other architecture on iid_unseen, else the
    top group; then whether any architecture reached REACHED of the ceiling on iid_unseen."""
    if not n.order:
        return ""
    acc = n.summary[n.summary.metric == "accuracy"].set_index("arch")["mean"]
    lead = n.order[0]
    ratio = _ratio(n, lead)
    at = f" at {pct(acc[lead])} iid_unseen accuracy" + (f" ({pct(ratio)} of the ceiling)" if ratio else "")
    if n.best:
        text = (f"Best: **{n.best}**{at}, significantly ahead of every other architecture on iid_unseen "
                f"(hierarchical paired test, Holm-corrected). ")
    elif len(n.order) == 1:
        text = f"One architecture: **{lead}**{at}. "
    else:
        text = f"Top group (not separable at this budget): {', '.join(n.top)}. "
    return text + reach_sentence(s, n) + " "


def _ratio_ci(n: Numbers, arch: str, split: str = PRIMARY) -> tuple[float, float, int] | None:
    r = n.ratios[(n.ratios.arch == arch) & (n.ratios.split == split)]
    return (float(r["mean"].iloc[0]), float(r["half"].iloc[0]), int(r["n"].iloc[0])) if len(r) else None


def reach_sentence(s: Stored, n: Numbers) -> str:
    """Which architectures reached REACHED of the ceiling on iid_unseen: those whose 95 % interval
    over seeds of accuracy / ceiling has its lower end at REACHED or above (one seed: its point, said
    so); if none, the closest by mean with its interval (and the longer budget the study's
    configuration names, `long_study`, where it names one). E.g. 92 ± 4 % over 3 seeds (lower end
    88 %) has not reached 90 %."""
    ratios = {a: r for a in n.order if (r := _ratio_ci(n, a)) is not None and math.isfinite(r[0])}
    if not ratios:
        return "No ceiling stored, so how far this budget got cannot be said."
    reached = [a for a, r in ratios.items() if lower_end(*r) >= REACHED - EXACT]
    if reached:
        return (f"{and_list(reached)} reached {100 * REACHED:.0f} % of the ceiling on iid_unseen (the lower end of "
                f"the 95 % interval over seeds at least {100 * REACHED:.0f} %): "
                + ", ".join(f"{a} {interval_text(*ratios[a])}" for a in reached) + ".")
    closest = max(ratios, key=lambda a: ratios[a][0])
    longer = s.setting("long_study")
    return (f"No architecture reached {100 * REACHED:.0f} % of the ceiling on iid_unseen at this budget with the "
            f"lower end of its 95 % interval over seeds (closest: {closest} at "
            f"{interval_text(*ratios[closest], after=' of it')})"
            + (f"; a longer budget (`study={longer}`) aims for it." if longer else "."))


def split_sizes(s: Stored) -> str:
    """Test sequences per seed and split (splits.parquet), summed over families."""
    if s.splits is None or not len(s.splits):
        return "- **Test splits:** not recorded (splits.parquet missing).\n"
    t = s.splits.assign(column=[sp if sp != "length" else f"length {int(L)}"
                                for sp, L in zip(s.splits["split"], s.splits["length"], strict=True)])
    wide = t.pivot_table(index="seed", columns="column", values="n_sequences", aggfunc="sum")
    columns = [c for c in ("iid_seen", "iid_unseen", "ood") if c in wide] + sorted(
        (c for c in wide if c.startswith("length ")), key=lambda c: int(c.split()[1]))
    rows = [[str(seed), *(f"{int(r[c]):,}" if pd.notna(r[c]) else "—" for c in columns)]
            for seed, r in wide.iterrows()]
    return ("\n**Test splits** (sequences per seed, summed over families): iid_seen are drawn verbatim in that "
            "seed's training budget and appear in no headline; iid_unseen come from the same distribution but were "
            "never drawn (a reserved slice of each family's sequences, by a hash of their terms, that no training "
            "or validation stream draws, and the iid rows the budget happened to miss); ood from the families' "
            "held-out regions; length from the same families at longer lengths.\n\n"
            + md_table(["seed", *columns], rows) + "\n")


def _family_table(n: Numbers, split: str) -> str:
    ratio = n.family_ratio.get(split)
    if ratio is None or not ratio.size:
        return f"No {split} results per family.\n"
    flags = {(r.arch, r.family) for r in n.below[split].itertuples()}
    rows = []
    for arch in [a for a in ratio.index if a != CEILING]:
        rows.append([label(arch), *("—" if pd.isna(v) else f"{100 * v:.0f}" + (f" {FLAG}" if (arch, f) in flags
                                                                                 else "")
                                    for f, v in ratio.loc[arch].items())])
    acc = n.family_acc.get(split)  # the ceiling's own accuracy per family, as a last row
    if acc is not None and CEILING in acc.index:
        rows.append(["*ceiling accuracy (%)*", *("—" if pd.isna(acc.loc[CEILING].get(f)) else
                                                 f"{100 * acc.loc[CEILING, f]:.1f}" for f in ratio.columns)])
    text = md_table(["architecture", *ratio.columns], rows) + "\n"
    below = n.below[split]
    if len(below):
        text += (f"\n{FLAG} below a trivial baseline on that family ({split}): "
                 + "; ".join(f"{r.arch} on {r.family} ({r.baseline.removeprefix('baseline_').replace('_', ' ')} "
                             f"{pct(r.baseline_accuracy)} > {pct(r.accuracy)})" for r in below.itertuples()) + ".\n")
    else:
        text += (f"\nNo architecture is below a trivial baseline on any family with at least {MIN_SEQUENCES} test "
                 f"sequences per seed ({split}).\n")
    return text


def _identifiable(s: Stored, n: Numbers) -> str:
    cells = n.identifiable_cells
    if not len(cells):
        return ("\nAccuracy on identifiable positions: " + ("no position where the mixture ceiling is 100 %.\n"
                                                           if s.ceiling is not None else "no ceiling stored.\n"))
    per = cells.groupby("family").size()
    where = ", ".join(f"{f} {per[f]}" for f in family_order(per.index, s.family_names))
    scores = n.identifiable.set_index("arch")
    rows = [[label(a), fmt_ci(r["mean"], r["half"], int(r["n"]), 100) if not is_baseline(a) else pct(r["mean"])[:-2],
             str(int(r["n"]))]
            for a in [*n.order, *reference_order(scores.index)] if a in scores.index for r in [scores.loc[a]]]
    return (f"\n**Accuracy on identifiable positions:** iid_unseen accuracy pooled over the "
            f"{plural(len(cells), '(family, position) cell')} where the mixture ceiling (region train, length "
            f"{s.setting('data.length')}) is 100 %: the prefix determines the next term whatever family drew it "
            f"(per family: {where}). Mean ± 95 % interval over seeds; baselines and the ceiling: mean over "
            f"seeds.\n\n" + md_table(["architecture", "accuracy (%)", "seeds"], rows) + "\n")


def _ceiling_details(s: Stored) -> str:
    c = s.ceiling
    if c is None or "set" not in c or not len(c):
        return "\nNo ceiling table stored (ceiling.parquet missing).\n"
    c = c[c["set"].isin(["mixture", "family_known"])]
    if s.setting("data.length") is not None:
        c = c[c["length"] == s.setting("data.length")]
    keys = ["region", "family", "position"]
    wide = {k: g.set_index(keys) for k, g in c.groupby("set")}
    known = family_order(c["family"].unique(), s.family_names)
    index = sorted(set().union(*(w.index for w in wide.values())), key=lambda k: (
        k[0] != "train", k[1] == ALL, known.index(k[1]), pd.isna(k[2]), -1 if pd.isna(k[2]) else int(k[2])))
    rows = []
    for key in index:
        row = [key[0], key[1], "all" if pd.isna(key[2]) else str(int(key[2]))]
        for kind in ("mixture", "family_known"):
            r = wide[kind].loc[key] if kind in wide and key in wide[kind].index else None
            row += ["—", "—"] if r is None else [f"{100 * r['accuracy']:.1f}", f"{r['loss']:.3f}"]
        m = wide.get("mixture")
        r = m.loc[key] if m is not None and key in m.index else None
        row += ["—", "—"] if r is None else [str(r["method"]), f"{100 * r['se']:.2f}" if pd.notna(r["se"])
                                             and r["se"] > 0 else "—"]
        rows.append(row)
    return ("\n<details><summary>The ceiling per family and position (Bayes-optimal next-term predictor, length "
            f"{s.setting('data.length')})</summary>\n\nmixture: the family is unknown, every family weighted "
            "equally, as the test sets hold them; family known: the predictor is told the family. Position p predicts "
            "x[p+1] from x[0..p]; loss is the cross-entropy floor in nats; method exact (enumerated support) or "
            "monte_carlo (standard error in pp).\n\n"
            + md_table(["region", "family", "position", "mixture acc. (%)", "mixture loss", "family-known acc. (%)",
                        "family-known loss", "method", "se (pp)"], rows) + "\n\n</details>\n")


def section_ceiling(s: Stored, n: Numbers) -> str:
    text = (f"{heading('ceiling')}\n\nAccuracy as a percentage of the ceiling (the Bayes-optimal predictor of the "
            "training mixture scored on the same test sequences, per seed), per architecture and family, mean over "
            f"seeds. {FLAG}: the architecture's accuracy is below a trivial baseline's "
            f"({', '.join(b.removeprefix('baseline_').replace('_', ' ') for b in TRIVIAL)}: any of them) on that "
            f"family and split, flagged only where that family has at least {MIN_SEQUENCES} test sequences per seed "
            "on that split (a smaller cell is shown without a flag: its mean is too noisy to call).\n\n")
    for split in (PRIMARY, "ood"):
        text += f"**{split}**\n\n" + _family_table(n, split) + "\n"
    return text.rstrip("\n") + "\n" + _identifiable(s, n) + _ceiling_details(s)


def section_oeis(s: Stored, n: Numbers) -> str:
    head = f"{heading('oeis')}\n\n"
    if n.oeis is None or not len(n.oeis):
        return head + "No scores on real sequences stored (oeis.parquet missing).\n"
    kinds = kinds_present(n.oeis)
    table = n.oeis.set_index(["arch", "kind"])
    archs = [a for a in n.order if a in set(n.oeis.arch)] + reference_order(set(n.oeis.arch))
    rows = []
    for arch in archs:
        cells = []
        for k in kinds:
            r = table.loc[(arch, k)] if (arch, k) in table.index else None
            cells.append("—" if r is None else pct(r["mean"])[:-2] if is_baseline(arch)
                         else fmt_ci(r["mean"], r["half"], int(r["seeds"]), 100))
        rows.append([label(arch), *cells])
    windows = n.oeis.groupby("kind")["windows"].max()
    count = "windows" if windows.notna().all() else "predictions"
    source = windows if count == "windows" else n.oeis.groupby("kind")["n"].max()
    rows.append([f"*{count}*", *(f"{int(source[k]):,}" for k in kinds)])
    return (head + "Next-term accuracy (%) on windows of real integer sequences whose terms fit in 0..255, by the "
            "kind of rule each follows (the kinds the curriculum teaches, pooled as `taught`, and `other`), each "
            "architecture's final models beside the non-learned baselines on the same windows; mean ± 95 % "
            "interval over seeds (baselines: mean over seeds; lookup is fit per seed on its training budget).\n\n"
            + md_table(["architecture", *kinds], rows) + f"\n\n{SOURCE}\n")
