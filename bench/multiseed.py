"""Train the S seeds of one configuration as one model with stacked weights: `train_seeds`.

The final stage trains each architecture's best configuration on several seeds. The models are
small, so a CPU step is largely fixed per-operation cost (Python, dispatch, autograd, the optimiser's
per-parameter loop), paid S times by S separate runs. `train_seeds` pays it once:

* each AdamW group's parameters, of every member, live in one flat (S, n) leaf, split per step into
  per-parameter views (S, *shape): one optimiser step and one clipping pass per group for everyone;
* the forward runs member-major, (S, B, L, d), as explicit batched operations: `baddbmm` for every
  linear map, one layer norm, FFT and attention over all S·B rows. The shared backbone is written
  out in `_Stack.logits` (mirroring `SequenceModel.forward`), each registered mixer in `GROUPED`
  (mirroring its forward and reusing its helpers; batch-independent kernels come from the mixer's
  own methods vmapped over the members; Mamba's scan and the fused LSTM run once per member, as
  their tensors then stay cache-sized). An unregistered mixer runs under `torch.func.vmap` whole.
  Not everything is vmapped because on a CPU a vmapped operation costs 3-8x a plain one (measured:
  linear 32 µs vs 4 µs), more than S = 3 plain calls;
* the design's loss per member, one backward, each member's own gradient norm clipped as
  `clip_grad_norm_` would, AdamW (elementwise, so stacking is exact) with `bench.train`'s groups and
  schedule; validation, early stopping (best weights restored) and divergence per member, each
  member's weights written into its own module for its `validate` callback. A member that stops
  (early or diverged) leaves the stack, so it stops changing while the others train on.

It pays where per-operation cost dominates: small steps (d_model 64, L 8). Once a step is
compute-bound (d_model 64, L 64, batch 32) it is no faster than separate runs, at times slower:
`python benchmarks/multiseed.py` measures both per architecture.

The result equals `bench.train.train(models[i], cfg, streams[i], validates[i], final_epoch, device)` for
every member to float tolerance (batched kernels sum in other orders): tests/test_multiseed.py checks
it for every mixer. Where `train` would raise `TrainingDiverged`, the member's result carries the
reason in `error` instead. Models that cannot be stacked (dropout > 0, whose masks could not follow
`train`'s random stream; mamba_ssm's fused kernels; another backbone; a mixer failing a one-step
probe) are trained one after another by `train`, and say why (`why_not_vectorisable`, `fallback`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from bench.config import TrainConfig
from bench.data.curriculum import TrainStream
from bench.models import VOCAB, SequenceModel
from bench.models.backbone import Block
from bench.models.liquid_s4 import LiquidS4
from bench.models.lstm import LSTMMixer
from bench.models.mamba import Mamba, _wide, selective_scan
from bench.models.s4d import S4D
from bench.models.sgconv import SGConv
from bench.models.stable_ssm import ACTIVATIONS, StableSSM, causal_fft_conv
from bench.models.transformer import Transformer, apply_rope
from bench.train import (
    Member,
    SeedResult,
    TrainingDiverged,
    TrainResult,
    Validate,
    distance_weighted_ce,
    lr_factor,
    param_groups,
    train,
    validate_member,
)

Params = dict[str, Tensor]  # local name -> stacked (S, *shape)


# ---------------------------------------------------------------- member-major building blocks


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """F.linear per member: x (S, ..., in), w (S, out, in), b (S, out) or None -> (S, ..., out)."""
    xs = x.reshape(x.shape[0], -1, x.shape[-1])  # (S, ..., in) -> (S, N, in)
    out = torch.bmm(xs, w.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None], xs, w.transpose(1, 2))
    return out.view(*x.shape[:-1], w.shape[1])


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """nn.LayerNorm over the last dim per member: w, b (S, d)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # (S, 1, ..., d)
    return torch.addcmul(b.view(shape), F.layer_norm(x, x.shape[-1:], eps=eps), w.view(shape))


def _conv1x1_glu(v: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Sequential(Conv1d(H, 2H, 1), GLU(dim=-2)) on v (S, B, H, L), returned transposed: (S, B, L, H)."""
    return F.glu(_linear(v.transpose(2, 3), w[..., 0], b), dim=-1)


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class _Method(nn.Module):
    """`module.<name>(*args)` as a forward, so functional_call can run any method of a mixer."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.module, self.name = module, name

    def forward(self, *args):
        return getattr(self.module, self.name)(*args)


def _per_member(mixer: nn.Module, name: str, tensors: Params, *args):
    """mixer.<name>(*args) of every member at once: the method vmapped over the stacked parameters.
    For what does not depend on the batch (SSM kernels), so a few vmapped operations per layer."""
    method = _Method(mixer, name)
    tensors = {f"module.{k}": v for k, v in tensors.items()}
    return vmap(lambda t: functional_call(method, t, args))(tensors)


# ---------------------------------------------------------------- grouped mixers: (S, B, L, d) -> (S, B, L, d)
# Each mirrors its mixer's training forward; `m` is a weightless copy of the mixer (settings only),
# `p` its parameters and buffers stacked over the members.


def _transformer(m: Transformer, p: Params, x: Tensor) -> Tensor:
    S, B, L, d = x.shape
    qkv = _linear(x, p["in_proj.weight"], p["in_proj.bias"]).view(S * B, L, 3, m.n_heads, m.d_head)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (S·B, L, 3, H, d_h) -> 3 x (S·B, H, L, d_h)
    if m.pos == "rope":
        t = torch.arange(L, device=x.device)
        q, k = apply_rope(q, t), apply_rope(k, t)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (S·B, H, L, d_h)
    return _linear(o.transpose(1, 2).reshape(S, B, L, d), p["out_proj.weight"], p["out_proj.bias"])


def _lstm(m: LSTMMixer, p: Params, x: Tensor) -> Tensor:
    """One fused LSTM call per member (its kernel is already one call for the whole sequence)."""
    lstm = m.lstm
    zeros = x.new_zeros(lstm.num_layers, x.shape[1], lstm.hidden_size)  # nn.LSTM's default (h0, c0)
    weights = zip(*(p[f"lstm.{n}"].unbind(0) for n in lstm._flat_weights_names), strict=True)
    return torch.stack([torch.lstm(xs, (zeros, zeros), list(ws), lstm.bias, lstm.num_layers, lstm.dropout,
                                   lstm.training, lstm.bidirectional, lstm.batch_first)[0]
                        for xs, ws in zip(x.unbind(0), weights, strict=True)])


def _mamba(m: Mamba, p: Params, x: Tensor) -> Tensor:
    """Mamba._reference; the depthwise conv takes the members as channel groups."""
    S, B, L, _ = x.shape
    E, K = m.d_inner, m.d_conv
    xs, z = _linear(x, p["in_proj.weight"], p.get("in_proj.bias")).chunk(2, dim=-1)  # 2 x (S, B, L, E)
    xc = xs.permute(1, 0, 3, 2).reshape(B, S * E, L)  # (S, B, L, E) -> (B, S·E, L)
    bias = p["conv1d.bias"].reshape(S * E) if "conv1d.bias" in p else None
    conv = F.conv1d(xc, p["conv1d.weight"].reshape(S * E, 1, K), bias, padding=K - 1, groups=S * E)[..., :L]
    a = F.silu(conv).view(B, S, E, L).permute(1, 0, 3, 2)  # (B, S·E, L) -> (S, B, L, E)
    dt, Bm, C = _linear(a, p["x_proj.weight"], None).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = F.softplus(_wide(_linear(dt, p["dt_proj.weight"], p["dt_proj.bias"])))  # (S, B, L, E)
    A = -torch.exp(_wide(p["A_log"]))  # (S, E, N)
    # One scan per member: its tensors (B, L, E, N) are what a separate run keeps in cache; folding the
    # members into one scan triples them and measured slower (page faults, cache misses) from L = 8.
    scans = zip(*(t.unbind(0) for t in (_wide(a), delta, A, _wide(Bm), _wide(C))), strict=True)
    y = torch.stack([selective_scan(*member)[0] for member in scans])  # (S, B, L, E)
    y = (y + a * p["D"][:, None, None]) * F.silu(z)
    return _linear(y.to(x.dtype), p["out_proj.weight"], p.get("out_proj.bias"))


def _s4d(m: S4D, p: Params, x: Tensor) -> Tensor:
    L = x.shape[2]
    u = x.transpose(2, 3)  # (S, B, L, H) -> (S, B, H, L)
    K = _per_member(m.kernel, "forward", _sub(p, "kernel."), L)  # (S, H, L)
    y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(K, n=2 * L)[:, None], n=2 * L)[..., :L]
    v = y + p["D"][:, None, :, None] * u
    return _conv1x1_glu(F.gelu(v), p["output_linear.0.weight"], p["output_linear.0.bias"])


def _stable_ssm(m: StableSSM, p: Params, x: Tensor) -> Tensor:
    L = x.shape[2]
    u = x.transpose(2, 3)  # (S, B, L, H) -> (S, B, H, L)
    kernel = _sub(p, "kernel.")
    v = causal_fft_conv(u, _per_member(m.kernel, "forward", kernel, L)[:, None]) + p["D"][:, None, :, None] * u
    if m.kernel.b is not None:
        v = v + _per_member(m.kernel, "bias_response", kernel, L)[:, None]
    return _conv1x1_glu(ACTIVATIONS[m.activation](v), p["output_linear.0.weight"], p["output_linear.0.bias"])


def _sgconv(m: SGConv, p: Params, x: Tensor) -> Tensor:
    L = x.shape[2]
    u = x.transpose(2, 3)  # (S, B, L, H) -> (S, B, H, L)
    k = _per_member(m, "kernel", p, L)  # (S, H, L)
    v = causal_fft_conv(u, k[:, None]) + p["D"][..., None] * u  # D (S, 1, H) -> (S, 1, H, 1); v (S, B, H, L)
    return F.glu(_linear(F.gelu(v.transpose(2, 3)), p["output_linear.weight"], p["output_linear.bias"]), dim=-1)


def _liquid_s4(m: LiquidS4, p: Params, x: Tensor) -> Tensor:
    S, B, L, _ = x.shape
    u = x.transpose(2, 3)  # (S, B, L, H) -> (S, B, H, L)
    phi = m.products(u.flatten(0, 1)).unflatten(0, (S, B))  # (S, B, P, H, L)
    K, kappa = _per_member(m, "_kernels", p, L)  # (S, n_kernels, H, L), (S, P-1, H)
    Phi = torch.fft.rfft(phi[:, :, :m.n_kernels], n=2 * L)  # (S, B, n_kernels, H, L+1)
    Y = torch.einsum("sbphf,sphf->sbhf", Phi, torch.fft.rfft(K, n=2 * L))
    v = torch.fft.irfft(Y, n=2 * L)[..., :L] + p["D"][:, None, :, None] * u  # (S, B, H, L)
    if m.liquid_kernel == "pb" and m.degree > 1:
        v = v + torch.einsum("sbphl,sph->sbhl", phi[:, :, 1:], kappa)
    return _conv1x1_glu(F.gelu(v), p["output_linear.0.weight"], p["output_linear.0.bias"])


def _vmapped(m: nn.Module, p: Params, x: Tensor) -> Tensor:
    """Any other mixer: its own forward, vmapped over the members."""
    return vmap(lambda t, xx: functional_call(m, t, (xx,)))(p, x)


GROUPED: dict[type[nn.Module], Callable[[nn.Module, Params, Tensor], Tensor]] = {
    LiquidS4: _liquid_s4, LSTMMixer: _lstm, Mamba: _mamba, S4D: _s4d, SGConv: _sgconv, StableSSM: _stable_ssm,
    Transformer: _transformer,
}


# ---------------------------------------------------------------- the stacked members


@dataclass
class _Bucket:
    """One AdamW group (one dtype) of every member: a flat (S, n) leaf and where each parameter lies."""

    names: list[str]
    shapes: list[torch.Size]
    lr: float  # the group's base learning rate (cfg.lr, or a mixer's cap)
    weight_decay: float
    flat: Tensor = field(repr=False)

    @property
    def numels(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]


class _Stack:
    """The members' parameters, stacked; `logits` runs all members at once."""

    def __init__(self, models: Sequence[nn.Module], cfg: TrainConfig, device: torch.device) -> None:
        self.device = device
        ref = models[0]
        named = [dict(m.named_parameters()) for m in models]
        names = {id(p): n for n, p in ref.named_parameters()}
        groups = param_groups(ref, cfg.lr, cfg.weight_decay)
        self.lr0 = groups[0]["lr"] if groups else cfg.lr  # the learning rate train() logs is group 0's
        self.buckets: list[_Bucket] = []
        for group in groups:
            by_dtype: dict[torch.dtype, list[str]] = {}
            for p in group["params"]:
                by_dtype.setdefault(p.dtype, []).append(names[id(p)])
            for ns in by_dtype.values():
                flat = torch.stack([torch.cat([params[n].detach().flatten() for n in ns]) for params in named])
                self.buckets.append(_Bucket(ns, [named[0][n].shape for n in ns], group["lr"], group["weight_decay"],
                                            flat.to(device).requires_grad_()))
        in_buckets = {n for b in self.buckets for n in b.names}
        self.frozen = {n: torch.stack([params[n].detach() for params in named]).to(device)
                       for n in named[0] if n not in in_buckets}
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]).to(device)
                        for n, _ in ref.named_buffers()}
        self.base = copy.deepcopy(ref).to("meta").train()  # settings only: every weight comes from the stack
        self.layers = [(f"blocks.{i}.", block, GROUPED.get(type(block.mixer), _vmapped))
                       for i, block in enumerate(self.base.blocks)]

    def tensors(self) -> Params:
        """Every parameter and buffer as (S, *shape); trainable ones are views of the flat leaves."""
        out = {**self.frozen, **self.buffers}
        for b in self.buckets:
            for name, shape, piece in zip(b.names, b.shapes, b.flat.split(b.numels, dim=1), strict=True):
                out[name] = piece.view(len(piece), *shape)  # (S, numel) -> (S, *shape)
        return out

    def logits(self, tokens: Tensor) -> Tensor:
        """tokens (S, B, L) -> logits (S, B, L, 256): SequenceModel.forward, member s with its own weights."""
        p = self.tensors()
        x = self._embed(p, tokens)
        for pre, block, grouped in self.layers:  # Block.forward: pre-norm residual mixer, then FFN
            h = _layer_norm(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"], block.norm1.eps)
            x = x + grouped(block.mixer, _sub(p, pre + "mixer."), h)
            h = _layer_norm(x, p[pre + "norm2.weight"], p[pre + "norm2.bias"], block.norm2.eps)
            h = F.gelu(_linear(h, p[pre + "ffn.0.weight"], p[pre + "ffn.0.bias"]), approximate=block.ffn[1].approximate)
            x = x + _linear(h, p[pre + "ffn.2.weight"], p[pre + "ffn.2.bias"])
        x = _layer_norm(x, p["norm.weight"], p["norm.bias"], self.base.norm.eps)
        return _linear(x, p["head.weight"], p["head.bias"])

    def _embed(self, p: Params, tokens: Tensor) -> Tensor:
        """SequenceModel._embed at start 0: (S, B, L) -> (S, B, L, d)."""
        w = p["embed.weight"]
        if self.base.cfg.embedding == "learned":  # member s's table as rows s·V .. s·V + V - 1 of one table
            offset = torch.arange(0, tokens.shape[0] * w.shape[1], w.shape[1], device=tokens.device)
            return F.embedding(tokens + offset[:, None, None], w.reshape(-1, w.shape[-1]))
        value = tokens.to(w.dtype) / (VOCAB - 1)  # (S, B, L)
        pos = torch.arange(tokens.shape[-1], device=tokens.device, dtype=w.dtype)
        pos = (pos / max(self.base.cfg.max_len - 1, 1)).expand_as(value)
        return _linear(torch.stack((value, pos), dim=-1), w, p["embed.bias"])  # (S, B, L, 2) -> (S, B, L, d)

    def clip_(self, max_norm: float) -> None:
        """Per member, clip_grad_norm_ over all of its gradients: scale by max_norm / (‖g‖ + 1e-6), at most 1."""
        grads = [b.flat.grad for b in self.buckets]
        norms = torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads])  # (buckets, S)
        coef = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)  # (S,)
        for g in grads:
            g.mul_(coef.to(g.dtype)[:, None])

    def write_back(self, slot: int, model: nn.Module) -> None:
        """Copy member `slot`'s current weights into its own module."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for b in self.buckets:
                for name, piece in zip(b.names, b.flat[slot].split(b.numels), strict=True):
                    params[name].copy_(piece.view_as(params[name]))

    def optimizer(self, cfg: TrainConfig) -> torch.optim.AdamW:
        """AdamW over the flat leaves, one group per bucket with bench.train's group settings."""
        groups = [{"params": [b.flat], "lr": b.lr, "weight_decay": b.weight_decay} for b in self.buckets]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    def set_lr(self, opt: torch.optim.AdamW, step: int, cfg: TrainConfig) -> None:
        """The learning rate of `step` as LambdaLR sets it in bench.train: base_lr * lr_factor(step)."""
        factor = lr_factor(step, cfg)
        for group, b in zip(opt.param_groups, self.buckets, strict=True):
            group["lr"] = b.lr * factor

    def keep_(self, slots: list[int], opt: torch.optim.AdamW, cfg: TrainConfig) -> torch.optim.AdamW:
        """Drop every member not in `slots`, optimiser state included; returns the optimiser of the rest."""
        index = torch.tensor(slots, device=self.device)
        states = [opt.state.get(b.flat, {}) for b in self.buckets]
        for b in self.buckets:
            b.flat = b.flat.detach().index_select(0, index).requires_grad_()
        self.frozen = {n: t.index_select(0, index) for n, t in self.frozen.items()}
        self.buffers = {n: t.index_select(0, index) for n, t in self.buffers.items()}
        new = self.optimizer(cfg)
        for b, state in zip(self.buckets, states, strict=True):
            new.state[b.flat] = {k: v if k == "step" else v.index_select(0, index) for k, v in state.items()}
        return new


# ---------------------------------------------------------------- can a model be stacked?


def _backbone_reason(model: nn.Module) -> str:
    """"" when `model` is the backbone `_Stack.logits` writes out, else what differs."""
    if type(model) is not SequenceModel:
        return f"{type(model).__name__} is not bench's SequenceModel"
    if model.cfg.dropout > 0:
        return "dropout > 0: its masks could not follow train()'s random stream"
    emb = model.embed
    if isinstance(emb, nn.Embedding) and (emb.padding_idx, emb.max_norm, emb.scale_grad_by_freq, emb.sparse) != (
            None, None, False, False):
        return "an embedding with padding_idx, max_norm, scale_grad_by_freq or sparse"
    norms = [model.norm] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
    if any(n.weight is None or n.bias is None or len(n.normalized_shape) != 1 for n in norms):
        return "a LayerNorm without affine weights"
    for b in model.blocks:
        if type(b) is not Block or [type(f) for f in b.ffn] != [nn.Linear, nn.GELU, nn.Linear]:
            return "a block other than norm -> mixer -> norm -> Linear, GELU, Linear"
    for name, m in model.named_modules():
        if getattr(m, "impl_used", "reference") != "reference":
            return f"{name} runs mamba_ssm's fused kernels"
    return ""


def why_not_vectorisable(model: nn.Module) -> str:
    """Why `train_seeds` would train copies of `model` one after another ("" when it stacks them).

    The backbone must be the one `_Stack.logits` writes out; then a probe: one stacked forward and
    backward of two copies on a tiny batch must run, and every trainable parameter must get a gradient
    in the plain model (train()'s AdamW skips one without; a flat group would decay it)."""
    reason = _backbone_reason(model)
    if reason:
        return reason
    device = next(model.parameters()).device
    tokens = torch.zeros(1, 3, dtype=torch.long, device=device)
    try:
        with torch.enable_grad():
            _Stack([model, model], TrainConfig(), device).logits(torch.stack([tokens, tokens])).sum().backward()
    except Exception as e:  # e.g. an operation of an unknown mixer that vmap cannot batch
        return f"stacked probe failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.enable_grad():
        grads = torch.autograd.grad(model(tokens).sum(), [p for _, p in trainable], allow_unused=True)
    unused = [n for (n, _), g in zip(trainable, grads, strict=True) if g is None]
    return f"parameter {unused[0]} gets no gradient" if unused else ""


def vectorisable(model: nn.Module) -> bool:
    return not why_not_vectorisable(model)


# ---------------------------------------------------------------- training


def train_seeds(models: Sequence[nn.Module], cfg: TrainConfig, streams: Sequence[TrainStream],
                validates: Sequence[Validate], final_epoch: float = 0.0,
                device: torch.device | str = "cpu") -> list[SeedResult]:
    """Train every `models[i]` in place on `streams[i]`, validated by `validates[i]`, as
    `bench.train.train(models[i], cfg, streams[i], validates[i], final_epoch, device)` would, but all
    at once: one stacked forward, backward and AdamW step per step for all members.

    The models must be one configuration (same parameter names, shapes, dtypes and optimiser
    hints), typically `build_model(cfg)` under different init seeds, and the streams of one length.
    On return each holds its final weights, or its best with early stopping (a diverged member: its
    weights at the failure), as `train` leaves it. Results come in the order of `models`; a member
    `train` would have raised `TrainingDiverged` for has `error` set and its history up to then.
    `wall_s` is the joint run's time until that member ended. Models `why_not_vectorisable` refuses
    are trained one after another by `train` (with a warning and `fallback` set).
    """
    n = len(models)
    if not n == len(streams) == len(validates):
        raise ValueError(f"got {n} models, {len(streams)} streams and {len(validates)} validators")
    if len({s.length for s in streams}) > 1:
        raise ValueError(f"streams of different lengths {sorted({s.length for s in streams})} cannot be stacked")
    layouts = [[(k, p.shape, p.dtype, p.requires_grad, getattr(p, "_optim", {})) for k, p in m.named_parameters()]
               for m in models]
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError("train_seeds needs models of one configuration (same parameters, dtypes and hints)")
    device = torch.device(device)
    for m in models:
        m.to(device).train()
    reason = why_not_vectorisable(models[0]) if n > 1 else "a single model"
    if reason:
        if n > 1:
            warnings.warn(f"train_seeds: training {n} models one after another ({reason})", stacklevel=2)
        return [_train_alone(m, cfg, s, v, final_epoch, device, reason)
                for m, s, v in zip(models, streams, validates, strict=True)]
    return _train_stacked([Member(m, s, v) for m, s, v in zip(models, streams, validates, strict=True)],
                          cfg, final_epoch, device)


def _train_alone(model: nn.Module, cfg: TrainConfig, stream: TrainStream, validate: Validate, final_epoch: float,
                 device: torch.device, reason: str) -> SeedResult:
    """`train` itself, a divergence returned instead of raised."""
    try:
        res, error = train(model, cfg, stream, validate, final_epoch, device), None
    except TrainingDiverged as e:
        res, error = e.result or TrainResult(), str(e)
    return SeedResult(**dataclasses.asdict(res), error=error, fallback=reason)


def _train_stacked(members: list[Member], cfg: TrainConfig, final_epoch: float,
                   device: torch.device) -> list[SeedResult]:
    """bench.train.train's loop for all members at once (no checkpoint, no progress bar)."""
    stack = _Stack([m.model for m in members], cfg, device)
    opt = stack.optimizer(cfg)
    active = list(members)
    running = torch.zeros(len(active), device=device)
    n_running = 0
    tokens_per_step = cfg.batch_size * (members[0].stream.length - 1)
    start = time.perf_counter()
    for step in range(cfg.steps):
        batch = torch.stack([m.stream.batch(step).to(device, non_blocking=True) for m in active])  # (S, B, L)
        logits = stack.logits(batch[:, :, :-1])  # every position predicts the next value
        loss = distance_weighted_ce(logits, batch[:, :, 1:], cfg.alpha, cfg.distance_weight, reduce=False)
        loss = loss.flatten(1).mean(1)  # (S,): each member's own mean, as train() takes it
        for b in stack.buckets:
            b.flat.grad = None
        loss.sum().backward()
        stack.clip_(cfg.grad_clip)
        stack.set_lr(opt, step, cfg)
        opt.step()
        running += loss.detach()
        n_running += 1
        steps = step + 1
        for m in active:
            m.res.steps, m.res.tokens = steps, steps * tokens_per_step
        if steps % cfg.val_every and steps != cfg.steps:
            continue

        train_losses = (running / n_running).tolist()  # the one host sync per epoch
        running.zero_()
        n_running = 0
        epoch = steps / cfg.val_every
        lr = stack.lr0 * lr_factor(steps, cfg)  # sched.get_last_lr()[0] after this step, as train() logs it
        for slot, (m, train_loss) in enumerate(zip(active, train_losses, strict=True)):
            stack.write_back(slot, m.model)
            validate_member(m, cfg, train_loss, epoch, lr, final_epoch)
            if m.done or steps == cfg.steps:
                m.res.wall_s = time.perf_counter() - start
        keep = [slot for slot, m in enumerate(active) if not m.done]
        if not keep or steps == cfg.steps:
            break
        if len(keep) < len(active):  # out of the stack: it stops changing and costs nothing more
            opt = stack.keep_(keep, opt, cfg)
            running = running[keep]
            active = [active[slot] for slot in keep]
    for m in members:  # each holds its weights of its last validation, the current ones
        if m.res.error is None:
            if cfg.early_stopping and m.best_state is not None:  # without early stopping: the final weights
                m.model.load_state_dict(m.best_state)
            m.model.eval()
    return [m.res for m in members]
