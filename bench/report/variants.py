"""The report of a study with variants, from the variants' stored tables in `<out_dir>/<variant>/`:
a mechanism study (phase 5 only: its variants are the widths of the state-size axis) gets
`build_mechanism_report`, any other ablation `build_ablation_report`. `bench.run` calls it when the
variants end, `python -m bench.report` on demand, each with the study's configuration as plain
values (this layer reads stored tables only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.report.ablation import build_ablation_report
from bench.report.mechanism_report import build_mechanism_report
from bench.report.tables import MARGIN

MECHANISM_PHASE = 5


def build_variants_report(study: str, phases: Sequence[int], out_dir: Path, variants: Mapping[str, list[str]],
                          report_dir: Path, margin: float = MARGIN, long_study: str | None = None) -> Path:
    """Write the report of study `study` (stored in `out_dir`, one folder per variant) to `report_dir`;
    returns its README's path."""
    dirs = {v: Path(out_dir) / v for v in variants}
    if set(phases) == {MECHANISM_PHASE}:
        return build_mechanism_report(study, dirs, report_dir, variants, margin, long_study)
    return build_ablation_report(study, dirs, report_dir, variants)
