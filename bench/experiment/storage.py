"""The Optuna storage a study's workers share: its studies, their fingerprints, slots and heartbeats.

Each architecture has a search study `<study>/<arch>` and a final study `<study>/<arch>/final`;
with `mutual.weight` set, one more, `<study>/mutual`. Search replicate r > 0 (`search.replicates`)
has its own set under `<study>/r<r>/` (`<study>/r1/mamba`, `<study>/r1/mamba/final`, `<study>/r1/mutual`);
replicate 0 keeps the names studies had before replicates existed. A stage's study remembers the configuration
it ran under (`fingerprint`) and refuses another, so a resumed study is always the same study.

Work is claimed in slots: a search study has `search.n_trials` slots, a final study one per seed.
A worker asks Optuna for a trial, then takes the first free slot in trial-number order (a retried
trial inherits its slot through its user attributes); a trial left without a slot (another worker
was faster) is closed as surplus and does not count. So any number of workers, started or killed
at any time, on one machine or many, ends with exactly the configured counts.

A running trial records a heartbeat; one silent for 3 heartbeats is failed by whichever worker
looks next and re-queued (`RetryHeartbeatStaleTrialCallback`) with the same parameters and slot.
Only Optuna's public API is used: trial ids come from the storage by study name and trial number.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.experiment.config import DERIVED_MODEL_KEYS, Config, ConfigError
from bench.util import first_line

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna warns that heartbeats are meant for Study.optimize; the Heartbeat class below records them for ask/tell.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_RETRY = 3  # retries of a trial whose worker died; after that its slot goes to a fresh trial
# what creating a storage's schema raises when another process is creating it at the same time
CREATED_BY_OTHER = ("already exists", "UNIQUE constraint failed", "duplicate key")


def _prefix(cfg: Config, replicate: int) -> str:
    return cfg.name + (f"/r{replicate}" if replicate else "")


def search_name(cfg: Config, arch: str, replicate: int = 0) -> str:
    return f"{_prefix(cfg, replicate)}/{arch}"


def final_name(cfg: Config, arch: str, replicate: int = 0) -> str:
    return f"{_prefix(cfg, replicate)}/{arch}/final"


def mutual_name(cfg: Config, replicate: int = 0) -> str:
    """One study for the mutual stage: a slot per seed, each trial trains every architecture jointly."""
    return f"{_prefix(cfg, replicate)}/mutual"


def optuna_names(cfg: Config) -> list[str]:
    """Every Optuna study of `cfg`'s stages: per replicate, per architecture search then final, then
    the replicate's mutual one."""
    names = []
    for r in range(cfg.search.replicates):
        names += [n for arch in cfg.arch_list for n in (search_name(cfg, arch, r), final_name(cfg, arch, r))]
        names += [mutual_name(cfg, r)] if cfg.mutual.weight is not None else []
    return names


def open_storage(cfg: Config, retries: int = 3) -> RDBStorage:
    """The study's storage with heartbeats and stale-trial retries; ConfigError if unreachable.
    Two commands started together on a new storage both create its tables and stamp its schema
    version: the slower one fails on the other's (`CREATED_BY_OTHER`) and opens it again."""
    if cfg.storage is None:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return RDBStorage(
            cfg.storage_url, heartbeat_interval=cfg.heartbeat, grace_period=3 * cfg.heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRY,
                                                                            inherit_intermediate_values=True),
            engine_kwargs={"pool_pre_ping": True} if not cfg.storage_url.startswith("sqlite") else None,
        )
    except Exception as e:  # SQLAlchemy's OperationalError, a missing driver, a bad URL
        if retries and any(m in str(e) for m in CREATED_BY_OTHER):
            time.sleep(0.5)
            return open_storage(cfg, retries - 1)
        shown = make_url(cfg.storage_url).render_as_string(hide_password=True)
        raise ConfigError(f"storage '{shown}' is unreachable: {first_line(e)}") from None


def check_reachable(cfg: Config, timeout_s: int = 10) -> None:
    """Connect once to a user-given storage before anything is written (out_dir, its marker), so an
    unreachable server or a missing SQLite folder is one error line and leaves no trace. The default
    storage is a SQLite file inside out_dir, created with it. The URL itself was checked by `validate`."""
    if cfg.storage is None:
        return
    url = make_url(cfg.storage)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or ".").parent
        if url.database not in (None, "", ":memory:") and not folder.is_dir():
            raise ConfigError(f"storage '{shown}' is unreachable: folder '{folder}' does not exist")
        return
    args = {"connect_timeout": timeout_s} if url.get_backend_name() == "postgresql" else {}
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect():
            pass
    except Exception as e:  # SQLAlchemy's OperationalError and the drivers' own, whatever the database
        raise ConfigError(f"storage '{shown}' is unreachable: {first_line(e)}") from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------- one configuration per study


def fingerprint(cfg: Config, stage: str) -> dict[str, Any]:
    """What must be equal for a stage's trials to be comparable: data, budget, model knobs, search
    space (the sampler and its `space` or `grid`) and sizing. Counts (n_trials, replicates, seeds,
    workers) may grow between runs of one study; these may not. The search stage's budget is
    search.steps, so a new final budget keeps the search. model.arch and model.max_len are derived
    per architecture, so they are no part of it; nor is the report's equivalence_margin."""
    c = asdict(cfg)
    keep = {k: c[k] for k in ("data", "train", "model", "iso", "iso_target", "memory_budget")}
    keep["model"] = {k: v for k, v in c["model"].items() if k not in DERIVED_MODEL_KEYS}
    unused = "grid" if cfg.search.sampler == "tpe" else "space"  # studies stored before grids existed match
    keep["search"] = {k: v for k, v in c["search"].items() if k not in ("n_trials", "replicates", unused)}
    if stage == "search":
        keep["train"] = {**keep["train"], "steps": cfg.search.steps or cfg.train.steps}
        keep["search"]["steps"] = None
    if stage == "mutual":  # the cohort: which architectures train together, and how strongly they pull
        keep["mutual"] = {**c["mutual"], "archs": cfg.arch_list}
    return keep


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_study(storage: RDBStorage, cfg: Config, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create or load `name`; refuse one that was run under a different configuration.

    A key the stored configuration lacks (a knob added to archbench since, such as a newly registered
    mixer's defaults) is no difference when its value is the default: defaults reproduce what ran."""
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True,
                                sampler=sampler, pruner=pruner)
    stage = name.rsplit("/", 1)[-1] if name.endswith(("/final", "/mutual")) else "search"
    mine = fingerprint(cfg, stage)
    stored = study.user_attrs.get("config_digest")
    if stored is None:
        study.set_user_attr("config_digest", digest(mine))
        study.set_user_attr("config", json.dumps(mine, default=str))
    elif stored != digest(mine):
        old = json.loads(study.user_attrs.get("config", "{}"))
        new, default = (json.loads(json.dumps(c, default=str)) for c in (mine, fingerprint(Config(), stage)))
        diff = sorted(_diff(old, new, default))
        if diff or not old:
            raise ConfigError(f"study '{name}' in {cfg.storage_url} was run with a different configuration "
                              f"({', '.join(diff[:4]) or 'unknown keys'} differ); use another out_dir/storage "
                              f"or delete it")
    return study


_ABSENT = object()


def _diff(a: Any, b: Any, default: Any = _ABSENT, prefix: str = "") -> list[str]:
    """Paths where stored `a` and current `b` differ; a path absent from `a` counts only when `b`
    holds something other than `default` there."""
    if a is _ABSENT:
        return [] if b == default else [prefix.rstrip(".")]
    if isinstance(a, dict) and isinstance(b, dict):
        sub = default if isinstance(default, dict) else {}
        return [d for k in set(a) | set(b)
                for d in _diff(a.get(k, _ABSENT), b.get(k), sub.get(k, _ABSENT), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


# ---------------------------------------------------------------- slots


def _is_live(t: FrozenTrial) -> bool:
    """Counts towards the slots: anything but a trial failed by a dead worker or closed as surplus."""
    if t.user_attrs.get("surplus"):
        return False
    if t.state == TrialState.FAIL:
        return "failure_reason" in t.user_attrs  # our own recorded failures are finished trials
    return True


def is_finished(t: FrozenTrial) -> bool:
    return _is_live(t) and t.state.is_finished()


def finished_count(study: optuna.Study) -> int:
    return sum(is_finished(t) for t in study.get_trials(deepcopy=False))


def live_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if _is_live(t)]


def slot_of(trials: list[FrozenTrial], number: int, n_slots: int) -> int | None:
    """The slot trial `number` holds: retried trials keep theirs; fresh ones take the free slots in
    trial-number order. Every worker computes the same answer from the same trials."""
    live = [t for t in trials if _is_live(t)]
    taken = {t.user_attrs["slot"] for t in live if "slot" in t.user_attrs}
    mine = next(t for t in trials if t.number == number)
    if "slot" in mine.user_attrs:
        return mine.user_attrs["slot"]
    free = iter(s for s in range(n_slots) if s not in taken)
    for t in sorted((t for t in live if "slot" not in t.user_attrs), key=lambda t: t.number):
        slot = next(free, None)
        if t.number == number:
            return slot
    return None


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of `trial`, looked up by its study's name and its number."""
    study_id = trial.storage.get_study_id_from_name(trial.study.study_name)
    return trial.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """`trial` as the storage holds it (its system attributes say which trial it retries)."""
    return trial.storage.get_trial(trial_id(trial))


def claim(study: optuna.Study, storage: RDBStorage, n_slots: int) -> tuple[optuna.Trial, int] | None:
    """Ask for a trial and give it a slot, or None when all `n_slots` are taken (finished or running)."""
    trials = study.get_trials(deepcopy=False)
    if sum(_is_live(t) and t.state != TrialState.WAITING for t in trials) >= n_slots:
        return None
    trial = study.ask()
    storage.record_heartbeat(trial_id(trial))  # from now on a dead worker's trial goes stale, never hangs
    slot = slot_of(study.get_trials(deepcopy=False), trial.number, n_slots)
    if slot is None:
        release(study, trial)
        return None
    trial.set_user_attr("slot", slot)
    return trial, slot


def release(study: optuna.Study, trial: optuna.Trial) -> None:
    """Close a claimed trial unrun, as surplus: its slot is free again, its number burnt."""
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds from a daemon thread while training."""

    def __init__(self, storage: RDBStorage, trial: optuna.Trial, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id(trial), interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # storage gone: the trial's own next write reports it, as one line
                return

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
