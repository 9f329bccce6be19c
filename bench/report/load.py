"""What a study stored, read back: its tables (`<name>.parquet`), config.yaml and meta.yaml in its
out_dir. The report needs nothing else: no model, no training code, no configuration schema.

config.yaml is the study's full configuration as OmegaConf YAML; it is read as a plain DictConfig
(`Stored.setting`), so a report stands for a study written by an older or newer schema. The words
of the stored tables the report relies on are named here (`ALL`, the baselines' `baseline_` prefix,
the `ceiling` arch, the test splits); the order in which families are shown is the test set's, as
recorded in overlap.parquet. results.parquet must carry the `split` and `length` columns: a table
from before the splits pools memorised and unseen sequences, which no headline may show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bench.util import first_line

REQUIRED = ("results.parquet", "runs.parquet", "meta.yaml", "config.yaml")  # without these nothing to report
# <name>.parquet; a missing one is said in its section
OPTIONAL = ("history", "trials", "overlap", "decay", "cka", "cka_floor", "mutual", "mutual_runs", "mutual_kl",
            "ceiling", "splits", "oeis", "predictions")
# the columns the report reads of a large table (predictions.parquet: ~7 M rows for phase2)
READ_COLUMNS = {"predictions": ["arch", "stage", "seed", "replicate", "split", "length", "phase", "family", "sequence",
                                "correct"]}
ALL = "all"  # the family of rows aggregated over families (position <NA>: over all positions)
# the non-learned predictors scored on the same test set, in the order the report shows them
BASELINES = ("baseline_uniform", "baseline_last_value", "baseline_extrapolate", "baseline_lookup")
TRIVIAL = ("baseline_last_value", "baseline_extrapolate", "baseline_lookup")  # an architecture below one is flagged
CEILING = "ceiling"  # the Bayes-optimal predictor's rows in results.parquet (per seed and split)
REFERENCES = (*BASELINES, CEILING)  # every arch of results.parquet that is not a trained model
# the test splits: iid_seen (verbatim in the seed's training budget), iid_unseen (same distribution,
# never drawn), ood (the families' held-out regions), length (the same families, longer sequences)
SPLITS = ("iid_seen", "iid_unseen", "ood", "length")
PRIMARY = "iid_unseen"  # what every headline, ranking and comparison reads; "ood" beside it, never a mix


class ReportInputError(ValueError):
    """What the report was given cannot make a report (the CLIs print it as one `error:` line)."""


class MissingResults(ReportInputError):
    """The out_dir lacks a file the report cannot do without (`file`, one of REQUIRED)."""

    def __init__(self, out_dir: Path, file: str) -> None:
        self.out_dir, self.file = out_dir, file
        super().__init__(f"no stored results in {out_dir} ({file} is missing)")


@dataclass
class Stored:
    """What a study stored in its out_dir; optional tables are None when absent."""

    out_dir: Path
    cfg: DictConfig  # config.yaml: the configuration the study ran under
    meta: dict[str, Any]  # meta.yaml: command, commit, date, machine, workers, storage
    results: pd.DataFrame
    runs: pd.DataFrame
    history: pd.DataFrame | None = None
    trials: pd.DataFrame | None = None
    overlap: pd.DataFrame | None = None
    decay: pd.DataFrame | None = None
    cka: pd.DataFrame | None = None
    cka_floor: pd.DataFrame | None = None  # what two unrelated embeddings score on the CKA probe, per d_model
    mutual: pd.DataFrame | None = None  # the mutual stage's test scores (schema of results)
    mutual_runs: pd.DataFrame | None = None
    mutual_kl: pd.DataFrame | None = None  # pairwise KL between architectures' predictions, alone and jointly
    ceiling: pd.DataFrame | None = None  # the Bayes ceiling per (set, region, length, seed, family, position)
    splits: pd.DataFrame | None = None  # test sequences per (seed, phase, family, split, length)
    oeis: pd.DataFrame | None = None  # next-term scores on real (OEIS) sequences per (arch, seed, kind)
    family_names: list[str] = field(default_factory=list)  # the test set's family order
    predictions: pd.DataFrame | None = None  # one row per scored prediction of every final run (not before issue 17)

    @property
    def name(self) -> str:
        return str(self.setting("name", self.out_dir.name))

    def setting(self, key: str, default: Any = None) -> Any:
        """A value of config.yaml by dotted key ('search.n_trials'), `default` where the key is absent."""
        return OmegaConf.select(self.cfg, key, default=default)

    @property
    def storage_url(self) -> str:
        """The Optuna storage the study used: its `storage`, else the SQLite file in out_dir."""
        return self.setting("storage") or f"sqlite:///{self.out_dir / 'optuna.db'}"


def load(out_dir: Path) -> Stored:
    """Read the study's stored files; MissingResults naming the first missing required file."""
    out_dir = Path(out_dir)
    missing = [f for f in REQUIRED if not (out_dir / f).is_file()]
    if missing:
        raise MissingResults(out_dir, missing[0])
    optional = {name: _table(out_dir / f"{name}.parquet", READ_COLUMNS.get(name))
                if (out_dir / f"{name}.parquet").is_file() else None for name in OPTIONAL}
    overlap = optional["overlap"]
    cfg, meta = (_mapping(out_dir / f) for f in ("config.yaml", "meta.yaml"))
    families = list(dict.fromkeys(overlap["family"])) if overlap is not None and "family" in overlap else []
    results = _table(out_dir / "results.parquet")
    if not {"split", "length"} <= set(results.columns):
        raise ReportInputError(f"stored table {out_dir / 'results.parquet'} has no split/length columns (written "
                               f"before the test splits, it pools memorised and unseen sequences); rerun the study "
                               f"to rewrite it")
    return Stored(out_dir=out_dir, cfg=cfg, meta=dict(OmegaConf.to_container(meta)), results=results,
                  runs=_table(out_dir / "runs.parquet"), family_names=families, **optional)


def _table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A stored table (only `columns`, given); a file that is not a readable parquet table is named
    (a ReportInputError)."""
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise ReportInputError(f"stored table {path} cannot be read ({first_line(e)[:200]}); "
                               f"rerun the study to rewrite it") from None


def _mapping(path: Path) -> DictConfig:
    """config.yaml or meta.yaml as a mapping; anything else is named (a ReportInputError)."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml's and OmegaConf's errors share no base class
        raise ReportInputError(f"stored file {path} cannot be read ({first_line(e)[:200]})") from None
    if not isinstance(loaded, DictConfig):
        raise ReportInputError(f"stored file {path} is not a mapping of keys")
    return loaded


def family_order(names: Any, known: list[str]) -> list[str]:
    """Families in the order of `known` (the test set's: phase by phase, as registered), others last by name."""
    return sorted(names, key=lambda f: (known.index(f) if f in known else len(known), f))


def is_baseline(arch: str) -> bool:
    """A reference predictor rather than a trained architecture: a baseline or the ceiling."""
    return arch in REFERENCES or arch.startswith("baseline_")


def with_others(order: list[str], archs: pd.Series) -> list[str]:
    """`order`, then any other architecture in `archs` (one without test results), sorted."""
    return [*order, *sorted(a for a in set(archs) - set(order) if not is_baseline(a))]


def split_rows(frame: pd.DataFrame, split: str, length: int | None = None) -> pd.DataFrame:
    """The rows of one test split (and, given, one sequence length) of a results-schema table."""
    keep = frame["split"] == split
    if length is not None:
        keep &= frame["length"] == length
    return frame[keep]
