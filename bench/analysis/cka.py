"""Representation similarity between trained models: linear CKA of their block outputs.

Linear centered kernel alignment (Kornblith et al., "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two representations of the same n inputs, X (n, d1) and Y (n, d2),
after centering every column:

    CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F · ‖YᵀY‖_F)      (the feature-space form, O(n·d1·d2))

It is 1 for identical representations, in [0, 1], invariant to orthogonal transforms and isotropic
scaling of either side (so two models that learned the same features in a rotated basis score 1),
but not to arbitrary invertible linear maps, and defined for d1 ≠ d2. For independent random
features it is not 0 but ≈ √(d1·d2)/n for n ≫ d (see `linear_cka`), which is why many rows are used.

This module reads any archbench model through the backbone's public structure only (`model.embed`
and `model.blocks`, hooked), so every registered mixer is compared by the same code:

    from bench.analysis.cka import block_outputs, cka_table, linear_cka
    reps = block_outputs(model, tokens)          # [embedding, block 1, ..., block L], each (N·T, d)
    table = cka_table({("lstm", 0): m1, ("transformer", 0): m2}, tokens)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor, nn

COLUMNS = ["seed", "seed_b", "arch_a", "layer_a", "arch_b", "layer_b", "cka", "n"]


def _centered(x: Tensor) -> Tensor:
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be an (n >= 2, d) matrix, got shape {tuple(x.shape)}")
    x = x.detach().to(dtype=torch.float64)
    return x - x.mean(0, keepdim=True)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of feature matrices x (n, d1) and y (n, d2) whose rows are the same n inputs:
    ‖YᵀX‖_F² / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centered float64 copies; NaN when either side is constant
    (no variance: similarity undefined).

    Bias: for independent x and y with i.i.d. Gaussian entries, E‖YᵀX‖_F² ≈ n·d1·d2 and
    ‖XᵀX‖_F² ≈ n²·d1 + n·d1² (diagonal n² each, off-diagonal n each), so
    CKA ≈ √(d1·d2) / √((n + d1)(n + d2)) ≈ √(d1·d2)/n for n ≫ d, rather than 0: with d1 = d2 = 64
    that is 0.034 at n = 1,792 (256 sequences × 7 positions) and 0.20 at n = 256. Real features are
    anisotropic (few effective dimensions), which lowers this floor further.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same rows (inputs), got {x.shape[0]} and {y.shape[0]}")
    return _cka(_centered(x), _centered(y))


def _cka(x: Tensor, y: Tensor, xx: float | None = None, yy: float | None = None) -> float:
    """CKA of already-centered float64 x, y; xx, yy: ‖XᵀX‖_F, ‖YᵀY‖_F if known."""
    xx = float(torch.linalg.matrix_norm(x.T @ x)) if xx is None else xx
    yy = float(torch.linalg.matrix_norm(y.T @ y)) if yy is None else yy
    if xx == 0 or yy == 0:
        return math.nan
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2) / (xx * yy)


@torch.no_grad()
def block_outputs(model: nn.Module, tokens: Tensor, batch_size: int = 64) -> list[Tensor]:
    """The residual stream of `model` on input tokens (N, T): [layer 0 = the output of `model.embed`,
    layer i = the output of `model.blocks[i-1]`], each flattened to (N·T, d) on the CPU, rows in
    (sequence, position) order, so the same row is the same (sequence, position) for every model.

    Every position of every sequence is used: each position's vector is what the model's head reads
    to predict the next value (the models are causal, so row (i, t) is a function of x_i[0..t] alone,
    identical inputs for every model), and pooling to one position per sequence would leave n = N
    rows, where CKA's floor for unrelated features (√(d1·d2)/n, see `linear_cka`) is large. The final
    LayerNorm and head are left out: they are not part of any block, and the last block's output is
    what they read. Rows from one sequence are correlated, so n overstates the independent samples.

    Runs in eval mode without gradients and restores every module's mode; results do not depend on
    `batch_size`. Works for any model exposing `embed` and `blocks`, whatever the mixer.
    """
    if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be a non-empty (N, T) tensor, got shape {tuple(tokens.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device
    tokens = tokens.to(device=device, dtype=torch.long)
    modules = [model.embed, *model.blocks]
    captured: list[list[Tensor]] = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda mod, args, out, i=i: captured[i].append(out.detach().cpu()))
               for i, m in enumerate(modules)]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for lo in range(0, tokens.shape[0], batch_size):
            model(tokens[lo:lo + batch_size])
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    chunks = -(-tokens.shape[0] // batch_size)
    if any(len(c) != chunks for c in captured):
        raise RuntimeError(f"expected each of embed and the {len(modules) - 1} blocks to run once per batch, got "
                           f"{[len(c) for c in captured]} calls for {chunks} batches")
    return [torch.cat(c).reshape(-1, c[0].shape[-1]) for c in captured]


def cka_table(models: Mapping[tuple[str, int], nn.Module], tokens: Tensor, *, across_seeds: bool = True,
              batch_size: int = 64) -> pd.DataFrame:
    """Linear CKA between the block outputs (`block_outputs`) of models keyed (arch, seed), all on the
    same input tokens (N, T): a tidy frame with columns seed, seed_b, arch_a, layer_a, arch_b, layer_b,
    cka, n (rows compared = N·T), one row per ordered pair of models and pair of layers (0 = embedding,
    i = block i). Both orders are stored (the values are symmetric), so any slice pivots directly.

    * seed == seed_b: architectures on the same seed, which gave them the same training stream (and,
      in the study engine, the same initialisation stream: at equal d_model their embeddings start from
      the same weights); arch_a == arch_b is one model against itself (1 on the layer diagonal).
    * seed != seed_b (if `across_seeds`, the default): every pair of models of different seeds. The
      same architecture on two seeds is the seed-to-seed reference (how similar two trainings of one
      architecture are); two architectures on different seeds are the comparison free of the shared
      stream and initialisation, so the two differ in their architecture only as much as the reference
      differs in its seed.
    """
    cache: dict[tuple[str, int], list[tuple[Tensor, float]]] = {}
    for key, model in models.items():
        reps = [_centered(r) for r in block_outputs(model, tokens, batch_size)]
        cache[key] = [(r, float(torch.linalg.matrix_norm(r.T @ r))) for r in reps]
    n = int(tokens.shape[0] * tokens.shape[1])
    rows, done = [], {}
    for (arch_a, seed_a), (arch_b, seed_b) in itertools.product(cache, repeat=2):
        if seed_a != seed_b and not across_seeds:
            continue
        for (la, (x, xx)), (lb, (y, yy)) in itertools.product(enumerate(cache[arch_a, seed_a]),
                                                              enumerate(cache[arch_b, seed_b])):
            key, mirror = (arch_a, seed_a, la, arch_b, seed_b, lb), (arch_b, seed_b, lb, arch_a, seed_a, la)
            value = done[mirror] if mirror in done else _cka(x, y, xx, yy)
            done[key] = value
            rows.append((seed_a, seed_b, arch_a, la, arch_b, lb, value, n))
    return pd.DataFrame(rows, columns=COLUMNS)


def embedding_floor(tokens: Tensor, d1: int, d2: int | None = None, draws: int = 8, seed: int = 0) -> float:
    """Mean linear CKA of two independent Gaussian token-embedding tables (d1 and d2 wide) looked up at
    `tokens`: what two unrelated token embeddings score on these rows, the floor for layer 0. Where the
    N·T rows repeat few distinct tokens this lies far above √(d1·d2)/n, since n counts rows, not
    distinct inputs; with all rows distinct it is that Gaussian floor. Deterministic given `seed`."""
    _, index = torch.unique(tokens.flatten(), return_inverse=True)
    vocab, d2 = int(index.max()) + 1, d1 if d2 is None else d2
    gen = torch.Generator().manual_seed(seed)
    values = [linear_cka(torch.randn(vocab, d1, generator=gen, dtype=torch.float64)[index],
                         torch.randn(vocab, d2, generator=gen, dtype=torch.float64)[index]) for _ in range(draws)]
    return sum(values) / len(values)
