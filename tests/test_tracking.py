"""W&B tracking: offline unless configured, one run per trial and final run, never blocking, and
nothing at all with tracking=none. The offline run files are checked for the logged keys (wandb's
record format is protobuf, whose field names and strings appear verbatim in the file)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.experiment import tracking
from bench.run import main

TINY = ["study=smoke", "archs=[lstm]", "train.steps=6", "train.val_every=3", "train.batch_size=8",
        "data.test_per_family=4", "data.val_size=8", "model.d_model=16", "model.num_layers=1", "progress=false",
        "search.steps=6", "search.space.d_model=[16,32]", "search.space.num_layers=[1,2]", "report=false"]
ENV_BEFORE = dict(os.environ)
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: any attempt to reach W&B fails at once


@pytest.fixture
def unconfigured(tmp_path, monkeypatch):
    """A user who never set W&B up: no WANDB_MODE, no key, no netrc, and no server reachable."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)


def offline_runs(out: Path) -> list[Path]:
    return sorted((out / "wandb").glob("offline-run-*"))


def records(run_dir: Path) -> bytes:
    return next(run_dir.glob("run-*.wandb")).read_bytes()


def test_mode_rules(tmp_path, monkeypatch, unconfigured):
    assert tracking.wandb_mode() == "offline"  # not configured: offline, never a login prompt
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert tracking.wandb_mode() == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1\n  login user\n  password " + "p" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert tracking.wandb_mode() == "online"  # `wandb login` wrote a key for the configured host
    for mode in ("offline", "disabled", "online"):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert tracking.wandb_mode() == mode  # the user's WANDB_MODE always wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert tracking.wandb_mode() == "offline"


def test_wandb_folders_point_into_out_dir_while_a_run_lasts(tmp_path, monkeypatch):
    for key in tracking.WANDB_DIRS:
        monkeypatch.delenv(key, raising=False)  # monkeypatch restores whatever was there
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "mine"))  # the user's own choice wins
    out = tmp_path / "out"
    previous = tracking.point_wandb_into(out)
    assert os.environ["WANDB_DIR"] == str(out.resolve()) and os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "mine")
    for key in ("WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "TMPDIR"):
        assert Path(os.environ[key]).is_relative_to(out.resolve() / "wandb") and Path(os.environ[key]).is_dir()
    tracking.restore_env(previous)
    assert not {"WANDB_DIR", "WANDB_CONFIG_DIR", "TMPDIR"} & set(os.environ)
    assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "mine")


class FakeWandbRun:
    """What WandbRun touches of a wandb run, recording whether it was finished."""

    id, dir, finished = "fake", None, 0

    def __init__(self) -> None:
        self.summary: dict = {}

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        self.finished += 1


def test_overlapping_runs_keep_the_folders_until_the_last_one_finishes(tmp_path, monkeypatch):
    """A mutual cohort opens K runs at once: the folders stay in out_dir until the last one closes,
    then the environment is as before; closing a run twice (a failed slot's clean-up) is harmless."""
    wandb = pytest.importorskip("wandb")
    for key in tracking.WANDB_DIRS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeWandbRun())
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    runs = [tracking.start_run("wandb", out_dir=out, project="p", study="s", name=f"s/{a}", stage="mutual", arch=a,
                               tags=[], config={}) for a in ("lstm", "mamba", "s4d")]
    runs[0].finish()
    assert os.environ["WANDB_DIR"] == str(out.resolve())  # two runs still open
    runs[1].finish(failure="diverged")
    runs[1].finish(failure="again")
    assert runs[1]._run.finished == 1 and os.environ["TMPDIR"].startswith(str(out.resolve()))
    runs[2].finish()
    assert not set(tracking.WANDB_DIRS) & set(os.environ)


@pytest.mark.slow
def test_offline_by_default_one_run_per_trial_and_final_run(tmp_path, unconfigured):
    out = tmp_path / "out"
    assert main([*TINY, "search.n_trials=2", "seeds=[0,1]", f"out_dir={out}"]) == 0
    runs = offline_runs(out)
    assert len(runs) == 4  # two search trials, two final runs
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # wandb wrote nothing beside out_dir (the cwd here)
    assert not {"WANDB_DIR", "WANDB_CACHE_DIR", "TMPDIR"} & set(os.environ) - set(ENV_BEFORE)  # restored
    trials = pd.read_parquet(out / "trials.parquet")
    assert set(trials.wandb_run_id) == {r.name.rsplit("-", 1)[1] for r in runs}  # trial -> its W&B run
    for stage, n in (("search", 2), ("final", 2)):
        ids = trials.loc[trials.stage == stage, "wandb_run_id"]
        body = [records(r) for r in runs if r.name.rsplit("-", 1)[1] in set(ids)]
        assert len(body) == n
        for b in body:
            assert b"smoke" in b and b"lstm" in b and stage.encode() in b and b"phase1" in b  # group, tags
            assert b"tokens" in b and b"val_loss" in b and b"val_accuracy" in b  # history against tokens
            assert (b"test_accuracy" in b) == (stage == "final")  # the final run's test scores


@pytest.mark.slow
def test_failure_reason_reaches_the_run(tmp_path, unconfigured):
    out = tmp_path / "out"
    assert main([*TINY, "search.n_trials=0", "train.lr=1e30", "train.warmup_max_frac=0", f"out_dir={out}"]) == 0
    (run,) = offline_runs(out)
    assert b"failure_reason" in records(run) and b"non-finite" in records(run)


@pytest.mark.slow
def test_tracking_none_writes_nothing(tmp_path, unconfigured):
    out = tmp_path / "out"
    assert main([*TINY, "search.n_trials=1", "tracking=none", f"out_dir={out}"]) == 0
    assert not (out / "wandb").exists() and not (tmp_path / "wandb").exists()
    assert "wandb_run_id" not in pd.read_parquet(out / "trials.parquet")


def test_unknown_tracking_is_a_one_line_error(tmp_path, capsys):
    assert main([*TINY, "tracking=mlflow", f"out_dir={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: tracking must be wandb or none, got 'mlflow'"


@pytest.mark.slow
def test_configured_but_unreachable_falls_back_to_offline_once(tmp_path, unconfigured, monkeypatch):
    """A key but no network: wandb alone would wait 90 s per run; we wait INIT_TIMEOUT_S once, then
    log offline. Run in a subprocess with a hard limit, so a hang fails the test instead of CI."""
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.run", *TINY, "search.n_trials=1", f"out_dir={out}"],
                          capture_output=True, text=True, timeout=tracking.INIT_TIMEOUT_S * 2 + 60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("W&B online start failed") == 1  # the second run did not wait again
    assert len(offline_runs(out)) == 2
