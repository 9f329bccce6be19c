"""The search samplers (bench.experiment.sampler): the shared grid, its balanced extras, slot-based
proposals, and TPE proposals that do not depend on how many workers produced their history."""

import math
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from bench.experiment.config import Config, ConfigError, compose_config
from bench.experiment.sampler import (
    EXTRA_KEYS,
    core_grid,
    grid_distributions,
    grid_points,
    optuna_params,
    propose,
    ready,
    sequential,
)
from bench.experiment.search import used_hparams
from bench.experiment.stages import best_params, search_init_seed
from bench.experiment.storage import claim, final_name, fingerprint, frozen, open_storage, release, search_name
from bench.models import mixer_names

CORE = ("lr", "d_model", "num_layers")


def grid_cfg(*overrides: str) -> Config:
    return compose_config(["study=smoke", "search.sampler=grid", "search.n_trials=18", "tracking=none",
                           "report=false", *overrides])


def test_every_architecture_gets_the_same_core_grid_in_full():
    cfg = grid_cfg()
    core = {tuple(p[k] for k in CORE) for p in core_grid(cfg)}
    assert len(core) == len(core_grid(cfg)) == 3 * 3 * 2
    for r in (0, 1):
        orders = []
        for arch in mixer_names():
            points = grid_points(cfg, arch, r)
            assert len(points) == len(core)  # equal effort: |core grid| trials for every architecture
            assert {tuple(p[k] for k in CORE) for p in points} == core
            assert set(points[0]) == set(CORE) | set(used_hparams(arch))  # only the knobs the mixer takes
            orders.append([tuple(p[k] for k in CORE) for p in points])
        assert all(o == orders[0] for o in orders)  # one permutation per replicate, shared: n_trials < 18 is fair


@pytest.mark.parametrize("arch", [a for a in mixer_names() if used_hparams(a)])
def test_each_extra_knob_is_spread_evenly_over_the_core_grid(arch):
    cfg = grid_cfg()
    for r in range(3):
        points = grid_points(cfg, arch, r)
        for knob in used_hparams(arch):
            counts = Counter(p[knob] for p in points)
            assert set(counts) == set(getattr(cfg.search.grid, knob))
            assert max(counts.values()) - min(counts.values()) <= 1, (knob, counts)


def test_a_slot_always_gets_the_same_point_and_replicates_differ():
    cfg = grid_cfg()
    assert grid_points(cfg, "mamba", 0) == grid_points(cfg, "mamba", 0)
    assert grid_points(cfg, "mamba", 1) == grid_points(grid_cfg(), "mamba", 1)
    assert grid_points(cfg, "mamba", 0) != grid_points(cfg, "mamba", 1)
    assert grid_points(cfg, "mamba", 0) != grid_points(grid_cfg("search.seed=1"), "mamba", 0)
    # mixers sharing a knob share its assignment to the core points
    s4d = {tuple(p[k] for k in CORE): p["d_state"] for p in grid_points(cfg, "s4d", 0)}
    mamba = {tuple(p[k] for k in CORE): p["d_state"] for p in grid_points(cfg, "mamba", 0)}
    assert s4d == mamba


def test_a_core_point_narrower_than_its_d_state_takes_the_largest_that_fits():
    cfg = grid_cfg("search.grid.d_model=[8,64]", "search.grid.d_state=[8,32]", "search.n_trials=12")
    points = grid_points(cfg, "s4d", 0)
    assert all(p["d_state"] == 8 for p in points if p["d_model"] == 8)
    assert {p["d_state"] for p in points if p["d_model"] == 64} == {8, 32}


def test_the_recorded_parameters_fit_the_grid_distributions():
    cfg = grid_cfg()
    dists = grid_distributions(cfg)
    for point in grid_points(cfg, "mamba", 0):
        params = optuna_params(point)
        assert set(params) == set(dists)
        for name, value in params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value))
        assert 2 ** params["log2_d_model"] == point["d_model"] and params["lr"] == point["lr"]


@pytest.mark.parametrize("override, message", [
    ("search.n_trials=19", "exceeds the core grid's 18 points"),
    ("search.grid.d_model=[48,64]", "search.grid.d_model values must be powers of two"),
    ("search.grid.lr=[0.001,0.001]", "search.grid.lr must list distinct values"),
    ("search.grid.lr=[-0.001]", "search.grid.lr values must be positive"),
    ("search.grid.d_state=[64]", "no d_state fits"),
    ("search.replicates=0", "search.replicates must be at least 1"),
    ("search.n_trials=0 search.replicates=2", "every replicate would retrain the same configuration"),
    ("search.sampler=random", "search.sampler must be tpe or grid"),
])
def test_bad_grid_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        grid_cfg(*override.split())


@pytest.mark.parametrize("margin", ["0", "0.5", "-0.01"])
def test_the_equivalence_margin_is_a_fraction_below_one_half(margin):
    with pytest.raises(ConfigError, match="equivalence_margin must be in"):
        grid_cfg(f"equivalence_margin={margin}")
    assert grid_cfg("equivalence_margin=0.02").equivalence_margin == 0.02


def test_the_fingerprint_holds_the_grid_but_not_the_counts():
    cfg = grid_cfg()
    assert fingerprint(cfg, "search")["search"]["grid"]["lr"] == [1e-3, 3e-3, 1e-2]
    assert fingerprint(cfg, "search") != fingerprint(grid_cfg("search.grid.lr=[0.001]", "search.n_trials=6"),
                                                     "search")
    assert fingerprint(cfg, "final") == fingerprint(grid_cfg("search.replicates=3", "search.n_trials=4"), "final")
    assert "grid" not in fingerprint(Config(), "search")["search"]  # a TPE study stored before grids still matches


def test_replicate_names_and_seeds():
    cfg = grid_cfg()
    assert (search_name(cfg, "lstm"), final_name(cfg, "lstm")) == ("smoke/lstm", "smoke/lstm/final")
    assert (search_name(cfg, "lstm", 2), final_name(cfg, "lstm", 2)) == ("smoke/r2/lstm", "smoke/r2/lstm/final")
    assert search_init_seed(cfg, 0) is None and search_init_seed(cfg, 1) != search_init_seed(cfg, 2)


# ---------------------------------------------------------------- proposals through the storage


def objective(params: dict) -> float:
    """A fake validation loss with a clear optimum (d_model 64, lr 3e-3, one layer)."""
    return (params["log2_d_model"] - 6) ** 2 + (math.log10(params["lr"]) + 2.5) ** 2 + params["num_layers"]


def search(tmp_path, sampler: str, interleave: bool, n: int = 7) -> tuple[dict[int, dict], Config, object]:
    """Run a search of `n` slots through `claim` and `propose` with a fake objective and return each
    slot's proposal. `interleave` imitates other workers: between slots it burns trial numbers (a
    trial of a worker that died before taking a slot, one closed as surplus), so slot i is held by
    a different trial number than when one worker runs alone."""
    cfg = compose_config(["study=smoke", f"search.sampler={sampler}", f"search.n_trials={n}",
                          "search.startup_trials=2", "tracking=none", "report=false", f"out_dir={tmp_path}"])
    storage = open_storage(cfg)
    study = optuna.create_study(storage=storage, study_name=search_name(cfg, "mamba"))
    proposals = {}
    while len(proposals) < n:
        if interleave:
            study.tell(study.ask(), state=TrialState.FAIL)  # failed by the heartbeat check: not live
            trial, slot = claim(study, storage, n)
            release(study, trial)
        trial, slot = claim(study, storage, n)
        assert ready(study, trial, slot)
        proposals[slot] = point = propose(cfg, study, trial, "mamba", 0, slot)
        for k, v in point.items():  # what `plan` records on a trial that trains
            trial.set_user_attr(k, v)
        study.tell(trial, objective(frozen(trial).params))
    return proposals, cfg, storage


@pytest.mark.parametrize("sampler", ["grid", "tpe"])
def test_a_slots_proposal_does_not_depend_on_the_trial_numbers_or_workers(tmp_path, sampler):
    alone, _, _ = search(tmp_path / "one", sampler, interleave=False)
    shared, cfg, storage = search(tmp_path / "two", sampler, interleave=True)
    assert alone == shared
    assert len({tuple(sorted(p.items())) for p in alone.values()}) == len(alone)  # no duplicate trial
    params, _ = best_params(cfg, storage, "mamba")
    assert params == min(alone.values(), key=lambda p: objective(optuna_params(p)))


def test_a_tpe_slot_waits_for_every_lower_slot(tmp_path):
    cfg = compose_config(["study=smoke", "search.n_trials=3", "tracking=none", "report=false", f"out_dir={tmp_path}"])
    storage = open_storage(cfg)
    study = optuna.create_study(storage=storage, study_name=search_name(cfg, "lstm"))
    first, _ = claim(study, storage, 3)
    second, slot = claim(study, storage, 3)
    assert slot == 1 and not ready(study, second, 1)  # slot 0 still running: its outcome is slot 1's history
    propose(cfg, study, first, "lstm", 0, 0)
    study.tell(first, 1.0)
    assert ready(study, second, 1)


def test_every_extra_key_is_a_shared_hyperparameter():
    assert set(EXTRA_KEYS) == {k for a in mixer_names() for k in used_hparams(a)}


def test_only_a_grid_without_pruning_runs_an_architectures_slots_side_by_side():
    assert sequential(grid_cfg()) and sequential(grid_cfg("search.sampler=tpe"))  # the median pruner reads history
    assert not sequential(grid_cfg("search.pruner=none")) and sequential(grid_cfg("search.pruner=none",
                                                                                  "search.sampler=tpe"))


def test_a_storage_created_by_another_command_at_the_same_time_is_opened_again(tmp_path, monkeypatch):
    import bench.experiment.storage as storage_module

    real, calls = storage_module.RDBStorage, []

    def racing(*args, **kwargs):  # the other command created the tables first
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("(sqlite3.OperationalError) table study_directions already exists")
        return real(*args, **kwargs)

    monkeypatch.setattr(storage_module, "RDBStorage", racing)
    cfg = compose_config(["study=smoke", "tracking=none", "report=false", f"out_dir={tmp_path}"])
    assert isinstance(open_storage(cfg), real) and len(calls) == 2
    monkeypatch.setattr(storage_module, "RDBStorage", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("refused")))
    with pytest.raises(ConfigError, match="unreachable: refused"):
        open_storage(cfg)
