"""The study's derived tables, from what its stages stored (final runs' files, the Optuna trials):

    results.parquet   test scores of the final runs, the baselines and the ceiling, per test split
                      (`split`, `length` columns) and seed (a `stage` column)
    history.parquet   per-validation metrics, long format (val_* on the fixed set, fresh_* the monitor)
    runs.parquet      one row per final run (`records.RunRecord`)
    trials.parquet    every trial of every stage
    overlap.parquet   iid test sequences that also occur in the training budget's stream
    ceiling.parquet   the Bayes ceiling (mixture, family known, on each seed's validation set)
    splits.parquet    test sequences per seed, family and split
    oeis.parquet      final models and point baselines on real (OEIS) sequences, by kind
    decay.parquet     memory-decay curves of the final models (cached beside each run)
    cka.parquet       linear CKA between the final models' layers (always written: the report reads it)
    cka_floor.parquet what two unrelated random embeddings score on the same probe (per d_model)
    mutual.parquet, mutual_runs.parquet, mutual_kl.parquet   with a mutual stage

`write_outputs` swaps them into out_dir with config.yaml and meta.yaml (last); meta.yaml's `inputs`
is the digest of what they were computed from (`inputs_digest`), so a rerun with nothing changed
finds them current (`unchanged`) and rebuilds nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from bench.analysis import memory_decay
from bench.analysis.cka import cka_table, embedding_floor
from bench.data import SequenceSet
from bench.data.lookup import LookupTable
from bench.experiment.config import Config, to_yaml
from bench.experiment.context import Context, probe_tokens
from bench.experiment.provenance import git_commit
from bench.experiment.records import RunFiles, RunRecord, runs_table
from bench.experiment.reference import (
    Oeis,
    References,
    ceiling_table,
    lookup_rows,
    oeis_table,
    point_baselines,
    splits_table,
)
from bench.experiment.search import SIZE_KEYS, model_config
from bench.experiment.storage import (
    digest,
    final_name,
    is_finished,
    mutual_name,
    open_storage,
    optuna_names,
    search_name,
)
from bench.models import build_model
from bench.util import atomic_write

CKA_COLUMNS = ["study", "seed", "seed_b", "arch_a", "layer_a", "arch_b", "layer_b", "cka", "n"]
TABLES = ("results", "history", "runs", "trials", "overlap", "decay", "cka", "cka_floor", "ceiling", "splits", "oeis")
RESULT_COLUMNS = ["study", "stage", "arch", "seed", "split", "length", "phase", "family", "position", "metric",
                  "value", "n"]
MUTUAL_TABLES = ("mutual", "mutual_runs", "mutual_kl")
# how a study is run, not what it computes: a change to these alone leaves the tables as they are
RUN_ONLY_KEYS = ("threads", "progress", "workers", "heartbeat", "device", "tracking", "wandb_project", "report",
                 "report_dir", "stage", "long_study")


def _read_runs(cfg: Config, seed: int, stage: str) -> list[tuple[RunRecord, RunFiles]]:
    """The closed runs of `seed` in `stage` (final or mutual), one per architecture."""
    out = []
    for arch in cfg.arch_list:
        files = RunFiles(cfg.output_dir, arch, seed, stage)
        if not files.run_json.exists():
            raise RuntimeError(f"{stage} run {arch} seed={seed} has no results in {files.run_json.parent}")
        out.append((RunRecord.load(files.run_json), files))
    return out


def collect(cfg: Config) -> dict[str, pd.DataFrame]:
    """The study's tables from what the stages stored: final runs' files and the search trials."""
    ctx = Context.build(cfg, torch.device("cpu"))  # the same test splits and streams the workers used
    references, oeis = References(ctx), Oeis(cfg.data.length)
    results, history, runs, overlap, real = [], [], [], [], []
    for seed in cfg.seeds:
        lookup = LookupTable.fit(ctx.budget(seed))  # exactly what this seed's final runs trained on
        results += [references.rows(seed).assign(seed=seed), lookup_rows(ctx, seed, lookup).assign(seed=seed)]
        real += oeis.points(seed, point_baselines(lookup))
        overlap.append(test_overlap(ctx.test, ctx.seen(seed)).assign(seed=seed))
        for record, files in _read_runs(cfg, seed, "final"):
            runs.append(record)
            if files.history.exists():
                history.append(pd.read_parquet(files.history))
            if record.status == "ok":
                results.append(pd.read_parquet(files.results))
    models = final_models(cfg, runs)
    for (arch, seed), model in models.items():
        real += oeis.model(arch, seed, model, cfg.eval.batch_size)
    storage = open_storage(cfg)
    mutual = mutual_tables(cfg, ctx.test, runs) if cfg.mutual.weight is not None else {}
    return {
        **mutual,
        "results": _tidy(pd.concat(results, ignore_index=True), cfg.name),
        "history": _long_history([h for h in history if len(h)], cfg.name),
        "runs": runs_table(runs, cfg.name),
        "trials": trials_table(cfg, storage),
        "overlap": pd.concat(overlap, ignore_index=True).assign(study=cfg.name),
        "decay": decay_table(cfg, ctx.test, runs),
        "cka": cka_table_for(cfg, ctx.test, models),
        "cka_floor": cka_floor_table(cfg, ctx.test, runs),
        "ceiling": ceiling_table(ctx),
        "splits": splits_table(ctx),
        "oeis": oeis_table(real, cfg.name),
    }


def final_models(cfg: Config, runs: list[RunRecord]) -> dict[tuple[str, int], torch.nn.Module]:
    """The final models that trained, from their stored weights, on the CPU in eval mode, by (arch, seed)."""
    return {(run.arch, int(run.seed)): stored_model(cfg, run).eval() for run in runs if run.status == "ok"}


def mutual_tables(cfg: Config, test: SequenceSet, alone: list[RunRecord]) -> dict[str, pd.DataFrame]:
    """The mutual stage's members: `mutual` (test scores, the schema of `results`), `mutual_runs`
    (one row per member and seed, the schema of `runs`), kept apart from the independent runs, and
    `mutual_kl` (`agreement`: did the pull make the architectures predict alike?)."""
    results, runs = [], []
    for seed in cfg.seeds:
        for record, files in _read_runs(cfg, seed, "mutual"):
            runs.append(record)
            if record.status == "ok":
                results.append(pd.read_parquet(files.results))
    scores = _tidy(pd.concat(results, ignore_index=True), cfg.name).assign(stage="mutual") if results \
        else pd.DataFrame()
    kl = pd.concat([agreement(cfg, test, alone).assign(training="alone"),
                    agreement(cfg, test, runs).assign(training="jointly")], ignore_index=True)
    return {"mutual": scores, "mutual_runs": runs_table(runs, cfg.name), "mutual_kl": kl.assign(study=cfg.name)}


def agreement(cfg: Config, test: SequenceSet, runs: list[RunRecord]) -> pd.DataFrame:
    """KL(p_a || p_b) between every two architectures' predictions of the same seed (nats, mean over
    every position of the probe sequences), from the stored weights: what the mutual term minimises."""
    tokens, rows = probe_tokens(test), []
    for seed in sorted({int(r.seed) for r in runs}):
        log_p = {}
        for run in (r for r in runs if int(r.seed) == seed and r.status == "ok"):
            with torch.no_grad():
                log_p[run.arch] = torch.log_softmax(stored_model(cfg, run).eval()(tokens).double(), -1)
        rows += [{"seed": seed, "arch_a": a, "arch_b": b,
                  "kl": float((log_p[a].exp() * (log_p[a] - log_p[b])).sum(-1).mean())}
                 for a in log_p for b in log_p if a != b]
    return pd.DataFrame(rows, columns=["seed", "arch_a", "arch_b", "kl"])


def decay_table(cfg: Config, test: SequenceSet, runs: list[RunRecord]) -> pd.DataFrame:
    """Memory-decay curves (`bench.analysis.memory_decay`) of every final model that trained, probed
    on the same test sequences. Each model's curve is computed once and kept beside its results
    (final/<arch>-seed<s>.decay.parquet): by the worker that trained it (`trial.write_final`, in
    parallel), else here from its stored weights."""
    tokens = probe_tokens(test)  # the probe reads the prediction of the last value
    frames = []
    for run in runs:
        if run.status != "ok":
            continue
        files = RunFiles(cfg.output_dir, run.arch, int(run.seed))
        if not files.decay.exists() or files.decay.stat().st_mtime < files.weights.stat().st_mtime:
            curve = memory_decay(stored_model(cfg, run).eval(), tokens)
            atomic_write(files.decay, lambda p, c=curve: c.to_parquet(p, index=False))
        frames.append(pd.read_parquet(files.decay).assign(study=cfg.name, arch=run.arch, seed=run.seed))
    cols = ["study", "arch", "seed", "variant", "k", "value", "n"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def stored_model(cfg: Config, run: RunRecord) -> torch.nn.Module:
    """A final (or mutual-stage) run's model from its stored weights (models/<stem>.pt), on the CPU;
    sizes the record lacks take the study's defaults."""
    params = {k: getattr(run, k) for k in (*SIZE_KEYS, "lr") if getattr(run, k) is not None}
    model = build_model(model_config(cfg, run.arch, params))
    weights = RunFiles(cfg.output_dir, run.arch, int(run.seed), run.stage).weights
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


def cka_table_for(cfg: Config, test: SequenceSet, models: dict[tuple[str, int], torch.nn.Module]) -> pd.DataFrame:
    """Linear CKA between the block outputs of the final models that trained (`bench.analysis.cka.cka_table`:
    every pair of models and layers, within and across seeds), from their stored weights (`final_models`), on
    the same probe sequences as `decay_table`. Not cached per model: one forward pass per model, seconds for a
    study."""
    if not models:
        return pd.DataFrame(columns=CKA_COLUMNS)
    return cka_table(models, probe_tokens(test)).assign(study=cfg.name)[CKA_COLUMNS]


def cka_floor_table(cfg: Config, test: SequenceSet, runs: list[RunRecord]) -> pd.DataFrame:
    """The CKA two independent random embedding tables already reach on the probe tokens, per d_model of
    the final models: the report reads layer-0 similarity against it (repeated tokens alone make it > 0)."""
    tokens = probe_tokens(test)
    widths = sorted({int(r.d_model) for r in runs if r.status == "ok" and r.d_model is not None})
    rows = [{"study": cfg.name, "d_model": d, "rows": tokens.numel(), "distinct_tokens": int(tokens.unique().numel()),
             "embedding": embedding_floor(tokens, d)} for d in widths]
    return pd.DataFrame(rows, columns=["study", "d_model", "rows", "distinct_tokens", "embedding"])


def _trial_rows(cfg: Config, storage: Any, stage: str, arch: str, name: str, drop: tuple[str, ...]) -> list[dict]:
    return [{"study": cfg.name, "stage": stage, "arch": arch, "number": tr.number, "state": tr.state.name,
             "value": tr.value, "counted": is_finished(tr),
             "duration_s": tr.duration.total_seconds() if tr.duration else None,
             **{k: v for k, v in tr.user_attrs.items() if k not in drop}}
            for tr in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]


def trials_table(cfg: Config, storage: Any) -> pd.DataFrame:
    """Every trial of every stage: number, state, value, params and user attributes, one row each."""
    names = set(optuna.get_all_study_names(storage))
    rows = []
    for arch in cfg.arch_list:
        for stage, name in (("search", search_name(cfg, arch)), ("final", final_name(cfg, arch))):
            if name in names:
                rows += _trial_rows(cfg, storage, stage, arch, name, drop=("arch",))
    if mutual_name(cfg) in names:
        rows += _trial_rows(cfg, storage, "mutual", "cohort", mutual_name(cfg), drop=())
    return pd.DataFrame(rows)


def test_overlap(test: SequenceSet, seen: torch.Tensor) -> pd.DataFrame:
    """Per (phase, family): how many iid test sequences occur verbatim in the training budget's stream
    (`seen`, `Context.seen`: the iid_seen rows)."""
    frame = pd.DataFrame({"phase": test.phase.numpy(), "family": test.family_names(), "seen": seen.numpy()})
    table = frame.groupby(["phase", "family"], sort=False)["seen"].agg(n="size", seen="sum").reset_index()
    return table.assign(seen_fraction=table["seen"] / table["n"])


def _tidy(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Test scores of the final stage (baselines and ceiling included, on the same test splits)."""
    out = df.assign(study=study, stage="final")[RESULT_COLUMNS].reset_index(drop=True)
    out["length"] = out["length"].astype("int64")
    return out


def _long_history(frames: list[pd.DataFrame], study: str) -> pd.DataFrame:
    """Per-validation metric history, long format: study, arch, seed, step, tokens, epoch, metric, value."""
    if not frames:
        return pd.DataFrame(columns=["study", "arch", "seed", "step", "tokens", "epoch", "metric", "value"])
    wide = pd.concat(frames, ignore_index=True)
    ids = ["arch", "seed", "step", "tokens", "epoch"]
    long = wide.melt(id_vars=ids, var_name="metric", value_name="value").assign(study=study)
    return long[["study", *ids, "metric", "value"]]


def inputs_digest(cfg: Config) -> str:
    """What the tables are computed from: the configuration (less RUN_ONLY_KEYS), every trial of
    every stage (number, state, value, completion time) and the code's commit (a new commit may
    compute them differently; edits in a dirty checkout are not seen); equal digests, equal tables."""
    config = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY_KEYS}
    storage = open_storage(cfg)
    names = set(optuna.get_all_study_names(storage))
    trials = {name: [(t.number, t.state.name, t.value, str(t.datetime_complete))
                     for t in storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)]
              for name in optuna_names(cfg) if name in names}
    return digest({"config": config, "trials": trials, "code": git_commit()})


def unchanged(cfg: Config, inputs: str) -> bool:
    """Whether out_dir holds every table, collected (meta.yaml's `inputs`) from these same inputs."""
    meta = cfg.output_dir / "meta.yaml"
    names = TABLES + (MUTUAL_TABLES if cfg.mutual.weight is not None else ())
    if not meta.is_file() or not all((cfg.output_dir / f"{n}.parquet").is_file() for n in names):
        return False
    try:
        stored = OmegaConf.load(meta)
    except Exception:  # noqa: BLE001 - an unreadable meta.yaml is one more reason to collect afresh
        return False
    return isinstance(stored, DictConfig) and stored.get("inputs") == inputs


def write_outputs(cfg: Config, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write each table to a temporary file and rename it into `out_dir` (meta.yaml last), so a
    reader never sees a half-written file, and the study's storage and checkpoints stay untouched."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Callable[[Path], Any]] = {
        f"{name}.parquet": functools.partial(lambda t, p: t.to_parquet(p, index=False), table)
        for name, table in tables.items()
    }
    files["config.yaml"] = lambda p: p.write_text(to_yaml(cfg))
    files["meta.yaml"] = lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))
    for name, write in files.items():
        atomic_write(out / name, write)
