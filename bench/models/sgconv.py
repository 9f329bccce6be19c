"""SGConv: structured global convolution (Li et al., arXiv 2210.09298; ARCHITECTURES.md §7).

The paper distils what makes S4 work as a long convolution into two principles, and builds the
kernel directly from them, with no state-space model behind it:

* few parameters: S sub-kernels w_i of k_d taps each per channel; sub-kernel i is stretched to
  k_d·2^{max(0, i-1)} taps by linear interpolation, so the concatenation doubles in length with each
  scale and S = 1 + ⌈log2(l_max/k_d)⌉ scales cover l_max positions with S·k_d parameters;
* decay: scale i is weighted α^{S-1-i} (α = 2 by default, per channel from linspace(decay_min,
  decay_max, H)), so each coarser scale weighs half the previous one and |K_l| falls like k_d/l.

    K_h = [α^{S-1} w_0, α^{S-2} w_1, α^{S-3} Up_2(w_2), ..., Up_{2^{S-2}}(w_{S-1})] / ‖·‖₂,
    length k_d·2^{S-1} >= l_max, truncated or zero-padded to the sequence length L;
    v = K * u + D u (causal FFT convolution),  y = GLU(W_o GELU(v) + b_o).

The norm is taken over the whole kernel, never over the part cut to L, so the kernel does not depend
on the sequence length (prefix consistency). It is recomputed from the live sub-kernels at every call
[archbench deviation]: the reference freezes the norm of the initial kernel in a buffer. Both agree
at init; with a frozen norm the scales beyond a short training length (k_d >= L leaves only w_0 in
view) would receive no gradient at all, while the live norm keeps every parameter in the graph and
the kernel at unit norm.

Step mode: there is no finite state-space realisation, the exact recurrent form is the FIR filter
v_t = Σ_j K_j u_{t-j} + D u_t over a cached window of past inputs. The state is that window, which
grows with t up to len(K) - 1 inputs per channel (`state_size` counts it).

Hyperparameters: d_model = H channels; d_state is the sub-kernel length k_d (`kernel_dim` in the
reference; clamped to l_max/2 so that S >= 2) [archbench deviation]; d_conv, expand unused.
`l_max` should be the longest training/evaluation length: beyond len(K) the receptive field ends.
The output map GELU -> Linear(H, 2H) -> GLU is archbench's (the reference uses a plain Linear), so
that SGConv and the S4D-family mixers differ only in how the kernel is made [archbench deviation].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bench.models.hints import register


def causal_fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """(k * u)_t = Σ_{s<=t} k_{t-s} u_s for u (B, H, L), k (H, L); FFT of size 2L, so nothing wraps."""
    n = 2 * u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :u.shape[-1]]


class SGConv(nn.Module):
    """Multi-scale decaying kernel, causal FFT convolution + D skip, GELU -> Linear(H, 2H) -> GLU.

    Parameters: 2H² + 2H + S·H·k_d + H (sub-kernels `kernel_list.i` (1, H, k_d), `D` (1, H), output map).
    The sub-kernels carry the reference's learning-rate cap `kernel_lr`.
    """

    def __init__(self, d_model: int, d_state: int = 16, l_max: int = 128, decay_min: float = 2.0,
                 decay_max: float = 2.0, interp: str = "linear", kernel_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 1:
            raise ValueError(f"d_state={d_state!r} (the sub-kernel length) must be a positive integer")
        if not isinstance(l_max, int) or isinstance(l_max, bool) or l_max < 2:
            raise ValueError(f"l_max={l_max!r} must be an integer >= 2")
        if not 0 < decay_min <= decay_max:
            raise ValueError(f"decay_min={decay_min} and decay_max={decay_max} must satisfy 0 < decay_min <= decay_max")
        if interp not in ("linear", "nearest"):
            raise ValueError(f"interp must be 'linear' or 'nearest', got {interp!r}")
        if not kernel_lr > 0:
            raise ValueError(f"kernel_lr must be positive, got {kernel_lr}")
        self.d_model, self.l_max, self.interp = d_model, l_max, interp
        self.kernel_dim = min(d_state, l_max // 2)  # k_d; l_max >= 2·k_d keeps S >= 2 (§7.4)
        doublings = 0
        while self.kernel_dim * 2**doublings < l_max:  # S = 1 + ⌈log2(l_max / k_d)⌉, in integers
            doublings += 1
        self.num_scales = 1 + doublings
        self.kernel_len = self.kernel_dim * 2 ** (self.num_scales - 1)  # >= l_max
        self.kernel_list = nn.ParameterList(
            nn.Parameter(torch.randn(1, d_model, self.kernel_dim)) for _ in range(self.num_scales))
        for i, w in enumerate(self.kernel_list):  # the reference's learning-rate cap on the sub-kernels
            register(self.kernel_list, str(i), w, lr=kernel_lr)
        register(self, "D", torch.randn(1, d_model), weight_decay=0.0)  # a per-channel gain like S4D's D, stored 2-D
        self.output_linear = nn.Linear(d_model, 2 * d_model)
        self.register_buffer("multiplier", torch.linspace(decay_min, decay_max, d_model).view(1, -1, 1))

    def _raw_kernel(self) -> Tensor:
        """The concatenated, decay-weighted scales before normalisation: (1, H, kernel_len)."""
        pieces = []
        for i, w in enumerate(self.kernel_list):
            stretch = 2 ** max(0, i - 1)
            if stretch > 1:  # (1, H, k_d) -> (1, H, stretch·k_d)
                align = False if self.interp == "linear" else None
                w = F.interpolate(w, scale_factor=stretch, mode=self.interp, align_corners=align)
            pieces.append(w * self.multiplier ** (self.num_scales - 1 - i))
        return torch.cat(pieces, dim=-1)

    def kernel(self, length: int | None = None) -> Tensor:
        """K (H, length): the normalised kernel cut or zero-padded to `length` (default: all of it)."""
        k = self._raw_kernel()[0]  # (1, H, kernel_len) -> (H, kernel_len)
        k = k / k.norm(dim=-1, keepdim=True)  # over the full length, whatever `length` is
        if length is None or length == self.kernel_len:
            return k
        return k[:, :length] if length < self.kernel_len else F.pad(k, (0, length - self.kernel_len))

    def _output(self, v: Tensor) -> Tensor:
        return F.glu(self.output_linear(F.gelu(v)), dim=-1)  # (..., H) -> (..., 2H) -> (..., H)

    def forward(self, x: Tensor) -> Tensor:
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        # The kernel (H, len K) and its norm are shared by the batch: rebuilt in backward rather than kept.
        k = checkpoint(self.kernel, u.shape[-1], use_reentrant=False)  # (H, L)
        v = causal_fft_conv(u, k) + self.D[0, :, None] * u  # (B, H, L)
        return self._output(v.transpose(1, 2))  # (B, H, L) -> (B, L, H)

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parallel pass; the state is the window of the last min(L, len(K) - 1) inputs, (B, H, window)."""
        window = min(x.shape[1], self.kernel_len - 1)
        return self.forward(x), x[:, x.shape[1] - window:].transpose(1, 2).contiguous()  # (B, w, H) -> (B, H, w)

    def init_state(self, batch_size: int) -> Tensor:
        return self.D.new_zeros(batch_size, self.d_model, 0)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token x_t (B, H): v_t = Σ_j K_j u_{t-j} + D u_t over the window, oldest input first.

        The kernel is rebuilt from the parameters at each step (O(H·len K), the same order as the sum),
        so a parameter change between steps is never served stale."""
        history = torch.cat((state, x_t[..., None]), dim=-1)  # (B, H, w) -> (B, H, w+1)
        taps = self.kernel()[:, :history.shape[-1]].flip(-1)  # K_w .. K_0, (H, w+1)
        v_t = (history * taps).sum(-1) + self.D[0] * x_t  # (B, H)
        return self._output(v_t), history[..., -(self.kernel_len - 1):]

    def state_size(self, seq_len: int) -> int:
        """The input window: H·min(seq_len, len(K) - 1) floats, growing with the sequence up to len(K) - 1."""
        return self.d_model * min(seq_len, self.kernel_len - 1)

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: u zero-padded to 2L (rfft keeps it) and its spectrum (L+1
        complex bins), u again for the D skip, GELU's input and output and the GLU's 2H-wide input:
        H·(9L + 2). The kernel and its spectrum are shared by the batch, and the kernel's construction
        is recomputed in backward: not counted."""
        return self.d_model * (9 * seq_len + 2)
