"""S4D: one diagonal complex state space model per channel, trained as a long convolution
(ARCHITECTURES.md §5; Gu et al. 2022, arXiv 2206.11893; layout of `state-spaces/s4:models/s4/s4d.py`).

Each of the H = d_model channels is a linear time-invariant SISO system x' = A x + B u, y = 2Re(C x)
+ D u with A = diag(λ) complex. Because the system is time-invariant, the whole sequence can be
mixed at once: discretise (ZOH), expand the impulse response K_l = 2Re Σ_n C_n B̄_n Ā_n^l as a
Vandermonde product, and convolve causally by FFT (zero-padded to 2L, so nothing wraps around).
Step mode is the literal recurrence x ← Ā x + B̄ u_t, which is why both modes agree.

Hyperparameters (§0.3): d_model = H channels; d_state = N real state dimensions per channel, as the
paper counts them, stored as N/2 complex modes whose conjugate partners are implied by taking 2·Re
(so N must be even, and the state is H·N floats); d_conv and expand are unused (§0.3: channels =
d_model, no inner width). num_layers is the backbone's. Parameters per layer: 2H² + H(2N + 4).
The d_state default is the backbone's shared 16 (the paper's layers use 64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bench.models.hints import register


class S4DKernel(nn.Module):
    """The SSM parameters of H channels and their discretisation; `forward(L)` is the kernel (H, L).

    B ≡ 1 is absorbed into C (as in `s4d.py`). The dynamics (log Δ, Re λ, Im λ) carry the optimiser
    hint of the S4 papers: no weight decay and a learning rate capped at `ssm_lr`.
    """

    def __init__(self, d_model: int, d_state: int, init: str, disc: str, dt_min: float, dt_max: float,
                 ssm_lr: float) -> None:
        super().__init__()
        H, n_modes = d_model, d_state // 2
        self.disc = disc
        hint = {"lr": ssm_lr, "weight_decay": 0.0}
        # Δ log-uniform in [dt_min, dt_max], one per channel
        register(self, "log_dt", torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min), **hint)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, n_modes, dtype=torch.cfloat)))  # (H, N/2, 2)
        n = torch.arange(n_modes, dtype=torch.float32).expand(H, n_modes)  # (H, N/2)
        if init == "lin":  # λ_n = -1/2 + iπn
            re, im = torch.full_like(n, 0.5), math.pi * n
        elif init == "inv":  # λ_n = -1/2 + i(N/π)(N/(2n+1) - 1), N the full state size
            re, im = torch.full_like(n, 0.5), d_state / math.pi * (d_state / (2 * n + 1) - 1)
        else:  # "real": λ_n = -(n+1), the S4D-Real init Mamba uses
            re, im = n + 1, torch.zeros_like(n)
        register(self, "log_A_real", torch.log(re), **hint)  # Re λ = -exp(log_A_real) < 0 for any value
        register(self, "A_imag", im.clone(), **hint)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log Ā, Ā, B̄, C), each complex (H, N/2); log Ā is kept because Ā^l = exp(l·log Ā)."""
        dt = self.log_dt.exp()[:, None]  # (H, 1)
        A = torch.complex(-self.log_A_real.exp(), self.A_imag)  # (H, N/2)
        dtA = dt * A
        if self.disc == "zoh":  # Ā = e^{Δλ}, B̄ = (e^{Δλ} - 1)/λ; expm1 avoids cancellation at small Δλ
            log_dA, dB = dtA, torch.expm1(dtA) / A
        else:  # bilinear: Ā = (1 + Δλ/2)/(1 - Δλ/2), B̄ = Δ/(1 - Δλ/2)
            log_dA, dB = torch.log((1 + dtA / 2) / (1 - dtA / 2)), dt / (1 - dtA / 2)
        return log_dA, log_dA.exp(), dB, torch.view_as_complex(self.C)

    def powers(self, log_dA: Tensor, length: int) -> Tensor:
        """Vandermonde matrix Ā_n^l for l = 0..length-1: (H, N/2) -> (H, N/2, length)."""
        return torch.exp(log_dA[..., None] * torch.arange(length, device=log_dA.device))

    def forward(self, length: int) -> Tensor:
        """K_l = 2Re Σ_n C_n B̄_n Ā_n^l, (H, length)."""
        log_dA, _, dB, C = self.discretize()
        return 2 * torch.einsum("hn,hnl->hl", C * dB, self.powers(log_dA, length)).real


class S4D(nn.Module):
    """v = K * u + D ⊙ u per channel (causal), then y = GLU(W_o GELU(v) + b_o), W_o a 1x1 conv H -> 2H.

    Knobs: `init` ∈ {lin (default), inv, real} for λ; `disc` ∈ {zoh (default), bilinear}; Δ initialised
    log-uniform in [dt_min, dt_max]; `ssm_lr` caps the learning rate of log Δ, Re λ and Im λ (0 freezes
    them). State: x ∈ C^{H×N/2} stored as a real (B, H, N/2, 2) tensor.
    """

    def __init__(self, d_model: int, d_state: int = 16, init: str = "lin", disc: str = "zoh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, ssm_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
            raise ValueError(f"d_state={d_state!r} must be a positive even integer (N/2 complex modes)")
        if init not in ("lin", "inv", "real"):
            raise ValueError(f"init must be 'lin', 'inv' or 'real', got {init!r}")
        if disc not in ("zoh", "bilinear"):
            raise ValueError(f"disc must be 'zoh' or 'bilinear', got {disc!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min} and dt_max={dt_max} must satisfy 0 < dt_min <= dt_max")
        if ssm_lr < 0:
            raise ValueError(f"ssm_lr must be >= 0, got {ssm_lr}")
        self.d_model, self.d_state = d_model, d_state
        self.D = nn.Parameter(torch.randn(d_model))
        self.kernel = S4DKernel(d_model, d_state, init, disc, dt_min, dt_max, ssm_lr)
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1), nn.GLU(dim=-2))

    def ssm(self, u: Tensor) -> Tensor:
        """Pre-activation v = K * u + D u, u (B, H, L) -> (B, H, L), by FFT convolution."""
        L = u.shape[-1]
        # The (H, N/2, L) Vandermonde matrix is shared by the batch: recompute it in backward instead of
        # keeping it, so the layer's activation memory scales with the batch like every other mixer's.
        K = checkpoint(self.kernel, L, use_reentrant=False)  # (H, L)
        U = torch.fft.rfft(u, n=2 * L)  # (B, H, L) -> (B, H, L+1) complex
        y = torch.fft.irfft(U * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]  # (B, H, 2L) -> (B, H, L)
        return y + self.D[:, None] * u

    def forward(self, x: Tensor) -> Tensor:
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        return self.output_linear(F.gelu(self.ssm(u))).transpose(1, 2)  # (B, H, L) -> (B, 2H, L) -> (B, L, H)

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parallel pass; the state is x_{L-1} = Σ_s Ā^{L-1-s} B̄ u_s, (B, H, N/2, 2)."""
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        log_dA, _, dB, _ = self.kernel.discretize()
        powers = self.kernel.powers(log_dA, u.shape[-1])  # (H, N/2, L)
        state = dB * torch.einsum("bhl,hnl->bhn", u.flip(-1).to(powers.dtype), powers)  # (B, H, N/2)
        return self.forward(x), torch.view_as_real(state)

    def init_state(self, batch_size: int) -> Tensor:
        return self.D.new_zeros(batch_size, self.d_model, self.d_state // 2, 2)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position x_t (B, H) -> y_t (B, H) and the next state; `state` is left untouched."""
        _, dA, dB, C = self.kernel.discretize()
        s = dA * torch.view_as_complex(state) + dB * x_t[..., None]  # (B, H, N/2)
        v = 2 * (C * s).sum(-1).real + self.D * x_t  # (B, H)
        y = self.output_linear(F.gelu(v)[..., None])[..., 0]  # (B, H) -> (B, H, 1) -> (B, H)
        return y, torch.view_as_real(s)

    def state_size(self, seq_len: int) -> int:
        """N/2 complex modes per channel: H·N floats, independent of the sequence length."""
        return self.d_model * self.d_state

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: the input zero-padded to 2L (rfft keeps it) and its spectrum
        (L+1 complex bins), the input again for the D skip, the pre-activation for GELU, GELU's output
        for the 1x1 conv and the conv's 2H outputs for GLU: H·(9L + 2). The kernel and its spectrum
        are shared by the batch and the Vandermonde matrix is recomputed in backward: not counted."""
        return self.d_model * (9 * seq_len + 2)
