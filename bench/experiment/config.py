"""Typed study configuration: the schema Hydra composes into, the checks no type can express, and
`compose_config`, which turns a study name plus `key=value` overrides into a checked `Config`.

The schema is a tree of dataclasses registered with Hydra's ConfigStore, so an unknown key (on the
command line or in a study file) and a value of the wrong type are rejected while composing.
`validate` then checks the semantic rules (powers of two, d_state <= d_model, positive budgets,
known architectures and families; with `bench.experiment.checks`: finite numbers of sane size, a
model that fits in memory, the storage URL's driver, writable out_dir and report_dir, WANDB_MODE)
and raises `ConfigError` with one line naming the problem. Only the study in use is read
(`bench.experiment.studyfile`): a mistake in its file is named with the file, line and key.
`model` is the backbone's own `bench.models.ModelConfig`: its `arch` and `max_len` are set per
architecture and from `data.length` (`Config.model_config`), never by the user.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.data.base import MIN_LENGTH
from bench.data.curriculum import EVAL_SEED, Curriculum
from bench.experiment.checks import (
    STUDY_MARKER,
    ConfigError,
    check_memory,
    check_numbers,
    check_out_dir,
    check_search,
    check_storage_url,
    check_test_lengths,
    check_variants,
    check_wandb_mode,
    check_writable_dir,
    is_pow2,
)
from bench.experiment.studyfile import load_study_file
from bench.models import ModelConfig, mixer_defaults, mixer_names
from bench.train import TrainConfig
from bench.util import first_line

DERIVED_MODEL_KEYS = ("arch", "max_len")  # set per architecture and from data.length, never by the user

__all__ = ["STUDY_MARKER", "Config", "ConfigError", "check_out_dir", "compose_config", "study_names", "to_yaml",
           "validate"]


@dataclass
class DataConfig:
    phases: list[int] = field(default_factory=lambda: [1])  # curriculum phases, in training order
    families: list[str] | None = None  # restrict to these families; null = every family of the phases
    length: int = 8  # sequence length (the design starts at 8)
    phase_epochs: int = 10  # epochs trained purely on each phase before moving on
    transition_epochs: int = 5  # linear blend between consecutive phases, in epochs
    val_size: int = 100  # fresh validation sequences per validation (the design's 100): the logged monitor
    # the fixed validation set (drawn once per seed, disjoint from the test splits) that early stopping,
    # pruning and model selection read; the issue asks for >= 1000, the default
    val_fixed_size: int = 1000
    test_per_family: int = 100  # fixed test sequences per family (each split), from the evaluation seed
    # lengths of the `length` test split (the same families, longer sequences); null = [2L, 4L] for
    # data.length L; [] = no length split. Each must exceed data.length.
    test_lengths: list[int] | None = None
    eval_seed: int = EVAL_SEED  # seeds the test set; no training stream uses it


@dataclass
class EvalConfig:
    continuation_prefix: int | None = None  # greedy continuation from this prefix length; null = length // 2
    batch_size: int = 1024


@dataclass
class SpaceConfig:
    """Search ranges, inclusive. Sizes are powers of two sampled by exponent, so every draw is valid;
    d_state's upper end is capped at each trial's d_model. An architecture searches only what its
    mixer uses (plus d_model, num_layers and lr, which every architecture has)."""

    d_model: list[int] = field(default_factory=lambda: [32, 128])  # [min, max], powers of two
    d_state: list[int] = field(default_factory=lambda: [4, 32])  # [min, max], powers of two, <= d_model
    d_conv: list[int] = field(default_factory=lambda: [2, 4])  # [min, max], powers of two
    expand: list[int] = field(default_factory=lambda: [1, 2, 4])  # choices, each in {1, 2, 4}
    num_layers: list[int] = field(default_factory=lambda: [1, 3])  # [min, max]
    lr: list[float] = field(default_factory=lambda: [3e-4, 1e-2])  # [min, max], log-uniform


@dataclass
class GridConfig:
    """The grid of `search.sampler=grid` (bench.experiment.sampler): each list holds the values tried.
    lr x d_model x num_layers is the core grid every architecture trains in full; d_state, d_conv
    and expand are spread evenly over its points for the mixers that take them. Sizes are powers of
    two; a core point whose d_model is below its d_state takes the largest d_state that fits."""

    lr: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    d_model: list[int] = field(default_factory=lambda: [32, 64, 128])
    num_layers: list[int] = field(default_factory=lambda: [1, 2])
    d_state: list[int] = field(default_factory=lambda: [8, 16, 32])
    d_conv: list[int] = field(default_factory=lambda: [2, 4])
    expand: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class SearchConfig:
    n_trials: int = 0  # per architecture; 0 = no search: the final stage trains `model` as configured
    steps: int | None = None  # per-trial step budget (same for every architecture); null = train.steps
    seed: int = 0  # every trial's training seed and data stream; also seeds the samplers
    sampler: str = "tpe"  # tpe (over `space`) | grid (over `grid`; n_trials at most the core grid's size)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    # R repeats of the whole search + final pipeline; replicate r differs only in its sampler seed and
    # its search trials' initialisation (same data, same final seeds): the search's own randomness
    replicates: int = 1
    pruner: str = "median"  # median | none: prune on validation loss at each validation
    startup_trials: int = 2  # trials before TPE and the pruner act (random sampling until then)
    warmup_validations: int = 2  # validations a trial always gets before it can be pruned


@dataclass
class MutualConfig:
    """Deep mutual learning (bench.mutual): after the final stage, each seed's architectures are
    retrained jointly on the same batches, each with its own loss plus `weight` x the mean KL
    divergence from the others' predictions; the report compares them with the independent final
    runs of the same seeds."""

    weight: float | None = None  # null = no mutual stage; 0 = the joint loop without KL (equals the final runs)


@dataclass
class Config:
    name: str = "smoke"  # study name; outputs go to runs/<name> unless out_dir is set
    archs: list[str] | None = None  # null = every registered architecture
    seeds: list[int] = field(default_factory=lambda: [0])
    data: DataConfig = field(default_factory=DataConfig)
    # the backbone's config; mixer = per-architecture knobs (see mixer_defaults); arch and max_len are derived
    model: ModelConfig = field(default_factory=lambda: ModelConfig(mixer=mixer_defaults()))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out_dir: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # torch threads per process: two collapse ~100x when another process holds a core
    progress: bool = True  # tqdm bar while training
    search: SearchConfig = field(default_factory=SearchConfig)
    stage: str = "all"  # all | search | final (other machines sharing a storage run stage=search)
    storage: str | None = None  # any Optuna RDB URL; null = sqlite:///<out_dir>/optuna.db
    workers: int = 1  # local worker processes sharing the study (one torch thread each)
    heartbeat: int = 10  # seconds between a running trial's heartbeats; silent for 3x that = dead, retried
    memory_budget: float = 8.0  # GiB: configurations estimated above it are pruned before training
    iso: str = "none"  # none | params | state: size every architecture's d_model to one budget (within 10 %)
    iso_target: int | None = None  # that budget; null = the median over architectures at `model`'s sizes
    tracking: str = "wandb"  # wandb | none: one W&B run per trial and final run (offline unless configured)
    wandb_project: str = "archbench"
    report: bool = True  # write the report when the study ends (python -m bench.report does it on demand)
    report_dir: str | None = None  # null = <out_dir>/report; the committed reports/<name>/ only when named here
    equivalence_margin: float = 0.01  # accuracy fraction: the report's TOST margin for "equivalent" pairs
    long_study: str | None = None  # the study with the budget that aims for 90 % of the ceiling (the report names it)
    mutual: MutualConfig = field(default_factory=MutualConfig)
    # ablation: {variant: ["key=value", ...]}; each runs as its own study `<name>-<variant>` in
    # <out_dir>/<variant>, then one ablation report (bench.run, bench.report.ablation); {} = one study
    variants: dict[str, list[str]] = field(default_factory=dict)

    @property
    def arch_list(self) -> list[str]:
        return list(self.archs) if self.archs else mixer_names()

    def curriculum(self) -> Curriculum:
        d = self.data
        return Curriculum(phases=tuple(d.phases), families=tuple(d.families) if d.families else None,
                          phase_epochs=d.phase_epochs, transition_epochs=d.transition_epochs)

    def model_config(self, arch: str) -> ModelConfig:
        """What `bench.models.build_model` needs for `arch`: `model` with its architecture and length."""
        return replace(self.model, arch=arch, max_len=self.data.length)

    @property
    def test_length_list(self) -> list[int]:
        """The lengths of the `length` test split: `data.test_lengths`, or [2L, 4L] when null."""
        d = self.data
        return list(d.test_lengths) if d.test_lengths is not None else [2 * d.length, 4 * d.length]

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir) if self.report_dir else self.output_dir / "report"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.output_dir / 'optuna.db'}"


# ---------------------------------------------------------------- composing


def _studies_dir() -> Path:
    """$ARCHBENCH_STUDIES, else the checkout's top-level studies/ (editable install), else ./studies."""
    if "ARCHBENCH_STUDIES" in os.environ:
        return Path(os.environ["ARCHBENCH_STUDIES"])
    beside = Path(__file__).resolve().parents[2] / "studies"
    return beside if beside.is_dir() else Path("studies")


STUDIES_DIR = _studies_dir()


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def _register_configs(study: str) -> None:
    """The schema and the one study in use (read and checked now, so a broken file elsewhere in the
    folder, or an edit since the last command in this process, is never a surprise)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    node = load_study_file(STUDIES_DIR / f"{study}.yaml", Config)
    cs.store(group="study", name=study, node=node, package="_global_")


def _derived_key_error(key: str) -> ConfigError:
    return ConfigError(f"{key} is set per architecture (archs) and from data.length; it cannot be set")


def compose_config(overrides: list[str]) -> Config:
    """Compose studies/<study>.yaml over the schema with `overrides`; raise ConfigError on any problem.

    Only existing keys can be set: Hydra's `+key` (add), `~key` (delete) and `hydra.*` overrides
    would add keys the schema drops or settings this CLI ignores, so they are refused.
    """
    for o in overrides:
        key = o.split("=", 1)[0]
        if key.startswith(("+", "~", "hydra.")) or key in ("hydra", "name"):
            raise ConfigError(f"override '{o}': only existing keys can be set (see --cfg); name comes from study=")
        if key in (f"model.{k}" for k in DERIVED_MODEL_KEYS):
            raise _derived_key_error(key)
    studies = [o.split("=", 1)[1] for o in overrides if o.startswith("study=")]
    if len(studies) > 1:
        raise ConfigError(f"study= given {len(studies)} times ({', '.join(studies)}); choose one")
    study = studies[0] if studies else "smoke"
    if study not in study_names():
        raise ConfigError(f"unknown study '{study}' (available: {', '.join(study_names())})")
    overrides = [*overrides, f"name={study}"]
    _register_configs(study)
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
    except OSError as e:  # Hydra looks a key up as a file name too: one past NAME_MAX fails there
        raise ConfigError(f"bad override: not a key of the configuration ({e.strerror})") from None
    try:
        return validate(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad value: {first_line(e)}") from None


# ---------------------------------------------------------------- checking


def to_yaml(cfg: Config) -> str:
    """The resolved configuration as `--cfg` prints it and config.yaml stores it; model.arch and
    model.max_len are left out: they differ per architecture and follow data.length."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key in DERIVED_MODEL_KEYS:
        tree["model"].pop(key, None)
    return OmegaConf.to_yaml(OmegaConf.create(tree))


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")


def validate(cfg: DictConfig | Config) -> Config:
    """Turn a composed config into a checked `Config`, or raise `ConfigError` naming the problem."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_object(cfg)
        except OmegaConfBaseException:  # some are ValueErrors too: compose_config reports them
            raise
        except ValueError as e:  # bench.models.ModelConfig refusing a value in its __post_init__
            raise ConfigError(f"model: {first_line(e)}") from None
    assert isinstance(cfg, Config)
    check_numbers(cfg)
    unknown = [a for a in cfg.arch_list if a not in mixer_names()]
    if unknown:
        raise ConfigError(f"unknown architecture '{unknown[0]}' (registered: {', '.join(mixer_names())})")
    if cfg.archs is not None and not cfg.archs:
        raise ConfigError("archs is empty (null means every registered architecture)")
    for key, values in (("archs", cfg.arch_list), ("seeds", cfg.seeds)):
        if not values:
            raise ConfigError(f"{key} must list at least one entry")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key} lists an entry twice: {list(values)}")
    _validate_model(cfg)
    _validate_train(cfg)
    _validate_data(cfg)
    check_search(cfg.search, cfg.iso)
    _validate_memory(cfg)
    _validate_engine(cfg)
    check_variants(cfg.variants)
    if cfg.long_study is not None and cfg.long_study not in study_names():
        raise ConfigError(f"long_study: no study file studies/{cfg.long_study}.yaml")
    check_out_dir(cfg.output_dir)
    if cfg.report:
        check_writable_dir(cfg.report_path, "report_dir")
    return cfg


def _validate_memory(cfg: Config) -> None:
    """Build each architecture on the meta device (heads not dividing d_model, unknown knobs: the
    model's own refusals) and check its memory estimate, at `model`'s sizes and, with a search, at
    the space's largest (a draw the model itself refuses there is the search's to skip)."""
    sp, g, t = cfg.search.space, cfg.search.grid, cfg.train
    largest = dict(d_model=sp.d_model[1], num_layers=sp.num_layers[1], d_state=min(sp.d_state[1], sp.d_model[1]),
                   d_conv=sp.d_conv[1], expand=max(sp.expand))
    if cfg.search.sampler == "grid":
        largest = dict(d_model=max(g.d_model), num_layers=max(g.num_layers), d_conv=max(g.d_conv),
                       d_state=max([d for d in g.d_state if d <= max(g.d_model)]), expand=max(g.expand))
    for arch in cfg.arch_list:
        try:
            check_memory(cfg.model_config(arch), "model.d_model/num_layers/d_state", t.batch_size, cfg.data.length,
                         cfg.memory_budget, cfg.device)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model ({arch}): {e}") from None
        if cfg.search.n_trials:
            try:
                keys = "search.space's largest sizes" if cfg.search.sampler == "tpe" else "search.grid's largest sizes"
                check_memory(replace(cfg.model_config(arch), **largest), keys, t.batch_size, cfg.data.length,
                             cfg.memory_budget, cfg.device)
            except ConfigError:
                raise
            except (TypeError, ValueError):
                continue


def _validate_model(cfg: Config) -> None:
    m, default = cfg.model, {f.name: f.default for f in fields(ModelConfig)}
    for key in DERIVED_MODEL_KEYS:
        if getattr(m, key) != default[key]:
            raise _derived_key_error(f"model.{key}")
    if not is_pow2(m.d_model):
        raise ConfigError(f"model.d_model must be a power of two, got {m.d_model}")
    if not is_pow2(m.d_state):
        raise ConfigError(f"model.d_state must be a power of two, got {m.d_state}")
    if m.d_state > m.d_model:
        raise ConfigError(f"model.d_state ({m.d_state}) must not exceed model.d_model ({m.d_model})")
    _positive(**{"model.d_conv": m.d_conv, "model.expand": m.expand})  # the backbone checks the rest
    for arch in m.mixer:
        if arch not in mixer_names():
            raise ConfigError(f"model.mixer.{arch}: unknown architecture '{arch}'")


def _validate_train(cfg: Config) -> None:
    t, d = cfg.train, cfg.data
    _positive(**{"train.steps": t.steps, "train.batch_size": t.batch_size, "train.lr": t.lr,
                 "train.val_every": t.val_every, "train.grad_clip": t.grad_clip,
                 "train.patience": t.patience, "data.val_size": d.val_size, "data.val_fixed_size": d.val_fixed_size,
                 "data.test_per_family": d.test_per_family, "eval.batch_size": cfg.eval.batch_size,
                 "threads": cfg.threads})
    if t.distance_weight not in ("linear", "quadratic", "sqrt"):
        raise ConfigError(f"train.distance_weight must be linear, quadratic or sqrt, got '{t.distance_weight}'")
    if min(t.alpha, t.weight_decay, t.min_lr, t.warmup_steps, t.min_delta) < 0:
        raise ConfigError("train.alpha, weight_decay, min_lr, warmup_steps and min_delta must be non-negative")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr ({t.min_lr}) must not exceed train.lr ({t.lr})")
    if not 0 <= t.warmup_max_frac <= 1:
        raise ConfigError(f"train.warmup_max_frac must be in [0, 1], got {t.warmup_max_frac}")


def _validate_data(cfg: Config) -> None:
    d = cfg.data
    if d.length < MIN_LENGTH:
        raise ConfigError(f"data.length must be at least {MIN_LENGTH}, got {d.length}")
    try:  # the curriculum checks phases, families and epochs itself
        cfg.curriculum().validate_length(d.length)
    except ValueError as e:
        raise ConfigError(f"data: {e}") from None
    check_test_lengths(cfg.data.length, cfg.test_length_list)
    prefix = cfg.eval.continuation_prefix
    if prefix is not None and not 1 <= prefix < d.length:
        raise ConfigError(f"eval.continuation_prefix must be in [1, data.length), got {prefix}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got '{cfg.device}'")


def _validate_engine(cfg: Config) -> None:
    """Stages, sizing, workers, tracking, the mutual stage and the storage URL."""
    if cfg.stage not in ("all", "search", "final"):
        raise ConfigError(f"stage must be all, search or final, got '{cfg.stage}'")
    if cfg.iso not in ("none", "params", "state"):
        raise ConfigError(f"iso must be none, params or state, got '{cfg.iso}'")
    if cfg.iso_target is not None:
        _positive(**{"iso_target": cfg.iso_target})
    _positive(**{"workers": cfg.workers, "heartbeat": cfg.heartbeat, "memory_budget": cfg.memory_budget})
    if not 0 < cfg.equivalence_margin < 0.5:
        raise ConfigError(f"equivalence_margin must be in (0, 0.5) (an accuracy fraction), "
                          f"got {cfg.equivalence_margin}")
    if cfg.tracking not in ("wandb", "none"):
        raise ConfigError(f"tracking must be wandb or none, got '{cfg.tracking}'")
    w = cfg.mutual.weight
    if w is not None and not (math.isfinite(w) and w >= 0):
        raise ConfigError(f"mutual.weight must be a non-negative number or null, got {w}")
    if w is not None and len(cfg.arch_list) < 2:
        raise ConfigError(f"mutual.weight is set, but mutual learning needs at least two archs, got {cfg.arch_list}")
    if cfg.storage is not None and "://" not in cfg.storage:
        raise ConfigError(f"storage must be an Optuna RDB URL such as sqlite:///path.db or "
                          f"postgresql+psycopg2://user:pw@host/db, got '{cfg.storage}'")
    if cfg.storage is not None:
        check_storage_url(cfg.storage)
    if cfg.tracking == "wandb":
        check_wandb_mode()
