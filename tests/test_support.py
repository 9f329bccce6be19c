"""Exact supports: every family with a discrete parameter distribution enumerates its sequences with
their probabilities, and the enumeration is the generator's distribution (rows pass `check`, the
probabilities sum to 1, and 200k draws sit at sampling-noise distance from it)."""

import pytest
import torch

from bench.data import FAMILIES, families
from bench.data.base import expand_uniform, nonzero, product, sequence_ids, uniform

CURRICULUM = [f for p in (1, 2, 3) for f in families(p)]
CONTINUOUS = {"floor_geometric", "ceil_geometric"}
ENUMERATED = [f.name for f in CURRICULUM if f.name not in CONTINUOUS]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_which_families_have_a_support():
    assert len(ENUMERATED) == 17
    for name in CONTINUOUS:  # (a, r) are real-valued: no finite support
        assert FAMILIES[name].support(8) is None and FAMILIES[name].param_support(8) is None
    for fam in families(4):  # 256^k prefixes: `Lag.prefix_mass` stands in for a support
        assert fam.support(max(8, fam.min_length)) is None


@pytest.mark.parametrize("length", [3, 8, 16, pytest.param(32, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ENUMERATED)
def test_support_is_a_distribution_over_valid_sequences(name, length):
    fam = FAMILIES[name]
    sup = fam.support(length)
    assert sup.seqs.shape == (len(sup), length) and sup.seqs.dtype == torch.int64
    assert sup.prob.dtype == torch.float64 and (sup.prob > 0).all()
    assert abs(sup.prob.sum().item() - 1) < 1e-12
    assert set(sup.params) == set(fam.sample_params(2, length, gen(0)))  # the keys check() reads
    assert fam.check(sup.seqs, sup.params).all()
    assert len(sup) <= 2_000_000


def test_support_by_hand():
    geo = FAMILIES["geometric"].support(8)  # r in {2, 3} x x0 in 1..32, all distinct
    assert len(geo) == 64 and torch.equal(geo.prob, torch.full((64,), 1 / 64, dtype=torch.float64))
    assert len(set(map(tuple, geo.seqs.tolist()))) == 64
    assert [3, 9, 27, 81, 243, 217, 139, 161] in geo.seqs.tolist()  # 729 = 217, 651 = 139 (mod 256)
    arith = FAMILIES["arithmetic"].support(8)  # d > 0 starts x0 in 0..255-7d, so 2 * sum(256 - 7d) rows
    assert len(arith) == 2 * sum(256 - 7 * d for d in range(1, 11)) == 4350
    row = (arith.params["d"] == 1) & (arith.params["x0"] == 0)
    assert arith.prob[row].item() == pytest.approx(1 / 20 / 249, rel=1e-12)
    rational = FAMILIES["rational_factors"].support(8)  # x0 in 64..min(255, 255 / first factor)
    widths = {(1, 2): 192, (3, 2): 107, (2, 3): 192, (2, 1): 64}  # first factor p/q -> number of starts
    assert len(rational) == sum(widths[k] * n for k, n in {(1, 2): 2, (3, 2): 2, (2, 3): 1, (2, 1): 1}.items())
    first = (rational.params["p"][:, 0] == 2) & (rational.params["q"][:, 0] == 1)
    assert torch.allclose(rational.prob[first], torch.full((64,), 1 / 6 / 64, dtype=torch.float64))
    rule = FAMILIES["rule_switch"].support(8)
    assert len(rule) == 256 * 256 * 9 and torch.allclose(rule.prob, torch.full_like(rule.prob, 1 / len(rule)))


def test_distribution_helpers():
    params, prob = product(uniform(a=[1, 2]), uniform(b=[5, 6, 7]))
    assert params["a"].tolist() == [1, 1, 1, 2, 2, 2] and params["b"].tolist() == [5, 6, 7] * 2
    assert torch.allclose(prob, torch.full((6,), 1 / 6, dtype=torch.float64))
    params, prob = expand_uniform(uniform(a=[1, 2]), "x", torch.tensor([0, 5]), torch.tensor([1, 7]))
    assert params["a"].tolist() == [1, 1, 2, 2, 2] and params["x"].tolist() == [0, 1, 5, 6, 7]
    assert prob.tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 6, 1 / 6, 1 / 6])
    assert nonzero(2).tolist() == [-2, -1, 1, 2]
    rows = torch.tensor([[1, 2] * 5, [3, 4] * 5, [1, 2] * 5, [1, 2] * 4 + [1, 3]])
    assert sequence_ids(rows).tolist() == [0, 2, 0, 1]
    many = torch.randint(0, 256, (5000, 16), generator=gen(0))[torch.randint(0, 2000, (5000,), generator=gen(1))]
    assert torch.equal(sequence_ids(many), torch.unique(many, dim=0, return_inverse=True)[1])


def distances(name: str, length: int, draws: int, region: str, seed: int = 0) -> tuple[float, list[float]]:
    """Total variation between `draws` generator draws of `region` and the exact support (restricted to
    `region`), and the same distance for 5 samples of `draws` from the exact distribution itself."""
    fam = FAMILIES[name]
    sup = fam.support(length)
    if region != "any":
        sup = sup.restrict(fam.held_out(sup.seqs) == (region == "held_out"))
    seqs, _ = fam.generate(draws, length, gen(seed), region=region)
    ids = sequence_ids(torch.cat([sup.seqs, seqs]))
    exact = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids[: len(sup)], sup.prob)
    assert (exact[ids[len(sup):]] > 0).all(), "a draw outside the support"

    def tv(sample: torch.Tensor) -> float:
        return 0.5 * (torch.bincount(sample, minlength=len(exact)) / draws - exact).abs().sum().item()

    noise = [tv(torch.multinomial(exact, draws, replacement=True, generator=gen(seed + 1 + i))) for i in range(5)]
    return tv(ids[len(sup):]), noise


@pytest.mark.parametrize("name", ENUMERATED)
def test_support_matches_20k_draws(name):
    observed, noise = distances(name, 8, 20_000, "any")
    assert observed <= 1.25 * max(noise), (observed, noise)


@pytest.mark.slow
@pytest.mark.parametrize("region", ["any", "held_out", "train"])
@pytest.mark.parametrize("length", [8, 16])
@pytest.mark.parametrize("name", ENUMERATED)
def test_support_matches_200k_draws(name, length, region):
    observed, noise = distances(name, length, 200_000, region)
    assert observed <= 1.25 * max(noise), (observed, noise)


@pytest.mark.parametrize("length", [8, 16])
@pytest.mark.parametrize("name", ENUMERATED)
def test_held_out_mass_of_the_support_is_the_generators_fraction(name, length):
    fam = FAMILIES[name]
    sup = fam.support(length)
    mass = sup.prob[fam.held_out(sup.seqs)].sum().item()
    seqs, _ = fam.generate(100_000, length, gen(3), region="any")
    fraction = fam.held_out(seqs).double().mean().item()
    assert abs(fraction - mass) < 4 * (mass * (1 - mass) / 100_000) ** 0.5 + 1e-9
