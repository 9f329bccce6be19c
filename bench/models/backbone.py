"""The backbone every architecture shares; only the mixer inside each block differs.

    tokens (B, L) -> embedding -> num_layers x Block -> LayerNorm -> Linear(d, 256) -> logits (B, L, 256)
    Block: x = x + dropout(mixer(norm1(x))); x = x + dropout(ffn(norm2(x))), ffn = Linear -> GELU -> Linear

The model has no position embedding of its own (the Transformer mixer carries RoPE); the "numeric"
and "both" embeddings are the exception, because the design feeds (value, position) as two numbers.
Embeddings (`ModelConfig.embedding`), for token v at position p and max_len = 8:
    learned  E[v]                                  a 256 x d table
    numeric  W (v/255, p/7) + b                    Linear(2, d); token 255 at p = 7 feeds (1, 1)
    both     E[v] + W (v/255, p/7) + b             the two summed: identity of a value and its magnitude
Positions past max_len - 1 are allowed (a model trained at length 8 is evaluated at 16 and 32): the
position feature then exceeds 1 (p = 31 feeds 31/7 = 4.43), an extrapolation the numeric part was
never trained on; the learned table has no position, so it is unaffected.
Three ways to run it, which must agree (tests/test_models.py): `forward` (parallel, training),
`prefill` + `step` (recurrent, cached decoding), and `generate` on top of either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from bench.data.base import VOCAB  # token values 0..255, the one definition of the vocabulary

EMBEDDINGS = ("learned", "numeric", "both")


@dataclass
class ModelConfig:
    """The one model configuration: the backbone's sizes, the architecture, and each mixer's own knobs.

    `mixer` is keyed by architecture, {"s4d": {"ssm_lr": 2e-4}, "transformer": {"n_heads": 4}}, so one
    config (a study's `model` section) carries the knobs of every architecture it compares;
    `bench.models.build_model` passes only those of `arch`.
    """

    arch: str = "transformer"
    d_model: int = 64
    num_layers: int = 2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    ffn_mult: int = 4  # FFN hidden = ffn_mult * d_model: a backbone knob, identical for every arch
    # "learned": nn.Embedding(256, d); "numeric": fixed (value/255, pos/(max_len-1)) -> Linear(2, d);
    # "both": the two summed (see the module docstring)
    embedding: str = "learned"
    max_len: int = 8  # the numeric part divides positions by max_len - 1; longer inputs feed values > 1
    dropout: float = 0.0
    mixer: dict[str, dict[str, Any]] = field(default_factory=dict)  # {arch: {knob: value}}, see above

    def __post_init__(self) -> None:
        for name in ("d_model", "num_layers", "ffn_mult", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be 'learned', 'numeric' or 'both', got {self.embedding!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for arch, knobs in self.mixer.items():
            if not isinstance(knobs, Mapping):
                raise ValueError(f"mixer must map each architecture to its knobs, got {arch!r}: {knobs!r}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict or an OmegaConf DictConfig (both are Mappings); an unknown key is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown model config key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        values = dict(cfg)
        # plain dicts of each architecture's knobs (a null entry is no knobs); a non-mapping fails in __post_init__
        values["mixer"] = {arch: dict(knobs) if isinstance(knobs, Mapping) else knobs or {}
                           for arch, knobs in (values.get("mixer") or {}).items()}
        return cls(**values)


@dataclass(frozen=True)
class ModelState:
    """Recurrent state of the whole model: one mixer state per layer and the next position index."""

    layers: tuple[Any, ...]
    pos: int


class Block(nn.Module):
    """Pre-norm residual block around one mixer and one GELU FFN."""

    def __init__(self, d_model: int, mixer: nn.Module, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model), nn.GELU(), nn.Linear(ffn_mult * d_model, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def _ffn(self, x: Tensor, y: Tensor) -> Tensor:
        """Residual-add the mixer output y, then the FFN branch; position-wise, so any leading shape."""
        x = x + self.drop(y)
        return x + self.drop(self.ffn(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._ffn(x, self.mixer(self.norm1(x)))

    def forward_with_state(self, x: Tensor) -> tuple[Tensor, Any]:
        y, state = self.mixer.forward_with_state(self.norm1(x))
        return self._ffn(x, y), state

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y_t, state = self.mixer.step(self.norm1(x_t), state)
        return self._ffn(x_t, y_t), state


class SequenceModel(nn.Module):
    """Embedding -> blocks -> final norm -> 256-way head. Causal: logits at t see tokens 0..t only.

    `make_mixer` builds one fresh mixer per layer (see `bench.models.build_model`); the backbone knows
    nothing about any architecture beyond the mixer protocol in `bench/models/__init__.py`.
    """

    def __init__(self, cfg: ModelConfig, make_mixer: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        # `embed` is the table ("learned", "both") or the Linear(2, d) ("numeric"), as stored checkpoints
        # name it; "both" adds the Linear as `embed_numeric`. The trainer exempts nn.Embedding tables
        # from weight decay, never the Linear.
        self.embed = nn.Embedding(VOCAB, d) if cfg.embedding != "numeric" else nn.Linear(2, d)
        self.embed_numeric = nn.Linear(2, d) if cfg.embedding == "both" else None
        self.blocks = nn.ModuleList(
            Block(d, make_mixer(), cfg.ffn_mult, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)
        self.unused_hparams: list[str] = sorted(
            set().union(*(getattr(b.mixer, "unused_hparams", ()) for b in self.blocks))
        )

    def _embed(self, tokens: Tensor, start: int) -> Tensor:
        """tokens (B, L) at positions start..start+L-1 -> (B, L, d); any start + L (see the module docstring)."""
        if self.cfg.embedding == "learned":
            return self.embed(tokens)
        if self.cfg.embedding == "numeric":
            return self.embed(self._features(tokens, start))
        return self.embed(tokens) + self.embed_numeric(self._features(tokens, start))

    def _features(self, tokens: Tensor, start: int) -> Tensor:
        """The numeric features (value/255, position/(max_len-1)), (B, L) -> (B, L, 2): with max_len 8,
        token 51 at position 2 -> (0.2, 0.2857); at position 14 the second feature is 2.0."""
        linear = self.embed_numeric if self.embed_numeric is not None else self.embed
        dtype = linear.weight.dtype
        value = tokens.to(dtype) / (VOCAB - 1)  # (B, L)
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device, dtype=dtype)
        pos = (pos / max(self.cfg.max_len - 1, 1)).expand_as(value)  # (L,) -> (B, L)
        return torch.stack((value, pos), dim=-1)

    def _logits(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L) -> logits (B, L, 256); logits[:, t] predict token t + 1."""
        x = self._embed(tokens, 0)
        for block in self.blocks:
            x = block(x)
        return self._logits(x)

    def init_state(self, batch_size: int) -> ModelState:
        return ModelState(tuple(b.mixer.init_state(batch_size) for b in self.blocks), pos=0)

    def prefill(self, tokens: Tensor) -> tuple[Tensor, ModelState]:
        """Parallel pass over tokens (B, P) that also returns the state after the last of them."""
        if tokens.shape[1] == 0:
            return self.head.weight.new_empty(tokens.shape[0], 0, VOCAB), self.init_state(tokens.shape[0])
        x = self._embed(tokens, 0)
        states = []
        for block in self.blocks:
            x, state = block.forward_with_state(x)
            states.append(state)
        return self._logits(x), ModelState(tuple(states), pos=tokens.shape[1])

    def step(self, token: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """One token (B,) at position state.pos -> logits (B, 256) and a new state; `state` is untouched."""
        x = self._embed(token[:, None], state.pos)[:, 0]  # (B,) -> (B, 1) -> (B, 1, d) -> (B, d)
        states = []
        for block, layer_state in zip(self.blocks, state.layers, strict=True):
            x, layer_state = block.step(x, layer_state)
            states.append(layer_state)
        return self._logits(x), ModelState(tuple(states), pos=state.pos + 1)

    @torch.no_grad()
    def generate(self, prefix: Tensor, n_new: int, cached: bool = True) -> Tensor:
        """Greedy continuation of prefix (B, P >= 1) by n_new tokens -> (B, P + n_new).

        cached=True decodes with prefill + step (O(1) mixer calls per token); cached=False re-runs
        `forward` on the growing sequence, the reference the cached path must reproduce (oracle G5).
        Runs in the module's current mode: call `.eval()` first if dropout is on.
        """
        if prefix.shape[1] == 0:
            raise ValueError("generate needs a prefix of at least one token")
        out = prefix
        if cached:
            logits, state = self.prefill(prefix)
            logits = logits[:, -1]
        for i in range(n_new):
            if not cached:
                logits = self(out)[:, -1]
            token = logits.argmax(-1)  # (B,)
            out = torch.cat((out, token[:, None]), dim=1)
            if cached and i + 1 < n_new:
                logits, state = self.step(token, state)
        return out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_size(self, seq_len: int) -> int:
        """Recurrent-state floats per sequence after seq_len tokens, summed over layers."""
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)
