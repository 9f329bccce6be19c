"""The performance benchmark compares like with like: the bare loop and the harness train to the
same weights on the same batches, and the report is written with every column (Mamba's scan rows
included); bad input is one error line and writes nothing."""

import pytest
import torch

from bench.data import Curriculum, TrainStream
from bench.models import mixer_names
from bench.perf import PremadeStream, bare_loop, main, make_model
from bench.train import TrainConfig, train


@pytest.mark.parametrize("arch", mixer_names())
def test_bare_loop_and_harness_reach_identical_weights(arch):
    stream = TrainStream(Curriculum(phases=(1,)), 8, 8, seed=0, steps_per_epoch=5)
    premade = PremadeStream([stream.batch(s) for s in range(12)])
    cfg = TrainConfig(steps=12, batch_size=8, val_every=5, early_stopping=False, lr=1e-2)
    harness, bare = make_model(arch, 16, 8), make_model(arch, 16, 8)
    train(harness, cfg, premade, lambda m, i, e: {"val_loss": m(premade.batch(0)[:, :-1]).mean().item()})
    bare_loop(bare, cfg, premade)
    moved = False
    for (name, a), b in zip(harness.state_dict().items(), bare.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        moved |= not torch.equal(a, make_model(arch, 16, 8).state_dict()[name])
    assert moved  # both actually trained


def test_perf_report_has_every_ratio(tmp_path, capsys):
    assert main(["--archs", "lstm", "--sizes", "16x8", "--mamba-sizes", "--seconds", "0.1",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    for column in ("steps/s", "tokens/s", "harness/bare", "ratio IQR", "validation share", "gen/consumption",
                   "decode speed-up", "mem estimate MiB"):
        assert column in text
    assert main(["--sizes", "16by8"]) == 2 and "error: sizes" in capsys.readouterr().err


def test_mamba_rows_compare_both_scans_with_the_transformer_and_mambapy(tmp_path, capsys):
    assert main(["--archs", "lstm", "--sizes", "16x8", "--mamba-sizes", "16x8", "--seconds", "0.1",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "## Mamba's scans against the transformer and mambapy" in text
    for column in ("mamba steps/s", "transformer steps/s", "mamba/transformer", "mixer f+b ms", "× mambapy"):
        assert column in text
    assert "| chunked " in text and "| compiled " in text


@pytest.mark.parametrize(("args", "word"), [
    (["--seconds", "nan"], "--seconds"), (["--seconds", "-1"], "--seconds"), (["--seconds", "inf"], "--seconds"),
    (["--seconds"], "--seconds"), (["--bogus"], "unrecognized"), (["--archs", "gpt9"], "gpt9"),
    (["--sizes", "16by8"], "sizes"), (["--mamba-sizes", "2x2"], "sizes"), (["--out", "FILE"], "is a file"),
    (["--out", "FILE/sub"], "is a file"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(args, word, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("kept")
    assert main(["--archs", "lstm", "--sizes", "16x8", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and word in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"] and (tmp_path / "FILE").read_text() == "kept"
