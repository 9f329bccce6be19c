"""The report's figures (matplotlib, Agg; seaborn for the statistical plots): one function per figure,
each drawing from tidy tables that `bench.report.tables` computes and writing one PNG.

Statistical plots show every seed as a point beside the mean, so a reader sees the spread the interval
summarises (and, with fewer than 3 seeds, the points instead of an interval); intervals of accuracies
are clipped to [0, 100 %], which no score can leave. A PNG carries no software stamp or date and every
order is fixed (ties by name), so the same stored tables give the same bytes (`build_report` twice).

Every architecture keeps one colour in every figure of every report (`arch_color`): each registered
mixer has a fixed place in `ARCH_ORDER` (a test checks that every one has), so no colour ever moves;
a name not listed there (a mixer being added) takes a colour from the slots after them, chosen by a
stable hash of its name. Baselines are drawn in black and greys with their own line styles.
"""

from __future__ import annotations

import textwrap
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator  # noqa: E402

from bench.report.load import is_baseline  # noqa: E402

# fixed colour slots: a new mixer is appended, so no existing colour moves
ARCH_ORDER = ("liquid_s4", "lstm", "mamba", "s4d", "sgconv", "stable_ssm", "transformer", "ntk_attention")
PALETTE = ("#9467bd", "#ff7f0e", "#2ca02c", "#d62728", "#e377c2", "#8c564b", "#1f77b4",  # tab10 without grey
           "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd")
BASELINE_STYLE = {  # name -> (label, colour, line style)
    "baseline_uniform": ("uniform guess", "black", ":"),
    "baseline_last_value": ("last value", "#555555", "--"),
    "baseline_extrapolate": ("extrapolate", "#999999", "-."),
    "baseline_lookup": ("lookup (memoriser)", "#777777", (0, (5, 1, 1, 1, 1, 1))),
    "ceiling": ("ceiling (Bayes)", "black", "--"),
}
DPI = 120


def arch_color(arch: str) -> str:
    """The architecture's colour, the same in every figure and report: its ARCH_ORDER slot, else one of
    the free slots picked by a hash of the name that does not change between runs (crc32)."""
    if arch in ARCH_ORDER:
        return PALETTE[ARCH_ORDER.index(arch)]
    free = len(PALETTE) - len(ARCH_ORDER)
    return PALETTE[len(ARCH_ORDER) + zlib.crc32(arch.encode()) % free]


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write the PNG without the 'Software' stamp (matplotlib's version), so its bytes depend on the
    data only."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _baseline_lines(ax: plt.Axes, values: dict[str, float], vertical: bool) -> None:
    for name, value in values.items():
        if name not in BASELINE_STYLE or value is None or not np.isfinite(value):
            continue
        label, color, style = BASELINE_STYLE[name]
        line = ax.axvline if vertical else ax.axhline
        line(value, color=color, linestyle=style, linewidth=1.2,
             label=label if name == "ceiling" else f"baseline: {label}")


def clipped(mean: pd.Series, half: pd.Series, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Asymmetric error-bar lengths (2 × n) of mean ± half clipped to [low, high]: an accuracy interval
    never reaches past 0 or 100 %. NaN half (no interval): zero-length bars."""
    half = half.fillna(0)
    return np.vstack([mean - (mean - half).clip(low, high), (mean + half).clip(low, high) - mean])


def _spread(points: pd.DataFrame, order: list[str], scale: float) -> pd.DataFrame:
    """Seed points on a categorical axis: row = the architecture's place in `order` plus an offset
    spread evenly over ±0.2 by rank of value (a fixed strip, not a random jitter, so the PNG's bytes
    do not change between builds); shown = value · scale."""
    p = points.assign(shown=points["value"] * scale, place=points["arch"].map({a: i for i, a in enumerate(order)}))
    p = p.sort_values(["place", "shown"], kind="stable").reset_index(drop=True)
    rank, size = p.groupby("place").cumcount(), p.groupby("place")["shown"].transform("size")
    return p.assign(row=p["place"] + np.where(size > 1, 0.4 * rank / (size - 1).clip(lower=1) - 0.2, 0.0))


def overall(panels: list[tuple[str, str, float, pd.DataFrame]], order: list[str], path: Path,
            seeds: list[pd.DataFrame] | None = None) -> Path:
    """(a) One panel per (title, axis label, scale, table): each architecture's mean as a bar with its 95 %
    interval (clipped to [0, 100 %] for accuracies, at 0 for errors), each seed's score as a point on it
    (`seeds[i]`: arch, value, for panel i), the baselines and the ceiling (arch baseline_* / ceiling in
    the same table) as lines. A table: arch, mean, half (NaN: no interval, e.g. fewer than 3 seeds)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.45 * len(order) + 1.8), sharey=True,
                             squeeze=False)
    for i, (ax, (name, label, scale, table)) in enumerate(zip(axes[0], panels, strict=True)):
        rows = table.set_index("arch").reindex(order).reset_index()
        high = 1.0 if scale == 100.0 else np.inf  # accuracies are fractions; errors have no upper end
        sns.barplot(data=rows.assign(shown=rows["mean"] * scale), x="shown", y="arch", hue="arch", order=order,
                    hue_order=order, palette=[arch_color(a) for a in order], errorbar=None, legend=False,
                    alpha=0.55, width=0.7, ax=ax)
        ax.errorbar(rows["mean"] * scale, np.arange(len(order)), fmt="none", ecolor="black", elinewidth=1, capsize=3,
                    xerr=clipped(rows["mean"], rows["half"], 0.0, high) * scale)
        points = seeds[i] if seeds is not None else pd.DataFrame(columns=["arch", "value"])
        points = points[points["arch"].isin(order)]
        if len(points):
            sns.scatterplot(data=_spread(points, order, scale), x="shown", y="row", hue="arch", hue_order=order,
                            palette=[arch_color(a) for a in order], legend=False, s=22, edgecolor="black",
                            linewidth=0.6, zorder=3, ax=ax)
        _baseline_lines(ax, (table.set_index("arch")["mean"] * scale).to_dict(), vertical=True)
        ax.set_xlabel(label)
        ax.set_ylabel("architecture" if i == 0 else "")
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(handles), 5), frameon=False,
                   bbox_to_anchor=(0.5, -0.06))
    fig.suptitle("Scores on unseen sequences (bars: mean over seeds; points: each seed and replicate; "
                 "whiskers: 95 % interval, none with fewer than 3 seeds)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)


def family_heatmap(matrices: dict[str, pd.DataFrame], flags: dict[str, set], path: Path) -> Path:
    """(b) Accuracy / ceiling (%) per architecture (rows, baselines last) and family (columns), one
    panel per split, annotated; a cell in `flags[split]` ((arch, family) below a trivial baseline)
    carries a down arrow."""
    first = next(iter(matrices.values()))
    fig, axes = plt.subplots(1, len(matrices), figsize=((1.0 * first.shape[1] + 2.5) * len(matrices) + 1,
                                                        0.5 * first.shape[0] + 2.2), squeeze=False)
    image = None
    for ax, (split, matrix) in zip(axes[0], matrices.items(), strict=True):
        values = matrix.to_numpy(dtype=float) * 100
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, arch in enumerate(matrix.index):
            for j, family in enumerate(matrix.columns):
                if np.isfinite(values[i, j]):
                    mark = " ↓" if (arch, family) in flags.get(split, set()) else ""
                    ax.text(j, i, f"{values[i, j]:.0f}{mark}", ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] < 60 else "black")
        ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=40, ha="right")
        ax.set_yticks(range(matrix.shape[0]), [str(r).replace("baseline_", "baseline: ") for r in matrix.index])
        for tick, name in zip(ax.get_yticklabels(), matrix.index, strict=True):
            tick.set_color("#444444" if is_baseline(str(name)) else arch_color(name))
        if ax is not axes[0][0]:  # the rows are the same architectures: named once, on the left
            ax.tick_params(labelleft=False)
        ax.set_xlabel("family")
        ax.set_title(split, fontsize=11)
    axes[0][0].set_ylabel("architecture")
    fig.suptitle("Accuracy / ceiling (%) per family, mean over seeds (↓: below a trivial baseline)", fontsize=11)
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy / ceiling (%)", shrink=0.8)
    return _save(fig, path)


def learning_curves(history: pd.DataFrame, order: list[str], path: Path, ceiling: float | None = None) -> Path:
    """(c) Accuracy and cross-entropy on the fixed validation set against tokens seen: the mean over
    seeds as a thick line, every seed as a thin one (no band: with one or two seeds a min–max band
    says nothing); `ceiling` (the Bayes predictor on the same set, mean over seeds) as a dashed line
    and 90 % of it dotted."""
    loss = "val_ce" if (history.metric == "val_ce").any() else "val_loss"
    panels = [("val_accuracy", "validation accuracy (%)", 100.0),
              (loss, "validation cross-entropy (nats)" if loss == "val_ce" else "validation loss (nats)", 1.0)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, label, scale) in zip(axes, panels, strict=True):
        for arch in order:
            h = history[(history.arch == arch) & (history.metric == metric)]
            if h.empty:
                continue
            h = h.assign(shown=h["value"] * scale, run=h["seed"].astype(str) + (
                "-" + h["replicate"].astype(str) if "replicate" in h else ""))
            n_runs = h["run"].nunique()
            if n_runs > 1:
                sns.lineplot(data=h, x="tokens", y="shown", units="run", estimator=None, color=arch_color(arch),
                             alpha=0.3, linewidth=0.7, ax=ax, legend=False)
            mean = h.groupby("tokens")["shown"].mean()
            n_seeds = h["seed"].nunique()
            runs = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}" + (f", {n_runs} runs" if n_runs > n_seeds else "")
            ax.plot(mean.index, mean.to_numpy(), color=arch_color(arch), linewidth=1.8, label=f"{arch} ({runs})")
        ax.set_xlabel("training tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if ceiling is not None and np.isfinite(ceiling):
        axes[0].axhline(ceiling * 100, color="black", linestyle="--", linewidth=1.2, label="ceiling (Bayes)")
        axes[0].axhline(0.9 * ceiling * 100, color="black", linestyle=":", linewidth=1, label="90 % of the ceiling")
        axes[0].legend(fontsize=8, loc="lower right")
    axes[0].set_title("Validation accuracy (thick: mean over seeds, thin: each run)")
    axes[1].set_title("Validation loss (thick: mean over seeds, thin: each run)")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def memory_decay(curves: pd.DataFrame, order: list[str], path: Path) -> Path:
    """(d) Memory-decay curves (`bench.analysis.memory_decay`; arch, variant, k, value, mean over seeds):
    value against steps back k, log y, one panel per variant; non-positive values cannot be drawn on a
    log axis and are left out."""
    variants = ([v for v in ("gradient", "perturbation") if (curves.variant == v).any()]
                or sorted(curves.variant.unique()))
    titles = {"gradient": "Gradient: ‖∂ prediction of x_T / ∂ embedding of x_(T−k)‖",
              "perturbation": "Perturbation: change of the prediction of x_T\nwhen x_(T−k) is replaced"}
    ylabels = {"gradient": "gradient norm (Frobenius, log scale)",
               "perturbation": "total-variation distance (0–1, log scale)"}
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.5), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        for arch in order:
            c = curves[(curves.arch == arch) & (curves.variant == variant) & (curves.value > 0)].sort_values("k")
            if not c.empty:
                ax.plot(c["k"], c["value"], marker="o" if len(c) <= 20 else None, markersize=3,
                        color=arch_color(arch), label=arch)
        ax.set_yscale("log")
        if curves.k.max() > 16:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(max(1, curves.k.min()), curves.k.max())
        ax.set_xlabel("k: steps back from the predicted value (1 = the last input)")
        ax.set_ylabel(ylabels.get(variant, f"{variant} (log scale)"))
        ax.set_title(titles.get(variant, variant), fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Memory decay: dependence of the last prediction on the input k steps back "
                 "(mean over random-token inputs and seeds)")
    fig.tight_layout()
    return _save(fig, path)


def lag_accuracy(lag: pd.DataFrame, order: list[str], path: Path) -> Path:
    """(d) Accuracy against lag k on the lag_k families (predictable positions only): arch, k, mean,
    half; baselines (arch baseline_*) dashed in greys."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arch in [*order, *BASELINE_STYLE]:
        c = lag[lag.arch == arch].sort_values("k")
        if c.empty:
            continue
        if arch in BASELINE_STYLE:
            label, color, style = BASELINE_STYLE[arch]
            ax.plot(c["k"], c["mean"] * 100, color=color, linestyle=style, label=f"baseline: {label}")
            continue
        ax.plot(c["k"], c["mean"] * 100, color=arch_color(arch), marker="o", markersize=4, label=arch)
        if c["half"].notna().any():  # the interval as a band, clipped to what accuracy can be
            lo, hi = (c["mean"] - c["half"]).clip(0, 1), (c["mean"] + c["half"]).clip(0, 1)
            ax.fill_between(c["k"], lo * 100, hi * 100, color=arch_color(arch), alpha=0.12)
    ax.set_xscale("log", base=2)
    ks = sorted(lag.k.unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(-2, 102)
    ax.set_xlabel("lag k (x_t = x_{t−k})")
    ax.set_ylabel("iid_unseen accuracy on predictable positions (%)")
    ax.set_title("Recall at lag k (targets t ≥ k; band: 95 % interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def pareto(points: pd.DataFrame, front: list[str], trials: pd.DataFrame, path: Path) -> Path:
    """(e) Left: final runs' test (iid_unseen) accuracy against parameter count (arch, num_params, mean,
    half; interval clipped to [0, 100 %]) and the Pareto front through `front`. Right, in its own panel
    because it is another quantity at another budget: search trials' validation accuracy (arch,
    num_params, val_accuracy) against their size."""
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    for _, p in points.sort_values("arch").iterrows():
        ax.errorbar(p["num_params"], p["mean"] * 100, color=arch_color(p["arch"]), marker="o", markersize=8,
                    yerr=clipped(pd.Series([p["mean"]]), pd.Series([p["half"]])) * 100, capsize=3, label=p["arch"])
    f = points.set_index("arch").loc[front].sort_values("num_params")
    ax.step(f["num_params"], f["mean"] * 100, where="post", color="black", linewidth=1, alpha=0.6, label="Pareto front")
    ax.set_ylabel("final test accuracy, iid_unseen (%)")
    ax.set_title("Final runs: test accuracy (mean ± 95 %) against size")
    if len(trials):
        t = trials.assign(shown=trials["val_accuracy"] * 100).sort_values(["arch", "num_params", "shown"])
        sns.scatterplot(data=t, x="num_params", y="shown", hue="arch", palette={a: arch_color(a) for a in
                        t["arch"].unique()}, marker="X", alpha=0.6, s=30, legend=False, ax=side)
    else:
        side.text(0.5, 0.5, "no search trials", ha="center", va="center", transform=side.transAxes)
    side.set_ylabel("search validation accuracy (%)")
    side.set_title(f"Search trials ({len(trials)}, colours as on the left): validation accuracy at the search budget",
                   fontsize=10)
    for a in (ax, side):
        a.set_xscale("log")
        a.xaxis.set_major_formatter(EngFormatter(sep=""))
        a.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))  # 20k, 50k: apart on any decade
        a.xaxis.set_minor_formatter(EngFormatter(sep=""))
        a.tick_params(axis="x", which="minor", labelsize=8)
        a.set_xlabel("parameters (log scale)")
        a.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def importances(values: dict[str, dict[str, float]], path: Path, counts: dict[str, int] | None = None,
                replicate_note: str = "") -> Path:
    """(f) Optuna (PED-ANOVA) hyperparameter importances per architecture, one panel each, titled with
    the completed search trials they rest on (`counts`); bars in order of importance, ties by name."""
    archs = list(values)
    cols = min(4, len(archs))
    rows = -(-len(archs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 2.8 * rows), squeeze=False)
    for ax, arch in zip(axes.flat, archs, strict=False):
        imp = sorted(values[arch].items(), key=lambda kv: (-kv[1], kv[0]))[::-1]  # drawn upwards: largest on top
        ax.barh([k for k, _ in imp], [v for _, v in imp], color=arch_color(arch))
        ax.set_xlim(0, 1)
        count = (counts or {}).get(arch)
        ax.set_title(f"{arch} ({count} trials)" if count is not None else arch, color=arch_color(arch), fontsize=10)
        ax.set_xlabel("importance (sums to 1)")
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(archs):]:
        ax.axis("off")
    fig.suptitle("Hyperparameter importance in the search (Optuna PED-ANOVA on validation loss"
                 f"{replicate_note}; completed trials in brackets)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _cka_ticks(ax: plt.Axes, names: list[str], axis: str) -> None:
    """Architecture names as coloured tick labels on `axis` ('x' or 'y')."""
    if axis == "x":
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
        labels = ax.get_xticklabels()
    else:
        ax.set_yticks(range(len(names)), names)
        labels = ax.get_yticklabels()
    for tick, name in zip(labels, names, strict=True):
        tick.set_color(arch_color(name))


def cka_matrix(matrix: pd.DataFrame, path: Path, n_rows: int | None = None,
               diagonal: str = "one architecture, two seeds") -> Path:
    """(g) Linear CKA between the last blocks' outputs, architecture × architecture (symmetric),
    mean over seeds, annotated; the diagonal (outlined) is what `diagonal` says: the same architecture
    on two different seeds, the reference for what 'similar' means, where there are several seeds.
    `matrix`: index and columns are architectures."""
    values = matrix.to_numpy(dtype=float)
    names = [str(a) for a in matrix.index]
    size = 0.75 * len(names) + 2.5
    # constrained layout keeps the (figure-level) title above the colour bar instead of running into it
    fig, ax = plt.subplots(figsize=(size + 1.6, size + 0.6), layout="constrained")
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = f"{values[i, j]:.2f}" if np.isfinite(values[i, j]) else "—"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if not np.isfinite(values[i, j]) or values[i, j] < 0.6 else "black",
                    fontweight="bold" if i == j else "normal")
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.5))
    _cka_ticks(ax, names, "x")
    _cka_ticks(ax, names, "y")
    ax.set_xlabel("architecture")
    ax.set_ylabel("architecture")
    rows = f", n = {n_rows:,} positions" if n_rows else ""
    width = int(fig.get_figwidth() * 12)  # characters of a 10 pt line across the figure
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in (
        f"Linear CKA of the last block's outputs (mean over seeds{rows})",
        f"off-diagonal: two architectures, same seed · diagonal: {diagonal}")), fontsize=10)
    fig.colorbar(image, ax=ax, label="linear CKA (1 = same representation\nup to rotation and scale)", shrink=0.8)
    return _save(fig, path)


def cka_layers(means: pd.DataFrame, order: list[str], path: Path,
               pairs: str = "two architectures on different seeds off the diagonal, one architecture on two "
                            "seeds on it (framed)") -> Path:
    """(g) Layer × layer linear CKA for every pair of architectures, as the lower triangle of a
    scatter-plot-matrix grid: the panel in row A, column B has B's layers on x and A's on y
    (0 = embedding output, i = block i; origin bottom left), so k architectures take k(k+1)/2
    small panels (36 for 8) whose names are given once per row and column instead of 28 titles,
    on one shared colour scale; `pairs` says which model pairs the panels average (the caption).
    `means`: arch_a, layer_a, arch_b, layer_b, cka (mean over seeds), kind."""
    archs = [a for a in order if a in set(means.arch_a)]
    k = len(archs)
    panel = 1.45 if k > 3 else 2.2
    fig, axes = plt.subplots(k, k, figsize=(panel * k + 1.5, panel * k + 0.8), squeeze=False)
    image = None
    for i, a in enumerate(archs):
        for j, b in enumerate(archs):
            ax = axes[i][j]
            if j > i:
                ax.axis("off")
                continue
            m = means[(means.arch_a == a) & (means.arch_b == b)].pivot_table(
                index="layer_a", columns="layer_b", values="cka", aggfunc="mean").sort_index().sort_index(axis=1)
            if m.empty:
                ax.axis("off")
                continue
            values = m.to_numpy(dtype=float)
            image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, origin="lower", aspect="auto")
            if values.size <= 16:
                for (y, x), v in np.ndenumerate(values):
                    if np.isfinite(v):
                        ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                                color="white" if v < 0.6 else "black")
            layer = lambda idx: "emb" if idx == 0 else str(idx)  # noqa: E731
            ax.set_xticks(range(len(m.columns)), [layer(c) for c in m.columns], fontsize=7)
            ax.set_yticks(range(len(m.index)), [layer(r) for r in m.index], fontsize=7)
            # a row shares A's layers and a column B's: label them once, on the left and at the bottom
            ax.tick_params(labelleft=j == 0, labelbottom=i == k - 1, length=2)
            if i == j:
                for spine in ax.spines.values():
                    spine.set_edgecolor(arch_color(a))
                    spine.set_linewidth(2)
            if j == 0:
                ax.set_ylabel(a, color=arch_color(a), fontsize=9)
            if i == k - 1:
                ax.set_xlabel(b, color=arch_color(b), fontsize=9)
    width = int(fig.get_figwidth() * 13)  # characters of a 10 pt line across the figure
    title = "\n".join(textwrap.fill(line, width) for line in (
        "Layer × layer linear CKA between architectures (panel row A, column B: A's layers up, B's across; "
        "emb = embedding)", f"panels: {pairs}; mean over seed pairs"))
    fig.suptitle(title, fontsize=10)
    top = 1 - (0.22 * (title.count("\n") + 1) + 0.3) / fig.get_figheight()  # room for the title's lines
    fig.subplots_adjust(left=0.1, right=0.86, bottom=0.08, top=top, wspace=0.08, hspace=0.08)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, location="right", label="linear CKA (mean over seeds)")
    return _save(fig, path)


def mutual_gain(table: pd.DataFrame, order: list[str], path: Path) -> Path:
    """Gain in test accuracy from mutual learning per architecture: mean over seeds of joint − alone
    (same seed), 95 % Student-t interval; significant gains (Holm-corrected cell test) marked."""
    rows = table.set_index("arch").reindex(order)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(order) + 1.6))
    y = np.arange(len(order))[::-1]
    ax.barh(y, rows["gain"].to_numpy() * 100, xerr=rows["half"].fillna(0).to_numpy() * 100, height=0.6,
            color=[arch_color(a) for a in order], error_kw={"capsize": 3, "elinewidth": 1})
    for yi, (_, r) in zip(y, rows.iterrows(), strict=True):
        if r["significant"]:
            ax.annotate("*", (r["gain"] * 100, yi), xytext=(0, 4), textcoords="offset points", ha="center")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, order)
    ax.set_xlabel("iid_unseen accuracy jointly − alone (pp)")
    ax.set_title("Mutual learning: gain per architecture (* significant, Holm)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
