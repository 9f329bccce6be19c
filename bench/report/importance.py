"""The report's reading side of the Optuna storage: which storage a study has (never creating one)
and the hyperparameter importances of each architecture's search study.

Importances are computed only from at least `MIN_TRIALS` completed search trials: PED-ANOVA compares
the top quantile of trials with all of them, and below ten trials that quantile is one or two trials, so
the "importance" is the accident of which configuration happened to win. With search replicates, the
importances are those of replicate 0's search (the study named as before replicates existed); the
figure says so and labels every panel with its trial count. Ties in importance are ordered by name so
a rebuild from the same storage draws the same figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from bench.report.load import Stored
from bench.util import first_line

MIN_TRIALS = 10  # completed search trials an architecture needs before its importances are shown


def search_study(study: str, arch: str, replicate: int = 0) -> str:
    """An architecture's search study in the storage, as the study engine names it
    (`bench.experiment.storage.search_name`): `<study>/<arch>` for replicate 0, `<study>/r<r>/<arch>`
    for replicate r > 0."""
    return f"{study}/{arch}" if replicate == 0 else f"{study}/r{replicate}/{arch}"


def final_study(study: str, arch: str, replicate: int = 0) -> str:
    """An architecture's final-stage study: `<study>/<arch>/final` (`<study>/r<r>/<arch>/final`)."""
    return f"{search_study(study, arch, replicate)}/final"


def existing_storage(url: str) -> tuple[Any, str]:
    """The Optuna storage at `url` if there is one, else (None, why): a SQLite URL whose file does not
    exist is no storage, so neither the report nor publishing ever creates one."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None, f"no Optuna storage ({url.removeprefix('sqlite:///')} does not exist)"
    try:
        return optuna.storages.RDBStorage(url), ""
    except Exception as e:  # SQLAlchemy's OperationalError, a missing driver, a bad URL
        return None, f"storage '{url}' is unreachable: {first_line(e)}"


def param_importances(s: Stored, archs: list[str], url: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """PED-ANOVA importances (Optuna's default evaluator) of each architecture's search study in the
    storage at `url` (replicate 0's), ordered by (−importance, name), and a note per one skipped (fewer
    than MIN_TRIALS completed trials, no study, an evaluator failure)."""
    if s.setting("search.n_trials") == 0:
        return {}, ["no search stage (search.n_trials=0): every architecture trained at the study's model sizes"]
    storage, why = existing_storage(url)
    if storage is None:
        return {}, [why]
    names = set(optuna.get_all_study_names(storage))
    values, notes = {}, []
    for arch in archs:
        name = search_study(s.name, arch)
        if name not in names:
            notes.append(f"{arch}: no search study `{name}`")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        if done < MIN_TRIALS:
            notes.append(f"{arch}: {done} completed search trial(s), importances need at least {MIN_TRIALS}")
            continue
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except Exception as e:  # too few distinct values, a dynamic space Optuna cannot assess, ...
            notes.append(f"{arch}: importances failed ({first_line(e)[:120]})")
            continue
        values[arch] = dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
    return values, notes


def completed_trials(s: Stored, archs: list[str], url: str) -> dict[str, int]:
    """{arch: completed trials of its (replicate 0) search study} in the storage at `url`, for the
    importance figure's labels; architectures without a study are left out."""
    storage, _ = existing_storage(url)
    if storage is None:
        return {}
    names = set(optuna.get_all_study_names(storage))
    counts = {}
    for arch in archs:
        if search_study(s.name, arch) in names:
            study = optuna.load_study(study_name=search_study(s.name, arch), storage=storage)
            counts[arch] = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    return counts
