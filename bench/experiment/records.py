"""One run's record and where its files live: the single home of both.

A `RunRecord` is filled in three steps: `plan` (configuration, sizes, memory estimate: known before
training), the outcome of training (steps, tokens, wall time, last validation, or why it failed),
and closing (stage, status, reason, device, trial). The same record is

    final/<stem>.run.json      RunRecord.row()           one file per final (or mutual-stage) run
    runs.parquet               runs_table(records)       one row per run, columns from the fields
    trial user attributes      RunRecord.attrs(group)    "plan" fields before training, "outcome" after
    the W&B run's summary      RunRecord.attrs()         every field known

Fields marked optional (the alphabetical tail) are left out of run.json, and out of runs.parquet
unless some run has them, as a run that never trained has no validation scores.

Files of one run (`RunFiles`), stem `<arch>-seed<seed>`, then `-r<r>` for search replicate r > 0
(replicate 0 keeps the names studies had before replicates existed), then `-mutual` for a
mutual-stage member, e.g. `mamba-seed3-r1-mutual`:

    <out_dir>/final/<stem>.run.json, .history.parquet, .results.parquet, .decay.parquet,
                     .predictions.parquet
    <out_dir>/models/<stem>.pt                          weights of a run that finished ok
    <out_dir>/checkpoints/<study name, / as __>/trial-<n>.pt   while a trial trains
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.util import atomic_write

LEGACY_KEYS = ("vectorised", "fallback")  # in run.json files of the removed stacked final stage; dropped


def _f(group: str, optional: bool = False) -> Any:
    return field(default=None, metadata={"group": group, "optional": optional})


@dataclass(kw_only=True)
class RunRecord:
    """A run of a search trial, a final run or a mutual-stage member; field order = column order."""

    study: str = ""  # run.json files written before the record held the study lack it; collect sets it
    stage: str = "final"  # search | final | mutual
    arch: str = field(metadata={"group": "plan"})
    seed: int = field(metadata={"group": "plan"})
    replicate: int = field(default=0, metadata={"group": "plan"})  # the search replicate (run.json before: 0)
    status: str | None = _f("run")  # ok | failed (final and mutual runs)
    reason: str | None = _f("run")  # why it failed ("" when ok)
    d_model: int | None = _f("plan")
    num_layers: int | None = _f("plan")
    d_state: int | None = _f("plan")  # the shared sizes only of architectures whose mixer takes them
    d_conv: int | None = _f("plan")
    expand: int | None = _f("plan")
    lr: float | None = _f("plan")
    num_params: int | None = _f("plan")
    state_size: int | None = _f("plan")
    steps: int | None = _f("outcome")
    tokens: int | None = _f("outcome")
    wall_s: float | None = _f("outcome")
    best_step: int | None = _f("outcome")
    stopped_early: bool | None = _f("outcome")
    mem_estimate_gib: float | None = _f("plan")
    mem_measured_gib: float | None = _f("outcome")
    impl: str | None = _f("outcome")  # the mixers' implementations, e.g. "torch" or "fused"
    device: str | None = _f("run")
    search_trial: int | None = _f("run")  # the search trial whose configuration this final run retrains
    trial: int | None = _f("run")  # its own trial's number (a mutual member: its cohort's)
    cohort: str | None = _f("outcome", optional=True)  # mutual stage: the architectures trained jointly
    # replicate r > 0 chose the configuration an earlier replicate's run of this seed trained: that run's stem,
    # whose files these are (final runs are deterministic: same configuration, seed, data, initialisation)
    copied_from: str | None = _f("run", optional=True)
    failure_reason: str | None = _f("outcome", optional=True)
    mem_peak_gib: float | None = _f("outcome", optional=True)  # CUDA only
    mutual_weight: float | None = _f("outcome", optional=True)
    pruned_reason: str | None = _f("outcome", optional=True)
    resumed_from: int | None = _f("outcome", optional=True)
    steps_budget: int | None = _f("plan", optional=True)
    val_accuracy: float | None = _f("outcome", optional=True)  # the last validation
    val_ce: float | None = _f("outcome", optional=True)
    val_distance_error: float | None = _f("outcome", optional=True)
    val_loss: float | None = _f("outcome", optional=True)

    def row(self) -> dict[str, Any]:
        """run.json and a row of runs.parquet: every field, the optional ones only when set."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL}

    def attrs(self, *groups: str) -> dict[str, Any]:
        """The fields set so far, of `groups` (default: all): a trial's user attributes, a W&B summary."""
        return {k: v for k, v in asdict(self).items() if v is not None and (not groups or GROUP[k] in groups)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunRecord:
        return cls(**{k: v for k, v in row.items() if k not in LEGACY_KEYS})

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        return cls.from_row(json.loads(path.read_text()))


COLUMNS = [f.name for f in fields(RunRecord)]
GROUP = {f.name: f.metadata.get("group", "run") for f in fields(RunRecord)}
OPTIONAL = {f.name for f in fields(RunRecord) if f.metadata.get("optional")}
VALIDATION_KEYS = [k for k in COLUMNS if k.startswith("val_")]


def runs_table(records: Iterable[RunRecord], study: str) -> pd.DataFrame:
    """runs.parquet (and mutual_runs.parquet): one row per run, the columns in field order, an
    optional column only when some run has it."""
    rows = [r.row() for r in records]
    present = {k for row in rows for k in row}
    columns = [c for c in COLUMNS if c not in OPTIONAL or c in present]
    return pd.DataFrame(rows, columns=columns).assign(study=study)


def stem(arch: str, seed: int, stage: str = "final", replicate: int = 0) -> str:
    """The file stem of a final (or mutual-stage) run's outputs: replicate 0 without a suffix, so
    studies stored before replicates existed keep their file names."""
    return (f"{arch}-seed{seed}" + (f"-r{replicate}" if replicate else "")
            + ("-mutual" if stage == "mutual" else ""))


@dataclass(frozen=True)
class RunFiles:
    """The files of one final (or mutual-stage) run under `out_dir` (see the module docstring)."""

    out_dir: Path
    arch: str
    seed: int
    stage: str = "final"
    replicate: int = 0

    @property
    def stem(self) -> str:
        return stem(self.arch, self.seed, self.stage, self.replicate)

    def _final(self, suffix: str) -> Path:
        return self.out_dir / "final" / f"{self.stem}.{suffix}"

    @property
    def run_json(self) -> Path:
        return self._final("run.json")

    @property
    def history(self) -> Path:
        return self._final("history.parquet")

    @property
    def results(self) -> Path:
        return self._final("results.parquet")

    @property
    def decay(self) -> Path:
        return self._final("decay.parquet")

    @property
    def predictions(self) -> Path:
        return self._final("predictions.parquet")

    @property
    def weights(self) -> Path:
        return self.out_dir / "models" / f"{self.stem}.pt"

    def write(self, record: RunRecord, history: list[dict], scores: pd.DataFrame | None,
              model: torch.nn.Module | None) -> None:
        """The run's files, each written whole then renamed; run.json last, so its presence means the
        rest is there. `scores` and `model` only for a run that finished ok."""
        for d in (self.run_json.parent, self.weights.parent):
            d.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(history).assign(arch=self.arch, seed=self.seed, replicate=self.replicate)
        atomic_write(self.history, lambda p: frame.to_parquet(p, index=False))
        if scores is not None and model is not None:
            tagged = scores.assign(arch=self.arch, seed=self.seed, replicate=self.replicate)
            atomic_write(self.results, lambda p: tagged.to_parquet(p, index=False))
            state = {k: v.cpu() for k, v in model.state_dict().items()}
            atomic_write(self.weights, lambda p: torch.save(state, p))
        text = json.dumps(record.row(), default=str, indent=1)
        atomic_write(self.run_json, lambda p: p.write_text(text))


def checkpoint_dir(out_dir: Path, study_name: str) -> Path:
    """Where the trials of Optuna study `study_name` keep their checkpoints while they train."""
    return out_dir / "checkpoints" / study_name.replace("/", "__")
