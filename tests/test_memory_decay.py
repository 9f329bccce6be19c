"""The memory-decay probe (bench/analysis/memory_decay.py): models with a known memory, the exact
Jacobian against an independent oracle, the projection estimate against the exact norm, every
registered mixer, determinism, and the k grid."""

from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from bench.analysis import decay_ks, gradient_decay, memory_decay, perturbation_decay
from bench.analysis.memory_decay import random_tokens
from bench.data import SequenceSet
from bench.experiment.context import PROBE_SEQUENCES, decay_tokens
from bench.models import ModelConfig, build_model, mixer_names
from bench.models.stable_ssm import inverse_real_part

LAG = 3


class Lookback(nn.Module):
    """logits[:, t] (the guess of x_{t+1}) = 40·onehot(x_{t+1-3}) through `embed` (= 40·I): a lag-3
    copy, depending on k = 3 only, with
    a known Jacobian (the identity, ‖I_256‖_F = 16) and a near-one-hot prediction (TV = 1 whenever
    that token changes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, 256)
        with torch.no_grad():
            self.embed.weight.copy_(40 * torch.eye(256))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)  # (B, T, 256)
        return F.pad(e, (0, 0, LAG - 1, 0))[:, :tokens.shape[1]]  # position t reads e[t+1-3]; zeros before


def tokens_for(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def tiny(arch: str, d_model: int = 16, length: int = 12, num_layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, d_model=d_model, num_layers=num_layers, max_len=length))


def test_known_lag_peaks_at_three_in_both_variants():
    model, tokens = Lookback(), tokens_for(32, 10)
    exact = gradient_decay(model, tokens, probes=0)
    estimate = gradient_decay(model, tokens, probes=8)
    tv = perturbation_decay(model, tokens_for(256, 10), n_resamples=4)  # 1024 draws
    assert list(exact) == list(estimate) == list(tv) == list(range(1, 11))
    assert exact[LAG] == pytest.approx(16.0, rel=1e-6)  # ‖I_256‖_F
    assert estimate[LAG] == pytest.approx(16.0, rel=0.05)  # sqrt(mean ‖v‖²), v ~ N(0, I_256)
    # every resample really changes the token: TV of the two one-hot-like predictions is 1, never 0
    assert tv[LAG] == pytest.approx(1.0, abs=1e-9)
    for curve in (exact, estimate, tv):
        assert max(curve, key=curve.get) == LAG
        assert all(v == 0 for k, v in curve.items() if k != LAG)


def stable_ssm_model(a_bar_log: float, length: int) -> nn.Module:
    """1 layer, identity readout, one real mode per channel with the same Ā = exp(Δ·Re λ) everywhere."""
    cfg = ModelConfig(arch="stable_ssm", d_model=8, num_layers=1, d_state=2, max_len=length,
                      mixer={"stable_ssm": {"activation": "identity"}})
    torch.manual_seed(0)
    model = build_model(cfg).double()
    kernel = model.blocks[0].mixer.kernel
    dt, re = 0.1, a_bar_log / 0.1
    with torch.no_grad():
        kernel.log_dt.fill_(math.log(dt))
        kernel.log_A_real.fill_(inverse_real_part(re, kernel.reparam))
        kernel.A_imag.zero_()  # Ā real: the kernel is K_k = Ā^k · 2Re(C B̄), a pure geometric decay
    z, _ = kernel.discretize()
    assert torch.allclose(z.real, torch.full_like(z.real, a_bar_log)) and not z.imag.any()
    return model


def test_stable_ssm_gradient_decays_at_exactly_a_bar_per_step():
    length, a_bar = 16, math.exp(-0.2)
    model = stable_ssm_model(math.log(a_bar), length)
    # Constant sequences: norm1's Jacobian is the same at every position, so for k >= 2
    # J_k = Ā^(k-1) · (∂logits/∂v_{T-1}) diag(2Re C B̄) (∂u/∂e), and ρ(k+1)/ρ(k) = Ā exactly.
    tokens = torch.tensor([3, 77, 140, 255])[:, None].expand(4, length)
    rho = gradient_decay(model, tokens, probes=0)
    assert list(rho) == list(range(1, length + 1))
    ratios = [rho[k + 1] / rho[k] for k in range(2, length)]
    assert ratios == pytest.approx([a_bar] * len(ratios), rel=1e-9)
    assert rho[1] > rho[2]  # k = 1 (the last input) adds the residual and the D skip


def hook_oracle(model: nn.Module, tokens: torch.Tensor, k: int) -> float:
    """Mean over sequences of ‖∂logits[b, T-1]/∂e[b, T-k]‖_F, by torch.autograd.functional.jacobian
    of a perturbation added to that embedding: independent of the probe's leaf-and-backward machinery."""
    pos = tokens.shape[1] - k

    def norm(b: int) -> float:
        def last_logits(delta: torch.Tensor) -> torch.Tensor:
            def add(module, args, out):
                out = out.clone()
                out[0, pos] += delta
                return out
            handle = model.embed.register_forward_hook(add)
            try:
                return model(tokens[b:b + 1])[0, -1]
            finally:
                handle.remove()

        zero = torch.zeros(model.cfg.d_model, dtype=torch.float64)
        return torch.autograd.functional.jacobian(last_logits, zero).norm().item()

    return sum(norm(b) for b in range(tokens.shape[0])) / tokens.shape[0]


def test_exact_norm_matches_jacobian_oracle_and_estimate_agrees_on_average():
    model, tokens = tiny("transformer", length=8).double().eval(), tokens_for(48, 8, seed=1)
    exact = gradient_decay(model, tokens[:2], probes=0)  # two sequences: the mean of their norms
    assert [exact[k] for k in (1, 4, 8)] == pytest.approx([hook_oracle(model, tokens[:2], k) for k in (1, 4, 8)],
                                                          rel=1e-10)
    exact = gradient_decay(model, tokens, probes=0)
    estimate = gradient_decay(model, tokens, probes=8)
    assert min(exact.values()) > 0
    rel = {k: abs(estimate[k] / exact[k] - 1) for k in exact}
    assert max(rel.values()) < 0.04, rel
    assert estimate != exact  # it is an estimate: a bug computing the exact norm twice would pass above


@pytest.mark.parametrize("arch", mixer_names())
def test_every_mixer_gives_a_valid_curve(arch):
    length = 12
    model = tiny(arch, length=length)
    table = memory_decay(model, tokens_for(4, length), probes=2)
    assert list(table.columns) == ["variant", "k", "value", "n"]
    ks = decay_ks(length)
    for variant in ("gradient", "perturbation"):
        rows = table[table.variant == variant]
        assert rows.k.tolist() == ks and (rows.n == 4).all()
        assert rows.value.map(math.isfinite).all() and (rows.value >= 0).all()
        assert rows.value.iloc[0] > 0  # the last input always matters (residual path)
    assert (table[table.variant == "perturbation"].value <= 1).all()


def test_deterministic_and_leaves_the_model_as_it_was():
    model, tokens = tiny("lstm"), tokens_for(6, 12)
    model.train()
    model.blocks[1].eval()  # a mixed state must survive, not be flattened to one mode
    model.head.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = memory_decay(model, tokens, batch_size=4)
    second = memory_decay(model, tokens, batch_size=4)
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    chunked = memory_decay(model, tokens, batch_size=64)  # the draws do not depend on the chunking
    pd.testing.assert_frame_equal(first, chunked, rtol=1e-5)
    other = memory_decay(model, tokens, batch_size=4, seed=1)
    assert not other.value.equals(first.value)
    assert model.training and model.blocks[0].training and not model.blocks[1].training
    assert not model.head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "head.weight")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_decay_ks():
    assert decay_ks(1) == [1]
    assert decay_ks(16) == list(range(1, 17))  # T = 16: still every k
    assert decay_ks(127) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 127]  # the memory study's inputs
    for length in (17, 100, 129, 1000, 4096):
        ks = decay_ks(length)
        assert ks[0] == 1 and ks[-1] == length
        assert {2**i for i in range(int(math.log2(length)) + 1)} <= set(ks)  # every lag of the memory study
        assert all(a < b for a, b in itertools.pairwise(ks))
        assert len(ks) <= 2 * math.log2(length) + 2
    with pytest.raises(ValueError, match="length"):
        decay_ks(0)


def test_rejects_bad_arguments():
    model, tokens = Lookback(), tokens_for(2, 6)
    with pytest.raises(ValueError, match="ks"):
        gradient_decay(model, tokens, ks=[7])
    with pytest.raises(ValueError, match="ks"):
        gradient_decay(model, tokens, ks=[0])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        perturbation_decay(model, tokens[0])
    with pytest.raises(ValueError, match="n_resamples"):
        perturbation_decay(model, tokens, n_resamples=0)


def test_random_tokens_are_seeded_and_uniform():
    tokens = random_tokens(256, 127)
    assert tokens.shape == (256, 127) and tokens.dtype == torch.long
    assert torch.equal(tokens, random_tokens(256, 127)) and not torch.equal(tokens, random_tokens(256, 127, seed=1))
    counts = torch.bincount(tokens.flatten(), minlength=256)
    assert counts.numel() == 256 and scipy.stats.chisquare(counts.numpy()).pvalue > 1e-3  # uniform on 0..255
    for n, length in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match="positive"):
            random_tokens(n, length)


def test_decay_probe_inputs_depend_on_the_test_length_only():
    """Two test sets of the same length but different rows (a lag mixture against constants) give the same
    probe inputs: random tokens, L-1 long, not the test rows (whose family mixture shaped the old curve)."""
    length = 12
    lags = SequenceSet(torch.arange(length).repeat(40, 1) % 3, torch.zeros(40, dtype=torch.long),
                       torch.zeros(40, dtype=torch.long))
    flat = SequenceSet(torch.full((7, length), 5), torch.ones(7, dtype=torch.long), torch.ones(7, dtype=torch.long))
    tokens = decay_tokens(lags)
    assert tokens.shape == (PROBE_SEQUENCES, length - 1)
    assert torch.equal(tokens, decay_tokens(flat)) and torch.equal(tokens, random_tokens(PROBE_SEQUENCES, length - 1))
    assert tokens.unique().numel() > 200  # not the test rows' 3 or 1 distinct values
