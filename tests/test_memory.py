"""The training-memory estimate: close to what autograd really keeps, and free to compute."""

import pytest
import torch

from bench.memory import estimate, measured_bytes, model_on_meta
from bench.models import build_model, mixer_names
from bench.models.backbone import ModelConfig


@pytest.mark.parametrize("arch", mixer_names())
def test_estimate_is_within_2x_of_what_a_training_forward_keeps(arch):
    for d, layers, length in [(16, 1, 8), (64, 2, 64)]:
        cfg = ModelConfig(arch=arch, d_model=d, num_layers=layers, d_state=min(16, d), max_len=length)
        torch.manual_seed(0)
        model = build_model(cfg)
        batch = torch.randint(0, 256, (4, length))
        est = estimate(model_on_meta(cfg), batch_size=4, seq_len=length - 1)
        measured = measured_bytes(model, batch)
        assert est.params == sum(p.numel() for p in model.parameters())
        assert measured / 2 <= est.total_bytes <= 2 * measured, (d, length, str(est), measured)


@pytest.mark.parametrize("arch", mixer_names())
def test_sizing_a_huge_configuration_allocates_nothing(arch):
    cfg = ModelConfig(arch=arch, d_model=4096, num_layers=16, d_state=16, max_len=256)
    model = model_on_meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    est = estimate(model, batch_size=64, seq_len=255)
    assert est.total_bytes > 8 * 2**30 and est.param_bytes == 4 * 4 * est.params
