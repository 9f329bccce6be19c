"""Mamba-1 selective SSM mixer (Gu & Dao 2023; ARCHITECTURES.md §2).

The block of `mamba_ssm.Mamba` (state-spaces/mamba, mamba_ssm/modules/mamba_simple.py), with its
parameter names, shapes and initialisation, so a state_dict moves between the two unchanged:

    x (B, L, d) -> in_proj -> [x̃ ; z] -> causal depthwise conv1d -> SiLU -> a
    a -> x_proj -> (δ, B, C);  Δ = softplus(dt_proj(δ))           (bias inside the softplus)
    s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t B_t a_t;  y_t = C_t s_t + D a_t   (A = -exp(A_log), per channel)
    out = out_proj(y ⊙ SiLU(z))

Three implementations of the same layer (`impl`):
* "reference": pure PyTorch on any device; the scan is `selective_scan` of bench/models/ops/
  selective_scan.py (chunked, with its own backward, tested against the literal recurrence there).
* "fused_cpu": the same layer with the compiled CPU scan of ops/selective_scan_cpu.py (one loop over
  time per batch and channel, never a (B, L, E, N) tensor), for CPU tensors.
* "fused": mamba_ssm's CUDA kernels (`mamba_inner_fn`, `selective_scan_fn`), exactly as
  `mamba_ssm.Mamba` calls them; the same ops module imports them lazily and says why they cannot
  run when they cannot, which is the reason a "fused" request names.
"auto" takes "fused" only for CUDA tensors in a dtype the kernels support, and only after one tiny
call of the kernel has run on that device (cached); on CPU it takes "fused_cpu" once the compiled scan
has passed its own tiny call, else "reference" with one warning line. `impl_used` says which one a
mixer runs. Step mode is the same PyTorch code for all: one position costs O(E·(d + N + d_conv + R)).
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.hints import register
from bench.models.ops import selective_scan_cpu
from bench.models.ops.selective_scan import FUSED_DTYPES, fused_kernels, fused_unavailable, selective_scan, widen

IMPLS = ("auto", "fused", "fused_cpu", "reference")
_warned: set[str] = set()  # fallback reasons already printed by this process


def cpu_scan_unavailable() -> str:
    """Why the compiled CPU scan cannot run ("" when it can); the first time auto falls back on a
    reason, one warning line says so on stderr."""
    return selective_scan_cpu.unavailable()


def _warn_fallback(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        print(f"warning: Mamba runs the chunked PyTorch scan on CPU: {reason}", file=sys.stderr)


class MambaState(NamedTuple):
    """Step-mode state, laid out as mamba_ssm's `allocate_inference_cache`."""

    conv: Tensor  # (B, E, d_conv): the last d_conv pre-convolution inputs x̃, newest in the last slot
    ssm: Tensor  # (B, E, N): s_t, in float32 at least


class Mamba(nn.Module):
    """Mamba-1 mixer, parameter for parameter `mamba_ssm.Mamba` (same keyword defaults).

    Parameters (E = expand·d, R = dt_rank = ⌈d/16⌉): in_proj (2E, d), conv1d (E, 1, d_conv) + (E,),
    x_proj (R + 2N, E), dt_proj (E, R) + (E,), A_log (E, N), D (E,), out_proj (d, E); with the
    defaults 3·E·d + E·(d_conv + 3N + 2R + 3). A_log and D carry no weight decay (`register`), as
    mamba_ssm flags them. Recurrent state: E·(N + d_conv) floats, constant in the length.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False, impl: str = "auto") -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(expand, bool) or not isinstance(expand, int | float) or expand <= 0 or expand * d_model % 1:
            raise ValueError(f"expand={expand!r} must be positive with expand * d_model ({d_model}) an integer")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1):
            raise ValueError(f"dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if dt_scale <= 0:
            raise ValueError(f"dt_scale must be positive, got {dt_scale}")
        if dt_init_floor < 0:
            raise ValueError(f"dt_init_floor must be non-negative, got {dt_init_floor}")
        if not isinstance(conv_bias, bool) or not isinstance(bias, bool):
            raise ValueError(f"conv_bias and bias must be booleans, got {conv_bias!r} and {bias!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if impl == "fused":
            index = torch.cuda.current_device() if torch.cuda.is_available() else 0
            reason = fused_unavailable(torch.device("cuda", index))
            if reason:
                raise ValueError(f"impl='fused' needs mamba_ssm's CUDA kernels: {reason}")
        if impl == "fused_cpu" and (reason := cpu_scan_unavailable()):
            raise ValueError(f"impl='fused_cpu' needs the compiled CPU scan: {reason}")
        self.d_model, self.d_state, self.d_conv, self.expand, self.impl = d_model, d_state, d_conv, expand, impl
        self.d_inner = E = int(expand * d_model)
        self.dt_rank = R = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank

        # Created in mamba_ssm's order, so one seed gives both modules the same weights.
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        std = dt_scale * R**-0.5  # keeps the variance of dt_proj's output at initialisation
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        # Δ0 log-uniform in [dt_min, dt_max]; the bias is its inverse softplus, so softplus(bias) = Δ0.
        dt = torch.exp(torch.rand(E) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-Real: A[c, n] = -(n + 1) for every inner channel; kept as A_log in float32.
        # Both without weight decay, as mamba_ssm flags them (`_no_weight_decay`).
        register(self, "A_log", torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1),
                 weight_decay=0.0)
        register(self, "D", torch.ones(E), weight_decay=0.0)
        self.out_proj = nn.Linear(E, d_model, bias=bias)

    # ------------------------------------------------------------ which implementation

    def _impl_for(self, t: Tensor) -> str:
        """What forward runs on tensors like `t`: 'fused', 'fused_cpu' or 'reference'; an explicit impl
        that cannot run there raises, auto falls back to 'reference' (with one warning line on CPU)."""
        if self.impl == "reference":
            return "reference"
        if self.impl == "auto":
            if t.is_cuda:
                return "fused" if t.dtype in FUSED_DTYPES and not fused_unavailable(t.device) else "reference"
            if t.device.type != "cpu":  # meta tensors, sized without running
                return "reference"
            reason = cpu_scan_unavailable()
            if reason:
                _warn_fallback(reason)
            return "reference" if reason else "fused_cpu"
        if self.impl == "fused_cpu":
            if t.device.type != "cpu":
                raise RuntimeError(f"impl='fused_cpu' needs CPU tensors, got {t.device}")
            reason = cpu_scan_unavailable()
            if reason:
                raise RuntimeError(f"impl='fused_cpu' cannot run: {reason}")
            return "fused_cpu"
        if not t.is_cuda:
            raise RuntimeError(f"impl='fused' needs CUDA tensors, got {t.device}")
        if t.dtype not in FUSED_DTYPES:
            raise RuntimeError(f"impl='fused' supports float32, float16 and bfloat16, got {t.dtype}")
        reason = fused_unavailable(t.device)
        if reason:
            raise RuntimeError(f"impl='fused' cannot run: {reason}")
        return "fused"

    @property
    def impl_used(self) -> str:
        """'fused', 'fused_cpu' or 'reference': what forward runs for the parameters' current device and dtype."""
        return self.impl if self.impl in ("fused", "fused_cpu") else self._impl_for(self.in_proj.weight)

    # ------------------------------------------------------------ parallel mode

    def forward(self, x: Tensor) -> Tensor:
        impl = self._impl_for(x)
        return self._fused(x, with_state=False)[0] if impl == "fused" else self._reference(x, impl)[0]

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, MambaState]:
        """Run x (B, L, d); the state holds the last d_conv inputs x̃ (zero-padded) and s_{L-1}."""
        impl = self._impl_for(x)
        return self._fused(x, with_state=True) if impl == "fused" else self._reference(x, impl)

    def _conv_state(self, xs: Tensor) -> Tensor:
        """x̃ (B, E, L) -> its last d_conv columns (B, E, d_conv), zero-padded on the left when L < d_conv."""
        return F.pad(xs, (self.d_conv - xs.shape[-1], 0))  # a negative pad crops

    def _reference(self, x: Tensor, impl: str = "reference") -> tuple[Tensor, MambaState]:
        """The layer in PyTorch around a scan: the chunked one, or the compiled CPU one for impl='fused_cpu'."""
        L = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d) -> (B, L, 2E) -> 2 x (B, L, E)
        xs = xs.transpose(1, 2)  # (B, L, E) -> (B, E, L)
        a = F.silu(self.conv1d(xs)[..., :L]).transpose(1, 2)  # causal: (B, E, L + K - 1)[..., :L] -> (B, L, E)
        dt, B, C = self.x_proj(a).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, R + 2N)
        delta = F.softplus(widen(self.dt_proj(dt)))  # (B, L, R) -> (B, L, E)
        A = -torch.exp(widen(self.A_log))  # (E, N)
        scan = selective_scan_cpu.fused_cpu_scan if impl == "fused_cpu" else selective_scan
        y, last = scan(widen(a), delta, A, widen(B), widen(C))  # (B, L, E), (B, E, N)
        y = (y + a * self.D) * F.silu(z)
        return self.out_proj(y.to(x.dtype)), MambaState(self._conv_state(xs), last)

    def _fused(self, x: Tensor, with_state: bool) -> tuple[Tensor, MambaState | None]:
        """mamba_ssm.Mamba's forward: `mamba_inner_fn` when no state is wanted and causal_conv1d can take
        the width (2..4), else the conv in PyTorch and `selective_scan_fn`, which also returns s_{L-1}."""
        k, L = fused_kernels()[0], x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (B, L, d) -> (B, L, 2E) -> (B, 2E, L)
        A = -torch.exp(self.A_log.float())
        if not with_state and k.causal_conv1d_fn is not None and 2 <= self.d_conv <= 4:
            out = k.mamba_inner_fn(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                                   self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                                   delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
            return out, None
        xs, z = xz.chunk(2, dim=1)  # 2 x (B, E, L)
        a = F.silu(self.conv1d(xs)[..., :L])  # (B, E, L)
        dt, B, C = self.x_proj(a.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ dt.transpose(1, 2)  # (E, R) @ (B, R, L) -> (B, E, L); bias added in the kernel
        y, last = k.selective_scan_fn(a, delta, A, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
                                      self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                      return_last_state=True)
        out = self.out_proj(y.transpose(1, 2))  # (B, E, L) -> (B, L, E) -> (B, L, d)
        return out, MambaState(self._conv_state(xs), last.to(widen(self.A_log).dtype)) if with_state else None

    # ------------------------------------------------------------ recurrent mode

    def init_state(self, batch_size: int) -> MambaState:
        w = self.in_proj.weight
        return MambaState(w.new_zeros(batch_size, self.d_inner, self.d_conv),
                          w.new_zeros(batch_size, self.d_inner, self.d_state, dtype=widen(w).dtype))

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token x_t (B, d) -> y_t (B, d) and a new state; `state` is left untouched."""
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, d) -> (B, 2E) -> 2 x (B, E)
        conv = torch.cat((state.conv[..., 1:], xs[..., None]), dim=-1)  # shift left, newest last: (B, E, K)
        a = (conv * self.conv1d.weight[:, 0]).sum(-1)  # (B, E, K) * (E, K) -> (B, E)
        if self.conv1d.bias is not None:
            a = a + self.conv1d.bias
        a = F.silu(a)
        dt, B, C = self.x_proj(a).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(widen(self.dt_proj(dt)))  # (B, E)
        A = -torch.exp(widen(self.A_log))  # (E, N)
        aw = widen(a)
        ssm = torch.exp(delta[..., None] * A) * state.ssm + (delta * aw)[..., None] * widen(B)[:, None, :]  # (B, E, N)
        y = (ssm @ widen(C)[..., None])[..., 0] + aw * self.D  # (B, E, N) @ (B, N, 1) -> (B, E)
        y = y.to(x_t.dtype) * F.silu(z)
        return self.out_proj(y), MambaState(conv, ssm)

    def state_size(self, seq_len: int) -> int:
        """conv_state and ssm_state: E·(d_conv + N) floats, independent of the sequence length."""
        return self.d_inner * (self.d_conv + self.d_state)

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence: about ten E-wide tensors (projections, conv, SiLU, Δ, gate)
        and B, C; the chunked scan also keeps its decays and states (2·E·N per position), the compiled
        scans recompute them in their backward. The device is not known here (models are sized on
        meta): auto is taken to run where the study runs, on CUDA when there is one."""
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        return seq_len * (self.d_model + E * (2 * N * self._saves_states() + 10) + 3 * N + R)

    def _saves_states(self) -> bool:
        """Whether the scan this mixer will run keeps (B, L, E, N) for its backward (the chunked scan)."""
        if self.impl != "auto":
            return self.impl == "reference"
        if torch.cuda.is_available():
            return bool(fused_unavailable(torch.device("cuda", torch.cuda.current_device())))
        return bool(cpu_scan_unavailable())
