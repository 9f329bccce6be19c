"""The memory-decay probe: how strongly the last prediction depends on the input k steps back.

StableSSM's paper characterises a model by its memory function ρ(k) = ‖∂y_T/∂x_{T-k}‖ (Wang & Li,
arXiv 2311.14495; ARCHITECTURES.md §6.5): a stable linear SSM forgets exponentially, ρ(k) ~ |Ā|^k.
This module measures the analogue for any trained archbench model through its public interface only
(`model(tokens) -> logits (B, T, 256)` and the input embedding module `model.embed`), so every
registered architecture is probed by the same code.

Convention: tokens (B, T) are inputs x_0..x_{T-1}; the prediction is logits[:, T-1], the model's
guess of x_T. "k steps back" is input x_{T-k}, so k = 1 is the last input and k runs over 1..T:
a lag-k copy (x_t = x_{t-k}, the `memory` study's families) reads exactly k steps back.

Two variants, which answer different questions:

* `gradient_decay`      ρ(k) = ‖∂logits_{T-1}/∂e_{T-k}‖_F, e = the output of `model.embed`: the
                        local (linearised) sensitivity, the paper's definition. By default a random-
                        projection estimate (E‖vᵀJ‖² = ‖J‖_F² for v ~ N(0, I)), one backward pass per
                        probe that yields every position at once; `probes=0` is exact (256 passes).
* `perturbation_decay`  total-variation distance between the last prediction's distributions before and
                        after replacing token T-k by another value: the finite, token-level effect,
                        which a saturated nonlinearity or a learned lookup can show where gradients do not.

Both are deterministic given their arguments (seeded torch.Generators on the CPU, so CPU and CUDA draw
the same probes), run the model in eval mode and restore its modes and `requires_grad` flags.

Inputs: the studies probe on `random_tokens` (uniform 0..255, seeded, a fixed count; the experiment's
`decay_tokens`), not on test sequences. A curve over a study's test set averages its families, so it
changes with the family mix and with what each family makes a model read, and it cannot be compared
between studies. A single-lag input would measure whether the model reads that one lag, which the
lag-recall accuracy already measures, and the phase studies have no lag to choose. Uniform random
tokens carry no structure to key on: every study, architecture and k sees the same input distribution,
the mixer's own memory under generic inputs, as the StableSSM memory function is meant. A model that
reads fixed offsets still gives a spiky curve on them, and that is the model, not the probe: a
transformer trained 250 steps on the `memory` study's lag mix read k = 1 and k = 64 (TV 0.10 and 0.94)
and almost nothing between (about 0.001) on random tokens as on the lag mix, since at the last position
of a length-128 lag sequence x_{T-64} is the target for every lag (each divides 64); an s4d trained alike
peaked at k = 8, 16, 32, 64 on both inputs (random tokens 5-30 % higher at every k).

    from bench.analysis import memory_decay
    from bench.analysis.memory_decay import random_tokens
    table = memory_decay(model, random_tokens(256, 127))   # tidy DataFrame: variant, k, value, n
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
from torch import Tensor, nn

VOCAB = 256  # logits width and token range; bench.data.base.VOCAB, repeated so this module reads alone
DENSE_UP_TO = 16  # decay_ks probes every k while T <= this
PROBE_SEED = 0  # random_tokens' default seed: every study and architecture probes the same inputs


def random_tokens(n: int, length: int, seed: int = PROBE_SEED) -> Tensor:
    """`n` input sequences of `length` tokens, independent and uniform on 0..255, from a seeded CPU
    generator (the same tokens on every machine and device): the decay probe's inputs (see the module
    docstring for why not test sequences). Example: random_tokens(2, 4) is a (2, 4) int64 tensor, the
    same on every call; random_tokens(2, 4, seed=1) differs."""
    if n < 1 or length < 1:
        raise ValueError(f"n and length must be positive, got n={n}, length={length}")
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def decay_ks(length: int) -> list[int]:
    """The k probed for T = `length` input tokens: all of 1..T while T <= 16, else a half-octave grid
    round(2^(i/2)) (1, 2, 3, 4, 6, 8, 11, 16, 23, ...) up to T inclusive, so that probing L = 128
    models costs 14 points instead of 127 while still resolving a power-law tail; every power of
    two is on the grid (the `memory` study's lags)."""
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    last = length
    if last <= DENSE_UP_TO:
        return list(range(1, length + 1))
    grid = {1, last}
    i = 0
    while (k := round(2 ** (i / 2))) < last:
        grid.add(k)
        i += 1
    return sorted(grid)


@contextmanager
def _probing(model: nn.Module, frozen: bool) -> Iterator[None]:
    """Eval mode (and, if `frozen`, requires_grad off so no weight gradients are computed) for the
    duration; every module's mode and every parameter's flag are restored individually afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        if frozen:
            for p, _ in flags:
                p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def _check(model: nn.Module, tokens: Tensor, ks: Sequence[int] | None, batch_size: int
           ) -> tuple[Tensor, list[int]]:
    """tokens on the model's device and the validated ks."""
    if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be a non-empty (B, T) tensor, got shape {tuple(tokens.shape)}")
    if tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"tokens must be integers, got {tokens.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    length = tokens.shape[1]
    ks = decay_ks(length) if ks is None else [int(k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= length]
    if bad or not ks:
        raise ValueError(f"ks must be a non-empty list in 1..{length}, got {bad or ks}")
    device = next(model.parameters()).device
    return tokens.to(device=device, dtype=torch.long), ks


def gradient_decay(model: nn.Module, tokens: Tensor, ks: Sequence[int] | None = None, probes: int | None = 8,
                   seed: int = 0, batch_size: int = 64) -> dict[int, float]:
    """ρ(k) = ‖∂logits[:, T-1]/∂e[:, T-k]‖_F, mean over the sequences, for every k in `ks`
    (default `decay_ks(T)`); e is `model.embed`'s output (B, T, d).

    Per sequence ‖J_k‖_F ≈ sqrt(mean_p ‖v_pᵀ J_k‖²) over `probes` Gaussian v_p ∈ R^256 (fixed by
    `seed`, independent per sequence): unbiased for ‖J_k‖_F², and each probe is one backward pass
    that gives all T positions. The square root makes the estimate slightly low (Jensen: about 1-2 %
    at 8 probes on a tiny Transformer); `probes=0` or None is exact, one backward pass per class.
    Sequences run in chunks of `batch_size`; the result does not depend on it (probes drawn up front).
    """
    tokens, ks = _check(model, tokens, ks, batch_size)
    exact = not probes
    if not exact and probes < 0:
        raise ValueError(f"probes must be >= 0 (0 or None: exact), got {probes}")
    n_seq, length = tokens.shape
    if not exact:  # (P, B, 256) drawn once on the CPU: identical on every device and for every batch_size
        gen = torch.Generator().manual_seed(seed)
        projections = torch.randn(probes, n_seq, VOCAB, generator=gen, dtype=torch.float64)
    captured: list[Tensor] = []

    def leaf(module: nn.Module, args: object, out: Tensor) -> Tensor:
        # Replace the embedding output by a leaf that requires grad: the gradient w.r.t. every
        # position's input embedding, whatever the architecture does after it.
        captured.append(out.detach().requires_grad_(True))
        return captured[-1]

    sq_norms = []  # per chunk: (b, T) ‖vᵀJ_t‖², summed over probes
    handle = model.embed.register_forward_hook(leaf)
    try:  # cuDNN off: its RNN backward refuses eval mode; the native kernels give the same gradients
        with _probing(model, frozen=True), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            for lo in range(0, n_seq, batch_size):
                captured.clear()
                last = model(tokens[lo:lo + batch_size])[:, -1]  # (b, 256)
                if len(captured) != 1:
                    raise RuntimeError(f"model.embed ran {len(captured)} times in one forward, expected once")
                emb = captured[0]  # (b, T, d)
                rows = range(VOCAB) if exact else range(probes)
                acc = emb.new_zeros(emb.shape[:2], dtype=torch.float64)
                for i, p in enumerate(rows):
                    if exact:
                        v = torch.zeros_like(last)
                        v[:, p] = 1
                    else:
                        v = projections[p, lo:lo + batch_size].to(device=last.device, dtype=last.dtype)
                    (g,) = torch.autograd.grad(last, emb, grad_outputs=v, retain_graph=i + 1 < len(rows))
                    acc += g.double().pow(2).sum(-1)  # (b, T, d) -> (b, T)
                sq_norms.append(acc if exact else acc / probes)
    finally:
        handle.remove()
    sq = torch.cat(sq_norms)  # (B, T)
    rho = sq.sqrt()[:, [length - k for k in ks]].mean(0)  # (B, T) -> (B, |ks|) -> (|ks|,)
    return dict(zip(ks, rho.tolist(), strict=True))


@torch.no_grad()
def perturbation_decay(model: nn.Module, tokens: Tensor, ks: Sequence[int] | None = None, n_resamples: int = 1,
                       seed: int = 0, batch_size: int = 64) -> dict[int, float]:
    """Mean total-variation distance between softmax(logits[:, T-1]) before and after the token at
    T-k is replaced, for every k in `ks` (default `decay_ks(T)`); mean over sequences and resamples.

    The replacement is uniform over the 255 other values (old + U{1..255} mod 256), so every
    perturbation changes the input; draws are fixed by `seed` and independent of `batch_size`.
    TV is in [0, 1]: 0 = the prediction ignores that input, 1 = disjoint predictions.
    """
    tokens, ks = _check(model, tokens, ks, batch_size)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    n_seq, length = tokens.shape
    gen = torch.Generator().manual_seed(seed)
    shifts = torch.randint(1, VOCAB, (n_resamples, len(ks), n_seq), generator=gen).to(tokens.device)
    total = torch.zeros(len(ks), dtype=torch.float64, device=tokens.device)
    with _probing(model, frozen=False):
        for lo in range(0, n_seq, batch_size):
            chunk = tokens[lo:lo + batch_size]  # (b, T)
            base = model(chunk)[:, -1].double().softmax(-1)  # (b, 256)
            for j, k in enumerate(ks):
                for r in range(n_resamples):
                    pos = length - k
                    moved = chunk.clone()
                    moved[:, pos] = (chunk[:, pos] + shifts[r, j, lo:lo + batch_size]) % VOCAB
                    probs = model(moved)[:, -1].double().softmax(-1)
                    total[j] += 0.5 * (probs - base).abs().sum(-1).sum()  # TV per sequence, summed
    return dict(zip(ks, (total / (n_seq * n_resamples)).tolist(), strict=True))


def memory_decay(model: nn.Module, tokens: Tensor, ks: Sequence[int] | None = None, *, probes: int | None = 8,
                 n_resamples: int = 1, seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
    """Both variants as one tidy frame: columns variant ('gradient' | 'perturbation'), k, value,
    n (sequences), one row per variant and k, ks default `decay_ks(T)`."""
    n = int(tokens.shape[0])
    rows = []
    for variant, curve in (
        ("gradient", gradient_decay(model, tokens, ks, probes=probes, seed=seed, batch_size=batch_size)),
        ("perturbation", perturbation_decay(model, tokens, ks, n_resamples=n_resamples, seed=seed,
                                            batch_size=batch_size)),
    ):
        rows += [{"variant": variant, "k": k, "value": value, "n": n} for k, value in curve.items()]
    return pd.DataFrame(rows, columns=["variant", "k", "value", "n"])
