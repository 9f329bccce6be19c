"""NTK-Attention: causal attention plus a learned stand-in for an infinitely long prefix.

"Toward Infinite-Long Prefix in Transformer" (Liang et al., 2024) shows that attending to a trainable
prefix P of m tokens (P-Tuning v2) approaches, as m -> ∞, a term that needs no prefix tokens at all:
with a positive feature map φ, exp(q·p/√d) ≈ φ(q)·φ(p), so the prefix's share of the numerator is
φ(q)ᵀ Σ_p φ(p) v_pᵀ = φ(q)ᵀZ and of the normaliser φ(q)ᵀ Σ_p φ(p) = φ(q)ᵀk. Z (d×d) and k (d) are
then trained directly: d² + d parameters per head stand for a prefix of any length. Per head, with
the causal scores s_ij = q_i·k_j/√d_h of the Transformer mixer (transformer.py, RoPE by default):

    y_i = (φ(q_i)ᵀZ + Σ_{j≤i} exp(s_ij) v_j) / (φ(q_i)ᵀk + Σ_{j≤i} exp(s_ij)),   φ(x) = elu(x/d_h^¼) + 1.

Choices (the paper's code is the reference; where we differ, it says why):

* φ as in the paper: elu(x/d_h^¼) + 1 > 0, the linear-attention feature that keeps φ(q)ᵀk ≥ 0. It
  reads the query *before* RoPE: a prefix of unbounded length has no position relative to the query,
  so its term is the same function of content at every position (the paper's ChatGLM code feeds the
  rotated query, which would give this mixer an absolute-position signal the Transformer lacks).
* k = exp(k_log) > 0 elementwise (the paper's ViT code: |k| from k = 0, where |·| has zero gradient,
  so that k never leaves 0). Z is unconstrained: prefix values may take any sign.
* Init: Z = 0, k = 1/d_h: the prefix starts as about one extra key of score ≈ 0 and value 0 (an
  attention sink), so the layer starts near plain attention yet k already gets gradients.
* Stability: numerator and normaliser are both multiplied by exp(-M_i), M_i = max(max_{j≤i} s_ij,
  log φ(q_i)ᵀk), which leaves y_i unchanged. Every exponent is then ≤ 0 except the prefix features
  exp(log φ(q_i) - M_i) ≤ 1/k elementwise, and the normaliser is ≥ 1 (its largest term is exactly 1).
  With Z = 0 and k = 0 (k_log = -inf) the layer is exactly causal softmax attention (tested).

Shared hyperparameters: none (d_state, d_conv and expand mean nothing to attention), like the
Transformer. Own: n_heads, pos ("rope" or "none"), as in transformer.py.

Parameters: the Transformer's 4d² + 4d plus H·(d_h² + d_h) = d²/H + d for the prefix.

Step mode: the Transformer's KV cache (rotated keys and values, state_size 2·L·d); the prefix is
parameters, constant, so it adds nothing to the state. Parallel mode materialises the (B, H, L, L)
scores: it is the explicit reference form, no fused kernel returns the log-sum-exp it needs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bench.models.hints import register
from bench.models.transformer import KVCache, apply_rope, head_dim


def log_feature(x: Tensor) -> Tensor:
    """log φ(x) for φ(x) = elu(x) + 1, without forming φ: x where x < 0, log(1 + x) elsewhere.

    Written as min(x, 0) + log1p(max(x, 0)) so neither branch is ever evaluated out of its domain
    (no NaN in either gradient), and a very negative x stays finite in log space.
    """
    return x.clamp(max=0) + torch.log1p(x.clamp(min=0))


class NTKAttention(nn.Module):
    """Causal self-attention with an NTK-Attention prefix: in_proj (d -> 3d) -> [RoPE] -> softmax
    attention whose numerator gains φ(q)ᵀZ and normaliser φ(q)ᵀk -> out_proj.

    Parameters: 4d² + 4d (projections with biases, PyTorch default init) + H·(d_h² + d_h).
    """

    def __init__(self, d_model: int, n_heads: int = 2, pos: str = "rope") -> None:
        super().__init__()
        d_head = head_dim(d_model, n_heads, pos)
        self.d_model, self.n_heads, self.d_head, self.pos = d_model, n_heads, d_head, pos
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # The prefix: Z = Σ_p φ(p) v_pᵀ and k = Σ_p φ(p) of the paper, per head. Z = 0, k = 1/d_h.
        self.prefix_z = nn.Parameter(torch.zeros(n_heads, d_head, d_head))
        # k's log-scale gets no weight decay: decay would pull k towards 1, not 0
        register(self, "prefix_k_log", torch.full((n_heads, d_head), -math.log(d_head)), weight_decay=0.0)

    def _qkv(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Project x (B, L, d) at positions start..start+L-1 to (q before RoPE, q, k, v), each (B, H, L, d_h)."""
        qkv = self.in_proj(x).unflatten(-1, (3, self.n_heads, self.d_head))  # (B, L, 3d) -> (B, L, 3, H, d_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, L, 3, H, d_h) -> 3 x (B, H, L, d_h)
        q_raw = q
        if self.pos == "rope":
            t = torch.arange(start, start + x.shape[1], device=x.device)
            q, k = apply_rope(q, t), apply_rope(k, t)
        return q_raw, q, k, v

    def _attend(self, q_raw: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """NTK-Attention of queries q (B, H, Lq, d_h) over keys/values (B, H, Lk, d_h), Lq <= Lk, the
        queries being the last Lq positions (bottom-right causal mask: parallel and step alike)."""
        lq, lk = q.shape[2], k.shape[2]
        s = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, H, Lq, Lk)
        future = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(lk - lq + 1)
        s = s.masked_fill(future, float("-inf"))
        log_phi = log_feature(q_raw / self.d_head ** 0.25)  # (B, H, Lq, d_h)
        k_log = self.prefix_k_log[:, None, :]  # (H, d_h) -> (H, 1, d_h)
        # Any shift M gives the same y: computed from detached inputs, it is a constant to autograd,
        # which then keeps neither the scores nor log φ(q)ᵀk for it.
        log_c = torch.logsumexp(log_phi.detach() + k_log.detach(), dim=-1)  # log φ(q)ᵀk: (B, H, Lq)
        m = torch.maximum(s.detach().amax(-1), log_c)  # (B, H, Lq)
        a = torch.exp(s - m[..., None])  # (B, H, Lq, Lk), future entries exactly 0
        psi = torch.exp(log_phi - m[..., None])  # φ(q)·exp(-M): (B, H, Lq, d_h)
        # φ(q)ᵀZ as one (H, B·Lq, d_h) @ (H, d_h, d_h) product: broadcasting Z over the batch instead
        # would make autograd keep a (B, H, d_h, d_h) copy of it, which dominates at short lengths
        # (reports/perf, "Figures behind the mixers' design choices").
        b, h = psi.shape[:2]
        prefix = (psi.transpose(0, 1).reshape(h, b * lq, self.d_head) @ self.prefix_z).view(h, b, lq, self.d_head)
        num = a @ v + prefix.transpose(0, 1)  # (B, H, Lq, d_h)
        den = a.sum(-1) + (psi * k_log.exp()).sum(-1)  # (B, H, Lq), >= 1
        return num / den[..., None]

    def _merge(self, o: Tensor) -> Tensor:
        return self.out_proj(o.transpose(1, 2).flatten(2))  # (B, H, L, d_h) -> (B, L, H·d_h) -> (B, L, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_state(x)[0]

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, KVCache]:
        """Parallel causal NTK-Attention over x (B, L, d); the state is the KV cache of all L positions."""
        q_raw, q, k, v = self._qkv(x, 0)
        return self._merge(self._attend(q_raw, q, k, v)), KVCache(k, v)

    def init_state(self, batch_size: int) -> KVCache:
        empty = self.in_proj.weight.new_zeros(batch_size, self.n_heads, 0, self.d_head)
        return KVCache(empty, empty)

    def step(self, x_t: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """One token x_t (B, d) at position state.pos; returns y_t (B, d) and a new, longer cache."""
        q_raw, q, k, v = self._qkv(x_t[:, None], state.pos)  # each (B, H, 1, d_h)
        k, v = torch.cat((state.k, k), dim=2), torch.cat((state.v, v), dim=2)  # (B, H, t+1, d_h)
        return self._merge(self._attend(q_raw, q, k, v))[:, 0], KVCache(k, v)

    def state_size(self, seq_len: int) -> int:
        """Floats of cache per sequence after seq_len tokens: keys and values; the prefix is parameters."""
        return 2 * seq_len * self.d_model

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: two H·L² tensors of the explicit attention weights (what
        SDPA's fused kernels avoid in the Transformer), plus x, qkv, rotated q and k, the prefix
        features, numerator, normaliser and output, about 11·L·d."""
        return 2 * self.n_heads * seq_len * seq_len + 11 * seq_len * self.d_model
