"""Liquid-S4-specific oracles (ARCHITECTURES.md §4.6) beyond the generic ones in tests/test_models.py,
stated on the pre-activation v = `ssm(u)` where the expansion is exact: the kernels against the literal
liquid recurrence, PB vs KB, the small-signal limit, which input products appear (Hessian), degree 1 =
plain S4, step = parallel at L = 64, the LegS initialisation, live coefficients and optimiser groups."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_checks import prefill_then_step
from torch import Tensor

from bench.models import ModelConfig, build_mixer, build_model
from bench.models.liquid_s4 import LiquidS4, legs_eig
from bench.train import TrainConfig, make_optimizer

H, N, B, L = 4, 16, 2, 24
BIG_DT = {"dt_min": 0.1, "dt_max": 0.5}  # Δ large enough that the liquid terms (∝ Δ^p) are O(1)


def make(dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> LiquidS4:
    torch.manual_seed(seed)
    return LiquidS4(H, N, **kw).to(dtype)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def discrete(m: LiquidS4) -> tuple[Tensor, Tensor, Tensor]:
    """(Ā, B̄, C) from the raw parameters with §4.3's bilinear formulas, independent of the module."""
    k = m.kernel
    dt = k.log_dt.exp()[:, None]
    dtA = dt * (-k.log_A_real.exp() + 1j * k.A_imag)
    B_, C = k.B[..., 0] + 1j * k.B[..., 1], k.C[..., 0] + 1j * k.C[..., 1]
    return (1 + dtA / 2) / (1 - dtA / 2), dt * B_ / (1 - dtA / 2), C


def liquid_recurrence(m: LiquidS4, u: Tensor, liquid: bool = True) -> Tensor:
    """The unexpanded system x_k = (Ā + u_k B̄) ⊙ x_{k-1} + B̄ u_k, v_k = 2Re(C·x_k) + D u_k (liquid=False
    drops the u_k B̄ term: plain S4). u (B, H, L) -> (B, H, L)."""
    dA, dB, C = discrete(m)
    x = torch.zeros(u.shape[0], H, N // 2, dtype=dA.dtype)
    out = []
    for t in range(u.shape[-1]):
        u_t = u[..., t, None]
        x = (dA + u_t * dB * liquid) * x + dB * u_t
        out.append(2 * (C * x).sum(-1).real + m.D * u[..., t])
    return torch.stack(out, -1)


def sparse_input(positions: dict[int, float], length: int = L) -> Tensor:
    u = torch.zeros(B, H, length, dtype=torch.float64)
    for t, value in positions.items():
        u[..., t] = value * (1 + torch.arange(B * H, dtype=torch.float64).view(B, H) / 4)
    return u


@pytest.mark.parametrize("kind", ["kb", "pb", "none"])
def test_impulse_response_is_the_linear_kernel(kind):  # S2 for Liquid-S4: one input has no products
    m = make(liquid_kernel=kind, liquid_degree=3, **BIG_DT)
    u = sparse_input({0: 1.0})
    with torch.no_grad():
        K, _ = m._kernels(L)
        torch.testing.assert_close(m.ssm(u), liquid_recurrence(m, u), rtol=0, atol=1e-12)
        torch.testing.assert_close(m.ssm(u), u[..., :1] * K[0] + m.D[:, None] * u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("degree", [2, 3])
def test_kb_equals_the_exact_liquid_recurrence_on_two_adjacent_inputs(degree):  # Q2
    m = make(liquid_kernel="kb", liquid_degree=degree, **BIG_DT)
    u = sparse_input({5: 1.3, 6: -0.8})
    with torch.no_grad():
        exact, linear = liquid_recurrence(m, u), liquid_recurrence(m, u, liquid=False)
        torch.testing.assert_close(m.ssm(u), exact, rtol=0, atol=1e-12)
        assert (exact - linear)[..., 6:].abs().max() > 1e-2  # the product term is really there
        K, _ = m._kernels(L)  # each order's kernel is the impulse response of its own recurrence
        dA, dB, C = discrete(m)
        for p in range(degree):
            response = [2 * (C * dB ** (p + 1) * dA**l).sum(-1).real for l in range(L)]
            torch.testing.assert_close(K[p], torch.stack(response, -1), rtol=0, atol=1e-12)


def test_pb_equals_kb_where_the_product_appears_and_differs_after():  # Q3
    u = sparse_input({5: 1.3, 6: -0.8})
    with torch.no_grad():
        kb, pb = make(liquid_kernel="kb", **BIG_DT).ssm(u), make(liquid_kernel="pb", **BIG_DT).ssm(u)
    torch.testing.assert_close(pb[..., :7], kb[..., :7], rtol=0, atol=1e-12)
    assert (pb[..., 7:] - kb[..., 7:]).abs().max() > 1e-2  # PB drops the Ā propagation of the product


@pytest.mark.parametrize("kind", ["kb", "pb"])
def test_liquid_part_is_second_order_in_the_input(kind):  # Q4
    m, plain = make(liquid_kernel=kind, **BIG_DT), make(liquid_kernel="none", **BIG_DT)
    u = randn(B, H, L)
    with torch.no_grad():
        gaps = [(m.ssm(eps * u) - plain.ssm(eps * u)).abs().max().item() for eps in (1e-1, 1e-2)]
        assert gaps[0] > 0 and 80 < gaps[0] / gaps[1] < 120  # falls 100x per 10x in ε: O(ε²)
        exact_gaps = [(liquid_recurrence(m, eps * u) - plain.ssm(eps * u)).abs().max().item() for eps in (1e-1, 1e-2)]
        assert 80 < exact_gaps[0] / exact_gaps[1] < 120


@pytest.mark.parametrize("kind", ["kb", "pb"])
def test_degree_one_is_plain_s4_and_higher_degrees_change_the_output(kind):
    u = randn(B, H, L)
    x = randn(B, L, H, seed=2)
    with torch.no_grad():
        plain = make(liquid_kernel="none", **BIG_DT)
        torch.testing.assert_close(plain.ssm(u), liquid_recurrence(plain, u, liquid=False), rtol=0, atol=1e-12)
        torch.testing.assert_close(make(liquid_kernel=kind, liquid_degree=1, **BIG_DT)(x), plain(x), rtol=0, atol=0)
        y2, y3 = [make(liquid_kernel=kind, liquid_degree=p, **BIG_DT)(x) for p in (2, 3)]
        assert (y2 - plain(x)).abs().max() > 1e-2 and (y3 - y2).abs().max() > 1e-2
        default = make(liquid_kernel=kind)  # also at the default Δ range, where the terms are small but present
        assert (default(x) - make(liquid_kernel="none")(x)).abs().max() > 1e-6


@pytest.mark.parametrize(("kind", "degree"), [("kb", 2), ("kb", 3), ("pb", 2), ("pb", 3)])
def test_hessian_couples_only_adjacent_inputs(kind, degree):  # Q6
    m, length, t = make(liquid_kernel=kind, liquid_degree=degree, **BIG_DT), 8, 6
    u0 = randn(1, H, length)

    def v_t(u_channel: Tensor) -> Tensor:
        u = u0.clone()
        u[0, 1] = u_channel
        return m.ssm(u)[0, 1, t]

    hess = torch.autograd.functional.hessian(v_t, u0[0, 1]).abs()  # (length, length)
    a, b = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    allowed = ((a - b).abs() >= 1) & ((a - b).abs() <= degree - 1) & (a <= t) & (b <= t)
    if kind == "pb":  # pointwise terms: only the products at position t itself
        allowed &= (a > t - degree) & (b > t - degree)
    assert hess[~allowed].max() < 1e-12 and hess[allowed].min() > 1e-8


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(("kind", "degree", "init", "lcontract"), [
    ("kb", 2, "legs", "none"), ("kb", 3, "lin", "tanh"), ("pb", 2, "legs", "none"), ("pb", 4, "legs", "lecun"),
    ("none", 2, "lin", "none"),
])
def test_step_matches_parallel_at_length_64(kind, degree, init, lcontract, dtype, tol):
    m, length = make(dtype, liquid_kernel=kind, liquid_degree=degree, init=init, lcontract=lcontract), 64
    x = randn(B, length, H, dtype=dtype)
    with torch.no_grad():
        y = m(x)
        for p in (0, 1, 2, 31, 63):
            err = (prefill_then_step(m, x, p)[0] - y).abs().max().item()
            assert err <= tol, f"prefill {p}: max error {err:.2e}"


@pytest.mark.parametrize("kind", ["kb", "pb"])
def test_gradients_are_finite_at_length_512(kind):
    m = make(torch.float32, liquid_kernel=kind, liquid_degree=3, dt_max=0.5)
    x = randn(2, 512, H, dtype=torch.float32).requires_grad_()
    m(x).square().mean().backward()
    for name, p in [*m.named_parameters(), ("x", x)]:
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_legs_initialisation():  # Q8
    w, V, VB = legs_eig(64)
    n = torch.arange(64, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(n + 1)
    P = torch.sqrt(n + 0.5)
    torch.testing.assert_close(w.real, torch.full_like(w.real, -0.5), rtol=0, atol=1e-10)
    torch.testing.assert_close(V @ torch.diag(w) @ V.conj().T, (A + P[:, None] * P[None, :]).to(V.dtype),
                               rtol=0, atol=1e-10)
    assert 1200 < w.imag.max() < 1400 and torch.allclose(w.imag.sort().values, (-w.imag).sort().values)  # ± pairs
    k = make().kernel
    w16, _, VB16 = legs_eig(N)
    torch.testing.assert_close(k.A_imag, w16.imag[N // 2:].expand(H, -1), rtol=0, atol=1e-5)
    assert (k.A_imag > 0).all() and torch.allclose(k.log_A_real, torch.tensor(math.log(0.5), dtype=torch.float64))
    torch.testing.assert_close(k.B[..., 0] + 1j * k.B[..., 1], VB16[N // 2:].expand(H, -1), rtol=0, atol=1e-5)
    lin = make(init="lin").kernel
    torch.testing.assert_close(lin.A_imag[0], math.pi * torch.arange(N // 2, dtype=torch.float64), rtol=0, atol=1e-5)
    assert (lin.B[..., 0] == 1).all() and (lin.B[..., 1] == 0).all()
    dA, _, _ = discrete(make())
    assert (dA.abs() < 1).all()


def test_coefficients_follow_the_live_parameters():  # Q7: no frozen copies (§4.2.8)
    m, u = make(liquid_kernel="pb", **BIG_DT), randn(B, H, L)
    before_kappa, before_v = m._coefficients()[-1].detach().clone(), m.ssm(u).detach()
    opt = torch.optim.SGD(m.kernel.parameters(), lr=0.1)
    m.ssm(u).square().sum().backward()
    opt.step()
    assert not torch.allclose(m._coefficients()[-1], before_kappa) and not torch.allclose(m.ssm(u), before_v)
    m2 = make(liquid_kernel="pb", seed=5, **BIG_DT)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2.ssm(u), m.ssm(u), rtol=0, atol=0)


def test_optimizer_groups_honour_the_dynamics_hints():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="liquid_s4", d_model=H, num_layers=2, d_state=N))
    opt, _ = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    setting = {names[id(p)]: (g["weight_decay"], g["initial_lr"]) for g in opt.param_groups for p in g["params"]}
    assert len(setting) == len(names)
    for layer in (0, 1):
        pre = f"blocks.{layer}.mixer."
        for dyn in ("kernel.log_dt", "kernel.log_A_real", "kernel.A_imag", "kernel.B"):
            assert setting[pre + dyn] == (0.0, 1e-3)  # no decay, lr capped at the hint
        assert setting[pre + "kernel.C"] == setting[pre + "output_linear.0.weight"] == (0.1, 1e-2)
        assert setting[pre + "D"] == setting[pre + "output_linear.0.bias"] == (0.0, 1e-2)  # 1-D: no decay
    opt, _ = make_optimizer(model, TrainConfig(lr=5e-4))
    assert {g["initial_lr"] for g in opt.param_groups} == {5e-4}  # the cap never raises a learning rate


def test_state_layout_and_hyperparameter_mapping():
    for kind, degree, floats in [("kb", 3, 3 * N + 2), ("pb", 3, N + 2), ("none", 3, N), ("pb", 1, N)]:
        m = make(liquid_kernel=kind, liquid_degree=degree)
        assert m.state_size(10) == H * floats
        state = m.init_state(B)
        assert state.x.shape[1] == (degree if kind == "kb" else 1) and state.inputs.shape[-1] == floats % N
    m = build_mixer("liquid_s4", H, d_state=N, d_conv=4, expand=2)
    assert m.unused_hparams == ["d_conv", "expand"]
    x = randn(B, 2, H)  # prefill shorter than P-1: the input buffer is zero-padded
    _, state = make(liquid_kernel="pb", liquid_degree=4).forward_with_state(x)
    torch.testing.assert_close(state.inputs, torch.stack((x[:, 1], x[:, 0], torch.zeros_like(x[:, 0])), -1))


@pytest.mark.parametrize(("kw", "word"), [
    ({"d_state": 5}, "d_state"), ({"liquid_kernel": "polyb"}, "liquid_kernel"),
    ({"liquid_degree": 0}, "liquid_degree"), ({"init": "inv"}, "init"), ({"lcontract": "relu"}, "lcontract"),
    ({"dt_max": 1e-4}, "dt_m"), ({"ssm_lr": -1.0}, "ssm_lr"),
])
def test_invalid_values_are_rejected(kw, word):
    with pytest.raises(ValueError, match=word):
        build_mixer("liquid_s4", H, **kw)
