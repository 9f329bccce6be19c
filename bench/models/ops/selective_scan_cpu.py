"""Mamba's selective scan fused for the CPU: one compiled loop over time per (batch, inner channel),
the N-vector state in local memory, so nothing of size (B, L, E, N) is ever allocated.

    s_t = exp(Δ_t A) ⊙ s_{t-1} + Δ_t u_t B_t,   y_t = Σ_n C_t s_t     (per inner channel, N states)

`fused_cpu_scan` has the contract of `selective_scan` in selective_scan.py (same five inputs, same
outputs y and s_{L-1}, differentiable in all five) and is tested against the same literal recurrence.
The chunked PyTorch scan spends its time writing and reading (B, L, E, N) tensors; here the work per
step is N multiply-adds and N exponentials on values already in registers, which is what the
arithmetic of the scan really costs (reports/perf).

Forward: parallel over (batch, channel), each a loop over time (on one torch thread, plain loops).
Backward: parallel over (batch, channel group); for each channel the states are first recomputed
into an (L, N) scratch buffer (one per task, reused: the working set of one channel, never the whole
tensor), then the adjoint recurrence runs backwards in time, g_t = exp(Δ_{t+1} A) ⊙ g_{t+1} +
C_t ∂loss/∂y_t. ∂B and ∂C sum over channels, so each channel group owns its own slice of them
(summed afterwards), and ∂A sums over the batch the same way: no two threads write one value.

Compiled with numba (a dependency: its wheels bring their own LLVM, so no compiler is needed on the
user's machine), cached on disk beside this file or in the user's cache directory. `unavailable()`
compiles and runs one tiny scan once per process and keeps the reason when that fails; the mixer
then falls back to the chunked scan. numba's threads follow torch.get_num_threads(), so a study
worker that runs torch on one thread runs the scan on one thread too.
"""

from __future__ import annotations

import functools
import math

import numba
import numba.extending
import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from bench.util import first_line

SCAN_DTYPES = (torch.float32, torch.float64)  # what the kernels are compiled for (the scan's dtypes, see widen)


FASTMATH = {"contract", "reassoc"}  # fused multiply-adds and reordered sums (vectorised), but inf and nan kept


@numba.extending.intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE bits are the int32 `bits`: 2^k as ((k + 127) << 23), without a call."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(numba.types.float32))
    return numba.types.float32(numba.types.int32), codegen


def exp(x: float) -> float:
    """exp(x) inside the kernels: in float32 a polynomial the compiler can vectorise (libm's expf is a
    call per element, the scan's main cost); in float64 math.exp, for the float64 tests' accuracy."""
    return math.exp(x)


@numba.extending.overload(exp)
def _exp_kernel(x):  # pragma: no cover - compiled
    if x != numba.types.float32:
        return lambda x: math.exp(x)

    def exp32(x):
        """Cephes' expf: x = k ln 2 + r with |r| <= ln2 / 2, e^r by a degree-7 polynomial (relative error
        below 1e-7, as expf), times 2^k; x is clamped to float32's normal range first."""
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
        r = x - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    return exp32


def _forward_loop(u, delta, A, B, C, y, last):  # pragma: no cover - compiled
    """y (b, L, E) and last (b, E, N) from u, delta (b, L, E), A (E, N), B, C (b, L, N)."""
    batch, L, E = u.shape
    N = A.shape[1]
    for be in numba.prange(batch * E):
        b, e = be // E, be % E
        s = np.zeros(N, dtype=u.dtype)
        for t in range(L):
            d = delta[b, t, e]
            du = d * u[b, t, e]
            acc = u.dtype.type(0)
            for n in range(N):
                s[n] = exp(d * A[e, n]) * s[n] + du * B[b, t, n]
                acc += C[b, t, n] * s[n]
            y[b, t, e] = acc
        last[b, e, :] = s


def _backward_loop(u, delta, A, B, C, gy, glast, gu, gdelta, gA, gB, gC):  # pragma: no cover - compiled
    """The adjoint scan. Writes gu, gdelta (b, L, E) and the partial sums gA (b, E, N) over time and
    gB, gC (b, G, L, N) over the channels of each of G groups; the caller sums gA over b and gB, gC
    over G. Per channel: the states forward, the adjoint g_t backward (the only recurrences), then the
    gradients, each pass a short loop over N that writes one or two arrays: the compiler must prove
    every written array apart from the others to vectorise a loop, and one loop writing five (as the
    merged passes did) ran the backward at 1.4x the time (20.6 ms against 14.8 ms at b 64, L 64, E 128)."""
    batch, L, E = u.shape
    N = A.shape[1]
    G = gB.shape[1]
    per_group = -(-E // G)
    for bg in numba.prange(batch * G):
        b, grp = bg // G, bg % G
        states = np.zeros((L + 1, N), dtype=u.dtype)  # states[t + 1] = s_t of one channel, states[0] = 0
        decays = np.empty((L, N), dtype=u.dtype)  # exp(Δ_t A) of the same channel
        adjoint = np.empty((L, N), dtype=u.dtype)  # g_t = ∂loss/∂s_t
        carry = np.empty(N, dtype=u.dtype)  # exp(Δ_t A) ⊙ g_t, g_{t-1}'s share from later positions
        part_B = np.zeros((L, N), dtype=u.dtype)  # this group's share of ∂B, ∂C
        part_C = np.zeros((L, N), dtype=u.dtype)
        dA = np.empty(N, dtype=u.dtype)
        for e in range(grp * per_group, min(E, (grp + 1) * per_group)):
            for t in range(L):
                d = delta[b, t, e]
                du = d * u[b, t, e]
                for n in range(N):
                    decays[t, n] = exp(d * A[e, n])
                    states[t + 1, n] = decays[t, n] * states[t, n] + du * B[b, t, n]
            for n in range(N):
                carry[n] = glast[b, e, n]
                dA[n] = 0.0
            for i in range(L):
                t = L - 1 - i
                gyt = gy[b, t, e]
                for n in range(N):
                    adjoint[t, n] = carry[n] + gyt * C[b, t, n]
                    carry[n] = adjoint[t, n] * decays[t, n]
            for t in range(L):
                d = delta[b, t, e]
                g_du = u.dtype.type(0)  # ∂loss/∂(Δ_t u_t)
                g_dA = u.dtype.type(0)  # Σ_n ∂loss/∂(Δ_t A_n) A_n, the decay's share of ∂loss/∂Δ_t
                for n in range(N):
                    g_du += adjoint[t, n] * B[b, t, n]
                    x = adjoint[t, n] * decays[t, n] * states[t, n]  # ∂loss/∂(Δ_t A_n); s_{-1} = 0
                    g_dA += x * A[e, n]
                    dA[n] += x * d
                gu[b, t, e] = d * g_du
                gdelta[b, t, e] = u[b, t, e] * g_du + g_dA
            for t in range(L):
                gyt, du = gy[b, t, e], delta[b, t, e] * u[b, t, e]
                for n in range(N):
                    part_C[t, n] += gyt * states[t + 1, n]
                for n in range(N):
                    part_B[t, n] += du * adjoint[t, n]
            for n in range(N):
                gA[b, e, n] = dA[n]
        gB[b, grp] = part_B
        gC[b, grp] = part_C


# One thread (study workers, tests): plain loops, cached on disk. Several: the same loops with prange
# spread over numba's threads, compiled once per process (numba's cache index does not tell the two
# compilations of one function apart, so only one of them may be cached).
_forward = numba.njit(cache=True, nogil=True, fastmath=FASTMATH)(_forward_loop)
_backward = numba.njit(cache=True, nogil=True, fastmath=FASTMATH)(_backward_loop)
_forward_parallel = numba.njit(parallel=True, nogil=True, fastmath=FASTMATH)(_forward_loop)
_backward_parallel = numba.njit(parallel=True, nogil=True, fastmath=FASTMATH)(_backward_loop)


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    return [t.detach().contiguous().numpy() for t in tensors]


_probing = False  # set while `unavailable()` runs its test call: serial (disk-cached) kernels only


def _follow_torch_threads() -> int:
    """Run numba on as many threads as torch (never more than numba started with); returns that number.
    On one thread the serial kernels run and numba starts no thread pool at all."""
    if _probing:
        return 1
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if n > 1 and numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


class _FusedScan(torch.autograd.Function):
    """The compiled scan with its compiled backward; saves only the five inputs (no states)."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
        kernel = _forward if _follow_torch_threads() == 1 else _forward_parallel
        u, delta, A, B, C = (t.detach().contiguous() for t in (u, delta, A, B, C))
        y, last = torch.empty_like(u), u.new_empty(u.shape[0], u.shape[2], A.shape[1])
        kernel(*_arrays(u, delta, A, B, C), y.numpy(), last.numpy())
        ctx.save_for_backward(u, delta, A, B, C)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor) -> tuple[Tensor, ...]:
        u, delta, A, B, C = ctx.saved_tensors
        (batch, L, E), N = u.shape, A.shape[1]
        threads = _follow_torch_threads()
        groups = min(E, -(-threads // batch))  # enough (batch, group) tasks for every thread
        kernel = _backward if threads == 1 else _backward_parallel
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gA = u.new_empty(batch, E, N)
        gB, gC = (u.new_empty(batch, groups, L, N) for _ in range(2))
        kernel(*_arrays(u, delta, A, B, C, grad_y.to(u.dtype), grad_last.to(u.dtype)),
               *(t.numpy() for t in (gu, gdelta, gA, gB, gC)))
        return gu, gdelta, gA.sum(0), gB.sum(1), gC.sum(1)


def fused_cpu_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """`selective_scan`'s contract on CPU tensors of one dtype, float32 or float64; differentiable in all five."""
    dtypes = {t.dtype for t in (u, delta, A, B, C)}
    if len(dtypes) != 1 or not dtypes <= set(SCAN_DTYPES) or any(t.device.type != "cpu" for t in (u, delta, A, B, C)):
        raise TypeError(f"fused_cpu_scan takes CPU tensors of one dtype, float32 or float64; got "
                        f"{sorted(map(str, dtypes))} on {sorted({str(t.device) for t in (u, delta, A, B, C)})}")
    with torch.autocast("cpu", enabled=False):
        return _FusedScan.apply(u, delta, A, B, C)


@functools.cache
def unavailable() -> str:
    """Why the compiled scan cannot run here ("" when it can): one tiny forward and backward per dtype,
    compiled (or loaded from the cache) on first need and checked against finite outputs.

    It runs the serial kernels on CPU tensors whatever the caller's default device (config validation
    builds models on the meta device) and thread count, so asking costs a cache load, not a compile
    of the parallel kernels and a thread pool in a process that may never scan. Gradients are on for
    the probe whatever the caller's mode: a first scan under `torch.no_grad()` (an evaluation) must not
    fail the backward check and send the whole process to the slower fallback."""
    global _probing
    _probing = True
    try:
        with torch.device("cpu"), torch.enable_grad():
            _probe()
    except Exception as e:  # numba cannot compile here (no LLVM target, an unwritable and broken cache, ...)
        return f"the compiled CPU scan failed a test call ({type(e).__name__}: {first_line(e)})"
    finally:
        _probing = False
    return ""


def _probe() -> None:
    """One tiny forward and backward per dtype (batch 1, length 2, one channel, one state)."""
    for dtype in SCAN_DTYPES:
        u = torch.ones(1, 2, 1, dtype=dtype, requires_grad=True)
        B = C = torch.ones(1, 2, 1, dtype=dtype)
        y, last = fused_cpu_scan(u, u.detach().abs(), -torch.ones(1, 1, dtype=dtype), B, C)
        (y.sum() + last.sum()).backward()
        if not (torch.isfinite(y).all() and torch.isfinite(u.grad).all()):
            raise RuntimeError("non-finite output")
