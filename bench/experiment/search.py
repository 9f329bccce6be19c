"""What a search trial (or a final run) trains: sampling the space, and sizing to a common budget.

Constraints hold by construction: power-of-two sizes are sampled as integer exponents, and
d_state's exponent range ends at the trial's d_model, so no draw is ever rejected. An architecture
samples only the shared hyperparameters its mixer takes (the LSTM never sees d_state), so trials
are not wasted on knobs without effect. Optuna parameter names are the exponents (`log2_d_model`);
the resulting sizes are what `trial_config` returns and what results record.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import replace
from typing import Any

from bench.experiment.config import Config
from bench.memory import model_on_meta
from bench.models import MIXERS, SHARED_HPARAMS, ModelConfig

SIZE_KEYS = ("d_model", "num_layers", "d_state", "d_conv", "expand")
ISO_TOLERANCE = 0.10


def used_hparams(arch: str) -> list[str]:
    """The shared hyperparameters (d_state, d_conv, expand) that `arch`'s mixer takes."""
    accepted = inspect.signature(MIXERS[arch].__init__).parameters
    return [k for k in SHARED_HPARAMS if k in accepted]


def _log2(n: int) -> int:
    return int(math.log2(n))


def suggest(trial: Any, arch: str, cfg: Config) -> dict[str, Any]:
    """Sample one configuration for `arch` from `cfg.search.space` via an Optuna trial (or any object
    with suggest_int / suggest_float / suggest_categorical). Returns sizes and lr, e.g.
    {"d_model": 64, "num_layers": 2, "d_state": 16, "lr": 0.002}."""
    sp = cfg.search.space
    out: dict[str, Any] = {}
    if cfg.iso == "none":
        out["d_model"] = 2 ** trial.suggest_int("log2_d_model", _log2(sp.d_model[0]), _log2(sp.d_model[1]))
        d_state_cap = out["d_model"]
    else:  # d_model is sized afterwards; d_state then bounds it from below
        d_state_cap = sp.d_state[1]
    out["num_layers"] = trial.suggest_int("num_layers", sp.num_layers[0], sp.num_layers[1])
    used = used_hparams(arch)
    if "d_state" in used:
        hi = _log2(min(sp.d_state[1], d_state_cap))
        out["d_state"] = 2 ** trial.suggest_int("log2_d_state", _log2(sp.d_state[0]), hi)
    if "d_conv" in used:
        out["d_conv"] = 2 ** trial.suggest_int("log2_d_conv", _log2(sp.d_conv[0]), _log2(sp.d_conv[1]))
    if "expand" in used:
        out["expand"] = trial.suggest_categorical("expand", sorted(sp.expand))
    out["lr"] = trial.suggest_float("lr", sp.lr[0], sp.lr[1], log=True)
    return out


def defaults(arch: str, cfg: Config) -> dict[str, Any]:
    """The configuration trained when there is no search: the study's `model` sizes and `train.lr`."""
    m = cfg.model
    out = {"d_model": m.d_model, "num_layers": m.num_layers, "lr": cfg.train.lr}
    out.update({k: getattr(m, k) for k in used_hparams(arch)})
    return out


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """`cfg` with a configuration's sizes and lr applied (keys absent from `params` stay as they are)."""
    model = replace(cfg.model, **{k: params[k] for k in SIZE_KEYS if k in params})
    return replace(cfg, model=model, train=replace(cfg.train, lr=params.get("lr", cfg.train.lr)))


def size_of(cfg: Config, arch: str, measure: str) -> int:
    """Parameters of the whole model (`params`) or recurrent state floats per sequence after a full
    sequence (`state`), computed on the meta device: nothing is allocated."""
    model = model_on_meta(cfg.model_config(arch))
    return model.num_params() if measure == "params" else model.state_size(cfg.data.length)


def iso_target(cfg: Config) -> int:
    """`cfg.iso_target`, else the median size over the study's architectures at `model`'s sizes."""
    if cfg.iso_target is not None:
        return cfg.iso_target
    return int(statistics.median(size_of(trial_config(cfg, defaults(a, cfg)), a, cfg.iso) for a in cfg.arch_list))


def _try_size(cfg: Config, arch: str, d_model: int) -> int | None:
    try:
        return size_of(replace(cfg, model=replace(cfg.model, d_model=d_model)), arch, cfg.iso)
    except ValueError:  # e.g. heads not dividing this d_model
        return None


def iso_d_model(cfg: Config, arch: str, target: int, max_d: int = 8192) -> tuple[int, int]:
    """The d_model (any integer >= d_state) whose size is closest to `target`, and that size.

    Size grows with d_model for every mixer, so a bisection finds the crossing; the neighbours around
    it are then compared (some widths are invalid for a mixer, e.g. odd head dims).
    Raises ValueError when no width lands within ISO_TOLERANCE.
    """
    lo, hi = max(1, cfg.model.d_state if "d_state" in used_hparams(arch) else 1), max_d
    while lo < hi:  # smallest valid-or-not width whose size reaches the target
        mid = (lo + hi) // 2
        size = _try_size(cfg, arch, mid)
        if size is None:
            size = next((s for d in range(mid + 1, min(mid + 16, hi) + 1) if (s := _try_size(cfg, arch, d))), None)
        if size is not None and size >= target:
            hi = mid
        else:
            lo = mid + 1
    floor = cfg.model.d_state if "d_state" in used_hparams(arch) else 1
    sized = [(abs(s - target), d, s) for d in range(max(floor, lo - 16), lo + 17)
             if (s := _try_size(cfg, arch, d)) is not None]
    if not sized:
        raise ValueError(f"{arch}: no valid d_model near {lo} for {cfg.iso} target {target:,}")
    _, d_model, size = min(sized)
    if abs(size - target) > ISO_TOLERANCE * target:
        raise ValueError(f"{arch}: cannot size to {cfg.iso} target {target:,} within 10 % "
                         f"(closest: d_model={d_model} with {size:,})")
    return d_model, size


def iso_params(cfg: Config, arch: str, params: dict[str, Any], target: int) -> dict[str, Any]:
    """`params` with d_model replaced by the width that sizes `arch` to `target`."""
    d_model, _ = iso_d_model(trial_config(cfg, params), arch, target)
    return {**params, "d_model": d_model}


def model_config(cfg: Config, arch: str, params: dict[str, Any]) -> ModelConfig:
    return trial_config(cfg, params).model_config(arch)
