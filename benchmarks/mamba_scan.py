"""CPU speed of Mamba's reference scan against the literal Python loop over time.

    python benchmarks/mamba_scan.py [--batch 1 8] [--lengths 64 256 1024] [--reps 3] [--cpu-slice-floats N]

Both compute the selective scan of one Mamba layer at d_model 64 (E = 128 inner channels, N = 16
states), from bench/models/ops/selective_scan.py: `selective_scan` (chunked, hand-written backward)
and `sequential_scan` (one Python step per position, autograd through the loop; the oracle of
tests/test_mamba.py). One torch thread; the best of `reps` runs each. Prints forward and
forward+backward times and the speed-ups. `--cpu-slice-floats` replaces the CPU cap on the chunks
scanned side by side (CPU_SLICE_FLOATS; a huge value removes it), to time the rule that sets it.
Results: reports/perf/README.md.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import bench.models.ops.selective_scan as ops


def best_time(fn, args: tuple[torch.Tensor, ...], backward: bool, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        inputs = [a.detach().clone().requires_grad_(backward) for a in args]
        start = time.perf_counter()
        y, last = fn(*inputs)
        if backward:
            (y.square().sum() + last.sum()).backward()
        best = min(best, time.perf_counter() - start)
    return best


def chunks(batch: int, length: int, E: int, N: int) -> int:
    """The number of chunks the chunked scan uses for this shape on CPU."""
    return ops.n_chunks(length, batch * E * N, cuda=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cpu-slice-floats", type=int, default=ops.CPU_SLICE_FLOATS)
    args = parser.parse_args()
    ops.CPU_SLICE_FLOATS = args.cpu_slice_floats  # read by n_chunks at every call
    torch.set_num_threads(1)
    E, N = 2 * args.d_model, args.d_state
    print(f"selective scan, CPU, 1 thread, d_model {args.d_model} (E={E}, N={N}), float32, best of {args.reps}, "
          f"CPU_SLICE_FLOATS {ops.CPU_SLICE_FLOATS}")
    print(f"{'batch':>5} {'L':>5} {'chunks':>6} | {'fwd loop':>9} {'fwd ours':>9} {'speed-up':>8} | "
          f"{'f+b loop':>9} {'f+b ours':>9} {'speed-up':>8} | max |diff|")
    for batch in args.batch:
        for length in args.lengths:
            g = torch.Generator().manual_seed(0)
            u, B, C = (torch.randn(batch, length, n, generator=g) for n in (E, N, N))
            delta = torch.rand(batch, length, E, generator=g) * 0.1 + 1e-3
            A = -torch.arange(1.0, N + 1).repeat(E, 1)
            inputs = (u, delta, A, B, C)
            with torch.no_grad():
                diff = (ops.selective_scan(*inputs)[0] - ops.sequential_scan(*inputs)[0]).abs().max().item()
            times = [best_time(fn, inputs, backward, args.reps) for backward in (False, True)
                     for fn in (ops.sequential_scan, ops.selective_scan)]
            print(f"{batch:>5} {length:>5} {chunks(batch, length, E, N):>6} | {times[0] * 1e3:>7.1f}ms "
                  f"{times[1] * 1e3:>7.1f}ms {times[0] / times[1]:>7.1f}x | {times[2] * 1e3:>7.1f}ms "
                  f"{times[3] * 1e3:>7.1f}ms {times[2] / times[3]:>7.1f}x | {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
