"""Mamba-1 selective SSM mixer (Gu & Dao 2023; ARCHITECTURES.md §2).

The block of `mamba_ssm.Mamba` (state-spaces/mamba, mamba_ssm/modules/mamba_simple.py), with its
parameter names, shapes and initialisation, so a state_dict moves between the two unchanged:

    x (B, L, d) -> in_proj -> [x̃ ; z] -> causal depthwise conv1d -> SiLU -> a
    a -> x_proj -> (δ, B, C);  Δ = softplus(dt_proj(δ))           (bias inside the softplus)
    s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t B_t a_t;  y_t = C_t s_t + D a_t   (A = -exp(A_log), per channel)
    out = out_proj(y ⊙ SiLU(z))

Two implementations of the same layer (`impl`):
* "reference": pure PyTorch on any device. The scan (`selective_scan`) is chunked, with its own
  backward: O(√L) Python steps instead of O(L) wherever a step's work is small enough for Python's
  overhead to matter; `sequential_scan` is the literal recurrence it is tested against.
* "fused": mamba_ssm's CUDA kernels (`mamba_inner_fn`, `selective_scan_fn`), exactly as
  `mamba_ssm.Mamba` calls them. mamba_ssm cannot even be imported without its compiled extension,
  so it is imported lazily and any failure is kept as the reason a "fused" request names.
"auto" takes "fused" only for CUDA tensors in a dtype the kernels support, and only after one tiny
call of the kernel has run on that device (cached); `impl_used` says which one a mixer runs.
Step mode is the same PyTorch code for both: one position costs O(E·(d + N + d_conv + R)).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

IMPLS = ("auto", "fused", "reference")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what selective_scan_cuda is built for
SEQUENTIAL_MAX_LEN = 32  # sequences up to this length are scanned step by step: a loop is cheapest there
CPU_SLICE_FLOATS = 2**17  # on CPU, chunks scanned side by side are capped so one step's slice stays in cache
CPU_CAP_MAX_LEN = 512  # ... but only up to this length: longer sequences are always chunked (about 2√L steps)


class MambaState(NamedTuple):
    """Step-mode state, laid out as mamba_ssm's `allocate_inference_cache`."""

    conv: Tensor  # (B, E, d_conv): the last d_conv pre-convolution inputs x̃, newest in the last slot
    ssm: Tensor  # (B, E, N): s_t, in float32 at least


def _wide(t: Tensor) -> Tensor:
    """The scan runs in float32 (float64 stays float64), whatever the activation dtype."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# ---------------------------------------------------------------- the selective scan


def sequential_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """The literal recurrence, one Python step per position (as mamba_ssm's `selective_scan_ref`).

    u, delta (B, L, E); A (E, N); B, C (B, L, N) -> y (B, L, E) without the D skip and the gate, and
    the last state s_{L-1} (B, E, N). s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t u_t B_t, y_t = Σ_n C_t s_t.
    """
    decay = torch.exp(delta[..., None] * A)  # (B, L, E, 1) * (E, N) -> (B, L, E, N)
    inp = (delta * u)[..., None] * B[:, :, None, :]  # (B, L, E, 1) * (B, L, 1, N) -> (B, L, E, N)
    s = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for a_t, b_t, c_t in zip(decay.unbind(1), inp.unbind(1), C.unbind(1), strict=True):
        s = a_t * s + b_t
        ys.append((s @ c_t[:, :, None])[..., 0])  # (B, E, N) @ (B, N, 1) -> (B, E)
    return torch.stack(ys, dim=1), s


def n_chunks(length: int, step_numel: int, cuda: bool) -> int:
    """Chunks `_linear_scan_` splits a sequence into (see there); step_numel = B·E·N of one position."""
    k = 1 if length <= SEQUENTIAL_MAX_LEN else math.isqrt(length)
    if not cuda and length <= CPU_CAP_MAX_LEN:
        k = max(1, min(k, CPU_SLICE_FLOATS // max(1, step_numel)))
    return k


def _linear_scan_(a: Tensor, h: Tensor, transpose: bool = False) -> Tensor:
    """In place on h, over dim 1: h_t = a_t ⊙ h_{t-1} + h_t for t = 1..L-1, the recurrence with inputs
    h and decays a, both (B, L, E, N), 0 <= a <= 1. transpose=True runs its adjoint backwards in time,
    h_t = a_{t+1} ⊙ h_{t+1} + h_t for t = L-2..0 (the same `a`, as the backward pass needs it).

    Time splits into K chunks of T = L // K positions: (1) one step per in-chunk position, all chunks
    at once, gives every chunk's states from a zero start, and P, the decay products that carry a
    chunk's incoming state to each of its positions (products, never an exp, so nothing overflows);
    (2) one step per chunk adds the incoming state times P; (3) the last L mod K positions step on.
    With K = √L that is about 2√L Python steps instead of L. On CPU, K is capped so that one step's
    slice (K chunks x B x E x N) stays within CPU_SLICE_FLOATS: at large B·E·N one step is already
    tens of microseconds of arithmetic, Python's overhead is noise, and the memory traffic of P
    (two extra passes over (B, L, E, N)) would cost more than the steps it saves (measured: 789 vs
    1128 ms forward+backward at B=64, L=256, d_model 64). The cap stops at CPU_CAP_MAX_LEN, so a long
    sequence is never a loop over time. Sequences up to SEQUENTIAL_MAX_LEN are one chunk.
    """
    L = h.shape[1]
    K = n_chunks(L, h[:, 0].numel(), h.is_cuda)
    T = L // K
    n = K * T
    lo = L - n if transpose else 0  # the chunked part [lo, lo + n); the tail is the rest
    ac, hc = (t[:, lo:lo + n].unflatten(1, (K, T)) for t in (a, h))  # (B, K, T, E, N) views
    if not transpose:
        P = torch.empty_like(hc) if K > 1 else None  # P_t = a_0 ⊙ ... ⊙ a_t within the chunk
        if P is not None:
            P[:, :, 0] = ac[:, :, 0]
        for t in range(1, T):
            hc[:, :, t].addcmul_(ac[:, :, t], hc[:, :, t - 1])
            if P is not None:
                torch.mul(ac[:, :, t], P[:, :, t - 1], out=P[:, :, t])
        for k in range(1, K):
            hc[:, k].addcmul_(P[:, k], hc[:, k - 1, -1, None])  # + P ⊙ the previous chunk's last state
        for t in range(n, L):
            h[:, t].addcmul_(a[:, t], h[:, t - 1])
        return h
    P = torch.empty_like(hc) if K > 1 else None  # P_t = a_{t+1} ⊙ ... ⊙ a_{T-1} within the chunk
    if P is not None:
        P[:, :, -1] = 1
    for t in range(T - 2, -1, -1):
        hc[:, :, t].addcmul_(ac[:, :, t + 1], hc[:, :, t + 1])
        if P is not None:
            torch.mul(ac[:, :, t + 1], P[:, :, t + 1], out=P[:, :, t])
    for k in range(K - 2, -1, -1):
        incoming = ac[:, k + 1, 0] * hc[:, k + 1, 0]  # (B, E, N): the next chunk's first state, one step back
        hc[:, k].addcmul_(P[:, k], incoming[:, None])
    for t in range(lo - 1, -1, -1):
        h[:, t].addcmul_(a[:, t + 1], h[:, t + 1])
    return h


class _SelectiveScan(torch.autograd.Function):
    """`sequential_scan` computed by `_linear_scan_`, with a hand-written backward.

    The backward is the adjoint recurrence, run backwards in time: with g_t = ∂loss/∂s_t,
    g_t = exp(Δ_{t+1} A) ⊙ g_{t+1} + C_t ∂loss/∂y_t. Saved: the inputs, the decays and the states
    (2·E·N floats per position, what autograd through the loop keeps); no autograd graph over time.
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        decay = (delta[..., None] * A).exp_()  # exp(Δ_t A): (B, L, E, 1) * (E, N) -> (B, L, E, N)
        s = (delta * u)[..., None] * B[:, :, None, :]  # the inputs Δ_t u_t B_t: (B, L, E, N)
        _linear_scan_(decay, s)  # -> the states s_t
        ctx.save_for_backward(u, delta, A, B, C, decay, s)
        y = (s @ C[..., None])[..., 0]  # (B, L, E, N) @ (B, L, N, 1) -> (B, L, E)
        return y, s[:, -1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor) -> tuple[Tensor, ...]:
        u, delta, A, B, C, decay, s = ctx.saved_tensors
        g = grad_y[..., None] * C[:, :, None, :]  # (B, L, E, 1) * (B, L, 1, N) -> (B, L, E, N)
        g[:, -1] += grad_last
        _linear_scan_(decay, g, transpose=True)  # -> g_t = ∂loss/∂s_t
        grad_C = (grad_y[:, :, None, :] @ s)[:, :, 0]  # (B, L, 1, E) @ (B, L, E, N) -> (B, L, N)
        grad_du = (g @ B[..., None])[..., 0]  # ∂loss/∂(Δ u): (B, L, E, N) @ (B, L, N, 1) -> (B, L, E)
        grad_B = ((delta * u)[:, :, None, :] @ g)[:, :, 0]  # (B, L, 1, E) @ (B, L, E, N) -> (B, L, N)
        grad_dA = g[:, 1:].mul_(s[:, :-1]).mul_(decay[:, 1:])  # ∂loss/∂(Δ_t A) = g_t ⊙ s_{t-1} ⊙ exp(Δ_t A)
        grad_delta = u * grad_du
        grad_delta[:, 1:] += (grad_dA * A).sum(-1)
        grad_A = (grad_dA * delta[:, 1:, :, None]).sum((0, 1))  # (E, N)
        return delta * grad_du, grad_delta, grad_A, grad_B, grad_C


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """Same contract as `sequential_scan` (inputs in float32 or float64), differentiable in all five."""
    with torch.autocast(u.device.type, enabled=False):  # matmuls inside must stay in the scan dtype
        return _SelectiveScan.apply(u, delta, A, B, C)


# ---------------------------------------------------------------- mamba_ssm's fused kernels (CUDA only)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


@functools.cache
def _fused_kernels() -> tuple[SimpleNamespace | None, str]:
    """(kernels, "") once mamba_ssm imports, else (None, why not). Imported on first need only."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception as e:  # no compiled selective_scan_cuda, no CUDA torch, missing triton, ...
        return None, f"mamba_ssm does not import ({_first_line(e)})"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # optional: mamba_ssm.Mamba also runs its scan without the fused conv
        causal_conv1d_fn = None
    return SimpleNamespace(mamba_inner_fn=mamba_inner_fn, selective_scan_fn=selective_scan_fn,
                           causal_conv1d_fn=causal_conv1d_fn), ""


def _probe(kernels: SimpleNamespace, device: torch.device) -> str:
    """One tiny call of each kernel the fused path uses: "" when they run on `device`, else why not.
    Importing is not enough: a kernel built for another GPU architecture imports and then fails."""
    try:
        E, N, L = 4, 2, 5
        x = torch.randn(1, 2 * E, L, device=device)
        A = -torch.ones(E, N, device=device)
        u, z = x.chunk(2, dim=1)  # 2 x (1, E, L)
        y = kernels.selective_scan_fn(u, u.abs(), A, x[:, :N], x[:, N:2 * N], z=z, delta_softplus=True)
        if not torch.isfinite(y).all():
            raise RuntimeError("non-finite output")
        if kernels.causal_conv1d_fn is not None:
            ones = functools.partial(torch.ones, device=device)
            kernels.mamba_inner_fn(x, ones(E, 1, 4), ones(E), ones(1 + 2 * N, E), ones(E, 1), ones(3, E), None, A,
                                   D=ones(E), delta_bias=ones(E), delta_softplus=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:  # a kernel built for another GPU architecture, a broken install, ...
        return f"mamba_ssm's kernels failed a test call on {device} ({_first_line(e)})"
    return ""


@functools.cache
def _fused_unavailable(device: torch.device) -> str:
    """Why the fused kernels cannot run on the CUDA `device` ("" when they can); checked once per device."""
    kernels, reason = _fused_kernels()
    missing = [m for m in ("" if torch.cuda.is_available() else "CUDA is not available", reason) if m]
    return " and ".join(missing) if missing else _probe(kernels, device)


# ---------------------------------------------------------------- the mixer


class Mamba(nn.Module):
    """Mamba-1 mixer, parameter for parameter `mamba_ssm.Mamba` (same keyword defaults).

    Parameters (E = expand·d, R = dt_rank = ⌈d/16⌉): in_proj (2E, d), conv1d (E, 1, d_conv) + (E,),
    x_proj (R + 2N, E), dt_proj (E, R) + (E,), A_log (E, N), D (E,), out_proj (d, E); with the
    defaults 3·E·d + E·(d_conv + 3N + 2R + 3). A_log and D carry no weight decay (`_optim`), as
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
            reason = _fused_unavailable(torch.device("cuda", index))
            if reason:
                raise ValueError(f"impl='fused' needs mamba_ssm's CUDA kernels: {reason}")
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
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.A_log._optim = {"weight_decay": 0.0}
        self.D._optim = {"weight_decay": 0.0}
        self.out_proj = nn.Linear(E, d_model, bias=bias)

    # ------------------------------------------------------------ which implementation

    def _fused_for(self, t: Tensor) -> bool:
        """Whether forward runs the fused kernels on tensors like `t`; impl='fused' raises where it cannot."""
        if self.impl == "reference":
            return False
        if self.impl == "auto":
            return t.is_cuda and t.dtype in FUSED_DTYPES and not _fused_unavailable(t.device)
        if not t.is_cuda:
            raise RuntimeError(f"impl='fused' needs CUDA tensors, got {t.device}")
        if t.dtype not in FUSED_DTYPES:
            raise RuntimeError(f"impl='fused' supports float32, float16 and bfloat16, got {t.dtype}")
        reason = _fused_unavailable(t.device)
        if reason:
            raise RuntimeError(f"impl='fused' cannot run: {reason}")
        return True

    @property
    def impl_used(self) -> str:
        """'fused' or 'reference': what forward runs for the parameters' current device and dtype."""
        return "fused" if self.impl == "fused" or self._fused_for(self.in_proj.weight) else "reference"

    # ------------------------------------------------------------ parallel mode

    def forward(self, x: Tensor) -> Tensor:
        if self._fused_for(x):
            return self._fused(x, with_state=False)[0]
        return self._reference(x)[0]

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, MambaState]:
        """Run x (B, L, d); the state holds the last d_conv inputs x̃ (zero-padded) and s_{L-1}."""
        return self._fused(x, with_state=True) if self._fused_for(x) else self._reference(x)

    def _conv_state(self, xs: Tensor) -> Tensor:
        """x̃ (B, E, L) -> its last d_conv columns (B, E, d_conv), zero-padded on the left when L < d_conv."""
        return F.pad(xs, (self.d_conv - xs.shape[-1], 0))  # a negative pad crops

    def _reference(self, x: Tensor) -> tuple[Tensor, MambaState]:
        L = x.shape[1]
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, d) -> (B, L, 2E) -> 2 x (B, L, E)
        xs = xs.transpose(1, 2)  # (B, L, E) -> (B, E, L)
        a = F.silu(self.conv1d(xs)[..., :L]).transpose(1, 2)  # causal: (B, E, L + K - 1)[..., :L] -> (B, L, E)
        dt, B, C = self.x_proj(a).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (B, L, R + 2N)
        delta = F.softplus(_wide(self.dt_proj(dt)))  # (B, L, R) -> (B, L, E)
        A = -torch.exp(_wide(self.A_log))  # (E, N)
        y, last = selective_scan(_wide(a), delta, A, _wide(B), _wide(C))  # (B, L, E), (B, E, N)
        y = (y + a * self.D) * F.silu(z)
        return self.out_proj(y.to(x.dtype)), MambaState(self._conv_state(xs), last)

    def _fused(self, x: Tensor, with_state: bool) -> tuple[Tensor, MambaState | None]:
        """mamba_ssm.Mamba's forward: `mamba_inner_fn` when no state is wanted and causal_conv1d can take
        the width (2..4), else the conv in PyTorch and `selective_scan_fn`, which also returns s_{L-1}."""
        k, L = _fused_kernels()[0], x.shape[1]
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
        return out, MambaState(self._conv_state(xs), last.to(_wide(self.A_log).dtype)) if with_state else None

    # ------------------------------------------------------------ recurrent mode

    def init_state(self, batch_size: int) -> MambaState:
        w = self.in_proj.weight
        return MambaState(w.new_zeros(batch_size, self.d_inner, self.d_conv),
                          w.new_zeros(batch_size, self.d_inner, self.d_state, dtype=_wide(w).dtype))

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One token x_t (B, d) -> y_t (B, d) and a new state; `state` is left untouched."""
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, d) -> (B, 2E) -> 2 x (B, E)
        conv = torch.cat((state.conv[..., 1:], xs[..., None]), dim=-1)  # shift left, newest last: (B, E, K)
        a = (conv * self.conv1d.weight[:, 0]).sum(-1)  # (B, E, K) * (E, K) -> (B, E)
        if self.conv1d.bias is not None:
            a = a + self.conv1d.bias
        a = F.silu(a)
        dt, B, C = self.x_proj(a).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(_wide(self.dt_proj(dt)))  # (B, E)
        A = -torch.exp(_wide(self.A_log))  # (E, N)
        aw = _wide(a)
        ssm = torch.exp(delta[..., None] * A) * state.ssm + (delta * aw)[..., None] * _wide(B)[:, None, :]  # (B, E, N)
        y = (ssm @ _wide(C)[..., None])[..., 0] + aw * self.D  # (B, E, N) @ (B, N, 1) -> (B, E)
        y = y.to(x_t.dtype) * F.silu(z)
        return self.out_proj(y), MambaState(conv, ssm)

    def state_size(self, seq_len: int) -> int:
        """conv_state and ssm_state: E·(d_conv + N) floats, independent of the sequence length."""
        return self.d_inner * (self.d_conv + self.d_state)

    def activation_floats(self, seq_len: int) -> int:
        """Saved for backward per sequence by the reference path: the scan's decays and states (2·E·N
        per position) plus about ten E-wide tensors (projections, conv, SiLU, Δ, gate) and B, C. The
        fused kernels recompute the states in their backward and keep less: an upper bound for them."""
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        return seq_len * (self.d_model + E * (2 * N + 10) + 3 * N + R)
