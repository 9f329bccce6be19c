"""Sequence mixers behind one shared backbone, and the registry that builds them.

Adding an architecture = one new file in this package + one line in `MIXERS`; the tests in
tests/test_models.py are parametrised over `mixer_names()` and apply to it automatically.

Mixer protocol (identical for every mixer; x is (B, L, d), x_t is (B, d)):

* `__init__(d_model, <own hyperparameters>)`. It takes only those of `SHARED_HPARAMS` it uses;
  invalid values raise ValueError with a one-line message naming the problem.
* `forward(x) -> y (B, L, d)`: parallel, causal (y_t depends on x_0..x_t only).
* `forward_with_state(x) -> (y, state)`: as forward, plus the state after position L-1 ("prefill").
* `init_state(batch_size) -> state`: the empty/zero state, on the parameters' device and dtype.
* `step(x_t, state) -> (y_t, new_state)`: one position. FUNCTIONAL: never mutates `state`, so a
  state can be reused (beam search, re-decoding from a shared prefix).
  Contract: prefill on x[:, :P] then stepping P..L-1 reproduces forward(x), for every 0 <= P < L.
* `state_size(seq_len) -> int`: floats of recurrent state per sequence per layer after seq_len
  tokens (Zoology's idea), so architectures can be compared at equal state.
* `activation_floats(seq_len) -> int`: floats of activation one training forward keeps for the
  backward pass, per sequence, in this mixer (parameters excluded; a complex number counts as two).
  It generalises the design's memory formula per architecture; the study engine multiplies it by
  batch size, layers and bytes to prune configurations that cannot fit before they train. Tests
  hold it within a factor of 2 of what autograd actually saves (`saved_tensors_hooks`).

Optimiser hints: a parameter that needs special treatment (S4-style SSM dynamics) is created with
`register(self, "log_dt", tensor, lr=ssm_lr, weight_decay=0.0)` (bench/models/hints.py), which
records the hint on the owning module, by name, where the parameter is made. `optim_hints(model)`
maps qualified parameter names (as `model.named_parameters()` gives them) to those hints;
`bench.train.param_groups` replaces the default weight decay with `weight_decay` and caps that
parameter's learning rate at `lr`. Hints survive `copy.deepcopy` and dtype/device moves. The
Transformer and LSTM need none.

Configuration: one `ModelConfig` (backbone.py) whose `mixer` field holds every architecture's own
knobs keyed by architecture name; `build_model` passes those of `cfg.arch`, and `mixer_defaults()`
lists each mixer's knobs with their defaults (what a study's config shows and overrides).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from bench.models.backbone import VOCAB, ModelConfig, ModelState, SequenceModel
from bench.models.hints import optim_hints, register
from bench.models.liquid_s4 import LiquidS4
from bench.models.lstm import LSTMMixer
from bench.models.mamba import Mamba
from bench.models.ntk_attention import NTKAttention
from bench.models.s4d import S4D
from bench.models.sgconv import SGConv
from bench.models.stable_ssm import StableSSM
from bench.models.transformer import Transformer

MIXERS: dict[str, type[nn.Module]] = {
    "liquid_s4": LiquidS4,
    "lstm": LSTMMixer,
    "mamba": Mamba,
    "ntk_attention": NTKAttention,
    "s4d": S4D,
    "sgconv": SGConv,
    "stable_ssm": StableSSM,
    "transformer": Transformer,
}

# Searched for every architecture; each mixer takes only the ones its __init__ names.
SHARED_HPARAMS = ("d_state", "d_conv", "expand")

__all__ = ["MIXERS", "SHARED_HPARAMS", "VOCAB", "ModelConfig", "ModelState", "SequenceModel",
           "build_mixer", "build_model", "mixer_defaults", "mixer_names", "optim_hints", "register"]


def mixer_names() -> list[str]:
    return sorted(MIXERS)


def mixer_defaults() -> dict[str, dict[str, Any]]:
    """Each registered mixer's own keyword arguments with their defaults, e.g. {"transformer": {"n_heads": 2,
    "pos": "rope"}, "lstm": {}}: the shape of `ModelConfig.mixer`, so a config that lists them makes a
    misspelt knob an error and shows every knob; a new mixer's knobs appear automatically."""
    skip = {"self", "d_model", *SHARED_HPARAMS}
    return {
        name: {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
               if p.name not in skip and p.default is not inspect.Parameter.empty}
        for name, cls in sorted(MIXERS.items())
    }


def build_mixer(name: str, d_model: int, *, explicit: frozenset[str] = frozenset(), **hparams: Any) -> nn.Module:
    """Instantiate mixer `name`. Shared hyperparameters it does not use are dropped and recorded as
    `mixer.unused_hparams` (sorted), unless named in `explicit` (set for this architecture by the
    user), which is an error; any other keyword it does not take is an error, never ignored."""
    if name not in MIXERS:
        raise ValueError(f"unknown architecture '{name}' (registered: {', '.join(mixer_names())})")
    cls = MIXERS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "d_model")]
    unknown = sorted(k for k in hparams if k not in accepted and k not in SHARED_HPARAMS)
    if unknown:
        raise ValueError(f"unknown hyperparameter '{unknown[0]}' for architecture '{name}' "
                         f"(accepted: {', '.join(accepted) or 'none'})")
    pointless = sorted(k for k in explicit if k in hparams and k not in accepted)
    if pointless:
        raise ValueError(f"hyperparameter '{pointless[0]}' was set for architecture '{name}', which does not use it")
    mixer = cls(d_model, **{k: v for k, v in hparams.items() if k in accepted})
    mixer.unused_hparams = sorted(k for k in hparams if k not in accepted)
    return mixer


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> SequenceModel:
    """The backbone around `cfg.num_layers` fresh mixers of `cfg.arch`.

    `cfg` is a ModelConfig, or a dict / OmegaConf DictConfig with the same keys. The knobs of
    `cfg.arch` in `cfg.mixer` are passed next to the shared hyperparameters (and may override them);
    a shared hyperparameter set there for a mixer that does not use it is an error, and so is a key
    of `cfg.mixer` that names no registered architecture (a misspelt name would otherwise drop its
    knobs silently). The other architectures' knobs are not read.
    """
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_mapping(cfg)
    unknown = sorted(set(cfg.mixer) - set(MIXERS))
    if unknown:
        raise ValueError(f"mixer: unknown architecture '{unknown[0]}' (registered: {', '.join(mixer_names())})")
    knobs = dict(cfg.mixer.get(cfg.arch, {}))
    hparams = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand, **knobs}
    explicit = frozenset(knobs)
    return SequenceModel(cfg, lambda: build_mixer(cfg.arch, cfg.d_model, explicit=explicit, **hparams))
