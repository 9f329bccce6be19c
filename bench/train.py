"""Training per the design: distance-weighted CE over all prefixes, AdamW with per-parameter groups,
linear warmup + cosine decay, global grad-norm clipping, early stopping that restores the best weights.

One loop trains a cohort of models on the same batches (`train_cohort`): a run of one model is the
cohort of one (`train`), and mutual learning is a cohort whose members add a coupling term to their
loss (`bench.mutual`). The loop is kept free of per-step host syncs: the running losses stay on the
device and are read once per validation, which is also when the progress bar, history, early
stopping and checkpoint act.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from bench.data.curriculum import TrainStream
from bench.models import optim_hints
from bench.util import atomic_write

Validate = Callable[[nn.Module, int, float], dict[str, float]]
# (k, logits_k, peer_log_probs, scored mask or None) -> term of k's loss
Coupling = Callable[[int, Tensor, list[Tensor], Tensor | None], Tensor]
RngState = tuple[Tensor, Tensor | None]  # (CPU state, CUDA state or None)


@dataclass
class TrainConfig:
    steps: int = 2000  # step budget, identical for every architecture of a study
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-6  # cosine floor
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 5000  # the design's full-size warmup ...
    warmup_max_frac: float = 0.05  # ... capped at this fraction of `steps` for small budgets
    grad_clip: float = 1.0  # global grad-norm clip
    alpha: float = 0.1  # distance-weight scale in CE * (1 + alpha * w(|argmax - target|))
    distance_weight: str = "linear"  # linear | quadratic | sqrt
    val_every: int = 100  # steps per epoch: validation, early stopping and curriculum all count epochs
    early_stopping: bool = True  # off: train the whole budget and keep the final weights
    patience: int = 10  # validations without improvement before stopping
    min_delta: float = 0.001


DISTANCE_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda d: d,
    "quadratic": lambda d: d * d,
    "sqrt": torch.sqrt,
}


def distance_weighted_ce(logits: Tensor, targets: Tensor, alpha: float = 0.1, weight: str = "linear",
                         reduce: bool = True, mask: Tensor | None = None) -> Tensor:
    """CE * (1 + alpha * w(|argmax - target|)), the design's loss, averaged over every position, or
    over the positions `mask` (bool, targets' shape) scores: a family's unscored positions (noise, a
    lag's unpredictable first values, `Family.scored`) add nothing to the loss or its gradient
    (with reduce=False they come back as 0).

    The factor multiplies each position's cross-entropy; it is a constant for the gradient (argmax is
    piecewise constant), so it re-weights examples by how far off the current guess is.
    Design example: target 10, prediction peaking at 100 vs 11 -> w = 90 vs 1, a 90x larger distance term.
    logits (..., 256), targets (...) int64.
    """
    ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)
    dist = (logits.detach().argmax(-1) - targets).abs().to(ce.dtype)
    loss = ce * (1 + alpha * DISTANCE_WEIGHTS[weight](dist))
    if mask is None:
        return loss.mean() if reduce else loss
    loss = loss * mask
    return loss.sum() / mask.sum().clamp(min=1) if reduce else loss


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups honouring per-parameter settings.

    No weight decay on biases and norm weights (ndim < 2) and on embedding tables. A mixer declares
    hints where it makes a parameter (`bench.models.register`, S4-style SSM dynamics such as A_log,
    D, dt); `bench.models.optim_hints` reads them by qualified name: `weight_decay` replaces the
    default, `lr` caps the group's learning rate (min(lr, cap)).
    Parameters with equal settings share a group; groups keep a deterministic order.
    """
    hints = optim_hints(model)
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        hint = hints.get(name, {})
        wd = 0.0 if (p.ndim < 2 or id(p) in embedding_params) else weight_decay
        wd = hint.get("weight_decay", wd)
        group_lr = min(lr, hint["lr"]) if "lr" in hint else lr
        groups.setdefault((wd, group_lr), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr": glr} for (wd, glr), ps in groups.items()]


def warmup_steps(cfg: TrainConfig) -> int:
    """The design's 5000 warmup steps, capped at `warmup_max_frac` of the budget for small runs."""
    return min(cfg.warmup_steps, math.ceil(cfg.warmup_max_frac * cfg.steps))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at `step`: linear warmup, then cosine to min_lr/lr."""
    warm = warmup_steps(cfg)
    if step < warm:
        return (step + 1) / warm
    floor = cfg.min_lr / cfg.lr
    progress = min(1.0, (step - warm) / max(1, cfg.steps - warm))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    opt = torch.optim.AdamW(
        param_groups(model, cfg.lr, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )
    sched = LambdaLR(opt, lambda s: lr_factor(s, cfg))
    return opt, sched


def rng_state(device: torch.device) -> RngState:
    """torch's random state, with the device's when it is a GPU (dropout draws from it there)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def setrng_state(state: RngState, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run is recorded as failed with this reason.

    `result` holds the history up to the failure, to diagnose it."""

    def __init__(self, message: str, result: TrainResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one dict per validation
    steps: int = 0  # optimiser steps taken
    tokens: int = 0  # predicted positions seen (batch * (length - 1) per step)
    best_val: float = math.inf
    best_step: int = 0
    stopped_early: bool = False
    wall_s: float = 0.0
    resumed_from: int = 0  # step of the checkpoint this run continued from (0: from scratch)
    error: str | None = None  # what `train` raises as TrainingDiverged; a cohort member records it here


@dataclass
class EarlyStopping:
    """Stop after `patience` validations in a row without an improvement of more than `min_delta`;
    validations up to `final_epoch` always count as the best (a curriculum changes its validation
    mixture until its last phase, so earlier losses are not comparable). `restore` loads the best
    weights back; `enabled` off, a run trains its whole budget and keeps its final weights."""

    patience: int
    min_delta: float
    enabled: bool = True
    final_epoch: float = 0.0
    best: float = math.inf
    best_step: int = 0
    wait: int = 0  # validations since the best one
    best_state: dict | None = None

    def update(self, val_loss: float, step: int, epoch: float, model: nn.Module) -> bool:
        """Record the validation at `step`; True when training should stop."""
        if epoch <= self.final_epoch or val_loss < self.best - self.min_delta:
            self.best, self.best_step, self.wait = val_loss, step, 0
            if self.enabled:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.wait += 1
        return self.enabled and self.wait >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.enabled and self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class _Member:
    """One model of the cohort and everything the loop keeps for it."""

    model: nn.Module
    cfg: TrainConfig
    validate: Validate
    opt: torch.optim.Optimizer
    sched: LambdaLR
    stopping: EarlyStopping
    params: list[nn.Parameter]  # those clipped: every parameter that requires a gradient
    running: Tensor  # training loss summed since the last validation, on the device
    rng: RngState | None = None  # its own random stream (dropout); None: the ambient one
    res: TrainResult = field(default_factory=TrainResult)
    done: bool = False  # stopped early or diverged
    t0: float = 0.0  # perf_counter at which its wall_s is 0

    @classmethod
    def create(cls, model: nn.Module, cfg: TrainConfig, validate: Validate, final_epoch: float,
               device: torch.device, rng: RngState | None = None) -> _Member:
        model.to(device).train()
        opt, sched = make_optimizer(model, cfg)
        stopping = EarlyStopping(cfg.patience, cfg.min_delta, cfg.early_stopping, final_epoch)
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(model, cfg, validate, opt, sched, stopping, params, torch.zeros((), device=device), rng)

    def save(self, path: Path) -> None:
        """The checkpoint: weights, optimiser and schedule, result, best weights, patience, RNG."""
        payload = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                   "scheduler": self.sched.state_dict(), "result": dataclasses.asdict(self.res),
                   "best_state": self.stopping.best_state, "wait": self.stopping.wait,
                   "rng": self.rng[0] if self.rng else torch.get_rng_state()}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    def load(self, path: Path, device: torch.device) -> None:
        ck = torch.load(path, map_location=device, weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        res = self.res = TrainResult(**ck["result"])
        res.resumed_from = res.steps
        self.stopping = dataclasses.replace(self.stopping, best=res.best_val, best_step=res.best_step,
                                            wait=ck["wait"], best_state=ck["best_state"])
        if self.rng:
            self.rng = (ck["rng"], self.rng[1])
        else:
            torch.set_rng_state(ck["rng"])
        if self.res.stopped_early:  # it had stopped: nothing left to train
            self.done = True
            self.finish()

    def finish(self) -> None:
        """What a run ends with: the best weights under early stopping, else the final ones; eval mode.
        A stopped member of a cohort answers its peers from these weights from then on."""
        self.stopping.restore(self.model)
        self.model.eval()


def train(model: nn.Module, cfg: TrainConfig, stream: TrainStream, validate: Validate, final_epoch: float = 0.0,
          device: torch.device | str = "cpu", progress: bool = False, desc: str = "", checkpoint: Path | None = None,
          on_validation: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Train `model` in place on `stream` for at most `cfg.steps` steps; with early stopping on,
    stop after `cfg.patience` validations without improvement and restore the best weights.

    `validate(model, index, epoch)` returns a dict with at least `val_loss`, the objective early
    stopping reads (the study engine's `Context.validator`: the loss on the seed's fixed validation
    set, the same sequences at every validation); every other key it returns goes into the history
    row as well (there: `fresh_*`, the scores on the index-th set of fresh sequences drawn from the
    curriculum's mixture at `epoch`, the design's monitor). It runs every `cfg.val_every` steps (one
    epoch) and after the last step.
    Early stopping only counts after `final_epoch` (when a curriculum has reached its last phase):
    before that, validation mixtures change and their losses are not comparable.
    Raises TrainingDiverged when the training or validation loss is not finite.

    With `checkpoint`, everything the loop needs (weights, optimiser and schedule, history, best
    weights, patience, RNG) is saved there at each validation, and a run finding the file resumes
    from it: batches are random-access by step, so the resumed run continues the identical stream.
    `on_validation(result)` runs after each validation and checkpoint (the study engine reports to
    Optuna there; an exception it raises, such as a pruning signal, ends training).
    """
    device = torch.device(device)
    member = _Member.create(model, cfg, validate, final_epoch, device)
    if checkpoint is not None and Path(checkpoint).exists():
        member.load(Path(checkpoint), device)

    def after_validation(m: _Member) -> None:
        if checkpoint is not None:
            m.save(Path(checkpoint))
        if on_validation is not None:
            on_validation(m.res)

    _loop([member], stream, device, None, after_validation, progress, desc)
    if member.res.error is not None:
        raise TrainingDiverged(member.res.error, member.res)
    return member.res


def train_cohort(models: Sequence[nn.Module], cfgs: Sequence[TrainConfig], stream: TrainStream,
                 validates: Sequence[Validate], final_epoch: float = 0.0, device: torch.device | str = "cpu",
                 coupling: Coupling | None = None, rng_states: Sequence[RngState] | None = None,
                 ) -> list[TrainResult]:
    """Train `models` in place side by side on `stream`'s batches, model k as `train` would with
    `cfgs[k]` and `validates[k]`, plus `coupling(k, logits_k, peer_log_probs, mask)` added to its loss
    (peers: the detached log-probabilities of every other member still training or answering).

    Members share the budget, batches and validation schedule (steps, batch_size, val_every).
    `rng_states[k]` is member k's own random stream (dropout), kept apart from the others'; None:
    all draw from the ambient one in turn. Returns one TrainResult per model, in order, with `error`
    set where `train` would have raised TrainingDiverged: that member leaves, the others train on.
    A member that stops early ends as `train` leaves its model, and with a coupling keeps answering
    its peers from those weights. Without a coupling each member ends exactly as its own `train`
    run from the same random state (tests/test_mutual.py).
    """
    if not len(models) == len(cfgs) == len(validates):
        raise ValueError(f"got {len(models)} models, {len(cfgs)} training configs and {len(validates)} validators")
    if len({(c.steps, c.batch_size, c.val_every) for c in cfgs}) > 1:
        raise ValueError("members must share steps, batch_size and val_every: one budget, the same batches")
    device = torch.device(device)
    rngs = list(rng_states) if rng_states is not None else [None] * len(models)
    members = [_Member.create(m, c, v, final_epoch, device, r)
               for m, c, v, r in zip(models, cfgs, validates, rngs, strict=True)]
    _loop(members, stream, device, coupling)
    return [m.res for m in members]


def _loop(members: list[_Member], stream: TrainStream, device: torch.device, coupling: Coupling | None,
          after_validation: Callable[[_Member], None] | None = None, progress: bool = False, desc: str = "",
          ) -> None:
    """The one training loop: steps until the budget is spent or every member is done, validating
    every `val_every` steps and after the last; each member not diverged ends `finish`ed."""
    cfg = members[0].cfg  # steps, batch_size and val_every are shared
    first = min(m.res.steps for m in members)
    tokens_per_step = cfg.batch_size * (stream.length - 1)
    start = time.perf_counter()
    for m in members:
        m.t0 = start - m.res.wall_s
    n_running = 0
    bar = tqdm(total=cfg.steps, initial=first, desc=desc, disable=None if progress else True, leave=False,
               dynamic_ncols=True)
    try:
        for step in range(first, cfg.steps if not all(m.done for m in members) else 0):
            batch, mask = stream.scored_batch(step)
            _step(members, batch.to(device, non_blocking=True),
                  None if mask is None else mask.to(device, non_blocking=True), device, coupling)
            n_running += 1
            for m in members:
                if not m.done:
                    m.res.steps, m.res.tokens = step + 1, (step + 1) * tokens_per_step
            bar.update(1)
            if (step + 1) % cfg.val_every and step + 1 != cfg.steps:
                continue
            _validate(members, n_running, bar, after_validation)
            n_running = 0
            if all(m.done for m in members):
                break
    finally:
        bar.close()
    for m in members:
        if not m.done:
            m.finish()
            m.res.wall_s = time.perf_counter() - m.t0


def _step(members: list[_Member], batch: Tensor, mask: Tensor | None, device: torch.device,
          coupling: Coupling | None) -> None:
    """One optimiser step of every member still training, on the same batch (its scored positions
    `mask`, None = all). All forwards come first, so that with a coupling each member's loss sees its
    peers' predictions of this batch."""
    inputs, targets = batch[:, :-1], batch[:, 1:]  # every position predicts the next value
    logits: dict[int, Tensor] = {}
    for k, m in enumerate(members):
        if m.res.error is not None or (m.done and coupling is None):
            continue
        if m.rng is not None:
            setrng_state(m.rng, device)
        with torch.set_grad_enabled(not m.done):  # a stopped peer answers from the weights it stopped with
            logits[k] = m.model(inputs)
        if m.rng is not None:
            m.rng = rng_state(device)
    log_p = {k: F.log_softmax(x.float().detach(), -1) for k, x in logits.items()} if coupling else {}
    for k, m in enumerate(members):
        if m.done:
            continue
        loss = distance_weighted_ce(logits[k], targets, m.cfg.alpha, m.cfg.distance_weight, mask=mask)
        peers = [q for j, q in log_p.items() if j != k]
        if peers:
            loss = loss + coupling(k, logits[k], peers, mask)
        m.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.params, m.cfg.grad_clip)
        m.opt.step()
        m.sched.step()
        m.running += loss.detach()


def _validate(members: list[_Member], n_running: int, bar: tqdm,
              after_validation: Callable[[_Member], None] | None) -> None:
    """Validate every member still training: divergence, history, early stopping, then
    `after_validation` (checkpoint, reporting) for those that did not diverge."""
    train_losses = (torch.stack([m.running for m in members]) / n_running).tolist()  # the one host sync
    for m, train_loss in zip(members, train_losses, strict=True):
        if m.done:
            continue
        m.running.zero_()
        _validate_member(m, train_loss)
        m.res.wall_s = time.perf_counter() - m.t0
        if m.res.error is not None:
            continue
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{m.res.history[-1]['val_loss']:.3f}")
        if after_validation is not None:
            after_validation(m)
        if m.done:  # stopped early
            m.finish()


def _validate_member(m: _Member, train_loss: float) -> None:
    """One member's validation: `error` set where `train` raises TrainingDiverged, else a history row
    and the early-stopping decision; `done` when either ends its training."""
    res = m.res
    if not math.isfinite(train_loss):
        res.error, m.done = f"non-finite training loss ({train_loss}) at step {res.steps}", True
        return
    epoch = res.steps / m.cfg.val_every
    m.model.eval()
    with torch.no_grad():
        val = m.validate(m.model, len(res.history) + 1, epoch)
    m.model.train()
    res.history.append({"step": res.steps, "tokens": res.tokens, "epoch": epoch, "lr": m.sched.get_last_lr()[0],
                        "train_loss": train_loss, **val})
    if not math.isfinite(val["val_loss"]):
        res.error, m.done = f"non-finite validation loss at step {res.steps}", True
        return
    res.stopped_early = m.done = m.stopping.update(val["val_loss"], res.steps, epoch, m.model)
    res.best_val, res.best_step = m.stopping.best, m.stopping.best_step
