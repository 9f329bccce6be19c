"""Worker scaling (issue 19, item 4): one phase study run with workers=1 and with workers=2, side by side.

    python benchmarks/workers.py                      # phase2 at a tenth of its budget: ~3-4 min per run
    python benchmarks/workers.py --full               # the study as configured (phase2: ~40 min at workers=1)
    python benchmarks/workers.py --workers 1 2 -- train.steps=300 archs=[lstm,mamba]   # more overrides

Each run is `python -m bench.run study=<study> workers=<n> report=false` in a fresh temporary out_dir,
with this environment (set OMP_NUM_THREADS=1; W&B as configured, offline by default, as a user's
run). Printed per run: the command's wall time, the engine's span (first trial started to last trial
finished, from the study's storage), the trials finished in it, trials per hour over that span and
over the wall time, and each ratio to the first run. The target: workers=2 completes >= 1.7x the
trials per hour of workers=1 on a 2-core CPU. Run it on an otherwise idle machine: any other load
on the cores makes the ratio meaningless.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
# a tenth of phase2's budget, its shape kept: 6 search trials per architecture, a final run 3.3x a
# search trial, about 10 validations per final run; two seeds instead of three
SMALL = ["search.steps=60", "train.steps=200", "train.val_every=20", "seeds=[0,1]"]


def engine_span(storage_url: str) -> tuple[float, int]:
    """(seconds from the first trial's start to the last trial's end, finished trials) in the storage."""
    starts, ends, finished = [], [], 0
    for summary in optuna.get_all_study_summaries(storage_url, include_best_trial=False):
        for t in optuna.load_study(study_name=summary.study_name, storage=storage_url).get_trials(deepcopy=False):
            if t.datetime_start and t.datetime_complete and t.state.is_finished():
                starts.append(t.datetime_start)
                ends.append(t.datetime_complete)
                finished += 1
    return ((max(ends) - min(starts)).total_seconds() if ends else 0.0), finished


def run_once(study: str, workers: int, overrides: list[str], keep: Path | None) -> dict[str, float]:
    """One `bench.run` of the study with `workers` workers into a fresh out_dir; its timings."""
    with tempfile.TemporaryDirectory(prefix=f"workers{workers}-", dir=keep) as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "bench.run", f"study={study}", f"workers={workers}", "report=false",
               "progress=false", *overrides, f"out_dir={out}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"error: workers={workers} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
        span, trials = engine_span(f"sqlite:///{out / 'optuna.db'}")
    return {"workers": workers, "wall_s": wall, "span_s": span, "trials": trials,
            "per_hour_span": trials / span * 3600, "per_hour_wall": trials / wall * 3600}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="phase2")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--full", action="store_true", help="the study's own budget, no SMALL overrides")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary out_dirs go")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for every run (after --)")
    args = parser.parse_args()
    overrides = ([] if args.full else SMALL) + args.overrides
    print(f"study={args.study} {' '.join(overrides)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} cpus", flush=True)
    rows = []
    for n in args.workers:
        rows.append(run_once(args.study, n, overrides, args.tmp))
        r, base = rows[-1], rows[0]
        print(f"workers={n}: wall {r['wall_s']:.0f} s, engine {r['span_s']:.0f} s, {r['trials']} trials, "
              f"{r['per_hour_span']:.0f} trials/h (engine; x{r['per_hour_span'] / base['per_hour_span']:.2f}), "
              f"{r['per_hour_wall']:.0f} trials/h (wall; x{r['per_hour_wall'] / base['per_hour_wall']:.2f})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
