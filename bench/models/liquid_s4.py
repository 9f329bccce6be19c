"""Liquid-S4: a diagonal S4 kernel plus the input-correlation ("liquid") terms of Hasani et al. 2022
(arXiv 2209.12951), in the causal, live-parameter form of ARCHITECTURES.md §4.3 [archbench deviation].

The liquid system lets the input modulate the transition, x_k = (Ā + B̄ u_k) ⊙ x_{k-1} + B̄ u_k.
Unrolled, its output is the S4 convolution K * u plus terms in products of several inputs. Like the
paper we keep products of up to P = `liquid_degree` inputs, and (our choice, §4.3) only products of
*adjacent* inputs, φ^(p)_t = u_t u_{t-1} ⋯ u_{t-p+1}, so every term stays causal and time-invariant:
  KB: v_t = Σ_p (K^(p) * φ^(p))_t + D u_t,   K^(p)_l = 2Re Σ_n C_n B̄_n^p Ā_n^l  (a kernel per order)
  PB: v_t = (K^(1) * u)_t + Σ_{p≥2} κ_p φ^(p)_t + D u_t,   κ_p = 2Re Σ_n C_n B̄_n^p  (no Ā propagation)
then y = GLU(W_o GELU(v) + b_o). Parallel mode builds the Vandermonde kernels and convolves by FFT
(padded to 2L); step mode runs one diagonal recurrence per kernel, x^(p) ← Ā x^(p) + B̄^p φ^(p)_t,
with the last P-1 inputs buffered to form the products, so both modes compute the same sums.
Unlike the reference code, the coefficients are recomputed from the registered parameters every
call, and step mode includes the liquid terms (§4.2.8-9).

Hyperparameters (§0.3): d_model = H channels; d_state = N real state dimensions per channel, stored as
N/2 complex modes (conjugate partners implied by 2·Re), so N must be even; d_conv and expand are
unused; the d_state default is the backbone's shared 16 (the reference's layers use 64). State per
layer: H·N floats per kernel (KB: P kernels; PB: one) plus H·(P-1) buffered inputs.
Parameters per layer: 2H² + H(3N + 4). liquid_degree = 1 (or liquid_kernel = "none") is plain
diagonal S4 with bilinear discretisation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bench.models.hints import register


def legs_eig(N: int) -> tuple[Tensor, Tensor, Tensor]:
    """Diagonalise the normal part of HiPPO-LegS in float64 on the CPU: (w (N,), V (N, N), V* B (N,)).

    A_nk = -sqrt((2n+1)(2k+1)) (n > k), -(n+1) (n = k), 0 (n < k); B_n = sqrt(2n+1); P_n = sqrt(n+½).
    A + PPᵀ = -½I + S with S skew-symmetric, so -iS is Hermitian: eigh gives S = V diag(iω) V* exactly
    unitary V, and A + PPᵀ = V diag(w) V* with w = -½ + iω, sorted by ω ascending (conjugate pairs ±ω).
    """
    n = torch.arange(N, dtype=torch.float64, device="cpu")
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(n + 1)
    P = torch.sqrt(n + 0.5)
    skew = A + P[:, None] * P[None, :] + 0.5 * torch.eye(N, dtype=torch.float64, device="cpu")
    omega, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # (N,), (N, N)
    return torch.complex(torch.full_like(omega, -0.5), omega), V, V.conj().T @ q.to(torch.complex128)


class LiquidS4Kernel(nn.Module):
    """SSM parameters of H channels (names mirror S4D, plus a learnable complex B) and the bilinear
    discretisation. The dynamics (log Δ, Re λ, Im λ and B, as the S4 kernels register them) carry the
    optimiser hint: no weight decay and a learning rate capped at `ssm_lr`."""

    def __init__(self, d_model: int, d_state: int, init: str, dt_min: float, dt_max: float, ssm_lr: float) -> None:
        super().__init__()
        H, n_modes = d_model, d_state // 2
        hint = {"lr": ssm_lr, "weight_decay": 0.0}
        register(self, "log_dt", torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min), **hint)
        register(self, "log_A_real", torch.full((H, n_modes), math.log(0.5)), **hint)  # Re λ = -exp(.) = -½
        register(self, "A_imag", torch.empty(H, n_modes), **hint)
        register(self, "B", torch.empty(H, n_modes, 2), **hint)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, n_modes, dtype=torch.cfloat)))  # (H, N/2, 2)
        if init == "legs":  # keep the member of each conjugate pair with ω > 0 (the upper half)
            w, _, VB = legs_eig(d_state)
            imag, b = w.imag[n_modes:], VB[n_modes:]
        else:  # "lin": λ_n = -½ + iπn, B = 1
            imag = math.pi * torch.arange(n_modes, dtype=torch.float64, device="cpu")
            b = torch.ones(n_modes, dtype=torch.complex128, device="cpu")
        with torch.no_grad():  # values computed on the CPU, copied to wherever the parameters live
            self.A_imag.copy_(imag.expand(H, n_modes))
            self.B.copy_(torch.view_as_real(b).expand(H, n_modes, 2))

    def discretize(self, degree: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log Ā (H, N/2), Ā (H, N/2), B̄^p for p = 1..degree (degree, H, N/2), C (H, N/2)), complex.

        Bilinear: Ā = (1 + Δλ/2)/(1 - Δλ/2), B̄ = ΔB/(1 - Δλ/2); |Ā| < 1 whenever Re λ < 0."""
        dt = self.log_dt.exp()[:, None]  # (H, 1)
        dtA = dt * torch.complex(-self.log_A_real.exp(), self.A_imag)  # (H, N/2)
        dA = (1 + dtA / 2) / (1 - dtA / 2)
        dB = dt * torch.view_as_complex(self.B) / (1 - dtA / 2)
        dB_pows = torch.stack([dB**p for p in range(1, degree + 1)])  # elementwise powers B̄_n^p
        return torch.log(dA), dA, dB_pows, torch.view_as_complex(self.C)


class LiquidState(NamedTuple):
    """Step-mode state: one diagonal state per kernel and the most recent inputs, newest first."""

    x: Tensor  # (B, P or 1, H, N/2, 2): complex states stored as (real, imag)
    inputs: Tensor  # (B, H, P-1): u_{t-1}, u_{t-2}, ..., zeros before the sequence start


class LiquidS4(nn.Module):
    """Diagonal S4 + liquid terms, then GELU -> 1x1 conv H -> 2H -> GLU (§4.3).

    Knobs: `liquid_kernel` ∈ {pb (default; the reference reports it faster and better), kb, none};
    `liquid_degree` P >= 1, the largest product order; `init` ∈ {legs (default), lin} for λ and B;
    `lcontract` ∈ {none, tanh, lecun} squashes the product signals; Δ log-uniform in [dt_min, dt_max];
    `ssm_lr` caps the learning rate of the dynamics (0 freezes them).
    """

    def __init__(self, d_model: int, d_state: int = 16, liquid_kernel: str = "pb", liquid_degree: int = 2,
                 init: str = "legs", lcontract: str = "none", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 ssm_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
            raise ValueError(f"d_state={d_state!r} must be a positive even integer (N/2 complex modes)")
        if liquid_kernel not in ("pb", "kb", "none"):
            raise ValueError(f"liquid_kernel must be 'pb', 'kb' or 'none', got {liquid_kernel!r}")
        if not isinstance(liquid_degree, int) or isinstance(liquid_degree, bool) or liquid_degree < 1:
            raise ValueError(f"liquid_degree={liquid_degree!r} must be a positive integer")
        if init not in ("legs", "lin"):
            raise ValueError(f"init must be 'legs' or 'lin', got {init!r}")
        if lcontract not in ("none", "tanh", "lecun"):
            raise ValueError(f"lcontract must be 'none', 'tanh' or 'lecun', got {lcontract!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min} and dt_max={dt_max} must satisfy 0 < dt_min <= dt_max")
        if ssm_lr < 0:
            raise ValueError(f"ssm_lr must be >= 0, got {ssm_lr}")
        self.d_model, self.d_state = d_model, d_state
        self.liquid_kernel, self.lcontract = liquid_kernel, lcontract
        self.degree = 1 if liquid_kernel == "none" else liquid_degree  # P: highest product order
        self.n_kernels = self.degree if liquid_kernel == "kb" else 1  # recurrent states (one per kernel)
        self.D = nn.Parameter(torch.randn(d_model))
        self.kernel = LiquidS4Kernel(d_model, d_state, init, dt_min, dt_max, ssm_lr)
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1), nn.GLU(dim=-2))

    def _contract(self, prod: Tensor) -> Tensor:
        if self.lcontract == "tanh":
            return torch.tanh(prod)
        if self.lcontract == "lecun":
            return 1.7159 * torch.tanh(0.666 * prod)
        return prod

    def products(self, u: Tensor) -> Tensor:
        """φ^(p)_t = u_t u_{t-1} ⋯ u_{t-p+1} for p = 1..P (zero before the start): (B, H, L) -> (B, P, H, L)."""
        phis, prod = [u], u
        for i in range(1, self.degree):
            prod = prod * F.pad(u, (i, 0))[..., :u.shape[-1]]  # times u_{t-i}
            phis.append(self._contract(prod))
        return torch.stack(phis, dim=1)

    def _coefficients(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(log Ā, Ā, B̄^p per kernel (n_kernels, H, N/2), C (H, N/2), κ_p = 2Re Σ_n C_n B̄_n^p for p = 2..P
        (P-1, H)), all from the live parameters."""
        log_dA, dA, dB_pows, C = self.kernel.discretize(self.degree)
        kappa = 2 * (C * dB_pows[1:]).sum(-1).real
        return log_dA, dA, dB_pows[:self.n_kernels], C, kappa

    def _kernels(self, length: int) -> tuple[Tensor, Tensor]:
        """K^(p)_l = 2Re Σ_n C_n B̄_n^p Ā_n^l: (n_kernels, H, length), and κ (P-1, H)."""
        log_dA, _, dB_pows, C, kappa = self._coefficients()
        powers = torch.exp(log_dA[..., None] * torch.arange(length, device=log_dA.device))  # (H, N/2, L)
        return 2 * torch.einsum("phn,hnl->phl", C * dB_pows, powers).real, kappa

    def ssm(self, u: Tensor) -> Tensor:
        """Pre-activation v (SSM and liquid terms plus D u): u (B, H, L) -> (B, H, L)."""
        L = u.shape[-1]
        phi = self.products(u)  # (B, P, H, L)
        # The Vandermonde matrices are shared by the batch: recompute them in backward rather than keep them.
        K, kappa = checkpoint(self._kernels, L, use_reentrant=False)  # (n_kernels, H, L), (P-1, H)
        Phi = torch.fft.rfft(phi[:, :self.n_kernels], n=2 * L)  # (B, n_kernels, H, L+1) complex
        Y = torch.einsum("bphf,phf->bhf", Phi, torch.fft.rfft(K, n=2 * L))  # sum the orders' spectra
        v = torch.fft.irfft(Y, n=2 * L)[..., :L] + self.D[:, None] * u  # (B, H, 2L) -> (B, H, L)
        if self.liquid_kernel == "pb" and self.degree > 1:
            v = v + torch.einsum("bphl,ph->bhl", phi[:, 1:], kappa)  # pointwise product terms
        return v

    def forward(self, x: Tensor) -> Tensor:
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        return self.output_linear(F.gelu(self.ssm(u))).transpose(1, 2)  # (B, H, L) -> (B, 2H, L) -> (B, L, H)

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, LiquidState]:
        """Parallel pass; the state holds x^(p)_{L-1} = B̄^p Σ_s Ā^{L-1-s} φ^(p)_s and the last P-1 inputs."""
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        L = u.shape[-1]
        log_dA, _, dB_pows, _, _ = self._coefficients()
        powers = torch.exp(log_dA[..., None] * torch.arange(L, device=u.device))  # (H, N/2, L)
        phi = self.products(u)[:, :self.n_kernels].flip(-1).to(powers.dtype)  # (B, n_kernels, H, L), reversed
        states = dB_pows * torch.einsum("bphl,hnl->bphn", phi, powers)  # (B, n_kernels, H, N/2)
        inputs = F.pad(u, (self.degree - 1, 0)).flip(-1)[..., :self.degree - 1]  # (B, H, P-1), newest first
        return self.forward(x), LiquidState(torch.view_as_real(states), inputs)

    def init_state(self, batch_size: int) -> LiquidState:
        x = self.D.new_zeros(batch_size, self.n_kernels, self.d_model, self.d_state // 2, 2)
        return LiquidState(x, self.D.new_zeros(batch_size, self.d_model, self.degree - 1))

    def step(self, x_t: Tensor, state: LiquidState) -> tuple[Tensor, LiquidState]:
        """One position x_t (B, H) -> y_t (B, H) and a new state; `state` is left untouched."""
        phis, prod = [x_t], x_t
        for i in range(1, self.degree):
            prod = prod * state.inputs[..., i - 1]  # times u_{t-i}
            phis.append(self._contract(prod))
        phi = torch.stack(phis, dim=1)  # (B, P, H)
        _, dA, dB_pows, C, kappa = self._coefficients()
        s = dA * torch.view_as_complex(state.x) + dB_pows * phi[:, :self.n_kernels, :, None]  # (B, n_k, H, N/2)
        v = 2 * (C * s).sum((1, -1)).real + self.D * x_t  # (B, H)
        if self.liquid_kernel == "pb" and self.degree > 1:
            v = v + (kappa * phi[:, 1:]).sum(1)
        y = self.output_linear(F.gelu(v)[..., None])[..., 0]  # (B, H) -> (B, H, 1) -> (B, H)
        inputs = torch.cat((x_t[..., None], state.inputs[..., :-1]), dim=-1)[..., :self.degree - 1]
        return y, LiquidState(torch.view_as_real(s), inputs)

    def state_size(self, seq_len: int) -> int:
        """H·N floats per kernel (P for KB, 1 for PB) plus H·(P-1) buffered inputs; independent of seq_len."""
        return self.d_model * (self.n_kernels * self.d_state + self.degree - 1)

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence, in units of H·L: the input, its P-1 shifts and P-2 running
        products (P-1 squashed products too with lcontract), per kernel the zero-padded product signal
        (2) and its spectrum (2, plus 2H for the (L+1)-th bin), for PB the P-1 products the pointwise
        terms read, then v, GELU's output and the conv's 2H outputs for GLU (4). The kernels are
        shared by the batch and recomputed in backward (checkpoint): not counted."""
        P, n_k = self.degree, self.n_kernels
        per_position = P + max(P - 2, 0) + 4 * n_k + 4
        per_position += (P - 1) * ((self.liquid_kernel == "pb") + (self.lcontract != "none"))
        return self.d_model * (per_position * seq_len + 2 * n_k)
