"""One run, from configuration to record: plan it, build its model, train it, write its outputs.

`plan` sizes the run on the meta device and prices its memory (an over-budget configuration is
pruned before anything is allocated); `build` makes the model from the same initialisation stream
for every architecture; `run_trial` trains it inside its Optuna trial (reporting each validation,
pruning a search trial that falls behind the median, checkpointing for a retry to resume from);
`write_final` evaluates a final run on the fixed test splits and writes its files (`RunFiles`),
its per-prediction scores among them (`bench.experiment.predictions`). A search replicate r
(`search.replicates`) is the `replicate` of its runs' records; its search trials initialise their
models from `init_seed` (not their data seed), so replicates differ in the search only.
A diverged (NaN/inf) or out-of-memory run is a finished, failed run with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from bench.analysis import memory_decay
from bench.experiment import predictions
from bench.experiment.config import Config
from bench.experiment.context import Context, decay_tokens
from bench.experiment.records import VALIDATION_KEYS, RunFiles, RunRecord, checkpoint_dir
from bench.experiment.search import trial_config
from bench.experiment.storage import frozen
from bench.experiment.tracking import NullRun, WandbRun
from bench.memory import estimate, measured_bytes, model_on_meta
from bench.metrics import ALL, continuation, evaluate_scores, model_logits, prediction_rows, score_logits, split_of
from bench.models import build_model
from bench.seeding import derive_seed
from bench.train import TrainingDiverged, TrainResult, train
from bench.util import atomic_write, first_line


@dataclass
class Trained:
    """A run's outcome: its trial state, value (best validation loss), record, history and model."""

    state: TrialState
    value: float | None
    record: RunRecord
    history: list[dict]
    model: torch.nn.Module | None = None


def is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError | MemoryError) or "out of memory" in msg \
        or "can't allocate memory" in msg


def set_attrs(trial: optuna.Trial | None, attrs: dict[str, Any]) -> None:
    if trial is not None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)


def plan(ctx: Context, stage: str, arch: str, trial: optuna.Trial | None, params: dict[str, Any], seed: int,
         steps: int, replicate: int = 0) -> tuple[Config, RunRecord]:
    """The run's config and record so far (its "plan" fields, also set on its trial, if it has one of
    its own); `record.pruned_reason` says why it cannot run: its memory estimate exceeds the budget."""
    cfg = ctx.cfg
    tcfg = trial_config(cfg, params)
    tcfg = replace(tcfg, train=replace(tcfg.train, steps=steps))
    meta = model_on_meta(tcfg.model_config(arch))
    est = estimate(meta, tcfg.train.batch_size, cfg.data.length - 1)
    record = RunRecord(study=cfg.name, stage=stage, arch=arch, seed=seed, replicate=replicate, steps_budget=steps,
                       **params, num_params=meta.num_params(), state_size=meta.state_size(cfg.data.length),
                       mem_estimate_gib=est.total_bytes / 2**30)
    if est.total_bytes > cfg.memory_budget * 2**30:
        record.pruned_reason = f"memory estimate {est} exceeds memory_budget {cfg.memory_budget} GiB"
    set_attrs(trial, record.attrs("plan", "outcome"))
    return tcfg, record


def build(ctx: Context, arch: str, tcfg: Config, seed: int, record: RunRecord,
          init_seed: int | None = None) -> torch.nn.Module:
    """The model every stage trains for (arch, seed): the same initialisation stream for every
    architecture, from `init_seed` when given (a search trial of replicate r > 0), else from the
    data seed `seed`; records its implementation and measured training memory."""
    torch.manual_seed(derive_seed("init", seed if init_seed is None else init_seed))
    model = build_model(tcfg.model_config(arch)).to(ctx.device)
    record.impl = ",".join(sorted({str(getattr(b.mixer, "impl_used", "torch")) for b in model.blocks}))
    record.mem_measured_gib = measured_bytes(model, ctx.stream(seed).batch(0).to(ctx.device)) / 2**30
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    return model


def record_outcome(ctx: Context, trial: optuna.Trial | None, record: RunRecord, result: TrainResult | None) -> None:
    """The outcome of training, into `record` and (its "outcome" fields) the run's own trial, if any."""
    if ctx.device.type == "cuda":
        record.mem_peak_gib = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    if result is not None:
        record.steps, record.tokens, record.wall_s = result.steps, result.tokens, round(result.wall_s, 2)
        record.resumed_from, record.best_step = result.resumed_from, result.best_step
        record.stopped_early = result.stopped_early
        last = result.history[-1] if result.history else {}
        for k in VALIDATION_KEYS:
            if k in last:
                setattr(record, k, last[k])
    set_attrs(trial, record.attrs("outcome"))


def checkpoint_path(cfg: Config, study_name: str, trial: optuna.Trial) -> Path:
    """One file per slot chain: a retried trial finds its predecessor's checkpoint."""
    root = RetryHeartbeatStaleTrialCallback.retry_history(frozen(trial))
    number = root[0] if root else trial.number
    path = checkpoint_dir(cfg.output_dir, study_name) / f"trial-{number}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_trial(ctx: Context, stage: str, arch: str, study: optuna.Study, trial: optuna.Trial,
              params: dict[str, Any], seed: int, steps: int, prune: bool,
              run: NullRun | WandbRun | None = None, replicate: int = 0, init_seed: int | None = None) -> Trained:
    """Train `arch` with `params` on `seed` for `steps` steps inside `trial`, for search replicate
    `replicate`, the model initialised from `init_seed` (None: from `seed`, see `build`). Each
    validation is reported to the trial (pruning a search trial behind the median) and logged to
    the tracking `run`, against tokens seen."""
    run = run or NullRun()
    tcfg, record = plan(ctx, stage, arch, trial, params, seed, steps, replicate)
    if record.pruned_reason:
        return Trained(TrialState.PRUNED, None, record, [])
    model = build(ctx, arch, tcfg, seed, record, init_seed)
    seen: list[TrainResult] = []  # the live TrainResult, so a pruned trial still reports its progress

    def on_validation(res: TrainResult) -> None:
        seen[:] = [res]
        last = res.history[-1]
        run.log(last)
        trial.report(last["val_loss"], res.steps)
        if prune and res.steps < steps and trial.should_prune():  # a trial at its last step is done, not pruned
            raise optuna.TrialPruned(f"validation loss {last['val_loss']:.4f} at step {res.steps} "
                                     f"is worse than the median of earlier trials")

    ck = checkpoint_path(ctx.cfg, study.study_name, trial)
    state, value, result = TrialState.COMPLETE, None, None
    try:
        result = train(model, tcfg.train, ctx.stream(seed), ctx.validator(seed), ctx.curriculum.final_epoch(),
                       ctx.device, ctx.cfg.progress, desc=f"{study.study_name} #{trial.number}", checkpoint=ck,
                       on_validation=on_validation)
        value = result.best_val
    except optuna.TrialPruned as e:
        state, record.pruned_reason = TrialState.PRUNED, str(e)
    except Exception as e:
        if not (isinstance(e, TrainingDiverged) or is_oom(e)):
            raise
        state, record.failure_reason = TrialState.FAIL, first_line(e)
        result = getattr(e, "result", None)
    result = result or (seen[0] if seen else None)
    record_outcome(ctx, trial, record, result)
    ck.unlink(missing_ok=True)
    return Trained(state, value, record, result.history if result else [], model)


def joint_outcome(ctx: Context, record: RunRecord, model: torch.nn.Module, res: TrainResult,
                  run: NullRun | WandbRun) -> Trained:
    """`run_trial`'s outcome for a member of a cohort trained jointly (`bench.mutual`), its history
    logged to its tracking run after the fact (the cohort shares one trial: nothing reported to it)."""
    for row in res.history:
        run.log(row)
    if res.error:
        record.failure_reason = res.error
    record_outcome(ctx, None, record, res)
    state = TrialState.FAIL if res.error else TrialState.COMPLETE
    return Trained(state, None if res.error else res.best_val, record, res.history, model)


def test_outputs(ctx: Context, model: torch.nn.Module, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A trained model's scores on every test split of its seed (`Context.splits`), from one forward
    pass per split: (tidy scores: per-position metrics and greedy continuation, with `split` and
    `length` columns; per-prediction rows of the same logits (`prediction_rows`, with `split`,
    `length` and each row's stable id `Context.split_ids`)). Continuation starts from
    `eval.continuation_prefix` values, or half of each split's own length (4 of 8, 8 of 16, ...)."""
    cfg, ids = ctx.cfg, ctx.split_ids(seed)
    scores, rows = [], []
    for key, test in ctx.splits(seed).items():
        if not len(test):  # an empty split (no iid_seen row) has no rows
            continue
        length, prefix = test.seqs.shape[1], cfg.eval.continuation_prefix or test.seqs.shape[1] // 2
        per = score_logits(model_logits(model, test.seqs[:, :-1], cfg.eval.batch_size), test.seqs[:, 1:])
        label = {"split": split_of(key), "length": length}
        scores.append(pd.concat([evaluate_scores(test, per), continuation(model, test, prefix, cfg.eval.batch_size)],
                                ignore_index=True).assign(**label))
        rows.append(prediction_rows(test, per, ids[key]).assign(**label))
    return pd.concat(scores, ignore_index=True), pd.concat(rows, ignore_index=True)


def test_scores(ctx: Context, model: torch.nn.Module, seed: int) -> pd.DataFrame:
    """The tidy scores of `test_outputs`, without the per-prediction rows."""
    return test_outputs(ctx, model, seed)[0]


def write_final(ctx: Context, trained: Trained) -> dict[str, float]:
    """A closed final (or mutual-stage) run's files (`RunFiles`: record, history, and for a run that
    finished ok its test scores, per-prediction scores and weights; the predictions before run.json,
    whose presence means the rest is there). Returns the study-level test scores
    ({"test_accuracy": ...} on `iid_unseen`, the headline split, and {"test_ood_accuracy": ...} and
    so on for the other splits; empty for a failed run)."""
    rec = trained.record
    files = RunFiles(ctx.cfg.output_dir, rec.arch, rec.seed, rec.stage, rec.replicate)
    if rec.status != "ok":
        files.write(rec, trained.history, None, None)
        return {}
    scored, predicted = test_outputs(ctx, trained.model, rec.seed)
    predictions.write(predictions.tagged(predicted, rec, files.stem), files.predictions)
    files.write(rec, trained.history, scored, trained.model)
    if rec.stage == "final":  # its memory-decay curve here, in parallel workers, not serially in `collect`
        curve = memory_decay(trained.model.cpu().eval(), decay_tokens(ctx.test))  # on the CPU, as collect's
        atomic_write(files.decay, lambda p: curve.to_parquet(p, index=False))
    top = scored[scored["phase"].isna() & (scored["family"] == ALL) & scored["position"].isna()]
    return {f"{summary_prefix(s, n)}_{m}": float(v)
            for s, n, m, v in zip(top["split"], top["length"], top["metric"], top["value"], strict=True)}


def copy_final(source: RunFiles, target: RunFiles, record: RunRecord) -> None:
    """The files of `source`, a finished final run, as `target`'s (another replicate of the same arch
    and seed that chose the same configuration): every table relabelled with the target's replicate
    and stem, the weights copied, `record` (the target's) written last, as `RunFiles.write` does."""
    for d in (target.run_json.parent, target.weights.parent):
        d.mkdir(parents=True, exist_ok=True)
    for name in ("history", "results", "decay"):
        path = getattr(source, name)
        if path.exists():
            frame = pd.read_parquet(path)
            frame = frame.assign(replicate=target.replicate) if "replicate" in frame else frame
            atomic_write(getattr(target, name), lambda p, f=frame: f.to_parquet(p, index=False))
    if source.predictions.exists():
        rows = pd.read_parquet(source.predictions).assign(run=target.stem, replicate=target.replicate)
        predictions.write(rows, target.predictions)
    atomic_write(target.weights, lambda p: p.write_bytes(source.weights.read_bytes()))
    text = json.dumps(record.row(), default=str, indent=1)
    atomic_write(target.run_json, lambda p: p.write_text(text))


def summary_prefix(split: str, length: int) -> str:
    """The W&B summary name of a split's scores: "test" for iid_unseen (the headline), "test_ood",
    "test_iid_seen", "test_length_16", ..."""
    if split == "iid_unseen":
        return "test"
    return f"test_length_{length}" if split == "length" else f"test_{split}"
