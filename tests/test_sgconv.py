"""SGConv (bench/models/sgconv.py) beyond the generic oracles of test_models.py: the kernel's
construction (scales, decay weights, length, norm; oracles C2-C4, C6), the causal FFT convolution at
lengths that are not powers of two, and the FIR step mode with its growing window (C5)."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_checks import prefill_then_step, step_through
from torch import Tensor

from bench.models import build_mixer, build_model
from bench.models.backbone import ModelConfig
from bench.models.sgconv import SGConv
from bench.train import param_groups

H = 8
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # tighter than the 1e-5 / 1e-4


def make(dtype: torch.dtype = torch.float64, seed: int = 0, d: int = H, **kw) -> SGConv:
    torch.manual_seed(seed)
    return SGConv(d, **kw).to(dtype)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def upsample_linear(w: Tensor, r: int) -> Tensor:
    """Linear interpolation by an integer factor r with half-pixel centres (align_corners=False),
    written out: output j samples the input at (j + 1/2)/r - 1/2, clamped to [0, k - 1]."""
    k = w.shape[-1]
    pos = ((torch.arange(k * r, dtype=torch.float64) + 0.5) / r - 0.5).clamp(0, k - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=k - 1)
    frac = pos - lo
    return w[..., lo] * (1 - frac) + w[..., hi] * frac


# ---------------------------------------------------------------- kernel construction


@pytest.mark.parametrize(("d_state", "l_max", "lengths"), [
    (16, 64, [16, 16, 32]), (4, 64, [4, 4, 8, 16, 32]), (16, 128, [16, 16, 32, 64]), (5, 40, [5, 5, 10, 20]),
    (64, 64, [32, 32]),  # k_d clamped to l_max/2, so S >= 2
])
def test_scales_and_kernel_length(d_state, l_max, lengths):  # C2
    mixer = make(d_state=d_state, l_max=l_max)
    assert mixer.num_scales == len(lengths) and mixer.kernel_dim == lengths[0]
    assert mixer.kernel_len == sum(lengths) == mixer.kernel_dim * 2 ** (mixer.num_scales - 1) >= l_max
    assert mixer.kernel_len < 2 * l_max or mixer.num_scales == 2  # the smallest S that reaches l_max
    assert [tuple(w.shape) for w in mixer.kernel_list] == [(1, H, mixer.kernel_dim)] * len(lengths)
    full = mixer.kernel()
    assert full.shape == (H, mixer.kernel_len)
    for length in (1, 7, mixer.kernel_len - 1, mixer.kernel_len, mixer.kernel_len + 9):  # cut or padded to L
        k = mixer.kernel(length)
        assert k.shape == (H, length)
        n = min(length, mixer.kernel_len)
        torch.testing.assert_close(k[:, :n], full[:, :n], rtol=0, atol=0)
        assert (k[:, n:] == 0).all()


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.parametrize(("decay_min", "decay_max"), [(2.0, 2.0), (1.5, 3.0)])
def test_segments_are_decay_weighted_upsampled_sub_kernels(interp, decay_min, decay_max):  # C3
    mixer = make(d_state=4, l_max=64, decay_min=decay_min, decay_max=decay_max, interp=interp)
    alpha = torch.linspace(decay_min, decay_max, H).double()[:, None]  # (H, 1), made in float32 like the buffer
    S = mixer.num_scales
    segments = []
    for i, w in enumerate(mixer.kernel_list):
        r = 2 ** max(0, i - 1)
        w = w[0].detach()
        up = upsample_linear(w, r) if interp == "linear" else w.repeat_interleave(r, dim=-1)
        segments.append(alpha ** (S - 1 - i) * up)
    expected = torch.cat(segments, dim=-1)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(mixer.kernel(), expected, rtol=0, atol=1e-12)


def test_each_coarser_scale_weighs_half_the_previous():
    mixer = make(d_state=4, l_max=64)  # segments 4, 4, 8, 16, 32
    with torch.no_grad():
        for w in mixer.kernel_list:
            w.fill_(1.0)  # a constant sub-kernel interpolates to a constant
    k = mixer.kernel()
    starts = [0, 4, 8, 16, 32, 64]
    levels = [k[:, a:b] for a, b in zip(starts, starts[1:], strict=False)]
    for seg in levels:
        torch.testing.assert_close(seg, seg[:, :1].expand_as(seg), rtol=0, atol=1e-15)
    for fine, coarse in zip(levels, levels[1:], strict=False):
        torch.testing.assert_close(fine[:, 0] / coarse[:, 0], torch.full((H,), 2.0, dtype=torch.float64))


def test_kernel_has_unit_norm_before_and_after_an_optimizer_step():  # C4 (live norm)
    mixer = make()
    torch.testing.assert_close(mixer.kernel().norm(dim=-1), torch.ones(H, dtype=torch.float64))
    opt = torch.optim.AdamW(mixer.parameters(), lr=0.1)
    mixer(randn(2, 16, H)).square().sum().backward()
    before = [w.detach().clone() for w in mixer.kernel_list]
    opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, mixer.kernel_list, strict=True))
    torch.testing.assert_close(mixer.kernel().norm(dim=-1), torch.ones(H, dtype=torch.float64))


def test_every_sub_kernel_learns_even_when_the_sequence_is_shorter_than_the_first():
    mixer = make(d_state=16)  # w_0 alone covers lags 0..15
    mixer(randn(2, 8, H)).square().sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in mixer.kernel_list)


def test_envelope_falls_like_one_over_lag_at_init():  # C6
    """|K_l| ∝ 1/l at the resolution of the scales: the RMS over channels and over each segment
    i >= 1 (lags k_d·2^{i-1} .. k_d·2^i) falls with slope about -1 against the lag on log-log axes.
    (Within a segment the RMS is flat, so l·RMS(K_l) itself swings by 2x; interpolation also lowers
    the stretched segments' RMS by ~20%, once.)"""
    mixer = make(torch.float64, d=256, d_state=4, l_max=64)  # segments 4, 4, 8, 16, 32
    k = mixer.kernel()
    starts = torch.tensor([4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    rms = torch.stack([k[:, int(a):int(2 * a)].square().mean().sqrt() for a in starts])
    slope = torch.diff(rms.log()) / torch.diff(starts.log())
    assert ((slope > -1.4) & (slope < -0.8)).all(), slope
    fit = torch.linalg.lstsq(torch.stack((starts.log(), torch.ones(4, dtype=torch.float64)), 1), rms.log()[:, None])
    assert -1.2 < fit.solution[0].item() < -0.9


# ---------------------------------------------------------------- convolution and causality


@pytest.mark.parametrize("length", [13, 37, 64, 150])  # not powers of two; 150 > len(K) = 128
def test_fft_convolution_is_causal_and_equals_the_direct_sum(length):
    mixer = make()
    u = randn(2, H, length)
    k = mixer.kernel(length)
    direct = torch.stack([(k[:, :t + 1].flip(-1) * u[..., :t + 1]).sum(-1) for t in range(length)], dim=-1)
    x = u.transpose(1, 2)  # (B, H, L) -> (B, L, H)
    y = mixer(x)
    torch.testing.assert_close(mixer._output((direct + mixer.D[0, :, None] * u).transpose(1, 2)), y,
                               rtol=0, atol=1e-12)
    for t in (0, 1, length // 2, length - 1):
        x2 = x.clone()
        x2[:, t:] += randn(2, length - t, H, seed=10 + t)  # change the input at t and after
        y2 = mixer(x2)
        if t:
            assert (y2[:, :t] - y[:, :t]).abs().max() <= 1e-12 * y.abs().max()
        assert not torch.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("kw", "length"), [({}, 64), ({"d_state": 4, "l_max": 16}, 40)])
def test_step_matches_parallel(kw, length, dtype):  # C5; the second case outgrows the kernel (len 16)
    mixer, x = make(dtype, **kw), randn(2, length, H, dtype=dtype)
    y = mixer(x)
    for p in (0, 1, 10, length // 2, length - 1):
        y_all, state = prefill_then_step(mixer, x, p)
        err = (y_all - y).abs().max().item()
        assert err <= TOL[dtype], f"prefill {p}: {err:.1e}"
        assert state.shape == (2, H, min(length, mixer.kernel_len - 1))  # the window, capped
        torch.testing.assert_close(state, x[:, length - state.shape[-1]:].transpose(1, 2), rtol=0, atol=0)


def test_state_is_the_window_of_past_inputs_and_grows_up_to_the_kernel_length():
    mixer = make(d_state=4, l_max=16)  # len(K) = 16: at most 15 past inputs matter
    assert [mixer.state_size(t) for t in (0, 1, 15, 16, 1000)] == [0, H, 15 * H, 15 * H, 15 * H]
    assert mixer.init_state(3).shape == (3, H, 0)


def test_parallel_mode_is_not_a_loop_over_time(monkeypatch):
    mixer, x = make(l_max=512), randn(1, 512, H)
    looped, _ = step_through(mixer, x, mixer.init_state(1))

    def forbidden(*args, **kwargs):
        raise AssertionError("parallel mode called the step")

    monkeypatch.setattr(mixer, "step", forbidden)
    torch.testing.assert_close(mixer(x), looped, rtol=0, atol=1e-10)


def test_gradients_are_finite_at_length_512():
    mixer = make(torch.float32)
    x = randn(2, 512, H, dtype=torch.float32).requires_grad_()
    mixer(x).square().mean().backward()
    assert all(g is not None and torch.isfinite(g).all() for g in [x.grad] + [p.grad for p in mixer.parameters()])


# ---------------------------------------------------------------- optimiser, config, errors


def test_sub_kernels_have_their_learning_rate_capped():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="sgconv", d_model=16, num_layers=2, d_state=8, mixer={"sgconv": {"kernel_lr": 5e-4}})
    model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 1e-2, weight_decay=0.1)
    where = {names[id(p)]: (g["weight_decay"], g["lr"]) for g in groups for p in g["params"]}
    kernels = [n for n in where if ".kernel_list." in n]
    assert len(kernels) == 2 * model.blocks[0].mixer.num_scales
    assert all(where[n] == (0.1, 5e-4) for n in kernels)
    assert where["blocks.0.mixer.D"] == (0.0, 1e-2)
    assert where["blocks.0.mixer.output_linear.weight"] == (0.1, 1e-2)


@pytest.mark.parametrize(("kw", "word"), [
    ({"d_state": 0}, "d_state"), ({"l_max": 1}, "l_max"), ({"decay_min": 3.0}, "decay_min"),
    ({"decay_min": 0.0}, "decay_min"), ({"interp": "cubic"}, "interp"), ({"kernel_lr": -1.0}, "kernel_lr"),
])
def test_invalid_values_are_rejected(kw, word):
    with pytest.raises(ValueError, match=word):
        build_mixer("sgconv", H, **kw)


def test_uses_d_state_only_of_the_shared_hyperparameters():
    mixer = build_mixer("sgconv", H, d_state=8, d_conv=4, expand=2)
    assert mixer.unused_hparams == ["d_conv", "expand"] and mixer.kernel_dim == 8
    params = sum(p.numel() for p in mixer.parameters())
    assert params == 2 * H * H + 2 * H + mixer.num_scales * H * 8 + H == 2 * H * H + 2 * H + 5 * H * 8 + H
    assert math.log2(mixer.kernel_len) == 7  # l_max = 128
