"""Scored positions (`Family.scored`) are honoured everywhere a prediction counts: the training loss,
validation and every metric. A family's unscored positions (noise, a lag's first values) change
nothing when the model's outputs there change, and an oracle of the rule scores 100 % on the rest."""

from __future__ import annotations

import torch

from bench.data import make_test_set
from bench.data.registry import get_family
from bench.experiment.context import validation_scores
from bench.metrics import evaluate, per_prediction
from bench.train import distance_weighted_ce

FAMILIES = ("selective_copy_4", "mqar_4", "noisy_recall_4", "variable_lag_8", "lag_4")


def _test_set(length: int = 32):
    return make_test_set(phases=(4, 5), length=length, per_family=20, families=FAMILIES)


def _oracle(test):
    """Logits putting all mass on the rule's answer where the prefix determines one, and on a
    deliberately wrong value (noise) where it does not: a model perfect on scored positions only."""
    fams = test.family_names()

    def predict(inputs: torch.Tensor, junk: int = 0) -> torch.Tensor:
        rows = []
        for i, row in enumerate(inputs):
            fam = get_family(fams[i])
            if hasattr(fam, "answers"):
                ans = fam.answers(row[None])[0]
            else:  # lag_k: x_{p+1} = x_{p+1-k}
                p = torch.arange(len(row))
                src = p + 1 - fam.k
                ans = torch.where(src >= 0, row[src.clamp(min=0)], torch.full_like(row, -1))
            wrong = (row + 1 + junk) % 256
            rows.append(torch.where(ans >= 0, ans, wrong))
        return torch.nn.functional.one_hot(torch.stack(rows), 256).float() * 20

    return predict


def test_the_mask_marks_the_answer_positions_and_a_lags_late_positions():
    test = _test_set()
    mask = test.scored()
    assert mask is not None and mask.shape == (len(test), 31)
    for name in FAMILIES:
        rows = torch.tensor([f == name for f in test.family_names()])
        share = mask[rows].float().mean().item()
        assert 0 < share < 1, name  # some positions scored, some not


def test_an_oracle_scores_every_scored_position_and_unscored_outputs_change_nothing():
    test = _test_set()
    oracle = _oracle(test)
    table = evaluate(oracle, test, batch_size=len(test))
    acc = table[(table.metric == "accuracy") & table.position.isna() & table.phase.notna()]
    assert (acc.value == 1).all()
    other = evaluate(lambda x: oracle(x, junk=7), test, batch_size=len(test))  # different unscored outputs
    assert other.equals(table)
    a, b = per_prediction(oracle, test), per_prediction(lambda x: oracle(x, junk=7), test)
    assert a.equals(b) and a.correct.all() and len(a) == int(test.scored().sum())


def test_loss_and_validation_ignore_unscored_positions():
    test = _test_set()
    mask = test.scored()
    inputs, targets = test.seqs[:, :-1], test.seqs[:, 1:]
    base = _oracle(test)(inputs)
    noisy = base + 5 * torch.randn(base.shape, generator=torch.Generator().manual_seed(0)) * (~mask)[..., None]
    la = distance_weighted_ce(base, targets, mask=mask)
    lb = distance_weighted_ce(noisy, targets, mask=mask)
    assert torch.allclose(la, lb) and la < 1e-3
    assert distance_weighted_ce(noisy, targets) > 10 * la  # unmasked, the noise would count

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits[: len(x)]

    va = validation_scores(Fixed(base), test.seqs, 0.1, "linear", len(test), mask)
    vb = validation_scores(Fixed(noisy), test.seqs, 0.1, "linear", len(test), mask)
    assert va == vb and va["accuracy"] == 1


def test_the_training_streams_mask_is_its_batchs_own_across_chunks():
    """`TrainStream.scored_batch` computes the mask once per chunk: it must be each step's own
    (`SequenceSet.scored` of that batch), None where every position counts (phase 2)."""
    from bench.data.curriculum import Curriculum, TrainStream

    for phases, length in (((2,), 8), ((4,), 128), ((5,), 128)):
        stream = TrainStream(Curriculum(phases=phases), length, 16, 0, steps_per_epoch=10, chunk_batches=4)
        for step in (0, 3, 5, 9, 2):  # across chunk boundaries and back
            seqs, mask = stream.scored_batch(step)
            want = stream.labelled_batch(step).scored()
            assert torch.equal(seqs, stream.batch(step))
            assert (mask is None) == (want is None) == (phases == (2,))
            assert mask is None or torch.equal(mask, want)
