"""Tests of bench/models/ntk_attention.py beyond the generic mixer oracles of test_models.py: the
formula against a direct (unshifted) evaluation, exact reduction to causal softmax attention when the
prefix is empty, the prefix's effect, gradients and parameter count, step = parallel with a trained-
looking prefix, and finiteness where a naive evaluation would overflow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import prefill_then_step
from torch import Tensor

from bench.models import build_mixer
from bench.models.ntk_attention import NTKAttention, log_feature
from bench.models.transformer import apply_rope
from bench.train import param_groups

D, L, B = 16, 10, 3


def make(d: int = D, dtype: torch.dtype = torch.float64, seed: int = 0, prefix: str = "random", **kw) -> NTKAttention:
    """A mixer whose prefix is 'random' (a trained-looking Z and k), 'init' or 'empty' (Z = 0, k = 0)."""
    torch.manual_seed(seed)
    m = build_mixer("ntk_attention", d, **kw).to(dtype)
    with torch.no_grad():
        if prefix == "random":
            m.prefix_z.normal_()
            m.prefix_k_log.uniform_(-2.0, 1.0)
        elif prefix == "empty":
            m.prefix_z.zero_()
            m.prefix_k_log.fill_(float("-inf"))
    return m


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def heads(m: NTKAttention, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unrotated q, then rotated q, k and v, (B, H, L, d_h), straight from the weights."""
    b, n, d = x.shape
    w, bias = m.in_proj.weight, m.in_proj.bias
    q, k, v = [(x @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d]).view(b, n, m.n_heads, -1).transpose(1, 2)
               for i in range(3)]  # 3 x (B, L, d) -> (B, H, L, d_h)
    if m.pos == "rope":
        t = torch.arange(n)
        return q, apply_rope(q, t), apply_rope(k, t), v
    return q, q, k, v


def naive_ntk_attention(m: NTKAttention, x: Tensor) -> Tensor:
    """The paper's formula evaluated as written, with no max shift: fine for moderate float64 inputs."""
    q_raw, q, k, v = heads(m, x)
    n, d_h = x.shape[1], m.d_head
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d_h)).exp()  # (B, H, L, L)
    scores = scores * torch.ones(n, n, dtype=torch.bool).tril()
    phi = F.elu(q_raw / d_h ** 0.25) + 1  # (B, H, L, d_h)
    z, kk = m.prefix_z, m.prefix_k_log.exp()  # (H, d_h, d_h), (H, d_h)
    num = phi @ z + scores @ v
    den = (phi * kk[:, None]).sum(-1) + scores.sum(-1)
    o = (num / den[..., None]).transpose(1, 2).flatten(2)  # (B, H, L, d_h) -> (B, L, d)
    return m.out_proj(o)


def softmax_attention(m: NTKAttention, x: Tensor) -> Tensor:
    """Plain causal softmax attention with the mixer's projections: what an empty prefix must give."""
    _, q, k, v = heads(m, x)
    n = x.shape[1]
    s = (q @ k.transpose(-1, -2) / math.sqrt(m.d_head)).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1),
                                                                  float("-inf"))
    return m.out_proj((s.softmax(-1) @ v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("pos", ["rope", "none"])
def test_matches_the_formula_evaluated_directly(pos, n_heads):
    m, x = make(pos=pos, n_heads=n_heads), randn(B, L, D)
    torch.testing.assert_close(m(x), naive_ntk_attention(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("pos", ["rope", "none"])
def test_empty_prefix_is_exactly_causal_softmax_attention(pos, n_heads):
    m, x = make(prefix="empty", pos=pos, n_heads=n_heads), randn(B, L, D)
    y = m(x)
    torch.testing.assert_close(y, softmax_attention(m, x), rtol=0, atol=1e-13)
    # ... and the Transformer mixer itself (SDPA) with the same projections
    t = build_mixer("transformer", D, pos=pos, n_heads=n_heads).double()
    t.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("prefix_")}, strict=True)
    torch.testing.assert_close(y, t(x), rtol=0, atol=1e-13)


def test_init_is_a_zero_valued_sink_of_about_one_token():
    """Z = 0, k = 1/d_h: the prefix adds φ(q)ᵀk (≈ 1 for small q) to the normaliser and nothing to
    the numerator, so attention weights shrink, but never grow, against plain attention."""
    m = make(prefix="init")
    assert (m.prefix_z == 0).all()
    torch.testing.assert_close(m.prefix_k_log.exp(), torch.full((2, D // 2), 2 / D, dtype=torch.float64))
    x = randn(B, L, D)
    q_raw, q, k, v = heads(m, x)
    o_ntk, o_plain = m._attend(q_raw, q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True)
    phi_k = ((F.elu(q_raw / m.d_head ** 0.25) + 1) * m.prefix_k_log.exp()[:, None]).sum(-1)  # φ(q)ᵀk: (B, H, L)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(m.d_head)).exp() * torch.ones(L, L, dtype=torch.bool).tril()
    shrink = scores.sum(-1) / (scores.sum(-1) + phi_k)  # the softmax part's share of the normaliser
    torch.testing.assert_close(o_ntk, o_plain * shrink[..., None], rtol=0, atol=1e-12)
    assert ((shrink > 0) & (shrink < 1)).all()


def test_prefix_changes_outputs_and_gets_gradients():
    x = randn(B, L, D)
    m = make(prefix="init")
    y0 = m(x)
    with torch.no_grad():
        m.prefix_z.normal_()
    assert not torch.allclose(m(x), y0)  # Z enters the numerator
    with torch.no_grad():
        m.prefix_z.zero_()
        m.prefix_k_log.add_(1.0)
    assert not torch.allclose(m(x), y0)  # k enters the normaliser
    m = make(prefix="init")  # at init (Z = 0) both prefix parameters already learn
    m(x).square().sum().backward()
    assert m.prefix_z.grad.abs().sum() > 0 and (m.prefix_k_log.grad != 0).all()


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("d", [16, 32])
def test_extra_parameters_are_d_squared_plus_d_per_head(d, n_heads):
    n = sum(p.numel() for p in build_mixer("ntk_attention", d, n_heads=n_heads).parameters())
    plain = sum(p.numel() for p in build_mixer("transformer", d, n_heads=n_heads).parameters())
    d_h = d // n_heads
    assert n - plain == n_heads * (d_h * d_h + d_h)
    m = build_mixer("ntk_attention", d, n_heads=n_heads)
    assert m.prefix_z.shape == (n_heads, d_h, d_h) and m.prefix_k_log.shape == (n_heads, d_h)


@pytest.mark.parametrize(("pos", "n_heads"), [("rope", 2), ("none", 1), ("rope", 4)])
def test_step_matches_parallel_with_a_trained_prefix(pos, n_heads):
    m, x = make(pos=pos, n_heads=n_heads), randn(B, L, D)
    y = m(x)
    for p in range(L):
        torch.testing.assert_close(prefill_then_step(m, x, p)[0], y, rtol=0, atol=1e-10)


def test_causal_with_a_trained_prefix():
    m, x = make(), randn(B, L, D)
    y = m(x)
    for t in (0, L // 2, L - 1):
        x2 = x.clone()
        x2[:, t] += randn(B, D, seed=10 + t)
        y2 = m(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], rtol=0, atol=0)
        assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("k_log", [-30.0, 0.0, 30.0])
def test_large_inputs_stay_finite_and_the_normaliser_positive(k_log):
    """Scores of ±10⁴ and prefix masses from e⁻³⁰ to e³⁰ in float32, where exp(score) or φ(q)ᵀk
    alone would overflow or vanish. With Z = 0 every output is a sub-convex combination of the
    values (weights >= 0 summing to <= 1), which holds only if the normaliser stays positive."""
    m = make(dtype=torch.float32, prefix="init")
    with torch.no_grad():
        m.prefix_k_log.fill_(k_log)
    x = (300.0 * randn(B, L, D, dtype=torch.float32)).requires_grad_()
    q_raw, q, k, v = heads(m, x)
    assert (q @ k.transpose(-1, -2)).abs().max() / math.sqrt(m.d_head) > 1e4
    o = m._attend(q_raw, q, k, v)  # (B, H, L, d_h)
    assert torch.isfinite(o).all()
    bound = v.abs().cummax(dim=2).values  # max over the visible values, per component
    assert (o.abs() <= bound * (1 + 1e-5)).all()
    with torch.no_grad():
        m.prefix_z.normal_()
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_log_feature_is_log_of_elu_plus_one_and_safe_at_extremes():
    x = torch.linspace(-5, 50, 1001, dtype=torch.float64)
    torch.testing.assert_close(log_feature(x), torch.log(F.elu(x) + 1), rtol=0, atol=1e-12)
    x = -torch.logspace(-3, 4, 50, dtype=torch.float64)  # φ = exp(x) there, below what elu + 1 resolves
    assert torch.equal(log_feature(x), x)
    x = torch.tensor([-1e30, -1e4, 0.0, 1e4, 1e30], requires_grad=True)
    log_feature(x).sum().backward()
    assert torch.isfinite(log_feature(x)).all() and torch.isfinite(x.grad).all()


def test_k_log_is_kept_out_of_weight_decay():
    m = make(prefix="init")
    groups = param_groups(m, lr=1e-3, weight_decay=0.1)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(m.prefix_k_log)] == 0.0 and decay_of[id(m.prefix_z)] == 0.1


@pytest.mark.parametrize(("kw", "word"), [({"n_heads": 3}, "n_heads"), ({"n_heads": 0}, "n_heads"),
                                          ({"pos": "alibi"}, "pos"), ({"d_state": 4, "d_conv": 4}, None)])
def test_invalid_values_and_shared_hyperparameters(kw, word):
    if word is None:  # the shared hyperparameters mean nothing to attention: dropped and recorded
        assert build_mixer("ntk_attention", D, **kw).unused_hparams == ["d_conv", "d_state"]
        return
    with pytest.raises(ValueError, match=word):
        build_mixer("ntk_attention", D, **kw)
