"""`python -m bench.run study=<name> [key=value ...]`: train every architecture of a study and score it.

Flow: compose + validate the config (Hydra override grammar, typed schema) -> fixed test set and
baselines -> for each seed, for each architecture: the same training stream, train, evaluate ->
write `results.parquet` (tidy), `history.parquet`, `runs.parquet`, `config.yaml` and the trained
weights into `runs/<study>/` in one atomic step -> print a summary.

Bad input exits with code 2 and one `error: ...` line on stderr, before anything is written.
Flags: `--cfg` prints the resolved config and exits; `--help` lists the studies.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.config import Config, ConfigError, validate
from bench.data import Curriculum, SequenceSet, TrainStream, make_test_set, seen_in_training, validation_set
from bench.metrics import ALL, METRICS, continuation, evaluate, evaluate_baselines, score_logits
from bench.models import build_model
from bench.seeding import derive_seed
from bench.train import TrainingDiverged, distance_weighted_ce, train


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


def _is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError when it cannot allocate."""
    msg = str(e).lower()
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in msg or "can't allocate memory" in msg


def _first_line(e: BaseException) -> str:
    msgs = [str(x).strip().splitlines()[0] for x in (e, e.__cause__) if x is not None and str(x).strip()]
    return " / ".join(dict.fromkeys(msgs)) or type(e).__name__


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
        raise ConfigError(f"malformed override: {_first_line(e)}") from None
    except MissingConfigException as e:
        raise ConfigError(_first_line(e)) from None
    except (ConfigCompositionException, OmegaConfBaseException) as e:
        raise ConfigError(f"bad override: {_first_line(e)}") from None
    except ValueError as e:  # Hydra raises plain ValueErrors for some malformed overrides ('=5', '@x=1')
        raise ConfigError(f"malformed override: {_first_line(e)}") from None
    try:
        return validate(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad value: {_first_line(e)}") from None


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


def train_one(
    cfg: Config,
    arch: str,
    seed: int,
    stream: TrainStream,
    validate_fn: Callable[[torch.nn.Module, int, float], dict[str, float]],
    curriculum: Curriculum,
    test: SequenceSet,
    device: torch.device,
) -> tuple[dict, pd.DataFrame | None, pd.DataFrame | None, dict | None]:
    """Build, train and score one (architecture, seed): its `runs` row, history, results and weights.

    A diverged or out-of-memory run returns status 'failed' with the reason and only its history
    up to the failure (no results, no weights)."""
    torch.manual_seed(derive_seed("init", seed))  # the same initialisation stream for every architecture
    model = build_model(cfg.model_config(arch)).to(device)
    run = {"arch": arch, "seed": seed, "num_params": model.num_params(), "device": str(device),
           "unused_hparams": ",".join(model.unused_hparams), "status": "ok", "reason": ""}
    try:
        res = train(model, cfg.train, stream, validate_fn, curriculum.final_epoch(), device, cfg.progress,
                    desc=f"{arch} seed={seed}")
    except Exception as e:
        if not (isinstance(e, TrainingDiverged | MemoryError) or _is_oom(e)):
            raise
        print(f"warning: {arch} seed={seed} failed: {_first_line(e)}", file=sys.stderr)
        partial = getattr(e, "result", None)
        history = pd.DataFrame(partial.history).assign(arch=arch, seed=seed) if partial and partial.history else None
        return {**run, "status": "failed", "reason": _first_line(e)}, history, None, None
    run.update(steps=res.steps, tokens=res.tokens, best_val_loss=res.best_val, best_step=res.best_step,
               stopped_early=res.stopped_early, wall_s=res.wall_s)
    prefix = cfg.eval.continuation_prefix or cfg.data.length // 2
    scored = pd.concat([evaluate(model, test, cfg.eval.batch_size),
                        continuation(model, test, prefix, cfg.eval.batch_size)], ignore_index=True)
    history = pd.DataFrame(res.history).assign(arch=arch, seed=seed)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    return run, history, scored.assign(arch=arch, seed=seed), state


def run_study(cfg: Config, command: str = "") -> dict[str, pd.DataFrame]:
    """Train and evaluate every (seed, architecture) of `cfg`; write the outputs; return the tables."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    d, t = cfg.data, cfg.train
    curriculum = cfg.curriculum()
    test = make_test_set(curriculum.phases, d.length, d.test_per_family, d.eval_seed, curriculum.families)
    baselines = evaluate_baselines(test)
    results, history, runs, overlap, weights = [], [], [], [], {}
    val_cache: dict[tuple[int, int], torch.Tensor] = {}

    for seed in cfg.seeds:
        results.append(baselines.assign(seed=seed))
        stream = TrainStream(curriculum, d.length, t.batch_size, seed, steps_per_epoch=t.val_every)
        overlap.append(test_overlap(test, stream, t.steps).assign(seed=seed))

        def validate_fn(model: torch.nn.Module, index: int, epoch: float, seed: int = seed) -> dict[str, float]:
            if (seed, index) not in val_cache:  # identical for every architecture of this seed
                fresh = validation_set(curriculum, d.length, seed, index, epoch, d.val_size)
                val_cache[(seed, index)] = fresh.seqs
            seqs = val_cache[(seed, index)].to(device)
            logits = model(seqs[:, :-1])
            scores = {k: v.mean().item() for k, v in score_logits(logits, seqs[:, 1:]).items()}
            return {"val_loss": distance_weighted_ce(logits, seqs[:, 1:], t.alpha, t.distance_weight).item(),
                    "val_ce": scores["loss"], "val_accuracy": scores["accuracy"],
                    "val_distance_error": scores["distance_error"]}

        for arch in cfg.arch_list:
            run, hist, scored, state = train_one(cfg, arch, seed, stream, validate_fn, curriculum, test, device)
            runs.append(run)
            if hist is not None:  # a failed run keeps the history up to its failure
                history.append(hist)
            if run["status"] == "ok":
                results.append(scored)
                weights[f"{arch}-seed{seed}.pt"] = state

    tables = {
        "results": _tidy(pd.concat(results, ignore_index=True), cfg.name),
        "history": _long_history(history, cfg.name),
        "runs": pd.DataFrame(runs).assign(study=cfg.name),
        "overlap": pd.concat(overlap, ignore_index=True).assign(study=cfg.name),
    }
    meta = {
        "command": command,
        "commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, {device}",
    }
    write_outputs(cfg, tables, weights, meta)
    return tables


def test_overlap(test: SequenceSet, stream: TrainStream, steps: int) -> pd.DataFrame:
    """Per (phase, family): how many test sequences occur verbatim in the training budget's stream."""
    seen = seen_in_training(test, stream, steps)
    frame = pd.DataFrame({"phase": test.phase.numpy(), "family": test.family_names(), "seen": seen.numpy()})
    table = frame.groupby(["phase", "family"], sort=False)["seen"].agg(n="size", seen="sum").reset_index()
    return table.assign(seen_fraction=table["seen"] / table["n"])


def _tidy(df: pd.DataFrame, study: str) -> pd.DataFrame:
    cols = ["study", "arch", "seed", "phase", "family", "position", "metric", "value", "n"]
    return df.assign(study=study)[cols].reset_index(drop=True)


def _long_history(frames: list[pd.DataFrame], study: str) -> pd.DataFrame:
    """Per-validation metric history, long format: study, arch, seed, step, tokens, epoch, metric, value."""
    if not frames:
        return pd.DataFrame(columns=["study", "arch", "seed", "step", "tokens", "epoch", "metric", "value"])
    wide = pd.concat(frames, ignore_index=True)
    ids = ["arch", "seed", "step", "tokens", "epoch"]
    long = wide.melt(id_vars=ids, var_name="metric", value_name="value").assign(study=study)
    return long[["study", *ids, "metric", "value"]]


def write_outputs(cfg: Config, tables: dict[str, pd.DataFrame], weights: dict, meta: dict) -> None:
    """Write everything into a temporary sibling directory, then swap it in for `out_dir` whole.

    A previous run's directory (validated to hold a meta.yaml, see `check_out_dir`) is replaced as
    a unit, never merged file by file, so readers see either the old run or the new one.
    """
    out = cfg.output_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        for name, table in tables.items():
            table.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        (tmp / "meta.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(meta)))
        (tmp / "models").mkdir()
        for fname, state in weights.items():
            torch.save(state, tmp / "models" / fname)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


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
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if any(f in ("-h", "--help") for f in flags):
        print(USAGE.format(studies=", ".join(study_names())))
        return 0
    try:
        bad = [f for f in flags if f != "--cfg"]
        if bad:
            raise ConfigError(f"unknown flag '{bad[0]}' (try --help)")
        cfg = compose_config(overrides)
        if "--cfg" in flags:
            print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            return 0
        device = resolve_device(cfg.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"study {cfg.name}: archs {', '.join(cfg.arch_list)}; seeds {list(cfg.seeds)}; "
          f"{cfg.train.steps} steps x {cfg.train.batch_size} sequences of length {cfg.data.length}; device {device}")
    command = "python -m bench.run " + " ".join(args)
    tables = run_study(cfg, command)
    print(summary(tables["results"]).to_string(float_format=lambda v: f"{v:.4f}"))
    ov = tables["overlap"]
    print(f"test sequences also drawn in training: {ov.seen.sum() / ov.n.sum():.0%} (per family: overlap.parquet)")
    failed = tables["runs"].query("status != 'ok'")
    for _, row in failed.iterrows():
        print(f"failed: {row.arch} seed={row.seed}: {row.reason}", file=sys.stderr)
    print(f"wrote {cfg.output_dir}/results.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
