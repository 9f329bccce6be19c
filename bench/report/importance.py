"""The report's reading side of the Optuna storage: which storage a study has (never creating one)
and the hyperparameter importances of each architecture's search study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from bench.report.load import Stored
from bench.util import first_line


def search_study(study: str, arch: str) -> str:
    """An architecture's search study in the storage: `<study>/<arch>`, as the study engine names it."""
    return f"{study}/{arch}"


def final_study(study: str, arch: str) -> str:
    """An architecture's final-stage study: `<study>/<arch>/final`."""
    return f"{search_study(study, arch)}/final"


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
    storage at `url`, and a note per one skipped."""
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
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(done) < 2:
            notes.append(f"{arch}: {len(done)} completed search trial(s), importances need 2")
            continue
        try:
            values[arch] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except Exception as e:  # too few distinct values, a dynamic space Optuna cannot assess, ...
            notes.append(f"{arch}: importances failed ({first_line(e)[:120]})")
    return values, notes
