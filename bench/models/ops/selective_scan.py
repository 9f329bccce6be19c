"""Mamba's selective scan, apart from the mixer that calls it (as mamba_ssm keeps `ops/` beside
`modules/`): the literal recurrence, the chunked CPU scan with its hand-written backward, and the
probe of mamba_ssm's fused CUDA kernels.

    s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t u_t B_t,   y_t = Σ_n C_t s_t     (per inner channel, N states)

* `sequential_scan`: one Python step per position, autograd through the loop; the oracle of
  tests/test_mamba.py, as `selective_scan_ref` is mamba_ssm's.
* `selective_scan`: the same function computed in O(√L) Python steps instead of O(L) wherever one
  step's work is small enough for Python's overhead to matter, with its own backward (the adjoint
  recurrence), so autograd keeps no graph over time. benchmarks/mamba_scan.py times the two.
* `fused_kernels` / `fused_unavailable`: mamba_ssm's `selective_scan_fn` and `mamba_inner_fn` (and
  causal_conv1d's conv). mamba_ssm cannot even be imported without its compiled extension, so it is
  imported lazily, and a kernel that imports is trusted only after one tiny call has run on the
  device; any failure is kept as the reason a "fused" request names.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bench.util import first_line

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what selective_scan_cuda is built for
SEQUENTIAL_MAX_LEN = 32  # sequences up to this length are scanned step by step: a loop is cheapest there
CPU_SLICE_FLOATS = 2**17  # on CPU, chunks scanned side by side are capped so one step's slice stays in cache
CPU_CAP_MAX_LEN = 512  # ... but only up to this length: longer sequences are always chunked (about 2√L steps)


def widen(t: Tensor) -> Tensor:
    """`t` in the scan's dtype: float32, or float64 for float64 inputs, whatever the activation dtype."""
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
    (two extra passes over (B, L, E, N)) would cost more than the steps it saves (reports/perf,
    "Figures behind the mixers' design choices"). The cap stops at CPU_CAP_MAX_LEN, so a long sequence is never a loop
    over time. Sequences up to SEQUENTIAL_MAX_LEN are one chunk.
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


def _why(e: BaseException) -> str:
    """One line naming the exception's type and message, for the reason a "fused" request reports."""
    return f"{type(e).__name__}: {first_line(e)}"


@functools.cache
def fused_kernels() -> tuple[SimpleNamespace | None, str]:
    """(kernels, "") once mamba_ssm imports, else (None, why not). Imported on first need only."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception as e:  # no compiled selective_scan_cuda, no CUDA torch, missing triton, ...
        return None, f"mamba_ssm does not import ({_why(e)})"
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # optional: mamba_ssm.Mamba also runs its scan without the fused conv
        causal_conv1d_fn = None
    return SimpleNamespace(mamba_inner_fn=mamba_inner_fn, selective_scan_fn=selective_scan_fn,
                           causal_conv1d_fn=causal_conv1d_fn), ""


def probe_kernels(kernels: SimpleNamespace, device: torch.device) -> str:
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
        return f"mamba_ssm's kernels failed a test call on {device} ({_why(e)})"
    return ""


@functools.cache
def fused_unavailable(device: torch.device) -> str:
    """Why the fused kernels cannot run on the CUDA `device` ("" when they can); checked once per device."""
    kernels, reason = fused_kernels()
    missing = [m for m in ("" if torch.cuda.is_available() else "CUDA is not available", reason) if m]
    return " and ".join(missing) if missing else probe_kernels(kernels, device)
