"""A study's report, built from what the study stored and nothing else (no model is loaded, nothing
is retrained, torch is never imported):

    build_report(out_dir, report_dir)   # -> report_dir/README.md and its PNG figures

reads the tables, config.yaml and meta.yaml in `out_dir` (`load`), computes the analysis tables
(`numbers`: `tables`, `against`, `oeis`, `cka`, `stats`; hyperparameter importances from the Optuna
storage, `importance`), draws the figures (`draw`, `figures`) and writes the markdown (`sections`,
`ceiling_sections`, `comparisons`, `findings`, `markdown`). Every score is read per test split:
headlines use iid_unseen and ood only, never iid_seen (sequences drawn verbatim in training), never a mix.

  first line: "Best: X" only where X is separable from every other architecture, else the top group,
     and whether any architecture reached 90 % of the ceiling;
  1. what was run (budget, seeds, data, storage, the command that reproduces it, split sizes);
  2. headline (best configuration, size, iid_unseen / ood / length accuracy and accuracy / ceiling as
     mean and 95 % interval: hierarchical over seeds, search replicates and test sequences where
     predictions.parquet is stored, else Student-t over seeds; tokens to 50 % and 90 % of the ceiling, baselines
     and the ceiling beside them, failed runs);
  3. against the ceiling (accuracy / ceiling per family with below-baseline flags, identifiable
     positions, the ceiling table); 4. paired comparisons on the same (seed, family) cells, iid_unseen
     and ood separately; 5. real sequences (OEIS); 6. figures; 7. findings generated from the numbers;
  8. for a study with a mutual stage, each architecture trained jointly against alone.

The report is built in a temporary directory beside the target and moved in with the README last,
so a failure never leaves a half-written README. Given a storage, `publish` then attaches it to the
named Optuna studies for optuna-dashboard. `python -m bench.report` is the command line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.report.draw import FIGURES, draw_figures
from bench.report.load import MissingResults, ReportInputError, load
from bench.report.numbers import compute
from bench.report.publish import publish
from bench.report.sections import render
from bench.util import first_line

__all__ = ["FIGURES", "MissingResults", "ReportInputError", "build_report", "publish"]


def build_report(out_dir: Path, report_dir: Path, *, storage_url: str | None = None,
                 study_names: Sequence[str] = ()) -> Path:
    """Build the report of the study stored in `out_dir` into `report_dir` and return its README's
    path. Importances come from the storage at `storage_url` (default: the study's own); given a
    `storage_url`, the report is also attached to those of `study_names` that exist there."""
    out_dir, report_dir = Path(out_dir), Path(report_dir)
    stored = load(out_dir)  # fails (MissingResults) before anything is written
    if report_dir.exists() and not report_dir.is_dir():
        raise ReportInputError(f"report directory '{report_dir}' exists and is not a directory")
    try:
        report_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportInputError(f"report directory '{report_dir}' cannot be created ({e.strerror})") from None
    if not os.access(report_dir.parent, os.W_OK | os.X_OK):
        raise ReportInputError(f"report directory '{report_dir}' is not writable (no permission on its folder)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{report_dir.name}.", suffix=".tmp", dir=report_dir.parent))
    try:
        numbers = compute(stored, storage_url)
        drawn = draw_figures(stored, numbers, tmp, storage_url)
        (tmp / "README.md").write_text(render(stored, numbers, drawn))
        report_dir.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            if f.name != "README.md":
                os.replace(f, report_dir / f.name)
        os.replace(tmp / "README.md", report_dir / "README.md")  # last: a README is always whole and current
        for stale in set(FIGURES) - {f for f, why in drawn.items() if not why}:
            (report_dir / stale).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if storage_url is not None:
        try:
            for line in publish(report_dir, study=stored.name, out_dir=out_dir, storage_url=storage_url,
                                study_names=study_names):
                print(line, flush=True)
        except Exception as e:  # the report stands without the dashboard; say why it is not attached
            print(f"warning: report not attached to the dashboard: {first_line(e)}", file=sys.stderr)
    return report_dir / "README.md"
