"""train_mutual: with weight 0 every member ends exactly where its own train() run ends (the control
of the mutual-learning study); with weight > 0 the KL term pulls the members' predictions together."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bench.data import Curriculum, TrainStream
from bench.models import ModelConfig, build_model
from bench.mutual import peer_kl, rng_state, train_mutual
from bench.train import TrainConfig, TrainingDiverged, distance_weighted_ce, train

ARCHS = ("transformer", "lstm", "s4d")
CFG = TrainConfig(steps=12, batch_size=8, lr=3e-3, val_every=3, warmup_steps=2, patience=1, min_delta=0.0)


def model(arch: str, **kw) -> torch.nn.Module:
    torch.manual_seed(7)  # the study engine's rule: one init seed, whatever the architecture
    return build_model(ModelConfig(arch=arch, d_model=16, num_layers=1, d_state=8, ffn_mult=2, **kw))


def stream() -> TrainStream:
    return TrainStream(Curriculum(phases=(1,)), length=8, batch_size=8, seed=3, steps_per_epoch=3)


VAL = TrainStream(Curriculum(phases=(1,)), 8, 32, seed=99, steps_per_epoch=1).batch(0)


def validate(m, index, epoch):
    return {"val_loss": distance_weighted_ce(m(VAL[:, :-1]), VAL[:, 1:]).item()}


def alone_and_together(weight, cfg=CFG, archs=ARCHS, **kw):
    """Each architecture trained alone by train(), and all jointly by train_mutual from identical
    models; `cfg` is one TrainConfig or one per architecture."""
    cfgs = [cfg] * len(archs) if isinstance(cfg, TrainConfig) else cfg
    alone, together, states = [], [], []
    for arch, c in zip(archs, cfgs, strict=True):
        m = model(arch, **kw)
        ref_state = rng_state(torch.device("cpu"))
        alone.append((m, train(m, c, stream(), validate)))
        together.append(model(arch, **kw))
        states.append(rng_state(torch.device("cpu")))
        assert torch.equal(states[-1][0], ref_state[0])
    torch.manual_seed(12345)  # the loop must not depend on the ambient random state
    got = train_mutual(together, cfg, stream(), [validate] * len(archs), weight, rng_states=states)
    return alone, together, got


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_weight_zero_reproduces_independent_training_bit_for_bit(dropout):
    """Early stopping at different validations (patience 1), each architecture its own learning
    rate, dropout drawing from each member's own random stream: every member's weights and history
    equal its train() run exactly."""
    cfgs = [replace(CFG, lr=lr) for lr in (3e-3, 1e-2, 5e-3)]
    alone, together, got = alone_and_together(0.0, cfgs, dropout=dropout)
    stops = set()
    for (ref_model, ref), m, res in zip(alone, together, got, strict=True):
        assert res.error is None
        assert (res.steps, res.best_step, res.stopped_early, res.best_val) == \
            (ref.steps, ref.best_step, ref.stopped_early, ref.best_val)
        assert [{k: v for k, v in h.items()} for h in res.history] == ref.history
        for (name, a), b in zip(ref_model.state_dict().items(), m.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert not m.training
        stops.add(res.steps)
    assert len(stops) > 1, "the members should stop at different steps for this test to mean something"


def test_a_positive_weight_pulls_the_predictions_together():
    cfg = TrainConfig(steps=60, batch_size=8, lr=1e-2, val_every=10, warmup_steps=2, early_stopping=False)
    archs = ("transformer", "lstm")

    def disagreement(models):
        with torch.no_grad():
            lp = [F.log_softmax(m(VAL[:, :-1]), -1) for m in models]
        return peer_kl(lp[0], [lp[1]]).item()

    _, independent, _ = alone_and_together(0.0, cfg, archs)
    _, mutual, got = alone_and_together(5.0, cfg, archs)
    assert all(r.error is None and r.steps == 60 for r in got)
    assert disagreement(mutual) < 0.75 * disagreement(independent)  # measured 0.11 vs 0.18
    assert not torch.equal(independent[0].head.weight, mutual[0].head.weight)


def test_peer_kl_is_the_mean_kl_from_each_peer():
    torch.manual_seed(0)
    own, a, b = (F.log_softmax(torch.randn(4, 5, 256), -1) for _ in range(3))
    manual = [(q.exp() * (q - own)).sum(-1).mean() for q in (a, b)]
    assert peer_kl(own, [a, b]).item() == pytest.approx(sum(manual).item() / 2, rel=1e-5)
    assert peer_kl(own, [own]).item() == pytest.approx(0.0, abs=1e-6)
    broken = a.clone()
    broken[0, 0, 0] = math.nan  # a diverged peer is left out of the mean, and passes no NaN gradient
    own.requires_grad_(True)
    loss = peer_kl(own, [b, broken])
    assert loss.item() == pytest.approx(manual[1].item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(own.grad).all()


class Poisoned(torch.nn.Module):
    """A model whose predictions turn NaN from its 4th forward in training mode."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= 4:
                out = out * math.nan
        return out


def test_a_diverging_member_leaves_and_the_others_train_on_unharmed():
    cfg = TrainConfig(steps=12, batch_size=8, lr=3e-3, val_every=3, warmup_steps=2, early_stopping=False)
    bad = Poisoned(model("lstm"))
    with pytest.raises(TrainingDiverged, match="non-finite training loss"):
        train(Poisoned(model("lstm")), cfg, stream(), validate)
    good = [model("transformer"), model("s4d")]
    got = train_mutual([bad, *good], cfg, stream(), [validate] * 3, weight=1.0)
    assert got[0].error.startswith("non-finite training loss") and got[0].steps == 6
    for m, res in zip(good, got[1:], strict=True):
        assert res.error is None and res.steps == 12
        assert all(math.isfinite(h["val_loss"]) for h in res.history)
        assert all(torch.isfinite(p).all() for p in m.parameters())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="share steps"):
        train_mutual([model("lstm"), model("s4d")], [CFG, replace(CFG, steps=3)], stream(), [validate] * 2, 1.0)
    with pytest.raises(ValueError, match="at least two models"):
        train_mutual([model("lstm")], CFG, stream(), [validate], 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        train_mutual([model("lstm"), model("s4d")], CFG, stream(), [validate] * 2, -1.0)
