"""The mechanism studies' report: accuracy against state size and the literature check's verdicts,
on synthetic stored tables whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.experiment.config import STUDY_MARKER, compose_config
from bench.report.mechanism_claims import CLAIMS
from bench.report.mechanism_report import FIGURE, build_mechanism_report
from bench.report.mechanisms import POOLED, accuracy_table, check_claims, claims_for, load_widths
from bench.report.variants import build_variants_report

FAMILIES = ["selective_copy_2", "selective_copy_4"]
WIDTHS = {"d16": 16, "d32": 32, "d64": 64}
CONFIG = """seeds: [0, 1, 2]
data: {length: 32, test_per_family: 60}
train: {steps: 1000, batch_size: 64, alpha: 0.0}
search: {steps: 500, seed: 0, grid: {lr: [0.001, 0.003, 0.01]}}
"""
FAST = 200  # bootstrap resamples: enough for the verdicts of these clear-cut cases


def write_study(root, rates, seeds=(0, 1, 2), answers=4, sequences=60, families=FAMILIES):
    """One variant folder per width; rates[(width, arch)] = each answer's probability of being right."""
    rng = np.random.default_rng(0)
    dirs = {}
    for variant, d in WIDTHS.items():
        folder = root / variant
        folder.mkdir(parents=True)
        rows, runs = [], []
        for arch in sorted({a for (_, a) in rates}):
            p = rates[d, arch]
            runs.append(dict(stage="final", status="ok", arch=arch, seed=0, state_size=d * 32, lr=1e-3, d_model=d))
            for seed in seeds:
                for split in ("iid_unseen", "ood"):
                    for fam in families:
                        for q in range(sequences):
                            for _ in range(answers):
                                rows.append((arch, "final", seed, 0, split, 32, fam, q, bool(rng.random() < p)))
        pd.DataFrame(rows, columns=["arch", "stage", "seed", "replicate", "split", "length", "family", "sequence",
                                    "correct"]).to_parquet(folder / "predictions.parquet")
        pd.DataFrame(runs).to_parquet(folder / "runs.parquet")
        pd.DataFrame({"wall_s": [30.0] * len(runs)}).to_parquet(folder / "trials.parquet")
        (folder / "config.yaml").write_text(CONFIG)
        (folder / "meta.yaml").write_text(f"command: python -m bench.run study=selective_copy\ncommit: abc{d}\n"
                                          f"date: '2026-12-01'\nmachine: test\n")
        dirs[variant] = folder
    return dirs


def test_the_report_tells_a_solved_ordering_from_a_tie(tmp_path):
    rates = {}
    for d in WIDTHS.values():
        rates[d, "mamba"] = 0.99
        rates[d, "s4d"] = 0.30  # far behind: the ordering is reproduced
        rates[d, "sgconv"] = 0.99  # tied with mamba: equivalent, so "not reproduced"
    dirs = write_study(tmp_path, rates)
    w = load_widths(dirs)
    assert w.order == ["d16", "d32", "d64"] and w.cost_s == pytest.approx(3 * 3 * 30.0)
    acc = accuracy_table(w.scores, FAMILIES, FAST)
    pooled = acc[(acc["family"] == POOLED) & (acc["variant"] == "d64")].set_index("arch")
    assert pooled.loc["mamba", "mean"] == pytest.approx(0.99, abs=0.01)
    assert pooled.loc["s4d", "lo"] < 0.30 < pooled.loc["s4d", "hi"]
    checks = {(c.claim.kind, c.claim.b): c for c in check_claims(claims_for(FAMILIES), w, resamples=FAST)}
    assert checks["solves", None].verdict == "reproduced"
    assert checks["order", "s4d"].verdict == "reproduced"
    assert checks["order", "sgconv"].verdict == "not reproduced" and "equivalent" in checks["order", "sgconv"].evidence
    readme = build_mechanism_report("selective_copy", dirs, tmp_path / "report", long_study="selective_copy_long",
                                    resamples=FAST)
    text = readme.read_text()
    assert "## Literature check" in text and "Table 1" in text and "**reproduced**" in text
    assert "lr 0.001 (grid bottom)" in text and "then 1000 steps x 64 sequences of length 32 on seeds 0, 1, 2" in text
    assert "Run by `python -m bench.run study=selective_copy` (d16: commit `abc16`" in text
    assert "study=selective_copy_long" in text and (tmp_path / "report" / FIGURE).stat().st_size > 0
    again = build_mechanism_report("selective_copy", dirs, tmp_path / "again", long_study="selective_copy_long",
                                   resamples=FAST)
    assert again.read_text() == text  # byte-reproducible from the stored tables, figure included
    assert (tmp_path / "again" / FIGURE).read_bytes() == (tmp_path / "report" / FIGURE).read_bytes()


def test_an_unsolved_task_and_an_unseparated_pair_are_not_findings(tmp_path):
    rates = {}
    for d in WIDTHS.values():
        rates[d, "mamba"] = 0.5
        rates[d, "s4d"] = 0.47  # 3 pp apart, with 3 seeds and 60 sequences: not separable, not equivalent
        rates[d, "sgconv"] = 0.1
    w = load_widths(write_study(tmp_path, rates, sequences=30, answers=2))
    checks = {(c.claim.kind, c.claim.b): c for c in check_claims(claims_for(FAMILIES), w, resamples=FAST)}
    assert checks["solves", None].verdict == "not reproduced"  # its upper end is far below 90 %
    assert checks["order", "s4d"].verdict == "inconclusive at this budget"
    assert checks["order", "sgconv"].verdict == "reproduced"


def test_growth_with_width_is_checked_between_the_narrowest_and_widest(tmp_path):
    rising, falling = {16: 0.2, 32: 0.5, 64: 0.8}, {16: 0.6, 32: 0.45, 64: 0.3}
    rates = {(d, a): p for d in WIDTHS.values() for a, p in (
        ("transformer", 0.98), ("s4d", rising[d]), ("mamba", falling[d]), ("stable_ssm", 0.4), ("sgconv", 0.4))}
    fams = ["mqar_2", "mqar_4"]
    w = load_widths(write_study(tmp_path, rates, families=fams))
    checks = {(c.claim.kind, c.claim.a, c.claim.b): c.verdict
              for c in check_claims(claims_for(fams), w, resamples=FAST)}
    assert checks["grows", "s4d", None] == "reproduced"
    assert checks["grows", "mamba", None] == "not reproduced"  # it falls
    assert checks["grows", "stable_ssm", None] == "inconclusive at this budget"  # flat, within sampling noise
    assert checks["solves", "transformer", None] == "reproduced"
    assert checks["order", "transformer", "s4d"] == "reproduced"


def test_two_mixers_at_chance_are_never_read_as_equivalent(tmp_path):
    rates = {(d, a): 0.0 for d in WIDTHS.values() for a in ("mamba", "s4d", "sgconv")}
    rates |= {(d, "sgconv"): 0.95 for d in WIDTHS.values()}
    w = load_widths(write_study(tmp_path, rates))
    checks = {c.claim.b: c for c in check_claims(claims_for(FAMILIES), w, resamples=FAST) if c.claim.kind == "order"}
    assert checks["s4d"].verdict == "inconclusive at this budget"  # both at 0 %: identical, yet no finding
    assert checks["sgconv"].verdict == "not reproduced"  # sgconv significantly ahead
    flat = {(d, a): p for d in WIDTHS.values() for a, p in (("transformer", 1.0), ("s4d", 1.0), ("mamba", 0.0),
                                                           ("stable_ssm", 0.0), ("sgconv", 0.0))}
    fams = ["mqar_2"]
    w = load_widths(write_study(tmp_path / "flat", flat, families=fams))
    grows = {c.claim.a: c.verdict for c in check_claims(claims_for(fams), w, resamples=FAST) if c.claim.kind == "grows"}
    assert grows == {"s4d": "inconclusive at this budget", "mamba": "inconclusive at this budget",
                     "stable_ssm": "inconclusive at this budget"}  # flat at 100 % or at 0 %: no trade-off shown


def test_a_claim_whose_architecture_is_absent_is_not_run(tmp_path):
    rates = {(d, "mamba"): 0.9 for d in WIDTHS.values()}
    w = load_widths(write_study(tmp_path, rates))
    verdicts = {c.claim.b: c.verdict for c in check_claims(claims_for(FAMILIES), w, resamples=FAST)
                if c.claim.kind == "order"}
    assert verdicts == {"s4d": "not run", "sgconv": "not run"}


def test_every_claim_names_its_source_and_each_mechanism_study_has_claims():
    assert all(c.source and c.published and c.kind in ("solves", "order", "grows") for c in CLAIMS)
    for study in ("selective_copy", "mqar", "recall"):
        cfg = compose_config([f"study={study}"])
        assert cfg.variants and cfg.long_study and claims_for(cfg.data.families)


def test_the_variants_report_of_a_mechanism_study_is_the_mechanism_report(tmp_path):
    rates = {(d, a): 0.6 for d in WIDTHS.values() for a in ("mamba", "s4d", "sgconv")}
    out = tmp_path / "study"
    write_study(out, rates, sequences=10, answers=1)
    (out / STUDY_MARKER).touch()  # what bench.run leaves in a study's out_dir
    cfg = compose_config(["study=selective_copy", f"out_dir={out}", "report=false"])
    text = build_variants_report(cfg.name, cfg.data.phases, cfg.output_dir, cfg.variants, tmp_path / "report",
                                 cfg.equivalence_margin, cfg.long_study).read_text()
    assert text.startswith("# Mechanism study: selective_copy") and "accuracy_vs_state.png" in text


@pytest.mark.slow
def test_a_mechanism_study_ends_with_its_report_and_bench_report_rebuilds_it(tmp_path, capsys):
    from bench.report.__main__ import main as report_main
    from bench.run import main as run_main

    out = tmp_path / "study"
    tiny = ["train.steps=6", "train.val_every=3", "train.batch_size=8", "data.test_per_family=4", "data.val_size=8",
            "data.val_fixed_size=8", "search.n_trials=1", "search.steps=6", "progress=false", "workers=1",
            "tracking=none", "archs=[mamba,s4d,sgconv]", "seeds=[0,1,2]"]
    assert run_main(["study=selective_copy", *tiny, f"out_dir={out}"]) == 0
    readme = out / "report" / "README.md"
    text = readme.read_text()
    assert text.startswith("# Mechanism study: selective_copy") and "## Literature check" in text
    assert all((out / v / "report" / "README.md").is_file() for v in ("d16", "d32", "d64"))  # each width's own
    runs = pd.concat(pd.read_parquet(out / v / "runs.parquet").assign(v=v) for v in ("d16", "d32", "d64"))
    assert runs.groupby("v").d_model.unique().map(list).to_dict() == {"d16": [16], "d32": [32], "d64": [64]}
    assert report_main(["study=selective_copy", f"out_dir={out}", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "README.md").read_text() == text
    assert (tmp_path / "again" / FIGURE).read_bytes() == (out / "report" / FIGURE).read_bytes()
