"""Linear CKA (bench/analysis/cka.py): the metric's defining properties and hand-computed values,
its floor for independent features, block outputs of every registered mixer, and the table."""

from __future__ import annotations

import math

import pytest
import torch

from bench.analysis.cka import COLUMNS, block_outputs, cka_table, embedding_floor, linear_cka
from bench.models import ModelConfig, build_model, mixer_names


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(gaussian(d, d, seed))
    return q


def tiny(arch: str, seed: int = 0, num_layers: int = 2, d_model: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, d_model=d_model, num_layers=num_layers, max_len=8))


def tokens_for(n: int = 12, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(1))


def test_identity_orthogonal_scaling_and_centering_invariance():
    x = gaussian(300, 10, 0) @ gaussian(10, 10, 1)  # correlated columns: not a trivial representation
    y = torch.tanh(x @ gaussian(10, 6, 2))  # a different, lower-dimensional one (d ≠ d')
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    reference = linear_cka(x, y)
    assert 0.1 < reference < 0.99
    q = orthogonal(10, 3)
    assert linear_cka(x @ q, y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, y @ orthogonal(6, 4)) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x + 3.0, y - gaussian(1, 6, 5)) == pytest.approx(reference, abs=1e-12)  # column offsets
    assert linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-12)  # a rotated copy is the same representation
    assert linear_cka(y, x) == pytest.approx(reference, abs=1e-12)  # symmetric
    assert linear_cka(x.float(), y.float()) == pytest.approx(reference, abs=1e-5)  # computed in float64


def test_not_invariant_to_a_general_linear_map():
    x = gaussian(300, 10, 0)
    stretch = torch.diag(torch.tensor([10.0, *[0.1] * 9], dtype=torch.float64))
    assert linear_cka(x, x @ stretch) < 0.5  # only orthogonal maps and isotropic scaling leave it at 1


def test_known_values():
    # One column each: CKA is the squared Pearson correlation. Centered a = (-1.5, -0.5, 0.5, 1.5),
    # b = (-1.75, 0.25, -0.75, 2.25): r² = 5.5² / (5 · 8.75) = 121/175.
    a = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    b = torch.tensor([[1.0], [3.0], [2.0], [5.0]])
    assert linear_cka(a, b) == pytest.approx(121 / 175, abs=1e-12)
    # X: two centered orthogonal columns of equal norm; Y: the first of them. ‖YᵀX‖² = ‖y‖⁴,
    # ‖XᵀX‖_F = √2·‖y‖², ‖YᵀY‖ = ‖y‖², so CKA = 1/√2.
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert math.isnan(linear_cka(x, torch.ones(4, 3)))  # a constant representation: undefined


@pytest.mark.parametrize(("n", "d1", "d2"), [(4000, 8, 16), (2000, 32, 32)])
def test_independent_features_sit_at_the_predicted_floor(n, d1, d2):
    """For independent Gaussian features E[CKA] ≈ √(d1·d2)/√((n+d1)(n+d2)) (see linear_cka), not 0:
    the mean over 20 draws is within 15 % of that (its relative spread over draws is a few %), and
    every draw is far below any real similarity."""
    floor = math.sqrt(d1 * d2) / math.sqrt((n + d1) * (n + d2))
    values = [linear_cka(gaussian(n, d1, 2 * i), gaussian(n, d2, 2 * i + 1)) for i in range(20)]
    assert sum(values) / len(values) == pytest.approx(floor, rel=0.15)
    assert max(values) < 2 * floor < 0.05


def test_mismatched_rows_are_an_error():
    with pytest.raises(ValueError, match="same rows"):
        linear_cka(gaussian(10, 3, 0), gaussian(11, 3, 1))


@pytest.mark.parametrize("arch", mixer_names())
def test_block_outputs_of_every_mixer(arch):
    model, tokens = tiny(arch).train(), tokens_for()
    reps = block_outputs(model, tokens, batch_size=5)  # 12 sequences in 3 uneven batches
    assert len(reps) == 3 and all(r.shape == (12 * 7, 16) for r in reps)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert torch.equal(reps[0], model.embed(tokens).detach().reshape(-1, 16))  # layer 0: the embedding
    with torch.no_grad():
        model.eval()
        x = model.embed(tokens)
        for i, block in enumerate(model.blocks, start=1):
            x = block(x)
            torch.testing.assert_close(reps[i], x.reshape(-1, 16))
    for a, b in zip(reps, block_outputs(model, tokens, batch_size=64), strict=True):
        torch.testing.assert_close(a, b)  # batch size does not matter
    assert not model.embed._forward_hooks and not any(b._forward_hooks for b in model.blocks)


def test_cka_table_rows_symmetry_and_diagonal():
    models = {("lstm", 0): tiny("lstm", 0), ("transformer", 0): tiny("transformer", 0, num_layers=1),
              ("lstm", 1): tiny("lstm", 1), ("transformer", 1): tiny("transformer", 1, num_layers=1)}
    table = cka_table(models, tokens_for())
    assert list(table.columns) == COLUMNS and (table["n"] == 12 * 7).all()
    within = table[table.seed == table.seed_b]
    across = table[table.seed != table.seed_b]
    # every ordered pair of models and of their layers: 2 seeds × (3 + 2 layers) = 10 representations
    assert len(table) == 10**2 and len(within) == 2 * 5**2 and len(across) == 2 * 5**2
    assert set(zip(across.arch_a, across.arch_b, strict=True)) == {(a, b) for a in ("lstm", "transformer")
                                                                   for b in ("lstm", "transformer")}
    assert table["cka"].between(0, 1 + 1e-9).all()
    same = table[(table.seed == table.seed_b) & (table.arch_a == table.arch_b) & (table.layer_a == table.layer_b)]
    assert len(same) == 2 * 5 and same["cka"].to_numpy() == pytest.approx(1.0, abs=1e-9)
    keyed = table.set_index(["seed", "seed_b", "arch_a", "layer_a", "arch_b", "layer_b"])["cka"]
    for (s, sb, a, la, b, lb), value in keyed.items():
        assert keyed[(sb, s, b, lb, a, la)] == value  # symmetric, both orders stored
    # a row is linear_cka of the two block outputs
    reps_l, reps_t = block_outputs(models["lstm", 1], tokens_for()), block_outputs(models["transformer", 1],
                                                                                   tokens_for())
    assert keyed[(1, 1, "lstm", 2, "transformer", 1)] == pytest.approx(linear_cka(reps_l[2], reps_t[1]), abs=1e-12)
    assert len(cka_table(models, tokens_for(), across_seeds=False)) == len(within)


def test_embedding_floor_counts_distinct_tokens_not_rows():
    distinct = torch.arange(2000)  # every row its own token: the Gaussian floor
    floor = math.sqrt(8 * 16) / math.sqrt((2000 + 8) * (2000 + 16))
    assert embedding_floor(distinct, 8, 16) == pytest.approx(floor, rel=0.2)
    repeated = torch.arange(2000) % 20  # 2000 rows, 20 distinct tokens: effectively n = 20
    assert embedding_floor(repeated, 8, 16) == pytest.approx(math.sqrt(8 * 16) / math.sqrt(28 * 36), rel=0.2)
    assert embedding_floor(repeated.reshape(100, 20), 8, 16, seed=3) == embedding_floor(repeated, 8, 16, seed=3)
