"""Deep mutual learning across architectures: `train_mutual`.

K models (typically K architectures under one seed) train side by side on the SAME batches. Member
k minimises its own loss plus a weighted pull towards its peers' predictions (Zhang et al., "Deep
Mutual Learning", 2018):

    loss_k = distance_weighted_ce(logits_k) + weight * mean_{j != k} KL(p_j || p_k)

averaged over every predicted position, with p = softmax(logits) and p_j held constant (detached),
so each member's gradient flows through its own model only. Peers that stopped early keep
answering from the weights they stopped with.

The KL pull is the coupling term of `bench.train.train_cohort`, the one training loop: everything
else is `bench.train.train` per member (optimiser groups and schedule, clipping, validation, early
stopping with best-weight restore, divergence). With weight = 0 the KL term is never formed, and
each member's random stream (dropout) is kept apart, so each member ends exactly where
`train(models[k], cfg, stream, validates[k], final_epoch, device)` would: weights and history, bit
for bit (tests/test_mutual.py). That is what makes "mutual vs independent" a clean comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.data.curriculum import TrainStream
from bench.train import RngState, TrainConfig, TrainResult, Validate, rng_state, setrng_state, train_cohort

__all__ = ["peer_kl", "rng_state", "setrng_state", "train_mutual"]


def peer_kl(log_p: Tensor, peers: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """Mean over peers j of KL(p_j || p), averaged over positions (only those `mask`, log_p's shape
    without V, scores); log-probabilities (..., V), peers detached.

    A peer whose predictions are not finite (it diverged since the last validation, where divergence
    is detected) is left out of the mean without a host sync, so it cannot poison the others."""
    own = log_p.flatten(0, -2)
    keep = None if mask is None else mask.reshape(-1, 1).to(own.dtype)
    total, count = own.new_zeros(()), own.new_zeros(())
    for q in peers:
        ok = torch.isfinite(q).all()
        q = torch.where(ok, q.flatten(0, -2), own.detach())  # a left-out peer: KL(p || p) = 0, gradient 0
        if keep is None:
            total = total + F.kl_div(own, q, log_target=True, reduction="batchmean")
        else:
            kl = F.kl_div(own, q, log_target=True, reduction="none") * keep
            total = total + kl.sum() / keep.sum().clamp(min=1)
        count = count + ok
    return total / count.clamp(min=1)


def train_mutual(models: Sequence[nn.Module], cfg: TrainConfig | Sequence[TrainConfig], stream: TrainStream,
                 validates: Sequence[Validate], weight: float, final_epoch: float = 0.0,
                 device: torch.device | str = "cpu", rng_states: Sequence[RngState] | None = None,
                 ) -> list[TrainResult]:
    """Train `models` in place, jointly, on `stream`'s batches; `validates[k]` validates member k.

    `cfg` is one TrainConfig, or one per member (each architecture's own tuned learning rate); the
    members share the budget, batches and validation schedule (steps, batch_size, val_every).
    `rng_states[k]` is the torch random state member k's `train` would have started from (the
    study engine builds each model under its own seed; default: the current state for all).
    Returns one result per model, in order: `train`'s TrainResult, with `error` set where `train`
    would have raised TrainingDiverged; a diverged member leaves the cohort, the others train on.
    Each model ends with its best weights under early stopping, else its final ones, as `train`
    leaves it.
    """
    if len(models) < 2:
        raise ValueError(f"mutual learning needs at least two models, got {len(models)}")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"mutual weight must be a non-negative number, got {weight}")
    cfgs = [cfg] * len(models) if isinstance(cfg, TrainConfig) else list(cfg)
    device = torch.device(device)
    rng = [rng_state(device)] * len(models) if rng_states is None else list(rng_states)

    def kl_pull(k: int, logits: Tensor, peers: list[Tensor], mask: Tensor | None) -> Tensor:
        return weight * peer_kl(F.log_softmax(logits.float(), -1), peers, mask)

    return train_cohort(models, cfgs, stream, validates, final_epoch, device,
                        coupling=kl_pull if weight > 0 else None, rng_states=rng)
