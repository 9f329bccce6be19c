"""Training per the design: distance-weighted CE over all prefixes, AdamW with per-parameter groups,
linear warmup + cosine decay, global grad-norm clipping, early stopping that restores the best weights.

The loop is kept free of per-step host syncs: the running loss stays on the device and is read
once per validation, which is also when the progress bar, history and early stopping act.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from bench.config import TrainConfig
from bench.data.curriculum import TrainStream

DISTANCE_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda d: d,
    "quadratic": lambda d: d * d,
    "sqrt": torch.sqrt,
}


def distance_weighted_ce(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.1, weight: str = "linear", reduce: bool = True
) -> torch.Tensor:
    """CE * (1 + alpha * w(|argmax - target|)), the design's loss, averaged over every position.

    The factor multiplies each position's cross-entropy; it is a constant for the gradient (argmax is
    piecewise constant), so it re-weights examples by how far off the current guess is.
    Design example: target 10, prediction peaking at 100 vs 11 -> w = 90 vs 1, a 90x larger distance term.
    logits (..., 256), targets (...) int64.
    """
    ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none").view(targets.shape)
    dist = (logits.detach().argmax(-1) - targets).abs().to(ce.dtype)
    loss = ce * (1 + alpha * DISTANCE_WEIGHTS[weight](dist))
    return loss.mean() if reduce else loss


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups honouring per-parameter settings.

    No weight decay on biases and norm weights (ndim < 2) and on embedding tables. A mixer may attach
    `param._optim = {"weight_decay": wd, "lr": cap}` (S4-style SSM dynamics such as A_log, D, dt):
    `weight_decay` replaces the default, `lr` caps the group's learning rate (min(lr, cap)).
    Parameters with equal settings share a group; groups keep a deterministic order.
    """
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        hint = getattr(p, "_optim", {})
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


def _save_checkpoint(path: Path, payload: dict) -> None:
    """Write atomically (temporary file + rename): a kill mid-write leaves the previous checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def train(
    model: nn.Module,
    cfg: TrainConfig,
    stream: TrainStream,
    validate: Callable[[nn.Module, int, float], dict[str, float]],
    final_epoch: float = 0.0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "",
    checkpoint: Path | None = None,
    on_validation: Callable[[TrainResult], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `stream` for at most `cfg.steps` steps; with early stopping on,
    stop after `cfg.patience` validations without improvement and restore the best weights.

    `validate(model, index, epoch)` returns a dict with at least `val_loss` (the objective on the
    index-th set of fresh validation sequences, drawn from the curriculum's mixture at `epoch`);
    it runs every `cfg.val_every` steps (one epoch) and after the last step.
    Early stopping only counts after `final_epoch` (when a curriculum has reached its last phase):
    before that, validation mixtures change and their losses are not comparable.

    With `checkpoint`, everything the loop needs (weights, optimiser and schedule, history, best
    weights, patience, RNG) is saved there at each validation, and a run finding the file resumes
    from it: batches are random-access by step, so the resumed run continues the identical stream.
    `on_validation(result)` runs after each validation and checkpoint (the study engine reports to
    Optuna there; an exception it raises, such as a pruning signal, ends training).
    """
    device = torch.device(device)
    model.to(device).train()
    opt, sched = make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    res = TrainResult()
    best_state, wait = None, 0
    if checkpoint is not None and Path(checkpoint).exists():
        ck = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        res, best_state, wait = TrainResult(**ck["result"]), ck["best_state"], ck["wait"]
        res.resumed_from = res.steps
        torch.set_rng_state(ck["rng"])
    running = torch.zeros((), device=device)
    n_running = 0
    tokens_per_step = cfg.batch_size * (stream.length - 1)
    start = time.perf_counter() - res.wall_s
    bar = tqdm(total=cfg.steps, initial=res.steps, desc=desc, disable=None if progress else True, leave=False,
               dynamic_ncols=True)
    try:
        for step in range(res.steps, cfg.steps if not res.stopped_early else 0):
            batch = stream.batch(step).to(device, non_blocking=True)
            logits = model(batch[:, :-1])  # every position predicts the next value
            loss = distance_weighted_ce(logits, batch[:, 1:], cfg.alpha, cfg.distance_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            running += loss.detach()
            n_running += 1
            res.steps, res.tokens = step + 1, (step + 1) * tokens_per_step
            bar.update(1)
            if res.steps % cfg.val_every and res.steps != cfg.steps:
                continue

            train_loss = (running / n_running).item()  # the one host sync per epoch
            running.zero_()
            n_running = 0
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"non-finite training loss ({train_loss}) at step {res.steps}", res)
            epoch = res.steps / cfg.val_every
            model.eval()
            with torch.no_grad():
                val = validate(model, len(res.history) + 1, epoch)
            model.train()
            res.history.append(
                {"step": res.steps, "tokens": res.tokens, "epoch": epoch, "lr": sched.get_last_lr()[0],
                 "train_loss": train_loss, **val}
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val['val_loss']:.3f}")
            if not math.isfinite(val["val_loss"]):
                raise TrainingDiverged(f"non-finite validation loss at step {res.steps}", res)
            if epoch <= final_epoch or val["val_loss"] < res.best_val - cfg.min_delta:
                res.best_val, res.best_step, wait = val["val_loss"], res.steps, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                wait += 1
                if cfg.early_stopping and wait >= cfg.patience:
                    res.stopped_early = True
            if checkpoint is not None:
                res.wall_s = time.perf_counter() - start
                _save_checkpoint(Path(checkpoint), {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "result": dataclasses.asdict(res), "best_state": best_state, "wait": wait,
                    "rng": torch.get_rng_state()})
            if on_validation is not None:
                on_validation(res)
            if res.stopped_early:
                break
    finally:
        bar.close()
    if cfg.early_stopping and best_state is not None:  # without early stopping: the final weights
        model.load_state_dict(best_state)
    model.eval()
    res.wall_s = time.perf_counter() - start
    return res


# ---------------------------------------------------------------- joint loops (bench.multiseed, bench.mutual)

Validate = Callable[[nn.Module, int, float], dict[str, float]]


@dataclass
class SeedResult(TrainResult):
    """`TrainResult` of one member of a joint loop, plus what `train` would have raised and how it ran."""

    error: str | None = None  # the TrainingDiverged message `train` would have raised; None: it finished
    fallback: str = ""  # why this member was trained alone by `train` ("" when trained jointly)


@dataclass
class Member:
    """One model of a loop that trains several at once: what `train` keeps in local variables."""

    model: nn.Module
    stream: TrainStream
    validate: Validate
    res: SeedResult = field(default_factory=SeedResult)
    best_state: dict | None = None
    wait: int = 0
    done: bool = False


def validate_member(m: Member, cfg: TrainConfig, train_loss: float, epoch: float, lr: float,
                    final_epoch: float) -> None:
    """`train`'s validation, early stopping and divergence check, for one member of a joint loop:
    sets `m.done` when it stops, with `m.res.error` set where `train` would raise TrainingDiverged."""
    res = m.res
    if not math.isfinite(train_loss):
        res.error, m.done = f"non-finite training loss ({train_loss}) at step {res.steps}", True
        return
    m.model.eval()
    with torch.no_grad():
        val = m.validate(m.model, len(res.history) + 1, epoch)
    m.model.train()
    res.history.append({"step": res.steps, "tokens": res.tokens, "epoch": epoch, "lr": lr,
                        "train_loss": train_loss, **val})
    if not math.isfinite(val["val_loss"]):
        res.error, m.done = f"non-finite validation loss at step {res.steps}", True
        return
    if epoch <= final_epoch or val["val_loss"] < res.best_val - cfg.min_delta:
        res.best_val, res.best_step, m.wait = val["val_loss"], res.steps, 0
        m.best_state = copy.deepcopy(m.model.state_dict())
    else:
        m.wait += 1
        if cfg.early_stopping and m.wait >= cfg.patience:
            res.stopped_early, m.done = True, True
