"""Integer-sequence families and the curriculum that mixes them.

Families are grouped into the design's three phases (simple, nested, combined recurrences) and a
fourth outside that curriculum (memory probes: x_t = x_{t-k}, `lag_1 .. lag_64`); every term is a
class in 0..255. `FAMILY_NAMES` fixes each family's integer label.

    from bench.data import Curriculum, TrainStream, make_test_set
    stream = TrainStream(Curriculum(phases=(1, 2)), length=8, batch_size=64, seed=0, steps_per_epoch=100)
    x = stream.batch(0)                       # LongTensor (64, 8)
    test = make_test_set(phases=(1, 2))       # fixed, labelled by family and phase
"""

from bench.data.base import VOCAB, AdditiveFamily, Family
from bench.data.curriculum import (
    EVAL_SEED,
    Curriculum,
    SequenceSet,
    TrainStream,
    make_test_set,
    seen_in_training,
    validation_set,
)
from bench.data.registry import FAMILIES, FAMILY_NAMES, PHASES, families, get_family

__all__ = [
    "EVAL_SEED",
    "FAMILIES",
    "FAMILY_NAMES",
    "PHASES",
    "VOCAB",
    "AdditiveFamily",
    "Curriculum",
    "Family",
    "SequenceSet",
    "TrainStream",
    "families",
    "get_family",
    "make_test_set",
    "seen_in_training",
    "validation_set",
]
