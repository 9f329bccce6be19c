"""`python -m bench.run study=<name> [key=value ...]`: run a study's search and final stages.

Flow: compose + validate the config (`bench.experiment.config`: Hydra override grammar, typed
schema) -> the study engine (`bench.experiment.pool`/`worker`: per-architecture Optuna search, then
the best configuration retrained on every seed, in `workers` processes sharing the study's storage)
-> collect what the stages stored into tidy tables in `runs/<study>/` (`bench.experiment.collect`:
`results.parquet` with a `stage` column, `history.parquet`, `runs.parquet`, `trials.parquet`,
`overlap.parquet`, `decay.parquet`, `cka.parquet`, `predictions.parquet` (every final run's
per-prediction scores), with a mutual stage `mutual.parquet`,
`mutual_runs.parquet` and `mutual_kl.parquet`, `config.yaml`, `meta.yaml`) -> the report in
`<out_dir>/report/` or `report_dir=` (`bench.report`) -> a summary.
Rerunning the same command resumes where the study stopped; rerunning a finished study with
nothing changed rebuilds nothing and says so (`collect.unchanged`).
A study with `variants` (an ablation, e.g. studies/backbone.yaml) runs each variant as its own study,
in order: `<name>-<variant>` in `<out_dir>/<variant>/` (its own storage there unless storage= is
given, its own full report in `<out_dir>/<variant>/report/`), with the command line's overrides and
then the variant's; then `bench.report.ablation` compares them in `<out_dir>/report/` (or report_dir).

Bad input exits with code 2 and one `error: ...` line on stderr, before anything is written; a
study that cannot go on (out_dir unwritable, every worker lost) or whose report fails exits with 1
and one `error:` line.
Flags: `--cfg` prints the resolved config and exits; `--help` lists the studies.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bench import report
from bench.cli import entry_point
from bench.experiment import storage
from bench.experiment.collect import collect, inputs_digest, unchanged, write_outputs
from bench.experiment.config import Config, ConfigError, compose_config, study_names, to_yaml, validate
from bench.experiment.context import resolve_device
from bench.experiment.pool import mark_study_dir, run_workers
from bench.experiment.provenance import git_commit, meta
from bench.experiment.stages import StudyError, unwritable
from bench.metrics import ALL, METRICS
from bench.report.variants import build_variants_report
from bench.util import first_line


class ReportError(RuntimeError):
    """The study finished and its tables are written, but its report could not be built."""


def run_study(cfg: Config, command: str = "") -> dict[str, pd.DataFrame] | None:
    """Run (or resume) both stages of `cfg`, then write its tables and report; None when only
    searching, or when the tables (and report) in place were built from these same inputs."""
    device = resolve_device(cfg.device)
    commit = git_commit()  # the code that trains, read before it runs: files edited meanwhile do not count
    mark_study_dir(cfg)
    run_workers(cfg, device)
    if cfg.stage == "search":
        return None
    inputs = inputs_digest(cfg)
    if unchanged(cfg, inputs):
        if not cfg.report or report_current(cfg):
            where = f"; report in {cfg.report_path}" if cfg.report else ""
            print(f"study {cfg.name}: nothing changed since the last run (tables in {cfg.output_dir}{where})")
            return None
        write_report(cfg)
        return None
    tables = collect(cfg)
    try:
        write_outputs(cfg, tables, {**meta(cfg, command, device), "commit": commit, "inputs": inputs})
    except OSError as e:
        why = unwritable(cfg.output_dir) or first_line(e)
        raise StudyError(f"cannot write the tables into out_dir {cfg.output_dir} ({why}); every run is "
                         f"stored, rerun the same command once it is writable") from e
    if cfg.report:
        write_report(cfg)
    return tables


def report_current(cfg: Config) -> bool:
    """Whether the report was built after the tables in out_dir were written."""
    readme = cfg.report_path / "README.md"
    return readme.is_file() and readme.stat().st_mtime >= (cfg.output_dir / "meta.yaml").stat().st_mtime


def write_report(cfg: Config) -> None:
    """The study's report from the tables in out_dir; ReportError (the tables stay) when it fails."""
    try:
        readme = report.build_report(cfg.output_dir, cfg.report_path, storage_url=cfg.storage_url,
                                     study_names=storage.optuna_names(cfg))
        print(f"wrote {readme}", flush=True)
    except Exception as e:  # the tables are written: say so, and how to retry the report alone
        raise ReportError(f"report not written ({first_line(e)}); the results are in {cfg.output_dir}, "
                          f"retry with: python -m bench.report study={cfg.name}") from e


def variant_configs(cfg: Config, overrides: list[str]) -> dict[str, Config]:
    """Each variant of `cfg` as its own checked study, composed from the command line's overrides and
    then the variant's own; ConfigError naming the variant on a bad one, before anything is written.

    study=backbone train.steps=500 -> "numeric_a0": study backbone-numeric_a0 in runs/backbone/numeric_a0
    with train.steps=500, model.embedding=numeric, train.alpha=0. A command-line key that a variant
    sets is refused (the variants would no longer differ in it); report_dir names the ablation report.
    """
    given = {o.split("=", 1)[0].strip() for o in overrides}
    common = [o for o in overrides if o.split("=", 1)[0].strip() != "report_dir"]
    subs = {}
    for variant, extra in cfg.variants.items():
        clash = sorted(given & {o.split("=", 1)[0].strip() for o in extra})
        if clash:
            raise ConfigError(f"{clash[0]} is set by variant {variant} of study {cfg.name}; "
                              f"drop it from the command line")
        try:
            sub = compose_config([*common, *extra])
            subs[variant] = validate(replace(sub, name=f"{cfg.name}-{variant}", out_dir=str(cfg.output_dir / variant),
                                             report_dir=None, variants={}))
        except ConfigError as e:
            raise ConfigError(f"variant {variant}: {e}") from None
    return subs


def run_variants(cfg: Config, subs: dict[str, Config], command: str) -> Path | None:
    """Run (or resume) every variant's study in order, then write the ablation report; its README's
    path, or None when only searching, without a report, or when the report is newer than every
    variant's tables (nothing changed)."""
    for sub in subs.values():
        storage.check_reachable(sub)
    mark_study_dir(cfg)  # out_dir holds the variants' folders: later runs may write into it again
    for variant, sub in subs.items():
        announce(sub)
        try:
            tables = run_study(sub, command)
        except (ReportError, StudyError) as e:
            raise StudyError(f"variant {variant}: {e}") from e
        if tables is not None:
            _print_summary(sub, tables)
    if cfg.stage == "search" or not cfg.report:
        return None
    readme = cfg.report_path / "README.md"
    stamps = [sub.output_dir / "meta.yaml" for sub in subs.values()]
    if readme.is_file() and all(p.is_file() and p.stat().st_mtime <= readme.stat().st_mtime for p in stamps):
        print(f"study {cfg.name}: nothing changed since the last ablation report ({readme})")
        return None
    try:
        readme = build_variants_report(cfg.name, cfg.data.phases, cfg.output_dir, cfg.variants, cfg.report_path,
                                       cfg.equivalence_margin, cfg.long_study)
    except Exception as e:  # the variants' tables are written: say so
        raise ReportError(f"variants' report not written ({first_line(e)}); every variant's results are in "
                          f"{cfg.output_dir}/<variant>/") from e
    print(f"wrote {readme}", flush=True)
    return readme


def summary(results: pd.DataFrame, split: str = "iid_unseen") -> pd.DataFrame:
    """Mean over seeds of the study-level metrics (all phases, all families, all positions) on one test
    split (never a mix: iid_seen sequences were trained on), per arch."""
    top = results[(results["split"] == split) & results["phase"].isna() & (results["family"] == ALL)
                  & results["position"].isna()]
    table = top.pivot_table(index="arch", columns="metric", values="value", aggfunc="mean")
    cols = [c for c in (*METRICS, "continuation_accuracy") if c in table.columns]
    return table[cols]


USAGE = """usage: python -m bench.run [study=<name>] [key=value ...] [--cfg]

Trains every architecture of a study under identical seeds and budgets and writes
runs/<study>/results.parquet. Any config key can be overridden, e.g. train.steps=500 archs=[lstm].
  --cfg    print the resolved configuration and exit
studies: {studies}"""


def main(argv: list[str] | None = None) -> int:
    return entry_point(argv, USAGE.format(studies=", ".join(study_names())), _run)


def _run(args: list[str]) -> int:
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    bad = [f for f in flags if f != "--cfg"]
    if bad:
        raise ConfigError(f"unknown flag '{bad[0]}' (try --help)")
    cfg = compose_config(overrides)
    subs = variant_configs(cfg, overrides)  # {} without variants; every variant checked before anything runs
    if "--cfg" in flags:
        print(to_yaml(cfg))
        return 0
    command = "python -m bench.run " + " ".join(args)
    if subs:
        try:
            run_variants(cfg, subs, command)  # a ConfigError: storage, configuration
        except (ReportError, StudyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    announce(cfg)
    storage.check_reachable(cfg)  # before run_study marks out_dir: an unreachable storage leaves no trace
    try:
        tables = run_study(cfg, command)  # a ConfigError: storage, configuration
    except (ReportError, StudyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tables is None:
        if cfg.stage == "search":
            print(f"search stage done; trials in {cfg.storage_url}")
        return 0
    _print_summary(cfg, tables)
    return 0


def announce(cfg: Config) -> None:
    """One line: what the study trains, where, and with what."""
    sp = cfg.search
    replicates = f" x {sp.replicates} replicates" if sp.replicates > 1 else ""
    search = (f"search {sp.n_trials} {sp.sampler} trials x {sp.steps or cfg.train.steps} steps per arch{replicates}, "
              if sp.n_trials else "no search, ")
    print(f"study {cfg.name}: archs {', '.join(cfg.arch_list)}; {search}final {cfg.train.steps} steps x "
          f"{cfg.train.batch_size} sequences of length {cfg.data.length} on seeds {list(cfg.seeds)}; "
          f"device {resolve_device(cfg.device)}; {cfg.workers} worker(s); storage {cfg.storage_url}", flush=True)


def _print_summary(cfg: Config, tables: dict[str, pd.DataFrame]) -> None:
    """Scores per architecture on iid_unseen and ood, the test/training overlap and every failed run (on stderr)."""
    for split in ("iid_unseen", "ood"):
        print(f"{split} (sequences never trained on):")
        print(summary(tables["results"], split).to_string(float_format=lambda v: f"{v:.4f}"))
    if len(tables.get("mutual", ())):
        print(f"trained jointly (mutual.weight={cfg.mutual.weight}):")
        print(summary(tables["mutual"]).to_string(float_format=lambda v: f"{v:.4f}"))
    ov = tables["overlap"]
    print(f"test sequences also drawn in training: {ov.seen.sum() / ov.n.sum():.0%} (per family: overlap.parquet)")
    for name, label in (("runs", ""), ("mutual_runs", " (mutual stage)")):
        if name in tables and len(tables[name]):
            for _, row in tables[name].query("status != 'ok'").iterrows():
                print(f"failed{label}: {row.arch} seed={row.seed}: {row.reason}", file=sys.stderr)
    print(f"wrote {cfg.output_dir}/results.parquet")


if __name__ == "__main__":
    sys.exit(main())
