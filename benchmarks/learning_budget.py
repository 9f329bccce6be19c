"""Does an architecture learn a mechanism task with more steps? The check behind a mechanism
report's "not reproduced": budget or implementation.

    python benchmarks/learning_budget.py --arch mamba --families selective_copy_2 selective_copy_4 \
        selective_copy_8 --length 32 --d-model 64 --lrs 1e-3 3e-3 --steps 5000 [--every 1000] [--batch 64]

Trains one model per learning rate with the suite's own pieces (the study's backbone at 2 layers,
d_state 16, d_conv 4, expand 2, `bench.train`'s optimiser and schedule, cross-entropy on the scored
answers only, as the mechanism studies train) on the training stream of `--seed`, which also seeds
the initialisation (another draw of the study's setting, not one of its runs), and every `--every`
steps prints its accuracy on the scored answers of 512 fresh sequences from another seed (the
same for every learning rate). One torch thread. A curve that climbs past the study's budget says
the study stopped too early for that architecture; a flat one points at the model or the task.
Results: the closing note of the issue that added it, and the mechanism reports' README lines.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.data import Curriculum, TrainStream
from bench.models import ModelConfig, build_model
from bench.train import TrainConfig, distance_weighted_ce, make_optimizer

EVAL_SEED = 12345  # the fresh sequences scored (not a training stream of any study seed)


def accuracy(model: torch.nn.Module, seqs: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        hit = model(seqs[:, :-1]).argmax(-1) == seqs[:, 1:]
    return float((hit & mask).sum() / mask.sum())


def run(arch: str, families: list[str], length: int, d_model: int, lr: float, steps: int, every: int,
        batch: int, seed: int = 0) -> list[tuple[int, float, float]]:
    """[(step, accuracy on the scored answers, seconds so far)] every `every` steps."""
    curriculum = Curriculum(phases=(5,), families=tuple(families))
    train = TrainStream(curriculum, length, batch, seed=seed, steps_per_epoch=100)
    held = TrainStream(curriculum, length, 512, seed=EVAL_SEED, steps_per_epoch=100)
    test, test_mask = held.scored_batch(0)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, d_model=d_model, num_layers=2, d_state=16, d_conv=4, expand=2,
                                    max_len=length))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, alpha=0.0)
    opt, sched = make_optimizer(model, cfg)
    out, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        seqs, mask = train.scored_batch(step - 1)
        loss = distance_weighted_ce(model(seqs[:, :-1]), seqs[:, 1:], 0.0, mask=mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            model.eval()
            out.append((step, accuracy(model, test, test_mask), time.perf_counter() - start))
            model.train()
            print(f"{arch} lr {lr:g}: step {step}, accuracy {100 * out[-1][1]:.1f} %, {out[-1][2]:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mamba")
    p.add_argument("--families", nargs="+", default=["selective_copy_2", "selective_copy_4", "selective_copy_8"])
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="the initialisation and the training stream")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = {lr: run(a.arch, a.families, a.length, a.d_model, lr, a.steps, a.every, a.batch, a.seed) for lr in a.lrs}
    print(f"\n{a.arch}, d_model {a.d_model}, {'/'.join(a.families)} at length {a.length}, batch {a.batch}, "
          f"seed {a.seed}: "
          f"accuracy on the scored answers (%)")
    print("| step | " + " | ".join(f"lr {lr:g}" for lr in a.lrs) + " |")
    print("|---|" + "---|" * len(a.lrs))
    for i, (step, _, _) in enumerate(rows[a.lrs[0]]):
        print(f"| {step} | " + " | ".join(f"{100 * rows[lr][i][1]:.1f}" for lr in a.lrs) + " |")


if __name__ == "__main__":
    main()
