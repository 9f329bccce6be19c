"""Tests of bench/models: the global oracles G1-G8 of ARCHITECTURES.md §0.5 for every registered
mixer (parametrised over `mixer_names()`, so a new mixer inherits them), then per-mixer references
(naive attention, RoPE identities, a hand-written LSTM cell) and the registry's error handling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import prefill_then_step, step_through
from omegaconf import OmegaConf
from torch import Tensor, nn

from bench.memory import saved_bytes
from bench.models import MIXERS, build_mixer, build_model, mixer_defaults, mixer_names, optim_hints
from bench.models.backbone import ModelConfig, SequenceModel
from bench.models.transformer import apply_rope

ARCHS = mixer_names()
EMBEDDINGS = ["learned", "numeric", "both"]
D, L, B = 16, 12, 3
PREFILLS = sorted({0, 1, 3, L // 2, L - 1})
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}

# Per-layer parameter counts of §0.4; a new mixer adds its line here.
PARAM_COUNTS = {
    "transformer": lambda d: 4 * d * d + 4 * d,
    "lstm": lambda d: 8 * d * d + 8 * d,
    "mamba": lambda d: 3 * 2 * d * d + 2 * d * (4 + 3 * 16 + 2 * math.ceil(d / 16) + 3),  # E = 2d, N = 16, d_conv 4
    "stable_ssm": lambda d: 2 * d * d + d * (2 * 16 + 4),  # d_state N = 16 (the config default), bias off
    "sgconv": lambda d: 2 * d * d + 2 * d + 4 * d * 16 + d,  # S = 4 scales of k_d = d_state = 16, l_max = 128
    "s4d": lambda d: 2 * d * d + d * (2 * 16 + 4),  # 2H² + H(2N + 4), N = d_state = 16
    "liquid_s4": lambda d: 2 * d * d + d * (3 * 16 + 4),  # 2H² + H(3N + 4), N = d_state = 16
    "ntk_attention": lambda d: 4 * d * d + 4 * d + d * d // 2 + d,  # transformer + H(d_h² + d_h), H = 2 heads
}

# The optimiser hints each mixer declares at its defaults (`bench.models.register`); a new mixer adds its line here.
DYNAMICS = {"lr": 1e-3, "weight_decay": 0.0}  # S4's setting: no decay, lr capped at ssm_lr = 1e-3
NO_DECAY = {"weight_decay": 0.0}
HINTS = {
    "transformer": {},
    "lstm": {},
    "mamba": {"A_log": NO_DECAY, "D": NO_DECAY},  # as mamba_ssm's _no_weight_decay
    "stable_ssm": {f"kernel.{n}": DYNAMICS for n in ("log_dt", "log_A_real", "A_imag")},
    "sgconv": {**{f"kernel_list.{i}": {"lr": 1e-3} for i in range(4)}, "D": NO_DECAY},  # kernel_lr, S = 4 scales
    "s4d": {f"kernel.{n}": DYNAMICS for n in ("log_dt", "log_A_real", "A_imag")},
    "liquid_s4": {f"kernel.{n}": DYNAMICS for n in ("log_dt", "log_A_real", "A_imag", "B")},
    "ntk_attention": {"prefix_k_log": NO_DECAY},
}


def make_mixer(arch: str, d: int = D, dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_mixer(arch, d, **kw).to(dtype)


def make_model(arch: str, embedding: str = "learned", dtype: torch.dtype = torch.float64, seed: int = 0,
               d: int = D, **kw) -> SequenceModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, d_model=d, num_layers=2, ffn_mult=2, embedding=embedding, max_len=L, **kw)
    return build_model(cfg).to(dtype)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tokens(b: int = B, length: int = L, seed: int = 2) -> Tensor:
    return torch.randint(0, 256, (b, length), generator=torch.Generator().manual_seed(seed))


def leaves(state) -> list[Tensor]:
    """Tensors of a (possibly nested) state; ints such as position counters are skipped."""
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in leaves(s)]
    if isinstance(state, dict):
        return [t for s in state.values() for t in leaves(s)]
    return []


# ---------------------------------------------------------------- G1-G8, every mixer


@pytest.mark.parametrize("arch", ARCHS)
def test_mixer_is_causal(arch):  # G1
    mixer, x = make_mixer(arch), randn(B, L, D)
    y = mixer(x)
    for t in (0, 1, L // 2, L - 1):
        x2 = x.clone()
        x2[:, t] += randn(B, D, seed=10 + t)
        y2 = mixer(x2)
        assert ((y2[:, :t] - y[:, :t]).abs() <= 1e-12 * y.abs().max()).all()
        assert not torch.allclose(y2[:, t], y[:, t])  # ... while the perturbed position itself does see it


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_is_causal(arch, embedding):  # G1, whole model
    model, tok = make_model(arch, embedding), tokens()
    logits = model(tok)
    for t in (1, L // 2, L - 1):
        tok2 = tok.clone()
        tok2[:, t] = (tok2[:, t] + 1 + torch.arange(B)) % 256
        logits2 = model(tok2)
        torch.testing.assert_close(logits2[:, :t], logits[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(logits2[:, t], logits[:, t])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ARCHS)
def test_step_matches_parallel(arch, dtype):  # G2
    mixer, x = make_mixer(arch, dtype=dtype), randn(B, L, D, dtype=dtype)
    y = mixer(x)
    for p in PREFILLS:
        err = (prefill_then_step(mixer, x, p)[0] - y).abs().max().item()
        assert err <= TOL[dtype], f"prefill {p}: max error {err:.2e}"


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_step_matches_parallel(arch, embedding):  # G2, whole model (positions advance in step mode)
    model, tok = make_model(arch, embedding), tokens()
    logits = model(tok)
    for p in PREFILLS:
        pre, state = model.prefill(tok[:, :p])
        assert state.pos == p
        rest = []
        for t in range(p, L):
            step_logits, state = model.step(tok[:, t], state)
            rest.append(step_logits)
        assert state.pos == L
        torch.testing.assert_close(torch.cat((pre, torch.stack(rest, 1)), 1), logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_consistency(arch):  # G3
    mixer, x = make_mixer(arch), randn(B, L, D)
    y = mixer(x)
    for t in range(1, L + 1):
        torch.testing.assert_close(mixer(x[:, :t])[:, -1], y[:, t - 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_independence(arch):  # G4
    mixer, x = make_mixer(arch), randn(B, L, D)
    y = mixer(x)
    x2 = x.clone()
    x2[1:] = randn(B - 1, L, D, seed=7)
    torch.testing.assert_close(mixer(x2)[0], y[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixer(x[:1])[0], y[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_generate_matches_recompute(arch, embedding):  # G5, in float32 as trained
    model, prefix = make_model(arch, embedding, dtype=torch.float32, d=32).eval(), tokens(length=4)
    n_new = L - 4
    cached = model.generate(prefix, n_new, cached=True)
    assert cached.shape == (B, L) and torch.equal(cached[:, :4], prefix)
    assert torch.equal(cached, model.generate(prefix, n_new, cached=False))
    with torch.no_grad():  # logits along the generated sequence: prefill + steps vs one forward
        pre, state = model.prefill(cached[:, :4])
        rest = []
        for t in range(4, L):
            step_logits, state = model.step(cached[:, t], state)
            rest.append(step_logits)
        stepped = torch.cat((pre, torch.stack(rest, 1)), 1)
        torch.testing.assert_close(stepped, model(cached), rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter_and_counts_match(arch):  # G7
    assert arch in PARAM_COUNTS, f"add the §0.4 parameter count of '{arch}' to PARAM_COUNTS"
    for d in (16, 32):
        assert sum(p.numel() for p in make_mixer(arch, d).parameters()) == PARAM_COUNTS[arch](d)
    model = make_model(arch)
    F.cross_entropy(model(tokens()).flatten(0, 1), tokens(seed=3).flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    mixer_params = sum(p.numel() for b in model.blocks for p in b.mixer.parameters())
    assert mixer_params == model.cfg.num_layers * PARAM_COUNTS[arch](D)
    assert model.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_optimiser_hints_name_real_parameters_and_survive_deepcopy(arch):
    assert arch in HINTS, f"add the optimiser hints of '{arch}' to HINTS"
    model = make_model(arch)
    hints = optim_hints(model)
    assert hints == {f"blocks.{i}.mixer.{name}": hint for i in range(2) for name, hint in HINTS[arch].items()}
    assert set(hints) <= dict(model.named_parameters()).keys()
    clone = copy.deepcopy(model)
    assert optim_hints(clone) == hints and optim_hints(clone.float()) == hints
    assert optim_hints(make_mixer(arch)) == HINTS[arch]


@pytest.mark.parametrize(("arch", "knobs", "name", "hint"), [
    ("s4d", {"ssm_lr": 2e-4}, "kernel.A_imag", {"lr": 2e-4, "weight_decay": 0.0}),
    ("liquid_s4", {"ssm_lr": 0.0}, "kernel.B", {"lr": 0.0, "weight_decay": 0.0}),
    ("stable_ssm", {"ssm_lr": 3e-4}, "kernel.log_dt", {"lr": 3e-4, "weight_decay": 0.0}),
    ("sgconv", {"kernel_lr": 5e-4}, "kernel_list.3", {"lr": 5e-4}),
])
def test_optimiser_hints_follow_the_mixer_knobs(arch, knobs, name, hint):
    model = make_model(arch, mixer={arch: knobs})
    assert optim_hints(model)[f"blocks.1.mixer.{name}"] == hint


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_round_trip(arch):  # G8
    tok = tokens()
    for embedding in EMBEDDINGS:
        src, dst = make_model(arch, embedding, seed=0), make_model(arch, embedding, seed=1)
        assert not torch.allclose(src(tok), dst(tok))
        dst.load_state_dict(src.state_dict(), strict=True)
        torch.testing.assert_close(dst(tok), src(tok), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_is_functional(arch):
    mixer, x = make_mixer(arch), randn(B, L, D)
    _, state = mixer.forward_with_state(x[:, :5])
    before = [t.clone() for t in leaves(state)]
    y1, new_state = mixer.step(x[:, 5], state)
    y2, _ = mixer.step(x[:, 5], state)  # the same state again gives the same step
    assert all(torch.equal(a, b) for a, b in zip(leaves(state), before, strict=True))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert new_state is not state


@pytest.mark.parametrize("arch", ARCHS)
def test_state_size_counts_state_floats(arch):
    mixer, x = make_mixer(arch), randn(B, L, D)
    assert sum(t.numel() for t in leaves(mixer.init_state(B))) == B * mixer.state_size(0)
    for p in (1, L):
        _, state = mixer.forward_with_state(x[:, :p])
        assert sum(t.numel() for t in leaves(state)) == B * mixer.state_size(p)
    assert make_model(arch).state_size(L) == 2 * mixer.state_size(L)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_follows_parameter_dtype(arch):
    for dtype in (torch.float32, torch.float64):
        assert all(t.dtype == dtype for t in leaves(make_mixer(arch, dtype=dtype).init_state(2)))


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_estimate_matches_what_autograd_saves(arch):
    """The memory estimate's per-mixer term is within 2x of the activations a float32 forward keeps."""
    for d, length in [(16, 8), (64, 64), (32, 256)]:
        mixer = make_mixer(arch, d, dtype=torch.float32)
        x = randn(2, length, d, dtype=torch.float32).requires_grad_()
        measured = saved_bytes(mixer, x) / x.element_size() / x.shape[0]  # floats per sequence
        estimate = mixer.activation_floats(length)
        assert measured / 2 <= estimate <= 2 * measured, (d, length, estimate, measured)


# ---------------------------------------------------------------- Transformer


def naive_attention(mixer: nn.Module, x: Tensor) -> Tensor:
    """Explicit QKᵀ, -inf mask, softmax, V with the mixer's weights; RoPE as complex multiplication."""
    b, n, d = x.shape
    h, d_h = mixer.n_heads, d // mixer.n_heads
    w, bias = mixer.in_proj.weight, mixer.in_proj.bias
    q, k, v = [(x @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d]).view(b, n, h, d_h).transpose(1, 2)
               for i in range(3)]  # 3 x (B, L, d) -> (B, H, L, d_h)
    if mixer.pos == "rope":
        theta = 10000.0 ** (-torch.arange(0, d_h, 2, dtype=torch.float64) / d_h)
        phase = torch.polar(torch.ones(n, d_h // 2, dtype=torch.float64), torch.arange(n)[:, None] * theta)
        q, k = [torch.view_as_real(torch.view_as_complex(t.reshape(b, h, n, d_h // 2, 2)) * phase).flatten(-2)
                for t in (q, k)]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_h)  # (B, H, L, L)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    attn = scores.softmax(-1)
    assert torch.allclose(attn.sum(-1), torch.ones((), dtype=attn.dtype)) and (attn.triu(1) == 0).all()  # T3
    o = (attn @ v).transpose(1, 2).reshape(b, n, d)  # (B, H, L, d_h) -> (B, L, d)
    return mixer.out_proj(o)


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize("pos", ["rope", "none"])
def test_transformer_matches_naive_attention(pos, n_heads):  # T4
    mixer, x = make_mixer("transformer", pos=pos, n_heads=n_heads), randn(B, L, D)
    torch.testing.assert_close(mixer(x), naive_attention(mixer, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pos", ["rope", "none"])
def test_transformer_single_token_is_value_then_output_projection(pos):  # T5
    mixer, x = make_mixer("transformer", pos=pos), randn(B, 1, D)
    w_v, b_v = mixer.in_proj.weight[2 * D:], mixer.in_proj.bias[2 * D:]
    torch.testing.assert_close(mixer(x), mixer.out_proj(x @ w_v.T + b_v), rtol=0, atol=1e-12)


def test_rope_depends_only_on_relative_position():  # T2, at the rotary function level
    q, k = randn(2, 2, L, 8, seed=3), randn(2, 2, L, 8, seed=4)
    t = torch.arange(L)

    def scores(offset: int) -> Tensor:
        return apply_rope(q, t + offset) @ apply_rope(k, t + offset).transpose(-1, -2)

    for p0 in (1, 7, 1000):
        torch.testing.assert_close(scores(p0), scores(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(apply_rope(q, t).norm(dim=-1), q.norm(dim=-1), rtol=0, atol=1e-12)  # rotation
    torch.testing.assert_close(apply_rope(q, torch.zeros(L)), q, rtol=0, atol=0)  # position 0 is the identity
    assert apply_rope(q.float(), t).dtype == torch.float32


def test_transformer_keeps_rope_out_of_state_dict():
    assert set(make_mixer("transformer").state_dict()) == {"in_proj.weight", "in_proj.bias",
                                                           "out_proj.weight", "out_proj.bias"}


def test_transformer_nope_is_permutation_invariant_over_the_past():
    """pos='none': the last output is a symmetric function of the earlier positions (§1.1)."""
    mixer, x = make_mixer("transformer", pos="none"), randn(B, L, D)
    past = torch.randperm(L - 1, generator=torch.Generator().manual_seed(0))
    perm = torch.cat((past, torch.tensor([L - 1])))
    torch.testing.assert_close(mixer(x[:, perm])[:, -1], mixer(x)[:, -1], rtol=0, atol=1e-12)
    rope = make_mixer("transformer", pos="rope")
    assert not torch.allclose(rope(x[:, perm])[:, -1], rope(x)[:, -1])


# ---------------------------------------------------------------- LSTM


def test_lstm_matches_hand_written_cell():  # L2: gate order i, f, g, o
    mixer, x = make_mixer("lstm"), randn(B, L, D)
    lstm = mixer.lstm
    h = c = x.new_zeros(B, D)
    ys = []
    for t in range(L):
        gates = x[:, t] @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
        i, f, g, o = gates.chunk(4, dim=-1)  # (B, 4d) -> 4 x (B, d)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        ys.append(h)
    y, (h_n, c_n) = mixer.forward_with_state(x)
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=0, atol=1e-12)
    torch.testing.assert_close(h_n[0], h, rtol=0, atol=1e-12)
    torch.testing.assert_close(c_n[0], c, rtol=0, atol=1e-12)


def test_lstm_forget_gate_probe():  # L4: f = 1, i = 0 keeps the cell constant
    mixer, x = make_mixer("lstm"), randn(B, L, D)
    with torch.no_grad():
        mixer.lstm.bias_ih_l0[:D] = -100.0  # input gate closed
        mixer.lstm.bias_ih_l0[D:2 * D] = 100.0  # forget gate open
    state = mixer.init_state(B)
    state = (state[0], randn(1, B, D, seed=5))
    _, (_, c_n) = step_through(mixer, x, state)
    torch.testing.assert_close(c_n, state[1], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- registry and backbone


def test_registry_lists_every_mixer_sorted():
    assert mixer_names() == sorted(MIXERS) and {"transformer", "lstm"} <= set(MIXERS)


def test_unknown_architecture_names_it_and_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown architecture 'gru' \(registered: .*lstm.*transformer"):
        build_mixer("gru", D)
    with pytest.raises(ValueError, match="gru"):
        build_model({"arch": "gru"})


@pytest.mark.parametrize("arch", ARCHS)
def test_unknown_hyperparameter_is_an_error(arch):
    with pytest.raises(ValueError, match=rf"'n_layers'.*'{arch}'"):
        build_mixer(arch, D, n_layers=3)


@pytest.mark.parametrize(("kw", "word"), [
    ({"n_heads": 3}, "n_heads"),  # does not divide 16
    ({"n_heads": 0}, "n_heads"),
    ({"pos": "alibi"}, "pos"),
])
def test_invalid_transformer_values(kw, word):
    with pytest.raises(ValueError, match=word):
        build_mixer("transformer", D, **kw)


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="rope"):
        build_mixer("transformer", 6)  # 2 heads of 3
    assert build_mixer("transformer", 6, pos="none").d_head == 3


def test_unused_shared_hparams_are_recorded():
    shared = {"d_state": 16, "d_conv": 4, "expand": 2}
    assert build_mixer("transformer", D, **shared).unused_hparams == ["d_conv", "d_state", "expand"]
    assert build_mixer("lstm", D, d_state=16).unused_hparams == ["d_state"]
    assert build_mixer("transformer", D).unused_hparams == []
    assert make_model("transformer").unused_hparams == ["d_conv", "d_state", "expand"]
    with pytest.raises(ValueError, match="'d_state' was set for architecture 'lstm', which does not use it"):
        make_model("lstm", mixer={"lstm": {"d_state": 8}})


def test_build_model_from_mapping_and_dictconfig():
    knobs = {"transformer": {"n_heads": 4, "pos": "none"}, "lstm": {}}
    plain = {"arch": "transformer", "d_model": D, "num_layers": 1, "mixer": knobs}
    for cfg in (plain, OmegaConf.create(plain)):
        model = build_model(cfg)
        assert isinstance(model.cfg, ModelConfig) and model.cfg.mixer == knobs
        assert all(type(v) is dict for v in model.cfg.mixer.values())
        assert model.blocks[0].mixer.n_heads == 4 and len(model.blocks) == 1
    with pytest.raises(ValueError, match="n_layer"):
        build_model({**plain, "n_layer": 2})
    with pytest.raises(ValueError, match="n_heads"):
        build_model({**plain, "mixer": {"transformer": {"n_heads": 3}}})
    with pytest.raises(ValueError, match="embedding must be 'learned', 'numeric' or 'both', got 'onehot'"):
        build_model({**plain, "embedding": "onehot"})


def test_mixer_knobs_are_keyed_by_architecture():
    both = {"transformer": {"n_heads": 4}, "s4d": {"disc": "bilinear"}}
    assert make_model("transformer", mixer=both).blocks[0].mixer.n_heads == 4  # s4d's knobs are not read
    assert make_model("s4d", mixer=both).blocks[1].mixer.kernel.disc == "bilinear"
    with pytest.raises(ValueError, match=r"mixer: unknown architecture 'transfomer' \(registered: .*transformer"):
        make_model("transformer", mixer={"transfomer": {"n_heads": 4}})
    with pytest.raises(ValueError, match="mixer must map each architecture to its knobs, got 'n_heads': 4"):
        ModelConfig(arch="transformer", mixer={"n_heads": 4})
    defaults = mixer_defaults()
    assert sorted(defaults) == ARCHS and defaults["transformer"] == {"n_heads": 2, "pos": "rope"}
    assert defaults["lstm"] == {} and "d_state" not in defaults["mamba"]
    for arch in ARCHS:  # every mixer builds from the full table of defaults, as a study's config passes it
        assert type(make_model(arch, mixer=defaults).blocks[0].mixer) is MIXERS[arch]


def test_numeric_embedding_uses_value_and_position_only():
    model = make_model("lstm", "numeric")
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    assert model.embed.weight.shape == (D, 2)
    tok = torch.tensor([[5, 5, 5]])
    emb = model._embed(tok, 0)
    assert not torch.allclose(emb[0, 0], emb[0, 1])  # same value, different position
    torch.testing.assert_close(model._embed(tok[:, 2:], 2), emb[:, 2:], rtol=0, atol=0)  # step offset
    torch.testing.assert_close(model.embed.weight @ torch.tensor([1.0, 1.0], dtype=torch.float64)
                               + model.embed.bias, model._embed(torch.tensor([[255]]), L - 1)[0, 0])


def test_both_embedding_is_learned_plus_numeric():
    model = make_model("lstm", "both")
    assert isinstance(model.embed, nn.Embedding) and model.embed_numeric.weight.shape == (D, 2)
    tok = torch.tensor([[0, 51, 255]])
    features = torch.tensor([[0.0, 0.0], [0.2, 1 / (L - 1)], [1.0, 2 / (L - 1)]], dtype=torch.float64)
    hand = model.embed.weight[tok[0]] + features @ model.embed_numeric.weight.T + model.embed_numeric.bias
    torch.testing.assert_close(model._embed(tok, 0)[0], hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(model._embed(tok[:, 1:], 1), model._embed(tok, 0)[:, 1:], rtol=0, atol=0)
    learned, numeric = make_model("lstm", "learned"), make_model("lstm", "numeric")
    learned.embed.load_state_dict(model.embed.state_dict())
    numeric.embed.load_state_dict(model.embed_numeric.state_dict())
    summed = learned._embed(tok, 3) + numeric._embed(tok, 3)
    torch.testing.assert_close(model._embed(tok, 3), summed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_runs_past_max_len(arch, embedding):  # the length split: trained at max_len, evaluated at 4x
    model, tok = make_model(arch, embedding), tokens(length=4 * L)
    logits = model(tok)
    assert logits.shape == (B, 4 * L, 256) and torch.isfinite(logits).all()
    pre, state = model.prefill(tok[:, :-1])
    step_logits, _ = model.step(tok[:, -1], state)
    torch.testing.assert_close(torch.cat((pre, step_logits[:, None]), 1), logits, rtol=0, atol=1e-10)
    if embedding != "learned":  # the position feature goes past 1 there: (4L - 1) / (L - 1)
        features = model._features(tok, 0)
        assert features[0, -1, 1].item() == pytest.approx((4 * L - 1) / (L - 1))


def test_generate_edge_cases():
    model = make_model("transformer").eval()
    prefix = tokens(length=3)
    assert torch.equal(model.generate(prefix, 0), prefix)
    assert model.generate(prefix, 1).shape == (B, 4)
    with pytest.raises(ValueError, match="prefix"):
        model.generate(prefix[:, :0], 2)
