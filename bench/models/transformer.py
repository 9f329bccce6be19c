"""Causal multi-head self-attention with rotary positions (ARCHITECTURES.md §1).

Parallel mode is one `scaled_dot_product_attention` call with the causal mask. Step mode keeps a
KV cache (keys stored *after* rotation, so old keys never need re-rotating) and attends from the
single new query to every cached key. Positions live inside this mixer (RoPE) because the shared
backbone has no position embedding: the other mixers must see exactly the same input.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def apply_rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate each pair (2i, 2i+1) of the last dim of `x` (..., L, d_h) by angle t·θ_i at position t.

    θ_i = base^(-2i/d_h). Then <rope(q, t), rope(k, s)> depends only on t - s. cos/sin are computed
    here rather than cached, so nothing enters the state_dict and any position (however long the
    decode) is valid; angles are formed in at least float32 so half precision keeps exact phases.
    """
    d_h = x.shape[-1]
    wdtype = torch.promote_types(x.dtype, torch.float32)
    theta = base ** (-torch.arange(0, d_h, 2, device=x.device, dtype=wdtype) / d_h)  # (d_h/2,)
    angle = positions.to(wdtype)[:, None] * theta  # (L,) x (d_h/2,) -> (L, d_h/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.to(wdtype).unflatten(-1, (-1, 2)).unbind(-1)  # (..., L, d_h) -> 2 x (..., L, d_h/2)
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., L, d_h/2, 2)
    return rotated.flatten(-2).to(x.dtype)  # (..., L, d_h/2, 2) -> (..., L, d_h)


class KVCache(NamedTuple):
    """Step-mode state: rotated keys and values of every position seen so far."""

    k: Tensor  # (B, H, t, d_h)
    v: Tensor  # (B, H, t, d_h)

    @property
    def pos(self) -> int:
        """Position of the next token (= tokens cached); RoPE must rotate it by this, not by 0."""
        return self.k.shape[2]


def head_dim(d_model: int, n_heads: int, pos: str) -> int:
    """d_model / n_heads, after checking the heads and the position encoding (ValueError, one line)."""
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads={n_heads!r} must be a positive integer dividing d_model={d_model}")
    if pos not in ("rope", "none"):
        raise ValueError(f"pos must be 'rope' or 'none', got {pos!r}")
    if pos == "rope" and (d_model // n_heads) % 2:
        raise ValueError(f"pos='rope' needs an even head dim, got d_model/n_heads = {d_model // n_heads}")
    return d_model // n_heads


class Transformer(nn.Module):
    """Causal self-attention mixer: in_proj (d -> 3d) -> [RoPE] -> softmax attention -> out_proj.

    Parameters: 4d² + 4d (both projections carry biases), PyTorch default init.
    """

    def __init__(self, d_model: int, n_heads: int = 2, pos: str = "rope") -> None:
        super().__init__()
        d_head = head_dim(d_model, n_heads, pos)
        self.d_model, self.n_heads, self.d_head, self.pos = d_model, n_heads, d_head, pos
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _qkv(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """Project x (B, L, d) at positions start..start+L-1 to rotated q, k and v, each (B, H, L, d_h)."""
        qkv = self.in_proj(x).unflatten(-1, (3, self.n_heads, self.d_head))  # (B, L, 3d) -> (B, L, 3, H, d_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, L, 3, H, d_h) -> 3 x (B, H, L, d_h)
        if self.pos == "rope":
            t = torch.arange(start, start + x.shape[1], device=x.device)
            q, k = apply_rope(q, t), apply_rope(k, t)
        return q, k, v

    def _merge(self, o: Tensor) -> Tensor:
        return self.out_proj(o.transpose(1, 2).flatten(2))  # (B, H, L, d_h) -> (B, L, H·d_h) -> (B, L, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_state(x)[0]

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, KVCache]:
        """Parallel causal attention over x (B, L, d); the state is the KV cache of all L positions."""
        q, k, v = self._qkv(x, 0)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, d_h)
        return self._merge(o), KVCache(k, v)

    def init_state(self, batch_size: int) -> KVCache:
        empty = self.in_proj.weight.new_zeros(batch_size, self.n_heads, 0, self.d_head)
        return KVCache(empty, empty)

    def step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """One token x_t (B, d) at position state.pos; returns y_t (B, d) and a new, longer cache."""
        q, k, v = self._qkv(x_t[:, None], state.pos)  # each (B, H, 1, d_h)
        k, v = torch.cat((state.k, k), dim=2), torch.cat((state.v, v), dim=2)  # (B, H, t+1, d_h)
        # is_causal=True would build a top-left aligned mask and let the query see only key 0 (§1.4).
        o = F.scaled_dot_product_attention(q, k, v, is_causal=False)  # (B, H, 1, d_h)
        return self._merge(o)[:, 0], KVCache(k, v)

    def state_size(self, seq_len: int) -> int:
        """Floats of cache per sequence after seq_len tokens: keys and values, growing linearly."""
        return 2 * seq_len * self.d_model

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: x, qkv, rotated q and k, the attention output and its
        merged copy (about 6·L·d) plus one log-sum-exp per head and query; SDPA's fused kernels never
        keep the L×L attention matrix."""
        return seq_len * (6 * self.d_model + self.n_heads)
