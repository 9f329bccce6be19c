"""Held-out regions: each family reserves a region of its parameter space for the `ood` split, decided
from the terms alone. Region "train" never draws it, "held_out" draws only it, it holds 3-25 % of
the family's mass, the term-based test agrees with the documented parameter region, and no held-out
sequence of one family is a training sequence of any family of phases 1-3."""

from collections.abc import Callable

import pytest
import torch

from bench.data import FAMILIES, families
from bench.data.base import BAND, HELD_OUT_KINDS, Params, in_band, sequence_ids

CURRICULUM = [f for p in (1, 2, 3) for f in families(p)]
NAMES = [f.name for f in CURRICULUM]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# The regions as each docstring states them, on the parameters: the tests below check that the
# families' term-based `held_out` is exactly this on every parameter row.
Region = Callable[[Params], torch.Tensor]
PARAM_REGIONS: dict[str, Region] = {
    "constant": lambda p: in_band(p["c"]),
    "arithmetic": lambda p: p["d"].abs() == 10,
    "alternating": lambda p: in_band(p["x0"]),
    "alternating_steps": lambda p: (p["s1"] > 0) & (p["s2"] < 0) & (p["s1"] > -p["s2"]),
    "growing_steps": lambda p: p["s0"] == 5,
    "shrinking_steps": lambda p: p["s0"] == 10,
    "geometric": lambda p: (p["r"] == 3) & (p["x0"] <= 8),
    "alternating_factors": lambda p: (p["f1"] == 3) & (p["x0"] >= 25),
    "rational_factors": lambda p: in_band(p["x0"]),
    "two_step": lambda p: in_band(p["x0"], (112, 143)),
    "three_step": lambda p: in_band(p["x0"], (112, 143)),
    "mixed_period": lambda p: (p["c1"] == 2) & (p["d"] < 0),
    "fibonacci_mod": lambda p: torch.maximum(p["x0"], p["x1"]) >= 12,
    "double_every_third": lambda p: p["d"].abs() == 10,
    "floor_geometric": lambda p: (p["r"] < 1) & (p["a"] >= 224),  # floor(a) >= 224
    "ceil_geometric": lambda p: (p["r"] < 1) & (p["a"] > 223),  # ceil(a) >= 224
    "alternating_signs": lambda p: p["d"].abs() == 10,
    "even_odd": lambda p: in_band(p["x0"]),
    "rule_switch": lambda p: in_band(p["x0"]),
}


def test_every_family_declares_a_documented_region():
    assert set(PARAM_REGIONS) == set(NAMES) and BAND == (240, 255)
    for fam in CURRICULUM:
        assert fam.held_out_kind in HELD_OUT_KINDS, fam.name
        assert f"Held-out region ({fam.held_out_kind})" in type(fam).__doc__ + (type(fam).__mro__[1].__doc__ or "")
    kinds = [f.held_out_kind for f in CURRICULUM]
    assert all(kinds.count(k) >= 4 for k in HELD_OUT_KINDS), kinds
    for fam in FAMILIES.values():  # the memory probes too; `generate` decides on the first terms
        seqs, _ = fam.generate(500, max(8, fam.min_length), gen(0), region="any")
        held = fam.held_out(seqs)
        assert held.dtype == torch.bool and held.shape == (500,) and held.any()
        assert torch.equal(fam.held_out(seqs[:, : fam.held_out_terms]), held), fam.name


def samples(name: str, length: int) -> tuple[torch.Tensor, Params, torch.Tensor]:
    """(seqs, params, prob): the exact support, or 20k draws of weight 1/20k where there is none."""
    fam = FAMILIES[name]
    sup = fam.support(length)
    if sup is not None:
        return sup.seqs, sup.params, sup.prob
    seqs, params = fam.generate(20_000, length, gen(length), region="any")
    return seqs, params, torch.full((20_000,), 1 / 20_000, dtype=torch.float64)


@pytest.mark.parametrize("length", [3, 4, 8, 16, 32])
@pytest.mark.parametrize("name", NAMES)
def test_held_out_is_the_documented_region_with_3_to_25_percent_of_the_mass(name, length):
    seqs, params, prob = samples(name, length)
    fam = FAMILIES[name]
    held = fam.held_out(seqs)
    assert torch.equal(held, PARAM_REGIONS[name](params))  # exact: decided from the first terms
    assert torch.equal(fam.held_out(seqs[:, : fam.held_out_terms]), held)
    if length >= 8:
        assert 0.03 <= prob[held].sum().item() <= 0.25


@pytest.mark.parametrize("length", [3, 8, 16, 32])
@pytest.mark.parametrize("name", NAMES)
def test_regions_of_generate(name, length):
    fam = FAMILIES[name]
    for region, want in (("held_out", True), ("train", False)):
        seqs, params = fam.generate(300, length, gen(1), region=region)
        assert seqs.shape == (300, length) and all(v.shape[0] == 300 for v in params.values())
        assert (fam.held_out(seqs) == want).all() and fam.check(seqs, params).all()
        again, _ = fam.generate(300, length, gen(1), region=region)
        assert torch.equal(seqs, again)
    mixed = fam.held_out(fam.generate(2000, length, gen(2), region="any")[0])
    assert mixed.any() and not mixed.all()


def test_double_every_third_needs_four_terms_where_long_sequences_wrap():
    fam = FAMILIES["double_every_third"]
    ambiguous = torch.tensor([[12, 4, 248]])  # a0 = 12 and d = -8, shift 0; or d = -10, shift 1
    as_d8 = fam.terms({"a0": torch.tensor([12]), "d": torch.tensor([-8]), "shift": torch.tensor([0])}, 32)
    as_d10 = fam.terms({"a0": torch.tensor([12]), "d": torch.tensor([-10]), "shift": torch.tensor([1])}, 32)
    assert torch.equal(as_d8[:, :3], ambiguous) and torch.equal(as_d10[:, :3], ambiguous)
    assert as_d8[0, 3] == 244 and as_d10[0, 3] == 238
    assert fam.held_out(torch.cat([as_d8, as_d10])).tolist() == [False, True] and fam.held_out_terms == 4


def test_generate_rejects_an_unknown_region_and_handles_no_rows():
    fam = FAMILIES["constant"]
    with pytest.raises(ValueError, match="region must be one of train, held_out, any"):
        fam.generate(4, 8, gen(0), region="ood")
    assert fam.generate(0, 8, gen(0), region="held_out")[0].shape == (0, 8)
    seqs, _ = fam.generate(5, 8, gen(0))  # the default region is "train"
    assert not fam.held_out(seqs).any()


def region_ids(length: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per family of phases 1-3: (ids of its held-out sequences, ids of its training sequences), ids
    shared across families (`sequence_ids` over all of them): exact supports where they exist, 20k
    draws of each region for the two continuous families."""
    parts = {}
    for fam in CURRICULUM:
        sup = fam.support(length)
        if sup is None:
            held, _ = fam.generate(20_000, length, gen(4), region="held_out")
            train, _ = fam.generate(20_000, length, gen(5), region="train")
        else:
            mask = fam.held_out(sup.seqs)
            held, train = sup.seqs[mask], sup.seqs[~mask]
        parts[fam.name] = (held, train)
    ids = sequence_ids(torch.cat([s for pair in parts.values() for s in pair]))
    out, start = {}, 0
    for name, (held, train) in parts.items():
        out[name] = (ids[start:start + len(held)], ids[start + len(held):start + len(held) + len(train)])
        start += len(held) + len(train)
    return out


@pytest.mark.parametrize("length", [8, pytest.param(16, marks=pytest.mark.slow)])
def test_no_held_out_sequence_is_a_training_sequence_of_any_family(length):
    ids = region_ids(length)
    size = 1 + max(int(torch.cat(pair).max()) for pair in ids.values())
    trained = torch.zeros(size, dtype=torch.bool)
    for _, train in ids.values():
        trained[train] = True
    clashes = {name: int(trained[held].sum()) for name, (held, _) in ids.items()}
    assert not any(clashes.values()), clashes
    # the check has teeth: families do share sequences (alternating's period-2 patterns appear in
    # even_odd, rule_switch and rational_factors), on both sides of the split but never across it
    held, train = ids["alternating"]
    assert torch.isin(held, ids["even_odd"][0]).sum() == 6  # [246, 251, ...], [251, 246, ...], ...
    assert torch.isin(held, ids["rational_factors"][0]).sum() == 14  # [240, 120, ...], [240, 160, ...], ...
    assert torch.isin(train, ids["rule_switch"][1]).sum() == 18  # [0, a, ...], [a, 0, ...] for a in 1..9
    assert torch.isin(train, ids["rational_factors"][1]).any()  # [64, 128, ...]
