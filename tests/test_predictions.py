"""Per-prediction scores: stable sequence ids, rows that reproduce the tidy scores exactly, the
stored file's columns and dtypes, a run's replicate and initialisation seed, and (slow) a whole
study's predictions.parquet with replicates."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.experiment import predictions
from bench.experiment.config import compose_config
from bench.experiment.context import Context
from bench.experiment.records import RunRecord
from bench.experiment.trial import build, plan
from bench.experiment.trial import test_outputs as outputs
from bench.models import build_model
from bench.seeding import derive_seed

TINY = ["train.steps=40", "train.val_every=20", "train.batch_size=8", "data.test_per_family=6", "data.val_size=8",
        "model.d_model=16", "model.num_layers=1", "model.d_state=8", "progress=false", "report=false",
        "tracking=none"]
DTYPES = {"run": "str", "study": "str", "stage": "str", "arch": "str", "seed": "int64", "replicate": "int16",
          "split": "str", "length": "int16", "phase": "int8", "family": "str", "sequence": "int64",
          "position": "int16", "correct": "bool", "distance": "int16", "loss": "float32"}
SOURCE = {"iid_seen": "iid", "iid_unseen": "iid", "ood": "ood", "length": "length"}  # ids unique per source


def tiny(tmp_path: Path, *overrides: str):
    return compose_config(["study=smoke", *TINY, f"out_dir={tmp_path / 'out'}", *overrides])


def is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series) and not isinstance(series.dtype, pd.CategoricalDtype)


def test_split_ids_name_each_test_row_the_same_for_every_seed(tmp_path):
    """A row's id is its index in "iid", n_iid + its index in "unseen", or its index in its own set:
    row by row the ids of `splits(seed)` point at the same sequences for every seed, although the
    seeds split the iid rows differently into seen and unseen."""
    ctx = Context.build(tiny(tmp_path), torch.device("cpu"))
    n_iid = len(ctx.test)
    source = {"iid": torch.cat([ctx.test.seqs, ctx.sets["unseen"].seqs])}
    source |= {k: v.seqs for k, v in ctx.sets.items() if k not in ("iid", "unseen")}
    for seed in (0, 1):
        splits, ids = ctx.splits(seed), ctx.split_ids(seed)
        assert list(ids) == list(splits)
        for key, rows in splits.items():
            assert ids[key].dtype == torch.int64 and len(ids[key]) == len(rows)
            assert torch.equal(source["iid" if key.startswith("iid") else key][ids[key]], rows.seqs), (seed, key)
        both = torch.cat([ids["iid_seen"], ids["iid_unseen"]])
        assert sorted(both.tolist()) == list(range(n_iid + len(ctx.sets["unseen"])))  # each iid row once
        assert (ids["iid_seen"] < n_iid).all()  # a reserved row is never seen
    assert not torch.equal(ctx.split_ids(0)["iid_seen"], ctx.split_ids(1)["iid_seen"])  # the seeds differ


def test_prediction_rows_reproduce_the_scores_and_share_ids_across_architectures(tmp_path):
    """`test_outputs`' per-prediction rows average to its tidy accuracy and distance exactly per
    (split, length, family), and two architectures get the same (split, length, sequence, position) keys."""
    ctx = Context.build(tiny(tmp_path), torch.device("cpu"))
    keys = {}
    for arch in ("lstm", "transformer"):
        torch.manual_seed(0)
        scores, rows = outputs(ctx, build_model(ctx.cfg.model_config(arch)).eval(), 0)
        cells = scores[scores.phase.notna() & (scores.family != "all") & scores.position.isna()]
        for metric, column in (("accuracy", "correct"), ("distance_error", "distance")):
            expect = cells[cells.metric == metric].set_index(["split", "length", "family"]).value.sort_index()
            got = rows.groupby(["split", "length", "family"])[column].mean().sort_index()
            assert list(got.index) == list(expect.index) and (got.to_numpy() == expect.to_numpy()).all(), metric
        assert set(rows.split) == {"iid_seen", "iid_unseen", "ood", "length"}
        keys[arch] = rows[["split", "length", "sequence", "position", "family"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(keys["lstm"], keys["transformer"])


def test_a_runs_prediction_file_has_the_documented_columns_and_dtypes(tmp_path):
    ctx = Context.build(tiny(tmp_path), torch.device("cpu"))
    torch.manual_seed(0)
    _, rows = outputs(ctx, build_model(ctx.cfg.model_config("lstm")).eval(), 1)
    record = RunRecord(study="smoke", stage="final", arch="lstm", seed=1, replicate=2)
    path = tmp_path / "one.parquet"
    predictions.write(predictions.tagged(rows, record, "lstm-seed1-r2"), path)
    back = pd.read_parquet(path)
    assert list(back.columns) == list(DTYPES)
    assert {c: str(t) for c, t in back.dtypes.items() if not is_text(back[c])} == \
        {c: t for c, t in DTYPES.items() if t != "str"}
    assert all(is_text(back[c]) for c, t in DTYPES.items() if t == "str")  # strings, never categoricals
    assert set(back.run) == {"lstm-seed1-r2"} and set(back.replicate) == {2} and set(back.seed) == {1}
    both = predictions.gather([path, path])  # held as categoricals, written back as strings
    assert len(both) == 2 * len(back) and isinstance(both.arch.dtype, pd.CategoricalDtype)
    predictions.write(both, tmp_path / "all.parquet", rows_per_group=len(back) // 3)
    again = pd.read_parquet(tmp_path / "all.parquet")
    pd.testing.assert_frame_equal(again, pd.concat([back, back], ignore_index=True))
    assert predictions.gather([]) is None


def test_a_runs_replicate_is_planned_and_its_init_seed_alone_changes_the_initialisation(tmp_path):
    """`plan` records the replicate (a "plan" field, so a trial's attribute too); `build` initialises
    from `init_seed` when given: None is the data seed's initialisation, as before replicates."""
    ctx = Context.build(tiny(tmp_path), torch.device("cpu"))
    tcfg, record = plan(ctx, "search", "lstm", None, {}, 0, 5, replicate=2)
    assert record.replicate == 2 and record.attrs("plan")["replicate"] == 2

    def weights(init_seed):
        return torch.cat([p.detach().flatten() for p in build(ctx, "lstm", tcfg, 0, record, init_seed).parameters()])

    other = derive_seed("search-init", 0, 1)
    assert torch.equal(weights(None), weights(None)) and torch.equal(weights(other), weights(other))
    assert not torch.equal(weights(None), weights(other))
    assert torch.equal(weights(None), weights(0))  # init_seed = the data seed: today's initialisation


def test_meta_yaml_lists_the_tables_written_and_a_stale_predictions_file_goes(tmp_path):
    """The "nothing changed" shortcut needs every table the last collection wrote (meta.yaml's
    `tables`), predictions.parquet included when there was one; a collection without predictions
    removes an old predictions.parquet, so no reader takes it for this study's."""
    from bench.experiment.collect import TABLES, unchanged, write_outputs

    cfg = tiny(tmp_path)
    tables = {name: pd.DataFrame({"x": [1]}) for name in TABLES}
    ctx = Context.build(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    _, rows = outputs(ctx, build_model(cfg.model_config("lstm")).eval(), 0)
    scored = predictions.tagged(rows, RunRecord(study=cfg.name, arch="lstm", seed=0), "lstm-seed0")
    write_outputs(cfg, {**tables, "predictions": scored}, {"inputs": "same"})
    stored = cfg.output_dir / "predictions.parquet"
    assert unchanged(cfg, "same") and not unchanged(cfg, "other") and len(pd.read_parquet(stored)) == len(rows)
    stored.unlink()
    assert not unchanged(cfg, "same")  # listed in meta.yaml, missing: collect again
    write_outputs(cfg, {**tables, "predictions": scored}, {"inputs": "same"})
    write_outputs(cfg, tables, {"inputs": "same"})
    assert not stored.exists() and unchanged(cfg, "same")


@pytest.mark.slow
def test_a_study_with_two_replicates_writes_predictions_that_match_its_results(tmp_path):
    """A tiny study (2 architectures x 2 seeds x 2 search replicates): predictions.parquet has the
    columns and dtypes of the design, one run per (arch, seed, replicate), its means equal
    results.parquet's accuracy per (arch, seed, replicate, split, length, family) exactly, every run
    scores the same test rows under the same ids, and every per-run table has a replicate column.
    Removing predictions.parquet makes the "nothing changed" shortcut collect again."""
    from bench.experiment.collect import inputs_digest, unchanged
    from bench.run import main

    out = tmp_path / "out"
    args = ["study=smoke", *TINY, f"out_dir={out}", "archs=[lstm,transformer]", "seeds=[0,1]",
            "search.replicates=2", "search.n_trials=2", "search.steps=20"]
    assert main(args) == 0
    pred = pd.read_parquet(out / "predictions.parquet")
    assert {c: "str" if is_text(pred[c]) else str(t) for c, t in pred.dtypes.items()} == DTYPES
    runs = pred.groupby(["arch", "seed", "replicate"]).run.unique()
    assert len(runs) == 8 and runs.map(len).eq(1).all() and set(pred.stage) == {"final"}
    assert runs["lstm", 1, 1][0] == "lstm-seed1-r1" and runs["transformer", 0, 0][0] == "transformer-seed0"
    results = pd.read_parquet(out / "results.parquet")
    cells = results[(results.metric == "accuracy") & results.phase.notna() & (results.family != "all")
                    & results.position.isna() & results.arch.isin(["lstm", "transformer"])]
    keys = ["arch", "seed", "replicate", "split", "length", "family"]
    expect = cells.set_index(keys).value.sort_index()
    got = pred.groupby(keys).correct.mean().sort_index()
    assert len(got) == len(expect) and (got.to_numpy() == expect.to_numpy()).all()
    pred = pred.assign(source=pred.split.map(SOURCE))
    assert pred.groupby(["source", "length", "sequence"]).family.nunique().eq(1).all()  # one id, one row
    rows = pred[pred.position == 0].groupby(["arch", "seed", "replicate", "source", "length"]).sequence \
        .apply(lambda s: tuple(sorted(s)))
    assert rows.groupby(["source", "length"]).nunique().eq(1).all()  # same rows for every run
    for table in ("runs", "results", "history", "decay", "trials"):
        frame = pd.read_parquet(out / f"{table}.parquet")
        assert set(frame.replicate) == {0, 1}, table
    cfg = compose_config(args)
    assert unchanged(cfg, inputs_digest(cfg))
    (out / "predictions.parquet").unlink()
    assert not unchanged(cfg, inputs_digest(cfg))
