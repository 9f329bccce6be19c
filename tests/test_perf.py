"""The performance benchmark compares like with like: the bare loop and the harness train to the
same weights on the same batches, and the report is written with every column."""

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
    assert main(["--archs", "lstm", "--sizes", "16x8", "--seconds", "0.1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    for column in ("steps/s", "tokens/s", "harness/bare", "ratio IQR", "validation share", "gen/consumption",
                   "decode speed-up", "mem estimate MiB"):
        assert column in text
    assert main(["--sizes", "16by8"]) == 2 and "error: sizes" in capsys.readouterr().err
