"""The study engine: constraints by construction, memory pruning, identical data for every
architecture, exact trial counts under kills and concurrency, failure records, the dashboard."""

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from bench.data import seen_in
from bench.experiment import storage
from bench.experiment import trial as engine
from bench.experiment.config import ConfigError, compose_config
from bench.experiment.context import Context
from bench.experiment.pool import mark_study_dir
from bench.experiment.search import (
    ISO_TOLERANCE,
    defaults,
    iso_params,
    iso_target,
    size_of,
    suggest,
    trial_config,
    used_hparams,
)
from bench.experiment.worker import Worker
from bench.memory import model_on_meta
from bench.models import build_model, mixer_names
from bench.run import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=6", "train.val_every=3", "train.batch_size=8", "data.test_per_family=4", "data.val_size=8",
        "model.d_model=16", "model.num_layers=1", "model.d_state=8", "progress=false",
        "search.space.d_model=[16,32]", "search.space.d_state=[4,16]", "search.space.num_layers=[1,2]",
        "search.steps=6", "report=false"]


def tiny(tmp_path: Path, *overrides: str):
    return compose_config(["study=smoke", *TINY, f"out_dir={tmp_path / 'out'}", *overrides])


def trials(cfg, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=cfg.storage_url).get_trials()


class RandomTrial:
    """Stands in for an Optuna trial: uniform draws, so thousands of them cost nothing."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_int(self, name, low, high):
        return self.rng.randint(low, high)

    def suggest_float(self, name, low, high, log=False):
        return self.rng.uniform(low, high)

    def suggest_categorical(self, name, choices):
        return self.rng.choice(choices)


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("arch", mixer_names())
def test_sampled_configurations_never_violate_the_constraints(arch):
    cfg = compose_config(["study=smoke", "search.space.d_model=[8,256]", "search.space.d_state=[2,64]",
                          "search.space.num_layers=[1,6]", "search.space.d_conv=[2,8]"])
    rng, sp = random.Random(0), cfg.search.space
    seen = set()
    for _ in range(3000):
        p = suggest(RandomTrial(rng), arch, cfg)
        assert is_pow2(p["d_model"]) and sp.d_model[0] <= p["d_model"] <= sp.d_model[1]
        assert sp.num_layers[0] <= p["num_layers"] <= sp.num_layers[1] and sp.lr[0] <= p["lr"] <= sp.lr[1]
        assert set(p) - {"d_model", "num_layers", "lr"} == set(used_hparams(arch))  # only what the mixer uses
        if "d_state" in p:
            assert is_pow2(p["d_state"]) and sp.d_state[0] <= p["d_state"] <= min(sp.d_state[1], p["d_model"])
        if "d_conv" in p:
            assert is_pow2(p["d_conv"]) and sp.d_conv[0] <= p["d_conv"] <= sp.d_conv[1]
        if "expand" in p:
            assert p["expand"] in sp.expand
        seen.add(tuple(sorted((k, v) for k, v in p.items() if k != "lr")))
    for params in list(seen)[:40]:  # and each sampled configuration builds
        model_on_meta(trial_config(cfg, dict(params)).model_config(arch))
    # an Optuna study with TPE draws through the same code
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    for _ in range(30):
        t = study.ask()
        p = suggest(t, arch, cfg)
        assert p.get("d_state", 0) <= p["d_model"] and is_pow2(p["d_model"])
        study.tell(t, float(p["d_model"]))


def test_a_memory_infeasible_configuration_is_pruned_without_training(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "archs=[transformer]", "search.n_trials=2", "memory_budget=0.00001")
    monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("an over-budget trial must not train"))
    monkeypatch.setattr(engine, "build_model", lambda *a, **k: pytest.fail("nor allocate its model"))
    Worker(replace(cfg, stage="search"), torch.device("cpu"), log=lambda m: None).run()
    done = trials(cfg, "smoke/transformer")
    assert [t.state for t in done] == [optuna.trial.TrialState.PRUNED] * 2
    assert all("exceeds memory_budget" in t.user_attrs["pruned_reason"] for t in done)
    assert all(t.user_attrs["mem_estimate_gib"] > 0.00001 for t in done)


@pytest.mark.slow
def test_an_over_budget_final_configuration_fails_with_its_reason_and_the_study_ends(tmp_path):
    out = tmp_path / "out"
    assert main(["study=smoke", *TINY, "archs=[lstm]", "seeds=[0,1]", "search.n_trials=0", "memory_budget=0.00001",
                 f"out_dir={out}"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs.status == "failed").all() and len(runs) == 2
    assert runs.reason.str.contains("exceeds memory_budget").all()


def test_every_architecture_sees_byte_identical_batches_and_validation_sets(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "archs=[transformer,lstm]", "search.n_trials=1", "seeds=[3]")
    seen: dict[tuple[str, int], list[str]] = {}
    real_train = engine.train

    def spy(model, tcfg, stream, validate, *args, **kwargs):
        arch = "transformer" if "Transformer" in repr(model) else "lstm"
        digest = [hashlib.sha256(stream.batch(s).numpy().tobytes()).hexdigest() for s in range(tcfg.steps)]
        seen[(arch, stream.seed)] = digest
        return real_train(model, tcfg, stream, validate, *args, **kwargs)

    monkeypatch.setattr(engine, "train", spy)
    worker = Worker(cfg, torch.device("cpu"), log=lambda m: None)
    worker.run()
    assert seen[("transformer", 0)] == seen[("lstm", 0)]  # search: search.seed
    assert seen[("transformer", 3)] == seen[("lstm", 3)]  # final: the seed
    assert seen[("transformer", 0)] != seen[("transformer", 3)]
    assert {s for (s, _) in worker.ctx.val_cache} == {0, 3}  # one validation cache shared by both archs


def test_an_exception_in_a_slot_fails_its_trial_with_the_reason_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    real_build, calls = engine.build_model, []

    def broken(mcfg):
        calls.append(1)
        if len(calls) in (2, 3):  # the second search trial and the final run
            raise RuntimeError("boom in build")
        return real_build(mcfg)

    monkeypatch.setattr(engine, "build_model", broken)
    out = tmp_path / "out"
    assert main(["study=smoke", *TINY, "archs=[lstm]", "search.n_trials=2", f"out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "[2/3] lstm search t1: failed, boom in build" in printed
    assert "[3/3] lstm final seed 0: failed, boom in build" in printed
    table = pd.read_parquet(out / "trials.parquet")
    assert "RUNNING" not in set(table.state) and (table.state == "FAIL").sum() == 2
    assert set(table[table.state == "FAIL"].failure_reason) == {"boom in build"}
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(runs.status) == ["failed"] and list(runs.reason) == ["boom in build"]


def test_an_out_dir_that_becomes_unwritable_mid_run_is_one_error_line_and_exit_1(tmp_path, monkeypatch, capsys):
    out, real_build, calls = tmp_path / "out", engine.build_model, []

    def vanish(mcfg):  # what root cannot be kept from by permissions: the directory replaced by a file
        calls.append(1)
        if len(calls) == 2:
            out.rename(tmp_path / "moved")
            out.write_text("not a directory any more")
        return real_build(mcfg)

    monkeypatch.setattr(engine, "build_model", vanish)
    assert main(["study=smoke", *TINY, "archs=[lstm]", "search.n_trials=2", f"out_dir={out}"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write to out_dir {out}") and "resume" in err[0]
    assert "Traceback" not in captured.out + captured.err


def test_a_diverging_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "archs=[transformer]", "search.n_trials=3")
    real_build, calls = engine.build_model, []

    def poisoned(mcfg):
        model = real_build(mcfg)
        calls.append(1)
        if len(calls) == 2:  # the second search trial produces NaN logits
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(engine, "build_model", poisoned)
    Worker(cfg, torch.device("cpu"), log=lambda m: None).run()
    search = trials(cfg, "smoke/transformer")
    states = [t.state.name for t in search]
    assert states.count("FAIL") == 1 and len(search) == 3
    failed = next(t for t in search if t.state.name == "FAIL")
    assert "non-finite" in failed.user_attrs["failure_reason"]
    assert len(trials(cfg, "smoke/transformer/final")) == 1  # the final stage still ran


@pytest.mark.slow
def test_rerunning_resumes_and_stops_at_exactly_the_configured_counts(tmp_path):
    args = ["study=smoke", *TINY, "archs=[lstm]", "search.n_trials=2", f"out_dir={tmp_path / 'out'}"]
    assert main(args) == 0
    first = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert main(args) == 0  # nothing left to do: same trials, same results
    again = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(again) == len(first) == 3
    assert main([*args[:-2], "search.n_trials=3", args[-1]]) == 0  # a larger count adds exactly one trial
    grown = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert (grown.stage == "search").sum() == 3 and (grown.stage == "final").sum() == 1


@pytest.mark.slow
def test_rerunning_a_finished_study_with_nothing_changed_rebuilds_nothing_and_says_so(tmp_path, monkeypatch, capsys):
    out, reports = tmp_path / "out", tmp_path / "report"
    args = ["study=smoke", *TINY, "archs=[lstm,transformer]", "report=true", f"report_dir={reports}",
            f"out_dir={out}"]
    start = time.perf_counter()
    assert main(args) == 0
    first = time.perf_counter() - start
    files = [p for d in (out, reports) for p in sorted(d.rglob("*")) if p.is_file()]
    before = {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}
    capsys.readouterr()

    def never(*args, **kwargs):
        raise AssertionError("rebuilt although nothing changed")

    monkeypatch.setattr("bench.run.collect", never)
    monkeypatch.setattr("bench.report.build_report", never)
    start = time.perf_counter()
    assert main(args) == 0
    assert time.perf_counter() - start < first / 3
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"study smoke: nothing changed since the last run (tables in {out}; report in {reports})"
    assert {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files} == before
    assert sorted(p for d in (out, reports) for p in d.rglob("*") if p.is_file()) == files


@pytest.mark.slow
def test_a_study_run_under_another_configuration_is_refused(tmp_path, capsys):
    args = ["study=smoke", *TINY, "archs=[lstm]", f"out_dir={tmp_path / 'out'}"]
    assert main(args) == 0
    assert main([*args, "train.lr=0.05"]) == 2
    assert "different configuration (train.lr differ)" in capsys.readouterr().err


def test_a_knob_added_since_with_its_default_does_not_invalidate_a_stored_study(tmp_path):
    """A study stored before a mixer was registered (its fingerprint lacks that mixer's knobs) is
    still the same study; the same knob set to a non-default value is a difference."""
    cfg = tiny(tmp_path, "archs=[lstm]")
    mark_study_dir(cfg)
    db = storage.open_storage(cfg)
    study = storage.load_study(db, cfg, "s/lstm")
    old = json.loads(study.user_attrs["config"])
    del old["model"]["mixer"]["transformer"]  # as if transformer had been registered after this ran
    study.set_user_attr("config", json.dumps(old))
    study.set_user_attr("config_digest", storage.digest(old))
    storage.load_study(db, cfg, "s/lstm")  # accepted: the new key holds its default
    changed = tiny(tmp_path, "archs=[lstm]", "model.mixer.transformer.n_heads=4")
    with pytest.raises(ConfigError, match=r"model\.mixer\.transformer differ"):
        storage.load_study(db, changed, "s/lstm")
    with pytest.raises(ConfigError, match=r"train\.lr differ"):
        storage.load_study(db, tiny(tmp_path, "archs=[lstm]", "train.lr=0.05"), "s/lstm")


def test_unreachable_storage_is_a_one_line_error(tmp_path, capsys):
    bad = "postgresql+psycopg2://nobody:x@127.0.0.1:9/none"
    assert main(["study=smoke", *TINY, "archs=[lstm]", f"out_dir={tmp_path / 'out'}", f"storage={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: storage") and "unreachable" in err and len(err.splitlines()) == 1


def run_bench(tmp_path: Path, *args: str, wait: bool = True, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bench.run", *args]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def counted(out: Path) -> pd.DataFrame:
    t = pd.read_parquet(out / "trials.parquet")
    return t[t.counted].groupby(["stage", "arch"]).size()


@pytest.mark.slow
def test_sigkill_mid_trial_then_the_same_command_finishes_exactly_with_nothing_lost(tmp_path):
    out = tmp_path / "out"
    args = ["study=smoke", *TINY, "archs=[transformer,lstm]", "search.n_trials=3", "search.steps=400",
            "train.val_every=20", "train.steps=40", "heartbeat=1", f"out_dir={out}"]
    proc = run_bench(tmp_path, *args, wait=False)
    ckpts = out / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once the second trial of transformer has a checkpoint
        if ckpts.exists() and any(p.name == "trial-1.pt" for p in ckpts.rglob("*.pt")):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no checkpoint appeared")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = optuna.load_study(study_name="smoke/transformer", storage=f"sqlite:///{out / 'optuna.db'}").get_trials()
    completed_before = {t.number: t.value for t in before if t.state.name == "COMPLETE"}
    assert completed_before and any(t.state.name == "RUNNING" for t in before)

    done = run_bench(tmp_path, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_parquet(out / "trials.parquet")
    assert counted(out).to_dict() == {("final", "lstm"): 1, ("final", "transformer"): 1,
                                      ("search", "lstm"): 3, ("search", "transformer"): 3}
    after = table[(table.arch == "transformer") & (table.stage == "search")].set_index("number")
    for number, value in completed_before.items():  # completed trials kept, untouched
        assert after.loc[number, "state"] == "COMPLETE" and after.loc[number, "value"] == value
    retried = after[after.resumed_from > 0]
    assert len(retried) == 1 and retried.iloc[0].resumed_from % 20 == 0  # resumed from its checkpoint
    assert not list((out / "checkpoints").rglob("*.pt"))  # finished trials clean up their checkpoints


@pytest.mark.slow
def test_two_workers_on_sqlite_reach_the_exact_counts(tmp_path):
    out = tmp_path / "out"
    done = run_bench(tmp_path, "study=smoke", *TINY, "archs=[transformer,lstm]", "search.n_trials=5",
                     "seeds=[0,1]", "workers=2", f"out_dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert counted(out).to_dict() == {("final", "lstm"): 2, ("final", "transformer"): 2,
                                      ("search", "lstm"): 5, ("search", "transformer"): 5}
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs.seed) == [0, 0, 1, 1] and (runs.status == "ok").all()
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 14 and {line.rsplit("(worker ", 1)[1] for line in lines} == {"0)", "1)"}  # both worked
    assert max(int(line[1:].split("/")[0]) for line in lines) == 14 and all("/14] " in line for line in lines)


def worker_pids(parent: int) -> list[int]:
    """The spawned workers of a `bench.run` process (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.slow
def test_a_lost_worker_leaves_its_slots_to_the_others_and_the_study_ends_with_one_line(tmp_path):
    out = tmp_path / "out"
    proc = run_bench(tmp_path, "study=smoke", *TINY, "archs=[transformer,lstm]", "search.n_trials=3",
                     "search.steps=400", "train.val_every=20", "train.steps=40", "heartbeat=1", "workers=2",
                     f"out_dir={out}", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill a worker once both are mid-trial (each has a checkpoint)
        if len(list((out / "checkpoints").rglob("*.pt"))) >= 2 and len(worker_pids(proc.pid)) == 2:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the workers never both had a trial under way")
    os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    lost = [line for line in output.splitlines() if "was lost" in line]
    assert len(lost) == 1 and "killed by SIGKILL" in lost[0] and "Traceback" not in output
    assert counted(out).to_dict() == {("final", "lstm"): 1, ("final", "transformer"): 1,
                                      ("search", "lstm"): 3, ("search", "transformer"): 3}
    assert (pd.read_parquet(out / "runs.parquet").status == "ok").all() and (out / "meta.yaml").exists()
    assert len(pd.read_parquet(out / "results.parquet"))


POSTGRES = os.environ.get("ARCHBENCH_TEST_POSTGRES", "postgresql+psycopg2://archbench:archbench@127.0.0.1:5432/archbench")


def postgres_or_skip() -> str:
    try:
        storage.open_storage(compose_config(["study=smoke", f"storage={POSTGRES}"]))
    except Exception as e:
        pytest.skip(f"no PostgreSQL server reachable at {POSTGRES} ({str(e)[:120]}); .ci/run starts one")
    return POSTGRES


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgresql_reach_the_exact_counts(tmp_path):
    url = postgres_or_skip()
    for name in optuna.get_all_study_names(url):
        if name.startswith("smoke/"):
            optuna.delete_study(study_name=name, storage=url)
    out = tmp_path / "out"
    done = run_bench(tmp_path, "study=smoke", *TINY, "archs=[transformer,lstm]", "search.n_trials=4",
                     "workers=2", f"storage={url}", f"out_dir={out}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert counted(out).to_dict() == {("final", "lstm"): 1, ("final", "transformer"): 1,
                                      ("search", "lstm"): 4, ("search", "transformer"): 4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_dashboard_serves_the_study(tmp_path):
    out = tmp_path / "out"
    assert main(["study=smoke", *TINY, "archs=[lstm]", "search.n_trials=1", f"out_dir={out}"]) == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.dashboard", "study=smoke", f"out_dir={out}", "--port",
                             str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    listed = json.load(r)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("dashboard did not answer")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    names = {s["study_name"] for s in listed["study_summaries"]}
    assert names == {"smoke/lstm", "smoke/lstm/final"}


def test_dashboard_without_a_study_is_a_one_line_error(tmp_path, capsys):
    from bench.dashboard import main as dashboard

    assert dashboard(["study=smoke", f"out_dir={tmp_path / 'none'}"]) == 2
    assert "run it first" in capsys.readouterr().err
    assert dashboard(["study=smoke", "--port", "x"]) == 2


@pytest.mark.parametrize("measure", ["params", "state"])
def test_iso_sizes_land_within_10_percent_of_each_other(measure):
    cfg = compose_config(["study=phase2", f"iso={measure}"])
    target = iso_target(cfg)
    sizes = {}
    for arch in cfg.arch_list:
        params = iso_params(cfg, arch, defaults(arch, cfg), target)
        sizes[arch] = size_of(trial_config(cfg, params), arch, measure)
        assert abs(sizes[arch] - target) <= ISO_TOLERANCE * target, (arch, sizes[arch], target)
    assert max(sizes.values()) <= 1.10 * min(sizes.values()), sizes


@pytest.mark.slow
def test_iso_final_runs_train_the_sized_models(tmp_path):
    out = tmp_path / "out"
    assert main(["study=smoke", *TINY, "archs=[transformer,lstm]", "iso=params", "iso_target=20000",
                 f"out_dir={out}"]) == 0
    runs = pd.read_parquet(out / "runs.parquet").set_index("arch")
    assert ((runs.num_params - 20000).abs() <= 2000).all(), runs.num_params
    assert runs.loc["transformer", "d_model"] != runs.loc["lstm", "d_model"]


@pytest.mark.slow
def test_stage_search_then_stage_final(tmp_path, capsys):
    args = ["study=smoke", *TINY, "archs=[lstm]", "search.n_trials=2", f"out_dir={tmp_path / 'out'}"]
    assert main([*args, "stage=final"]) == 2
    assert "the search of lstm is unfinished" in capsys.readouterr().err
    assert main([*args, "stage=search"]) == 0
    assert not (tmp_path / "out" / "results.parquet").exists()
    assert main([*args, "stage=final"]) == 0
    t = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert t.groupby("stage").size().to_dict() == {"final": 1, "search": 2}


def test_a_search_without_a_completed_trial_fails_its_final_runs_with_the_reason(tmp_path):
    cfg = tiny(tmp_path, "archs=[lstm]", "search.n_trials=2", "memory_budget=0.00001")
    Worker(cfg, torch.device("cpu"), log=lambda m: None).run()
    (final,) = trials(cfg, "smoke/lstm/final")
    assert final.state.name == "FAIL" and "no search trial of lstm completed" in final.user_attrs["failure_reason"]
    run = json.loads((cfg.output_dir / "final" / "lstm-seed0.run.json").read_text())
    assert run["status"] == "failed" and "no search trial" in run["reason"]


@pytest.mark.parametrize("worse_from", [2, 3])
def test_trials_are_pruned_mid_budget_but_never_at_their_last_validation(tmp_path, monkeypatch, worse_from):
    cfg = tiny(tmp_path, "archs=[lstm]", "search.n_trials=3", "search.steps=9", "search.startup_trials=1",
               "search.warmup_validations=0", "stage=search")
    calls = {"n": 0}

    def validator(self, seed):
        def validate(model, index, epoch):  # losses 3, 2, 1; trial k > 0 is k worse from validation `worse_from` on
            calls["n"] += index == 1
            k = calls["n"] - 1
            return {"val_loss": 4.0 - index + k * (index >= worse_from)}
        return validate

    monkeypatch.setattr(Context, "validator", validator)
    Worker(cfg, torch.device("cpu"), log=lambda m: None).run()
    done = trials(cfg, "smoke/lstm")
    if worse_from == 2:  # worse at step 6 of 9: pruned there
        assert [(t.state.name, t.user_attrs["steps"]) for t in done] == [("COMPLETE", 9), ("PRUNED", 6), ("PRUNED", 6)]
    else:  # worse only at the last validation: the trial is finished, so it completes with its value
        assert [(t.state.name, t.user_attrs["steps"]) for t in done] == [("COMPLETE", 9)] * 3


@pytest.mark.slow
def test_every_seed_of_the_final_stage_is_its_own_trial_with_its_intermediate_values(tmp_path):
    """The final stage trains each seed of a configuration as its own run and trial (the stacked
    multi-seed path is gone: runs.parquet has no `vectorised` column)."""
    args = ["study=smoke", *TINY, "archs=[transformer,s4d]", "seeds=[0,1,2]"]
    assert main([*args, f"out_dir={tmp_path / 'on'}"]) == 0
    runs = pd.read_parquet(tmp_path / "on" / "runs.parquet")
    assert len(runs) == 6 and (runs.status == "ok").all()
    assert "vectorised" not in runs
    cfg = tiny(tmp_path, "archs=[transformer,s4d]", "seeds=[0,1,2]", f"out_dir={tmp_path / 'on'}")
    final = trials(cfg, "smoke/s4d/final")
    assert [t.state.name for t in final] == ["COMPLETE"] * 3
    assert sorted(t.user_attrs["seed"] for t in final) == [0, 1, 2]
    assert all(len(t.intermediate_values) == 2 for t in final)  # validations at steps 3 and 6


@pytest.mark.slow
def test_the_mutual_stage_with_weight_zero_reproduces_the_final_runs_exactly(tmp_path):
    """mutual.weight=0 is the joint loop without its KL term: each member's test scores equal its
    independent final run's, bit for bit; a positive weight changes them; a changed weight is refused."""
    args = ["study=smoke", *TINY, "archs=[lstm,transformer]", "seeds=[0,1]"]
    assert main([*args, "mutual.weight=0", f"out_dir={tmp_path / 'zero'}"]) == 0
    keys = ["arch", "seed", "split", "length", "phase", "family", "position", "metric"]
    out = tmp_path / "zero"
    final = pd.read_parquet(out / "results.parquet")
    final = final[final.arch.isin(["lstm", "transformer"])].set_index(keys).value.sort_index()
    mutual = pd.read_parquet(out / "mutual.parquet").set_index(keys).value.sort_index()
    pd.testing.assert_series_equal(mutual, final, check_exact=True)
    runs = pd.read_parquet(out / "mutual_runs.parquet")
    assert (runs.stage == "mutual").all() and (runs.status == "ok").all() and len(runs) == 4
    assert sorted((out / "models").glob("*-mutual.pt")) and (out / "final" / "lstm-seed1-mutual.run.json").exists()
    t = pd.read_parquet(out / "trials.parquet")
    assert t.groupby("stage").size().to_dict() == {"final": 4, "mutual": 2, "search": 4}
    kl = pd.read_parquet(out / "mutual_kl.parquet").set_index(["training", "seed", "arch_a", "arch_b"]).kl
    assert len(kl) == 2 * 2 * 2 and (kl > 0).all()  # (alone, jointly) x seeds x ordered pairs
    pd.testing.assert_series_equal(kl["jointly"], kl["alone"], check_exact=True)  # the same models

    assert main([*args, "mutual.weight=2", f"out_dir={tmp_path / 'two'}"]) == 0
    pulled = pd.read_parquet(tmp_path / "two" / "mutual.parquet").set_index(keys).value.sort_index()
    assert not pulled.equals(mutual)
    assert main([*args, "mutual.weight=1", f"out_dir={tmp_path / 'two'}"]) == 2  # not the study that ran


@pytest.mark.parametrize("override, message", [
    ("mutual.weight=-1", "mutual.weight must be a non-negative number"),
    ("multiseed=off", "multiseed"),  # the stacked multi-seed path is gone, and its key with it
])
def test_bad_mutual_and_multiseed_settings_are_one_line_errors(tmp_path, capsys, override, message):
    assert main(["study=smoke", *TINY, "archs=[lstm,s4d]", override, f"out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_mutual_learning_needs_two_architectures(tmp_path, capsys):
    assert main(["study=smoke", *TINY, "archs=[lstm]", "mutual.weight=1", f"out_dir={tmp_path / 'out'}"]) == 2
    assert "needs at least two archs" in capsys.readouterr().err


def test_one_run_record_feeds_run_json_runs_parquet_and_trial_attributes(tmp_path):
    """RunRecord's fields are runs.parquet's columns (in order; an optional one only when some run
    has it); its "plan" and "outcome" fields are a trial's attributes; run.json round-trips it."""
    from bench.experiment.records import COLUMNS, RunFiles, RunRecord, runs_table

    assert COLUMNS[:26] == ["study", "stage", "arch", "seed", "replicate", "status", "reason", "d_model",
                            "num_layers", "d_state", "d_conv", "expand", "lr", "num_params", "state_size", "steps",
                            "tokens", "wall_s", "best_step", "stopped_early", "mem_estimate_gib", "mem_measured_gib",
                            "impl", "device", "search_trial", "trial"]
    assert COLUMNS[26:] == sorted(COLUMNS[26:])  # the optional tail, alphabetical as runs.parquet always had it
    ok = RunRecord(study="s", arch="lstm", seed=0, d_model=16, steps_budget=6, steps=6, val_loss=1.5,
                   status="ok", reason="")
    failed = RunRecord(study="s", arch="s4d", seed=0, failure_reason="no search trial", status="failed")
    table = runs_table([ok, failed], "s")
    assert list(table.columns) == COLUMNS[:26] + ["failure_reason", "steps_budget", "val_loss"]
    assert ok.attrs("plan", "outcome") == {"arch": "lstm", "seed": 0, "replicate": 0, "d_model": 16,
                                           "steps_budget": 6, "steps": 6, "val_loss": 1.5}  # never study, stage, ...
    files = RunFiles(tmp_path, "lstm", 0)
    files.write(ok, [], None, None)
    assert RunRecord.load(files.run_json) == ok
    assert files.run_json == tmp_path / "final" / "lstm-seed0.run.json"
    assert RunFiles(tmp_path, "lstm", 0, "mutual").weights == tmp_path / "models" / "lstm-seed0-mutual.pt"
    again = RunFiles(tmp_path, "lstm", 0, "mutual", replicate=2)  # a search replicate r > 0: its own files
    assert again.weights == tmp_path / "models" / "lstm-seed0-r2-mutual.pt"
    predictions = RunFiles(tmp_path, "lstm", 0, replicate=1).predictions
    assert predictions == tmp_path / "final" / "lstm-seed0-r1.predictions.parquet"
    legacy = {**ok.row(), "vectorised": True, "fallback": None}  # run.json of the removed stacked stage
    assert RunRecord.from_row(legacy) == ok


def test_the_stored_fingerprint_leaves_out_the_derived_model_keys(tmp_path):
    """model.arch and model.max_len are set per architecture: no part of what a study must match, so
    studies stored before Config.model became the backbone's ModelConfig still load."""
    cfg = tiny(tmp_path, "archs=[lstm]")
    for stage in ("search", "final", "mutual"):
        model = storage.fingerprint(cfg, stage)["model"]
        assert "arch" not in model and "max_len" not in model and "mixer" in model


def test_the_validator_selects_on_the_fixed_set_and_monitors_fresh_sets(tmp_path):
    """val_* score the seed's fixed validation set (the same at every validation, disjoint from every
    test row); fresh_* score that validation's own fresh sequences (the design's monitor)."""
    cfg = tiny(tmp_path, "data.val_fixed_size=40")
    ctx = Context.build(cfg, torch.device("cpu"))
    fixed = ctx.validation(0)
    assert len(fixed) == 40 and fixed is ctx.validation(0)
    assert not seen_in(fixed.seqs, torch.cat([s.seqs for s in ctx.sets.values() if s.seqs.shape[1] == 8])).any()
    torch.manual_seed(0)
    model = build_model(cfg.model_config("lstm")).eval()
    validate = ctx.validator(0)
    first, second = validate(model, 1, 0.0), validate(model, 2, 1.0)
    names = {f"{p}_{m}" for p in ("val", "fresh") for m in ("loss", "ce", "accuracy", "distance_error")}
    assert set(first) == set(second) == names
    assert all(first[k] == second[k] for k in names if k.startswith("val_"))
    assert first["fresh_loss"] != second["fresh_loss"]  # another fresh draw per validation
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(fixed.seqs[:, :-1]).flatten(0, 1), fixed.seqs[:, 1:].flatten())
    assert first["val_ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert {s for (s, _) in ctx.val_cache} == {0} and len(ctx.val_cache) == 2


def test_a_seeds_iid_rows_are_split_into_seen_and_unseen_by_its_training_budget(tmp_path):
    cfg = tiny(tmp_path, "train.steps=40", "data.test_per_family=30")
    ctx = Context.build(cfg, torch.device("cpu"))
    budget = ctx.budget(0)
    assert budget.shape == (40 * 8, 8)
    splits = ctx.splits(0)
    assert list(splits) == ["iid_seen", "iid_unseen", "ood", "length_16", "length_32"]
    # iid_unseen: the reserved rows (30 per family, unseen for every seed) and the iid rows never drawn
    assert len(splits["iid_seen"]) + len(splits["iid_unseen"]) == len(ctx.test) + 3 * 30 == 2 * 3 * 30
    assert torch.equal(splits["iid_unseen"].seqs[:90], ctx.sets["unseen"].seqs)
    assert len(splits["iid_seen"]) > 0 and seen_in(splits["iid_seen"].seqs, budget).all()
    assert not seen_in(splits["iid_unseen"].seqs, budget).any()
    assert set(splits["iid_unseen"].family_names()) == {"constant", "arithmetic", "alternating"}
    from bench.experiment.reference import splits_table
    counts = splits_table(ctx).query("seed == 0").groupby("split").n_sequences.sum()
    assert counts.to_dict() == {k: len(splits[k]) for k in ("iid_seen", "iid_unseen", "ood")} | {"length": 2 * 90}
    assert [splits[k].seqs.shape[1] for k in ("ood", "length_16", "length_32")] == [8, 16, 32]
    assert not torch.equal(ctx.seen(0), ctx.seen(1))  # another seed, another budget


def test_the_references_score_every_split_and_the_memoriser_recalls_what_it_saw(tmp_path):
    from bench.data.lookup import LookupTable
    from bench.experiment.reference import References, lookup_rows

    cfg = tiny(tmp_path, "train.steps=60", "data.test_per_family=40")
    ctx = Context.build(cfg, torch.device("cpu"))
    rows = pd.concat([References(ctx).rows(0), lookup_rows(ctx, 0, LookupTable.fit(ctx.budget(0)))])
    overall = rows[rows.phase.isna() & (rows.family == "all") & rows.position.isna()]
    keys = {("iid_seen", 8), ("iid_unseen", 8), ("ood", 8), ("length", 16), ("length", 32)}
    for arch in ("baseline_uniform", "baseline_last_value", "baseline_extrapolate", "baseline_lookup", "ceiling"):
        assert set(zip(*overall[overall.arch == arch][["split", "length"]].to_numpy().T, strict=True)) == keys, arch
    acc = overall[overall.metric == "accuracy"].set_index(["arch", "split", "length"]).value
    assert acc["baseline_lookup", "iid_seen", 8] >= acc["baseline_lookup", "iid_unseen", 8]
    assert acc["baseline_uniform"].eq(1 / 256).all()
    assert set(rows[rows.arch == "ceiling"].metric) == {"accuracy", "distance_error", "loss"}
    assert "loss" not in set(rows[rows.arch == "baseline_lookup"].metric)
    n = overall[overall.metric == "accuracy"].groupby("split").n.max()
    assert n["iid_seen"] + n["iid_unseen"] == 2 * 3 * 40 * 7 and n["ood"] == 3 * 40 * 7  # iid + reserved rows


def test_the_final_run_keeps_the_weights_best_on_the_fixed_validation_set(tmp_path):
    """Early stopping reads val_loss on the fixed validation set: best_step is that curve's best
    validation, and the stored weights score exactly that loss on the fixed set; fresh_* are logged too."""
    from bench.experiment.collect import stored_model
    from bench.experiment.context import validation_scores
    from bench.experiment.records import RunFiles, RunRecord
    from bench.train import EarlyStopping

    cfg = tiny(tmp_path, "archs=[lstm]", "search.n_trials=0", "train.steps=15", "train.lr=0.05",
               "data.val_fixed_size=64")
    Worker(cfg, torch.device("cpu"), log=lambda m: None).run()
    files = RunFiles(cfg.output_dir, "lstm", 0)
    history, record = pd.read_parquet(files.history), RunRecord.load(files.run_json)
    assert {f"{p}_{m}" for p in ("val", "fresh") for m in ("loss", "ce", "accuracy", "distance_error")} \
        <= set(history.columns) and list(history.step) == [3, 6, 9, 12, 15]
    replay = EarlyStopping(cfg.train.patience, cfg.train.min_delta, enabled=False)
    for row in history.itertuples():
        replay.update(row.val_loss, row.step, row.epoch, None)
    assert record.best_step == replay.best_step
    ctx = Context.build(cfg, torch.device("cpu"))
    t = cfg.train
    again = validation_scores(stored_model(cfg, record).eval(), ctx.validation(0).seqs, t.alpha, t.distance_weight,
                              cfg.eval.batch_size)
    assert again["loss"] == pytest.approx(history.set_index("step").val_loss[record.best_step], rel=1e-5)
    scores = pd.read_parquet(files.results)
    seen = {"iid_seen"} if ctx.seen(0).any() else set()  # an empty split has no rows
    assert set(scores.split) == {"iid_unseen", "ood", "length"} | seen
    assert set(scores[scores.split == "length"].length) == {16, 32}


def test_a_worker_ends_when_its_parent_dies():
    """The watcher exits once the parent pid it was given is no longer this process's parent (the
    parent killed, the worker reparented), and never while it still is."""
    import threading

    from bench.experiment.pool import exit_with_parent

    parents, exited = iter([100, 100, 1]), threading.Event()
    thread = exit_with_parent(100, getppid=lambda: next(parents), exit_now=lambda code: exited.set(), poll_s=0.01)
    assert exited.wait(5) and thread.daemon
    parent, calls, ended = [100], [], threading.Event()
    exit_with_parent(100, getppid=lambda: calls.append(1) or parent[0], exit_now=lambda code: ended.set(), poll_s=0.01)
    time.sleep(0.2)
    assert not ended.is_set() and len(calls) > 3  # polled, the parent alive: nothing happens
    parent[0] = 1
    assert ended.wait(5)  # and the thread ends with the parent
