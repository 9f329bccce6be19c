"""Test splits and held-out regions: no training or validation stream ever draws a held-out
sequence (whole budgets of the shipped studies walked), the split test sets, the fixed validation
set, and the helpers that say which test rows a seed's budget drew."""

import pytest
import torch

from bench.data import (
    EVAL_SEED,
    FAMILY_NAMES,
    SPLITS,
    Curriculum,
    SequenceSet,
    TrainStream,
    fixed_validation_set,
    get_family,
    make_split_test_sets,
    make_test_set,
    seen_in,
    seen_in_training,
    training_budget,
    validation_set,
)
from bench.data.base import reserved
from bench.experiment.config import compose_config
from bench.seeding import generator


def held_out_rows(rows: SequenceSet) -> dict[str, int]:
    """{family: number of rows in that family's own held-out region}, for families with any."""
    counts = {}
    for index in rows.family.unique().tolist():
        name = FAMILY_NAMES[index]
        n = int(get_family(name).held_out(rows.seqs[rows.family == index]).sum())
        if n:
            counts[name] = n
    return counts


def validation_epochs(steps: int, val_every: int) -> list[float]:
    """The epoch of each validation `bench.train` runs (index k at position k - 1): every
    `val_every` steps and after the last step."""
    at = list(range(val_every, steps + 1, val_every))
    return [s / val_every for s in at + ([steps] if steps % val_every else [])]


def audit_study(study: str, seeds: list[int] | None = None) -> None:
    """Walk every sequence a study's budgets draw (training batches of the final stage, whose first
    search.steps are the search trials' batches, every fresh validation set, the fixed validation
    set) and assert none is held out by its own family or in the reserved slice, and that no `ood` or
    `unseen` test row occurs verbatim anywhere in them."""
    cfg = compose_config([f"study={study}"])
    d, t = cfg.data, cfg.train
    assert (cfg.search.steps or t.steps) <= t.steps and cfg.search.seed in cfg.seeds  # search reads a prefix
    curriculum = cfg.curriculum()
    splits = make_split_test_sets(curriculum.phases, d.length, d.test_per_family, d.eval_seed, curriculum.families,
                                  cfg.test_length_list)
    ood, unseen = splits["ood"].seqs, splits["unseen"].seqs
    for seed in seeds if seeds is not None else cfg.seeds:
        stream = TrainStream(curriculum, d.length, t.batch_size, seed, steps_per_epoch=t.val_every)
        drawn = SequenceSet.cat([stream.labelled_batch(step) for step in range(t.steps)])
        assert drawn.seqs.shape == (t.steps * t.batch_size, d.length)
        vals = [validation_set(curriculum, d.length, seed, k + 1, epoch, d.val_size)
                for k, epoch in enumerate(validation_epochs(t.steps, t.val_every))]
        vals.append(fixed_validation_set(curriculum, d.length, seed, d.val_fixed_size, exclude=splits.values()))
        everything = SequenceSet.cat([drawn, *vals])
        assert held_out_rows(everything) == {}, (study, seed)
        assert not reserved(everything.seqs).any(), (study, seed)
        assert not seen_in(ood, everything.seqs).any(), (study, seed)
        assert not seen_in(unseen, everything.seqs).any(), (study, seed)
        assert len(drawn.family.unique()) == sum(len(curriculum.phase_families(p)) for p in curriculum.phases)


def test_no_phase2_training_or_validation_stream_draws_a_held_out_sequence():
    audit_study("phase2")


def test_no_curriculum_training_or_validation_stream_draws_a_held_out_sequence():
    audit_study("curriculum")


def test_the_audit_would_catch_a_held_out_row():
    """The check the audit relies on can fail: an ood row slipped into a batch is found both ways."""
    splits = make_split_test_sets((2,), 8, 20)
    stream = TrainStream(Curriculum(phases=(2,)), 8, batch_size=32, seed=0, steps_per_epoch=10)
    batch = stream.labelled_batch(0)
    spiked = SequenceSet.cat([batch, splits["ood"].subset([5])])
    assert held_out_rows(batch) == {} and held_out_rows(spiked) == {splits["ood"].family_names()[5]: 1}
    assert seen_in(splits["ood"].seqs, spiked.seqs).sum() >= 1


# --- split test sets -------------------------------------------------------------------------------


def test_split_sets_have_the_documented_shape_and_regions():
    sets = make_split_test_sets((1, 2), 8, 30)
    assert list(sets) == ["iid", "unseen", "ood", "length_16", "length_32"]
    assert SPLITS == ("iid_seen", "iid_unseen", "ood", "length")
    names = [name for p in (1, 2) for name in FAMILY_NAMES if get_family(name).phase == p]
    for key, s in sets.items():
        length = int(key.split("_")[1]) if key.startswith("length") else 8
        assert s.seqs.shape == (12 * 30, length) and s.seqs.dtype == torch.int64, key
        assert s.family_names() == [n for n in names for _ in range(30)], key
        assert s.phase.tolist() == [1] * 90 + [2] * 270, key
        assert ((s.seqs >= 0) & (s.seqs < 256)).all(), key
    assert held_out_rows(sets["iid"]) == {} and held_out_rows(sets["length_16"]) == {}
    assert held_out_rows(sets["unseen"]) == {} and reserved(sets["unseen"].seqs).all()  # every family has some
    assert not reserved(sets["iid"].seqs).any() and not seen_in(sets["unseen"].seqs, sets["iid"].seqs).any()
    assert held_out_rows(sets["length_32"]) == {}
    ood = sets["ood"]
    assert held_out_rows(ood) == {n: 30 for n in names}  # every ood row is held out by its own family
    assert not seen_in(ood.seqs, sets["iid"].seqs).any()
    assert torch.equal(sets["iid"].seqs, make_test_set((1, 2), 8, 30).seqs)


def test_split_sets_are_deterministic_and_each_family_has_its_own_stream():
    a, b = make_split_test_sets((2,), 8, 25), make_split_test_sets((2,), 8, 25)
    other = make_split_test_sets((2,), 8, 25, eval_seed=EVAL_SEED + 1)
    for key in a:
        assert torch.equal(a[key].seqs, b[key].seqs) and torch.equal(a[key].family, b[key].family), key
        assert not torch.equal(a[key].seqs, other[key].seqs), key
    alone = make_split_test_sets((2,), 8, 25, families=("mixed_period", "geometric"))
    for key in a:
        for name in ("mixed_period", "geometric"):
            index = FAMILY_NAMES.index(name)
            assert torch.equal(alone[key].subset(alone[key].family == index).seqs,
                               a[key].subset(a[key].family == index).seqs), (key, name)


def test_length_splits_follow_each_rule_at_the_longer_length():
    sets = make_split_test_sets((1, 2, 3), 8, 20)
    for length in (16, 32):
        rows = sets[f"length_{length}"]
        assert torch.equal(rows.seqs, make_test_set((1, 2, 3), length, 20).seqs)
        for index in rows.family.unique().tolist():
            fam = get_family(FAMILY_NAMES[index])
            seqs, params = fam.generate(20, length, generator("test", EVAL_SEED, fam.name, length), "stream")
            assert torch.equal(seqs, rows.seqs[rows.family == index]) and fam.check(seqs, params).all(), fam.name


def test_length_splits_skip_families_too_short_and_the_training_length():
    sets = make_split_test_sets((4,), 32, 10, families=("lag_1", "lag_16"), lengths=(16, 32, 64))
    assert list(sets) == ["iid", "unseen", "ood", "length_16", "length_64"]  # 32 is the iid length
    assert sets["length_16"].family_names() == ["lag_1"] * 10  # lag_16 needs 18 terms
    assert sets["length_64"].family_names() == ["lag_1"] * 10 + ["lag_16"] * 10
    assert "length_4" not in make_split_test_sets((4,), 32, 10, families=("lag_16",), lengths=(4,))
    with pytest.raises(ValueError, match="at least 3"):
        make_split_test_sets((1,), 8, 10, lengths=(2,))
    with pytest.raises(ValueError, match="per_family"):
        make_split_test_sets((1,), 8, 0)


# --- fixed validation set --------------------------------------------------------------------------


def test_fixed_validation_set_is_fixed_disjoint_from_the_test_rows_and_never_held_out():
    curriculum = Curriculum(phases=(1, 2), phase_epochs=2, transition_epochs=1)
    test = make_split_test_sets((1, 2), 8, 100)
    val = fixed_validation_set(curriculum, 8, seed=0, exclude=test.values())
    assert len(val) == 1000 and val.seqs.shape == (1000, 8)
    assert (val.phase == 2).all()  # drawn at the curriculum's final epoch
    assert not seen_in(val.seqs, test["iid"].seqs).any()
    assert held_out_rows(val) == {}
    for exclude in (test["iid"], test["iid"].seqs, [test["iid"], test["ood"].seqs]):  # the same rows, any form
        assert torch.equal(fixed_validation_set(curriculum, 8, 0, exclude=exclude).seqs, val.seqs)
    assert torch.equal(fixed_validation_set(curriculum, 8, 0, exclude=test.values()).family, val.family)
    assert not torch.equal(fixed_validation_set(curriculum, 8, 1, exclude=test.values()).seqs, val.seqs)
    plain = fixed_validation_set(curriculum, 8, 0, size=1000)
    dropped = seen_in(plain.seqs, test["iid"].seqs)
    assert dropped.any()  # some draws were test rows, so `exclude` changed the set ...
    kept = plain.seqs[~dropped]
    assert torch.equal(val.seqs[: len(kept)], kept)  # ... only by replacing them with later draws
    small = fixed_validation_set(curriculum, 8, 0, size=37, exclude=test.values())
    assert len(small) == 37 and torch.equal(small.seqs, fixed_validation_set(curriculum, 8, 0, 37, test["iid"]).seqs)


def test_fixed_validation_set_thins_out_a_family_inside_the_test_set():
    """`geometric` has 44 sequences at length 8 that streams draw (56 in its training region, 12 of
    them reserved) and the iid test rows hold 89 % of that mass, so a validation set excluding every
    iid test row has far fewer geometric rows than the mixture's 1/9, and with every one of them
    excluded none: why a study excludes only the iid rows its budget never drew."""
    test = make_test_set((2,), 8, 100)
    geometric, fam = FAMILY_NAMES.index("geometric"), get_family("geometric")
    support = fam.support(8)
    region = support.restrict(~fam.held_out(support.seqs) & ~reserved(support.seqs))
    assert len(torch.unique(region.seqs, dim=0)) == 44
    assert float(region.prob[seen_in(region.seqs, test.seqs)].sum()) == pytest.approx(39 / 44)
    val = fixed_validation_set(Curriculum(phases=(2,)), 8, 0, exclude=test)
    assert 0 < int((val.family == geometric).sum()) < 1000 / 9 / 2
    val = fixed_validation_set(Curriculum(phases=(2,)), 8, 0, exclude=[test, region.seqs])
    assert len(val) == 1000 and not (val.family == geometric).any() and len(val.family.unique()) == 8


def test_fixed_validation_set_rejects_bad_arguments():
    c = Curriculum(phases=(1,))
    with pytest.raises(ValueError, match="size must be positive"):
        fixed_validation_set(c, 8, 0, size=0)
    with pytest.raises(ValueError, match="2-d"):
        fixed_validation_set(c, 8, 0, exclude=torch.zeros(8, dtype=torch.long))
    with pytest.raises(RuntimeError, match="could not draw"):  # every constant sequence excluded
        everything = torch.arange(256).unsqueeze(1).expand(256, 8)
        fixed_validation_set(Curriculum(phases=(1,), families=("constant",)), 8, 0, size=10, exclude=everything)


# --- training budget and verbatim membership ---------------------------------------------------------


def test_training_budget_is_the_stacked_batches():
    stream = TrainStream(Curriculum(phases=(1, 2), phase_epochs=1, transition_epochs=1), length=8, batch_size=8,
                         seed=3, steps_per_epoch=4, chunk_batches=5)
    for steps in (0, 1, 5, 13):  # within, at and across chunk boundaries
        budget = training_budget(stream, steps)
        assert budget.shape == (steps * 8, 8) and budget.dtype == torch.int64
        expected = torch.cat([stream.batch(i) for i in range(steps)] or [torch.empty(0, 8, dtype=torch.long)])
        assert torch.equal(budget, expected), steps
    with pytest.raises(ValueError, match="steps must be non-negative"):
        training_budget(stream, -1)


def test_seen_in_hand_example_and_errors():
    budget = torch.tensor([[0, 0, 0], [1, 2, 3], [255, 0, 0]])
    seqs = torch.tensor([[1, 2, 3], [3, 2, 1], [255, 0, 0], [255, 0, 1], [0, 0, 0]])
    assert seen_in(seqs, budget).tolist() == [True, False, True, False, True]
    assert seen_in(seqs, budget[:0]).tolist() == [False] * 5
    assert seen_in(seqs[:0], budget).tolist() == []
    with pytest.raises(ValueError, match="equal length"):
        seen_in(seqs, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="0..255"):
        seen_in(torch.tensor([[256, 0, 0]]), budget)


def test_seen_in_training_reads_the_training_budget():
    stream = TrainStream(Curriculum(phases=(1,)), length=8, batch_size=16, seed=0, steps_per_epoch=10, chunk_batches=3)
    test = make_test_set((1,), 8, 100)
    assert torch.equal(seen_in_training(test, stream, 7), seen_in(test.seqs, training_budget(stream, 7)))
    assert seen_in_training(test, stream, 7).any()  # `constant` has 256 sequences: some are drawn
