"""What a search slot trains: a point of the shared grid, or a reproducible TPE proposal.

Both samplers propose by SLOT, never by trial number or timing: a trial closed as surplus burns a
number, a retried trial keeps its slot, and slot i of architecture a in replicate r proposes the
same configuration whichever worker, process or command claims it. So two commands on one storage
(which claim distinct slots through the storage) never propose the same trial twice.

Grid (`search.sampler=grid`): the *core grid* lr x d_model x num_layers (lr x num_layers under
iso sizing, where d_model is sized afterwards) is the same for every architecture. The knobs a
mixer has beyond it (d_state, d_conv, expand) are assigned to the core points by a balanced design:
each knob's values are tiled over the core points and shuffled, seeded by (search.seed, replicate,
knob) but not by the architecture, so over the whole core grid every value of a knob is used equally
often (counts differ by at most one; a subset, n_trials below the grid's size, holds whichever values
its points carry) and every mixer with that knob sees the same assignment. Every architecture therefore
trains exactly |core grid| trials (or the first n_trials points of the replicate's permutation of
it). Example, the default grid (3 lr x 3 d_model x 2 num_layers = 18 points): mamba's 18 trials use
each d_state of [8, 16, 32] 6 times and each d_conv of [2, 4] 9 times; the LSTM's 18 trials are the
same 18 core points without extras. A core point whose d_model is below its d_state takes the
largest d_state of the grid that fits.

TPE (`search.sampler=tpe`): slot i's proposal is a TPE sampler seeded by (search.seed, replicate,
arch, i) run on the finished trials of slots < i only (an in-memory copy of them), so it depends on
nothing else. The worker starts slot i only once every lower slot has finished (`ready`); so it
does under the median pruner with either sampler (`sequential`), so that what is pruned does not
depend on timing either.

Trials record their point under the Optuna names `search.suggest` uses (log2_d_model, num_layers,
log2_d_state, log2_d_conv, expand, lr); grid distributions span the grid's range, so importances
and the dashboard read grid and TPE studies alike.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from bench.experiment.config import Config
from bench.experiment.search import suggest, used_hparams
from bench.experiment.storage import frozen, is_finished, trial_id
from bench.seeding import derive_seed

EXTRA_KEYS = ("d_state", "d_conv", "expand")


def core_grid(cfg: Config) -> list[dict[str, Any]]:
    """The core points shared by every architecture, in a fixed order (values sorted), e.g.
    [{"lr": 0.001, "d_model": 32, "num_layers": 1}, {"lr": 0.001, "d_model": 32, "num_layers": 2}, ...]."""
    g = cfg.search.grid
    axes = {"lr": g.lr, "d_model": g.d_model, "num_layers": g.num_layers}
    if cfg.iso != "none":  # d_model is sized to the budget afterwards: not a knob of the grid
        del axes["d_model"]
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*map(sorted, axes.values()))]


def _balanced(values: list[Any], n: int, rng: random.Random) -> list[Any]:
    """`values` tiled to length n and shuffled: each value n // len or n // len + 1 times."""
    tiled = [values[i % len(values)] for i in range(n)]
    rng.shuffle(tiled)
    return tiled


def grid_points(cfg: Config, arch: str, replicate: int = 0) -> list[dict[str, Any]]:
    """The configuration of each search slot of `arch` in `replicate` (index = slot): the core points
    in the replicate's permutation, each with the extra knobs `arch`'s mixer takes."""
    s, core = cfg.search, core_grid(cfg)
    extras = {k: _balanced(sorted(getattr(s.grid, k)), len(core),
                           random.Random(derive_seed("grid", s.seed, replicate, k)))
              for k in EXTRA_KEYS if k in used_hparams(arch)}
    points = []
    for i, point in enumerate(core):
        point = {**point, **{k: v[i] for k, v in extras.items()}}
        if "d_state" in point and cfg.iso == "none" and point["d_state"] > point["d_model"]:
            point["d_state"] = max(d for d in s.grid.d_state if d <= point["d_model"])
        points.append(point)
    order = list(range(len(core)))
    random.Random(derive_seed("grid-order", s.seed, replicate)).shuffle(order)
    return [points[i] for i in order]


def grid_distributions(cfg: Config) -> dict[str, BaseDistribution]:
    """The Optuna distribution of each grid parameter: the grid's whole range, the same for every
    trial of a study (importances need one search space)."""
    g = cfg.search.grid

    def exps(values: list[int]) -> IntDistribution:
        return IntDistribution(int(math.log2(min(values))), int(math.log2(max(values))))

    return {"log2_d_model": exps(g.d_model), "num_layers": IntDistribution(min(g.num_layers), max(g.num_layers)),
            "log2_d_state": exps(g.d_state), "log2_d_conv": exps(g.d_conv),
            "expand": CategoricalDistribution(sorted(g.expand)),
            "lr": FloatDistribution(min(g.lr), max(g.lr), log=True)}


def optuna_params(point: dict[str, Any]) -> dict[str, Any]:
    """A configuration under its Optuna names: sizes as exponents, e.g. {"log2_d_model": 6, "lr": 0.003}."""
    return {(f"log2_{k}" if k in ("d_model", "d_state", "d_conv") else k): (int(math.log2(v)) if k in (
        "d_model", "d_state", "d_conv") else v) for k, v in point.items()}


def record(trial: optuna.Trial, params: dict[str, Any], dists: dict[str, BaseDistribution]) -> None:
    """Store `params` (Optuna names) as the trial's parameters, as `trial.suggest_*` would."""
    tid = trial_id(trial)
    for name, value in params.items():
        trial.storage.set_trial_param(tid, name, dists[name].to_internal_repr(value), dists[name])


def make_sampler(cfg: Config, arch: str, *salt: Any) -> optuna.samplers.TPESampler:
    """A TPE sampler seeded from the study's search seed, the architecture and `salt` (replicate, slot)."""
    return optuna.samplers.TPESampler(seed=derive_seed("tpe", cfg.search.seed, arch, *salt) % 2**32,
                                      n_startup_trials=cfg.search.startup_trials)


def slot(t: FrozenTrial) -> int | None:
    return t.user_attrs.get("slot")


def history(study: optuna.Study, before: int) -> list[FrozenTrial]:
    """The finished trials of slots < `before`, in slot order: all a TPE proposal may depend on."""
    done = [t for t in study.get_trials(deepcopy=False) if is_finished(t) and slot(t) is not None and slot(t) < before]
    return sorted(done, key=slot)


def sequential(cfg: Config) -> bool:
    """Whether a search slot must wait for every lower slot: when its proposal (TPE) or its pruning
    (the median pruner compares it with the trials before it) reads them. A grid without pruning
    runs its slots in parallel; either way only whole architectures run side by side."""
    return cfg.search.sampler == "tpe" or cfg.search.pruner != "none"


def ready(study: optuna.Study, trial: optuna.Trial, at: int) -> bool:
    """Whether `trial` (holding slot `at`) may start in a sequential search: a fresh trial once
    every slot < `at` has finished; a retried one (it has its parameters) at once."""
    return bool(frozen(trial).params) or len(history(study, at)) >= at


def tpe_proposal(cfg: Config, study: optuna.Study, arch: str, replicate: int, at: int) -> FrozenTrial:
    """Slot `at`'s TPE proposal: a trial asked of an in-memory study holding only `history` (the
    failed ones left out, as TPE ignores them anyway)."""
    memory = optuna.create_study(sampler=make_sampler(cfg, arch, replicate, at), direction="minimize")
    memory.add_trials([t for t in history(study, at) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)])
    suggest(memory.ask(), arch, cfg)
    return memory.trials[-1]


def propose(cfg: Config, study: optuna.Study, trial: optuna.Trial, arch: str, replicate: int,
            at: int) -> dict[str, Any]:
    """The configuration search slot `at` trains, recorded in `trial`'s parameters; a retried trial
    (re-queued by the heartbeat callback with its predecessor's parameters) keeps them. Returns sizes
    and lr, e.g. {"d_model": 64, "num_layers": 2, "d_state": 16, "lr": 0.003}."""
    retried = bool(frozen(trial).params)
    if cfg.search.sampler == "grid":
        point = grid_points(cfg, arch, replicate)[at]
        if not retried:
            record(trial, optuna_params(point), grid_distributions(cfg))
        return point
    if retried:
        return suggest(trial, arch, cfg)  # Optuna returns the recorded values
    proposal = tpe_proposal(cfg, study, arch, replicate, at)
    record(trial, proposal.params, proposal.distributions)
    return suggest(optuna.trial.FixedTrial(proposal.params), arch, cfg)  # the parameters as sizes and lr
