"""StableSSM (bench/models/stable_ssm.py) beyond the generic oracles of test_models.py: the parallel
FFT convolution against the literal recurrence, the stability of each reparameterisation (R2), the
decay rate of the impulse response (R5), its gradients (R6), and the optimiser's groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import prefill_then_step, step_through
from torch import Tensor

from bench.experiment.config import compose_config
from bench.models import build_mixer, build_model
from bench.models.backbone import ModelConfig
from bench.models.stable_ssm import REPARAMS, StableSSM, inverse_real_part, real_part
from bench.train import param_groups

H, N = 8, 8
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # tighter than the 1e-5 / 1e-4


def make(dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> StableSSM:
    torch.manual_seed(seed)
    return StableSSM(H, d_state=N, **kw).to(dtype)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def impulse_response(mixer: StableSSM, length: int) -> Tensor:
    """v (H, length) of the literal recurrence (`ssm_step`) driven by u = e_0 on every channel."""
    x = torch.zeros(1, H, N // 2, dtype=torch.complex128)
    vs = []
    for t in range(length):
        v_t, x = mixer.ssm_step(torch.full((1, H), float(t == 0), dtype=torch.float64), x)
        vs.append(v_t[0])
    return torch.stack(vs, dim=-1)


# ---------------------------------------------------------------- parallel = recurrence


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("reparam", "kw"), [(r, {}) for r in REPARAMS] + [
    ("softplus", {"bias": True}), ("exp", {"activation": "gelu"}), ("direct", {"activation": "identity"})])
def test_step_matches_parallel_at_length_64(reparam, kw, dtype):
    mixer, x = make(dtype, reparam=reparam, **kw), randn(2, 64, H, dtype=dtype)
    if "bias" in kw:
        with torch.no_grad():
            mixer.kernel.b.copy_(randn(H, N // 2, 2, seed=5))
    y = mixer(x)
    for p in (0, 1, 31, 63):
        err = (prefill_then_step(mixer, x, p)[0] - y).abs().max().item()
        assert err <= TOL[dtype], f"prefill {p}: {err:.1e}"


@pytest.mark.parametrize("reparam", REPARAMS)
def test_kernel_is_the_impulse_response_of_the_recurrence(reparam):  # S2 for StableSSM
    mixer = make(reparam=reparam, seed=3)
    k, v = mixer.kernel(64), impulse_response(mixer, 64)
    v[:, 0] -= mixer.D  # the skip term only acts at lag 0
    torch.testing.assert_close(k, v, rtol=0, atol=1e-12)
    # ... and the FFT convolution is the direct O(L²) causal convolution with that kernel
    u = randn(2, H, 64)
    direct = torch.stack([(k[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(64)], dim=-1)
    torch.testing.assert_close(mixer.ssm(u), direct + mixer.D[:, None] * u, rtol=0, atol=1e-12)


def test_bias_adds_the_response_to_a_constant_input():
    mixer = make(bias=True)
    with torch.no_grad():
        mixer.kernel.b.copy_(randn(H, N // 2, 2, seed=5))
    zeros = torch.zeros(1, H, 16, dtype=torch.float64)
    x, vs = torch.zeros(1, H, N // 2, dtype=torch.complex128), []
    for _ in range(16):  # u = 0: only b drives the state
        v_t, x = mixer.ssm_step(zeros[..., 0], x)
        vs.append(v_t)
    torch.testing.assert_close(mixer.ssm(zeros), torch.stack(vs, -1), rtol=0, atol=1e-12)
    assert mixer.ssm(zeros).abs().max() > 1e-3
    assert sum(p.numel() for p in mixer.parameters()) == 2 * H * H + H * (3 * N + 4)


def test_parallel_mode_is_not_a_loop_over_time(monkeypatch):
    """At L = 512 forward equals stepping the recurrence, and never calls the step."""
    mixer, x = make(), randn(1, 512, H)
    looped, _ = step_through(mixer, x, mixer.init_state(1))

    def forbidden(*args, **kwargs):
        raise AssertionError("parallel mode called the recurrence")

    monkeypatch.setattr(mixer, "step", forbidden)
    monkeypatch.setattr(mixer, "ssm_step", forbidden)
    torch.testing.assert_close(mixer(x), looped, rtol=0, atol=1e-10)
    y, state = mixer.forward_with_state(x)
    assert state.shape == (1, H, N // 2, 2)


@pytest.mark.parametrize("reparam", REPARAMS)
def test_gradients_are_finite_at_length_512(reparam):
    mixer = make(torch.float32, reparam=reparam)
    x = randn(2, 512, H, dtype=torch.float32).requires_grad_()
    mixer(x).square().mean().backward()
    grads = [x.grad] + [p.grad for p in mixer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert mixer.kernel.log_A_real.grad.abs().sum() > 0


# ---------------------------------------------------------------- reparameterisations


@pytest.mark.parametrize("reparam", REPARAMS)
def test_every_reparameterisation_starts_from_the_same_system(reparam):  # R3
    mixer = make(reparam=reparam)
    torch.testing.assert_close(real_part(mixer.kernel.log_A_real, reparam),
                               torch.full((H, N // 2), -0.5, dtype=torch.float64), rtol=1e-7, atol=0)
    torch.testing.assert_close(mixer.kernel.A_imag, math.pi * torch.arange(N // 2, dtype=torch.float64).expand(H, -1))
    reference, x = make(reparam="exp"), randn(2, 16, H)  # W was drawn in float32: agreement to ~1e-8
    torch.testing.assert_close(mixer.kernel(16), reference.kernel(16), rtol=0, atol=1e-7)
    torch.testing.assert_close(mixer(x), reference(x), rtol=0, atol=1e-7)


def transition(mixer: StableSSM) -> tuple[Tensor, Tensor]:
    """(log|Ā|, |Ā|) of the discrete transition, (H, N/2)."""
    z, _ = mixer.kernel.discretize()
    return z.real, z.exp().abs()


@pytest.mark.parametrize("reparam", ["exp", "softplus", "best"])
def test_stable_reparameterisations_are_stable_for_any_w(reparam):  # R2
    """|Ā| = exp(Δ Re λ) < 1 for any W. |Ā| itself rounds to 1 once Δ|Re λ| < 1e-16 (W -> -inf), so the
    strict check at huge |W| is on log|Ā| = Δ Re λ; |Ā| < 1 is checked where it is representable."""
    mixer = make(reparam=reparam)
    # beyond |W| ~ 700, e^W leaves float64 (0 or inf): Re λ = -0.0 is then the representable "0⁻"
    huge = [(randn(H, N // 2, seed=s) * scale).clamp(-700, 700) for s, scale in enumerate((1.0, 10.0, 100.0, 500.0))]
    grid = torch.linspace(-700, 700, H * N // 2, dtype=torch.float64).view(H, N // 2)
    for w in [*huge, grid]:
        if reparam == "best":
            w = w.clamp(-1e3, 1e3)  # 1/(w² + 0.1) underflows to 0 only beyond ~1e154
        with torch.no_grad():
            mixer.kernel.log_A_real.copy_(w)
        log_abs, abs_ = transition(mixer)
        assert (log_abs < 0).all() and (abs_ <= 1).all() and torch.isfinite(mixer.kernel(64)).all()
    with torch.no_grad():
        mixer.kernel.log_A_real.copy_(torch.linspace(-30, 30, H * N // 2, dtype=torch.float64).view(H, N // 2))
    assert (transition(mixer)[1] < 1).all()


def test_direct_can_become_unstable():
    mixer = make(reparam="direct")
    with torch.no_grad():
        mixer.kernel.log_A_real.copy_(randn(H, N // 2).abs() + 1)  # Re λ = W > 0
        mixer.kernel.log_dt.fill_(math.log(0.1))  # |Ā| >= e^0.1: a factor >= e^25 over 250 lags
    assert (transition(mixer)[1] > 1).all()
    k = mixer.kernel(300).abs()
    assert (k[:, -50:].amax(-1) > 1e6 * k[:, :50].amax(-1)).all()  # the kernel grows with the lag
    with torch.no_grad():  # W = 0 sits on the boundary: the series branch keeps B̄ finite (expm1(0)/0)
        mixer.kernel.log_A_real.zero_()
    assert torch.isfinite(mixer.kernel(16)).all() and (transition(mixer)[1] - 1).abs().max() < 1e-12


@pytest.mark.parametrize("reparam", REPARAMS)
def test_impulse_response_decays_at_the_rate_the_parameters_imply(reparam):  # R5, one real mode
    """Only mode 0 (Im λ = 0) has C ≠ 0: K_l = 2Re(C_0 B̄_0)·e^{Δ f(W) l}, a line of slope Δ f(W) on log-y."""
    mixer = make(reparam=reparam)
    w = randn(H, seed=4) + (0.5 if reparam == "direct" else 0.0)
    with torch.no_grad():
        mixer.kernel.log_A_real[:, 0] = w
        mixer.kernel.C[:, 1:] = 0
    dt = mixer.kernel.log_dt.exp()
    rate = dt * real_part(w, reparam)
    v = impulse_response(mixer, 64)  # the recurrence, not the kernel formula
    v[:, 0] -= mixer.D
    slopes = torch.diff(v.abs().log(), dim=-1)  # (H, 63)
    torch.testing.assert_close(slopes, rate[:, None].expand_as(slopes), rtol=0, atol=1e-9)
    if reparam != "direct":
        assert (rate < 0).all()
    else:
        assert ((rate > 0) == (w > 0)).all()


@pytest.mark.parametrize("reparam", REPARAMS)
def test_gradient_of_the_decay_rate_matches_the_table(reparam):  # R6
    w = torch.linspace(-5, 5, 41, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(real_part(w, reparam).sum(), w)
    w = w.detach()
    expected = {"direct": torch.ones_like(w), "exp": -w.exp(), "softplus": -torch.sigmoid(w),
                "best": 2 * w / (w * w + 0.1) ** 2}[reparam]
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    for re in (-0.5, -2.0):
        assert real_part(torch.tensor(inverse_real_part(re, reparam)), reparam).item() == pytest.approx(re)


def test_exp_with_gelu_is_s4d_lin():  # R4: same keys, same numbers
    from bench.models import MIXERS

    if "s4d" not in MIXERS:
        pytest.skip("s4d is not registered")
    torch.manual_seed(0)
    s4d = build_mixer("s4d", H, d_state=N).double()
    ours = make(reparam="exp", activation="gelu", seed=1)
    ours.load_state_dict(s4d.state_dict(), strict=True)
    x = randn(2, 32, H)
    torch.testing.assert_close(ours(x), s4d(x), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- optimiser, config, errors


def test_dynamics_parameters_get_no_weight_decay_and_a_capped_lr():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="stable_ssm", d_model=16, num_layers=2, d_state=8))
    names = {id(p): n for n, p in model.named_parameters()}
    dynamics = {n for n in names.values() if n.split(".")[-1] in ("log_dt", "log_A_real", "A_imag")}
    assert len(dynamics) == 6

    def group_of(groups: list[dict], name: str) -> dict:
        return next(g for g in groups if any(names[id(p)] == name for p in g["params"]))

    for lr, cap in [(1e-2, 1e-3), (1e-4, 1e-4)]:
        groups = param_groups(model, lr, weight_decay=0.1)
        for name in dynamics:
            assert (group_of(groups, name)["weight_decay"], group_of(groups, name)["lr"]) == (0.0, cap)
        c = group_of(groups, "blocks.0.mixer.kernel.C")
        assert (c["weight_decay"], c["lr"]) == (0.1, lr)  # C is an ordinary weight
        assert group_of(groups, "blocks.0.mixer.D")["weight_decay"] == 0.0
    torch.manual_seed(0)
    other = build_model(ModelConfig(arch="stable_ssm", d_model=16, d_state=8, mixer={"stable_ssm": {"ssm_lr": 3e-4}}))
    names = {id(p): n for n, p in other.named_parameters()}
    assert group_of(param_groups(other, 1e-2, 0.1), "blocks.1.mixer.kernel.log_dt")["lr"] == 3e-4


@pytest.mark.parametrize("reparam", REPARAMS)
def test_reparam_is_selected_by_override(reparam):
    cfg = compose_config(["study=smoke", f"model.mixer.stable_ssm.reparam={reparam}"])
    model = build_model(cfg.model_config("stable_ssm"))
    assert all(b.mixer.reparam == reparam for b in model.blocks)


@pytest.mark.parametrize(("kw", "word"), [
    ({"d_state": 7}, "d_state"), ({"d_state": 0}, "d_state"), ({"reparam": "tanh"}, "reparam"),
    ({"activation": "swish"}, "activation"), ({"dt_min": 0.2}, "dt_min"), ({"ssm_lr": 0.0}, "ssm_lr"),
])
def test_invalid_values_are_rejected(kw, word):
    with pytest.raises(ValueError, match=word):
        build_mixer("stable_ssm", H, **kw)


def test_uses_d_state_only_of_the_shared_hyperparameters():
    mixer = build_mixer("stable_ssm", H, d_state=8, d_conv=4, expand=2)
    assert mixer.unused_hparams == ["d_conv", "expand"] and mixer.state_size(100) == H * 8
    assert F.softplus(torch.tensor(inverse_real_part(-0.5, "softplus"))).item() == pytest.approx(0.5)
