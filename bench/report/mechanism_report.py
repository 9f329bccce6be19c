"""`build_mechanism_report`: the README and figure of a mechanism study (selective_copy, mqar,
recall), from its width variants' stored tables (`bench.report.mechanisms`). `bench.run` writes it
when such a study ends; `python -m bench.report study=<name>` rebuilds it without retraining."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report.figures import ARCH_ORDER, arch_color, clipped  # noqa: E402
from bench.report.load import ReportInputError, with_others  # noqa: E402
from bench.report.mechanisms import (  # noqa: E402
    FLOOR,
    POOLED,
    SOLVED,
    Check,
    Widths,
    accuracy_table,
    check_claims,
    claims_for,
    load_widths,
)
from bench.report.stats import RESAMPLES  # noqa: E402
from bench.report.tables import MARGIN  # noqa: E402
from bench.util import atomic_write  # noqa: E402

FIGURE = "accuracy_vs_state.png"


def _order(archs: pd.Series) -> list[str]:
    """The architectures in the reports' fixed order (their colours' slots), then any other."""
    return with_others([a for a in ARCH_ORDER if a in set(archs)], archs)


def figure(acc: pd.DataFrame, runs: pd.DataFrame, families: list[str], path: Path) -> Path:
    """Accuracy against state size (log scale), one line per architecture through its widths, one
    panel per family and one pooled; bars: the hierarchical 95 % interval clipped to 0-100 %. No
    software stamp in the PNG, so a rebuild writes the same bytes."""
    panels = [*families, POOLED]
    data = acc.merge(runs[["variant", "arch", "state_size"]], on=["variant", "arch"])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), sharey=True, squeeze=False)
    for ax, fam in zip(axes[0], panels, strict=True):
        part = data[data["family"] == fam]
        for arch in _order(part["arch"]):
            g = part[part["arch"] == arch].sort_values("state_size")
            ax.errorbar(g["state_size"], 100 * g["mean"], yerr=100 * clipped(g["mean"], g["half"]), marker="o",
                        ms=3, capsize=2, lw=1.2, color=arch_color(arch), label=arch)
        ax.set_xscale("log", base=2)
        ax.set_title(fam if fam != POOLED else "pooled", fontsize=9)
        ax.set_xlabel("state size (floats)")
        ax.axhline(100 * SOLVED, color="grey", lw=0.6, ls=":")
    axes[0][0].set_ylabel("accuracy on the answers, iid_unseen (%)")
    axes[0][0].set_ylim(0, 100)
    axes[0][-1].legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _cell(r: pd.Series) -> str:
    """'61.6 ± 1.5'; where the interval crosses 0 or 100 %, its clipped ends: '1.7 [0.0, 6.2]'."""
    if not math.isfinite(r["half"]):
        return f"{100 * r['mean']:.1f}"
    if r["lo"] < 0 or r["hi"] > 1:
        return f"{100 * r['mean']:.1f} [{100 * max(r['lo'], 0):.1f}, {100 * min(r['hi'], 1):.1f}]"
    return f"{100 * r['mean']:.1f} ± {100 * r['half']:.1f}"


def width_table(archs: pd.Series, order: list[str], cell: Callable[[str, str], str]) -> str:
    """Rows: architectures; columns: widths; cell(arch, width) fills each."""
    lines = ["| arch | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    lines += [f"| {arch} | " + " | ".join(cell(arch, v) for v in order) + " |" for arch in _order(archs)]
    return "\n".join(lines)


def accuracy_markdown(acc: pd.DataFrame, order: list[str], fam: str) -> str:
    """Accuracy ± half-width (%) on one family, per architecture and width."""
    part = acc[acc["family"] == fam].set_index(["arch", "variant"])
    return width_table(part.index.get_level_values("arch"), order,
                       lambda arch, v: _cell(part.loc[(arch, v)]) if (arch, v) in part.index else "–")


def setup_markdown(w: Widths) -> str:
    """Per architecture and width: its state size and the learning rate its search chose, marked
    where it sits at an end of the searched grid (the optimum may lie beyond it)."""
    runs = w.runs.set_index(["arch", "variant"])

    def cell(arch: str, v: str) -> str:
        if (arch, v) not in runs.index:
            return "–"
        row = runs.loc[(arch, v)]
        lr, grid = float(row["lr"]), [float(x) for x in w.configs[v]["search"]["grid"]["lr"]]
        edge = " (grid top)" if lr >= max(grid) else " (grid bottom)" if lr <= min(grid) else ""
        return f"state {int(row['state_size'])}, lr {lr:g}{edge}"

    return width_table(w.runs["arch"], w.order, cell)


def provenance_line(w: Widths) -> str:
    """The command and, per width, the commit and date of its run (meta.yaml)."""
    commands = sorted({str(m.get("command")) for m in w.meta.values() if m.get("command")})
    runs = "; ".join(f"{v}: commit `{w.meta[v].get('commit', '?')}`, {w.meta[v].get('date', '?')}"
                     for v in w.order if w.meta.get(v))
    machine = next((m["machine"] for m in w.meta.values() if m.get("machine")), None)
    if not commands:
        return "No meta.yaml stored: the command and commit are unknown."
    return (f"Run by `{'`, `'.join(commands)}` ({runs}" + (f"; {machine}" if machine else "") + ").")


def budget_line(w: Widths) -> str:
    """The budget of the narrowest width (every width shares it but d_model)."""
    c = w.configs[w.order[0]]
    d, t, s = c["data"], c["train"], c["search"]
    lrs = ", ".join(f"{float(x):g}" for x in s["grid"]["lr"])
    return (f"Budget per architecture and width: learning rate chosen by the lowest validation loss over a grid "
            f"({lrs}; {s['steps']} steps each, seed {s['seed']}), then {t['steps']} steps x {t['batch_size']} "
            f"sequences of length {d['length']} on seeds {', '.join(map(str, c['seeds']))}; "
            f"{d['test_per_family']} test sequences per family and split; loss: cross-entropy"
            + (f" with distance weight {t['alpha']:g}" if t["alpha"] else "") + " on the scored answers only.")


def checks_markdown(checks: list[Check]) -> str:
    lines = ["| claim | published | this run (iid_unseen, 95 % interval) | verdict |", "|---|---|---|---|"]
    for c in checks:
        kind = "hypothesis from " if c.claim.hypothesis else ""
        where = {"all": "every width", "widest": "widest width", "narrowest": "narrowest width"}[c.claim.where]
        lines.append(f"| {c.claim.text} ({where}) | {kind}{c.claim.source}: {c.claim.published} | "
                     f"{c.evidence} | **{c.verdict}** |")
    return "\n".join(lines)


def build_mechanism_report(study: str, variant_dirs: Mapping[str, Path], report_dir: Path | str,
                           variants: Mapping[str, list[str]] | None = None, margin: float = MARGIN,
                           long_study: str | None = None, resamples: int = RESAMPLES) -> Path:
    """Write `<report_dir>/README.md` and its figure; returns the README's path."""
    w: Widths = load_widths(variant_dirs)
    if w.scores.empty:
        raise ReportInputError(f"study {study}: the variants' predictions hold no iid_unseen scores")
    families = sorted(w.scores["family"].unique(), key=lambda f: (f.rsplit("_", 1)[0], int(f.rsplit("_", 1)[1])))
    acc = accuracy_table(w.scores, families, resamples)
    ood = accuracy_table(w.ood, families, resamples) if len(w.ood) else None
    checks = check_claims(claims_for(families), w, margin, resamples)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    figure(acc, w.runs, families, report_dir / FIGURE)
    described = "\n".join(f"- `{v}`: {', '.join(f'`{o}`' for o in (variants or {}).get(v, [])) or 'as the study'} "
                          f"(its tables, and its own report when the run wrote one, in `{Path(variant_dirs[v])}`)"
                          for v in w.order)
    per_family = "\n\n".join(f"**{f}**\n\n{accuracy_markdown(acc, w.order, f)}" for f in [*families, POOLED])
    verdicts = ("\n".join(f"- {c.claim.text}: **{c.verdict}**" for c in checks)
                or "- no published claim covers these families")
    long_line = (f"The larger-scale version is `python -m bench.run study={long_study}` (a GPU or many workers)."
                 if long_study else "")
    ood_part = (f"\n\nOn `ood` (the first value from the held-out band 240..255), pooled:\n\n"
                f"{accuracy_markdown(ood, w.order, POOLED)}" if ood is not None and len(ood) else "")
    text = f"""# Mechanism study: {study}

Accuracy on the scored answers of test sequences never drawn in training (`iid_unseen`; the exact
ceiling is 100 %), per family of the difficulty ladder and pooled, for every architecture at each
width. Intervals: 95 %, crossed seeds x test sequences (`bench/report/stats.py`); comparisons
paired on the same seeds and sequences, Holm-adjusted over the report's tests, equivalence margin
{100 * margin:g} pp.

## Literature check

{verdicts}

{checks_markdown(checks)}

Verdict rules (`bench/report/mechanisms.py`): *reproduced* needs the finding significant at every
width it is about; *not reproduced* means the opposite is significant (or the pair equivalent); else
*inconclusive at this budget*. A solved task is one whose interval's lower end reaches
{100 * SOLVED:g} %; two mixers both below {100 * FLOOR:g} % (chance is 0.8 %) are never read as
equivalent. Each claim pools its own families. Before reading a *not reproduced* or a mixer at
chance as the architecture's limit, check the budget: `python benchmarks/learning_budget.py --arch
<arch> --families <...>` trains it longer with the same pieces and prints its accuracy on the way.

## Accuracy against state size

Each line is one architecture through its widths (the recall-state plot of Based, Arora et al.
2024; Zoology's Figure 2 puts d_model on x); x is its mixers' state (floats carried from one step
to the next at the study's length, `state_size`: attention's and sgconv's grow with the length), y
the accuracy on the answers; the pooled panel pools the study's families.

![accuracy against state size]({FIGURE})

## Accuracy per family and width (%, mean ± 95 % half-width, or the interval clipped to 0-100 %)

{per_family}{ood_part}

## Setup and cost

Widths (each its own study, same data, seeds, test sequences and budget):
{described}

{provenance_line(w)}

{budget_line(w)}

State size and the learning rate each width's search chose:

{setup_markdown(w)}

Training compute: {w.cost_s / 60:.0f} min summed over every search and final run (wall time per run;
divide by the workers for the study's training time; reports/perf/studies.md has the measured end-to-end time).
{long_line}
"""
    return atomic_write(report_dir / "README.md", lambda tmp: tmp.write_text(text))
