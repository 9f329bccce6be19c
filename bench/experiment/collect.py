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
    predictions.parquet   every teacher-forced test prediction of the final (and mutual-stage) runs
                      that finished ok (`bench.experiment.predictions`), when their runs stored them

Search replicates (`search.replicates`): runs, results, history, decay, trials and predictions have
a `replicate` column (0 with one replicate), and every replicate's final runs are read. The
reference rows of results (baselines, ceiling) carry replicate 0: they depend on the seed's data,
not on the search. oeis and cka read replicate 0's models (one model per (arch, seed), as before
replicates existed); mutual_kl compares architectures within a (seed, replicate).

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
from bench.experiment import predictions
from bench.experiment.config import Config, to_yaml
from bench.experiment.context import Context, decay_tokens, probe_tokens
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
RESULT_COLUMNS = ["study", "stage", "arch", "seed", "replicate", "split", "length", "phase", "family", "position",
                  "metric", "value", "n"]
MUTUAL_TABLES = ("mutual", "mutual_runs", "mutual_kl")
# how a study is run, not what it computes: a change to these alone leaves the tables as they are
RUN_ONLY_KEYS = ("threads", "progress", "workers", "heartbeat", "device", "tracking", "wandb_project", "report",
                 "report_dir", "stage", "long_study")


def _read_runs(cfg: Config, seed: int, stage: str, replicate: int = 0) -> list[tuple[RunRecord, RunFiles]]:
    """The closed runs of `seed` in `stage` (final or mutual) and search `replicate`, one per
    architecture; the record's replicate is the files' (run.json written before replicates: 0)."""
    out = []
    for arch in cfg.arch_list:
        files = RunFiles(cfg.output_dir, arch, seed, stage, replicate)
        if not files.run_json.exists():
            where = f" replicate={replicate}" if replicate else ""
            raise RuntimeError(f"{stage} run {arch} seed={seed}{where} has no results in {files.run_json.parent}")
        record = RunRecord.load(files.run_json)
        record.replicate = replicate
        out.append((record, files))
    return out


def _run_tables(record: RunRecord, files: RunFiles, history: list[pd.DataFrame], results: list[pd.DataFrame],
                predicted: list[Path]) -> None:
    """A closed run's stored history, test scores and prediction file (ok runs), tagged with its
    replicate (files written before replicates lack the column)."""
    if files.history.exists():
        history.append(pd.read_parquet(files.history).assign(replicate=record.replicate))
    if record.status == "ok":
        results.append(pd.read_parquet(files.results).assign(replicate=record.replicate))
        if files.predictions.exists():
            predicted.append(files.predictions)


def collect(cfg: Config) -> dict[str, pd.DataFrame]:
    """The study's tables from what the stages stored: every replicate's final runs' files and the
    search trials."""
    ctx = Context.build(cfg, torch.device("cpu"))  # the same test splits and streams the workers used
    references, oeis = References(ctx), Oeis(cfg.data.length)
    results, history, runs, overlap, real, predicted = [], [], [], [], [], []
    for seed in cfg.seeds:
        lookup = LookupTable.fit(ctx.budget(seed))  # exactly what this seed's final runs trained on
        results += [references.rows(seed).assign(seed=seed, replicate=0),
                    lookup_rows(ctx, seed, lookup).assign(seed=seed, replicate=0)]
        real += oeis.points(seed, point_baselines(lookup))
        overlap.append(test_overlap(ctx.test, ctx.seen(seed)).assign(seed=seed))
        for replicate in range(cfg.search.replicates):
            for record, files in _read_runs(cfg, seed, "final", replicate):
                runs.append(record)
                _run_tables(record, files, history, results, predicted)
    models = final_models(cfg, [r for r in runs if r.replicate == 0])
    for (arch, seed), model in models.items():
        real += oeis.model(arch, seed, model, cfg.eval.batch_size)
    storage = open_storage(cfg)
    mutual = mutual_tables(cfg, ctx.test, runs, predicted) if cfg.mutual.weight is not None else {}
    scored = predictions.gather(predicted)
    return {
        **mutual,
        **({"predictions": scored} if scored is not None else {}),
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


def mutual_tables(cfg: Config, test: SequenceSet, alone: list[RunRecord],
                  predicted: list[Path]) -> dict[str, pd.DataFrame]:
    """The mutual stage's members (every replicate's): `mutual` (test scores, the schema of `results`),
    `mutual_runs` (one row per member, seed and replicate, the schema of `runs`), kept apart from the
    independent runs, and `mutual_kl` (`agreement`: did the pull make the architectures predict
    alike?); their prediction files are added to `predicted` (stage "mutual" in predictions.parquet)."""
    results, runs = [], []
    for seed in cfg.seeds:
        for replicate in range(cfg.search.replicates):
            for record, files in _read_runs(cfg, seed, "mutual", replicate):
                runs.append(record)
                _run_tables(record, files, [], results, predicted)
    scores = _tidy(pd.concat(results, ignore_index=True), cfg.name).assign(stage="mutual") if results \
        else pd.DataFrame()
    kl = pd.concat([agreement(cfg, test, alone).assign(training="alone"),
                    agreement(cfg, test, runs).assign(training="jointly")], ignore_index=True)
    return {"mutual": scores, "mutual_runs": runs_table(runs, cfg.name), "mutual_kl": kl.assign(study=cfg.name)}


def agreement(cfg: Config, test: SequenceSet, runs: list[RunRecord]) -> pd.DataFrame:
    """KL(p_a || p_b) between every two architectures' predictions of the same seed and replicate
    (nats, mean over every position of the probe sequences), from the stored weights: what the mutual
    term minimises."""
    tokens, rows = probe_tokens(test), []
    for seed, replicate in sorted({(int(r.seed), int(r.replicate)) for r in runs}):
        log_p = {}
        for run in (r for r in runs if (int(r.seed), int(r.replicate)) == (seed, replicate) and r.status == "ok"):
            with torch.no_grad():
                log_p[run.arch] = torch.log_softmax(stored_model(cfg, run).eval()(tokens).double(), -1)
        rows += [{"seed": seed, "replicate": replicate, "arch_a": a, "arch_b": b,
                  "kl": float((log_p[a].exp() * (log_p[a] - log_p[b])).sum(-1).mean())}
                 for a in log_p for b in log_p if a != b]
    return pd.DataFrame(rows, columns=["seed", "replicate", "arch_a", "arch_b", "kl"])


def decay_table(cfg: Config, test: SequenceSet, runs: list[RunRecord]) -> pd.DataFrame:
    """Memory-decay curves (`bench.analysis.memory_decay`) of every final model that trained, probed
    on the same inputs (`context.decay_tokens`). Each model's curve is computed once and kept beside its results
    (final/<arch>-seed<s>.decay.parquet): by the worker that trained it (`trial.write_final`, in
    parallel), else here from its stored weights."""
    tokens = decay_tokens(test)  # the probe reads the prediction of the last value
    frames = []
    for run in runs:
        if run.status != "ok":
            continue
        files = RunFiles(cfg.output_dir, run.arch, int(run.seed), run.stage, run.replicate)
        if not files.decay.exists() or files.decay.stat().st_mtime < files.weights.stat().st_mtime:
            curve = memory_decay(stored_model(cfg, run).eval(), tokens)
            atomic_write(files.decay, lambda p, c=curve: c.to_parquet(p, index=False))
        frames.append(pd.read_parquet(files.decay).assign(study=cfg.name, arch=run.arch, seed=run.seed,
                                                          replicate=run.replicate))
    cols = ["study", "arch", "seed", "replicate", "variant", "k", "value", "n"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def stored_model(cfg: Config, run: RunRecord) -> torch.nn.Module:
    """A final (or mutual-stage) run's model from its stored weights (models/<stem>.pt), on the CPU;
    sizes the record lacks take the study's defaults."""
    params = {k: getattr(run, k) for k in (*SIZE_KEYS, "lr") if getattr(run, k) is not None}
    model = build_model(model_config(cfg, run.arch, params))
    weights = RunFiles(cfg.output_dir, run.arch, int(run.seed), run.stage, run.replicate).weights
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


def _trial_rows(cfg: Config, storage: Any, stage: str, arch: str, name: str, drop: tuple[str, ...],
                replicate: int = 0) -> list[dict]:
    return [{"study": cfg.name, "stage": stage, "arch": arch, "replicate": replicate, "number": tr.number,
             "state": tr.state.name, "value": tr.value, "counted": is_finished(tr),
             "duration_s": tr.duration.total_seconds() if tr.duration else None,
             **{k: v for k, v in tr.user_attrs.items() if k not in drop}}
            for tr in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]


def trials_table(cfg: Config, storage: Any) -> pd.DataFrame:
    """Every trial of every stage and replicate (the replicate of its study): number, state, value,
    params and user attributes, one row each."""
    names = set(optuna.get_all_study_names(storage))
    rows = []
    for replicate in range(cfg.search.replicates):
        for arch in cfg.arch_list:
            for stage, name in (("search", search_name(cfg, arch, replicate=replicate)),
                                ("final", final_name(cfg, arch, replicate=replicate))):
                if name in names:
                    rows += _trial_rows(cfg, storage, stage, arch, name, ("arch", "replicate"), replicate)
        if mutual_name(cfg, replicate) in names:
            rows += _trial_rows(cfg, storage, "mutual", "cohort", mutual_name(cfg, replicate), ("replicate",),
                                replicate)
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
    out["replicate"] = out["replicate"].astype("int64")
    return out


def _long_history(frames: list[pd.DataFrame], study: str) -> pd.DataFrame:
    """Per-validation metric history, long format: study, arch, seed, replicate, step, tokens, epoch,
    metric, value."""
    ids = ["arch", "seed", "replicate", "step", "tokens", "epoch"]
    if not frames:
        return pd.DataFrame(columns=["study", *ids, "metric", "value"])
    wide = pd.concat(frames, ignore_index=True)
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
    """Whether out_dir holds every table, collected (meta.yaml's `inputs`) from these same inputs:
    the study's tables and every table meta.yaml lists as written (`tables`, e.g. predictions)."""
    meta = cfg.output_dir / "meta.yaml"
    if not meta.is_file():
        return False
    try:
        stored = OmegaConf.load(meta)
    except Exception:  # noqa: BLE001 - an unreadable meta.yaml is one more reason to collect afresh
        return False
    if not isinstance(stored, DictConfig):
        return False
    names = {*TABLES, *(MUTUAL_TABLES if cfg.mutual.weight is not None else ()), *stored.get("tables", [])}
    return all((cfg.output_dir / f"{n}.parquet").is_file() for n in names) and stored.get("inputs") == inputs


def write_outputs(cfg: Config, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write each table to a temporary file and rename it into `out_dir` (meta.yaml last), so a
    reader never sees a half-written file, and the study's storage and checkpoints stay untouched.
    meta.yaml lists the tables written (`tables`); a predictions.parquet left from an earlier
    collection is removed when these tables have none."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Callable[[Path], Any]] = {
        f"{name}.parquet": functools.partial(lambda t, p: t.to_parquet(p, index=False), table)
        for name, table in tables.items() if name != "predictions"
    }
    files["config.yaml"] = lambda p: p.write_text(to_yaml(cfg))
    listed = {**meta, "tables": sorted(tables)}
    files["meta.yaml"] = lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(listed)))
    if "predictions" in tables:  # zstd, small dtypes, text as strings: see bench.experiment.predictions
        predictions.write(tables["predictions"], out / "predictions.parquet")
    else:
        (out / "predictions.parquet").unlink(missing_ok=True)
    for name, write in files.items():
        atomic_write(out / name, write)
