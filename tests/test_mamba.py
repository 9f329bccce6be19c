"""Tests of the Mamba mixer (bench/models/mamba.py) and its scans (bench/models/ops/selective_scan.py)
beyond the generic oracles of test_models.py: mamba_ssm's parameter layout and initialisation (M4),
the layer against §2.1 written out per position, the fast scan against the literal recurrence (M2)
and the LTI limit (M5), step = parallel on the chunked path (M1), the impl knob and the kernel probe,
and on a GPU with mamba_ssm the interop checks (M3)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import bench.models.ops.selective_scan as ops
from bench.models import build_model, optim_hints
from bench.models.backbone import ModelConfig
from bench.models.mamba import Mamba, MambaState
from bench.models.ops.selective_scan import selective_scan, sequential_scan
from bench.train import param_groups

F64 = torch.float64


def randn(*shape: int, dtype: torch.dtype = F64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make(d: int = 16, dtype: torch.dtype = F64, seed: int = 0, **kw) -> Mamba:
    torch.manual_seed(seed)
    return Mamba(d, **kw).to(dtype)


def scan_inputs(b: int, L: int, E: int, N: int, dtype: torch.dtype = F64, seed: int = 0, scale: float = 1.0):
    """(u, Δ, A, B, C) with Δ in (0, scale] and A in [-3·scale, 0): the decays span e^{-9·scale²}..1."""
    g = torch.Generator().manual_seed(seed)
    u, B, C = (torch.randn(*s, generator=g, dtype=dtype) for s in ((b, L, E), (b, L, N), (b, L, N)))
    delta = torch.rand(b, L, E, generator=g, dtype=dtype) * scale + 1e-3
    A = -torch.rand(E, N, generator=g, dtype=dtype) * 3 * scale
    return u, delta, A, B, C


# ---------------------------------------------------------------- parameters and initialisation (M4)


@pytest.mark.parametrize(("d", "N", "K", "expand"), [(16, 16, 4, 2), (32, 8, 2, 1), (24, 4, 3, 4), (64, 16, 4, 2)])
def test_parameter_names_shapes_and_count_match_mamba_ssm(d, N, K, expand):
    m = Mamba(d, d_state=N, d_conv=K, expand=expand)
    E, R = expand * d, math.ceil(d / 16)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "in_proj.weight": (2 * E, d), "conv1d.weight": (E, 1, K), "conv1d.bias": (E,),
        "x_proj.weight": (R + 2 * N, E), "dt_proj.weight": (E, R), "dt_proj.bias": (E,),
        "A_log": (E, N), "D": (E,), "out_proj.weight": (d, E),
    }
    assert (m.d_inner, m.dt_rank) == (E, R) and not list(m.buffers())
    assert sum(p.numel() for p in m.parameters()) == 3 * E * d + E * (K + 3 * N + 2 * R + 3)  # §0.4
    assert m.state_size(0) == m.state_size(100) == E * (N + K)


def test_bias_options_add_exactly_mamba_ssm_keys():
    keys = set(Mamba(16, bias=True, conv_bias=False, dt_rank=3).state_dict())
    assert {"in_proj.bias", "out_proj.bias"} <= keys and "conv1d.bias" not in keys
    assert Mamba(16, dt_rank=3).dt_proj.weight.shape == (32, 3)


@pytest.mark.parametrize("d", [16, 64])
def test_initialisation_matches_mamba_ssm(d):
    m = make(d, torch.float32)
    E, N, R = m.d_inner, m.d_state, m.dt_rank
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # log Δ0 uniform on [log 1e-3, log 1e-1]: its mean and spread, within sampling error
    u = (dt.log() - math.log(1e-3)) / (math.log(1e-1) - math.log(1e-3))
    assert abs(u.mean().item() - 0.5) < 4 * (1 / 12 / E) ** 0.5 and u.min() < 0.2 and u.max() > 0.8
    assert m.dt_proj.weight.abs().max() <= R**-0.5
    torch.testing.assert_close(m.A_log.detach(), torch.log(torch.arange(1.0, N + 1)).expand(E, N), rtol=0, atol=0)
    assert m.A_log.dtype == m.D.dtype == torch.float32 and (m.D == 1).all()
    constant = Mamba(d, dt_init="constant", dt_scale=2.0)
    assert torch.all(constant.dt_proj.weight == 2.0 * R**-0.5)


def test_inverse_softplus_is_exact_and_floor_clamps():
    m = Mamba(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)  # every draw is below the floor
    torch.testing.assert_close(F.softplus(m.dt_proj.bias.detach().double()),
                               torch.full((32,), 1e-4, dtype=F64), rtol=1e-5, atol=0)


def test_a_log_and_d_carry_no_weight_decay():
    m = Mamba(16)
    assert optim_hints(m) == {"A_log": {"weight_decay": 0.0}, "D": {"weight_decay": 0.0}}
    groups = param_groups(m, lr=1e-3, weight_decay=0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(m.A_log) not in decayed and id(m.in_proj.weight) in decayed
    assert all(g["lr"] == 1e-3 for g in groups)  # no learning-rate cap: mamba_ssm declares none


def test_backbone_keeps_mamba_initialisation():
    """The peer-suite bug: a backbone-wide init that resets Linear biases sends every Δ to softplus(0)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mamba", d_model=32, num_layers=3, d_state=8))
    for block in model.blocks:
        m = block.mixer
        dt = F.softplus(m.dt_proj.bias.detach())
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5) and dt.std() > 0
        assert torch.equal(m.A_log.detach(), torch.log(torch.arange(1.0, 9)).expand(64, 8))
        assert (m.D == 1).all()
        assert m.impl_used == "fused_cpu"  # CPU, with the compiled scan


@pytest.mark.parametrize(("kw", "word"), [
    ({"d_state": 0}, "d_state"), ({"d_conv": 1.5}, "d_conv"), ({"expand": 0}, "expand"),
    ({"expand": 1.5}, "expand"),  # 1.5 * 15 is not an integer
    ({"expand": True}, "expand"), ({"dt_rank": 0}, "dt_rank"), ({"dt_rank": "full"}, "dt_rank"),
    ({"dt_min": 0.2}, "dt_min"), ({"dt_init": "normal"}, "dt_init"), ({"dt_scale": 0}, "dt_scale"),
    ({"dt_init_floor": -1}, "dt_init_floor"), ({"bias": 1}, "bias"), ({"impl": "triton"}, "impl"),
])
def test_invalid_values_name_the_problem(kw, word):
    with pytest.raises(ValueError, match=word):
        Mamba(15, **kw)


def test_fractional_expand_is_accepted_when_the_inner_width_is_whole():
    assert Mamba(16, expand=1.5).d_inner == 24


# ---------------------------------------------------------------- the layer


def naive_mamba(m: Mamba, x: Tensor) -> Tensor:
    """§2.1 steps 1-9 written out per position, with the mixer's weights (conv taps summed by hand)."""
    b, L, _ = x.shape
    E, N, K = m.d_inner, m.d_state, m.d_conv
    xt, z = (x @ m.in_proj.weight.T).split(E, dim=-1)
    w = m.conv1d.weight[:, 0]  # (E, K); tap K - 1 multiplies the current token
    A = -torch.exp(m.A_log)
    s, out = x.new_zeros(b, E, N), []
    for t in range(L):
        a = F.silu(m.conv1d.bias + sum(w[:, j] * xt[:, t - K + 1 + j] for j in range(K) if t - K + 1 + j >= 0))
        dt, B, C = (a @ m.x_proj.weight.T).split([m.dt_rank, N, N], dim=-1)
        delta = F.softplus(dt @ m.dt_proj.weight.T + m.dt_proj.bias)  # (b, E)
        s = torch.exp(delta[:, :, None] * A) * s + delta[:, :, None] * B[:, None, :] * a[:, :, None]
        y = (s * C[:, None, :]).sum(-1) + m.D * a
        out.append((y * F.silu(z[:, t])) @ m.out_proj.weight.T)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("impl", ["reference", "fused_cpu"])
@pytest.mark.parametrize(("L", "kw"), [(40, {}), (7, {"d_conv": 3, "expand": 1}), (33, {"d_state": 4, "d_conv": 2})])
def test_layer_matches_equations_written_out(L, kw, impl):
    m, x = make(16, impl=impl, **kw), randn(2, L, 16)
    torch.testing.assert_close(m(x), naive_mamba(m, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "fused_cpu"])
def test_causal_on_the_chunked_path(impl):  # G1 at a length the generic test does not reach (L > 32)
    m, x = make(impl=impl), randn(2, 70, 16)
    y = m(x)
    for t in (1, 31, 40, 69):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = m(x2)
        assert (y2[:, :t] - y[:, :t]).abs().max() <= 1e-12 and not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("impl", ["reference", "fused_cpu"])
@pytest.mark.parametrize("kw", [{}, {"d_conv": 2, "expand": 1}, {"d_conv": 3, "bias": True, "d_state": 5}])
def test_step_matches_parallel_on_long_sequences(kw, impl):  # M1 / G2 in float64, prefills around d_conv
    m, x, L = make(impl=impl, **kw), randn(2, 45, 16), 45
    y = m(x)
    for p in sorted({0, 1, m.d_conv - 1, m.d_conv, L // 2, L - 1}):
        pre, state = (x.new_empty(2, 0, 16), m.init_state(2)) if p == 0 else m.forward_with_state(x[:, :p])
        ys = [pre]
        for t in range(p, L):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t[:, None])
        err = (torch.cat(ys, dim=1) - y).abs().max().item()
        assert err <= 1e-10, f"prefill {p}: {err:.1e}"


def test_prefill_state_layout_is_mamba_ssm_cache():
    m, x = make(), randn(2, 10, 16)
    xt = (x @ m.in_proj.weight.T)[..., :m.d_inner].transpose(1, 2)  # x̃: (B, E, L)
    for p in (1, 3, 4, 10):
        _, state = m.forward_with_state(x[:, :p])
        assert state.conv.shape == (2, 32, 4) and state.ssm.shape == (2, 32, 16)
        k = min(p, 4)
        torch.testing.assert_close(state.conv[..., 4 - k:], xt[..., p - k:p], rtol=0, atol=1e-14)
        assert (state.conv[..., :4 - k] == 0).all()


def test_float32_scan_state_even_for_half_precision_parameters():
    m = make(dtype=torch.bfloat16)
    state = m.init_state(2)
    assert state.conv.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    y, state = m.forward_with_state(randn(2, 5, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    y_t, state = m.step(randn(2, 16, dtype=torch.bfloat16), state)
    assert y_t.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32


# ---------------------------------------------------------------- the scan (M2, M5)


def check_scan(args: tuple[Tensor, ...], atol: float) -> None:
    """selective_scan = sequential_scan: outputs, last state and the gradients of all five inputs."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref = [a.detach().clone().requires_grad_() for a in args]
    y, last = selective_scan(*leaves)
    y_ref, last_ref = sequential_scan(*ref)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=atol)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=atol)
    gy, gl = randn(*y.shape, dtype=y.dtype, seed=5), randn(*last.shape, dtype=y.dtype, seed=6)
    grads = torch.autograd.grad((y, last), leaves, (gy, gl))
    grads_ref = torch.autograd.grad((y_ref, last_ref), ref, (gy, gl))
    for name, g, g_ref in zip(["u", "delta", "A", "B", "C"], grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=atol * max(1.0, g_ref.abs().max().item()), msg=name)


@pytest.mark.parametrize("L", [1, 2, 3, 31, 32, 33, 50, 64, 101, 300])
def test_chunked_scan_matches_sequential_recurrence(L):  # M2, float64, lengths around the chunk sizes
    check_scan(scan_inputs(2, L, 3, 4), atol=1e-12)


@pytest.mark.parametrize("L", [33, 90])
def test_scan_with_one_chunk_matches_too(L, monkeypatch):
    """At large B·E·N the CPU scan keeps one chunk (a plain in-place loop): the same result."""
    monkeypatch.setattr(ops, "CPU_SLICE_FLOATS", 1)
    check_scan(scan_inputs(2, L, 3, 4), atol=1e-12)


def test_long_sequences_are_chunked_even_when_the_cpu_cap_says_one_chunk(monkeypatch):
    """Beyond CPU_CAP_MAX_LEN the scan never loops over time: about 2√L in-place steps, same result."""
    monkeypatch.setattr(ops, "CPU_SLICE_FLOATS", 1)
    steps = []
    real = torch.Tensor.addcmul_
    monkeypatch.setattr(torch.Tensor, "addcmul_", lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    L = ops.CPU_CAP_MAX_LEN + 89
    args = scan_inputs(1, L, 2, 2)
    y, _ = selective_scan(*args)
    assert len(steps) < 4 * math.isqrt(L)
    y_ref, _ = sequential_scan(*args)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)


def test_scan_float32_matches_and_never_overflows():
    """Decays down to e^-900 per step in float32: products underflow to 0, nothing becomes inf or nan."""
    args = scan_inputs(2, 200, 4, 8, dtype=torch.float32, scale=10.0)
    y, last = selective_scan(*args)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    y_ref, _ = sequential_scan(*[a.double() for a in args])
    assert (y.double() - y_ref).abs().max() <= 1e-6 * max(1.0, y_ref.abs().max().item())  # M2, float32
    check_scan(scan_inputs(2, 70, 4, 8, dtype=torch.float32), atol=1e-5)


def test_scan_gradcheck():
    args = [a.requires_grad_() for a in scan_inputs(1, 40, 2, 3)]
    assert torch.autograd.gradcheck(selective_scan, args)


def test_scan_lti_limit_is_s4d_real_kernel():  # M5
    L, E, N = 40, 3, 4
    _, _, A, B, C = scan_inputs(1, 1, E, N)
    delta = torch.tensor([0.05, 0.3, 1.0], dtype=F64)
    u = torch.zeros(1, L, E, dtype=F64)
    u[0, 0] = 1.0
    y, _ = selective_scan(u, delta.expand(1, L, E), A, B.expand(1, L, N), C.expand(1, L, N))
    lags = torch.arange(L, dtype=F64)[:, None, None]
    kernel = (C[0, 0] * delta[:, None] * B[0, 0] * torch.exp(delta[:, None] * A) ** lags).sum(-1)  # (L, E)
    torch.testing.assert_close(y[0], kernel, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- implementations


def fused_missing() -> str:
    """Why impl='fused' cannot be built here ("" on a GPU machine with working mamba_ssm kernels)."""
    return ops.fused_unavailable(torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0))


def test_auto_uses_the_compiled_scan_off_cuda():
    assert make(impl="auto").impl_used == "fused_cpu" and make(impl="reference").impl_used == "reference"


@pytest.mark.skipif(not fused_missing(), reason="mamba_ssm's kernels work here")
def test_fused_without_kernels_is_a_one_line_error(capsys, tmp_path):
    from bench.run import main  # the CLI, imported here so the mixer's own tests never depend on it

    with pytest.raises(ValueError, match="impl='fused' needs mamba_ssm's CUDA kernels: .*(CUDA|mamba_ssm)") as e:
        Mamba(16, impl="fused")
    assert "\n" not in str(e.value)
    code = main(["study=smoke", "archs=[mamba]", "model.mixer.mamba.impl=fused", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model (mamba): impl='fused' needs") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_fused_refuses_cpu_tensors():
    m = make(dtype=torch.float32)
    m.impl = "fused"  # as if built on a GPU machine, then run on CPU
    with pytest.raises(RuntimeError, match="impl='fused' needs CUDA tensors, got cpu"):
        m(randn(1, 4, 16, dtype=torch.float32))


def test_probe_calls_the_kernels_and_reports_a_failure():
    """auto trusts the fused path only after a tiny call has run, not because mamba_ssm imported."""
    calls = []

    def scan(u, *args, **kw):
        calls.append("selective_scan_fn")
        return torch.zeros_like(u)

    ok = SimpleNamespace(selective_scan_fn=scan, mamba_inner_fn=lambda *a, **k: calls.append("mamba_inner_fn"),
                            causal_conv1d_fn=object())
    assert ops.probe_kernels(ok, torch.device("cpu")) == "" and calls == ["selective_scan_fn", "mamba_inner_fn"]

    def broken(*args, **kw):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    bad = SimpleNamespace(selective_scan_fn=broken, mamba_inner_fn=broken, causal_conv1d_fn=None)
    reason = ops.probe_kernels(bad, torch.device("cpu"))
    assert "failed a test call" in reason and "no kernel image" in reason and "\n" not in reason


# ---------------------------------------------------------------- GPU: mamba_ssm interop (M3)


@pytest.fixture
def fused_or_skip(monkeypatch):
    """Skip without CUDA + mamba_ssm; else compare in true float32 (no TF32 in cuDNN's conv1d)."""
    reason = fused_missing()
    if reason:
        pytest.skip(f"needs CUDA and mamba_ssm's kernels: {reason}")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def pair(d: int, N: int, K: int, expand: int, device: str = "cuda"):
    """Ours and mamba_ssm.Mamba from the same seed: the same creation order gives the same weights."""
    from mamba_ssm import Mamba as Reference

    torch.manual_seed(0)
    ours = Mamba(d, d_state=N, d_conv=K, expand=expand, impl="reference")
    torch.manual_seed(0)
    theirs = Reference(d, d_state=N, d_conv=K, expand=expand)
    return ours.to(device), theirs.to(device)


def close(a: Tensor, b: Tensor, rel: float = 1e-3) -> bool:
    return (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize(("d", "N", "K", "expand"), [(64, 16, 4, 2), (32, 8, 3, 1), (48, 4, 2, 4)])
@pytest.mark.usefixtures("fused_or_skip")
def test_gpu_state_dict_moves_both_ways_and_outputs_agree(d, N, K, expand):  # M3 (a)-(c)
    ours, theirs = pair(d, N, K, expand)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 100, d, device="cuda")
    fused = Mamba(d, d_state=N, d_conv=K, expand=expand, impl="fused").cuda()
    fused.load_state_dict(ours.state_dict(), strict=True)
    assert fused.impl_used == "fused" and ours.impl_used == "reference"
    outs, grads = [], []
    for module in (ours, fused, theirs):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({"input": xi.grad, **{n: p.grad for n, p in module.named_parameters()}})
        module.zero_grad()
    for y, g in zip(outs[1:], grads[1:], strict=True):
        assert close(y, outs[0], 1e-4)
        assert g.keys() == grads[0].keys() and all(close(g[k], grads[0][k]) for k in g), \
            {k: (g[k] - grads[0][k]).abs().max().item() for k in g}


@pytest.mark.gpu
@pytest.mark.usefixtures("fused_or_skip")
def test_gpu_state_hand_off_between_implementations():  # M3 (d)
    ours, theirs = pair(64, 16, 4, 2)
    x = torch.randn(2, 20, 64, device="cuda")
    with torch.no_grad():
        y = ours(x)
        _, state = ours.forward_with_state(x[:, :9])  # ours prefills, mamba_ssm steps on
        conv, ssm = state.conv.clone(), state.ssm.clone()
        for t in range(9, 20):
            y_t, conv, ssm = theirs.step(x[:, t:t + 1], conv, ssm)
            assert close(y_t[:, 0], y[:, t], 1e-4)
        conv, ssm = theirs.allocate_inference_cache(2, 20, dtype=torch.float32)  # mamba_ssm steps, ours goes on
        for t in range(9):
            _, conv, ssm = theirs.step(x[:, t:t + 1], conv, ssm)
        state = MambaState(conv, ssm)
        for t in range(9, 20):
            y_t, state = ours.step(x[:, t], state)
            assert close(y_t, y[:, t], 1e-4)


@pytest.mark.gpu
@pytest.mark.usefixtures("fused_or_skip")
def test_gpu_auto_picks_fused_for_cuda_float32_only():
    m = Mamba(32).cuda()
    assert m.impl_used == "fused" and m.double().impl_used == "reference"
    m = Mamba(32).cuda()
    x = torch.randn(2, 40, 32, device="cuda")
    y_fused, state = m.forward_with_state(x)
    m.impl = "reference"
    y_ref, state_ref = m.forward_with_state(x)
    assert close(y_fused, y_ref, 1e-4) and close(state.ssm, state_ref.ssm, 1e-4)
    assert torch.equal(state.conv, state_ref.conv)


def test_compiled_scan_check_does_not_depend_on_grad_mode():
    """The compiled scan's availability check runs a backward: a first call under no_grad (an
    evaluation before any training) must reach the same verdict as one with gradients on."""
    from bench.models.ops import selective_scan_cpu

    selective_scan_cpu.unavailable.cache_clear()
    try:
        with_grad = selective_scan_cpu.unavailable()
        selective_scan_cpu.unavailable.cache_clear()
        with torch.no_grad():
            assert selective_scan_cpu.unavailable() == with_grad
    finally:
        selective_scan_cpu.unavailable.cache_clear()
