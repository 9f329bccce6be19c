"""StableSSM: a diagonal linear SSM whose decay rates are reparameterised so that no value of the
trainable weight makes it unstable (Wang & Li, arXiv 2311.14495; ARCHITECTURES.md §6).

The paper's model is a linear RNN with a layer-wise nonlinearity, h_{k+1} = Λ h_k + U x_k + b,
y_k = cᵀσ(h_k), with Λ = f(W) for a trainable W. As in the authors' code it is realised as an
S4D-style layer: per channel (H = d_model channels) a diagonal state of N/2 complex modes n
(N = d_state; a mode stands for a conjugate pair, hence the 2Re):

    continuous   x_n'(τ) = λ_n x_n(τ) + u(τ) + b_n,           λ_n = f(W_n) + i·A_imag_n
    discrete     x_n[t] = Ā_n x_n[t-1] + B̄_n (u_t + b_n)       zero-order hold with step Δ (per channel):
                 Ā_n = exp(Δλ_n),  B̄_n = (exp(Δλ_n) - 1)/λ_n = Δ·expm1(z)/z with z = Δλ_n
    readout      v_t = 2Re Σ_n C_n x_n[t] + D u_t,            y_t = GLU(W_o σ(v_t) + b_o)

Mapping onto the paper: Λ = diag(λ) with Re λ = f(W); U is B̄ (its input weight absorbed into C);
σ is the `activation` knob; c is the 1x1-conv + GLU output map shared with S4D; b is optional
(`bias`, off by default as in the authors' layer). The index convention is S4's: x[t] already
contains u_t, one step earlier than the paper's h_{k+1} = Λ h_k + U x_k.

Reparameterisations of the real part (`reparam`); every one starts at Re λ = -1/2:

    direct    f(w) = w               any sign: w > 0 gives |Ā| > 1 and a growing kernel (unstable)
    exp       f(w) = -e^w            < 0 for every w, so |Ā| < 1 whatever training does
    softplus  f(w) = -log(1 + e^w)   < 0 for every w, so |Ā| < 1 whatever training does
    best      f(w) = -1/(w² + 0.1)   < 0, decay rate bounded by 10 (the paper's "best")

Parallel mode: v is linear in u, v = K * u + D u with the kernel K_l = 2Re Σ_n C_n B̄_n Ā_n^l
(a Vandermonde product), applied by causal FFT convolution: no loop over time. Step mode is the
literal recurrence. Both read (Ā, B̄) from `StableSSMKernel.discretize`, so they agree.

Hyperparameters: d_model = H channels; d_state = N real state dims per channel (N/2 complex modes,
N even); d_conv and expand unused. The dynamics parameters (W, A_imag, log Δ) carry no weight decay
and a learning rate capped at `ssm_lr` (S4's optimiser setting).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from bench.models.hints import register

REPARAMS = ("direct", "exp", "softplus", "best")
ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu, "relu": F.relu, "identity": lambda v: v}
# Re(Δλ) is clamped here: such a mode is gone after one step (e^-1e4 = 0), and the clamp keeps
# exp's overflow (-e^w = -inf) from turning the l = 0 power into exp(-inf·0) = nan.
MIN_LOG_DECAY = -1e4


def real_part(w: Tensor, reparam: str) -> Tensor:
    """Re λ = f(W) in continuous time."""
    if reparam == "direct":
        return w
    if reparam == "exp":
        return -torch.exp(w)
    if reparam == "softplus":
        return -F.softplus(w)
    return -1.0 / (w * w + 0.1)  # best


def inverse_real_part(re: float, reparam: str) -> float:
    """The W with f(W) = re < 0: every reparameterisation starts from the same dynamics."""
    return {"direct": re, "exp": math.log(-re), "softplus": math.log(math.expm1(-re)),
            "best": math.sqrt(-1.0 / re - 0.1)}[reparam]


def causal_fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """(k * u)_t = Σ_{s<=t} k_{t-s} u_s for u (B, H, L), k (H, L); FFT of size 2L, so nothing wraps."""
    n = 2 * u.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :u.shape[-1]]


class StableSSMKernel(nn.Module):
    """The dynamics of H channels x N/2 complex modes: discretisation and Vandermonde kernels.

    Keys and shapes are S4D's (§5.2); `log_A_real` holds W, which is a logarithm only for `exp`.
    """

    def __init__(self, d_model: int, d_state: int, reparam: str, dt_min: float, dt_max: float, bias: bool,
                 lr: float) -> None:
        super().__init__()
        h, m = d_model, d_state // 2
        self.reparam = reparam
        log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)  # Δ log-uniform
        hint = {"lr": lr, "weight_decay": 0.0}  # S4's optimiser setting for the dynamics
        register(self, "log_dt", log_dt, **hint)
        register(self, "log_A_real", torch.full((h, m), inverse_real_part(-0.5, reparam)), **hint)  # W
        register(self, "A_imag", math.pi * torch.arange(m, dtype=torch.float32).expand(h, m).clone(), **hint)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(h, m, dtype=torch.cfloat)))  # (H, N/2, 2)
        self.b = nn.Parameter(torch.zeros(h, m, 2)) if bias else None  # complex bias of the state equation

    def discretize(self) -> tuple[Tensor, Tensor]:
        """(z, B̄), complex (H, N/2): z = Δλ = log Ā and B̄ = (e^z - 1)/λ, zero-order hold."""
        dt = self.log_dt.exp()[:, None]  # (H,) -> (H, 1)
        re = (dt * real_part(self.log_A_real, self.reparam)).clamp(min=MIN_LOG_DECAY)
        z = torch.complex(re, dt * self.A_imag)  # (H, N/2)
        # expm1(z)/z, with its series where |z| is tiny (direct at W = 0 would give 0/0); the
        # where-guard keeps the unused branch's nan out of the gradient.
        small = z.abs() < 1e-4
        z_safe = torch.where(small, torch.ones_like(z), z)
        phi = torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(z_safe) / z_safe)
        return z, dt * phi

    @staticmethod
    def powers(z: Tensor, length: int) -> Tensor:
        """Ā_n^l = exp(l·z_n) for l < length: (H, N/2) -> (H, N/2, length)."""
        return torch.exp(z[..., None] * torch.arange(length, device=z.device, dtype=z.real.dtype))

    def vandermonde(self, coeff: Tensor, z: Tensor, length: int) -> Tensor:
        """2Re Σ_n coeff_n Ā_n^l for l < length: (H, N/2) complex -> (H, length) real."""
        return 2 * torch.einsum("hn,hnl->hl", coeff, self.powers(z, length)).real

    def forward(self, length: int) -> Tensor:
        """K (H, length), K_l = 2Re Σ_n C_n B̄_n Ā_n^l: the response of v to an impulse u = e_0, minus D."""
        z, dB = self.discretize()
        return self.vandermonde(torch.view_as_complex(self.C) * dB, z, length)

    def bias_response(self, length: int) -> Tensor:
        """(H, length): the part of v the constant input b adds at t, Σ_{j<=t} 2Re Σ_n C_n B̄_n b_n Ā_n^j."""
        z, dB = self.discretize()
        coeff = torch.view_as_complex(self.C) * dB * torch.view_as_complex(self.b)
        return self.vandermonde(coeff, z, length).cumsum(-1)


class StableSSM(nn.Module):
    """Linear SSM (reparameterised diagonal λ, ZOH) -> σ -> 1x1 conv H -> 2H -> GLU, per position.

    Parameters: 2H² + H·(2N + 4) (S4D's layout), plus H·N with `bias`. State: complex (B, H, N/2)
    stored as real pairs (B, H, N/2, 2), i.e. H·N floats, constant in the sequence length.
    """

    def __init__(self, d_model: int, d_state: int = 16, reparam: str = "softplus", activation: str = "tanh",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, bias: bool = False, ssm_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(d_state, int) or isinstance(d_state, bool) or d_state < 2 or d_state % 2:
            raise ValueError(f"d_state={d_state!r} must be a positive even integer (N/2 complex modes)")
        if reparam not in REPARAMS:
            raise ValueError(f"reparam must be one of {', '.join(REPARAMS)}, got {reparam!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min={dt_min} and dt_max={dt_max} must satisfy 0 < dt_min <= dt_max")
        if not ssm_lr > 0:
            raise ValueError(f"ssm_lr must be positive, got {ssm_lr}")
        self.d_model, self.d_state, self.reparam, self.activation = d_model, d_state, reparam, activation
        self.kernel = StableSSMKernel(d_model, d_state, reparam, dt_min, dt_max, bias, ssm_lr)
        self.D = nn.Parameter(torch.randn(d_model))
        self.output_linear = nn.Sequential(nn.Conv1d(d_model, 2 * d_model, kernel_size=1), nn.GLU(dim=-2))

    def _output(self, v: Tensor) -> Tensor:
        return self.output_linear(ACTIVATIONS[self.activation](v))  # (B, H, L) -> (B, 2H, L) -> (B, H, L)

    def ssm(self, u: Tensor) -> Tensor:
        """Pre-activation v (B, H, L) of the linear SSM for u (B, H, L): FFT convolution with the kernel."""
        length = u.shape[-1]
        # The (H, N/2, L) powers Ā^l are shared by the batch: recomputed in backward rather than kept,
        # so the layer's activation memory grows with the batch only.
        v = causal_fft_conv(u, checkpoint(self.kernel, length, use_reentrant=False)) + self.D[:, None] * u
        if self.kernel.b is not None:
            v = v + checkpoint(self.kernel.bias_response, length, use_reentrant=False)
        return v

    def ssm_step(self, u_t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The literal recurrence for u_t (B, H) and complex x (B, H, N/2): x' = Ā x + B̄ (u_t + b),
        v_t = 2Re Σ_n C_n x'_n + D u_t. Returns (v_t, x')."""
        z, dB = self.kernel.discretize()
        drive = u_t[..., None] if self.kernel.b is None else u_t[..., None] + torch.view_as_complex(self.kernel.b)
        x = torch.exp(z) * x + dB * drive  # (B, H, N/2)
        v_t = 2 * (torch.view_as_complex(self.kernel.C) * x).sum(-1).real + self.D * u_t
        return v_t, x

    def forward(self, x: Tensor) -> Tensor:
        return self._output(self.ssm(x.transpose(1, 2))).transpose(1, 2)  # (B, L, H) -> (B, H, L) -> (B, L, H)

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Parallel pass; the state x_n[L-1] = Σ_s Ā_n^{L-1-s} B̄_n (u_s + b_n), as real pairs (B, H, N/2, 2)."""
        u = x.transpose(1, 2)  # (B, L, H) -> (B, H, L)
        z, dB = self.kernel.discretize()
        powers = self.kernel.powers(z, u.shape[-1])  # Ā^l, (H, N/2, L)
        state = dB * torch.einsum("bhl,hnl->bhn", u.flip(-1).to(powers.dtype), powers)  # (B, H, N/2)
        if self.kernel.b is not None:
            state = state + dB * torch.view_as_complex(self.kernel.b) * powers.sum(-1)
        return self._output(self.ssm(u)).transpose(1, 2), torch.view_as_real(state)

    def init_state(self, batch_size: int) -> Tensor:
        return self.D.new_zeros(batch_size, self.d_model, self.d_state // 2, 2)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One token x_t (B, d) -> y_t (B, d) and the next state; `state` is left untouched."""
        v_t, x = self.ssm_step(x_t, torch.view_as_complex(state))
        y_t = self._output(v_t[..., None])[..., 0]  # (B, H) -> (B, H, 1) -> (B, H)
        return y_t, torch.view_as_real(x)

    def state_size(self, seq_len: int) -> int:
        """N/2 complex modes per channel = H·N floats, independent of the sequence length."""
        return self.d_model * self.d_state

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: u zero-padded to 2L (rfft keeps it) and its spectrum (L+1
        complex bins), u again for the D skip, σ's output (and its input for GELU) and the GLU's 2H-wide
        input: H·(8L + 2), H·(9L + 2) with GELU. The kernel and its spectrum are shared by the batch
        and the powers Ā^l are recomputed in backward: not counted."""
        per_position = 9 if self.activation == "gelu" else 8
        return self.d_model * (per_position * seq_len + 2)
