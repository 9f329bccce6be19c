"""Phase 4, the memory probes lag_1 .. lag_64: x_t = x_{t-k}, the first k values i.i.d. uniform."""

import math

import pytest
import torch

from bench.data import (
    FAMILIES,
    FAMILY_NAMES,
    Curriculum,
    TrainStream,
    families,
    get_family,
    make_test_set,
    seen_in_training,
    validation_set,
)
from bench.data.memory import HELD_OUT_BAND, LAGS, Lag
from bench.data.registry import FAMILY_INDEX
from bench.metrics import evaluate

LAG_NAMES = [f"lag_{k}" for k in LAGS]
CURRICULUM_NAMES = [  # phases 1..3 as before phase 4 existed: their integer labels must not move
    "constant", "arithmetic", "alternating",
    "alternating_steps", "growing_steps", "shrinking_steps",
    "geometric", "alternating_factors", "rational_factors",
    "two_step", "three_step", "mixed_period",
    "fibonacci_mod", "double_every_third", "floor_geometric", "ceil_geometric",
    "alternating_signs", "even_odd", "rule_switch",
]  # fmt: skip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_appends_phase_4_after_the_curriculum_families():
    assert LAGS == (1, 2, 4, 8, 16, 32, 64)
    assert FAMILY_NAMES[: len(CURRICULUM_NAMES) + len(LAG_NAMES)] == CURRICULUM_NAMES + LAG_NAMES  # phase 5 follows
    assert {name: FAMILY_INDEX[name] for name in CURRICULUM_NAMES} == {n: i for i, n in enumerate(CURRICULUM_NAMES)}
    assert [f.name for f in families(4)] == LAG_NAMES
    for k, fam in zip(LAGS, families(4), strict=True):
        assert isinstance(fam, Lag) and (fam.k, fam.phase, fam.group, fam.min_length) == (k, 4, "memory", k + 2)
        assert get_family(f"lag_{k}") is fam and repr(fam) == f"Lag(name='lag_{k}', phase=4, group='memory')"
    assert all(f.min_length == 3 for p in (1, 2, 3) for f in families(p))
    with pytest.raises(ValueError, match="lag k must be positive"):
        Lag(0)


def test_hand_written_example():
    fam = get_family("lag_4")
    params = {"prefix": torch.tensor([[7, 200, 3, 91]])}
    seqs = fam.terms(params, 10)
    assert seqs.tolist() == [[7, 200, 3, 91, 7, 200, 3, 91, 7, 200]]
    assert fam.check(seqs, params).all()
    assert not fam.check(seqs, {"prefix": torch.tensor([[7, 200, 3, 90]])}).any()


@pytest.mark.parametrize("k", LAGS)
def test_the_lag_is_exact_and_check_agrees(k):
    fam = get_family(f"lag_{k}")
    for length in (k + 2, 256):
        seqs, params = fam.generate(300, length, gen(k))
        assert seqs.shape == (300, length) and seqs.dtype == torch.int64
        assert params["prefix"].shape == (300, k) and torch.equal(seqs[:, :k], params["prefix"])
        assert (seqs[:, k:] == seqs[:, :-k]).all()
        assert fam.check(seqs, params).all()
        # +1 anywhere, prefix included, breaks the row: every term is pinned by the prefix and the lag
        pos = torch.randint(0, length, (300,), generator=gen(100 + k))
        bad = seqs.clone()
        bad[torch.arange(300), pos] = (bad[torch.arange(300), pos] + 1) % 256
        assert not fam.check(bad, params).any()
    seqs, _ = fam.generate(2000, 256, gen(7))
    same_as_previous = (seqs[:, 1:] == seqs[:, :-1]).double().mean().item()
    if k == 1:
        assert same_as_previous == 1  # lag_1 is `constant`'s rule
    else:  # an unrelated previous value: equal by chance, 1/256
        assert same_as_previous == pytest.approx(1 / 256, abs=0.004)
        for j in LAGS[: LAGS.index(k)]:  # and no shorter lag repeats the whole row
            assert (seqs[:, j:] == seqs[:, :-j]).all(dim=1).double().mean() < 0.01, j


def test_first_k_values_are_uniform_and_independent():
    seqs, params = get_family("lag_64").generate(2000, 66, gen(11), region="any")  # the whole distribution
    prefix = params["prefix"]
    counts = torch.bincount(prefix.flatten(), minlength=256).double()  # 128,000 draws, 500 per value
    chi2 = ((counts - 500) ** 2 / 500).sum().item()
    assert chi2 < 255 + 6 * (2 * 255) ** 0.5  # 255 degrees of freedom
    assert (prefix.double().mean(dim=0) - 127.5).abs().max() < 8  # every position centred (sd ~1.65)
    x = prefix.double() - 127.5
    corr = (x[:, :-1] * x[:, 1:]).mean() / x.var()
    assert abs(corr.item()) < 0.02  # neighbouring prefix values unrelated
    assert len(torch.unique(prefix, dim=0)) == 2000


def test_test_set_prefixes_do_not_collide_across_lags_lengths_or_training():
    """Each family's test rows come from its own stream ("test", eval_seed, family, length): lag_8's
    first 8 values are not lag_16's, the length-66 set is not the length-256 one, and training (its
    own "train" streams) does not draw the test rows (lag_1 and lag_2 excepted: 256 and 65,536
    sequences, so 200 test rows and 256 training rows of each meet by chance)."""
    t66 = make_test_set(phases=(4,), length=66, per_family=200)
    t256 = make_test_set(phases=(4,), length=256, per_family=200)
    rows = {name: t66.subset(t66.family == FAMILY_INDEX[name]).seqs for name in LAG_NAMES}
    for a in range(len(LAGS)):
        for b in range(a + 1, len(LAGS)):
            k = LAGS[a]
            equal = (rows[LAG_NAMES[a]][:, :k] == rows[LAG_NAMES[b]][:, :k]).double().mean().item()
            assert equal < 0.02, (LAG_NAMES[a], LAG_NAMES[b])
    assert (t66.seqs[:, :8] == t256.seqs[:, :8]).double().mean() < 0.02
    stream = TrainStream(Curriculum(phases=(4,)), 66, batch_size=64, seed=0, steps_per_epoch=10)
    seen = seen_in_training(t66, stream, steps=4)
    assert not seen[(t66.family != FAMILY_INDEX["lag_1"]) & (t66.family != FAMILY_INDEX["lag_2"])].any()


def test_generation_and_sets_are_deterministic_per_seed():
    fam = get_family("lag_16")
    a, pa = fam.generate(64, 18, gen(5))
    b, pb = fam.generate(64, 18, gen(5))
    c, _ = fam.generate(64, 18, gen(6))
    assert torch.equal(a, b) and torch.equal(pa["prefix"], pb["prefix"]) and not torch.equal(a, c)
    t = make_test_set(phases=(4,), length=66, per_family=10)
    assert torch.equal(t.seqs, make_test_set(phases=(4,), length=66, per_family=10).seqs)
    c4 = Curriculum(phases=(4,))
    assert torch.equal(TrainStream(c4, 66, 16, seed=3, steps_per_epoch=5).batch(2),
                       TrainStream(c4, 66, 16, seed=3, steps_per_epoch=5).batch(2))
    assert not torch.equal(TrainStream(c4, 66, 16, seed=3, steps_per_epoch=5).batch(2),
                           TrainStream(c4, 66, 16, seed=4, steps_per_epoch=5).batch(2))


def rows_follow_their_lag(s) -> bool:
    return all((row[fam.k:] == row[:-fam.k]).all() for row, fam in zip(s.seqs, map(get_family, s.family_names()),
                                                                            strict=True))


@pytest.mark.parametrize("length", [256, 66])
def test_phase_4_curriculum_and_test_set_build(length):
    test = make_test_set(phases=(4,), length=length, per_family=20)
    assert test.seqs.shape == (140, length) and (test.phase == 4).all()
    assert test.family_names() == [name for name in LAG_NAMES for _ in range(20)]
    assert rows_follow_their_lag(test)
    stream = TrainStream(Curriculum(phases=(4,)), length, batch_size=70, seed=0, steps_per_epoch=10)
    batch = stream.labelled_batch(0)
    assert batch.seqs.shape == (70, length) and (batch.phase == 4).all() and rows_follow_their_lag(batch)
    assert set(batch.family_names()) == set(LAG_NAMES)  # equally likely: all 7 in 70 rows
    val = validation_set(Curriculum(phases=(4,)), length, seed=0, index=0, epoch=0.0, size=50)
    assert len(val) == 50 and rows_follow_their_lag(val)


def test_too_short_lengths_fail_with_one_line_naming_family_k_and_length():
    msg = r"^family 'lag_64' \(lag k=64\) needs sequence length >= k \+ 2 = 66, got length 65$"
    c4 = Curriculum(phases=(4,))
    for build in (
        lambda: make_test_set(phases=(4,), length=65),
        lambda: TrainStream(c4, 65, batch_size=4, seed=0, steps_per_epoch=10),
        lambda: c4.sample(4, 65, gen(), 0.0),
        lambda: validation_set(c4, 65, seed=0, index=0, epoch=0.0),
        lambda: c4.validate_length(65),
        lambda: get_family("lag_64").generate(4, 65, gen()),
    ):
        with pytest.raises(ValueError, match=msg):
            build()
    # the first family that does not fit is named; a curriculum without the long lags accepts short lengths
    with pytest.raises(ValueError, match=r"'lag_8' \(lag k=8\) .* = 10, got length 8"):
        Curriculum(phases=(1, 4)).validate_length(8)
    short = Curriculum(phases=(4,), families=("lag_1", "lag_2"))
    short.validate_length(4)
    assert len(make_test_set(phases=(4,), length=4, families=("lag_1", "lag_2"), per_family=5)) == 10
    with pytest.raises(ValueError, match=r"'lag_2' \(lag k=2\) .*got length 3"):
        short.validate_length(3)
    with pytest.raises(ValueError, match="at least 3"):  # below every family's minimum: the generic message
        c4.validate_length(2)
    Curriculum(phases=(1, 2, 3)).validate_length(3)  # the existing phases keep MIN_LENGTH = 3
    assert len(make_test_set(phases=(1, 2, 3), length=3, per_family=2)) == 38


def test_only_positions_from_k_on_are_learnable():
    """An oracle that copies x_{t-k} scores 1 on every target t >= k (metrics position p = t - 1 >= k - 1);
    the earlier positions are unscored (`Lag.scored`): no row, no share of the overall accuracy, which
    is therefore 1 where it was (L - k) / (L - 1) with them."""
    length = 66
    test = make_test_set(phases=(4,), length=length, per_family=50)
    lag = torch.tensor([FAMILIES[name].k for name in test.family_names()])

    def oracle(inputs: torch.Tensor) -> torch.Tensor:  # inputs x_0..x_{L-2}; position p predicts x_{p+1}
        p = torch.arange(inputs.shape[1])
        src = p.unsqueeze(0) + 1 - lag[: len(inputs)].unsqueeze(1)
        pred = inputs.gather(1, src.clamp(min=0))
        logits = torch.nn.functional.one_hot(pred, 256).float()
        return torch.where((src >= 0).unsqueeze(-1), logits, torch.zeros_like(logits))  # unknown: argmax 0

    table = evaluate(oracle, test, batch_size=len(test))
    acc = table[(table.metric == "accuracy") & table.phase.notna()]
    per_pos = acc[acc.family.isin(LAG_NAMES) & acc.position.notna()]
    for name, k in zip(LAG_NAMES, LAGS, strict=True):
        rows = per_pos[per_pos.family == name]
        assert sorted(rows.position) == list(range(k - 1, length - 1)) and (rows.value == 1).all(), name
        overall = acc[(acc.family == name) & acc.position.isna()]
        assert overall.value.item() == 1 and overall.n.item() == 50 * (length - k), name


@pytest.mark.parametrize("k", [1, 4, 64])
def test_held_out_band_is_the_first_value_and_regions_condition_on_it(k):
    fam = get_family(f"lag_{k}")
    assert fam.held_out_kind == "translation" and HELD_OUT_BAND == (240, 255)
    rows = torch.tensor([[239] * (k + 2), [240] * (k + 2), [255] + [0] * (k + 1), [0] + [250] * (k + 1)])
    assert fam.held_out(rows).tolist() == [False, True, True, False]
    any_rows, _ = fam.generate(20_000, k + 2, gen(3), region="any")
    share = fam.held_out(any_rows).double().mean().item()
    assert share == pytest.approx(16 / 256, abs=0.006)  # sd 0.0017
    train, _ = fam.generate(3000, k + 2, gen(4))
    ood, params = fam.generate(3000, k + 2, gen(5), region="held_out")
    assert not fam.held_out(train).any() and fam.held_out(ood).all() and fam.check(ood, params).all()
    assert set(train[:, 0].tolist()) == set(range(240)) and set(ood[:, 0].tolist()) == set(range(240, 256))


def test_prefix_mass_by_hand():
    lag2 = get_family("lag_2")
    prefixes = torch.tensor([[5, 9, 5], [5, 9, 6], [250, 9, 250], [5, 300, 5]])
    assert lag2.prefix_mass(prefixes, "any").tolist() == [256.0**-2, 0.0, 256.0**-2, 0.0]
    assert lag2.prefix_mass(prefixes, "train").tolist() == [1 / (240 * 256), 0.0, 0.0, 0.0]
    assert lag2.prefix_mass(prefixes, "held_out").tolist() == [0.0, 0.0, 1 / (16 * 256), 0.0]
    assert lag2.prefix_mass(torch.zeros(3, 0, dtype=torch.long), "train").tolist() == [1.0] * 3
    lag1 = get_family("lag_1")
    assert lag1.prefix_mass(torch.tensor([[7], [7]]), "any").tolist() == [1 / 256, 1 / 256]
    assert lag1.prefix_mass(torch.tensor([[7, 7, 7, 7], [7, 7, 7, 8]]), "train").tolist() == [1 / 240, 0.0]
    with pytest.raises(ValueError, match="region must be one of"):
        lag1.prefix_mass(prefixes, "test")


@pytest.mark.parametrize("region", ["train", "held_out", "any"])
def test_prefix_mass_sums_to_one_over_next_values_and_matches_draws(region):
    """Summed over the 256 next values, the mass of [prefix, v] is the mass of the prefix (a
    distribution); and the frequency of each first value in draws matches its mass."""
    fam = get_family("lag_2")
    nxt = torch.arange(256)
    for row in map(torch.tensor, ([3], [245], [3, 3], [245, 17], [3, 4, 3])):
        extended = torch.cat([row.expand(256, -1), nxt.unsqueeze(1)], dim=1)
        total = fam.prefix_mass(extended, region).sum().item()
        assert total == pytest.approx(fam.prefix_mass(row.unsqueeze(0), region).item(), rel=1e-12)
    seqs, _ = fam.generate(50_000, 4, gen(9), region=region)
    freq = torch.bincount(seqs[:, 0], minlength=256).double() / len(seqs)
    mass = fam.prefix_mass(torch.arange(256).unsqueeze(1), region)
    assert mass.sum().item() == pytest.approx(1.0)
    assert (freq - mass).abs().max() < 0.004  # sd <= sqrt(1/16 / 50,000) = 0.0011


@pytest.mark.parametrize("region", ["train", "held_out", "any"])
def test_next_distribution_is_prefix_mass_of_every_extension(region):
    """exp(log prefix mass) * P(next = v | prefix) == prefix_mass(prefix + [v]) at every position,
    for rows that follow the lag, rows that break it, rows in and out of the band, and bad values."""
    fam = get_family("lag_2")
    inputs = torch.tensor([[5, 9, 5, 9], [250, 9, 250, 8], [5, 300, 5, 300], [7, 7, 7, 7]])
    log_prefix, nxt = fam.next_distribution(inputs, region)
    assert log_prefix.shape == (4, 4) and nxt.shape == (4, 4, 256)
    assert torch.allclose(nxt.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    for b in range(4):
        for p in range(4):
            ext = torch.cat([inputs[b, : p + 1].expand(256, -1), torch.arange(256).unsqueeze(1)], dim=1)
            want = fam.prefix_mass(ext, region)
            assert torch.allclose(log_prefix[b, p].exp() * nxt[b, p], want, rtol=1e-12, atol=0), (b, p)
    lag1 = get_family("lag_1").next_distribution(torch.tensor([[4, 4]]), "any")
    assert lag1[0].tolist() == [[-math.log(256)] * 2] and lag1[1][0, :, 4].tolist() == [1.0, 1.0]
    long = get_family("lag_64").next_distribution(torch.full((1, 65), 3), "any")[0]
    assert long[0, -1].item() == pytest.approx(-64 * math.log(256))  # 256^-64: exact in log space


def test_the_ceiling_scores_a_lags_predictable_positions_only():
    """As every metric does (`Lag.scored`): no ceiling at positions p < k - 1 (NaN), and the mean over
    positions is over the scored ones, 1.0 for a lag alone, not (L - k) / (L - 1)."""
    from bench.data import ceiling

    table = ceiling((4,), 40, ["lag_8"])
    rows = table[table.family == "lag_8"]
    early = rows[rows.position.notna() & (rows.position < 7)]
    late = rows[rows.position.notna() & (rows.position >= 7)]
    assert early.accuracy.isna().all() and (late.accuracy == 1).all()
    assert rows[rows.position.isna()].accuracy.item() == 1
