"""The findings paragraph, generated from the numbers: the best architecture or the top group,
separable differences, the ceiling, baselines, families, real sequences, memory, lag recall, size,
representations, mutual learning and failed runs, all on iid_unseen (ood where named). Each part
links to the section it summarises by anchor."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report.against import MIN_SEQUENCES
from bench.report.ceiling_sections import reach_sentence
from bench.report.load import BASELINES, PRIMARY, Stored, is_baseline, with_others
from bench.report.markdown import and_list, heading, interval_text, link, pct, plural
from bench.report.numbers import Numbers
from bench.report.stats import intervals_overlap
from bench.report.tables import RECALL, REMEMBER, decay_reach, mutual_verdict


def findings(s: Stored, n: Numbers) -> str:
    """A paragraph generated from the numbers, one part per question."""
    if not n.order:
        return f"{heading('findings')}\n\nNo architecture has results.\n"
    parts = [_best(n), *_significance(n), _ceiling(s, n), *_baselines(n), *_below(n), *_families(n), *_oeis(n),
             *_memory(n), *_lag(n), *_size(n)]
    if n.cka is not None:
        parts.append(cka_finding(n.cka, with_others(n.order, n.cka["arch_a"]), n.cka_floor))
    else:
        parts.append(f"**Representations:** no similarity table (see {link('cka')}).")
    if n.mutual is not None and len(n.mutual):
        parts.append(mutual_finding(n.mutual, s.setting("mutual.weight")) + f" (see {link('mutual')})")
    if "status" in s.runs and (s.runs["status"] != "ok").any():
        parts.append(f"**Failed runs:** {int((s.runs['status'] != 'ok').sum())} (see {link('headline')}).")
    return f"{heading('findings')}\n\n" + " ".join(parts) + "\n"


def _accuracy(n: Numbers) -> pd.DataFrame:
    return n.summary[n.summary.metric == "accuracy"].set_index("arch")


def _leader_interval(n: Numbers) -> str:
    """The leader's 95 % interval around its headline mean: the hierarchical half-width (seeds,
    replicates and sequences) where there is one, else Student-t over seeds; below 3 seeds none
    ('n seeds, no interval')."""
    acc = _accuracy(n).loc[n.order[0]]
    iv = n.intervals[(n.intervals.arch == n.order[0]) & (n.intervals.split == PRIMARY)] \
        if n.intervals is not None else pd.DataFrame()
    half, seeds = (iv["half"].iloc[0], int(iv["seeds"].iloc[0])) if len(iv) else (acc["half"], int(acc["n"]))
    lo, hi = acc["mean"] - half, acc["mean"] + half  # centred on the headline mean printed beside it
    if not np.isfinite(half):
        return f"{plural(seeds, 'seed')}, no interval"
    return f"95 % interval {pct(max(0.0, lo))}–{pct(min(1.0, hi))} over {plural(seeds, 'seed')}"


def _best(n: Numbers) -> str:
    """The best architecture where it is significantly ahead of every other, else the top group, with numbers."""
    acc = _accuracy(n)
    lead = acc.loc[n.order[0]]
    interval = _leader_interval(n)
    if n.best:
        return (f"**Best:** {n.best} with {pct(lead['mean'])} iid_unseen accuracy ({interval}), significantly ahead "
                f"of every other architecture (Holm-corrected, see {link('pairs')}).")
    group = ", ".join(f"{a} {pct(acc.loc[a, 'mean'])}" for a in n.top if a in acc.index)
    return (f"**Top group** (not separable at this budget, iid_unseen accuracy): {group}; the leader's {interval}."
            if len(n.top) > 1 else f"**One architecture:** {n.order[0]}, {pct(lead['mean'])} ({interval}).")


def _separable(pairs: pd.DataFrame, split: str) -> str:
    sig, eq = pairs[pairs.separable], pairs[pairs.equivalent]
    same = f"; equivalent within the margin: {', '.join(f'{r.a} ≈ {r.b}' for r in eq.itertuples())}" if len(eq) else ""
    if not len(sig):
        return f"on {split} no pairwise difference is significant ({plural(len(pairs), 'pair')}){same}"
    desc = [f"{r.a if r.diff > 0 else r.b} > {r.b if r.diff > 0 else r.a} ({100 * abs(r.diff):.1f} pp)"
            for r in sig.sort_values("diff", key=abs, ascending=False).itertuples()]
    return (f"on {split} {plural(len(sig), 'difference')} of {plural(len(pairs), 'pair')}: "
            f"{', '.join(desc[:8])}{' …' if len(desc) > 8 else ''}{same}")


def _significance(n: Numbers) -> list[str]:
    parts = [_separable(p, split) for p, split in ((n.pairs, PRIMARY), (n.pairs_ood, "ood")) if len(p)]
    if not parts:
        return []
    unit = "per-sequence scores" if n.unit == "predictions" else "(seed, family) cells: no per-sequence scores stored"
    return [f"**Significant** (hierarchical test on {unit}, Holm-corrected, 5 %; equivalence: TOST at "
            f"±{100 * n.margin:g} pp): " + "; ".join(parts) + "."]


def _ceiling(s: Stored, n: Numbers) -> str:
    """How far the study got against the ceiling, iid_unseen and ood."""
    r = n.ratios[n.ratios.arch.isin(n.order)]
    text = f"**Against the ceiling:** {reach_sentence(s, n)}"
    ood = r[r.split == "ood"].set_index("arch")["mean"]
    if len(ood) and ood.max() == ood.min():
        text += f" On ood every architecture is at {pct(ood.max())} of the ceiling."
    elif len(ood):
        text += (f" On ood the best fraction of the ceiling is {pct(ood.max())} ({ood.idxmax()}), the lowest "
                 f"{pct(ood.min())} ({ood.idxmin()}).")
    return text[:-1] + f" (see {link('ceiling')})."


def _below(n: Numbers) -> list[str]:
    """Where an architecture is below a trivial baseline, per split."""
    parts = []
    for split in (PRIMARY, "ood"):
        b = n.below.get(split)
        if b is None or not len(b):
            continue
        per = b.groupby("arch")["family"].apply(list)
        parts.append(f"on {split}, " + "; ".join(f"{a} on {', '.join(per[a])}" for a in n.order if a in per.index))
    return [f"**Below a trivial baseline** (last value, extrapolate or lookup; families with at least "
            f"{MIN_SEQUENCES} test sequences per seed): {'; '.join(parts)}."] if parts else []


def _baselines(n: Numbers) -> list[str]:
    acc = _accuracy(n)
    base = acc[acc.index.isin(BASELINES)]
    if not len(base):
        return []
    top = base["mean"].idxmax()
    margin = {a: acc.loc[a, "mean"] - base.loc[top, "mean"] for a in n.order if a in acc.index}
    losers = [a for a, m in margin.items() if m <= 0]
    label = top.removeprefix("baseline_").replace("_", " ")
    head, best = "**Baselines** (iid_unseen):", f"({label}, {pct(base.loc[top, 'mean'])})"
    if losers:
        return [f"{head} {and_list(losers)} {'does' if len(losers) == 1 else 'do'} not beat the best non-learned "
                f"baseline {best}."]
    return [f"{head} every architecture's mean is above the best non-learned baseline {best}, by at least "
            f"{100 * min(margin.values()):.1f} pp."]


def _families(n: Numbers) -> list[str]:
    """The hardest and the easiest family by the highest accuracy / ceiling any architecture reaches
    there (a description, not a test: no family is 'won')."""
    ratio = n.family_ratio.get(PRIMARY)
    if ratio is None:
        return []
    fam = ratio.loc[[a for a in n.order if a in ratio.index]]
    if not fam.size or fam.isna().all().all():
        return []
    top = fam.max(axis=0)
    hard, easy = top.idxmin(), top.idxmax()
    won = _winners(n)
    if top[hard] == top[easy]:
        return [f"**Per family** (iid_unseen): the highest accuracy / ceiling of any architecture is {pct(top[hard])} "
                f"on every family.{won}"]
    return [f"**Per family** (iid_unseen, highest accuracy / ceiling of any architecture): hardest {hard} "
            f"({pct(top[hard])}), easiest {easy} ({pct(top[easy])}).{won}"]


def _winners(n: Numbers) -> str:
    """' Significant family winners: ...' (only families whose leader is significantly ahead of every
    other architecture there; ties are not wins), '' without per-sequence scores."""
    w = (n.winners or {}).get(PRIMARY)
    if w is None or not len(w):
        return ""
    won = w[w["winner"].notna()]
    if not len(won):
        return f" No family has a significant winner ({len(w)} tested)."
    return (f" Significant family winners ({len(won)} of {len(w)}): "
            + ", ".join(f"{r.winner} on {r.family}" for r in won.itertuples()) + "; elsewhere a top group.")


def _oeis_models(kind: str, models: pd.DataFrame) -> str:
    """The architectures on one kind: the top one by mean with its interval where its 95 % t interval
    over seeds overlaps no other's, else the top group (every architecture whose interval overlaps the
    top one's): their differences are within the seeds' spread."""
    models = models.sort_values("mean", ascending=False, kind="stable")
    ci = {a: (float(r["mean"]), float(r["half"]), int(r["seeds"])) for a, r in models.iterrows()}
    top = next(iter(ci))
    if len(ci) == 1:
        return f"on the {kind} kinds the one architecture, {top}, scores {interval_text(*ci[top])}"
    group = [a for a in ci if a == top or intervals_overlap(ci[top], ci[a])]
    if len(group) == 1:
        return (f"on the {kind} kinds {top} scores highest, {interval_text(*ci[top])}, its 95 % interval over "
                "seeds clear of every other architecture's")
    if not all(np.isfinite(ci[a][1]) for a in group):
        return (f"on the {kind} kinds {and_list(group)} are not separable (fewer than 3 seeds: no interval; top by "
                f"mean {top}, {interval_text(*ci[top])})")
    return (f"on the {kind} kinds {and_list(group)} are not separable (their 95 % intervals over seeds overlap: the "
            f"differences are within the seeds' spread; top by mean {top}, {interval_text(*ci[top])})")


def _oeis(n: Numbers) -> list[str]:
    """Real sequences: the top architecture (or the top group where intervals overlap) against the
    best baseline on the taught kinds and the rest."""
    if n.oeis is None or not len(n.oeis):
        return []
    parts = []
    for kind in ("taught", "other"):
        k = n.oeis[n.oeis.kind == kind].set_index("arch")
        models, bases = k[k.index.isin(n.order)], k.loc[k.index.isin(BASELINES), "mean"]
        if len(models) and len(bases):
            parts.append(f"{_oeis_models(kind, models)}; the best baseline {pct(bases.max())} "
                         f"({bases.idxmax().removeprefix('baseline_').replace('_', ' ')})")
    return [f"**Real sequences** (OEIS): {'; '.join(parts)} (see {link('oeis')})."] if parts else []


def _lag_recall(n: Numbers) -> dict[str, int | None]:
    """Per architecture the largest lag k such that every lag k' <= k is recalled (mean accuracy on
    its predictable positions >= RECALL), None where not even the smallest is; {} outside lag studies.
    The same every-k'-up-to-k rule as the memory reach."""
    if n.lag is None:
        return {}
    out: dict[str, int | None] = {}
    for a, g in n.lag.groupby("arch"):
        if is_baseline(a):
            continue
        g = g.sort_values("k")
        ok = (g["mean"] >= RECALL).cummin()
        out[str(a)] = int(g.loc[ok, "k"].max()) if ok.any() else None
    return out


def _memory(n: Numbers) -> list[str]:
    if n.decay is None:
        return ["**Memory:** no decay curves stored."]
    reach = decay_reach(n.decay)
    if not reach:
        return []
    k0 = int(n.decay["k"].min())
    recall = _lag_recall(n)
    curves = n.decay[n.decay["variant"] == "perturbation"]

    def part(arch: str, k: int) -> str:
        c = curves[curves["arch"] == arch]
        later = c[c["k"] > k]
        peak = (f"peak beyond it at k={int(later.loc[later['value'].idxmax(), 'k'])}"
                if len(later) and later["value"].max() >= REMEMBER * float(c.sort_values("k")["value"].iloc[0])
                else "")
        extra = [x for x in (peak, f"lag recall {recall.get(arch) or 'none'}" if recall else "") if x]
        return f"{arch} k={k}" + (f" ({', '.join(extra)})" if extra else "")

    return [f"**Memory reach** (the largest k such that the last prediction's dependence on the input k′ steps "
            f"back stays at or above {100 * REMEMBER:g} % of its k={k0} value at every probed k′ ≤ k; perturbation "
            "probe on uniform random-token sequences, mean over seeds): "
            + ", ".join(part(a, k) for a, k in sorted(reach.items(), key=lambda t: (-t[1], t[0]))) + "."]


def _lag(n: Numbers) -> list[str]:
    recall = _lag_recall(n)
    if not recall:
        return []
    lags = sorted(int(k) for k in n.lag["k"].unique())
    shortcut = (f" From position {lags[-1]} on, the value {lags[-1]} back is every lag's target (each lag divides "
                f"{lags[-1]}), so recall there does not show which lag was read."
                if len(lags) > 1 and all(lags[-1] % k == 0 for k in lags) else "")
    return [f"**Lag recall** (the largest lag k such that every lag k′ ≤ k has ≥ {RECALL:.0%} accuracy on its "
            "predictable positions, mean over seeds): "
            + ", ".join(f"{a} {k if k is not None else 'none'}"
                        for a, k in sorted(recall.items(), key=lambda t: (-(t[1] or 0), t[0]))) + "." + shortcut]


def _size(n: Numbers) -> list[str]:
    if not n.front:
        return []
    pts = n.points.set_index("arch")
    return ["**Size:** the accuracy–parameter Pareto front is "
            + " → ".join(f"{a} ({int(pts.loc[a, 'num_params']):,} params, {pct(pts.loc[a, 'mean'])})"
                         for a in n.front) + "."]


def _pairs_once(means: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Each unordered pair of architectures once, the first in `order` as arch_a."""
    rank = {a: i for i, a in enumerate(order)}
    position = lambda col: means[col].map(lambda a: rank.get(a, len(rank)))  # noqa: E731
    return means[position("arch_a") < position("arch_b")]


def cka_finding(means: pd.DataFrame, order: list[str], floor: dict[str, float] | None = None) -> str:
    """One paragraph part from the numbers: the most and least similar pair of architectures at the last
    block, the cross-architecture mean against the seed-to-seed reference, and the trend with depth."""
    pairs = _pairs_once(means, order)
    same = pairs[pairs.kind == "architectures"]
    last = same[same["last"]].dropna(subset=["cka"]).sort_values("cka", ascending=False)
    if not len(last):
        return "**Representations:** fewer than two architectures with stored models: no similarity to compare."
    pair = lambda r: f"{r.arch_a}–{r.arch_b} ({r.cka:.2f})"  # noqa: E731
    text = ("**Representations** (linear CKA of the last block's outputs, mean over seeds): the most similar pair "
            f"of architectures is {pair(last.iloc[0])}")
    mean = last["cka"].mean()
    if len(last) > 1:
        text += f", the least similar {pair(last.iloc[-1])}, the mean over {plural(len(last), 'pair')} {mean:.2f}"
    across = pairs[pairs.kind == "architectures_across_seeds"]
    across_last = across.loc[across["last"], "cka"].mean() if len(across) else math.nan
    if np.isfinite(across_last):
        text += f" ({across_last:.2f} between architectures on different seeds)"
    text += _seed_reference(means, across_last if np.isfinite(across_last) else mean)
    return text + _depth_trend(same, across if len(across) else same, bool(len(across)), floor) + "."


def _seed_reference(means: pd.DataFrame, fair: float) -> str:
    """Against one architecture on two seeds: `fair` is the cross-architecture mean, both sides on
    different seeds where possible."""
    seeds = means[(means.kind == "seeds") & means["last"]].groupby("arch_a")["cka"].mean().sort_values()
    if not len(seeds):
        return ""
    spread = (f"{seeds.index[0]} {seeds.iloc[0]:.2f} to {seeds.index[-1]} {seeds.iloc[-1]:.2f}" if len(seeds) > 1
              else str(seeds.index[0]))
    verdict = ("different architectures end up nearly as similar to each other as two trainings of one"
               if fair >= 0.9 * seeds.mean() else
               "different architectures end up less similar to each other than two trainings of one")
    return (f", against {seeds.mean():.2f} for one architecture on two seeds ({spread}): {verdict} "
            f"(ratio {fair / seeds.mean():.2f})")


def _depth_trend(same: pd.DataFrame, off: pd.DataFrame, across: bool, floor: dict[str, float] | None) -> str:
    """How similarity between architectures changes from the embedding to the last block."""
    depth = [(label, off[(off.layer_a == layer) & (off.layer_b == layer)]["cka"].mean())
             for label, layer in (("the embedding", 0), ("block 1", 1))]
    depth = [(label, v) for label, v in depth if np.isfinite(v)]
    last_off = off.loc[off["last"], "cka"].mean()
    if not depth or not np.isfinite(last_off):
        return ""
    trend = "rises" if last_off > depth[0][1] else "falls" if last_off < depth[0][1] else "stays level"
    shown = [f"{v:.2f} at {label}" for label, v in depth]
    if "embedding" in (floor or {}) and depth[0][0] == "the embedding":
        shown[0] += f" (two unrelated random embeddings: {floor['embedding']:.2f})"
    text = (f". Between architectures{' on different seeds' if across else ''}, similarity {trend} with "
            f"depth: {', '.join(shown)}, {last_off:.2f} at the last block")
    emb_same = same[(same.layer_a == 0) & (same.layer_b == 0)]["cka"].mean()
    if across and np.isfinite(emb_same) and emb_same - depth[0][1] > 0.2:
        text += (f" (on the same seed the embeddings score {emb_same:.2f}, mostly because every architecture of a "
                 "seed starts from the same random stream)")
    return text


def mutual_finding(table: pd.DataFrame, weight: float | None) -> str:
    verdicts = {v: [f"{r.arch} ({100 * r.gain:+.1f} pp)" for r in table.itertuples() if mutual_verdict(r) == v]
                for v in ("helps", "hurts", "no detectable effect")}
    parts = [f"it helps {and_list(verdicts['helps'])}" if verdicts["helps"] else "it helps no architecture detectably",
             f"hurts {and_list(verdicts['hurts'])}" if verdicts["hurts"] else "",
             f"has no detectable effect on {and_list(verdicts['no detectable effect'])}"
             if verdicts["no detectable effect"] else ""]
    return f"**Mutual learning** (KL weight {weight}): " + "; ".join(p for p in parts if p) + "."
