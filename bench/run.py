"""`python -m bench.run study=<name> [key=value ...]`: run a study's search and final stages.

Flow: compose + validate the config (`bench.experiment.config`: Hydra override grammar, typed
schema) -> the study engine (`bench.experiment.pool`/`worker`: per-architecture Optuna search, then
the best configuration retrained on every seed, in `workers` processes sharing the study's storage)
-> collect what the stages stored into tidy tables in `runs/<study>/` (`bench.experiment.collect`:
`results.parquet` with a `stage` column, `history.parquet`, `runs.parquet`, `trials.parquet`,
`overlap.parquet`, `decay.parquet`, `cka.parquet`, with a mutual stage `mutual.parquet`,
`mutual_runs.parquet` and `mutual_kl.parquet`, `config.yaml`, `meta.yaml`) -> the report in
`<out_dir>/report/` or `report_dir=` (`bench.report`) -> a summary.
Rerunning the same command resumes where the study stopped; rerunning a finished study with
nothing changed rebuilds nothing and says so (`collect.unchanged`).

Bad input exits with code 2 and one `error: ...` line on stderr, before anything is written; a
study that cannot go on (out_dir unwritable, every worker lost) or whose report fails exits with 1
and one `error:` line.
Flags: `--cfg` prints the resolved config and exits; `--help` lists the studies.
"""

from __future__ import annotations

import sys

import pandas as pd

from bench import report
from bench.cli import entry_point
from bench.experiment import storage
from bench.experiment.collect import collect, inputs_digest, unchanged, write_outputs
from bench.experiment.config import Config, ConfigError, compose_config, study_names, to_yaml
from bench.experiment.context import resolve_device
from bench.experiment.pool import mark_study_dir, run_workers
from bench.experiment.provenance import meta
from bench.experiment.stages import StudyError, unwritable
from bench.metrics import ALL, METRICS
from bench.util import first_line


class ReportError(RuntimeError):
    """The study finished and its tables are written, but its report could not be built."""


def run_study(cfg: Config, command: str = "") -> dict[str, pd.DataFrame] | None:
    """Run (or resume) both stages of `cfg`, then write its tables and report; None when only
    searching, or when the tables (and report) in place were built from these same inputs."""
    device = resolve_device(cfg.device)
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
        write_outputs(cfg, tables, {**meta(cfg, command, device), "inputs": inputs})
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


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the study-level metrics (all phases, all families, all positions), per arch."""
    top = results[results["phase"].isna() & (results["family"] == ALL) & results["position"].isna()]
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
    if "--cfg" in flags:
        print(to_yaml(cfg))
        return 0
    device = resolve_device(cfg.device)
    search = (f"search {cfg.search.n_trials} trials x {cfg.search.steps or cfg.train.steps} steps per arch, "
              if cfg.search.n_trials else "no search, ")
    print(f"study {cfg.name}: archs {', '.join(cfg.arch_list)}; {search}final {cfg.train.steps} steps x "
          f"{cfg.train.batch_size} sequences of length {cfg.data.length} on seeds {list(cfg.seeds)}; "
          f"device {device}; {cfg.workers} worker(s); storage {cfg.storage_url}", flush=True)
    storage.check_reachable(cfg)  # before run_study marks out_dir: an unreachable storage leaves no trace
    try:
        tables = run_study(cfg, "python -m bench.run " + " ".join(args))  # a ConfigError: storage, configuration
    except (ReportError, StudyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tables is None:
        if cfg.stage == "search":
            print(f"search stage done; trials in {cfg.storage_url}")
        return 0
    _print_summary(cfg, tables)
    return 0


def _print_summary(cfg: Config, tables: dict[str, pd.DataFrame]) -> None:
    """Scores per architecture, the test/training overlap and every failed run (on stderr)."""
    print(summary(tables["results"]).to_string(float_format=lambda v: f"{v:.4f}"))
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
