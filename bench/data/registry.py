"""All sequence families, in phase order. A family's position in `FAMILY_NAMES` is its integer label.

Phases 1..3 are the design's curriculum; phase 4 holds the memory probes `lag_1 .. lag_64` (the
`memory` study) and phase 5 the mechanism tasks of the literature (`selective_copy_N`, `mqar_N`,
`noisy_recall_N`, `variable_lag_K`), each registered after the others so no earlier label changes.
"""

from __future__ import annotations

import torch

from bench.data import mechanisms, memory, phase1, phase2, phase3
from bench.data.base import Family

PHASES = (1, 2, 3, 4, 5)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        phase1.Constant(),
        phase1.Arithmetic(),
        phase1.Alternating(),
        phase2.AlternatingSteps(),
        phase2.GrowingSteps(),
        phase2.ShrinkingSteps(),
        phase2.Geometric(),
        phase2.AlternatingFactors(),
        phase2.RationalFactors(),
        phase2.TwoStep(),
        phase2.ThreeStep(),
        phase2.MixedPeriod(),
        phase3.FibonacciMod(),
        phase3.DoubleEveryThird(),
        phase3.FloorGeometric(),
        phase3.CeilGeometric(),
        phase3.AlternatingSigns(),
        phase3.EvenOdd(),
        phase3.RuleSwitch(),
        *(memory.Lag(k) for k in memory.LAGS),
        *mechanisms.all_families(),
    )
}
FAMILY_NAMES: list[str] = list(FAMILIES)
FAMILY_INDEX: dict[str, int] = {name: i for i, name in enumerate(FAMILY_NAMES)}


def families(phase: int | None = None) -> list[Family]:
    """The families of one phase (all families for None), in registry order."""
    if phase is not None and phase not in PHASES:
        raise ValueError(f"unknown phase {phase} (known: {', '.join(map(str, PHASES))})")
    return [f for f in FAMILIES.values() if phase is None or f.phase == phase]


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family '{name}' (known: {', '.join(FAMILY_NAMES)})") from None


def scored_positions(seqs: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """BoolTensor (n, L-1): `Family.scored` of each row of `seqs` (n, L) under its family, `family`
    (n,) holding FAMILY_INDEX labels (a `SequenceSet`'s). One call per family present.
    Example: a lag_4 row of length 8 and a constant row give [[F, F, F, T, T, T, T], [T] * 7]."""
    n, length = seqs.shape
    mask = torch.ones(n, max(length - 1, 0), dtype=torch.bool)
    for label in family.unique().tolist():
        rows = family == label
        mask[rows] = FAMILIES[FAMILY_NAMES[label]].scored(seqs[rows])
    return mask
