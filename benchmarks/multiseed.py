"""`python benchmarks/multiseed.py [--archs a b] [--sizes 64x8 64x64] [--batch 32] [--seeds 3] [--steps 30]`:
S seeds of one configuration trained one after another by `bench.train.train` (as the study's
final stage does) against all at once by `bench.multiseed.train_seeds`.

Per architecture and size (d_model x sequence length): the time per training step of the S
sequential runs together and of `train_seeds`, the speed-up, and the largest weight difference the
two reach (same initial weights, batches and validations). The two alternate in rounds (fresh
models each round) after a warm-up round, and the median round counts, so drift on a shared machine
hits both alike. Batches are made before timing (`bench.perf.PremadeStream`): data generation is
excluded from both; each run validates once, after its last step, on 100 sequences. One torch thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

import pandas as pd
import torch

from bench.config import TrainConfig
from bench.data import Curriculum, TrainStream
from bench.models import ModelConfig, build_model, mixer_names
from bench.multiseed import train_seeds, why_not_vectorisable
from bench.perf import PremadeStream, _validator, parse_size
from bench.seeding import derive_seed
from bench.train import train


def make_models(arch: str, d_model: int, length: int, layers: int, seeds: int) -> list[torch.nn.Module]:
    """One model per seed, initialised as the study's final stage does."""
    models = []
    for seed in range(seeds):
        torch.manual_seed(derive_seed("init", seed))
        models.append(build_model(ModelConfig(arch=arch, d_model=d_model, num_layers=layers, d_state=16,
                                              max_len=length)))
    return models


def measure_cell(arch: str, d_model: int, length: int, layers: int, batch: int, seeds: int, steps: int,
                 rounds: int) -> dict:
    streams = [PremadeStream([TrainStream(Curriculum(phases=(1,)), length, batch, seed=s, steps_per_epoch=100)
                              .batch(k) for k in range(min(steps, 16))]) for s in range(seeds)]
    validate = _validator(length)
    cfg = TrainConfig(steps=steps, batch_size=batch, val_every=steps, early_stopping=False)
    warm = TrainConfig(steps=min(3, steps), batch_size=batch, val_every=steps, early_stopping=False)
    for m, s in zip(make_models(arch, d_model, length, layers, seeds), streams, strict=True):
        train(m, warm, s, validate)
    train_seeds(make_models(arch, d_model, length, layers, seeds), warm, streams, [validate] * seeds)
    seq, vec, diff = [], [], 0.0
    for _ in range(rounds):
        alone = make_models(arch, d_model, length, layers, seeds)
        t0 = time.perf_counter()
        for m, s in zip(alone, streams, strict=True):
            train(m, cfg, s, validate)
        seq.append((time.perf_counter() - t0) / steps)
        together = make_models(arch, d_model, length, layers, seeds)
        t0 = time.perf_counter()
        train_seeds(together, cfg, streams, [validate] * seeds)
        vec.append((time.perf_counter() - t0) / steps)
        diff = max(diff, max((a - b).abs().max().item() for m1, m2 in zip(alone, together, strict=True)
                             for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True)))
    s_ms, v_ms = statistics.median(seq) * 1e3, statistics.median(vec) * 1e3
    return {"arch": arch, "d_model": d_model, "L": length, f"{seeds} x train() ms/step": s_ms,
            "train_seeds ms/step": v_ms, "speed-up": s_ms / v_ms,
            "spread %": 100 * (max(seq) / min(seq) + max(vec) / min(vec) - 2) / 2, "max |Δw|": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/multiseed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=mixer_names())
    parser.add_argument("--sizes", nargs="+", default=["64x8", "64x64"], help="d_modelxL, e.g. 64x8")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, after a warm-up run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median counts")
    args = parser.parse_args(argv)
    unknown = [a for a in args.archs if a not in mixer_names()]
    try:
        sizes = [parse_size(s) for s in args.sizes]
        if unknown or min(args.seeds, args.steps, args.rounds) < 1:
            raise ValueError
    except ValueError:
        print(f"error: sizes must look like 64x8 (d_model x L >= 3), counts be positive and archs registered "
              f"({', '.join(mixer_names())})", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print(f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}), torch {torch.__version__}, 1 thread; batch {args.batch}, "
          f"{args.layers} layers, {args.seeds} seeds, {args.steps} steps, median of {args.rounds} rounds", flush=True)
    rows = []
    for d_model, length in sizes:
        for arch in args.archs:
            reason = why_not_vectorisable(make_models(arch, d_model, length, args.layers, 1)[0])
            if reason:
                print(f"{arch} {d_model}x{length}: not vectorised ({reason})", flush=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fallback's warning, said once above
                rows.append(measure_cell(arch, d_model, length, args.layers, args.batch, args.seeds, args.steps,
                                         args.rounds))
            print(pd.DataFrame(rows[-1:]).to_markdown(index=False, floatfmt=".3g").splitlines()[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
