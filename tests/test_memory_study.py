"""studies/memory.yaml against issue 17 item 6: every architecture searches the learning rate on one
shared grid at fixed sizes (the same three trials each), at least 3 seeds, the lag families, and the
decay probe's inputs are random tokens, not the lag mixture of the test set."""

from __future__ import annotations

from bench.experiment.config import compose_config, validate
from bench.experiment.sampler import grid_points
from bench.models import mixer_names

SIZES = {"d_model": 64, "num_layers": 2, "d_state": 16, "d_conv": 4, "expand": 2}


def test_memory_study_searches_only_the_learning_rate_per_architecture_on_a_grid():
    cfg = validate(compose_config(["study=memory"]))
    s = cfg.search
    assert s.sampler == "grid" and s.pruner == "none" and s.replicates == 2  # search randomness in the intervals
    assert sorted(s.grid.lr) == [1e-3, 3e-3, 1e-2]
    assert all(list(getattr(s.grid, k)) == [v] for k, v in SIZES.items())  # sizes fixed: single-value lists
    assert all(getattr(cfg.model, k) == v for k, v in SIZES.items())
    assert s.n_trials == len(s.grid.lr)  # the whole grid: every lr trained for every architecture
    assert cfg.arch_list == mixer_names() and len(cfg.seeds) >= 3
    for arch in cfg.arch_list:
        points = grid_points(cfg, arch)
        assert sorted(p["lr"] for p in points) == sorted(s.grid.lr)
        assert all(p[k] == v for p in points for k, v in SIZES.items() if k in p)


def test_memory_study_trains_the_lag_families_at_length_128():
    cfg = validate(compose_config(["study=memory"]))
    assert list(cfg.data.phases) == [4] and cfg.data.length == 128
    trained = [f.name for f in cfg.curriculum().phase_families(4)]
    assert trained == [f"lag_{2**i}" for i in range(7)]  # lag_1 .. lag_64, all mixed
    assert 0 < cfg.search.steps < cfg.train.steps
