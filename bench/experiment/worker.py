"""One worker: claim a free slot of the first stage that has one, run it, start over; stop when
every slot of every stage is finished. What a slot does is `stages.Stages`' part.

Order of work: each architecture's search, then each architecture's final runs (as soon as its
search has finished), then the mutual stage's seeds (once every search has finished). Slots are
claimed through the shared storage (`storage.claim`), so any number of workers, in one process
or many, on one machine or several, split the work and end with exactly the configured counts.

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
from typing import Any

import optuna
import torch
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from bench.experiment.config import Config, ConfigError
from bench.experiment.context import Context
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
    search_name,
)
from bench.seeding import derive_seed
from bench.util import first_line

POLL_S = 1.0  # how often an idle worker looks for work that other workers still hold


def make_sampler(cfg: Config, arch: str, *salt: Any) -> optuna.samplers.BaseSampler:
    """A TPE sampler seeded from the study, the architecture and `salt` (trials so far, worker): one
    worker replays the same proposals on the same history; parallel workers propose different ones."""
    return optuna.samplers.TPESampler(seed=derive_seed("tpe", cfg.search.seed, arch, *salt) % 2**32,
                                      n_startup_trials=cfg.search.startup_trials)


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
    tag: str = "0"  # tells parallel workers' samplers apart
    storage: RDBStorage = field(init=False)
    ctx: Context = field(init=False)

    def __post_init__(self) -> None:
        self.storage = open_storage(self.cfg)
        self.ctx = Context.build(self.cfg, self.device)
        self.stages = Stages(self.ctx, self.storage, self.log)
        self.studies: dict[str, optuna.Study] = {}
        self.finished: set[tuple[str, str | None]] = set()  # (stage, arch) with every slot finished: final

    def study(self, name: str, arch: str, search: bool) -> optuna.Study:
        """The stage's study; a search study gets a sampler seeded afresh for each trial it asks."""
        if name not in self.studies:
            self.studies[name] = load_study(self.storage, self.cfg, name)
        study = self.studies[name]
        if search:
            n = len(study.get_trials(deepcopy=False))
            study = optuna.Study(name, self.storage, sampler=make_sampler(self.cfg, arch, n, self.tag),
                                 pruner=make_pruner(self.cfg))
        return study

    def work(self) -> list[tuple[str, str | None]]:
        """(stage, architecture) in the order this worker looks for slots; the mutual stage is one
        study for all architectures."""
        cfg = self.cfg
        stages = {"all": ("search", "final", "mutual"), "search": ("search",), "final": ("final", "mutual")}
        items: list[tuple[str, str | None]] = []
        for stage in stages[cfg.stage]:
            if stage == "mutual":
                items += [("mutual", None)] if cfg.mutual.weight is not None else []
            else:
                items += [(stage, arch) for arch in cfg.arch_list]
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
            for stage, arch in self.work():
                if (stage, arch) in self.finished:
                    continue
                outcome = self.try_one(stage, arch)
                if outcome == "ran":
                    break  # ran something: start over from the first stage and architecture
                if outcome == "done":
                    self.finished.add((stage, arch))
                busy |= outcome == "busy"
            else:
                if not busy:
                    return
                time.sleep(POLL_S)

    def search_done(self, arch: str) -> bool:
        """Whether `arch`'s search has finished (trivially without one); ConfigError under stage=final
        when it is unfinished and nobody runs it."""
        cfg = self.cfg
        if not cfg.search.n_trials or ("search", arch) in self.finished:
            return True
        search = self.study(search_name(cfg, arch), arch, True)
        if finished_count(search) >= cfg.search.n_trials:
            self.finished.add(("search", arch))
            return True
        running = any(t.state == TrialState.RUNNING for t in search.get_trials(deepcopy=False))
        if cfg.stage == "final" and not running:
            raise ConfigError(f"stage=final: the search of {arch} is unfinished and no worker is running "
                              f"it; run stage=search or stage=all first")
        return False

    def try_one(self, stage: str, arch: str | None) -> str:
        """'ran' a slot, 'busy' (slots held by others, or waiting for the search), or 'done'."""
        cfg = self.cfg
        if stage == "search":
            if cfg.search.n_trials == 0:
                return "done"
            study, n = self.study(search_name(cfg, arch), arch, search=True), cfg.search.n_trials
        elif stage == "final":
            if not self.search_done(arch):
                return "busy"
            study, n = self.study(final_name(cfg, arch), arch, search=False), len(cfg.seeds)
        else:
            if not all(self.search_done(a) for a in cfg.arch_list):
                return "busy"
            study, n = self.study(mutual_name(cfg), "mutual", search=False), len(cfg.seeds)
        optuna.storages.fail_stale_trials(study)
        got = claim(study, self.storage, n)
        if got is None:
            return "done" if sum(t.state.is_finished() for t in live_trials(study)) >= n else "busy"
        trial, slot = got
        with Heartbeat(self.storage, trial, cfg.heartbeat):
            try:
                if stage == "search":
                    self.stages.search_trial(study, trial, arch, slot)
                elif stage == "final":
                    self.stages.final_run(study, trial, arch, slot)
                else:
                    self.stages.mutual_run(study, trial, slot)
            except Exception as e:  # never a trial left RUNNING by a cause this worker can catch
                self.stages.failed(study, trial, stage, arch, slot, e)
            finally:
                self.stages.close_runs()
        return "ran"
