"""Sequence families (generation vs. rule checks), curriculum mixtures, and the data streams."""

import pytest
import torch

from bench.data import (
    EVAL_SEED,
    FAMILIES,
    FAMILY_NAMES,
    PHASES,
    AdditiveFamily,
    Curriculum,
    SequenceSet,
    TrainStream,
    families,
    get_family,
    make_test_set,
    seen_in_training,
    validation_set,
)
from bench.seeding import generator

LENGTHS = (3, 8, 64, 256)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def long_params(**values) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v]) for k, v in values.items()}


def real_params(**values) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v], dtype=torch.float64) for k, v in values.items()}


# --- registry ------------------------------------------------------------------------------------


def test_registry_lists_all_families_in_phase_order():
    assert FAMILY_NAMES == [
        "constant", "arithmetic", "alternating",
        "alternating_steps", "growing_steps", "shrinking_steps",
        "geometric", "alternating_factors", "rational_factors",
        "two_step", "three_step", "mixed_period",
        "fibonacci_mod", "double_every_third", "floor_geometric", "ceil_geometric",
        "alternating_signs", "even_odd", "rule_switch",
        "lag_1", "lag_2", "lag_4", "lag_8", "lag_16", "lag_32", "lag_64",
        "selective_copy_2", "selective_copy_4", "selective_copy_8", "selective_copy_16",
        "mqar_2", "mqar_4", "mqar_8", "mqar_16",
        "noisy_recall_2", "noisy_recall_4", "noisy_recall_8", "noisy_recall_16",
        "variable_lag_4", "variable_lag_8", "variable_lag_16", "variable_lag_32",
    ]  # fmt: skip
    assert PHASES == (1, 2, 3, 4, 5)
    assert [len(families(p)) for p in PHASES] == [3, 9, 7, 7, 16] and len(families()) == 42
    assert [f.phase for f in FAMILIES.values()] == sorted(f.phase for f in FAMILIES.values())
    assert {f.group for f in families(2)} == {"steps", "geometric", "periodic"}
    assert {f.group for f in families(3)} == {"composition", "transformation", "conditional"}
    assert {f.group for f in families(4)} == {"memory"}
    assert get_family("even_odd").name == "even_odd"
    with pytest.raises(ValueError, match="unknown family 'fib' .*known: constant"):
        get_family("fib")
    with pytest.raises(ValueError, match="unknown phase 6"):
        families(6)


# --- every family: generation and check() cross-validate each other ---------------------------------


def supported(lengths: tuple[int, ...]) -> list[tuple[str, int]]:
    """(family, length) for every family at each of `lengths` it supports (`lag_k` needs k + 2)."""
    return [(name, n) for name in FAMILY_NAMES for n in lengths if n >= FAMILIES[name].min_length]


@pytest.mark.parametrize(("name", "length"), supported(LENGTHS))
def test_generated_terms_are_in_range_and_obey_the_rule(name, length):
    fam = FAMILIES[name]
    seqs, params = fam.generate(200, length, gen(1))
    assert seqs.dtype == torch.int64 and seqs.shape == (200, length)
    assert seqs.min() >= 0 and seqs.max() <= 255
    assert all(v.shape[0] == 200 for v in params.values())
    assert fam.check(seqs, params).all()


@pytest.mark.parametrize(("name", "length"), supported(LENGTHS[:3]))
def test_check_rejects_one_corrupted_term(name, length):
    """+1 (mod 256) at a random position >= 2 of every row: each term is pinned by the rule, the
    parameters and the unchanged earlier terms, so every corrupted row must be flagged."""
    fam = FAMILIES[name]
    seqs, params = fam.generate(200, length, gen(2))
    pos = torch.randint(2, length, (200,), generator=gen(3))
    bad = seqs.clone()
    bad[torch.arange(200), pos] = (bad[torch.arange(200), pos] + 1) % 256
    assert not fam.check(bad, params).any()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_generation_is_deterministic_per_seed(name):
    fam = FAMILIES[name]
    length = max(8, fam.min_length)
    a, pa = fam.generate(64, length, gen(5))
    b, pb = fam.generate(64, length, gen(5))
    c, _ = fam.generate(64, length, gen(6))
    assert torch.equal(a, b) and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(a, c)


def test_check_enforces_the_value_range():
    fam = get_family("constant")
    seqs = torch.full((1, 4), 256)
    assert fam.follows_rule(seqs, long_params(c=256)).item()
    assert not fam.check(seqs, long_params(c=256)).item()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_lengths_below_three_are_rejected(name):
    with pytest.raises(ValueError, match="at least 3"):
        FAMILIES[name].generate(4, 2, gen())


# --- hand-written examples (the design's lists) ---------------------------------------------------

EXAMPLES = [
    ("constant", long_params(c=1), [1, 1, 1, 1]),
    ("arithmetic", long_params(x0=2, d=2), [2, 4, 6, 8, 10]),
    ("arithmetic", long_params(x0=250, d=3), [250, 253, 0, 3]),  # wraps mod 256
    ("alternating", long_params(x0=1, x1=0), [1, 0, 1, 0, 1, 0]),
    ("alternating_steps", long_params(x0=1, s1=2, s2=1), [1, 3, 4, 6, 7, 9]),
    ("growing_steps", long_params(x0=1, s0=1, g=1), [1, 2, 4, 7, 11]),
    ("shrinking_steps", long_params(x0=1, s0=4, g=1), [1, 5, 8, 10, 11, 11, 10]),
    ("geometric", long_params(x0=2, r=2), [2, 4, 8, 16]),
    ("geometric", long_params(x0=100, r=3), [100, 44, 132, 140]),  # 300, 396, 420 mod 256
    ("alternating_factors", long_params(x0=1, f1=2, f2=3), [1, 2, 6, 12, 36]),
    ("rational_factors", {"x0": torch.tensor([8]), "p": torch.tensor([[1, 3]]), "q": torch.tensor([[2, 2]])},
     [8, 4, 6, 3, 4, 2, 3, 1]),
    ("two_step", long_params(x0=1, d=1), [1, 1, 2, 2, 3, 3]),
    ("three_step", long_params(x0=1, d=1), [1, 1, 1, 2, 2, 2]),
    ("mixed_period", long_params(x0=1, c1=1, c2=2, d=1), [1, 2, 2, 3, 4, 4, 5, 6, 6]),
    ("mixed_period", long_params(x0=10, c1=3, c2=1, d=-2), [10, 10, 10, 8, 6, 6, 6, 4]),
    ("fibonacci_mod", long_params(m=3, x0=0, x1=1), [0, 1, 1, 2, 0, 2, 2, 1, 0, 1]),
    ("double_every_third", long_params(a0=1, d=1, shift=0), [1, 2, 6, 4, 5, 12, 7]),
    ("double_every_third", long_params(a0=1, d=1, shift=2), [2, 2, 3, 8, 5, 6, 14]),
    ("floor_geometric", real_params(a=5.0, r=1.5), [5, 7, 11, 16, 25]),  # 5, 7.5, 11.25, 16.875, 25.3125
    ("ceil_geometric", real_params(a=5.0, r=1.5), [5, 8, 12, 17, 26]),
    ("ceil_geometric", real_params(a=200.0, r=0.75), [200, 150, 113, 85, 64]),
    ("alternating_signs", long_params(a0=5, d=3), [133, 120, 139, 114, 145]),
    ("even_odd", long_params(x0=4, c=3), [4, 7, 14, 17, 34]),
    ("rule_switch", long_params(x0=10, x1=20, a=4), [10, 20, 16, 36, 32, 68, 64]),
]
EXAMPLE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(EXAMPLES)]


@pytest.mark.parametrize(("name", "params", "expected"), EXAMPLES, ids=EXAMPLE_IDS)
def test_hand_written_examples(name, params, expected):
    fam = FAMILIES[name]
    seqs = fam.terms(params, len(expected))
    assert seqs.tolist() == [expected]
    assert fam.check(seqs, params).all()


def test_additive_families_never_wrap_at_length_8_but_long_ones_do():
    additive = [f for f in FAMILIES.values() if isinstance(f, AdditiveFamily)]
    assert {f.name for f in additive} >= {"arithmetic", "growing_steps", "two_step", "mixed_period"}
    for fam in additive:
        params = fam.sample_params(2000, 8, gen(7))
        raw = params["x0"].unsqueeze(1) + fam.offsets(params, 8)
        assert raw.min() >= 0 and raw.max() <= 255, fam.name
    for name in ("alternating_signs", "double_every_third"):  # inner arithmetic sequence stays in 0..127
        params = FAMILIES[name].sample_params(2000, 8, gen(7))
        inner = params["a0"].unsqueeze(1) + params["d"].unsqueeze(1) * torch.arange(8)
        assert inner.min() >= 0 and inner.max() <= 127, name
    arith = get_family("arithmetic")
    params = arith.sample_params(500, 256, gen(8))
    raw = params["x0"].unsqueeze(1) + arith.offsets(params, 256)
    assert ((raw < 0) | (raw > 255)).any(dim=1).float().mean() > 0.5  # spans over 255 must wrap


@pytest.mark.parametrize("name", ["floor_geometric", "ceil_geometric"])
@pytest.mark.parametrize("length", LENGTHS)
def test_rounded_geometric_is_monotone_without_wrapping(name, length):
    fam = get_family(name)
    seqs, params = fam.generate(500, length, gen(9))
    diffs = seqs[:, 1:] - seqs[:, :-1]
    grow = params["r"] > 1
    assert 0.3 < grow.float().mean() < 0.7
    assert (diffs[grow] >= 0).all() and (diffs[~grow] <= 0).all()


# --- curriculum mixture ----------------------------------------------------------------------------


def test_phase_weights_schedule():
    c = Curriculum(phases=(1, 2, 3), phase_epochs=10, transition_epochs=4)
    expect = {0: [1, 0, 0], 9.9: [1, 0, 0], 10: [1, 0, 0], 12: [0.5, 0.5, 0], 13: [0.25, 0.75, 0],
              14: [0, 1, 0], 23.9: [0, 1, 0], 26: [0, 0.5, 0.5], 28: [0, 0, 1], 1e4: [0, 0, 1]}
    for epoch, w in expect.items():
        assert c.phase_weights(epoch).tolist() == pytest.approx(w), epoch
    assert c.final_epoch() == 28
    grid = torch.linspace(0, 40, 401)
    batched = c.phase_weights(grid)
    assert batched.shape == (401, 3) and torch.allclose(batched.sum(1), torch.ones(401, dtype=torch.float64))
    assert torch.equal(batched[120], c.phase_weights(12.0))


def test_phase_weights_edge_cases():
    strict = Curriculum(phases=(2, 1), phase_epochs=5, transition_epochs=0)
    assert strict.phase_weights(4.999).tolist() == [1, 0] and strict.phase_weights(5).tolist() == [0, 1]
    assert strict.final_epoch() == 5
    single = Curriculum(phases=(3,))
    assert single.phase_weights(0).tolist() == [1] and single.final_epoch() == 0
    assert Curriculum(phases=(1, 2), phase_epochs=0, transition_epochs=0).phase_weights(0).tolist() == [0, 1]
    with pytest.raises(ValueError, match="non-negative"):
        strict.phase_weights(-1)


def test_sample_mixture_matches_weights():
    c = Curriculum(phases=(1, 2), phase_epochs=10, transition_epochs=4)
    s = c.sample(20_000, 8, gen(10), epoch=13.0)  # weights 0.25 / 0.75
    assert (s.phase == 1).float().mean().item() == pytest.approx(0.25, abs=0.015)
    for p in (1, 2):
        counts = torch.bincount(s.family[s.phase == p], minlength=len(FAMILY_NAMES))
        counts = counts[[FAMILY_NAMES.index(f.name) for f in families(p)]].double()
        assert (counts / counts.sum() - 1 / len(counts)).abs().max() < 0.02
    assert torch.equal(s.phase, torch.tensor([FAMILIES[n].phase for n in s.family_names()]))


def test_sample_rows_match_their_labels():
    s = Curriculum(phases=(1,)).sample(3000, 8, gen(11), epoch=0.0)
    d = s.seqs[:, 1:] - s.seqs[:, :-1]
    kind = s.family
    assert (d[kind == FAMILY_NAMES.index("constant")] == 0).all()
    arith = d[kind == FAMILY_NAMES.index("arithmetic")]
    assert (arith == arith[:, :1]).all() and (arith != 0).all()
    alt = s.seqs[kind == FAMILY_NAMES.index("alternating")]
    assert (alt[:, 2:] == alt[:, :-2]).all() and (alt[:, 0] != alt[:, 1]).all()


def test_sample_per_row_epochs_and_restricted_families():
    c = Curriculum(phases=(1, 3), families=("arithmetic", "even_odd"), phase_epochs=2, transition_epochs=0)
    epoch = torch.tensor([0.0] * 50 + [2.0] * 50)
    s = c.sample(100, 8, gen(12), epoch)
    assert s.family_names() == ["arithmetic"] * 50 + ["even_odd"] * 50
    assert s.phase.tolist() == [1] * 50 + [3] * 50
    assert [f.name for f in c.phase_families(3)] == ["even_odd"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"phases": (6,)}, "unknown phase 6"),
        ({"phases": ()}, "at least one phase"),
        ({"phases": (1, 1)}, "must not repeat"),
        ({"phases": (1,), "families": ("geometric",)}, "belongs to phase 2"),
        ({"phases": (1,), "families": ("nope",)}, "unknown family 'nope'"),
        ({"phases": (1, 2), "families": ("constant",)}, "phase 2 has none"),
        ({"phase_epochs": -1}, "non-negative"),
        ({"transition_epochs": -2}, "non-negative"),
    ],
)
def test_curriculum_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Curriculum(**kwargs)


def test_bad_lengths_and_sizes_raise():
    c = Curriculum()
    with pytest.raises(ValueError, match="at least 3"):
        c.sample(10, 2, gen(), 0.0)
    with pytest.raises(ValueError, match="shape"):
        c.sample(10, 8, gen(), torch.zeros(9))
    with pytest.raises(ValueError, match="at least 3"):
        TrainStream(c, length=1, batch_size=4, seed=0, steps_per_epoch=10)
    with pytest.raises(ValueError, match="batch_size"):
        TrainStream(c, length=8, batch_size=0, seed=0, steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        TrainStream(c, length=8, batch_size=4, seed=0, steps_per_epoch=0)
    with pytest.raises(ValueError, match="step must be non-negative"):
        TrainStream(c, length=8, batch_size=4, seed=0, steps_per_epoch=10).batch(-1)
    with pytest.raises(ValueError, match="per_family"):
        make_test_set(per_family=0)
    with pytest.raises(ValueError, match="phase 2 is not"):
        c.phase_families(2)


# --- sequence sets ---------------------------------------------------------------------------------


def test_sequence_set_subset_and_cat():
    s = make_test_set(phases=(1,), per_family=4)
    assert len(s) == 12 and s.family_names() == ["constant"] * 4 + ["arithmetic"] * 4 + ["alternating"] * 4
    sub = s.subset(s.family == FAMILY_NAMES.index("arithmetic"))
    assert len(sub) == 4 and set(sub.family_names()) == {"arithmetic"}
    assert torch.equal(s.subset([0, 11]).seqs, s.seqs[[0, 11]])
    both = SequenceSet.cat([sub, s.subset(slice(0, 2))])
    assert len(both) == 6 and both.family_names()[-1] == "constant"
    with pytest.raises(ValueError):
        SequenceSet.cat([])


# --- training stream, validation and test sets -----------------------------------------------------


def stream(seed: int = 0, **kw) -> TrainStream:
    args = {"length": 8, "batch_size": 16, "seed": seed, "steps_per_epoch": 5, "chunk_batches": 4} | kw
    return TrainStream(Curriculum(phases=(1, 2, 3), phase_epochs=1, transition_epochs=1), **args)


def test_train_stream_is_deterministic_and_random_access():
    iterated = [b for _, b in zip(range(11), stream(), strict=False)]  # crosses two chunk boundaries
    fresh = stream()
    assert all(torch.equal(fresh.batch(k), iterated[k]) for k in (10, 3, 7, 0, 10))  # any order
    assert torch.equal(stream().batch(9), iterated[9])
    other = stream(seed=1)
    assert all(not torch.equal(other.batch(k), iterated[k]) for k in range(11))
    assert iterated[0].shape == (16, 8) and iterated[0].dtype == torch.int64
    assert not torch.equal(iterated[0], iterated[1])


def test_train_stream_batches_are_owned_by_the_caller():
    s = stream()
    b = s.batch(2)
    b.zero_()
    assert not torch.equal(s.batch(2), b)


def test_train_stream_follows_the_curriculum_per_step():
    s = stream(steps_per_epoch=5, chunk_batches=8)  # phase 1 on epochs [0, 1), blend on [1, 2), ...
    phases = [s.labelled_batch(k).phase for k in range(40)]
    assert all((p == 1).all() for p in phases[:5])  # epochs 0.0 .. 0.8
    assert all((p == 3).all() for p in phases[20:])  # from final_epoch 4
    assert (torch.cat(phases[5:10]) == 2).any()  # the blend starts inside a chunk
    lab = s.labelled_batch(7)
    assert torch.equal(lab.seqs, s.batch(7)) and lab.phase.shape == (16,)


def test_validation_sets():
    c = Curriculum(phases=(1, 2))
    v0 = validation_set(c, 8, seed=0, index=0, epoch=0.0)
    assert len(v0) == 100 and (v0.phase == 1).all()
    assert torch.equal(v0.seqs, validation_set(c, 8, seed=0, index=0, epoch=0.0).seqs)
    assert not torch.equal(v0.seqs, validation_set(c, 8, seed=0, index=1, epoch=0.0).seqs)
    assert not torch.equal(v0.seqs, validation_set(c, 8, seed=1, index=0, epoch=0.0).seqs)
    assert (validation_set(c, 8, seed=0, index=3, epoch=100.0, size=10).phase == 2).all()


def test_test_set_is_fixed_and_labelled():
    t = make_test_set(phases=(1, 2), length=8, per_family=20)
    assert len(t) == 12 * 20 and t.seqs.shape == (240, 8)
    assert torch.equal(t.seqs, make_test_set(phases=(1, 2), length=8, per_family=20).seqs)
    assert t.family.tolist() == [i for i in range(12) for _ in range(20)]
    assert t.phase.tolist() == [1] * 60 + [2] * 180
    # a family's rows come from its own stream: unchanged by which other families are included
    alone = make_test_set(phases=(2,), per_family=20, families=("mixed_period",))
    assert torch.equal(alone.seqs, t.subset(t.family == FAMILY_NAMES.index("mixed_period")).seqs)
    assert not torch.equal(t.seqs, make_test_set(phases=(1, 2), per_family=20, eval_seed=1).seqs)
    for p in (1, 2):
        for fam in families(p):
            rows = t.subset(t.family == FAMILY_NAMES.index(fam.name)).seqs
            assert len(torch.unique(rows, dim=0)) > 1, fam.name


def test_test_set_is_not_a_training_stream():
    test = make_test_set(phases=(1,), length=8, per_family=100)
    train_seeds = {generator("train", s, c).initial_seed() for s in range(10) for c in range(4)}
    test_seeds = {generator("test", EVAL_SEED, f.name, 8).initial_seed() for f in families(1)}
    assert not train_seeds & test_seeds
    for seed in range(10):
        s = TrainStream(Curriculum(phases=(1,)), 8, batch_size=len(test), seed=seed, steps_per_epoch=10)
        for step in range(3):
            batch = s.batch(step)
            assert not torch.equal(batch, test.seqs)
            assert sorted(map(tuple, batch.tolist())) != sorted(map(tuple, test.seqs.tolist()))  # multisets


def test_seen_in_training_finds_exactly_the_test_rows_drawn_in_the_budget():
    stream = TrainStream(Curriculum(phases=(1,)), length=8, batch_size=4, seed=0, steps_per_epoch=10, chunk_batches=3)
    drawn = [stream.labelled_batch(k) for k in range(5)]
    fresh = make_test_set(phases=(1,), families=("alternating",), per_family=20)  # 65k members: rarely drawn
    test = SequenceSet.cat([drawn[1].subset([0]), drawn[4].subset([3]), fresh])
    seen = seen_in_training(test, stream, steps=5)
    assert seen[:2].all()
    expected = [any(torch.equal(r, b) for d in drawn for b in d.seqs) for r in fresh.seqs]
    assert seen[2:].tolist() == expected
    assert not seen_in_training(test.subset([1]), stream, steps=4).any()  # batch 4 is beyond a 4-step budget
