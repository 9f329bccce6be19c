"""Attaching a built report to the study's Optuna studies, for optuna-dashboard: the README and
figures as artifacts of each final study (kept in `<out_dir>/artifacts`), the headline as the note of
every named study. optuna-dashboard is imported only here, when a report is published."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from bench.report.draw import FIGURES
from bench.report.importance import existing_storage, final_study

LOCK = ".publish.lock"  # in the artifact folder: publishes to one folder take turns


def publish(report_dir: Path, *, study: str, out_dir: Path, storage_url: str, study_names: Sequence[str]) -> list[str]:
    """Attach the report in `report_dir` to those of `study_names` that exist in the storage at
    `storage_url`: the headline plus a pointer to the report as each one's note, and the README and
    figures as artifacts of each final study (`<study>/<arch>/final`), replacing earlier uploads of the
    same files. Returns what it did, one line each."""
    from optuna_dashboard import save_note

    storage, why = existing_storage(storage_url)
    if storage is None:
        return [f"report not attached to the dashboard: {why}"]
    readme = Path(report_dir) / "README.md"
    files = [readme, *(readme.parent / f for f in FIGURES if (readme.parent / f).is_file())]
    headline = readme.read_text().split("<!-- headline -->", 1)[-1].split("<!-- /headline -->", 1)[0].strip()
    note = (f"## archbench report: {study}\n\n{headline}\n\nFull report with figures: `{readme}` "
            f"(also attached as artifacts to each `{final_study(study, '<arch>')}` study).\n")
    store_dir = Path(out_dir) / "artifacts"
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(base_path=store_dir)
    existing = set(optuna.get_all_study_names(storage))
    noted = attached = 0
    with _exclusive(store_dir / LOCK):  # two publishes at once: the second finds the first's uploads
        for name in dict.fromkeys(n for n in study_names if n in existing):
            target = optuna.load_study(study_name=name, storage=storage)
            save_note(target, note)
            noted += 1
            if name.endswith("/final"):
                _attach(storage, store, target, files)
                attached += 1
    return [f"attached the report to {attached} final studies ({len(files)} files each, {attached * len(files)} "
            f"artifacts in {store_dir}) and noted {noted} studies in {storage_url}"]


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) for the block; released when the process dies."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _attach(storage: Any, store: FileSystemArtifactStore, study: optuna.Study, files: list[Path]) -> None:
    """Upload `files` as the study's artifacts; re-publishing rewrites the same artifact, so none pile up."""
    earlier = _artifact_ids(storage, storage.get_study_id_from_name(study.study_name))
    for f in files:
        if f.name in earlier:
            with f.open("rb") as body:
                store.write(earlier[f.name], body)
        else:
            upload_artifact(artifact_store=store, file_path=str(f), study_or_trial=study)


def _artifact_ids(storage: Any, study_id: int) -> dict[str, str]:
    """{file name: artifact id} of the study's artifacts (the first of each name; entries that
    optuna-dashboard deleted are null and skipped)."""
    ids: dict[str, str] = {}
    for key, value in storage.get_study_system_attrs(study_id).items():
        meta = json.loads(value) if key.startswith("artifacts:") and isinstance(value, str) else None
        if meta:
            ids.setdefault(meta["filename"], meta["artifact_id"])
    return ids
