"""train_seeds: S members trained as one stacked model reach what S separate train() runs reach
(weights, per-validation history, early stopping, divergence), for every registered mixer."""

import math

import pytest
import torch

from bench import multiseed
from bench.config import TrainConfig
from bench.data import Curriculum, TrainStream
from bench.models import ModelConfig, build_model, mixer_names
from bench.multiseed import train_seeds, vectorisable, why_not_vectorisable
from bench.train import TrainingDiverged, distance_weighted_ce, train

SEEDS = (0, 1, 2)
# float64, so that the only differences are summation orders (observed: <= 4e-14 after 20 steps)
WEIGHTS = {"rtol": 1e-9, "atol": 1e-10}


def tiny_model(arch: str, seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    sizes = {"d_model": 16, "num_layers": 2, "d_state": 8, "ffn_mult": 2} | kw
    return build_model(ModelConfig(arch=arch, **sizes)).double()


def streams() -> list[TrainStream]:
    return [TrainStream(Curriculum(phases=(1,)), length=8, batch_size=8, seed=s, steps_per_epoch=5) for s in SEEDS]


def real_validators(calls: list) -> list:
    """Each member its own validation set; every call is logged as (member, index, epoch)."""
    def make(member: int):
        seqs = TrainStream(Curriculum(phases=(1,)), 8, 16, seed=100 + member, steps_per_epoch=1).batch(0)

        def validate(model, index, epoch):
            calls.append((member, index, epoch))
            return {"val_loss": distance_weighted_ce(model(seqs[:, :-1]), seqs[:, 1:]).item()}
        return validate
    return [make(i) for i in SEEDS]


def run_both(arch, cfg, validators, poison=None, final_epoch=0.0, **model_kw):
    """Separate train() runs and one train_seeds run from identical models; a divergence train()
    raises is kept as its exception."""
    alone = [tiny_model(arch, s, **model_kw) for s in SEEDS]
    together = [tiny_model(arch, s, **model_kw) for s in SEEDS]
    if poison is not None:
        poison(alone[1])
        poison(together[1])
    ref = []
    for model, stream, validate in zip(alone, streams(), validators(), strict=True):
        try:
            ref.append(train(model, cfg, stream, validate, final_epoch))
        except TrainingDiverged as e:
            ref.append(e)
    got = train_seeds(together, cfg, streams(), validators(), final_epoch)
    return alone, together, ref, got


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(y, x, **WEIGHTS, msg=lambda m, name=name: f"{name}: {m}")


def assert_same_history(ref_history, history):
    assert [(h["step"], h["tokens"], h["epoch"], h["lr"]) for h in history] == \
        [(h["step"], h["tokens"], h["epoch"], h["lr"]) for h in ref_history]
    for h, r in zip(history, ref_history, strict=True):
        assert h["train_loss"] == pytest.approx(r["train_loss"], rel=1e-6, nan_ok=True)
        assert h["val_loss"] == pytest.approx(r["val_loss"], rel=1e-6, nan_ok=True)


def assert_same_result(ref, res):
    assert res.error is None and res.fallback == ""
    assert (res.steps, res.tokens, res.best_step, res.stopped_early) == \
        (ref.steps, ref.tokens, ref.best_step, ref.stopped_early)
    assert res.best_val == pytest.approx(ref.best_val, rel=1e-6)
    assert_same_history(ref.history, res.history)


@pytest.mark.parametrize("arch", mixer_names())
def test_stacked_training_equals_separate_runs(arch):
    """3 init seeds, 3 streams, 3 validation sets: same weights, history and validation calls."""
    assert why_not_vectorisable(tiny_model(arch, 0)) == ""  # the stacked path runs, not the fallback
    calls_alone, calls_together = [], []
    cfg = TrainConfig(steps=17, batch_size=8, val_every=5, lr=1e-2)  # a final partial epoch too
    validators = iter([lambda: real_validators(calls_alone), lambda: real_validators(calls_together)])
    alone, together, ref, got = run_both(arch, cfg, lambda: next(validators)())
    for a, b, r, res in zip(alone, together, ref, got, strict=True):
        assert_same_result(r, res)
        assert_same_weights(a, b)
        assert not b.training  # left in eval mode, as train() leaves it
    assert sorted(calls_together) == sorted(calls_alone) == sorted(
        (m, i, e) for m in SEEDS for i, e in ((1, 1.0), (2, 2.0), (3, 3.0), (4, 3.4)))
    first = tiny_model(arch, 0)
    assert any(not torch.equal(p, q) for p, q in zip(first.parameters(), together[0].parameters(), strict=True))


@pytest.mark.parametrize("arch, options", [
    ("transformer", {"mixer": {"pos": "none"}, "embedding": "numeric", "num_layers": 1}),
    ("mamba", {"mixer": {"bias": True, "conv_bias": False}, "expand": 1, "d_conv": 2}),
    ("s4d", {"mixer": {"disc": "bilinear", "init": "real"}}),
    ("stable_ssm", {"mixer": {"bias": True, "activation": "gelu", "reparam": "exp"}}),
    ("liquid_s4", {"mixer": {"liquid_kernel": "kb", "liquid_degree": 3, "lcontract": "tanh"}}),
    ("liquid_s4", {"mixer": {"liquid_kernel": "none"}}),
    ("sgconv", {"mixer": {"interp": "nearest"}, "d_state": 2}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v}" for k, v in sorted(v.items())))
def test_mixer_options_and_the_numeric_embedding_are_stacked_exactly(arch, options):
    """The branches of the grouped forwards that the default configurations do not take."""
    assert why_not_vectorisable(tiny_model(arch, 0, **options)) == ""
    cfg = TrainConfig(steps=6, batch_size=8, val_every=3, lr=1e-2)
    alone, together, ref, got = run_both(arch, cfg, lambda: real_validators([]), **options)
    for a, b, r, res in zip(alone, together, ref, got, strict=True):
        assert_same_result(r, res)
        assert_same_weights(a, b)


def test_members_stop_early_at_their_own_validations():
    """Scripted validation losses: member 0 stops at step 20 (best at 10, counted from final_epoch 2
    on), member 1 at 25 (best at 15), member 2 runs the budget. Each ends on its best weights, which
    are the ones its validator saw at its best validation, as in its separate run."""
    losses = ([1.0, 1.1, 1.2, 1.3], [1.0, 0.8, 0.7, 0.9, 0.95], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    seen = {}

    def validators(tag):
        def make(member):
            def validate(model, index, epoch):
                seen[tag, member, index] = {k: v.clone() for k, v in model.state_dict().items()}
                return {"val_loss": losses[member][index - 1]}
            return validate
        return [make(m) for m in SEEDS]

    tags = iter(["alone", "together"])
    cfg = TrainConfig(steps=30, batch_size=8, val_every=5, lr=1e-2, patience=2)
    alone, together, ref, got = run_both("transformer", cfg, lambda: validators(next(tags)), final_epoch=2.0)
    assert [(r.steps, r.best_step, r.stopped_early) for r in got] == [(20, 10, True), (25, 15, True), (30, 30, False)]
    for member, (a, b, r, res) in enumerate(zip(alone, together, ref, got, strict=True)):
        assert_same_result(r, res)
        assert_same_weights(a, b)
        best_index = res.best_step // cfg.val_every
        for k, v in b.state_dict().items():  # restored to what the validator saw at the best validation
            torch.testing.assert_close(v, seen["together", member, best_index][k], rtol=0, atol=0)
    assert {k[2] for k in seen if k[:2] == ("together", 0)} == {1, 2, 3, 4}  # no validation after stopping


@pytest.mark.parametrize("arch", mixer_names())
def test_a_diverging_member_is_reported_while_the_others_match(arch):
    """Member 1 starts with a NaN embedding table (non-finite training loss at the first validation);
    member 2's validator returns NaN at its second validation. Both are reported with the reason
    train() raises and their history up to it; member 0 trains on and matches its separate run."""
    calls = []

    def validators():
        good = real_validators(calls)

        def nan_at_second(model, index, epoch):
            return {"val_loss": math.nan if index == 2 else good[2](model, index, epoch)["val_loss"]}
        return [good[0], good[1], nan_at_second]

    def poison(model):
        with torch.no_grad():
            model.embed.weight.fill_(math.nan)

    cfg = TrainConfig(steps=20, batch_size=8, val_every=5, lr=1e-2)
    alone, together, ref, got = run_both(arch, cfg, validators, poison=poison)
    assert_same_result(ref[0], got[0])
    assert_same_weights(alone[0], together[0])
    assert got[0].steps == 20
    for member, step, why in ((1, 5, "non-finite training loss (nan) at step 5"),
                              (2, 10, "non-finite validation loss at step 10")):
        assert isinstance(ref[member], TrainingDiverged) and str(ref[member]) == why
        assert got[member].error == why and got[member].steps == step
        assert_same_history(ref[member].result.history, got[member].history)
    assert len(got[2].history) == 2 and not got[1].history
    assert_same_weights(alone[2], together[2])  # left at its weights of the failure, like train() leaves it


def test_dropout_falls_back_to_separate_runs_and_says_why():
    model = tiny_model("lstm", 0, dropout=0.1)
    assert not vectorisable(model) and "dropout" in why_not_vectorisable(model)
    cfg = TrainConfig(steps=6, batch_size=8, val_every=3, lr=1e-2)
    alone = [tiny_model("lstm", s, dropout=0.1) for s in SEEDS]
    together = [tiny_model("lstm", s, dropout=0.1) for s in SEEDS]
    with torch.no_grad():
        alone[1].head.bias.fill_(math.inf)
        together[1].head.bias.fill_(math.inf)
    torch.manual_seed(7)
    ref = []
    for model, stream, validate in zip(alone, streams(), real_validators([]), strict=True):
        try:
            ref.append(train(model, cfg, stream, validate))
        except TrainingDiverged as e:
            ref.append(e)
    torch.manual_seed(7)  # dropout draws from the global stream, in the same order
    with pytest.warns(UserWarning, match="one after another.*dropout"):
        got = train_seeds(together, cfg, streams(), real_validators([]))
    assert all("dropout" in r.fallback for r in got)
    assert got[1].error == str(ref[1]) and got[0].error is None and got[2].error is None
    for member in (0, 2):
        assert_same_history(ref[member].history, got[member].history)
        for x, y in zip(alone[member].state_dict().values(), together[member].state_dict().values(), strict=True):
            torch.testing.assert_close(y, x, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # functorch's per-member attention fallback
def test_a_mixer_without_a_grouped_forward_is_vmapped_or_falls_back(monkeypatch):
    """Without its entry in GROUPED the transformer runs vmapped, still equal to separate runs; the
    LSTM (aten::lstm has no vmap rule) fails the probe and is trained one model after another."""
    monkeypatch.setattr(multiseed, "GROUPED", {})
    cfg = TrainConfig(steps=10, batch_size=8, val_every=5, lr=1e-2)
    alone, together, ref, got = run_both("transformer", cfg, lambda: real_validators([]))
    for a, b, r, res in zip(alone, together, ref, got, strict=True):
        assert_same_result(r, res)
        assert_same_weights(a, b)
    assert "probe failed" in why_not_vectorisable(tiny_model("lstm", 0))


def test_members_must_be_one_configuration_and_length():
    cfg = TrainConfig(steps=2, batch_size=8, val_every=1)
    validators = real_validators([])
    mixed = [tiny_model("transformer", 0), tiny_model("transformer", 1, num_layers=1), tiny_model("transformer", 2)]
    with pytest.raises(ValueError, match="one configuration"):
        train_seeds(mixed, cfg, streams(), validators)
    lengths = streams()[:2] + [TrainStream(Curriculum(phases=(1,)), 9, 8, seed=2, steps_per_epoch=5)]
    with pytest.raises(ValueError, match="different lengths"):
        train_seeds([tiny_model("transformer", s) for s in SEEDS], cfg, lengths, validators)
    with pytest.raises(ValueError, match="3 models, 2 streams"):
        train_seeds([tiny_model("transformer", s) for s in SEEDS], cfg, streams()[:2], validators)
