"""GPU checks of the Mamba mixer against mamba_ssm (issue 5, item 5); needs CUDA and mamba_ssm.

    python benchmarks/mamba_gpu.py [--d-model 64] [--batch 8] [--lengths 64 128 ... 4096] [--repeats 5]

Build the kernels first (about the sources: ../shared/gpu/README.md), from the checkout:

    mkdir -p .gpu && cp ../shared/gpu/*.tar.gz .gpu/
    export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
    python -m pip install --no-build-isolation --no-deps --no-index --target /tmp/site \\
        .gpu/causal_conv1d-1.7.0.tar.gz .gpu/mamba_ssm-2.3.2.post1.tar.gz && export PYTHONPATH=/tmp/site

Three tables:
1. agreement: one state_dict loaded into our module (impl=reference and impl=fused) and into
   mamba_ssm.Mamba (its fast path); max abs differences of outputs and of all gradients, float32
   with TF32 off.
2. determinism: the same forward+backward repeated; whether outputs and gradients repeat bitwise,
   per implementation (mamba_ssm's fused backward accumulates with atomic adds).
3. speed: forward+backward time per implementation at each length, and fused vs reference.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch

from bench.models.mamba import Mamba
from bench.models.ops.selective_scan import fused_kernels, fused_unavailable


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward+backward; the output and every gradient (input included), by name."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(g)
    return {"output": y.detach(), "grad input": x.grad, **{f"grad {n}": p.grad for n, p in module.named_parameters()}}


def cuda_time(fn, repeats: int) -> float:
    """Median wall time of fn() in seconds, synchronised, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        fail("CUDA is not available (torch " + torch.__version__ + "); run this on a GPU machine")
    device = torch.device("cuda", torch.cuda.current_device())
    reason = fused_unavailable(device)
    if reason:
        fail(f"mamba_ssm's kernels are not usable: {reason}")
    import mamba_ssm

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    d, N, B = args.d_model, args.d_state, args.batch
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, mamba_ssm {mamba_ssm.__version__}, "
          f"causal_conv1d {'yes' if fused_kernels()[0].causal_conv1d_fn else 'no'}; d_model {d}, d_state {N}, "
          f"batch {B}, float32")

    torch.manual_seed(0)
    ours = Mamba(d, d_state=N, impl="reference").to(device)
    fused = Mamba(d, d_state=N, impl="fused").to(device)
    theirs = mamba_ssm.Mamba(d, d_state=N).to(device)
    fused.load_state_dict(ours.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    impls = {"reference": ours, "fused": fused, "mamba_ssm.Mamba": theirs}

    L = 256
    x, g = torch.randn(B, L, d, device=device), torch.randn(B, L, d, device=device)
    results = {name: run(m, x, g) for name, m in impls.items()}
    print(f"\n1. agreement at L={L}: max |difference| (and max |value| of the reference)")
    print(f"{'tensor':<24} {'|reference|':>11} {'fused-ref':>10} {'mamba_ssm-ref':>13} {'fused-mamba_ssm':>15}")
    ref, fus, their = results["reference"], results["fused"], results["mamba_ssm.Mamba"]
    for key in ref:
        diffs = [(a[key] - b[key]).abs().max().item() for a, b in ((fus, ref), (their, ref), (fus, their))]
        print(f"{key:<24} {ref[key].abs().max().item():>11.3e} {diffs[0]:>10.2e} {diffs[1]:>13.2e} {diffs[2]:>15.2e}")

    print(f"\n2. determinism: {args.repeats} repeats of forward+backward at L={L}")
    for name, module in impls.items():
        first = run(module, x, g)
        worst = max(max((run(module, x, g)[k] - first[k]).abs().max().item() for k in first)
                    for _ in range(args.repeats - 1))
        print(f"{name:<16} {'bitwise identical' if worst == 0 else f'differs by up to {worst:.2e}'}")

    print("\n3. forward+backward time (median), fused vs reference")
    print(f"{'L':>5} {'reference':>11} {'fused':>9} {'mamba_ssm':>10} {'speed-up':>9}")
    for L in args.lengths:
        x, g = torch.randn(B, L, d, device=device), torch.randn(B, L, d, device=device)
        t = {name: cuda_time(functools.partial(run, m, x, g), args.repeats) for name, m in impls.items()}
        print(f"{L:>5} {t['reference'] * 1e3:>9.2f}ms {t['fused'] * 1e3:>7.2f}ms {t['mamba_ssm.Mamba'] * 1e3:>8.2f}ms "
              f"{t['reference'] / t['fused']:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
