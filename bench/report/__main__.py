"""`python -m bench.report study=<name> [key=value ...] [--out DIR] [--no-publish]`: a study's report.

Builds `<out_dir>/report/README.md` (default `runs/<study>/report/`; or `--out DIR`, or `report_dir=`;
the committed `reports/<study>/` only when named, e.g. `report_dir=reports/<study>`) and its PNG
figures from what `bench.run` stored in the study's `out_dir` (`bench.report.build_report`; nothing
is retrained), then
attaches it to the study's Optuna studies for optuna-dashboard unless `--no-publish`: the README and
figures as artifacts of each `<study>/<arch>/final` study, the headline as the note of every study.
The overrides are `bench.run`'s, so `out_dir=`/`storage=` find a study stored elsewhere. A study with
variants (an ablation, a mechanism study's widths) gets its one report over the variants' tables
(`bench.report.variants`; nothing is attached to the dashboard: each variant's own report is).

Bad input exits with code 2 and one `error: ...` line on stderr (as `bench.run`): an unknown
study, a malformed override, a study with no stored results (naming the missing file), a stored
table that cannot be read, an unusable `--out`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.cli import entry_point
from bench.experiment.checks import check_writable_dir
from bench.experiment.config import ConfigError, compose_config
from bench.experiment.storage import optuna_names
from bench.report import MissingResults, build_report
from bench.report.load import ReportInputError
from bench.report.variants import build_variants_report

USAGE = """usage: python -m bench.report [study=<name>] [key=value ...] [--out DIR] [--no-publish]

Builds <out_dir>/report/README.md (default runs/<study>/report/; --out DIR or report_dir=DIR
elsewhere, e.g. report_dir=reports/<study> for the committed report) and its figures from the
study's stored results (runs/<study>/, or out_dir=...), never retraining; attaches it to the
study's Optuna studies (dashboard note and artifacts) unless --no-publish. Overrides as for
python -m bench.run."""


def parse(argv: list[str]) -> tuple[list[str], Path | None, bool]:
    """(overrides, --out directory or None, publish?) from the command line."""
    overrides, out, publish = [], None, True
    args = iter(argv)
    for a in args:
        if a == "--no-publish":
            publish = False
        elif a == "--out" or a.startswith("--out="):
            value = a.split("=", 1)[1] if "=" in a else next(args, "")
            if not value:
                raise ConfigError("--out needs a directory")
            out = Path(value)
            check_writable_dir(out, "--out")
        elif a.startswith("-"):
            raise ConfigError(f"unknown flag '{a}' (try --help)")
        else:
            overrides.append(a)
    return overrides, out, publish


def main(argv: list[str] | None = None) -> int:
    return entry_point(argv, USAGE, _report)


def _report(args: list[str]) -> int:
    overrides, out, publish = parse(args)
    cfg = compose_config(overrides)
    if cfg.variants:  # an ablation or a mechanism study: one report over its variants' tables
        try:
            readme = build_variants_report(cfg.name, cfg.data.phases, cfg.output_dir, cfg.variants,
                                           out or cfg.report_path,
                                           cfg.equivalence_margin, cfg.long_study)
        except ReportInputError as e:
            raise ConfigError(f"study '{cfg.name}': {e}; run python -m bench.run study={cfg.name} first") from None
        print(f"wrote {readme}")
        return 0
    try:
        readme = build_report(cfg.output_dir, out or cfg.report_path,
                              storage_url=cfg.storage_url if publish else None, study_names=optuna_names(cfg))
    except MissingResults as e:
        raise ConfigError(f"study '{cfg.name}' has no stored results in {e.out_dir} ({e.file} is missing); "
                          f"run python -m bench.run study={cfg.name} first") from None
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
