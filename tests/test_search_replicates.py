"""Whole studies (slow): two concurrent commands on one storage, and search replicates end to end."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["study=smoke", "archs=[lstm,transformer]", "seeds=[0]", "train.steps=6", "train.val_every=3",
        "train.batch_size=8", "data.test_per_family=4", "data.val_size=8", "model.d_model=16", "model.num_layers=1",
        "model.d_state=8", "search.steps=6", "search.space.d_model=[16,32]", "search.space.num_layers=[1,2]",
        "search.grid.d_model=[16,32]", "search.grid.num_layers=[1,2]", "search.grid.lr=[0.001,0.01]",
        "search.grid.d_state=[4,8]", "progress=false", "tracking=none", "report=false"]


def bench(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench.run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out


def counted_params(storage: str, name: str) -> list[tuple]:
    """The parameters of the trials that count towards `name`'s slots."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    live = [t for t in trials if not t.user_attrs.get("surplus") and t.state.is_finished()
            and (t.state.name != "FAIL" or "failure_reason" in t.user_attrs)]
    return [tuple(sorted(t.params.items())) for t in live]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_two_concurrent_commands_on_one_storage_propose_no_duplicate_trial(tmp_path, sampler):
    """The default storage (out_dir/optuna.db), where both commands' workers are "worker 0": before
    proposals were the slot's, their TPE samplers were seeded alike and proposed the same trials."""
    out = tmp_path / "out"
    storage = f"sqlite:///{out / 'optuna.db'}"
    args = [*TINY, f"search.sampler={sampler}", "search.n_trials=4", f"out_dir={out}"]
    first = bench(*args)
    second = bench(*args)
    finish(first)
    finish(second)
    for arch in ("lstm", "transformer"):
        params = counted_params(storage, f"smoke/{arch}")
        assert len(params) == 4 and len(set(params)) == 4, params  # exact count, no trial proposed twice
        assert len(counted_params(storage, f"smoke/{arch}/final")) == 1
    if sampler == "grid":  # the whole core grid, each point once
        assert {dict(p)["lr"] for p in counted_params(storage, "smoke/lstm")} == {0.001, 0.01}


@pytest.mark.slow
def test_two_search_replicates_write_both_replicates_files_and_columns(tmp_path):
    out = tmp_path / "out"
    finish(bench(*TINY, "search.n_trials=2", "search.replicates=2", f"out_dir={out}"))
    for arch in ("lstm", "transformer"):
        assert (out / "final" / f"{arch}-seed0.run.json").exists()
        assert (out / "final" / f"{arch}-seed0-r1.run.json").exists()
    storage = f"sqlite:///{out / 'optuna.db'}"
    names = set(optuna.get_all_study_names(storage))
    assert {"smoke/lstm", "smoke/lstm/final", "smoke/r1/lstm", "smoke/r1/lstm/final"} <= names
    assert counted_params(storage, "smoke/lstm") != counted_params(storage, "smoke/r1/lstm")  # own sampler seed
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(zip(runs.arch, runs.replicate, strict=True)) == [("lstm", 0), ("lstm", 1), ("transformer", 0),
                                                                  ("transformer", 1)]
    assert (runs.status == "ok").all() and (runs.seed == 0).all()
    trials = pd.read_parquet(out / "trials.parquet")
    assert trials.groupby(["stage", "replicate"]).arch.nunique().to_dict() == {
        ("final", 0): 2, ("final", 1): 2, ("search", 0): 2, ("search", 1): 2}


@pytest.mark.slow
def test_a_replicate_choosing_an_earlier_replicates_configuration_reuses_its_final_runs(tmp_path):
    """A one-point grid: both replicates choose the same configuration, so replicate 1's final runs
    are replicate 0's files relabelled (final runs depend only on configuration and seed), not a
    second training; every table holds both replicates' rows, equal but for the replicate."""
    out = tmp_path / "out"
    one_point = ["search.grid.d_model=[16]", "search.grid.num_layers=[1]", "search.grid.lr=[0.003]",
                 "search.grid.d_state=[8]", "search.grid.d_conv=[4]", "search.grid.expand=[2]"]
    finish(bench(*TINY, *one_point, "search.sampler=grid", "search.n_trials=1", "search.replicates=2",
                 "seeds=[0,1]", "search.pruner=none", f"out_dir={out}"))
    runs = pd.read_parquet(out / "runs.parquet")
    again = runs[runs.replicate == 1]
    assert len(again) == 4 and set(again.copied_from) == {f"{a}-seed{s}" for a in ("lstm", "transformer")
                                                           for s in (0, 1)}
    results = pd.read_parquet(out / "results.parquet")
    models = results[results.arch.isin(["lstm", "transformer"])]
    keys = ["arch", "seed", "split", "length", "phase", "family", "position", "metric"]
    first, second = (models[models.replicate == r].drop(columns="replicate").sort_values(keys).reset_index(drop=True)
                     for r in (0, 1))
    pd.testing.assert_frame_equal(first, second)
    preds = pd.read_parquet(out / "predictions.parquet")
    assert set(preds.run) == {f"{a}-seed{s}{suffix}" for a in ("lstm", "transformer") for s in (0, 1)
                              for suffix in ("", "-r1")}
