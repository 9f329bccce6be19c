"""The compiled CPU scan (bench/models/ops/selective_scan_cpu.py) against the literal recurrence: outputs,
the final state step mode takes over, and every gradient, in float64 and float32, at lengths from 1 to
1024; the Mamba mixer with impl='fused_cpu' against impl='reference'; and what happens when the
compiled scan cannot run (auto falls back with one warning line, fused_cpu is a one-line error)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import bench.models.mamba as mamba
from bench.models.mamba import Mamba
from bench.models.ops import selective_scan_cpu
from bench.models.ops.selective_scan import sequential_scan
from bench.models.ops.selective_scan_cpu import fused_cpu_scan

F64, F32 = torch.float64, torch.float32
SHORT = [1, 2, 3, 31, 64]
LONG = [257, 1024]


def scan_inputs(b: int, L: int, E: int, N: int, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, ...]:
    """(u, Δ, A, B, C) with Δ in (0, 1] and A in [-3, 0): decays from e^-3 to 1 per step."""
    g = torch.Generator().manual_seed(seed)
    u, B, C = (torch.randn(*s, generator=g, dtype=dtype) for s in ((b, L, E), (b, L, N), (b, L, N)))
    delta = torch.rand(b, L, E, generator=g, dtype=dtype) + 1e-3
    A = -torch.rand(E, N, generator=g, dtype=dtype) * 3
    return u, delta, A, B, C


def assert_scans_agree(args: tuple[Tensor, ...], rel: float) -> None:
    """fused_cpu_scan = sequential_scan: y, the last state, and the gradients of all five inputs for
    random upstream gradients on both outputs, each within rel x its largest reference value (>= 1)."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    ref = [a.detach().clone().requires_grad_() for a in args]
    y, last = fused_cpu_scan(*leaves)
    y_ref, last_ref = sequential_scan(*ref)
    g = torch.Generator().manual_seed(5)
    gy, gl = (torch.randn(*t.shape, generator=g, dtype=t.dtype) for t in (y, last))
    grads = torch.autograd.grad((y, last), leaves, (gy, gl))
    grads_ref = torch.autograd.grad((y_ref, last_ref), ref, (gy, gl))
    pairs = [("y", y, y_ref), ("last state", last, last_ref)]
    pairs += [(f"grad {n}", a, b) for n, a, b in zip(["u", "delta", "A", "B", "C"], grads, grads_ref, strict=True)]
    for name, a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=rel * max(1.0, b.abs().max().item()), msg=name)


@pytest.mark.parametrize("L", SHORT)
@pytest.mark.parametrize(("b", "E", "N"), [(2, 3, 4), (1, 5, 16), (3, 2, 1)])
def test_matches_the_recurrence_in_float64(L, b, E, N):
    assert_scans_agree(scan_inputs(b, L, E, N, F64), rel=1e-10)


@pytest.mark.parametrize("L", SHORT)
@pytest.mark.parametrize(("b", "E", "N"), [(2, 3, 4), (1, 5, 16)])
def test_matches_the_recurrence_in_float32(L, b, E, N):
    assert_scans_agree(scan_inputs(b, L, E, N, F32), rel=1e-5)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("L", LONG)
def test_matches_the_recurrence_on_long_sequences(L, dtype):
    assert_scans_agree(scan_inputs(2, L, 2, 3, dtype), rel=1e-10 if dtype == F64 else 1e-5)


def test_gradcheck():
    args = [a.requires_grad_() for a in scan_inputs(2, 9, 2, 3, F64)]
    assert torch.autograd.gradcheck(fused_cpu_scan, args)


def test_several_threads_give_the_same_result(monkeypatch):
    """With torch on two threads the scan runs the parallel kernels (channel groups when batch < threads)."""
    args = scan_inputs(1, 40, 5, 4, F64)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert_scans_agree(args, rel=1e-10)


def test_refuses_mixed_dtypes():
    u, delta, A, B, C = scan_inputs(1, 4, 2, 3, F64)
    with pytest.raises(TypeError, match="one dtype"):
        fused_cpu_scan(u.float(), delta, A, B, C)


# ---------------------------------------------------------------- the mixer


def pair(**kw) -> tuple[Mamba, Mamba]:
    """The same float64 mixer twice, one per scan."""
    torch.manual_seed(0)
    fused = Mamba(16, impl="fused_cpu", **kw).double()
    reference = Mamba(16, impl="reference", **kw).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("L", [1, 5, 70])
def test_mixer_with_the_compiled_scan_equals_the_reference(L):
    fused, reference = pair()
    assert fused.impl_used == "fused_cpu" and reference.impl_used == "reference"
    x = torch.randn(2, L, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    outs = []
    for m in (fused, reference):
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        outs.append((y, {"input": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}))
    (y, grads), (y_ref, grads_ref) = outs
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_ref[name], rtol=0, atol=1e-10 * max(1.0, g.abs().max().item()), msg=name)


def test_state_after_a_prefill_is_the_reference_state_and_steps_on():
    fused, reference = pair(d_state=5)
    x = torch.randn(2, 40, 16, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = reference(x)
    with torch.no_grad():
        _, state = fused.forward_with_state(x[:, :23])
        _, state_ref = reference.forward_with_state(x[:, :23])
        torch.testing.assert_close(state.ssm, state_ref.ssm, rtol=0, atol=1e-12)
        assert torch.equal(state.conv, state_ref.conv)
        for t in range(23, 40):
            y_t, state = fused.step(x[:, t], state)
            torch.testing.assert_close(y_t, y[:, t], rtol=0, atol=1e-10)


# ---------------------------------------------------------------- when the compiled scan cannot run


@pytest.fixture
def no_compiled_scan(monkeypatch):
    monkeypatch.setattr(selective_scan_cpu, "unavailable", lambda: "numba cannot compile here (simulated)")
    monkeypatch.setattr(mamba, "_warned", set())


@pytest.mark.usefixtures("no_compiled_scan")
def test_auto_falls_back_to_the_chunked_scan_with_one_warning_line(capsys):
    m = Mamba(16)
    x = torch.randn(2, 6, 16)
    y = m(x)
    m(x)
    assert m.impl_used == "reference"
    err = capsys.readouterr().err
    assert err == "warning: Mamba runs the chunked PyTorch scan on CPU: numba cannot compile here (simulated)\n"
    m.impl = "reference"
    torch.testing.assert_close(m(x), y, rtol=0, atol=0)


@pytest.mark.usefixtures("no_compiled_scan")
def test_fused_cpu_without_the_compiled_scan_is_a_one_line_error(capsys, tmp_path):
    from bench.run import main  # the CLI, imported here so the mixer's own tests never depend on it

    with pytest.raises(ValueError, match="impl='fused_cpu' needs the compiled CPU scan: numba cannot") as e:
        Mamba(16, impl="fused_cpu")
    assert "\n" not in str(e.value)
    code = main(["study=smoke", "archs=[mamba]", "model.mixer.mamba.impl=fused_cpu", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: model (mamba): impl='fused_cpu' needs") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_fused_cpu_refuses_other_devices():
    m = Mamba(16, impl="fused_cpu")
    with pytest.raises(RuntimeError, match="impl='fused_cpu' needs CPU tensors, got meta"):
        m(torch.empty(1, 4, 16, device="meta"))


def test_the_probe_answers_yes_under_the_meta_device_and_many_threads():
    """Config validation sizes models on the meta device (a 2-thread parent process): the probe must
    still test real CPU tensors on the serial kernels, not report the meta tensors as a failure."""
    selective_scan_cpu.unavailable.cache_clear()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.device("meta"):
            assert selective_scan_cpu.unavailable() == ""
    finally:
        torch.set_num_threads(threads)
        selective_scan_cpu.unavailable.cache_clear()


def test_fused_cpu_is_accepted_by_the_cli(capsys):
    from bench.run import main

    assert main(["study=smoke", "archs=[mamba]", "model.mixer.mamba.impl=fused_cpu", "--cfg"]) == 0
    assert "impl: fused_cpu" in capsys.readouterr().out
