"""The study engine: a search stage and a final stage, identical for every architecture, on Optuna.

Search: per architecture an Optuna study `<study>/<arch>`; every trial trains with the same seed
(`search.seed`), data stream, validation sets and step budget, and is pruned on validation loss.
Final: the best configuration of each architecture retrained on every seed of `seeds`, evaluated
on the fixed test set; these runs live in a second Optuna study `<study>/<arch>/final`, so both
stages share one mechanism for claiming work, heartbeats, retries and resumption.

Mutual (with `mutual.weight` set): per seed, every architecture's final configuration trained
again jointly (`bench.mutual`: own loss + weight x the mean KL from the others' predictions), in a
study `<study>/mutual` with a slot per seed; its members' outputs sit beside the final runs'
(`final/<arch>-seed<s>-mutual.*`). On a CPU at short length (`multiseed`), a worker claims every
free seed of an architecture's final study at once and trains them as one stacked model
(`bench.multiseed.train_seeds`), each seed still its own trial, outputs and tracking run.

Work is claimed in slots: a search study has `search.n_trials` slots, a final study one per seed.
A worker asks Optuna for a trial, then takes the first free slot in trial-number order (a retried
trial inherits its slot through its user attributes); a trial left without a slot (another worker
was faster) is closed as surplus and does not count. So any number of workers, started or killed
at any time, on one machine or many, ends with exactly the configured counts.

Faults: a running trial records a heartbeat; one silent for 3 heartbeats is failed by whichever
worker looks next and re-queued with the same parameters and slot, and the retry resumes from the
checkpoint its predecessor wrote at its last validation. A diverged (NaN/inf) or out-of-memory run
is a finished, FAIL trial with its reason; an over-budget configuration is pruned before training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from bench.config import STUDY_MARKER, Config, ConfigError
from bench.data import Curriculum, SequenceSet, TrainStream, make_test_set, validation_set
from bench.memory import estimate, measured_bytes, model_on_meta
from bench.metrics import ALL, continuation, evaluate, score_logits
from bench.models import build_model
from bench.multiseed import train_seeds
from bench.mutual import rng_state, train_mutual
from bench.search import defaults, iso_params, iso_target, suggest, trial_config
from bench.seeding import derive_seed
from bench.tracking import NullRun, WandbRun, start_run
from bench.train import SeedResult, TrainingDiverged, distance_weighted_ce, train

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna warns that heartbeats are meant for Study.optimize; the Heartbeat class below records them for ask/tell.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)

MAX_RETRY = 3  # retries of a trial whose worker died; after that its slot goes to a fresh trial
POLL_S = 1.0  # how often an idle worker looks for work that other workers still hold


# ---------------------------------------------------------------- storage and slots


def open_storage(cfg: Config) -> RDBStorage:
    """The study's storage with heartbeats and stale-trial retries; ConfigError if unreachable."""
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"storage '{cfg.storage_url}' is unreachable: {first}") from None


def fingerprint(cfg: Config, stage: str) -> dict[str, Any]:
    """What must be equal for a stage's trials to be comparable: data, budget, model knobs, search
    space and sizing. Counts (n_trials, seeds, workers) may grow between runs of one study; these may
    not. The search stage's budget is search.steps, so a new final budget keeps the search."""
    c = asdict(cfg)
    keep = {k: c[k] for k in ("data", "train", "model", "iso", "iso_target", "memory_budget")}
    keep["search"] = {k: v for k, v in c["search"].items() if k != "n_trials"}
    if stage == "search":
        keep["train"] = {**keep["train"], "steps": cfg.search.steps or cfg.train.steps}
        keep["search"]["steps"] = None
    if stage == "mutual":  # the cohort: which architectures train together, and how strongly they pull
        keep["mutual"] = {**c["mutual"], "archs": cfg.arch_list}
    return keep


def _digest(obj: Any) -> str:
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
    digest = _digest(mine)
    stored = study.user_attrs.get("config_digest")
    if stored is None:
        study.set_user_attr("config_digest", digest)
        study.set_user_attr("config", json.dumps(mine, default=str))
    elif stored != digest:
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


def _is_live(t: FrozenTrial) -> bool:
    """Counts towards the slots: anything but a trial failed by a dead worker or closed as surplus."""
    if t.user_attrs.get("surplus"):
        return False
    if t.state == TrialState.FAIL:
        return "failure_reason" in t.user_attrs  # our own recorded failures are finished trials
    return True


def is_finished(t: FrozenTrial) -> bool:
    return _is_live(t) and t.state.is_finished()


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


def claim(study: optuna.Study, storage: RDBStorage, n_slots: int) -> tuple[optuna.Trial, int] | None:
    """Ask for a trial and give it a slot, or None when all `n_slots` are taken (finished or running)."""
    trials = study.get_trials(deepcopy=False)
    if sum(_is_live(t) and t.state != TrialState.WAITING for t in trials) >= n_slots:
        return None
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # from now on a dead worker's trial goes stale, never hangs
    slot = slot_of(study.get_trials(deepcopy=False), trial.number, n_slots)
    if slot is None:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("slot", slot)
    return trial, slot


class Heartbeat:
    """Records the trial's heartbeat every `interval` seconds from a daemon thread while training."""

    def __init__(self, storage: RDBStorage, trial: optuna.Trial, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial._trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


# ---------------------------------------------------------------- one trial


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError | MemoryError) or "out of memory" in msg \
        or "can't allocate memory" in msg


def first_line(e: BaseException) -> str:
    msgs = [str(x).strip().splitlines()[0] for x in (e, e.__cause__) if x is not None and str(x).strip()]
    return " / ".join(dict.fromkeys(msgs)) or type(e).__name__


@dataclass
class Context:
    """What every trial of one worker shares: data, validation sets (identical for every
    architecture of a seed), the test set, the device."""

    cfg: Config
    device: torch.device
    curriculum: Curriculum
    test: SequenceSet
    val_cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Context:
        curriculum = cfg.curriculum()
        test = make_test_set(curriculum.phases, cfg.data.length, cfg.data.test_per_family, cfg.data.eval_seed,
                             curriculum.families)
        return cls(cfg, device, curriculum, test)

    def stream(self, seed: int) -> TrainStream:
        d, t = self.cfg.data, self.cfg.train
        return TrainStream(self.curriculum, d.length, t.batch_size, seed, steps_per_epoch=t.val_every)

    def validator(self, seed: int) -> Callable[[torch.nn.Module, int, float], dict[str, float]]:
        d, t = self.cfg.data, self.cfg.train

        def validate(model: torch.nn.Module, index: int, epoch: float) -> dict[str, float]:
            if (seed, index) not in self.val_cache:
                fresh = validation_set(self.curriculum, d.length, seed, index, epoch, d.val_size)
                self.val_cache[(seed, index)] = fresh.seqs.to(self.device)
            seqs = self.val_cache[(seed, index)]
            logits = model(seqs[:, :-1])
            scores = {k: v.mean().item() for k, v in score_logits(logits, seqs[:, 1:]).items()}
            return {"val_loss": distance_weighted_ce(logits, seqs[:, 1:], t.alpha, t.distance_weight).item(),
                    "val_ce": scores["loss"], "val_accuracy": scores["accuracy"],
                    "val_distance_error": scores["distance_error"]}

        return validate


def checkpoint_path(cfg: Config, study_name: str, trial: optuna.Trial) -> Path:
    """One file per slot chain: a retried trial finds its predecessor's checkpoint."""
    root = RetryHeartbeatStaleTrialCallback.retry_history(study_trial(trial))
    number = root[0] if root else trial.number
    path = cfg.output_dir / "checkpoints" / study_name.replace("/", "__") / f"trial-{number}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def study_trial(trial: optuna.Trial) -> FrozenTrial:
    return trial.study._storage.get_trial(trial._trial_id)


def plan(ctx: Context, arch: str, trial: optuna.Trial | None, params: dict[str, Any], seed: int, steps: int,
         ) -> tuple[Config, dict[str, Any], str | None]:
    """The run's config and first attributes (also set on its trial, if it has one of its own), and
    why it cannot run: its memory estimate exceeds the budget (None: it can)."""
    cfg = ctx.cfg
    tcfg = trial_config(cfg, params)
    tcfg = replace(tcfg, train=replace(tcfg.train, steps=steps))
    meta = model_on_meta(tcfg.model_config(arch))
    est = estimate(meta, tcfg.train.batch_size, cfg.data.length - 1)
    attrs: dict[str, Any] = {
        "arch": arch, "seed": seed, "steps_budget": steps, **params,
        "num_params": meta.num_params(), "state_size": meta.state_size(cfg.data.length),
        "mem_estimate_gib": est.total_bytes / 2**30,
    }
    if est.total_bytes > cfg.memory_budget * 2**30:
        attrs["pruned_reason"] = f"memory estimate {est} exceeds memory_budget {cfg.memory_budget} GiB"
    if trial is not None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
    return tcfg, attrs, attrs.get("pruned_reason")


def build(ctx: Context, arch: str, tcfg: Config, seed: int, attrs: dict[str, Any]) -> torch.nn.Module:
    """The model every stage trains for (arch, seed): the same initialisation stream for every
    architecture; records its implementation and measured training memory in `attrs`."""
    torch.manual_seed(derive_seed("init", seed))
    model = build_model(tcfg.model_config(arch)).to(ctx.device)
    attrs["impl"] = ",".join(sorted({str(getattr(b.mixer, "impl_used", "torch")) for b in model.blocks}))
    attrs["mem_measured_gib"] = measured_bytes(model, ctx.stream(seed).batch(0).to(ctx.device)) / 2**30
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    return model


RECORDED = ("impl", "mem_measured_gib", "mem_peak_gib", "pruned_reason", "failure_reason", "steps", "tokens",
            "wall_s", "resumed_from", "best_step", "stopped_early", "val_loss", "val_ce", "val_accuracy",
            "val_distance_error", "vectorised", "fallback", "mutual_weight", "cohort")


def record(ctx: Context, trial: optuna.Trial | None, attrs: dict[str, Any], result: Any) -> None:
    """The outcome's attributes, into `attrs` and the run's own trial (if any)."""
    if ctx.device.type == "cuda":
        attrs["mem_peak_gib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    if result is not None:
        attrs.update(steps=result.steps, tokens=result.tokens, wall_s=round(result.wall_s, 2),
                     resumed_from=result.resumed_from, best_step=result.best_step,
                     stopped_early=result.stopped_early)
        if result.history:
            attrs.update({k: v for k, v in result.history[-1].items() if k.startswith("val_")})
    for k in RECORDED:
        if k in attrs and trial is not None:
            trial.set_user_attr(k, attrs[k])


def run_trial(ctx: Context, arch: str, study: optuna.Study, trial: optuna.Trial, params: dict[str, Any],
              seed: int, steps: int, prune: bool, run: NullRun | WandbRun | None = None,
              ) -> tuple[TrialState, float | None, dict[str, Any]]:
    """Train `arch` with `params` on `seed` for `steps` steps inside `trial`; return its final state,
    value (best validation loss) and the trained model's record (user attributes, history, model).
    Each validation is also logged to the tracking `run`, against tokens seen."""
    run = run or NullRun()
    tcfg, attrs, over = plan(ctx, arch, trial, params, seed, steps)
    if over:
        return TrialState.PRUNED, None, {"attrs": attrs, "history": []}
    model = build(ctx, arch, tcfg, seed, attrs)
    seen: list[Any] = []  # the live TrainResult, so a pruned trial still reports its progress

    def on_validation(res: Any) -> None:
        seen[:] = [res]
        last = res.history[-1]
        run.log(last)
        trial.report(last["val_loss"], res.steps)
        if prune and res.steps < steps and trial.should_prune():  # a trial at its last step is done, not pruned
            raise optuna.TrialPruned(f"validation loss {last['val_loss']:.4f} at step {res.steps} "
                                     f"is worse than the median of earlier trials")

    ck = checkpoint_path(ctx.cfg, study.study_name, trial)
    state, value = TrialState.COMPLETE, None
    result = None
    try:
        result = train(model, tcfg.train, ctx.stream(seed), ctx.validator(seed), ctx.curriculum.final_epoch(),
                       ctx.device, ctx.cfg.progress, desc=f"{study.study_name} #{trial.number}", checkpoint=ck,
                       on_validation=on_validation)
        value = result.best_val
    except optuna.TrialPruned as e:
        state, attrs["pruned_reason"] = TrialState.PRUNED, str(e)
    except Exception as e:
        if not (isinstance(e, TrainingDiverged) or _is_oom(e)):
            raise
        state, attrs["failure_reason"] = TrialState.FAIL, first_line(e)
        result = getattr(e, "result", None)
    result = result or (seen[0] if seen else None)
    record(ctx, trial, attrs, result)
    ck.unlink(missing_ok=True)
    return state, value, {"attrs": attrs, "history": result.history if result else [], "model": model}


def joint_outcome(ctx: Context, trial: optuna.Trial | None, attrs: dict[str, Any], model: torch.nn.Module,
                  res: SeedResult, run: NullRun | WandbRun) -> tuple[TrialState, float | None, dict[str, Any]]:
    """run_trial's return for a member of a joint loop (bench.multiseed, bench.mutual), its history
    reported to the tracking run and its own trial (a mutual cohort shares one: None) after the fact."""
    for row in res.history:
        run.log(row)
        if trial is not None:
            trial.report(row["val_loss"], row["step"])
    if res.error:
        attrs["failure_reason"] = res.error
    record(ctx, trial, attrs, res)
    state = TrialState.FAIL if res.error else TrialState.COMPLETE
    return state, None if res.error else res.best_val, {"attrs": attrs, "history": res.history, "model": model}


# ---------------------------------------------------------------- the two stages


def search_name(cfg: Config, arch: str) -> str:
    return f"{cfg.name}/{arch}"


def final_name(cfg: Config, arch: str) -> str:
    return f"{cfg.name}/{arch}/final"


def mutual_name(cfg: Config) -> str:
    """One study for the mutual stage: a slot per seed, each trial trains every architecture jointly."""
    return f"{cfg.name}/mutual"


def stacked(cfg: Config, device: torch.device) -> bool:
    """Whether the final stage trains a configuration's seeds as one stacked model (`multiseed`):
    auto = on a CPU at length <= 16, where benchmarks/multiseed.py measured it faster."""
    if cfg.multiseed == "auto":
        return device.type == "cpu" and cfg.data.length <= 16
    return cfg.multiseed == "on"


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


class NoConfiguration(RuntimeError):
    """The search left nothing to retrain; the final runs are recorded as failed with this reason."""


def best_params(cfg: Config, storage: RDBStorage, arch: str) -> tuple[dict[str, Any], int | None]:
    """The final stage's configuration of `arch`: its best completed search trial (and its number),
    or the study's `model` sizes when there is no search; sized to the iso budget when asked."""
    if cfg.search.n_trials == 0:
        params = defaults(arch, cfg)
        if cfg.iso != "none":
            params = iso_params(cfg, arch, params, iso_target(cfg))
        return params, None
    study = load_study(storage, cfg, search_name(cfg, arch))
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_finished(t)]
    if not done:
        raise NoConfiguration(f"no search trial of {arch} completed (all pruned or failed, see trials.parquet)")
    best = min(done, key=lambda t: (t.value, t.number))
    keys = ("d_model", "num_layers", "d_state", "d_conv", "expand", "lr")
    return {k: best.user_attrs[k] for k in keys if k in best.user_attrs}, best.number


def search_complete(study: optuna.Study, n: int) -> bool:
    return sum(is_finished(t) for t in study.get_trials(deepcopy=False)) >= n


def _final_dir(cfg: Config) -> Path:
    return cfg.output_dir / "final"


def final_stem(arch: str, seed: int, stage: str = "final") -> str:
    """The file stem of a final (or mutual-stage) run's outputs."""
    return f"{arch}-seed{seed}" + ("-mutual" if stage == "mutual" else "")


def _write_final(cfg: Config, arch: str, seed: int, record: dict[str, Any], ctx: Context,
                 stage: str = "final") -> dict[str, float]:
    """One final run's outputs, each file written whole then renamed: run row, history and test scores
    under out_dir/final/<stem>.*, weights in out_dir/models/<stem>.pt (stem: `final_stem`). Returns the
    study-level test scores ({"test_accuracy": ...}; empty for a failed run)."""
    out = _final_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    stem = final_stem(arch, seed, stage)
    files: dict[str, Callable[[Path], None]] = {}
    files[f"{stem}.history.parquet"] = lambda p: pd.DataFrame(record["history"]).assign(arch=arch, seed=seed) \
        .to_parquet(p, index=False)
    if record["attrs"].get("status") == "ok":
        model = record["model"]
        prefix = cfg.eval.continuation_prefix or cfg.data.length // 2
        scored = pd.concat([evaluate(model, ctx.test, cfg.eval.batch_size),
                            continuation(model, ctx.test, prefix, cfg.eval.batch_size)], ignore_index=True)
        files[f"{stem}.results.parquet"] = lambda p: scored.assign(arch=arch, seed=seed).to_parquet(p, index=False)
        files[f"../models/{stem}.pt"] = lambda p: torch.save({k: v.cpu() for k, v in model.state_dict().items()}, p)
        top = scored[scored["phase"].isna() & (scored["family"] == ALL) & scored["position"].isna()]
        test = {f"test_{m}": float(v) for m, v in zip(top["metric"], top["value"], strict=True)}
    else:
        test = {}
    files[f"{stem}.run.json"] = lambda p: p.write_text(json.dumps(record["attrs"], default=str, indent=1))
    (cfg.output_dir / "models").mkdir(exist_ok=True)
    for name, write in files.items():  # run.json last: its presence means the rest is there
        target = out / name
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, target)
    return test


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
        self.studies: dict[str, optuna.Study] = {}

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
        while True:
            busy = False  # some slot is still running in another worker
            for stage, arch in self.work():
                outcome = self.try_one(stage, arch)
                if outcome == "ran":
                    break  # ran something: start over from the first stage and architecture
                busy |= outcome == "busy"
            else:
                if not busy:
                    return
                time.sleep(POLL_S)

    def search_done(self, arch: str) -> bool:
        """Whether `arch`'s search has finished (trivially without one); ConfigError under stage=final
        when it is unfinished and nobody runs it."""
        cfg = self.cfg
        if not cfg.search.n_trials:
            return True
        search = self.study(search_name(cfg, arch), arch, True)
        if search_complete(search, cfg.search.n_trials):
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
            study = self.study(search_name(cfg, arch), arch, search=True)
            n = cfg.search.n_trials
        elif stage == "final":
            if not self.search_done(arch):
                return "busy"
            study = self.study(final_name(cfg, arch), arch, search=False)
            n = len(cfg.seeds)
        else:
            if not all(self.search_done(a) for a in cfg.arch_list):
                return "busy"
            study = self.study(mutual_name(cfg), "mutual", search=False)
            n = len(cfg.seeds)
        optuna.storages.fail_stale_trials(study)
        got = claim(study, self.storage, n)
        if got is None:
            live = [t for t in study.get_trials(deepcopy=False) if _is_live(t)]
            return "done" if sum(t.state.is_finished() for t in live) >= n else "busy"
        claimed = [got]
        while stage == "final" and stacked(cfg, self.device) and (more := claim(study, self.storage, n)):
            claimed.append(more)  # every free seed of this configuration, trained as one stacked model
        with contextlib.ExitStack() as beats:
            for trial, _ in claimed:
                beats.enter_context(Heartbeat(self.storage, trial, cfg.heartbeat))
            if stage == "search":
                self.search_trial(study, got[0], arch, got[1])
            elif stage == "mutual":
                self.mutual_run(study, *got)
            elif len(claimed) == 1:
                self.final_run(study, got[0], arch, got[1])
            else:
                self.final_runs(study, claimed, arch)
        return "ran"

    def tracked(self, stage: str, arch: str, trial: optuna.Trial, seed: int,
                params: dict[str, Any]) -> NullRun | WandbRun:
        """The trial's tracking run, its id stored in the trial's attributes."""
        cfg = self.cfg
        name = final_stem(arch, seed, stage) if stage in ("final", "mutual") else f"{arch}-t{trial.number}"
        config = {"study": cfg.name, "stage": stage, "arch": arch, "seed": seed, "trial": trial.number, **params,
                  "model": asdict(trial_config(cfg, params).model_config(arch)), "train": asdict(cfg.train),
                  "data": asdict(cfg.data)}
        run = start_run(cfg.tracking, out_dir=cfg.output_dir, project=cfg.wandb_project, study=cfg.name,
                        name=f"{cfg.name}/{name}", stage=stage, arch=arch,
                        tags=[f"phase{p}" for p in cfg.data.phases], config=config)
        if run.id:
            trial.set_user_attr("wandb_run_id", run.id)
        return run

    def search_trial(self, study: optuna.Study, trial: optuna.Trial, arch: str, slot: int) -> None:
        cfg = self.cfg
        params = suggest(trial, arch, cfg)
        if cfg.iso != "none":
            try:
                params = iso_params(cfg, arch, params, iso_target(cfg))
            except ValueError as e:
                trial.set_user_attr("pruned_reason", str(e))
                study.tell(trial, state=TrialState.PRUNED)
                self.log(f"{study.study_name} trial {slot + 1}/{cfg.search.n_trials}: pruned ({e})")
                return
        steps = cfg.search.steps or cfg.train.steps
        run = self.tracked("search", arch, trial, cfg.search.seed, params)
        state, value, rec = run_trial(self.ctx, arch, study, trial, params, cfg.search.seed, steps, prune=True,
                                      run=run)
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        why = rec["attrs"].get("pruned_reason") or rec["attrs"].get("failure_reason") or f"val_loss {value:.4f}"
        run.finish({**rec["attrs"], "state": state.name.lower(), "value": value},
                    failure=rec["attrs"].get("failure_reason"))
        self.log(f"{study.study_name} trial {slot + 1}/{cfg.search.n_trials}: {state.name.lower()} ({why})")

    def final_run(self, study: optuna.Study, trial: optuna.Trial, arch: str, slot: int) -> None:
        cfg = self.cfg
        seed = cfg.seeds[slot]
        try:
            params, source = best_params(cfg, self.storage, arch)
        except NoConfiguration as e:
            self.finish(study, trial, "final", arch, seed, NullRun(), None, TrialState.FAIL, None,
                        {"attrs": {"arch": arch, "seed": seed, "failure_reason": str(e)}, "history": []})
            return
        trial.set_user_attr("search_trial", source if source is not None else -1)
        run = self.tracked("final", arch, trial, seed, params)
        state, value, rec = run_trial(self.ctx, arch, study, trial, params, seed, cfg.train.steps, prune=False,
                                      run=run)
        self.finish(study, trial, "final", arch, seed, run, source, state, value, rec)

    def final_runs(self, study: optuna.Study, claimed: list[tuple[optuna.Trial, int]], arch: str) -> None:
        """Several seeds of `arch`'s final configuration trained as one stacked model (`multiseed`);
        equal to separate final runs to float tolerance (tests/test_multiseed.py)."""
        cfg, ctx = self.cfg, self.ctx
        try:
            params, source = best_params(cfg, self.storage, arch)
            plans = [(trial, cfg.seeds[slot], *plan(ctx, arch, trial, params, cfg.seeds[slot], cfg.train.steps))
                     for trial, slot in claimed]
        except NoConfiguration:
            plans = []
        if not plans or any(over for *_, over in plans):  # each one fails or is pruned with its reason
            for trial, slot in claimed:
                self.final_run(study, trial, arch, slot)
            return
        runs, models = [], []
        for trial, seed, tcfg, attrs, _ in plans:
            trial.set_user_attr("search_trial", source if source is not None else -1)
            runs.append(self.tracked("final", arch, trial, seed, params))
            models.append(build(ctx, arch, tcfg, seed, attrs))
        seeds = [seed for _, seed, *_ in plans]
        self.log(f"{study.study_name} seeds {seeds}: training as one stacked model")
        try:
            results = train_seeds(models, plans[0][2].train, [ctx.stream(s) for s in seeds],
                                  [ctx.validator(s) for s in seeds], ctx.curriculum.final_epoch(), ctx.device)
        except Exception as e:
            if not _is_oom(e):
                raise
            results = [SeedResult(error=first_line(e), fallback="out of memory") for _ in seeds]
        for (trial, seed, _, attrs, _), model, run, res in zip(plans, models, runs, results, strict=True):
            attrs.update(vectorised=not res.fallback, fallback=res.fallback)
            state, value, rec = joint_outcome(ctx, trial, attrs, model, res, run)
            self.finish(study, trial, "final", arch, seed, run, source, state, value, rec)

    def mutual_run(self, study: optuna.Study, trial: optuna.Trial, slot: int) -> None:
        """One seed's cohort: every architecture's final configuration trained jointly with the
        mutual KL pull (`mutual.weight`), from the same initialisation as its final run."""
        cfg, ctx = self.cfg, self.ctx
        seed, weight = cfg.seeds[slot], cfg.mutual.weight
        trial.set_user_attr("seed", seed)
        cohort, failed = [], []
        for arch in cfg.arch_list:
            try:
                params, source = best_params(cfg, self.storage, arch)
            except NoConfiguration as e:
                failed.append((arch, str(e)))
                continue
            tcfg, attrs, over = plan(ctx, arch, None, params, seed, cfg.train.steps)
            if over:
                failed.append((arch, over))
                continue
            attrs.update(mutual_weight=weight, cohort=",".join(cfg.arch_list))
            model = build(ctx, arch, tcfg, seed, attrs)
            cohort.append((arch, params, source, tcfg, attrs, model, rng_state(ctx.device)))
        for arch, why in failed:  # recorded like a failed final run; the others train on without it
            self.write_member(trial, arch, seed, NullRun(), None, TrialState.FAIL,
                              {"attrs": {"arch": arch, "seed": seed, "failure_reason": why}, "history": []})
        if len(cohort) < 2:
            trial.set_user_attr("failure_reason", f"fewer than two architectures left to train jointly "
                                                  f"({', '.join(a for a, _ in failed)} failed)")
            study.tell(trial, state=TrialState.FAIL)
            self.log(f"{study.study_name} seed {seed}: failed ({trial.user_attrs['failure_reason']})")
            return
        runs = [self.tracked("mutual", arch, trial, seed, params) for arch, params, *_ in cohort]
        self.log(f"{study.study_name} seed {seed}: training {', '.join(a for a, *_ in cohort)} jointly "
                 f"(KL weight {weight})")
        try:
            results = train_mutual([c[5] for c in cohort], [c[3].train for c in cohort], ctx.stream(seed),
                                   [ctx.validator(seed)] * len(cohort), weight, ctx.curriculum.final_epoch(),
                                   ctx.device, rng_states=[c[6] for c in cohort])
        except Exception as e:
            if not _is_oom(e):
                raise
            results = [SeedResult(error=first_line(e)) for _ in cohort]
        values = []
        for (arch, _, source, _, attrs, model, _), run, res in zip(cohort, runs, results, strict=True):
            state, value, rec = joint_outcome(ctx, None, attrs, model, res, run)
            self.write_member(trial, arch, seed, run, source, state, rec)
            values += [value] if value is not None else []
        if values:
            study.tell(trial, sum(values) / len(values))
        else:
            trial.set_user_attr("failure_reason", "every member of the cohort failed")
            study.tell(trial, state=TrialState.FAIL)
        self.log(f"{study.study_name} seed {seed}: {len(values)}/{len(cfg.arch_list)} architectures ok")

    def write_member(self, trial: optuna.Trial, arch: str, seed: int, run: NullRun | WandbRun,
                     source: int | None, state: TrialState, rec: dict[str, Any]) -> None:
        """A mutual-stage member's outputs, as a final run's, under final/<arch>-seed<s>-mutual.*."""
        attrs = self.close(trial, "mutual", arch, seed, run, source, state, rec)
        trial.set_user_attr(f"{arch}_status", attrs["status"])
        if "val_accuracy" in attrs:
            trial.set_user_attr(f"{arch}_val_accuracy", attrs["val_accuracy"])

    def close(self, trial: optuna.Trial, stage: str, arch: str, seed: int, run: NullRun | WandbRun,
              source: int | None, state: TrialState, rec: dict[str, Any]) -> dict[str, Any]:
        """A final run's outputs written and its tracking run closed; returns its attributes."""
        attrs = rec["attrs"]
        attrs.update(stage=stage, search_trial=source, status="ok" if state == TrialState.COMPLETE else "failed",
                     reason=attrs.get("failure_reason") or attrs.get("pruned_reason") or "", trial=trial.number,
                     device=str(self.device))
        test = _write_final(self.cfg, arch, seed, rec, self.ctx, stage=stage)
        run.finish({**attrs, **test}, failure=attrs["reason"] or None)
        return attrs

    def finish(self, study: optuna.Study, trial: optuna.Trial, stage: str, arch: str, seed: int,
               run: NullRun | WandbRun, source: int | None, state: TrialState, value: float | None,
               rec: dict[str, Any]) -> None:
        """A final run closed (`close`) and its trial told."""
        attrs = self.close(trial, stage, arch, seed, run, source, state, rec)
        if state != TrialState.COMPLETE:  # diverged, over the memory budget, or nothing to retrain
            trial.set_user_attr("failure_reason", attrs["reason"])
            state = TrialState.FAIL
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        acc = attrs.get("val_accuracy")
        self.log(f"{study.study_name} seed {seed}: {attrs['status']}"
                 + (f" (val accuracy {acc:.3f})" if acc is not None else f" ({attrs['reason']})"))


def mark_study_dir(cfg: Config) -> None:
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / STUDY_MARKER).touch()


def worker_tag(cfg: Config, index: int) -> str:
    """Local index; with a shared storage (possibly many machines) also the host and process."""
    return f"{index}" if cfg.storage is None else f"{index}@{platform.node()}:{os.getpid()}"


def worker_main(cfg: Config, device: str, index: int) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(cfg.threads)
    prefix = f"[worker {index}] "
    Worker(cfg, torch.device(device), log=lambda m: print(prefix + m, flush=True), tag=worker_tag(cfg, index)).run()


def progress(cfg: Config, storage: RDBStorage) -> tuple[int, int, dict[str, float]]:
    """(finished slots, total slots, best search value per architecture) read from the storage."""
    done, total, best = 0, 0, {}
    names = optuna.get_all_study_names(storage)
    slots = [(arch, name, n) for arch in cfg.arch_list
             for name, n in ((search_name(cfg, arch), cfg.search.n_trials), (final_name(cfg, arch), len(cfg.seeds)))]
    if cfg.mutual.weight is not None:
        slots.append((None, mutual_name(cfg), len(cfg.seeds)))
    for arch, name, n in slots:
        total += n
        if name not in names or n == 0:
            continue
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        done += min(n, sum(is_finished(t) for t in trials))
        if arch is not None and name == search_name(cfg, arch):
            values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
            if values:
                best[arch] = min(values)
    return done, total, best


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
