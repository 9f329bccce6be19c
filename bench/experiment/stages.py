"""What a claimed slot does, per stage: a search trial, a final run, or a mutual-stage cohort.

Search: the trial takes its slot's configuration (`sampler.propose`: a grid point or a TPE
proposal; sized to the iso budget when asked), trains with the search seed and budget, and is told
its best validation loss, or pruned. Search replicate r > 0 initialises its trials' models from
`derive_seed("search-init", search.seed, r)`: the search's randomness, on the same data.
Final: the best completed search trial's configuration (the study's `model` sizes without a
search) retrained on the slot's seed, evaluated on the test set, its files written (`close`);
replicate r retrains replicate r's best, on the same seeds, under the replicate's file stems.
Mutual: every architecture's final configuration trained jointly on the slot's seed
(`bench.mutual`: own loss + weight x the mean KL from the others' predictions); each member's
files sit beside the final runs' (`final/<arch>-seed<s>-mutual.*`).
A final or mutual run that cannot train (no completed search trial, over the memory budget,
diverged, out of memory) is closed as failed with its reason; the study goes on. So is a slot whose
work raised anything else (`Stages.failed`), unless out_dir can no longer be written: then the study
stops (`StudyError`), its trial left for a resumed run to retry.
Each finished slot logs one line: `<arch> <stage> <trial or seed>: <status>, <metric or reason>`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from bench.experiment.config import Config
from bench.experiment.context import Context
from bench.experiment.records import RunFiles, RunRecord, stem
from bench.experiment.sampler import propose, slot
from bench.experiment.search import defaults, iso_params, iso_target, trial_config
from bench.experiment.storage import frozen, live_trials, load_study, search_name
from bench.experiment.tracking import NullRun, WandbRun, start_run
from bench.experiment.trial import (
    Trained,
    build,
    checkpoint_path,
    copy_final,
    is_oom,
    joint_outcome,
    plan,
    run_trial,
    write_final,
)
from bench.mutual import rng_state, train_mutual
from bench.seeding import derive_seed
from bench.train import TrainResult
from bench.util import first_line

PARAM_KEYS = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")  # what a final run retrains


class NoConfiguration(RuntimeError):
    """The search left nothing to retrain; the final runs are recorded as failed with this reason."""


class StudyError(RuntimeError):
    """The study cannot go on (out_dir unwritable, the storage failing, every worker lost): one
    `error:` line and exit 1; rerunning the same command resumes it."""


def unwritable(path: Path) -> str | None:
    """Why no new file can be created in `path` (None when one can), found by creating one: the
    only test that holds for root, read-only mounts and a directory replaced by a file alike."""
    probe = Path(path) / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def summary_line(arch: str, stage: str, label: str, status: str, detail: str = "") -> str:
    """What a finished slot logs: `mamba search t3: complete, val_loss 2.913`."""
    return f"{arch} {stage} {label}: {status}" + (f", {detail}" if detail else "")


def search_init_seed(cfg: Config, replicate: int) -> int | None:
    """The initialisation seed of replicate `replicate`'s search trials: None (the data seed, as
    before replicates existed) for replicate 0."""
    return derive_seed("search-init", cfg.search.seed, replicate) if replicate else None


def best_params(cfg: Config, storage: RDBStorage, arch: str, replicate: int = 0) -> tuple[dict[str, Any], int | None]:
    """The final stage's configuration of `arch` in `replicate`: its best completed search trial (and
    its number; ties to the lowest slot, which does not depend on timing), or the study's `model`
    sizes when there is no search; sized to the iso budget when asked."""
    if cfg.search.n_trials == 0:
        params = defaults(arch, cfg)
        if cfg.iso != "none":
            params = iso_params(cfg, arch, params, iso_target(cfg))
        return params, None
    study = load_study(storage, cfg, search_name(cfg, arch, replicate))
    done = [t for t in live_trials(study) if t.state == TrialState.COMPLETE]
    if not done:
        raise NoConfiguration(f"no search trial of {arch} completed (all pruned or failed, see trials.parquet)")
    best = min(done, key=lambda t: (t.value, slot(t), t.number))
    return {k: best.user_attrs[k] for k in PARAM_KEYS if k in best.user_attrs}, best.number


@dataclass
class Member:
    """One architecture of a mutual-stage cohort, planned and built like its final run."""

    arch: str
    params: dict[str, Any]
    source: int | None  # the search trial its configuration comes from
    tcfg: Config
    record: RunRecord
    model: torch.nn.Module
    rng: Any  # the random state its own training would have started from


@dataclass
class Stages:
    """The stages' work for one worker: its shared data (`ctx`), the storage, and its log."""

    ctx: Context
    storage: RDBStorage
    log: Callable[[str], None]
    runs: list[NullRun | WandbRun] = field(default_factory=list)  # tracking runs opened by the current slot

    @property
    def cfg(self) -> Config:
        return self.ctx.cfg

    def tracked(self, stage: str, arch: str, trial: optuna.Trial, seed: int, params: dict[str, Any],
                replicate: int = 0) -> NullRun | WandbRun:
        """The trial's tracking run, its id stored in the trial's attributes."""
        cfg = self.cfg
        name = (stem(arch, seed, stage, replicate) if stage in ("final", "mutual")
                else f"{arch}-t{trial.number}" + (f"-r{replicate}" if replicate else ""))
        model = trial_config(cfg, params).model_config(arch)
        config = {"study": cfg.name, "stage": stage, "arch": arch, "seed": seed, "replicate": replicate,
                  "trial": trial.number, **params,
                  "model": {**asdict(model), "mixer": model.mixer.get(arch, {})}, "train": asdict(cfg.train),
                  "data": asdict(cfg.data)}
        run = start_run(cfg.tracking, out_dir=cfg.output_dir, project=cfg.wandb_project, study=cfg.name,
                        name=f"{cfg.name}/{name}", stage=stage, arch=arch,
                        tags=[f"phase{p}" for p in cfg.data.phases], config=config)
        if run.id:
            trial.set_user_attr("wandb_run_id", run.id)
        self.runs.append(run)
        return run

    def search_trial(self, study: optuna.Study, trial: optuna.Trial, arch: str, slot: int,
                     replicate: int = 0) -> None:
        cfg = self.cfg
        label = trial_label(trial, replicate)
        params = propose(cfg, study, trial, arch, replicate, slot)
        if cfg.iso != "none":
            try:
                params = iso_params(cfg, arch, params, iso_target(cfg))
            except ValueError as e:
                trial.set_user_attr("pruned_reason", str(e))
                study.tell(trial, state=TrialState.PRUNED)
                self.log(summary_line(arch, "search", label, "pruned", str(e)))
                return
        steps = cfg.search.steps or cfg.train.steps
        run = self.tracked("search", arch, trial, cfg.search.seed, params, replicate)
        out = run_trial(self.ctx, "search", arch, study, trial, params, cfg.search.seed, steps, prune=True, run=run,
                        replicate=replicate, init_seed=search_init_seed(cfg, replicate))
        rec = out.record
        study.tell(trial, out.value if out.state == TrialState.COMPLETE else None, state=out.state)
        run.finish({**rec.attrs(), "state": out.state.name.lower(), "value": out.value}, failure=rec.failure_reason)
        self.log(summary_line(arch, "search", label, out.state.name.lower(), search_detail(out)))

    def final_run(self, study: optuna.Study, trial: optuna.Trial, arch: str, slot: int, replicate: int = 0) -> None:
        cfg = self.cfg
        seed = cfg.seeds[slot]
        try:
            params, source = best_params(cfg, self.storage, arch, replicate)
        except NoConfiguration as e:
            record = RunRecord(study=cfg.name, stage="final", arch=arch, seed=seed, replicate=replicate,
                               failure_reason=str(e))
            self.finish(study, trial, NullRun(), None, Trained(TrialState.FAIL, None, record, []))
            return
        trial.set_user_attr("search_trial", source if source is not None else -1)
        earlier = self.trained_before(arch, seed, params, replicate)
        if earlier is not None:
            self.reuse(study, trial, earlier, replicate, source)
            return
        run = self.tracked("final", arch, trial, seed, params, replicate)
        out = run_trial(self.ctx, "final", arch, study, trial, params, seed, cfg.train.steps, prune=False, run=run,
                        replicate=replicate)
        self.finish(study, trial, run, source, out)

    def trained_before(self, arch: str, seed: int, params: dict[str, Any], replicate: int) -> RunFiles | None:
        """The finished, ok final run of an earlier replicate that trained `params` on `seed`, if any:
        final runs depend only on (configuration, seed), so another replicate choosing the same
        configuration would train the very same model (`test_same_seed_gives_identical_metrics`)."""
        cfg = self.cfg
        for r in range(replicate):
            files = RunFiles(cfg.output_dir, arch, seed, "final", r)
            if not files.run_json.exists():
                continue
            done = RunRecord.load(files.run_json)
            if done.status == "ok" and all(getattr(done, k) == v for k, v in params.items()):
                return files
        return None

    def reuse(self, study: optuna.Study, trial: optuna.Trial, earlier: RunFiles, replicate: int,
              source: int | None) -> None:
        """This replicate's final run as `earlier`'s files relabelled (`trial.copy_final`), not retrained;
        the record says where they come from (`copied_from`)."""
        record = RunRecord.load(earlier.run_json)
        record.replicate, record.search_trial, record.trial = replicate, source, trial.number
        record.copied_from = earlier.stem
        copy_final(earlier, RunFiles(self.cfg.output_dir, record.arch, record.seed, "final", replicate), record)
        trial.set_user_attr("copied_from", earlier.stem)
        study.tell(trial, record.val_loss)
        self.log(summary_line(record.arch, "final", f"r{replicate} seed {record.seed}", "ok",
                              f"same configuration as replicate {earlier.replicate}: {earlier.stem} reused"))

    def cohort(self, seed: int, replicate: int = 0) -> tuple[list[Member], list[tuple[str, str]]]:
        """The mutual stage's members for `seed` (the final configurations of `replicate`), each from
        the same initialisation as its final run, and the architectures that cannot join, with why."""
        cfg, ctx = self.cfg, self.ctx
        members, failed = [], []
        for arch in cfg.arch_list:
            try:
                params, source = best_params(cfg, self.storage, arch, replicate)
            except NoConfiguration as e:
                failed.append((arch, str(e)))
                continue
            tcfg, record = plan(ctx, "mutual", arch, None, params, seed, cfg.train.steps, replicate)
            if record.pruned_reason:
                failed.append((arch, record.pruned_reason))
                continue
            record.mutual_weight, record.cohort = cfg.mutual.weight, ",".join(cfg.arch_list)
            model = build(ctx, arch, tcfg, seed, record)
            members.append(Member(arch, params, source, tcfg, record, model, rng_state(ctx.device)))
        return members, failed

    def mutual_run(self, study: optuna.Study, trial: optuna.Trial, slot: int, replicate: int = 0) -> None:
        """One seed's cohort: every architecture's final configuration (of `replicate`) trained jointly
        with the mutual KL pull (`mutual.weight`), from the same initialisation as its final run."""
        cfg, ctx = self.cfg, self.ctx
        seed, weight = cfg.seeds[slot], cfg.mutual.weight
        trial.set_user_attr("seed", seed)
        members, failed = self.cohort(seed, replicate)
        for arch, why in failed:  # recorded like a failed final run; the others train on without it
            record = RunRecord(study=cfg.name, stage="mutual", arch=arch, seed=seed, replicate=replicate,
                               failure_reason=why)
            self.write_member(trial, NullRun(), None, Trained(TrialState.FAIL, None, record, []))
        if len(members) < 2:
            trial.set_user_attr("failure_reason", f"fewer than two architectures left to train jointly "
                                                  f"({', '.join(a for a, _ in failed)} failed)")
            study.tell(trial, state=TrialState.FAIL)
            self.log(summary_line("cohort", "mutual", f"seed {seed}", "failed", trial.user_attrs["failure_reason"]))
            return
        runs = [self.tracked("mutual", m.arch, trial, seed, m.params, replicate) for m in members]
        try:
            results = train_mutual([m.model for m in members], [m.tcfg.train for m in members], ctx.stream(seed),
                                   [ctx.validator(seed)] * len(members), weight, ctx.curriculum.final_epoch(),
                                   ctx.device, rng_states=[m.rng for m in members])
        except Exception as e:
            if not is_oom(e):
                raise
            results = [TrainResult(error=first_line(e)) for _ in members]
        values = []
        for m, run, res in zip(members, runs, results, strict=True):
            out = joint_outcome(ctx, m.record, m.model, res, run)
            self.write_member(trial, run, m.source, out)
            values += [out.value] if out.value is not None else []
        if values:
            study.tell(trial, sum(values) / len(values))
        else:
            trial.set_user_attr("failure_reason", "every member of the cohort failed")
            study.tell(trial, state=TrialState.FAIL)
        self.log(summary_line("cohort", "mutual", f"seed {seed}", "ok" if values else "failed",
                              f"{len(values)}/{len(cfg.arch_list)} architectures trained"))

    def write_member(self, trial: optuna.Trial, run: NullRun | WandbRun, source: int | None, out: Trained) -> None:
        """A mutual-stage member's outputs, as a final run's, under final/<arch>-seed<s>-mutual.*."""
        record = self.close(trial, run, source, out)
        trial.set_user_attr(f"{record.arch}_status", record.status)
        if record.val_accuracy is not None:
            trial.set_user_attr(f"{record.arch}_val_accuracy", record.val_accuracy)

    def close(self, trial: optuna.Trial, run: NullRun | WandbRun, source: int | None, out: Trained) -> RunRecord:
        """A final run's record closed, its outputs written and its tracking run finished."""
        record = out.record
        record.search_trial, record.trial, record.device = source, trial.number, str(self.ctx.device)
        record.status = "ok" if out.state == TrialState.COMPLETE else "failed"
        record.reason = record.failure_reason or record.pruned_reason or ""
        test = write_final(self.ctx, out)
        run.finish({**record.attrs(), **test}, failure=record.reason or None)
        return record

    def finish(self, study: optuna.Study, trial: optuna.Trial, run: NullRun | WandbRun, source: int | None,
               out: Trained) -> None:
        """A final run closed (`close`) and its trial told."""
        record = self.close(trial, run, source, out)
        state = out.state
        if state != TrialState.COMPLETE:  # diverged, over the memory budget, or nothing to retrain
            trial.set_user_attr("failure_reason", record.reason)
            state = TrialState.FAIL
        study.tell(trial, out.value if state == TrialState.COMPLETE else None, state=state)
        acc = record.val_accuracy
        detail = f"val_accuracy {acc:.3f}" if record.status == "ok" and acc is not None else record.reason
        label = (f"r{record.replicate} " if record.replicate else "") + f"seed {record.seed}"
        self.log(summary_line(record.arch, "final", label, record.status, detail))

    def failed(self, study: optuna.Study, trial: optuna.Trial, stage: str, arch: str | None, slot: int,
               error: Exception, replicate: int = 0) -> None:
        """A slot whose work raised `error`. When out_dir cannot be written, every later slot would
        fail alike: the trial is abandoned (failed without a reason, so a resumed run retries its slot)
        and the study stops (StudyError naming the directory). Otherwise the trial fails with the
        error as its reason, a final run's or cohort's files saying the same, and the study goes on."""
        cfg, reason = self.cfg, first_line(error)
        self.close_runs(failure=reason)
        why = unwritable(cfg.output_dir)
        if why is not None:
            with contextlib.suppress(Exception):  # the storage may sit in that directory: heartbeats retry it then
                study.tell(trial, state=TrialState.FAIL)
            raise StudyError(f"cannot write to out_dir {cfg.output_dir} ({why}): the study stopped with trial "
                             f"{trial.number} of {study.study_name} unfinished ({reason}); rerun the same "
                             f"command to resume once it is writable") from error
        seed = cfg.seeds[slot] if stage != "search" else cfg.search.seed
        try:
            state = frozen(trial).state  # told already (the error came after): its outcome stands
            if state == TrialState.RUNNING:
                self._record_failure(trial, stage, arch, seed, reason, replicate)
                trial.set_user_attr("failure_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                checkpoint_path(cfg, study.study_name, trial).unlink(missing_ok=True)  # a finished trial never resumes
        except Exception as e:
            raise StudyError(f"could not record the failure of trial {trial.number} of {study.study_name} "
                             f"({reason}): {first_line(e)}") from e
        label = trial_label(trial, replicate) if stage == "search" else f"seed {seed}"
        status = "failed" if state == TrialState.RUNNING else f"{state.name.lower()}, then an error"
        self.log(summary_line(arch or "cohort", stage, label, status, reason))

    def close_runs(self, failure: str | None = None) -> None:
        """Finish the tracking runs the slot opened (a run finished already is left as it is), so
        none stays open, nor keeps W&B's folders pointed into out_dir, after the slot."""
        runs, self.runs = self.runs, []
        for run in runs:
            with contextlib.suppress(Exception):  # tracking must not turn a recorded failure into a crash
                run.finish(failure=failure)

    def _record_failure(self, trial: optuna.Trial, stage: str, arch: str | None, seed: int, reason: str,
                        replicate: int = 0) -> None:
        """A failed final run's files, or each cohort member's, so the tables hold every slot."""
        if stage == "search":
            return
        for a in [arch] if stage == "final" else self.cfg.arch_list:
            record = RunRecord(study=self.cfg.name, stage=stage, arch=a, seed=seed, replicate=replicate,
                               failure_reason=reason, status="failed", reason=reason, trial=trial.number,
                               device=str(self.ctx.device))
            RunFiles(self.cfg.output_dir, a, seed, stage, replicate).write(record, [], None, None)


def trial_label(trial: optuna.Trial, replicate: int) -> str:
    """How a search trial is named in the log: `t3`, or `r1 t3` in replicate 1."""
    return (f"r{replicate} " if replicate else "") + f"t{trial.number}"


def search_detail(out: Trained) -> str:
    """A finished search trial's metric: its objective, or where and why it stopped."""
    rec = out.record
    if out.state == TrialState.COMPLETE:
        return f"val_loss {out.value:.3f}"
    if out.state == TrialState.PRUNED and rec.val_loss is not None and rec.steps:
        return f"val_loss {rec.val_loss:.3f} at step {rec.steps}, behind the median"
    return rec.pruned_reason or rec.failure_reason or ""
