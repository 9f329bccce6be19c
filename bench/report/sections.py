"""The report's markdown sections, each from the stored tables (`Stored`) and the analysis tables
(`Numbers`): what was run, the headline, paired comparisons, figures, and the mutual-learning
comparison; `render` puts them together with the findings (`bench.report.findings`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.against import FRACTIONS, tokens_text
from bench.report.ceiling_sections import FLAG, first_line, label, section_ceiling, section_oeis, split_sizes
from bench.report.comparisons import section_pairs
from bench.report.findings import findings
from bench.report.importance import MIN_TRIALS
from bench.report.load import ALL, PRIMARY, Stored, family_order, is_baseline
from bench.report.markdown import (
    and_list,
    fmt_ci,
    fmt_size,
    heading,
    link,
    md_table,
    pct,
    title,
)
from bench.report.numbers import Numbers, reference_order
from bench.report.search_space import KNOBS, boundary_flags, boundary_line, fmt_knob, searched_ranges
from bench.report.tables import SIZE_COLUMNS, mutual_verdict


def figure(drawn: dict[str, str], name: str, caption: str) -> str:
    """The figure's embedded image, or why it is not there, or nothing for a figure of no place here."""
    why = drawn.get(name)
    if why is None:
        return ""
    return f"![{caption}]({name})\n\n" if not why else f"*No figure: {why}.*\n\n"


def rebuild_command(s: Stored) -> str:
    """The command that rebuilds this report: out_dir where it is not the default, storage and
    report_dir where set (without report_dir the report goes into out_dir/report)."""
    out = s.setting("out_dir") or (s.out_dir if s.out_dir != Path("runs") / s.name else None)
    storage, report_dir = s.setting("storage"), s.setting("report_dir")
    extra = (f" out_dir={s.out_dir}" if out else "") + (f" storage={storage}" if storage else "") + \
        (f" report_dir={report_dir}" if report_dir else "")
    return f"python -m bench.report study={s.name}{extra}"


def _search_line(s: Stored) -> str:
    c = s.setting
    if c("search.n_trials"):
        replicates = int(c("search.replicates", 1) or 1)
        repeat = f", repeated in {replicates} replicates (sampler seeds)" if replicates > 1 else ""
        budget = (f"{c('search.n_trials')} trials × {c('search.steps') or c('train.steps')} steps × batch "
                  f"{c('train.batch_size')} per architecture{repeat} (seed {c('search.seed')}; ")
        if c("search.sampler", "tpe") == "grid":
            grid = ", ".join(f"{k} [{', '.join(fmt_knob(k, v) for v in c(f'search.grid.{k}'))}]" for k in KNOBS
                             if c(f"search.grid.{k}") is not None)
            return budget + f"grid sampler, {c('search.pruner')} pruner; grid {grid})"
        space = f"d_model {list(c('search.space.d_model'))}, layers {list(c('search.space.num_layers'))}, " \
                f"lr {list(c('search.space.lr'))}"
        return budget + f"TPE, {c('search.pruner')} pruner; space {space})"
    return (f"none: every architecture at d_model {c('model.d_model')}, {c('model.num_layers')} layers, "
            f"d_state {c('model.d_state')}")


def section_boundary(s: Stored) -> tuple[str, str]:
    """The search-space boundary check (`bench.report.search_space`): the run section's line, and the
    table of the chosen values at an edge of their searched range ('' where there are none)."""
    ranges = searched_ranges(s)
    flags = boundary_flags(s)
    line = f"- **Search boundary:** {boundary_line(flags, ranges)}."
    if not len(flags):
        return line, ""
    rows = [[r.arch, str(r.replicate), r.knob, fmt_knob(r.knob, r.value),
             f"[{fmt_knob(r.knob, r.low)}, {fmt_knob(r.knob, r.high)}]", r.side] for r in flags.itertuples()]
    return line, ("\nChosen values on the boundary of the searched range:\n\n"
                  + md_table(["architecture", "replicate", "knob", "chosen", "searched range", "edge"], rows) + "\n")


def section_run(s: Stored) -> str:
    c, m = s.setting, s.meta
    iso = f"; sized to equal {c('iso')} (`iso={c('iso')}`)" if c("iso", "none") != "none" else ""
    tokens = int(s.runs["tokens"].max()) if "tokens" in s.runs and s.runs["tokens"].notna().any() else None
    final = (f"{c('train.steps')} steps × batch {c('train.batch_size')} × length {c('data.length')}"
             + (f" (up to {tokens:,} tokens)" if tokens else "") + f" per architecture and seed{iso}")
    fam = s.results[(s.results["family"] != ALL) & s.results["phase"].notna()][["phase", "family"]].drop_duplicates()
    data = "; ".join(f"phase {int(p)}: {', '.join(family_order(g['family'], s.family_names))}"
                     for p, g in fam.groupby("phase"))
    archs = [a for a in s.results["arch"].unique() if not is_baseline(a)]
    boundary, boundary_table = section_boundary(s)
    lines = [
        f"- **Command:** `{m.get('command') or '(not recorded)'}`",
        f"- **Commit:** `{m.get('commit', '?')}` · **date:** {m.get('date', '?')} · "
        f"**machine:** {m.get('machine', '?')} · **workers:** {m.get('workers', '?')}",
        f"- **Search:** {_search_line(s)}",
        boundary,
        f"- **Final:** {final}; early stopping {'on' if c('train.early_stopping') else 'off'}",
        f"- **Seeds:** {', '.join(str(x) for x in sorted(s.results['seed'].unique()))} · "
        f"**architectures:** {', '.join(sorted(archs))}",
        f"- **Data:** {data or '—'} ({c('data.test_per_family')} test sequences per family)",
        f"- **Storage:** `{m.get('storage', s.storage_url)}`",
        f"- **Reproduce:** `{m.get('command') or f'python -m bench.run study={s.name}'}` "
        f"(resumes if the storage is there; rebuild this report: `{rebuild_command(s)}`)",
        f"- **Test-set overlap with training:** {overlap_line(s.overlap, s.family_names)}",
    ]
    return f"{heading('run')}\n\n" + "\n".join(lines) + "\n" + boundary_table + split_sizes(s)


def overlap_line(overlap: pd.DataFrame | None, known: list[str]) -> str:
    """One line: share of test sequences drawn verbatim in training, plus the families where it is notable."""
    if overlap is None or not len(overlap):
        return "not recorded (overlap.parquet missing)."
    total = overlap["seen"].sum() / overlap["n"].sum()
    per = overlap.groupby("family")[["seen", "n"]].sum()
    per = per["seen"] / per["n"]
    per = per.reindex(sorted(per.index, key=lambda f: (-per[f], family_order(per.index, known).index(f))))
    line = (f"{pct(total)} of the iid test sequences also occur verbatim in a seed's training budget (the "
            f"reserved iid_unseen rows never do, by construction)")
    if (per >= 0.5).any():  # notable: some family is mostly seen in training
        shown = per[per >= 0.1]
        rest = len(per) - len(shown)
        line += ("; per family: " + ", ".join(f"{f} {100 * v:.0f} %" for f, v in shown.items())
                 + (f", the other {rest} below 10 %" if rest else "")
                 + " (those sequences are the iid_seen split, which no headline shows)")
    return line + "."


def _cell(n: Numbers, arch: str, split: str, metric: str = "accuracy", length: int | None = None,
          scale: float = 100.0, digits: int = 1) -> str:
    """One score over seeds: mean ± 95 % half-width for an architecture, the mean for a reference."""
    t = n.by_split
    r = t[(t.arch == arch) & (t.split == split) & (t.metric == metric) & ((t.length == length) if length else True)]
    if not len(r):
        return "—"
    r = r.iloc[0]
    return f"{r['mean'] * scale:.{digits}f}" if is_baseline(arch) else fmt_ci(r["mean"], r["half"], int(r["n"]),
                                                                              scale, digits)


def _ratio_cell(n: Numbers, arch: str, split: str) -> str:
    r = n.ratios[(n.ratios.arch == arch) & (n.ratios.split == split)]
    if not len(r):
        return "—"
    r = r.iloc[0]
    return f"{100 * r['mean']:.1f}" if is_baseline(arch) else fmt_ci(r["mean"], r["half"], int(r["n"]), 100)


def _per_replicate(n: Numbers, arch: str, column: str, text: str) -> str:
    """`text` (replicate 0's value), or every replicate's value "r0 / r1 / ..." where they differ."""
    reps = n.replicate_configs
    if reps is None or arch not in reps.index.get_level_values("arch") or column not in reps:
        return text
    values = reps.loc[arch][column]
    shown = [f"{int(v):,}" if column == "num_params" else fmt_size(v, column) for v in values]
    return " / ".join(shown) if len(set(shown)) > 1 else text


def _headline_row(arch: str, n: Numbers, size_cols: list[str], lengths: list[int]) -> list[str]:
    """One row of the headline table: sizes, parameters, the split scores, tokens to the ceiling, seeds."""
    base = is_baseline(arch)
    cfg_row = n.configs.loc[arch] if arch in n.configs.index else None
    cells = [label(arch)]
    cells += ["—" if base or cfg_row is None else _per_replicate(n, arch, c, fmt_size(cfg_row[c], c))
              for c in size_cols]
    no_size = base or cfg_row is None or "num_params" not in cfg_row
    cells.append("—" if no_size else _per_replicate(n, arch, "num_params", f"{int(cfg_row['num_params']):,}"))
    cells += [_cell(n, arch, PRIMARY), _ratio_cell(n, arch, PRIMARY), _cell(n, arch, "ood"),
              _ratio_cell(n, arch, "ood"), *(_cell(n, arch, "length", length=L) for L in lengths)]
    cells += ["—" if base else tokens_text(n.tokens, arch, f) for f in FRACTIONS]
    seeds = n.summary[(n.summary.arch == arch) & (n.summary.metric == "accuracy")]["n"]
    cells.append("—" if base or not len(seeds) else str(int(seeds.iloc[0])))
    return cells


def _other_metrics(n: Numbers) -> str:
    """Distance error, loss and continuation accuracy on iid_unseen, where stored."""
    metrics = [("distance_error", "distance error", 1.0, 2), ("loss", "loss (nats)", 1.0, 3),
               ("continuation_accuracy", "continuation acc. (%)", 100.0, 1)]
    metrics = [m for m in metrics if (n.summary.metric == m[0]).any()]
    if not metrics:
        return ""
    archs = [*n.order, *reference_order(n.summary.arch)]
    rows = [[label(a), *(_cell(n, a, PRIMARY, m, scale=scale, digits=d) for m, _, scale, d in metrics)]
            for a in archs]
    return ("\nOther scores on iid_unseen: distance error is |prediction − target| in values (0–255); loss is "
            "cross-entropy in nats (none for point predictors); continuation accuracy is greedy generation of "
            "each sequence's second half from its first.\n\n"
            + md_table(["architecture", *(m[1] for m in metrics)], rows) + "\n")


def section_headline(s: Stored, n: Numbers) -> str:
    size_cols = [c for c in SIZE_COLUMNS if c in n.configs and n.configs[c].notna().any()]
    lengths = sorted(int(L) for L in n.by_split.loc[n.by_split.split == "length", "length"].unique())
    header = ["architecture", *size_cols, "params", "iid_unseen acc. (%)", "iid_unseen / ceiling (%)",
              "ood acc. (%)", "ood / ceiling (%)", *(f"length {L} acc. (%)" for L in lengths),
              *(f"tokens to {100 * f:.0f} % of ceiling" for f in FRACTIONS), "seeds"]
    rows = [_headline_row(arch, n, size_cols, lengths) for arch in [*n.order, *reference_order(n.by_split.arch)]]
    one = (n.summary[n.summary.arch.isin(n.order)]["n"] == 1).any()
    text = (f"{heading('headline')}\n\n<!-- headline -->\n"
            "Scores of each architecture's best configuration, mean ± half-width "
            "of the 95 % Student-t interval over seeds (mean ± t₀.₉₇₅,ₙ₋₁·s/√n), sorted by iid_unseen accuracy: "
            "iid_unseen (the training distribution, never drawn in training), ood (the families' held-out "
            "regions; its ceiling is the predictor of the families' whole distribution), both never trained on, "
            "and length (the same families at longer lengths: the first terms of these rows are usually "
            "sequences of the training stream, so read them beside the lookup memoriser; only the positions past "
            "the training length are new). Accuracy / ceiling is taken per seed "
            "against the Bayes-optimal predictor on the same sequences. Tokens to 50 % / 90 % of ceiling: the "
            "training tokens at the first validation (fixed validation set) scoring that fraction of the "
            "ceiling on the same set, mean over seeds. Baselines are non-learned predictors on the same "
            "sequences (lookup memorises each seed's training budget), mean over seeds. Sequences drawn "
            "verbatim in training (iid_seen) are left out. Accuracy on iid_unseen and ood: the hierarchical 95 % "
            "interval (seeds, search replicates and test sequences; see the paired comparisons) where "
            "predictions.parquet is stored; below 3 seeds no interval.\n\n" + md_table(header, rows) + "\n")
    if one:
        text += "\n(n=1): a single seed gives no interval.\n"
    if n.replicate_configs is not None:
        text += ("\nWhere the search replicates chose different configurations, a size cell lists each "
                 "replicate's (r0 / r1 / ...); the scores pool every replicate's final runs.\n")
    return text + "<!-- /headline -->\n" + _other_metrics(n) + "\n" + failed_runs(s.runs)


def failed_runs(runs: pd.DataFrame) -> str:
    if "status" not in runs:
        return "Run status not recorded.\n"
    bad = runs[runs["status"] != "ok"]
    if not len(bad):
        return f"All {len(runs)} final runs finished (status ok).\n"
    rows = [[str(r["arch"]), str(r["seed"]), str(r.get("reason") or "—").replace("|", "/").splitlines()[0]]
            for _, r in bad.iterrows()]
    return (f"**Failed runs ({len(bad)} of {len(runs)}):**\n\n"
            + md_table(["architecture", "seed", "reason"], rows) + "\n")


def section_figures(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    text = f"{heading('figures')}\n\n"
    text += (f"{heading('accuracy')}\n\nAccuracy on iid_unseen and on ood, and distance error on iid_unseen. Bars: "
             "mean over seeds; points: each seed; whiskers: the 95 % interval of the headline (clipped to 0–100 % "
             "for accuracies; none with fewer than 3 seeds); lines: baselines and the ceiling (mean over "
             "seeds).\n\n" + figure(drawn, "accuracy.png", "accuracy and distance error"))
    lag_note = ("Only the predictable positions of a `lag_k` sequence (from the k-th on) are scored: its first k "
                "values are independent of everything before them (`Family.scored`); accuracy against k is in "
                f"{link('memory')}.\n\n" if n.lag is not None else "")
    text += (f"{heading('families')}\n\nAccuracy as a percentage of the ceiling per family, on iid_unseen and on "
             f"ood (as in {link('ceiling')}; {FLAG}: below a trivial baseline).\n\n" + lag_note
             + figure(drawn, "families.png", "accuracy / ceiling per family"))
    text += (f"{heading('curves')}\n\nAccuracy and loss on the fixed validation set (the one model selection "
             "and early stopping read) against training tokens, mean over seeds (thick) and each seed (thin); the "
             "dashed black line is the ceiling on the same set (mean over seeds), the dotted one 90 % of it.\n\n"
             + figure(drawn, "learning_curves.png", "learning curves"))
    text += (f"{heading('memory')}\n\nHow strongly the prediction of x_T (the value after the last input) depends "
             "on the input x_(T−k), k steps back (k = 1: the last input; a lag-k copy reads exactly k back), "
             "from `bench.analysis.memory_decay` on the final models: `gradient` "
             "is ‖∂logits/∂embedding‖ (the StableSSM paper's memory function), `perturbation` the "
             "total-variation distance of the prediction when that token is replaced; mean over 256 uniform "
             "random-token sequences (the same for every architecture) and seeds, log scale.\n\n"
             + figure(drawn, "memory_decay.png", "memory-decay curves"))
    if "lag_accuracy.png" in drawn:
        text += ("Accuracy against lag k on the `lag_k` families, counting only the predictable positions "
                 "(position p ≥ k − 1 predicts x_{p+1} = x_{p+1−k}), weighted by predictions, on iid_unseen.\n\n"
                 + figure(drawn, "lag_accuracy.png", "accuracy against lag k"))
    text += (f"{heading('size')}\n\nLeft: final runs' iid_unseen test accuracy against parameters with the "
             f"Pareto front ({' → '.join(n.front) or '—'}), the front read from final test accuracy only. Right, "
             "in its own panel: the search trials' validation accuracy at the search budget.\n\n"
             + figure(drawn, "pareto.png", "accuracy against parameters"))
    text += (f"{heading('importance')}\n\nOptuna PED-ANOVA importances of each architecture's search, only where "
             f"it completed at least {MIN_TRIALS} trials (fewer leave the top quantile one or two trials); each "
             "panel's title gives its count.\n\n" + figure(drawn, "importance.png", "hyperparameter importances"))
    if n.importances and n.importance_notes:
        text += "Not shown: " + "; ".join(n.importance_notes) + ".\n\n"
    return text + section_cka(s, n, drawn)


def section_cka(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    text = (f"{heading('cka')}\n\nLinear CKA (centered kernel alignment, Kornblith et al. 2019) "
            "compares two models' hidden states on the same inputs: 1 means the same representation up to a "
            "rotation and a scale, and unrelated features score near √(d·d′)/n rather than 0")
    floor = n.cka_floor or {}
    if "rows" in floor:
        d, rows = int(n.configs["d_model"].max()), int(s.cka["n"].max())
        text += f" (≈ {floor['rows']:.3f} here, d = {d}, n = {rows:,} rows)"
        if "embedding" in floor:
            text += (f"; at the embedding, whose {rows:,} rows are lookups of {floor['distinct_tokens']:.0f} "
                     f"distinct tokens, two independent random embedding tables already score "
                     f"{floor['embedding']:.2f}")
    text += (". From `bench.analysis.cka` on the final models: the output of the embedding (layer 0, `emb`) and "
             "of every block, at every position of the same test sequences (one row per sequence and position). "
             "The matrix compares architectures on the same seed (same training stream), at the last block; its "
             "diagonal is one architecture on two different seeds, the reference for how similar two trainings of "
             "one architecture are. The layer × layer grid compares architectures on different seeds where there "
             "are several: every architecture of a seed starts from the same random stream, so on one seed the "
             "embeddings look alike from initialisation alone. Mean over seeds (or seed pairs).\n\n")
    return (text + figure(drawn, "cka.png", "last-block linear CKA, architecture × architecture")
            + figure(drawn, "cka_layers.png", "layer × layer linear CKA per pair of architectures"))


def _mutual_rows(n: Numbers) -> list[list[str]]:
    rows = []
    for r in n.mutual.itertuples():
        rows.append([r.arch, fmt_ci(r.alone, r.alone_half, r.seeds, 100), fmt_ci(r.joint, r.joint_half, r.seeds, 100),
                     f"{100 * r.gain:+.2f} ± {100 * r.half:.2f}" if np.isfinite(r.half) else f"{100 * r.gain:+.2f}",
                     f"{r.wins}/{r.cells - r.wins - r.losses}/{r.losses}", f"{r.p_holm:.3g}",
                     f"**{mutual_verdict(r)}**" if r.significant else mutual_verdict(r)])
    return rows


def _agreement(s: Stored) -> str:
    """Did the pull act? The mean KL between architectures' predictions, alone against jointly."""
    if s.mutual_kl is None or not len(s.mutual_kl):
        return ""
    kl = s.mutual_kl.groupby("training")["kl"].mean()
    if not {"alone", "jointly"} <= set(kl.index):
        return ""
    return (f"\nDid the pull act? The mean KL divergence between two architectures' predictions on the "
            f"test probes (same seed, every position) is {kl['alone']:.3f} nats trained alone and "
            f"{kl['jointly']:.3f} jointly ({kl['jointly'] / kl['alone']:.0%} of it).\n")


def section_mutual(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    """Does training the architectures together help, and whom?"""
    head = (f"{heading('mutual')}\n\nAfter the final stage, each seed's architectures "
            f"({and_list(sorted(set(s.mutual_runs['arch'])) if s.mutual_runs is not None else [])}) were trained "
            f"again, jointly on the same batches from the same initialisation, each with its own loss plus "
            f"{s.setting('mutual.weight')} × the mean KL divergence from the others' predictions (deep mutual "
            f"learning, `bench.mutual`), at the same budget. Each joint run is paired with the same architecture's "
            f"independent final run of the same seed.\n")
    if n.mutual is None or not len(n.mutual):
        return head + "\nNo mutual-stage results stored.\n"
    table = md_table(["architecture", "alone: accuracy (%)", "jointly (%)", "gain (pp, 95 % CI over seeds)",
                      "cells better/tied/worse", "p (hierarchical, Holm)", "verdict"], _mutual_rows(n))
    failed = s.mutual_runs[s.mutual_runs["status"] != "ok"] if s.mutual_runs is not None else pd.DataFrame()
    note = (f"\nFailed joint runs: {', '.join(f'{r.arch} seed {r.seed} ({r.reason})' for r in failed.itertuples())}.\n"
            if len(failed) else "")
    return (head + "\n" + table + "\n\nThe gain's interval is over seeds (Student-t); the verdict tests the same "
            "difference with the hierarchical paired test (per-sequence scores where stored, else (seed, family) "
            "cells with the seed as unit), Holm-corrected over architectures. "
            "`mutual.weight=0` reproduces the independent runs exactly (tested), so any gain is the KL term's.\n"
            + _agreement(s) + note + "\n" + figure(drawn, "mutual.png", "Gain in iid_unseen accuracy from training "
                                                   "jointly, per architecture (mean over seeds, 95 % interval)."))


def has_mutual(s: Stored) -> bool:
    return s.setting("mutual.weight") is not None or s.mutual is not None


def render(s: Stored, n: Numbers, drawn: dict[str, str]) -> str:
    """The whole README: a title line with the best architecture and links to the sections, then each section."""
    keys = ["run", "headline", "ceiling", "pairs", "oeis", "figures", "findings",
            *(["mutual"] if has_mutual(s) else [])]
    # no build date: the same stored tables give the same bytes (the study's own date is in section 1)
    intro = (f"# Report: study `{s.name}`\n\n{first_line(s, n)}Generated by `{rebuild_command(s)}` "
             f"from the stored results in `{s.out_dir}` (nothing retrained). "
             "Sections: " + " · ".join(link(k, title(k).lower()) for k in keys) + ".\n")
    sections = [intro, section_run(s), section_headline(s, n), section_ceiling(s, n), section_pairs(n),
                section_oeis(s, n), section_figures(s, n, drawn), findings(s, n)]
    if has_mutual(s):
        sections.append(section_mutual(s, n, drawn))
    return "\n".join(sections)
