"""S4D-specific oracles (ARCHITECTURES.md §5.5) beyond the generic ones in tests/test_models.py:
kernel = impulse response of the literal recurrence written from the raw parameters, FFT = direct
convolution, step = parallel at L = 64, the paper's initial eigenvalues, finite gradients at L = 512,
and the optimiser groups that honour the dynamics' hints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import prefill_then_step
from torch import Tensor

from bench.models import ModelConfig, build_mixer, build_model, optim_hints
from bench.models.s4d import S4D
from bench.train import TrainConfig, make_optimizer

H, N, B = 8, 16, 3
VARIANTS = [(init, disc) for init in ("lin", "inv", "real") for disc in ("zoh", "bilinear")]


def make(dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> S4D:
    torch.manual_seed(seed)
    return S4D(H, N, **kw).to(dtype)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def recurrence(m: S4D, u: Tensor) -> Tensor:
    """v_t = 2Re Σ_n C_n x_t + D u_t with x_t = Ā x_{t-1} + B̄ u_t, written from the raw parameters
    and §5.1's formulas (not the module's own discretisation): u (B, H, L) -> (B, H, L)."""
    k = m.kernel
    dt = k.log_dt.exp()[:, None]
    lam = -k.log_A_real.exp() + 1j * k.A_imag
    if k.disc == "zoh":
        dA, dB = torch.exp(dt * lam), (torch.exp(dt * lam) - 1) / lam
    else:
        dA, dB = (1 + dt * lam / 2) / (1 - dt * lam / 2), dt / (1 - dt * lam / 2)
    C = k.C[..., 0] + 1j * k.C[..., 1]
    x = torch.zeros(u.shape[0], H, N // 2, dtype=dA.dtype)
    out = []
    for t in range(u.shape[-1]):
        x = dA * x + dB * u[..., t, None]
        out.append(2 * (C * x).sum(-1).real + m.D * u[..., t])
    return torch.stack(out, -1)


@pytest.mark.parametrize(("init", "disc"), VARIANTS)
def test_kernel_is_the_impulse_response_of_the_recurrence(init, disc):  # S2
    m, L = make(init=init, disc=disc, dt_min=1e-3, dt_max=0.5), 64
    impulse = torch.zeros(1, H, L, dtype=torch.float64)
    impulse[..., 0] = 1
    with torch.no_grad():
        K = m.kernel(L)
        delta = m.D[:, None] * impulse[0]
        torch.testing.assert_close(recurrence(m, impulse)[0], K + delta, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.ssm(impulse)[0], K + delta, rtol=0, atol=1e-12)  # FFT path
        # step mode, through the output map: y_l = GLU(W GELU(K_l + D δ_l))
        state, ys = m.init_state(1), []
        for t in range(L):
            y, state = m.step(impulse[..., t], state)
            ys.append(y)
        expected = m.output_linear(F.gelu(K + delta)[None])[0]  # (H, L)
        torch.testing.assert_close(torch.stack(ys, -1)[0], expected, rtol=0, atol=1e-12)
    assert K.abs().max() > 1e-3  # a real kernel, not a vanishing one


def test_fft_convolution_equals_direct_convolution():  # S3
    m, L = make(), 40
    u = randn(B, H, L)
    with torch.no_grad():
        K = m.kernel(L)
        direct = torch.stack([(K[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(L)], -1)
        torch.testing.assert_close(m.ssm(u), direct + m.D[:, None] * u, rtol=0, atol=1e-12)
        torch.testing.assert_close(m.ssm(u), recurrence(m, u), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(("init", "disc"), VARIANTS)
def test_step_matches_parallel_at_length_64(init, disc, dtype, tol):
    m, L = make(dtype, init=init, disc=disc), 64
    x = randn(B, L, H, dtype=dtype)
    with torch.no_grad():
        y = m(x)
        for p in (0, 1, 31, 63):
            err = (prefill_then_step(m, x, p)[0] - y).abs().max().item()
            assert err <= tol, f"prefill {p}: max error {err:.2e}"


def test_initial_eigenvalues_follow_the_paper():  # S5, S6
    n = torch.arange(N // 2, dtype=torch.float64)
    expected = {
        "lin": -0.5 + 1j * math.pi * n,  # S4D-Lin
        "inv": -0.5 + 1j * (N / math.pi) * (N / (2 * n + 1) - 1),  # S4D-Inv, N the full state size
        "real": -(n + 1) + 0j,  # S4D-Real
    }
    for init, lam in expected.items():
        k = make(init=init).kernel
        got = torch.complex(-k.log_A_real.exp(), k.A_imag)
        torch.testing.assert_close(got, lam.expand(H, -1).to(got.dtype), rtol=1e-6, atol=1e-6)
        _, dA, _, _ = k.discretize()
        assert (dA.abs() < 1).all()  # stable for every mode
    inv = make(init="inv").kernel.A_imag[0].detach()
    assert inv[0] == pytest.approx(N * (N - 1) / math.pi) and (inv.diff() < 0).all()  # decreasing from N(N-1)/π
    dt = make(seed=3).kernel.log_dt.exp()
    wide = S4D(256, N).kernel.log_dt.exp()
    assert ((dt >= 1e-3) & (dt <= 1e-1)).all() and wide.min() < 2e-3 and wide.max() > 5e-2  # log-uniform spread


def test_gradients_are_finite_at_length_512():
    m = make(torch.float32)
    x = randn(2, 512, H, dtype=torch.float32).requires_grad_()
    m(x).square().mean().backward()
    for name, p in [*m.named_parameters(), ("x", x)]:
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_optimizer_groups_honour_the_dynamics_hints():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="s4d", d_model=H, num_layers=2, d_state=N))
    opt, _ = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    setting = {names[id(p)]: (g["weight_decay"], g["initial_lr"]) for g in opt.param_groups for p in g["params"]}
    assert len(setting) == len(names)
    for layer in (0, 1):
        pre = f"blocks.{layer}.mixer."
        for dyn in ("kernel.log_dt", "kernel.log_A_real", "kernel.A_imag"):
            assert setting[pre + dyn] == (0.0, 1e-3)  # no decay, lr capped at the hint
        assert setting[pre + "kernel.C"] == (0.1, 1e-2)  # the rest keeps the configured settings
        assert setting[pre + "output_linear.0.weight"] == (0.1, 1e-2)
        assert setting[pre + "D"] == setting[pre + "output_linear.0.bias"] == (0.0, 1e-2)  # 1-D: no decay
    # the cap never raises a learning rate, and the knob moves it
    opt, _ = make_optimizer(model, TrainConfig(lr=5e-4))
    assert {g["initial_lr"] for g in opt.param_groups} == {5e-4}
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="s4d", d_model=H, num_layers=1, mixer={"s4d": {"ssm_lr": 2e-4}}))
    opt, _ = make_optimizer(model, TrainConfig(lr=1e-2))
    assert sorted({g["initial_lr"] for g in opt.param_groups}) == [2e-4, 1e-2]


def test_hints_survive_dtype_moves():
    m = make(torch.float64)
    dynamics = {"weight_decay": 0.0, "lr": 1e-3}
    assert optim_hints(m) == {f"kernel.{n}": dynamics for n in ("log_dt", "log_A_real", "A_imag")}


def test_hyperparameter_mapping():
    m = build_mixer("s4d", H, d_state=N, d_conv=4, expand=2)
    assert m.unused_hparams == ["d_conv", "expand"] and m.kernel.C.shape == (H, N // 2, 2)
    assert m.state_size(100) == H * N
    with pytest.raises(ValueError, match="'expand' was set for architecture 's4d'"):
        build_model(ModelConfig(arch="s4d", d_model=H, mixer={"s4d": {"expand": 2}}))


@pytest.mark.parametrize(("kw", "word"), [
    ({"d_state": 7}, "d_state"), ({"d_state": 0}, "d_state"), ({"init": "legs"}, "init"),
    ({"disc": "euler"}, "disc"), ({"dt_min": 0.2}, "dt_min"), ({"dt_min": 0.0}, "dt_min"), ({"ssm_lr": -1.0}, "ssm_lr"),
])
def test_invalid_values_are_rejected(kw, word):
    with pytest.raises(ValueError, match=word):
        build_mixer("s4d", H, **kw)
