"""Per-prediction scores of the final runs: every teacher-forced prediction on every test split.

A final (or mutual-stage) run that finished ok writes final/<stem>.predictions.parquet
(`trial.write_final`, before its run.json); `collect` gathers them into out_dir/predictions.parquet.
One row per (split, sequence, position) of the run, columns `COLUMNS`:

    run, study, stage, arch     the run's stem (`records.stem`), study name, stage, architecture
    seed, replicate             its training seed and search replicate
    split, length               iid_seen | iid_unseen | ood | length, and the sequence length
    phase, family               the test row's curriculum phase and family
    sequence                    the row's stable id (`Context.split_ids`): the same for every
                                architecture, seed and replicate, unique within (split source, length)
    position                    p predicts x[p + 1] from x[0..p]
    correct, distance, loss     argmax == target, |argmax - target|, cross-entropy (nats)

Why in this form: the report's intervals resample seeds and sequences (crossed, not nested: one test
set for every seed), which needs scores per sequence, not per (seed, family) cell. Size: phase2 at
300 rows per family has 180,900 predictions per run (5,400 iid + 2,700 ood rows at 7 positions,
2,700 at 15 and 2,700 at 31), a 0.9 MB file (zstd, ~4.9 bytes a row, 4 of them the float32 loss);
8 architectures x 5 seeds make 7.2 M rows, ~35 MB. Hence small dtypes (`SCHEMA`: seed int64,
replicate, length, position and distance int16, phase int8, sequence int64, correct bool, loss
float32) and zstd; on disk the text columns are plain strings (dictionary-encoded by parquet), so a
reader gets strings, not categoricals; `gather` holds them as categoricals in memory (~220 MB for
7.2 M rows).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.experiment.records import RunRecord
from bench.util import atomic_write

TEXT = ("run", "study", "stage", "arch", "split", "family")
SCHEMA = pa.schema([
    ("run", pa.string()), ("study", pa.string()), ("stage", pa.string()), ("arch", pa.string()),
    ("seed", pa.int64()), ("replicate", pa.int16()), ("split", pa.string()), ("length", pa.int16()),
    ("phase", pa.int8()), ("family", pa.string()), ("sequence", pa.int64()), ("position", pa.int16()),
    ("correct", pa.bool_()), ("distance", pa.int16()), ("loss", pa.float32()),
])
COLUMNS = SCHEMA.names


def tagged(frame: pd.DataFrame, record: RunRecord, run: str) -> pd.DataFrame:
    """A run's prediction rows (`bench.metrics.prediction_rows` with `split` and `length`) with the
    run's columns, in `COLUMNS` order."""
    return frame.assign(run=run, study=record.study, stage=record.stage, arch=record.arch, seed=int(record.seed),
                        replicate=int(record.replicate))[COLUMNS]


def _arrow(frame: pd.DataFrame) -> pa.Table:
    """`frame` as a table of `SCHEMA` (text columns plain strings), without pandas metadata, so that
    pandas reads back exactly these dtypes whatever the frame held (e.g. categoricals)."""
    table = pa.Table.from_pandas(frame[COLUMNS], preserve_index=False)
    columns = [table.column(f.name).cast(f.type) for f in SCHEMA]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write(frame: pd.DataFrame, path: Path, rows_per_group: int = 1_000_000) -> None:
    """`frame` (`COLUMNS`) to `path` as zstd-compressed parquet, written whole then renamed, one
    row group of `rows_per_group` rows at a time (so a study's millions of rows are never all
    converted to strings at once)."""
    def put(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
            for start in range(0, max(len(frame), 1), rows_per_group):
                writer.write_table(_arrow(frame.iloc[start:start + rows_per_group]))

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, put)


def gather(paths: Iterable[Path]) -> pd.DataFrame | None:
    """The runs' prediction files as one frame (text columns categorical: ~7 M rows stay ~250 MB);
    None when there are none (studies collected before predictions were stored)."""
    tables = [pq.read_table(p, read_dictionary=list(TEXT)) for p in paths]
    if not tables:
        return None
    return pa.concat_tables(tables).unify_dictionaries().to_pandas(split_blocks=True, self_destruct=True)
