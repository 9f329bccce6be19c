"""`python -m bench.run study=<name> [key=value ...]`: run a study's search and final stages.

Flow: compose + validate the config (Hydra override grammar, typed schema) -> the study engine
(`bench.study`: per-architecture Optuna search, then the best configuration retrained on every
seed, in `workers` processes sharing the study's storage) -> collect what the stages stored into
tidy tables in `runs/<study>/` (`results.parquet` with a `stage` column, `history.parquet`,
`runs.parquet`, `trials.parquet`, `overlap.parquet`, `decay.parquet`, `cka.parquet`, with a mutual
stage `mutual.parquet`, `mutual_runs.parquet` and `mutual_kl.parquet`, `config.yaml`, `meta.yaml`)
-> the report in `reports/<study>/` (`bench.report`) -> a summary.
Rerunning the same command resumes where the study stopped.

Bad input exits with code 2 and one `error: ...` line on stderr, before anything is written.
Flags: `--cfg` prints the resolved config and exits; `--help` lists the studies.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from bench.analysis import memory_decay
from bench.analysis.cka import cka_table
from bench.config import Config, ConfigError, validate
from bench.data import SequenceSet, TrainStream, seen_in_training
from bench.metrics import ALL, METRICS, evaluate_baselines
from bench.models import build_model
from bench.search import SIZE_KEYS, model_config
from bench.study import (
    Context,
    Worker,
    final_name,
    final_stem,
    first_line,
    is_finished,
    mark_study_dir,
    mutual_name,
    open_storage,
    progress,
    search_name,
    worker_main,
    worker_tag,
)


def _studies_dir() -> Path:
    """$ARCHBENCH_STUDIES, else the checkout's top-level studies/ (editable install), else ./studies."""
    if "ARCHBENCH_STUDIES" in os.environ:
        return Path(os.environ["ARCHBENCH_STUDIES"])
    beside = Path(__file__).resolve().parents[1] / "studies"
    return beside if beside.is_dir() else Path("studies")


STUDIES_DIR = _studies_dir()


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


@functools.cache
def _register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for path in sorted(STUDIES_DIR.glob("*.yaml")):
        cs.store(group="study", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose_config(overrides: list[str]) -> Config:
    """Compose studies/<study>.yaml over the schema with `overrides`; raise ConfigError on any problem.

    Only existing keys can be set: Hydra's `+key` (add), `~key` (delete) and `hydra.*` overrides
    would add keys the schema drops or settings this CLI ignores, so they are refused.
    """
    for o in overrides:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~", "hydra.")) or key in ("hydra", "name"):
            raise ConfigError(f"override '{o}': only existing keys can be set (see --cfg); name comes from study=")
    studies = [o.split("=", 1)[1] for o in overrides if o.startswith("study=")]
    if len(studies) > 1:
        raise ConfigError(f"study= given {len(studies)} times ({', '.join(studies)}); choose one")
    study = studies[0] if studies else "smoke"
    if study not in study_names():
        raise ConfigError(f"unknown study '{study}' (available: {', '.join(study_names())})")
    overrides = [*overrides, f"name={study}"]
    _register_configs()
    try:
        with initialize_config_module(config_module="bench.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except OverrideParseException as e:
        raise ConfigError(f"malformed override: {first_line(e)}") from None
    except MissingConfigException as e:
        raise ConfigError(first_line(e)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad override: {first_line(e)}") from None
    except ValueError as e:  # Hydra raises plain ValueErrors for some malformed overrides ('=5', '@x=1')
        raise ConfigError(f"malformed override: {first_line(e)}") from None
    try:
        return validate(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad value: {first_line(e)}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def _git_commit() -> str:
    """Short commit of the checkout, with '-dirty' when tracked files differ from it."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        return (commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_workers(cfg: Config, device: torch.device) -> None:
    """Run the study's workers: in this process for workers=1, else N spawned processes (one torch
    thread each), while this process shows one progress line for the whole study."""
    storage = open_storage(cfg)
    if cfg.workers == 1:
        torch.set_num_threads(cfg.threads)
        Worker(cfg, device, log=_study_logger(cfg, storage), tag=worker_tag(cfg, 0)).run()
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(cfg, str(device), i), daemon=False) for i in range(cfg.workers)]
    for p in procs:
        p.start()
    bar = tqdm(desc=f"study {cfg.name}", unit="run", disable=None if cfg.progress else True, dynamic_ncols=True)
    try:
        while any(p.is_alive() for p in procs):
            done, total, best = progress(cfg, storage)
            bar.total, bar.n = total, done
            bar.set_postfix_str(" ".join(f"{a}={v:.3f}" for a, v in best.items()))
            time.sleep(2)
    finally:
        bar.close()
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"{len(bad)} of {cfg.workers} workers exited with an error (exit codes {bad})")


def _study_logger(cfg: Config, storage: Any) -> Callable[[str], None]:
    """One line per finished trial, prefixed by the study's progress (done/total, best per arch)."""
    def log(message: str) -> None:
        done, total, best = progress(cfg, storage)
        tail = " ".join(f"{a}={v:.3f}" for a, v in best.items())
        print(f"[{done}/{total}{' best ' + tail if tail else ''}] {message}", flush=True)
    return log


def collect(cfg: Config) -> dict[str, pd.DataFrame]:
    """The study's tables from what the stages stored: final runs' files and the search trials."""
    ctx = Context.build(cfg, torch.device("cpu"))  # the same test set and streams the workers used
    baselines = evaluate_baselines(ctx.test)
    final = cfg.output_dir / "final"
    results, history, runs, overlap = [], [], [], []
    for seed in cfg.seeds:
        results.append(baselines.assign(seed=seed))
        overlap.append(test_overlap(ctx.test, ctx.stream(seed), cfg.train.steps).assign(seed=seed))
        for arch in cfg.arch_list:
            stem = final / f"{arch}-seed{seed}"
            run_file = stem.with_suffix(".run.json")
            if not run_file.exists():
                raise RuntimeError(f"final run {arch} seed={seed} has no results in {final}")
            runs.append(json.loads(run_file.read_text()))
            if stem.with_suffix(".history.parquet").exists():
                history.append(pd.read_parquet(stem.with_suffix(".history.parquet")))
            if runs[-1]["status"] == "ok":
                results.append(pd.read_parquet(stem.with_suffix(".results.parquet")))
    storage = open_storage(cfg)
    mutual = mutual_tables(cfg, ctx.test, runs) if cfg.mutual.weight is not None else {}
    return {
        **mutual,
        "results": _tidy(pd.concat(results, ignore_index=True), cfg.name),
        "history": _long_history([h for h in history if len(h)], cfg.name),
        "runs": _runs_table(runs, cfg.name),
        "trials": trials_table(cfg, storage),
        "overlap": pd.concat(overlap, ignore_index=True).assign(study=cfg.name),
        "decay": decay_table(cfg, ctx.test, runs),
        "cka": cka_table_for(cfg, ctx.test, runs),
    }


def mutual_tables(cfg: Config, test: SequenceSet, alone: list[dict]) -> dict[str, pd.DataFrame]:
    """The mutual stage's members: `mutual` (test scores, the schema of `results`), `mutual_runs`
    (one row per member and seed, the schema of `runs`), kept apart from the independent runs, and
    `mutual_kl` (`agreement`: did the pull make the architectures predict alike?)."""
    final = cfg.output_dir / "final"
    results, runs = [], []
    for seed in cfg.seeds:
        for arch in cfg.arch_list:
            stem = final / final_stem(arch, seed, "mutual")
            run_file = stem.with_suffix(".run.json")
            if not run_file.exists():
                raise RuntimeError(f"mutual run {arch} seed={seed} has no results in {final}")
            runs.append(json.loads(run_file.read_text()))
            if runs[-1]["status"] == "ok":
                results.append(pd.read_parquet(stem.with_suffix(".results.parquet")))
    scores = _tidy(pd.concat(results, ignore_index=True), cfg.name).assign(stage="mutual") if results \
        else pd.DataFrame()
    kl = pd.concat([agreement(cfg, test, alone).assign(training="alone"),
                    agreement(cfg, test, runs).assign(training="jointly")], ignore_index=True)
    return {"mutual": scores, "mutual_runs": _runs_table(runs, cfg.name), "mutual_kl": kl.assign(study=cfg.name)}


def agreement(cfg: Config, test: SequenceSet, runs: list[dict]) -> pd.DataFrame:
    """KL(p_a || p_b) between every two architectures' predictions of the same seed (nats, mean over
    every position of the probe sequences), from the stored weights: what the mutual term minimises."""
    tokens, rows = probe_tokens(test), []
    for seed in sorted({int(r["seed"]) for r in runs}):
        log_p = {}
        for run in (r for r in runs if int(r["seed"]) == seed and r.get("status") == "ok"):
            with torch.no_grad():
                log_p[run["arch"]] = torch.log_softmax(stored_model(cfg, run).eval()(tokens).double(), -1)
        rows += [{"seed": seed, "arch_a": a, "arch_b": b,
                  "kl": float((log_p[a].exp() * (log_p[a] - log_p[b])).sum(-1).mean())}
                 for a in log_p for b in log_p if a != b]
    return pd.DataFrame(rows, columns=["seed", "arch_a", "arch_b", "kl"])


PROBE_SEQUENCES = 256  # test sequences the memory-decay probe averages over (spread over every family)


def decay_table(cfg: Config, test: SequenceSet, runs: list[dict]) -> pd.DataFrame:
    """Memory-decay curves (`bench.analysis.memory_decay`) of every final model that trained, probed
    on the same test sequences. Each model's curve is computed once, from its stored weights, and
    kept beside its results (final/<arch>-seed<s>.decay.parquet)."""
    tokens = probe_tokens(test)  # the probe reads the prediction of the last value
    frames = []
    for run in runs:
        if run.get("status") != "ok":
            continue
        stem = f"{run['arch']}-seed{run['seed']}"
        cached = cfg.output_dir / "final" / f"{stem}.decay.parquet"
        weights = cfg.output_dir / "models" / f"{stem}.pt"
        if not cached.exists() or cached.stat().st_mtime < weights.stat().st_mtime:
            curve = memory_decay(stored_model(cfg, run).eval(), tokens)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            curve.to_parquet(tmp, index=False)
            os.replace(tmp, cached)
        frames.append(pd.read_parquet(cached).assign(study=cfg.name, arch=run["arch"], seed=run["seed"]))
    cols = ["study", "arch", "seed", "variant", "k", "value", "n"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def probe_tokens(test: SequenceSet) -> torch.Tensor:
    """The inputs (N, L-1) of the PROBE_SEQUENCES test sequences every probe of the final models uses:
    spread evenly over the test set, hence over every family."""
    index = torch.linspace(0, len(test) - 1, min(PROBE_SEQUENCES, len(test))).round().long().unique()
    return test.seqs[index, :-1]


def stored_model(cfg: Config, run: dict) -> torch.nn.Module:
    """A final (or mutual-stage) run's model (a row of runs.parquet or a run.json) from its stored
    weights (models/<arch>-seed<s>[-mutual].pt), on the CPU; missing or NaN sizes take the study's defaults."""
    params = {k: float(run[k]) if k == "lr" else int(run[k])
              for k in (*SIZE_KEYS, "lr") if run.get(k) is not None and pd.notna(run[k])}
    model = build_model(model_config(cfg, run["arch"], params))
    stage = run.get("stage") if isinstance(run.get("stage"), str) else "final"
    weights = cfg.output_dir / "models" / f"{final_stem(run['arch'], int(run['seed']), stage)}.pt"
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


CKA_COLUMNS = ["study", "seed", "seed_b", "arch_a", "layer_a", "arch_b", "layer_b", "cka", "n"]


def cka_table_for(cfg: Config, test: SequenceSet, runs: list[dict]) -> pd.DataFrame:
    """Linear CKA between the block outputs of the final models that trained (`bench.analysis.cka.cka_table`:
    every pair of models and layers, within and across seeds), from their stored weights, on the same
    probe sequences as `decay_table`. Not cached per model: one forward pass per model, seconds for a study."""
    models = {(str(run["arch"]), int(run["seed"])): stored_model(cfg, run) for run in runs if run.get("status") == "ok"}
    if not models:
        return pd.DataFrame(columns=CKA_COLUMNS)
    return cka_table(models, probe_tokens(test)).assign(study=cfg.name)[CKA_COLUMNS]


RUN_COLUMNS = ["study", "stage", "arch", "seed", "status", "reason", "d_model", "num_layers", "d_state", "d_conv",
               "expand", "lr", "num_params", "state_size", "steps", "tokens", "wall_s", "best_step", "stopped_early",
               "mem_estimate_gib", "mem_measured_gib", "impl", "device", "search_trial", "trial"]


def _runs_table(rows: list[dict], study: str) -> pd.DataFrame:
    table = pd.DataFrame(rows).assign(study=study)
    for col in RUN_COLUMNS:
        if col not in table:
            table[col] = pd.NA
    return table[RUN_COLUMNS + sorted(c for c in table.columns if c not in RUN_COLUMNS)]


def trials_table(cfg: Config, storage: Any) -> pd.DataFrame:
    """Every trial of both stages: number, state, value, params and user attributes, one row each."""
    names = set(optuna.get_all_study_names(storage))
    frames = []
    for arch in cfg.arch_list:
        for stage, name in (("search", search_name(cfg, arch)), ("final", final_name(cfg, arch))):
            if name not in names:
                continue
            for tr in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
                frames.append({"study": cfg.name, "stage": stage, "arch": arch, "number": tr.number,
                               "state": tr.state.name, "value": tr.value, "counted": is_finished(tr),
                               "duration_s": tr.duration.total_seconds() if tr.duration else None,
                               **{k: v for k, v in tr.user_attrs.items() if k not in ("arch",)}})
    if mutual_name(cfg) in names:
        for tr in optuna.load_study(study_name=mutual_name(cfg), storage=storage).get_trials(deepcopy=False):
            frames.append({"study": cfg.name, "stage": "mutual", "arch": "cohort", "number": tr.number,
                           "state": tr.state.name, "value": tr.value, "counted": is_finished(tr),
                           "duration_s": tr.duration.total_seconds() if tr.duration else None, **tr.user_attrs})
    return pd.DataFrame(frames)


def run_study(cfg: Config, command: str = "") -> dict[str, pd.DataFrame] | None:
    """Run (or resume) both stages of `cfg`, then write its tables; None when only searching."""
    device = resolve_device(cfg.device)
    mark_study_dir(cfg)
    run_workers(cfg, device)
    if cfg.stage == "search":
        return None
    tables = collect(cfg)
    meta = {
        "command": command,
        "commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {device}",
        "workers": cfg.workers,
        "storage": cfg.storage_url,
    }
    write_outputs(cfg, tables, meta)
    if cfg.report:
        from bench.report import build_report  # matplotlib is imported only when a report is made

        try:
            print(f"wrote {build_report(cfg)}", flush=True)
        except Exception as e:  # the tables are written: say so, and how to retry the report alone
            raise ReportError(f"report not written ({first_line(e)}); the results are in {cfg.output_dir}, "
                              f"retry with: python -m bench.report study={cfg.name}") from e
    return tables


class ReportError(RuntimeError):
    """The study finished and its tables are written, but its report could not be built."""


def test_overlap(test: SequenceSet, stream: TrainStream, steps: int) -> pd.DataFrame:
    """Per (phase, family): how many test sequences occur verbatim in the training budget's stream."""
    seen = seen_in_training(test, stream, steps)
    frame = pd.DataFrame({"phase": test.phase.numpy(), "family": test.family_names(), "seen": seen.numpy()})
    table = frame.groupby(["phase", "family"], sort=False)["seen"].agg(n="size", seen="sum").reset_index()
    return table.assign(seen_fraction=table["seen"] / table["n"])


def _tidy(df: pd.DataFrame, study: str) -> pd.DataFrame:
    """Test-set scores of the final stage (baselines included, on the same test set)."""
    cols = ["study", "stage", "arch", "seed", "phase", "family", "position", "metric", "value", "n"]
    return df.assign(study=study, stage="final")[cols].reset_index(drop=True)


def _long_history(frames: list[pd.DataFrame], study: str) -> pd.DataFrame:
    """Per-validation metric history, long format: study, arch, seed, step, tokens, epoch, metric, value."""
    if not frames:
        return pd.DataFrame(columns=["study", "arch", "seed", "step", "tokens", "epoch", "metric", "value"])
    wide = pd.concat(frames, ignore_index=True)
    ids = ["arch", "seed", "step", "tokens", "epoch"]
    long = wide.melt(id_vars=ids, var_name="metric", value_name="value").assign(study=study)
    return long[["study", *ids, "metric", "value"]]


def write_outputs(cfg: Config, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write each table to a temporary file and rename it into `out_dir` (meta.yaml last), so a
    reader never sees a half-written file, and the study's storage and checkpoints stay untouched."""
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Callable[[Path], None]] = {
        f"{name}.parquet": functools.partial(lambda t, p: t.to_parquet(p, index=False), table)
        for name, table in tables.items()
    }
    files["config.yaml"] = lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    files["meta.yaml"] = lambda p: p.write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))
    for name, write in files.items():
        tmp = out / f".{name}.{os.getpid()}.tmp"
        try:
            write(tmp)
            os.replace(tmp, out / name)
        finally:
            tmp.unlink(missing_ok=True)


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


def entry_point(argv: list[str] | None, usage: str, command: Callable[[list[str]], int]) -> int:
    """What every `python -m bench.*` command shares: `-h`/`--help` prints `usage`; a ConfigError
    (bad input, unreachable storage, a study run under another configuration) becomes one `error:`
    line and exit code 2. `command(args)` does the rest and returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    try:
        return command(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0
    device = resolve_device(cfg.device)
    search = (f"search {cfg.search.n_trials} trials x {cfg.search.steps or cfg.train.steps} steps per arch, "
              if cfg.search.n_trials else "no search, ")
    print(f"study {cfg.name}: archs {', '.join(cfg.arch_list)}; {search}final {cfg.train.steps} steps x "
          f"{cfg.train.batch_size} sequences of length {cfg.data.length} on seeds {list(cfg.seeds)}; "
          f"device {device}; {cfg.workers} worker(s); storage {cfg.storage_url}", flush=True)
    command = "python -m bench.run " + " ".join(args)
    try:
        tables = run_study(cfg, command)  # a ConfigError here: storage unreachable, another configuration
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tables is None:
        print(f"search stage done; trials in {cfg.storage_url}")
        return 0
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
