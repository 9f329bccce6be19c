"""The up-front checks no type can express, kept apart from the schema (`config`) so that each one
is a small function: numbers that are finite and of sane size, a model that fits in memory, a
storage URL whose driver is installed, folders that can be written, and a W&B mode wandb accepts.

Each raises `ConfigError` with one line naming the key; all of them run before anything is written
(nothing here creates a file, allocates a model or opens a connection), so a refused command leaves
no trace.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from bench.memory import estimate, model_on_meta
from bench.models import ModelConfig

STUDY_MARKER = ".archbench-study"  # written into out_dir when a study starts
MAX_INT = 2**31 - 1  # counts, sizes and seeds beyond this are typing slips, not budgets
# W&B's own accepted values (wandb.Settings.mode); tracking.wandb_mode maps them onto online/offline/disabled
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
# drivers Optuna's RDBStorage can use, per database, in the order we suggest them
DRIVERS = {"postgresql": ("psycopg2", "psycopg", "pg8000"), "mysql": ("pymysql", "mysqldb", "mysqlconnector")}
MODULE_OF = {"mysqldb": "MySQLdb", "mysqlconnector": "mysql.connector"}


class ConfigError(ValueError):
    """A configuration problem a user must fix; the CLI prints it as one `error:` line, exit 2."""


def check_numbers(node: Any, prefix: str = "") -> None:
    """Every number in the (nested dataclass / dict / list) configuration `node` is finite, and every
    integer at most MAX_INT in size: `train.lr=nan` or `train.steps=10**23` are refused by name
    instead of reaching AdamW or a loop that never ends."""
    if is_dataclass(node):
        items = [(f.name, getattr(node, f.name)) for f in fields(node)]
    elif isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(node)]
    else:
        return
    for name, value in items:
        key = f"{prefix}{name}" if name.startswith("[") or not prefix else f"{prefix}.{name}"
        if isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ConfigError(f"{key} is out of range: {value} (at most {MAX_INT:,})")
        check_numbers(value, key)


def _machine_bytes(device: str) -> int:
    """What this machine could give one model: the GPU's memory where one is used, else the RAM."""
    if device != "cpu" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if ":" in device else 0
        if index < torch.cuda.device_count():
            return torch.cuda.get_device_properties(index).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(model: ModelConfig, keys: str, batch_size: int, length: int, budget_gib: float, device: str) -> None:
    """Build `model` on the meta device (nothing allocated) and refuse it when its training estimate
    exceeds both `memory_budget` and this machine's memory: such a model could never train here.
    One above the budget alone is the engine's to prune or fail, with its reason, as designed.
    ModelConfig's own refusals (heads, unknown knobs) come out as TypeError/ValueError."""
    need = estimate(model_on_meta(model), batch_size, length - 1)
    limit = max(budget_gib * 2**30, _machine_bytes(device))
    if need.total_bytes > limit:
        raise ConfigError(f"model ({model.arch}) at {keys} needs an estimated {need}, more than memory_budget "
                          f"({budget_gib} GiB) and this machine's {limit / 2**30:.0f} GiB; lower the sizes")


def check_storage_url(url: str) -> None:
    """The URL parses, names a database SQLAlchemy knows, and its driver is installed; a missing
    driver names the installed one to use instead (SQLAlchemy's default for postgresql:// is psycopg 3,
    this project installs psycopg2)."""
    shown = url
    try:
        parsed = make_url(url)
        shown = parsed.render_as_string(hide_password=True)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:  # a subclass of ArgumentError: the URL parsed, its scheme is unknown
        raise ConfigError(f"storage '{shown}': unknown database '{make_url(url).drivername}' "
                          f"(use sqlite, postgresql+psycopg2 or mysql+pymysql)") from None
    except ArgumentError:
        raise ConfigError(f"storage '{url}' is not a database URL such as sqlite:///path.db or "
                          f"postgresql+psycopg2://user:pw@host/db") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        backend = parsed.get_backend_name()
        installed = [d for d in DRIVERS.get(backend, ()) if _importable(MODULE_OF.get(d, d))]
        hint = (f"use {backend}+{installed[0]}://..." if installed
                else f"install one of {', '.join(DRIVERS.get(backend, ('its driver',)))}")
        raise ConfigError(f"storage '{shown}': driver '{dialect.driver}' for {backend} is not installed "
                          f"({e}); {hint}") from None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False


def check_writable_dir(path: Path, key: str) -> None:
    """`path` is (or can be created as) a directory this user may write: nothing is created here.
    A name the file system refuses (too long, say) is said as such."""
    try:
        path = Path(os.path.abspath(path))
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{key} '{path}' exists and is not a directory")
        probe = path
        while not probe.exists():
            probe = probe.parent
    except OSError as e:
        raise ConfigError(f"{key} '{_short(path)}' is not usable: {e.strerror}") from None
    if not probe.is_dir():
        raise ConfigError(f"{key} '{path}' is not writable: '{probe}' is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} '{path}' is not writable (no permission on '{probe}')")


def check_out_dir(path: Path) -> None:
    """Fail early (before any training), creating nothing, unless results can be swapped into `path`.

    Outputs are written beside `path` and renamed into place, so its parent must be writable; an
    existing `path` must be a study's directory (it holds the STUDY_MARKER written when a study
    starts, or an older run's meta.yaml) or empty, so that a user's own directory is never touched.
    """
    check_writable_dir(path, "out_dir")
    path = Path(os.path.abspath(path))
    if path.is_dir() and any(path.iterdir()) and not any((path / f).is_file() for f in (STUDY_MARKER, "meta.yaml")):
        raise ConfigError(f"out_dir '{path}' is a non-empty directory that holds no earlier study (no {STUDY_MARKER})")


def _short(path: Path | str, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]} ({len(text):,} characters)"


def check_wandb_mode() -> None:
    """WANDB_MODE, when set, is one wandb accepts; otherwise wandb fails mid-run, trial after trial."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode and mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE must be one of {', '.join(WANDB_MODES)}, got '{os.environ['WANDB_MODE']}'")


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_test_lengths(length: int, lengths: list[int]) -> None:
    """Each length of the `length` test split exceeds data.length `length` (it measures generalisation
    to longer sequences; longer than data.length, it also meets every family's min_length, as
    data.length does) and appears once."""
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"data.test_lengths lists a length twice: {lengths}")
    for n in lengths:
        if n <= length:
            raise ConfigError(f"data.test_lengths must each exceed data.length ({length}), got {n}")


def check_search(s: Any, iso: str = "none") -> None:
    """The search settings (`SearchConfig` `s`): trial counts, pruner, sampler, replicates, the ranges
    of powers of two (`space`) and the grid's values (`grid`, checked by `check_grid`)."""
    sp = s.space
    if s.n_trials < 0:
        raise ConfigError(f"search.n_trials must be non-negative, got {s.n_trials}")
    if s.steps is not None and s.steps <= 0:
        raise ConfigError(f"search.steps must be positive, got {s.steps}")
    if s.pruner not in ("median", "none"):
        raise ConfigError(f"search.pruner must be median or none, got '{s.pruner}'")
    if s.sampler not in ("tpe", "grid"):
        raise ConfigError(f"search.sampler must be tpe or grid, got '{s.sampler}'")
    if s.replicates < 1:
        raise ConfigError(f"search.replicates must be at least 1, got {s.replicates}")
    if s.replicates > 1 and s.n_trials == 0:
        raise ConfigError(f"search.replicates={s.replicates} repeats the search, but search.n_trials is 0: every "
                          f"replicate would retrain the same configuration")
    if min(s.startup_trials, s.warmup_validations) < 0:
        raise ConfigError("search.startup_trials and search.warmup_validations must be non-negative")
    for key in ("d_model", "d_state", "d_conv", "num_layers", "lr"):
        rng = getattr(sp, key)
        if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
            raise ConfigError(f"search.space.{key} must be [min, max] with 0 < min <= max, got {list(rng)}")
        if key in ("d_model", "d_state", "d_conv") and not (is_pow2(rng[0]) and is_pow2(rng[1])):
            raise ConfigError(f"search.space.{key} bounds must be powers of two, got {list(rng)}")
    if sp.d_state[0] > sp.d_model[0]:
        raise ConfigError(f"search.space.d_state min ({sp.d_state[0]}) exceeds d_model min ({sp.d_model[0]})")
    if not sp.expand or any(e not in (1, 2, 4) for e in sp.expand) or len(set(sp.expand)) != len(sp.expand):
        raise ConfigError(f"search.space.expand must list distinct values from {{1, 2, 4}}, got {list(sp.expand)}")
    core = check_grid(s.grid, iso)
    if s.sampler == "grid" and s.n_trials > core:
        raise ConfigError(f"search.n_trials ({s.n_trials}) exceeds the core grid's {core} points "
                          f"(lr x {'' if iso == 'none' else '(iso-sized) '}d_model x num_layers); use 0..{core}")


def check_grid(g: Any, iso: str = "none") -> int:
    """The grid's lists (`GridConfig` `g`): each non-empty and without repeats, sizes powers of two,
    lr positive (finite: `check_numbers`), and a d_state that fits the smallest d_model. Returns the
    core grid's size (lr x d_model x num_layers; lr x num_layers under iso sizing)."""
    for key in ("lr", "d_model", "num_layers", "d_state", "d_conv", "expand"):
        values = list(getattr(g, key))
        if not values or len(set(values)) != len(values):
            raise ConfigError(f"search.grid.{key} must list distinct values, got {values}")
        if any(v <= 0 for v in values):
            raise ConfigError(f"search.grid.{key} values must be positive, got {values}")
        if key in ("d_model", "d_state", "d_conv", "expand") and not all(is_pow2(v) for v in values):
            raise ConfigError(f"search.grid.{key} values must be powers of two, got {values}")
    if iso == "none" and min(g.d_state) > min(g.d_model):
        raise ConfigError(f"search.grid.d_state's smallest ({min(g.d_state)}) exceeds d_model's smallest "
                          f"({min(g.d_model)}): no d_state fits that d_model")
    return len(g.lr) * len(g.num_layers) * (len(g.d_model) if iso == "none" else 1)


VARIANT_FIXED_KEYS = ("study", "name", "out_dir", "storage", "report_dir", "variants")  # set per variant by bench.run


def check_variants(variants: dict[str, list[str]]) -> None:
    """Each variant is a directory-safe name (not `report`: the ablation report's folder) with distinct
    `key=value` overrides of keys a variant may set, e.g. {"numeric_a0": ["model.embedding=numeric",
    "train.alpha=0"]}; whether each key and value exists is checked by composing it (bench.run)."""
    seen: dict[frozenset[str], str] = {}
    for name, overrides in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == "report":
            raise ConfigError(f"variants: name '{name}' must be letters, digits, '_', '.', '-' (and not 'report')")
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        for o, key in zip(overrides, keys, strict=True):
            if "=" not in o or not key:
                raise ConfigError(f"variants.{name}: '{o}' is not a key=value override")
            if key.lstrip("+~") in VARIANT_FIXED_KEYS:
                raise ConfigError(f"variants.{name}: '{key}' is set per variant and cannot be overridden there")
        if len(set(keys)) != len(keys):
            raise ConfigError(f"variants.{name} sets a key twice: {list(overrides)}")
        same = seen.setdefault(frozenset(overrides), name)
        if same != name:
            raise ConfigError(f"variants {same} and {name} have the same overrides")
