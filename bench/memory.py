"""Training-memory estimate per configuration, so the study engine prunes what cannot fit before it trains.

The design estimates memory as embedding + per-layer activations + batch, times 2-3 for backward.
Here the same idea is made exact per architecture: every mixer states the activation floats one
training forward keeps for backward (`activation_floats`, checked against autograd in the tests),
the backbone adds its own (norms, FFN, head, loss), and parameters count four times (weights,
gradients, AdamW's two moments). `measured_bytes` reads what autograd really saves, to record beside
the estimate; on CUDA the study engine also records the allocator's peak.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.models import VOCAB, ModelConfig, SequenceModel, build_model

# weights + gradients + AdamW exp_avg + exp_avg_sq, per parameter
PARAM_COPIES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    params: int  # parameter count
    param_bytes: int  # weights, gradients and optimiser state
    activation_bytes: int  # what one training step keeps for backward, whole batch
    total_bytes: int

    def __str__(self) -> str:
        return f"{self.total_bytes / 2**30:.2f} GiB ({self.params:,} parameters, batch activations " \
               f"{self.activation_bytes / 2**30:.2f} GiB)"


def model_on_meta(cfg: ModelConfig) -> SequenceModel:
    """The model with shapes but no storage: sizing a 10 GB configuration allocates nothing."""
    with torch.device("meta"):
        return build_model(cfg)


def backbone_activation_floats(model: SequenceModel, seq_len: int) -> int:
    """Per sequence, outside the mixers: per block the two LayerNorms' inputs and statistics and the
    FFN's input, pre- and post-GELU hidden; then the final norm, the head's input, and the loss's
    log-softmax over 256 values per position."""
    d, f = model.cfg.d_model, model.cfg.ffn_mult * model.cfg.d_model
    block = 3 * d + 4 + 2 * f
    head = 2 * d + 2 + VOCAB + 2
    return seq_len * (model.cfg.num_layers * block + head)


def estimate(model: SequenceModel, batch_size: int, seq_len: int, bytes_per_float: int = 4) -> MemoryEstimate:
    """Training memory of one optimiser step on `batch_size` sequences of `seq_len` input positions."""
    params = sum(p.numel() for p in model.parameters())
    per_seq = backbone_activation_floats(model, seq_len) + sum(
        block.mixer.activation_floats(seq_len) for block in model.blocks)
    param_bytes = PARAM_COPIES * params * bytes_per_float
    activation_bytes = batch_size * per_seq * bytes_per_float
    return MemoryEstimate(params, param_bytes, activation_bytes, param_bytes + activation_bytes)


def saved_bytes(module: nn.Module, *inputs: Tensor, with_loss: bool = False) -> int:
    """Bytes autograd keeps for backward in one forward of `module` (parameters excluded; tensors
    sharing storage counted once), plus the loss's log-softmax over the output when `with_loss`.
    Runs the forward; cheap next to a training run."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[tuple, int] = {}

    def pack(t: Tensor) -> Tensor:
        if (t.is_floating_point() or t.is_complex()) and t.untyped_storage().data_ptr() not in params:
            saved[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*inputs)
        if with_loss:  # as training does: cross-entropy keeps the log-softmax of the logits
            torch.log_softmax(out.float(), dim=-1)
    return sum(saved.values())


def measured_bytes(model: SequenceModel, batch: Tensor) -> int:
    """Parameters x PARAM_COPIES plus the activations autograd saves on `batch` (B, L+1) of tokens."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return PARAM_COPIES * params + saved_bytes(model, batch[:, :-1], with_loss=True)
