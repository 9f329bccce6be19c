"""Deep mutual learning across architectures: `train_mutual`.

K models (typically K architectures under one seed) train side by side on the SAME batches. Member
k minimises its own loss plus a weighted pull towards its peers' predictions (Zhang et al., "Deep
Mutual Learning", 2018):

    loss_k = distance_weighted_ce(logits_k) + weight * mean_{j != k} KL(p_j || p_k)

averaged over every predicted position, with p = softmax(logits) and p_j held constant (detached),
so each member's gradient flows through its own model only. Peers that stopped early keep
answering from the weights they stopped with.

Everything else is `bench.train.train` per member: its optimiser groups and schedule, clipping,
validation, early stopping with best-weight restore, divergence. With weight = 0 the KL term is
never formed, and each member's random stream (dropout) is kept apart, so each member ends exactly
where `train(models[k], cfg, stream, validates[k], final_epoch, device)` would: weights and history,
bit for bit (tests/test_mutual.py). That is what makes "mutual vs independent" a clean comparison.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.config import TrainConfig
from bench.data.curriculum import TrainStream
from bench.train import Member, SeedResult, Validate, distance_weighted_ce, make_optimizer, validate_member

RngState = tuple[Tensor, Tensor | None]  # (CPU state, CUDA state or None)


def peer_kl(log_p: Tensor, peers: Sequence[Tensor]) -> Tensor:
    """Mean over peers j of KL(p_j || p), averaged over positions; log-probabilities (..., V), peers detached.

    A peer whose predictions are not finite (it diverged since the last validation, where divergence
    is detected) is left out of the mean without a host sync, so it cannot poison the others."""
    own = log_p.flatten(0, -2)
    total, count = own.new_zeros(()), own.new_zeros(())
    for q in peers:
        ok = torch.isfinite(q).all()
        q = torch.where(ok, q.flatten(0, -2), own.detach())  # a left-out peer: KL(p || p) = 0, gradient 0
        total = total + F.kl_div(own, q, log_target=True, reduction="batchmean")
        count = count + ok
    return total / count.clamp(min=1)


def train_mutual(models: Sequence[nn.Module], cfg: TrainConfig | Sequence[TrainConfig], stream: TrainStream,
                 validates: Sequence[Validate], weight: float, final_epoch: float = 0.0,
                 device: torch.device | str = "cpu", rng_states: Sequence[RngState] | None = None,
                 ) -> list[SeedResult]:
    """Train `models` in place, jointly, on `stream`'s batches; `validates[k]` validates member k.

    `cfg` is one TrainConfig, or one per member (each architecture's own tuned learning rate); the
    members share the budget, batches and validation schedule (steps, batch_size, val_every).
    `rng_states[k]` is the torch random state member k's `train` would have started from (the
    study engine builds each model under its own seed; default: the current state for all).
    Returns one result per model, in order: `train`'s TrainResult plus `error`, set where `train`
    would have raised TrainingDiverged; a diverged member leaves the cohort, the others train on.
    Each model ends with its best weights under early stopping, else its final ones, as `train`
    leaves it.
    """
    if len(models) < 2:
        raise ValueError(f"mutual learning needs at least two models, got {len(models)}")
    if len(validates) != len(models):
        raise ValueError(f"got {len(models)} models and {len(validates)} validators")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"mutual weight must be a non-negative number, got {weight}")
    cfgs = [cfg] * len(models) if isinstance(cfg, TrainConfig) else list(cfg)
    if len(cfgs) != len(models):
        raise ValueError(f"got {len(models)} models and {len(cfgs)} training configs")
    if len({(c.steps, c.batch_size, c.val_every) for c in cfgs}) > 1:
        raise ValueError("members must share steps, batch_size and val_every: one budget, the same batches")
    cfg = cfgs[0]
    device = torch.device(device)
    members = [Member(m.to(device).train(), stream, v) for m, v in zip(models, validates, strict=True)]
    optims = [make_optimizer(m.model, c) for m, c in zip(members, cfgs, strict=True)]
    params = [[p for p in m.model.parameters() if p.requires_grad] for m in members]
    rng = [rng_state(device)] * len(members) if rng_states is None else list(rng_states)
    running = torch.zeros(len(members), device=device)
    n_running = 0
    tokens_per_step = cfg.batch_size * (stream.length - 1)
    start = time.perf_counter()
    for step in range(cfg.steps):
        batch = stream.batch(step).to(device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        alive = [k for k, m in enumerate(members) if m.res.error is None]  # diverged members leave
        logits: dict[int, Tensor] = {}
        for k in alive:
            m = members[k]
            if m.done and weight == 0:
                continue
            setrng_state(rng[k], device)
            with torch.set_grad_enabled(not m.done):  # a stopped peer answers from the weights it stopped with
                logits[k] = m.model(inputs)
            rng[k] = rng_state(device)
        log_p = {k: F.log_softmax(x.float().detach(), -1) for k, x in logits.items()} if weight > 0 else {}
        for k in alive:
            m = members[k]
            if m.done:
                continue
            loss = distance_weighted_ce(logits[k], targets, cfgs[k].alpha, cfgs[k].distance_weight)
            peers = [q for j, q in log_p.items() if j != k]
            if peers:
                loss = loss + weight * peer_kl(F.log_softmax(logits[k].float(), -1), peers)
            opt, sched = optims[k]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params[k], cfgs[k].grad_clip)
            opt.step()
            sched.step()
            running[k] += loss.detach()
            m.res.steps, m.res.tokens = step + 1, (step + 1) * tokens_per_step
        n_running += 1
        steps = step + 1
        if steps % cfg.val_every and steps != cfg.steps:
            continue

        train_losses = (running / n_running).tolist()  # the one host sync per epoch
        running.zero_()
        n_running = 0
        epoch = steps / cfg.val_every
        for k, m in enumerate(members):
            if m.done:
                continue
            validate_member(m, cfgs[k], train_losses[k], epoch, optims[k][1].get_last_lr()[0], final_epoch)
            if m.done and m.res.error is None:  # stopped early: from now on it answers as its final model
                _finalise(m, cfgs[k])
            if m.done or steps == cfg.steps:
                m.res.wall_s = time.perf_counter() - start
        if all(m.done for m in members):
            break
    for m, c in zip(members, cfgs, strict=True):
        if m.res.error is None:
            _finalise(m, c)
    return [m.res for m in members]


def _finalise(m: Member, cfg: TrainConfig) -> None:
    """What `train` does on return: the best weights under early stopping, else the final ones; eval mode."""
    if cfg.early_stopping and m.best_state is not None:
        m.model.load_state_dict(m.best_state)
    m.model.eval()


def rng_state(device: torch.device) -> RngState:
    """torch's random state, with the device's when it is a GPU (dropout draws from it there)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def setrng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
