"""All sequence families, in phase order. A family's position in `FAMILY_NAMES` is its integer label.

Phases 1..3 are the design's curriculum; phase 4 holds the memory probes `lag_1 .. lag_64` (the
`memory` study), registered last so the labels of the curriculum's families never change.
"""

from __future__ import annotations

from bench.data import memory, phase1, phase2, phase3
from bench.data.base import Family

PHASES = (1, 2, 3, 4)

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
