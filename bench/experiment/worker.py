"""One worker: claim a free slot of the first stage that has one, run it, start over; stop when
every slot of every stage is finished. What a slot does is `stages.Stages`' part.

Order of work: per stage, per search replicate, per architecture: each architecture's search,
then each architecture's final runs (as soon as its search of that replicate has finished), then
the mutual stage's seeds (once every search of that replicate has finished). Slots are claimed
through the shared storage (`storage.claim`), so any number of workers, in one process or many, on
one machine or several, split the work and end with exactly the configured counts.

Proposals are the slot's (`sampler`): the same whichever worker or command claims it. Under TPE or
the median pruner a search slot starts only once every lower slot of its study has finished (its
proposal or its pruning reads them), so a worker finding an earlier slot of that study still
running moves on to other work ("busy"): architectures, not trials, run side by side.

Faults: a trial whose worker died is retried with the same parameters and slot and resumes from
the checkpoint its predecessor wrote at its last validation (`trial.checkpoint_path`). A slot whose
work raises is failed with its reason and the worker goes on (`Stages.failed`); an out_dir or a
storage that can no longer be written stops the worker with a `StudyError`.

An idle worker (every free slot taken, others still running) looks again every POLL_S seconds, and
only at the stages not yet finished, so waiting costs the running workers next to no CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
import torch
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from bench.experiment.config import Config, ConfigError
from bench.experiment.context import Context
from bench.experiment.sampler import make_sampler, ready, sequential
from bench.experiment.stages import Stages, StudyError, unwritable
from bench.experiment.storage import (
    Heartbeat,
    claim,
    final_name,
    finished_count,
    live_trials,
    load_study,
    mutual_name,
    open_storage,
    release,
    search_name,
)
from bench.util import first_line

POLL_S = 1.0  # how often an idle worker looks for work that other workers still hold
Item = tuple[str, int, str | None]  # (stage, replicate, architecture; None for the mutual stage)

__all__ = ["POLL_S", "Worker", "make_pruner", "make_sampler"]


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    if cfg.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.search.startup_trials,
                                       n_warmup_steps=cfg.search.warmup_validations * cfg.train.val_every)


@dataclass
class Worker:
    """One process's share of a study: claim slots until every slot of every stage is finished."""

    cfg: Config
    device: torch.device
    log: Callable[[str], None] = print
    tag: str = "0"  # which worker this is (`pool.worker_tag`); recorded on each trial it runs
    storage: RDBStorage = field(init=False)
    ctx: Context = field(init=False)

    def __post_init__(self) -> None:
        self.storage = open_storage(self.cfg)
        self.ctx = Context.build(self.cfg, self.device)
        self.stages = Stages(self.ctx, self.storage, self.log)
        self.studies: dict[str, optuna.Study] = {}
        self.finished: set[Item] = set()  # (stage, replicate, arch) with every slot finished: final

    def study(self, name: str, search: bool) -> optuna.Study:
        """The stage's study, loaded once; a search study prunes with the study's pruner (its
        proposals come from `sampler.propose`, never from the study's own sampler)."""
        if name not in self.studies:
            self.studies[name] = load_study(self.storage, self.cfg, name,
                                            pruner=make_pruner(self.cfg) if search else None)
        return self.studies[name]

    def work(self) -> list[Item]:
        """(stage, replicate, architecture) in the order this worker looks for slots; the mutual stage
        is one study per replicate for all architectures."""
        cfg = self.cfg
        stages = {"all": ("search", "final", "mutual"), "search": ("search",), "final": ("final", "mutual")}
        items: list[Item] = []
        for stage in stages[cfg.stage]:
            for r in range(cfg.search.replicates):
                if stage == "mutual":
                    items += [("mutual", r, None)] if cfg.mutual.weight is not None else []
                else:
                    items += [(stage, r, arch) for arch in cfg.arch_list]
        return items

    def run(self) -> None:
        """Work until every slot is finished; StudyError when the out_dir or the storage fails."""
        try:
            self._run()
        except (OSError, StorageInternalError) as e:
            why = unwritable(self.cfg.output_dir)
            where = f"out_dir {self.cfg.output_dir} ({why})" if why else f"storage {self.cfg.storage_url}"
            raise StudyError(f"cannot write to {where}: {first_line(e)}; the study stopped, rerun the same "
                             f"command to resume") from e

    def _run(self) -> None:
        while True:
            busy = False  # some slot is still running in another worker
            for item in self.work():
                if item in self.finished:
                    continue
                outcome = self.try_one(*item)
                if outcome == "ran":
                    break  # ran something: start over from the first stage and architecture
                if outcome == "done":
                    self.finished.add(item)
                busy |= outcome == "busy"
            else:
                if not busy:
                    return
                time.sleep(POLL_S)

    def search_done(self, arch: str, replicate: int = 0) -> bool:
        """Whether `arch`'s search of `replicate` has finished (trivially without one); ConfigError
        under stage=final when it is unfinished and nobody runs it."""
        cfg = self.cfg
        if not cfg.search.n_trials or ("search", replicate, arch) in self.finished:
            return True
        search = self.study(search_name(cfg, arch, replicate), True)
        if finished_count(search) >= cfg.search.n_trials:
            self.finished.add(("search", replicate, arch))
            return True
        running = any(t.state == TrialState.RUNNING for t in search.get_trials(deepcopy=False))
        if cfg.stage == "final" and not running:
            which = f" (replicate {replicate})" if replicate else ""
            raise ConfigError(f"stage=final: the search of {arch}{which} is unfinished and no worker is running "
                              f"it; run stage=search or stage=all first")
        return False

    def waits(self, study: optuna.Study) -> bool:
        """Whether a sequential search (`sampler.sequential`) must wait: some trial of the study is
        running, so the next fresh slot would miss its outcome (a re-queued trial, WAITING, is claimed:
        it keeps its parameters)."""
        trials = study.get_trials(deepcopy=False)
        return (sequential(self.cfg) and not any(t.state == TrialState.WAITING for t in trials)
                and any(t.state == TrialState.RUNNING for t in trials))

    def try_one(self, stage: str, replicate: int, arch: str | None) -> str:
        """'ran' a slot, 'busy' (slots held by others, or waiting for the search), or 'done'."""
        cfg = self.cfg
        if stage == "search":
            if cfg.search.n_trials == 0:
                return "done"
            study, n = self.study(search_name(cfg, arch, replicate), True), cfg.search.n_trials
        elif stage == "final":
            if not self.search_done(arch, replicate):
                return "busy"
            study, n = self.study(final_name(cfg, arch, replicate), False), len(cfg.seeds)
        else:
            if not all(self.search_done(a, replicate) for a in cfg.arch_list):
                return "busy"
            study, n = self.study(mutual_name(cfg, replicate), False), len(cfg.seeds)
        optuna.storages.fail_stale_trials(study)
        if stage == "search" and self.waits(study):
            return "busy"
        got = claim(study, self.storage, n)
        if got is None:
            return "done" if sum(t.state.is_finished() for t in live_trials(study)) >= n else "busy"
        trial, slot = got
        if stage == "search" and sequential(cfg) and not ready(study, trial, slot):
            release(study, trial)  # another worker claimed a lower slot meanwhile: its outcome comes first
            return "busy"
        trial.set_user_attr("worker", self.tag)
        with Heartbeat(self.storage, trial, cfg.heartbeat):
            try:
                if stage == "search":
                    self.stages.search_trial(study, trial, arch, slot, replicate)
                elif stage == "final":
                    self.stages.final_run(study, trial, arch, slot, replicate)
                else:
                    self.stages.mutual_run(study, trial, slot, replicate)
            except Exception as e:  # never a trial left RUNNING by a cause this worker can catch
                self.stages.failed(study, trial, stage, arch, slot, e, replicate)
            finally:
                self.stages.close_runs()
        return "ran"
