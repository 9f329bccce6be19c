"""The report's figures and search-space flag: byte-identical rebuilds from the same stored tables,
no overlapping or clipped text, seed points beside clipped intervals, final accuracy apart from the
search's validation accuracy, importances only from enough trials (labelled with the count), and the
chosen configurations on the boundary of the searched range."""

import subprocess
import sys
from itertools import combinations
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.text import Text
from omegaconf import OmegaConf
from test_report import STUDIES, make_study

from bench.report import build_report, figures
from bench.report.importance import MIN_TRIALS, completed_trials, param_importances, search_study
from bench.report.load import Stored
from bench.report.search_space import boundary_flags, boundary_line, fmt_knob, searched_ranges

ROOT = Path(__file__).resolve().parents[1]


def _bytes(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_two_builds_from_the_same_tables_are_byte_identical(tmp_path):
    cfg, out = make_study(tmp_path)
    first = build_report(out, tmp_path / "a").parent
    second = build_report(out, tmp_path / "b").parent
    assert sorted(_bytes(first)) == sorted(_bytes(second)) and "importance.png" in _bytes(first)
    for name, body in _bytes(first).items():
        assert body == _bytes(second)[name], name
    assert b"Software" not in _bytes(first)["accuracy.png"]  # no matplotlib version stamp in the PNG


@pytest.mark.slow
def test_builds_in_separate_processes_with_different_hash_seeds_are_byte_identical(tmp_path):
    """Set iteration order changes with PYTHONHASHSEED between processes: no file may depend on it."""
    cfg, out = make_study(tmp_path)
    code = "import sys; from bench.report import build_report; build_report(sys.argv[1], sys.argv[2])"
    for seed, target in (("1", "a"), ("2", "b")):
        subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / target)], check=True, cwd=ROOT,
                       env={"PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    a, b = _bytes(tmp_path / "a"), _bytes(tmp_path / "b")
    assert sorted(a) == sorted(b) and all(a[name] == b[name] for name in a)


def _texts(fig: plt.Figure) -> list[Text]:
    """Every text the figure draws: visible, non-empty, in a shown axes where it has one; tick labels
    only of the ticks inside the view (matplotlib keeps, but does not draw, labels of ticks beyond it)."""
    ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                ticks |= {id(tick.label1), id(tick.label2)}
            if ax.get_visible() and ax.axison:  # an axes turned off draws no tick label
                drawn |= {id(label) for tick in axis._update_ticks() for label in (tick.label1, tick.label2)}
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and (t.axes is None or (t.axes.get_visible() and t.axes.axison)) and (id(t) not in ticks or id(t) in drawn)]


def _parallel_overlap(a: Text, b: Text, ba, bb, renderer) -> bool:
    """Whether two texts whose upright boxes overlap really do: texts rotated by the same angle (slanted
    tick labels) are compared as the rotated rectangles they are (centre offset along and across the
    writing direction against their unrotated width and height); any other pair counts as overlapping."""
    angle = a.get_rotation()
    if angle == 0 or angle != b.get_rotation():
        return True
    sizes = []
    for t in (a, b):
        t.set_rotation(0)
        sizes.append(t.get_window_extent(renderer))
        t.set_rotation(angle)
    theta = np.deg2rad(angle)
    offset = np.array([bb.x0 + bb.x1 - ba.x0 - ba.x1, bb.y0 + bb.y1 - ba.y0 - ba.y1]) / 2  # centre to centre
    along = abs(offset @ [np.cos(theta), np.sin(theta)])
    across = abs(offset @ [-np.sin(theta), np.cos(theta)])
    return along < (sizes[0].width + sizes[1].width) / 2 and across < (sizes[0].height + sizes[1].height) / 2


def _overlaps(fig: plt.Figure) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap, and texts that run into an axes not their own (a title into
    the colour bar, a tick label into the next panel); cell annotations sit inside their own axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t, t.get_window_extent(renderer)) for t in _texts(fig)]
    hits = [(a.get_text(), b.get_text()) for (a, ba), (b, bb) in combinations(boxes, 2)
            if ba.overlaps(bb) and _parallel_overlap(a, b, ba, bb, renderer)]
    shown = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    hits += [(t.get_text(), f"axes {i}") for t, box in boxes for i, ax in enumerate(shown)
             if ax is not t.axes and box.overlaps(ax.get_window_extent(renderer))]
    return hits


@pytest.fixture
def captured(monkeypatch):
    """Figures as drawn, before they are saved and closed: {file name: figure}."""
    seen: dict[str, plt.Figure] = {}
    save = figures._save

    def keep(fig, path):
        fig.canvas.draw()
        seen[Path(path).name] = fig
        out = save(fig, path)
        return out

    monkeypatch.setattr(figures, "_save", keep)
    monkeypatch.setattr(figures.plt, "close", lambda fig=None: None)  # keep them for inspection
    yield seen
    plt.close("all")


def test_no_text_overlaps_another_or_runs_into_an_axes(tmp_path, captured):
    cfg, out = make_study(tmp_path)
    build_report(out, tmp_path / "report", storage_url=cfg.storage_url, study_names=STUDIES[:0])
    assert {"accuracy.png", "pareto.png", "importance.png", "cka.png", "learning_curves.png"} <= set(captured)
    for name in ("accuracy.png", "pareto.png", "importance.png", "cka.png", "cka_layers.png", "learning_curves.png",
                 "memory_decay.png", "mutual.png"):
        assert _overlaps(captured[name]) == [], name


def test_the_overlap_check_catches_a_title_running_into_a_colour_bar():
    fig, ax = plt.subplots(figsize=(3, 3))
    image = ax.imshow(np.eye(3))
    fig.colorbar(image, ax=ax)
    fig.text(0.5, 0.5, "a long title written across the whole figure, colour bar included", ha="center")
    assert _overlaps(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(2, 2))  # slanted tick labels: apart when spaced, caught when crowded
    ax.set_xticks(range(3), ["alternating_steps", "growing_steps", "shrinking_steps"], rotation=40, ha="right")
    ax.set_xlim(-0.5, 2.5)
    assert _overlaps(fig) == []
    ax.set_xticks(range(12), [f"a_rather_long_family_{i}" for i in range(12)], rotation=40, ha="right")
    ax.set_xlim(-0.5, 11.5)
    assert _overlaps(fig)
    plt.close(fig)


def test_accuracy_panels_show_seed_points_and_intervals_within_0_100(tmp_path, captured):
    table = pd.DataFrame({"arch": ["lstm", "mamba"], "mean": [0.98, 0.02], "half": [0.1, 0.1]})
    seeds = pd.DataFrame({"arch": ["lstm"] * 3 + ["mamba"] * 3, "value": [0.97, 0.98, 0.99, 0.0, 0.02, 0.04]})
    figures.overall([("acc", "accuracy (%)", 100.0, table)], ["lstm", "mamba"], tmp_path / "a.png", [seeds])
    ax = captured["a.png"].axes[0]
    bars = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    ends = np.concatenate([seg[:, 0] for seg in bars])
    assert ends.min() == pytest.approx(0.0) and ends.max() == pytest.approx(100.0)  # clipped, not 108 or −8
    points = np.concatenate([c.get_offsets() for c in ax.collections if c.get_offsets().shape[0] == 6])
    assert sorted(points[:, 0]) == pytest.approx([0, 2, 4, 97, 98, 99])  # every seed drawn
    assert figures.clipped(pd.Series([0.5]), pd.Series([np.nan])).tolist() == [[0.0], [0.0]]


def test_learning_curves_draw_seeds_not_a_min_max_band(tmp_path, captured):
    history = pd.DataFrame([{"arch": "lstm", "seed": s, "tokens": t, "metric": m, "value": 0.1 * t + s}
                            for s in (0, 1) for t in (1, 2, 3) for m in ("val_accuracy", "val_ce")])
    figures.learning_curves(history, ["lstm"], tmp_path / "c.png")
    fig = captured["c.png"]
    assert not [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]  # no band
    texts = " ".join(t.get_text() for t in fig.findobj(Text))
    assert "min–max" not in texts and "lstm (2 seeds)" in texts
    assert len(fig.axes[0].get_lines()) == 3  # two seeds and their mean


def test_pareto_keeps_search_validation_out_of_the_test_accuracy_panel(tmp_path, captured):
    points = pd.DataFrame({"arch": ["lstm", "mamba"], "num_params": [1e4, 3e4], "mean": [0.5, 0.99],
                           "half": [0.1, 0.05]})
    trials = pd.DataFrame({"arch": ["lstm"] * 3, "num_params": [1e3, 1e4, 1e5], "val_accuracy": [0.1, 0.2, 0.3]})
    figures.pareto(points, ["lstm", "mamba"], trials, tmp_path / "p.png")
    final, search = captured["p.png"].axes
    assert "test accuracy" in final.get_ylabel() and "validation" in search.get_ylabel()
    assert not [c for c in final.collections if len(c.get_offsets()) == 3]  # no trial in the test panel
    assert [c for c in search.collections if len(c.get_offsets()) == 3]
    tops = [seg[:, 1].max() for c in final.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    assert max(tops) == pytest.approx(100.0)  # mamba's 99 + 5 clipped


def _search_storage(tmp_path: Path, trials: dict[str, int]) -> tuple[Stored, str]:
    """A stored study with search studies of `trials` completed trials per arch, two knobs with tied
    (zero) importance on lstm (constant params)."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    dists = {"b_knob": optuna.distributions.IntDistribution(1, 3), "a_knob": optuna.distributions.IntDistribution(1, 3),
             "lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    for arch, n in trials.items():
        study = optuna.create_study(study_name=search_study("s", arch), storage=storage)
        for i in range(n):
            study.add_trial(optuna.trial.create_trial(params={"b_knob": 2, "a_knob": 2, "lr": 1e-3 * (1 + i % 9)},
                                                      distributions=dists, value=float(i % 9)))
    cfg = OmegaConf.create({"name": "s", "search": {"n_trials": max(trials.values())}})
    return Stored(out_dir=tmp_path, cfg=cfg, meta={}, results=pd.DataFrame(), runs=pd.DataFrame()), url


def test_importances_need_ten_trials_are_labelled_and_order_ties_by_name(tmp_path, captured):
    s, url = _search_storage(tmp_path, {"lstm": MIN_TRIALS, "mamba": MIN_TRIALS - 1})
    values, notes = param_importances(s, ["lstm", "mamba", "gru"], url)
    assert list(values) == ["lstm"]
    assert notes == [f"mamba: {MIN_TRIALS - 1} completed search trial(s), importances need at least {MIN_TRIALS}",
                     "gru: no search study `s/gru`"]
    assert list(values["lstm"]) == ["lr", "a_knob", "b_knob"]  # the two constant knobs tie: by name
    figures.importances(values, tmp_path / "i.png", completed_trials(s, ["lstm"], url))
    assert captured["i.png"].axes[0].get_title() == f"lstm ({MIN_TRIALS} trials)"
    assert [t.get_text() for t in captured["i.png"].axes[0].get_yticklabels()] == ["b_knob", "a_knob", "lr"]
    assert search_study("s", "lstm", replicate=2) == "s/r2/lstm"


def _stored(search: dict, runs: list[dict]) -> Stored:
    return Stored(out_dir=Path("x"), cfg=OmegaConf.create({"name": "s", "search": search}), meta={},
                  results=pd.DataFrame(), runs=pd.DataFrame(runs))


GRID = {"n_trials": 4, "sampler": "grid", "grid": {"lr": [1e-3, 3e-3, 1e-2], "d_model": [64], "num_layers": [1, 2, 3],
                                                   "d_state": [8, 16, 32], "d_conv": [2, 4], "expand": [1, 2]}}


def test_grid_boundary_flags_name_the_edge_and_skip_unsearched_knobs():
    runs = [{"arch": "mamba", "seed": s, "status": "ok", "lr": 1e-2, "d_model": 64, "num_layers": 2, "d_state": 16,
             "d_conv": 4, "expand": 1} for s in (0, 1)]
    runs += [{"arch": "lstm", "seed": 0, "status": "ok", "lr": 3e-3, "d_model": 64, "num_layers": 1,
              "d_state": np.nan, "d_conv": np.nan, "expand": np.nan},
             {"arch": "lstm", "seed": 1, "status": "failed", "lr": 1e-2, "d_model": 64, "num_layers": 3}]
    s = _stored(GRID, runs)
    assert "d_model" not in searched_ranges(s)  # a single value was not searched
    assert "d_conv" not in searched_ranges(s) and "expand" not in searched_ranges(s)  # two values: both are ends
    flags = boundary_flags(s)
    assert flags[["arch", "knob", "side"]].values.tolist() == [
        ["lstm", "num_layers", "bottom"], ["mamba", "lr", "top"]]
    line = boundary_line(flags, searched_ranges(s))
    assert "mamba lr = 1e-2 (top of [1e-3, 1e-2])" in line and "d_state" not in line


def test_tpe_lr_counts_as_on_the_boundary_near_its_end_and_none_is_said():
    space = {"n_trials": 6, "space": {"lr": [1e-3, 1e-2], "d_model": [32, 128], "num_layers": [1, 3]}}
    near = [{"arch": "lstm", "seed": 0, "status": "ok", "lr": 9.5e-3, "d_model": 64, "num_layers": 2}]
    assert boundary_flags(_stored(space, near))[["knob", "side"]].values.tolist() == [["lr", "top"]]
    inside = [{**near[0], "lr": 5e-3}]
    s = _stored(space, inside)
    assert not len(boundary_flags(s))
    assert boundary_line(boundary_flags(s), searched_ranges(s)).startswith("no chosen configuration is on the boundary")
    assert boundary_line(boundary_flags(_stored({"n_trials": 0}, inside)), {}) == "no search, so no boundary to check"
    assert fmt_knob("lr", 9.5e-3) == "9.5e-3" and fmt_knob("d_model", 64.0) == "64"


def test_the_report_has_the_boundary_line_and_table(tmp_path):
    """make_study's final runs: d_model 32, 2 layers, lr 3e-3 in the smoke space (d_model [32, 64], layers
    [1, 2], lr [3e-3, 1e-2]); mamba's d_state 16 in [8, 16], d_conv 4 in [2, 4], expand 2 in [1, 2, 4].
    Only lr (continuous) and expand (three choices) can be judged."""
    cfg, out = make_study(tmp_path, storage=False)
    text = build_report(out, tmp_path / "report").read_text()
    line = next(x for x in text.splitlines() if x.startswith("- **Search boundary:**"))
    assert "lstm lr = 3e-3 (bottom of [3e-3, 1e-2])" in line
    assert "d_model" not in line and "num_layers" not in line  # [32, 64] and [1, 2]: two values, both ends
    assert "mamba d_state = 16" not in line and "d_conv" not in line  # d_state [8, 16], d_conv [2, 4]: two values
    assert "transformer lr" in line
    assert "expand" not in line and "replicate" not in line  # expand 2 is inside [1, 4]; one replicate
    assert "| lstm | 0 | lr | 3e-3 | [3e-3, 1e-2] | bottom |" in text


def test_the_cka_title_stays_clear_of_the_colour_bar(tmp_path, captured):
    """reports/mutual/cka.png (four architectures, 1,792 rows): the colour bar's label ran into the title."""
    names = ["mamba", "lstm", "s4d", "transformer"]
    matrix = pd.DataFrame(np.full((4, 4), 0.7), index=names, columns=names)
    figures.cka_matrix(matrix, tmp_path / "cka.png", 1792, "one architecture, two seeds")
    assert _overlaps(captured["cka.png"]) == []
