"""Integer-sequence families and the curriculum that mixes them.

Families are grouped into the design's three phases (simple, nested, combined recurrences) and two
outside that curriculum (4: memory probes, x_t = x_{t-k}, `lag_1 .. lag_64`; 5: mechanism tasks,
selective copying, associative recall, cued lags); every term is a class in 0..255. Only the
predictions a family's rule determines count (`Family.scored`; per row of a set:
`scored_positions(seqs, family)`): every one in phases 1-3, not lag_k's first k, only the answers in
phase 5. `FAMILY_NAMES` fixes each family's integer label. Each family declares a held-out
region (`Family.held_out`) that no training or validation stream draws; the `ood` test split does.

    from bench.data import Curriculum, TrainStream, make_split_test_sets, training_budget, seen_in
    stream = TrainStream(Curriculum(phases=(1, 2)), length=8, batch_size=64, seed=0, steps_per_epoch=100)
    x = stream.batch(0)                             # LongTensor (64, 8)
    splits = make_split_test_sets(phases=(1, 2))    # iid, ood, length_16, length_32
    seen = seen_in(splits["iid"].seqs, training_budget(stream, 2000))  # iid_seen vs iid_unseen
    table = ceiling(phases=(1, 2), length=8)        # the Bayes-optimal accuracy per family and position

`bench.data.ceiling` is a function (from `bench.data.bayes`, the home of the Bayes-optimal predictor).
"""

from bench.data.base import HELD_OUT_KINDS, REGIONS, VOCAB, AdditiveFamily, Family, Support
from bench.data.bayes import Bayes, ceiling
from bench.data.curriculum import (
    EVAL_SEED,
    SPLIT_LENGTHS,
    SPLITS,
    Curriculum,
    SequenceSet,
    TrainStream,
    fixed_validation_set,
    make_split_test_sets,
    make_test_set,
    seen_in,
    seen_in_training,
    training_budget,
    validation_set,
)
from bench.data.lookup import LookupTable
from bench.data.oeis import KINDS, TAUGHT, OeisSet, oeis_windows
from bench.data.registry import FAMILIES, FAMILY_NAMES, PHASES, families, get_family, scored_positions

__all__ = [
    "EVAL_SEED",
    "FAMILIES",
    "FAMILY_NAMES",
    "HELD_OUT_KINDS",
    "KINDS",
    "PHASES",
    "REGIONS",
    "SPLITS",
    "SPLIT_LENGTHS",
    "TAUGHT",
    "VOCAB",
    "AdditiveFamily",
    "Bayes",
    "Curriculum",
    "Family",
    "LookupTable",
    "OeisSet",
    "SequenceSet",
    "Support",
    "TrainStream",
    "ceiling",
    "families",
    "fixed_validation_set",
    "get_family",
    "make_split_test_sets",
    "make_test_set",
    "oeis_windows",
    "seen_in",
    "scored_positions",
    "seen_in_training",
    "training_budget",
    "validation_set",
]
