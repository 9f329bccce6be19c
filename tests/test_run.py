"""The CLI end to end: tiny runs of every study, output tables, determinism, and bad input."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.experiment.config import ConfigError, compose_config, study_names, validate
from bench.metrics import REFERENCES
from bench.models import mixer_names
from bench.run import main

TINY = ["train.steps=6", "train.val_every=3", "train.batch_size=8", "data.test_per_family=4", "data.val_size=8",
        "data.val_fixed_size=8",
        "model.d_model=16", "model.num_layers=1", "model.d_state=8", "progress=false", "workers=1",
        "search.n_trials=0", "search.steps=6", "search.space.d_model=[16,32]", "search.space.d_state=[4,16]",
        "search.space.num_layers=[1,2]", "report=false"]


def run_cli(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "out"
    assert main([*overrides, f"out_dir={out}"]) == 0
    return out


def test_studies_exist_and_compose():
    assert {"smoke", "phase1", "phase2", "phase3", "curriculum", "memory", "mutual"} <= set(study_names())
    for name in study_names():
        cfg = compose_config([f"study={name}"])
        assert cfg.name == name
        if name == "mutual":  # a chosen cohort of four mechanisms
            assert len(cfg.arch_list) == 4 and set(cfg.arch_list) <= set(mixer_names()) and cfg.mutual.weight > 0
        elif name == "backbone":  # the ablation: two or three architectures under each variant
            assert 2 <= len(cfg.arch_list) <= 3 and set(cfg.arch_list) <= set(mixer_names()) and cfg.variants
        else:  # every registered architecture joins every other study
            assert cfg.arch_list == mixer_names() and cfg.mutual.weight is None


@pytest.mark.slow
@pytest.mark.parametrize("study", study_names())
def test_every_study_runs_both_stages_at_a_tiny_budget(tmp_path, study):
    # a larger-scale study with variants (e.g. mqar_long: 3 widths at length 256) runs two of its
    # architectures here; its short version runs them all through the same code
    extra = ["archs=[mamba,transformer]"] if study.endswith("_long") and compose_config(
        [f"study={study}"]).variants else []
    cfg = compose_config([f"study={study}", *extra])
    varied = {o.split("=", 1)[0] for extra in cfg.variants.values() for o in extra}  # a variant's own keys
    tiny = [o for o in TINY if o.split("=", 1)[0] not in varied]
    root = run_cli(tmp_path, f"study={study}", *tiny, *extra, "seeds=[0]", "search.n_trials=1")
    for out in [root / v for v in cfg.variants] or [root]:  # an ablation: one study per variant
        results = pd.read_parquet(out / "results.parquet")
        assert {"arch", "seed", "split", "length", "phase", "family", "metric", "value", "position", "study",
                "stage"} <= set(results.columns)
        trials = pd.read_parquet(out / "trials.parquet")
        stages = {"final": len(cfg.arch_list), "search": len(cfg.arch_list)}
        assert trials.groupby("stage").arch.nunique().to_dict() == stages | ({"mutual": 1} if cfg.mutual.weight
                                                                              else {})
        assert set(results.arch) == set(cfg.arch_list) | set(REFERENCES)
        assert {"accuracy", "distance_error", "loss", "continuation_accuracy"} <= set(results.metric)
        lengths = {("length", n) for n in cfg.test_length_list}
        assert set(zip(results.split, results.length, strict=True)) - {("iid_seen", cfg.data.length)} == \
            {("iid_unseen", cfg.data.length), ("ood", cfg.data.length)} | lengths
        assert set(results.phase.dropna()) == set(cfg.data.phases)
    if cfg.mutual.weight:
        assert set(pd.read_parquet(root / "mutual.parquet").arch) == set(cfg.arch_list)


@pytest.mark.slow
def test_outputs_history_runs_config_and_weights(tmp_path, capsys):
    out = run_cli(tmp_path, "study=smoke", *TINY, "seeds=[0,1]")
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "baseline_uniform" in printed
    history = pd.read_parquet(out / "history.parquet")
    assert {"arch", "seed", "step", "tokens", "metric", "value"} <= set(history.columns)
    assert sorted(history.step.unique()) == [3, 6] and {"train_loss", "val_loss", "val_accuracy", "fresh_loss",
                                                        "fresh_accuracy"} <= set(history.metric)
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 2 * len(mixer_names()) and (runs.status == "ok").all()
    assert (runs.tokens == 6 * 8 * 7).all()  # identical budget for every architecture
    assert (out / "config.yaml").exists() and (out / "meta.yaml").exists()
    overlap = pd.read_parquet(out / "overlap.parquet")
    assert list(overlap.columns) == ["phase", "family", "n", "seen", "seen_fraction", "seed", "study"]
    assert len(overlap) == 2 * 3 and (overlap.n == 4).all()  # 2 seeds x 3 phase-1 families
    assert len(list((out / "models").glob("*.pt"))) == 2 * len(mixer_names())
    results = pd.read_parquet(out / "results.parquet")
    assert list(results.columns) == ["study", "stage", "arch", "seed", "replicate", "split", "length", "phase",
                                     "family", "position", "metric", "value", "n"]
    for arch in ("ceiling", "baseline_lookup", "baseline_uniform", *mixer_names()):  # per seed, every split
        rows = results[(results.arch == arch) & (results.split != "iid_seen")]
        assert set(zip(rows.seed, rows.split, rows.length, strict=True)) == {(s, k, n) for s in (0, 1) for k, n in
                                                               (("iid_unseen", 8), ("ood", 8), ("length", 16),
                                                                ("length", 32))}, arch
    ceiling = pd.read_parquet(out / "ceiling.parquet")
    assert list(ceiling.columns) == ["study", "set", "region", "length", "seed", "family", "position", "accuracy",
                                     "loss", "method", "se"]
    assert set(zip(ceiling.set, ceiling.region, strict=True)) == {("mixture", "train"), ("mixture", "held_out"),
                                                      ("family_known", "train"), ("family_known", "held_out"),
                                                      ("validation", "train")}
    assert sorted(ceiling[ceiling.set == "validation"].seed) == [0, 1] and ceiling.seed.isna().sum() == len(
        ceiling) - 2
    splits = pd.read_parquet(out / "splits.parquet")
    assert list(splits.columns) == ["study", "seed", "phase", "family", "split", "length", "n_sequences"]
    per = splits.groupby(["seed", "split", "length"]).n_sequences.sum()
    # iid_unseen holds the reserved rows too: 4 per family, beside the 4 iid rows each family splits
    assert (per[:, "iid_seen", 8] + per[:, "iid_unseen", 8] == 2 * 3 * 4).all() and (per[:, "ood", 8] == 12).all()
    oeis = pd.read_parquet(out / "oeis.parquet")
    assert list(oeis.columns) == ["study", "arch", "seed", "kind", "metric", "value", "n", "windows"]
    assert (oeis.n == oeis.windows * 7).all()  # length 8: 7 scored predictions per window
    assert oeis.groupby("kind").windows.nunique().eq(1).all()  # the same for every arch and seed
    assert set(oeis.arch) == {"baseline_last_value", "baseline_extrapolate", "baseline_lookup", *mixer_names()}
    assert {"taught", "all"} <= set(oeis.kind) and set(oeis[oeis.arch == "baseline_lookup"].metric) == {
        "accuracy", "distance_error"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tmp_path):
    a = pd.read_parquet(run_cli(tmp_path / "a", "study=smoke", *TINY) / "results.parquet")
    b = pd.read_parquet(run_cli(tmp_path / "b", "study=smoke", *TINY) / "results.parquet")
    pd.testing.assert_frame_equal(a, b)
    c = pd.read_parquet(run_cli(tmp_path / "c", "study=smoke", *TINY, "seeds=[1]") / "results.parquet")
    learned = lambda df: df[~df.arch.str.startswith("baseline")].value.to_numpy()  # noqa: E731
    assert not (learned(a) == learned(c)).all()


BAD = {
    "unknown study": (["study=nope"], "unknown study 'nope'"),
    "unknown arch": (["archs=[transformer,gru]"], "unknown architecture 'gru'"),
    "malformed override": (["seeds=[1,2"], "malformed override"),
    "not key=value": (["train.steps"], "malformed override"),
    "unknown key": (["nokey=1"], "nokey"),
    "unknown nested key": (["train.bogus=1"], "bogus"),
    "wrong type": (["train.steps=abc"], "steps"),
    "d_model not pow2": (["model.d_model=48"], "d_model must be a power of two"),
    "d_state not pow2": (["model.d_state=12"], "d_state must be a power of two"),
    "d_state > d_model": (["model.d_model=16", "model.d_state=32"], "must not exceed"),
    "heads": (["model.mixer.transformer.n_heads=3"], "n_heads"),
    "unknown mixer knob": (["model.mixer.transformer.n_head=4"], "n_head"),
    "boolean heads": (["model.mixer.transformer.n_heads=true"], "n_heads=True"),
    "zero steps": (["train.steps=0"], "train.steps must be positive"),
    "negative batch": (["train.batch_size=-4"], "train.batch_size must be positive"),
    "unknown family": (["data.families=[nope]"], "unknown family 'nope'"),
    "family outside phases": (["data.families=[geometric]"], "belongs to phase 2"),
    "repeated phase": (["data.phases=[1,1]"], "phases must not repeat"),
    "unknown phase": (["data.phases=[9]"], "unknown phase 9"),
    "short sequences": (["data.length=2"], "data.length must be at least 3"),
    "unknown flag": (["--frobnicate"], "unknown flag"),
    "append a key": (["+train.foo=1"], "only existing keys"),
    "append a top-level key": (["+foo=1"], "only existing keys"),
    "hydra setting": (["hydra.run.dir=x"], "only existing keys"),
    "empty key": (["=5"], "malformed override"),
    "package syntax": (["@foo=1"], "malformed override"),
    "two studies": (["study=phase1", "study=phase2"], "study= given 2 times"),
    "repeated arch": (["archs=[lstm,lstm]"], "archs lists an entry twice"),
    "repeated seed": (["seeds=[0,0]"], "seeds lists an entry twice"),
    "empty archs": (["archs=[]"], "archs is empty"),
    "no layers": (["model.num_layers=0"], "num_layers must be positive"),
    "min_lr above lr": (["train.min_lr=1.0"], "must not exceed train.lr"),
    "negative min_delta": (["train.min_delta=-1"], "non-negative"),
    "storage not a URL": (["storage=runs/x.db"], "storage must be an Optuna RDB URL"),
    "unknown stage": (["stage=both"], "stage must be all, search or final"),
    "unknown iso": (["iso=flops"], "iso must be none, params or state"),
    "space bound not pow2": (["search.space.d_model=[24,128]"], "search.space.d_model bounds must be powers of two"),
    "space reversed": (["search.space.num_layers=[3,1]"], "search.space.num_layers must be [min, max]"),
    "space d_state above d_model": (["search.space.d_model=[8,64]", "search.space.d_state=[16,32]"],
                                    "d_state min (16) exceeds d_model min (8)"),
    "expand choice": (["search.space.expand=[3]"], "search.space.expand must list distinct values"),
    "negative trials": (["search.n_trials=-1"], "search.n_trials must be non-negative"),
    "no workers": (["workers=0"], "workers must be positive"),
    "unknown pruner": (["search.pruner=hyperband"], "search.pruner must be median or none"),
    "model.arch set": (["model.arch=lstm"], "model.arch is set per architecture"),
    "model.max_len set": (["model.max_len=16"], "model.max_len is set per architecture"),
}


def test_the_derived_model_keys_are_refused_from_a_study_file_too(tmp_path):
    cfg = compose_config(["study=smoke", f"out_dir={tmp_path / 'out'}"])
    for key, value in (("arch", "lstm"), ("max_len", 16)):
        with pytest.raises(ConfigError, match=f"model.{key} is set per architecture"):
            validate(replace(cfg, model=replace(cfg.model, **{key: value})))
    assert cfg.model_config("lstm") == replace(cfg.model, arch="lstm", max_len=cfg.data.length)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_error_exit_2_nothing_written(tmp_path, capsys, case):
    overrides, message = BAD[case]
    out = tmp_path / "out"
    assert main([*overrides, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown arch", "zero steps", "append a key"])
def test_bad_input_leaves_an_existing_run_directory_untouched(tmp_path, capsys, case):
    out = run_cli(tmp_path, "study=smoke", *TINY)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main([*BAD[case][0], f"out_dir={out}"]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_rerun_rewrites_each_output_whole_and_never_touches_a_foreign_directory(tmp_path, capsys):
    out = run_cli(tmp_path, "study=smoke", *TINY)
    before = (out / "results.parquet").stat().st_mtime_ns
    (out / "decay.parquet").unlink()  # a table missing: the tables are collected again, not skipped as unchanged
    assert main(["study=smoke", *TINY, f"out_dir={out}"]) == 0
    assert (out / "results.parquet").stat().st_mtime_ns > before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    foreign = tmp_path / "project"
    (foreign / "models").mkdir(parents=True)
    (foreign / "models" / "keep.txt").write_text("precious")
    assert main(["study=smoke", *TINY, f"out_dir={foreign}"]) == 2
    assert "holds no earlier study" in capsys.readouterr().err
    assert (foreign / "models" / "keep.txt").read_text() == "precious" and len(list(foreign.rglob("*"))) == 2


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["study=smoke", f"out_dir={blocker}/sub"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"


def test_module_entry_point_exit_code_and_stderr(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.run", "study=nope", f"out_dir={tmp_path / 'o'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown study 'nope'") and len(proc.stderr.strip().splitlines()) == 1
    shown = subprocess.run([sys.executable, "-m", "bench.run", "study=phase2", "train.steps=7", "--cfg"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "steps: 7" in shown.stdout and "name: phase2" in shown.stdout


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_failed_and_the_study_goes_on(tmp_path, capsys):
    out = run_cli(tmp_path, "study=smoke", *TINY, "train.lr=1e30", "train.warmup_max_frac=0")
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs.status == "failed").all() and runs.reason.str.contains("non-finite").all()
    assert len(runs) == len(mixer_names())  # every architecture was tried
    results = pd.read_parquet(out / "results.parquet")
    assert set(results.arch) == set(REFERENCES)  # no metrics from a failed run
    assert "failed" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    assert main(["study=smoke", "device=cuda", f"out_dir={tmp_path / 'o'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: device 'cuda' requested but CUDA is not available"
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_study_writes_its_report_when_it_ends_and_a_report_failure_keeps_the_results(tmp_path, monkeypatch,
                                                                                          capsys):
    args = ["study=smoke", *TINY, "archs=[lstm]", "report=true"]
    out = run_cli(tmp_path, *args)
    readme = out / "report" / "README.md"  # the report follows out_dir unless report_dir says otherwise
    assert readme.exists() and "lstm" in readme.read_text() and not (tmp_path / "reports").exists()
    assert (out / "decay.parquet").exists() and len(pd.read_parquet(out / "decay.parquet"))

    import bench.report

    def broken(*args, **kwargs):
        raise ValueError("no figures today")

    monkeypatch.setattr(bench.report, "build_report", broken)
    capsys.readouterr()
    readme.unlink()  # the tables are current, the report is not: it alone is rebuilt, and fails
    assert main([*args, f"out_dir={out}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no figures today" in err[0] and "python -m bench.report study=smoke" in err[0]
    assert (out / "results.parquet").exists()
