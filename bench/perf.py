"""`python -m bench.perf [--archs a b] [--sizes 64x8 256x64] [--seconds S] [--out runs/perf]`:
how fast the suite trains, measured against what the hardware gives a minimal loop.

Per architecture and size (d_model x sequence length), side by side in one process:
* train steps/s and tokens/s of the harness (`bench.train.train`, as the study engine calls it);
* harness / bare-loop step time, where the bare loop is a minimal hand-written PyTorch loop that
  trains the same model from the same initial weights on the same pre-made batches (tests check
  both reach identical weights, so the ratio compares like with like);
* data generation rate (`TrainStream`, sequences/s) over the rate training consumes sequences;
* cached decoding (prefill + step) speed-up over recomputing the prefix at every token;
* memory: the estimate the study engine prunes with, against the measured activations + state.
Then Mamba per scan (the chunked PyTorch scan, the compiled CPU scan), at --mamba-sizes: its training
step against the transformer's, and its mixer's forward + backward against mambapy's MambaBlock
(`pip install -e '.[perf]'`; the row says so when mambapy is absent), interleaved in one process.
Bare loop and harness alternate in short rounds and the median round counts, so drift on a noisy
machine hits both alike; absolute times are indicative only, the ratios are the product.
Writes `<out>/README.md` (markdown table, machine, command) and prints the same table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from bench.cli import ArgumentParser, entry_point
from bench.data import Curriculum, TrainStream
from bench.experiment.config import ConfigError
from bench.memory import estimate, measured_bytes
from bench.models import ModelConfig, build_mixer, build_model, mixer_names
from bench.train import TrainConfig, distance_weighted_ce, make_optimizer, train
from bench.util import atomic_write

try:  # a benchmark-only extra (pyproject's `perf`): the Mamba rows say so when it is missing
    from mambapy.mamba import MambaBlock, MambaConfig
except ImportError:
    MambaBlock = MambaConfig = None

DEFAULT_SIZES = ("64x8", "64x64", "64x256", "256x8", "256x64")
BATCH = 64
VAL_EVERY = 100  # the studies' validation cadence; the harness validates at it, as in a study
VAL_SIZE = 100
ROUNDS = 9  # paired harness / bare-loop rounds per cell, order alternating; the median pair ratio counts
MAMBA_SIZES = ("64x64", "64x256")  # issue 19's targets: Mamba >= 0.5 x the transformer, >= 5 x mambapy
MAMBA_SCANS = {"reference": "chunked", "fused_cpu": "compiled"}  # Mamba's impl -> the scan it runs on CPU


@dataclass
class PremadeStream:
    """Batches made before timing starts: both loops read the same tensors, generation excluded."""

    batches: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.batches[0].shape[1]

    def batch(self, step: int) -> torch.Tensor:
        return self.batches[step % len(self.batches)]

    def scored_batch(self, step: int) -> tuple[torch.Tensor, None]:
        """The training loop's read: every position scored (the benchmark's phases score all)."""
        return self.batch(step), None


def make_model(arch: str, d_model: int, length: int, seed: int = 0, impl: str | None = None) -> torch.nn.Module:
    """The benchmarked model; `impl` picks Mamba's implementation (its default, auto, otherwise)."""
    torch.manual_seed(seed)
    mixer = {"mamba": {"impl": impl}} if impl else {}
    return build_model(ModelConfig(arch=arch, d_model=d_model, num_layers=2, d_state=16, max_len=length, mixer=mixer))


def bare_loop(model: torch.nn.Module, cfg: TrainConfig, stream: PremadeStream, start: int = 0,
              opt_sched: tuple | None = None) -> tuple:
    """The minimal loop: forward, the design's loss, backward, clip, AdamW, schedule. Nothing else."""
    opt, sched = opt_sched or make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(start, cfg.steps):
        batch = stream.batch(step)
        loss = distance_weighted_ce(model(batch[:, :-1]), batch[:, 1:], cfg.alpha, cfg.distance_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
    return opt, sched


def _validator(length: int) -> Callable[[torch.nn.Module, int, float], dict[str, float]]:
    seqs = TrainStream(Curriculum(phases=(1,)), length, VAL_SIZE, seed=99, steps_per_epoch=1).batch(0)

    def validate(model: torch.nn.Module, index: int, epoch: float) -> dict[str, float]:
        logits = model(seqs[:, :-1])
        return {"val_loss": distance_weighted_ce(logits, seqs[:, 1:]).item()}

    return validate


@dataclass
class StepTimes:
    harness: float  # median seconds per harness step
    bare: float  # median seconds per bare-loop step
    ratio: float  # median over rounds of harness / bare, each pair measured back to back
    ratio_q25: float
    ratio_q75: float
    validation: float  # the design's validation, seconds per trained step (one per VAL_EVERY steps)


def step_times(arch: str, d_model: int, length: int, seconds: float) -> StepTimes:
    """Harness and bare-loop step times in ROUNDS back-to-back pairs, alternating which goes first,
    so that drift on a noisy machine cancels in each pair's ratio; plus the validation's share."""
    stream = TrainStream(Curriculum(phases=(1,)), length, BATCH, seed=0, steps_per_epoch=VAL_EVERY)
    probe = make_model(arch, d_model, length)
    cfg = TrainConfig(steps=2, batch_size=BATCH, val_every=VAL_EVERY, early_stopping=False)
    t0 = time.perf_counter()
    bare_loop(probe, cfg, PremadeStream([stream.batch(0), stream.batch(1)]))
    per_step = (time.perf_counter() - t0) / 2
    steps = max(5, int(seconds / (2 * ROUNDS) / per_step))  # ROUNDS of harness + bare loop within `seconds`
    if steps >= VAL_EVERY:
        steps -= steps % VAL_EVERY  # whole validation periods, as in a study
    premade = PremadeStream([stream.batch(s) for s in range(min(steps, 64))])
    cfg = TrainConfig(steps=steps, batch_size=BATCH, val_every=min(VAL_EVERY, steps), early_stopping=False)
    validate = _validator(length)
    # A slow size trains fewer steps than a study's validation period, yet the harness validates
    # after its last step: that one validation is timed on its own and charged at the study's rate
    # (one per VAL_EVERY steps) instead, so short measurements do not overstate the harness.
    n_val = -(-steps // cfg.val_every)
    val_excess = n_val - steps / VAL_EVERY
    harness, bare, val = [], [], []

    def run_harness() -> None:
        model = make_model(arch, d_model, length)
        t0 = time.perf_counter()
        train(model, cfg, premade, validate)
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()
        with torch.no_grad():
            validate(model, 0, 0.0)
        val.append(time.perf_counter() - t1)
        harness.append((elapsed - val_excess * val[-1]) / steps)

    def run_bare() -> None:
        model = make_model(arch, d_model, length)
        t0 = time.perf_counter()
        bare_loop(model, cfg, premade)
        bare.append((time.perf_counter() - t0) / steps)

    for r in range(ROUNDS):
        for run in (run_harness, run_bare) if r % 2 == 0 else (run_bare, run_harness):
            run()
    ratios = [h / b for h, b in zip(harness, bare, strict=True)]
    q25, _, q75 = statistics.quantiles(ratios, n=4)
    return StepTimes(statistics.median(harness), statistics.median(bare), statistics.median(ratios), q25, q75,
                     statistics.median(val) / VAL_EVERY)


def generation_rate(length: int, seconds: float = 1.0) -> float:
    """Training sequences generated per second by a fresh TrainStream (phases 1-3 mixed)."""
    stream = TrainStream(Curriculum(phases=(1, 2, 3)), length, BATCH, seed=1, steps_per_epoch=VAL_EVERY)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        stream.batch(n)
        n += 1
    return n * BATCH / (time.perf_counter() - t0)


@torch.no_grad()
def decode_speedup(arch: str, d_model: int, length: int) -> float:
    """Greedy decoding of the second half of 8 sequences: recompute-the-prefix time / cached time."""
    model = make_model(arch, d_model, length).eval()
    prefix = torch.randint(0, 256, (8, max(1, length // 2)))
    n_new = length - prefix.shape[1]
    times = {}
    for cached in (True, False):
        t0 = time.perf_counter()
        model.generate(prefix, n_new, cached=cached)
        times[cached] = time.perf_counter() - t0
    return times[False] / times[True]


def memory(arch: str, d_model: int, length: int) -> tuple[float, float]:
    """(estimate, measured) MiB of one training step at batch BATCH."""
    model = make_model(arch, d_model, length)
    batch = torch.randint(0, 256, (BATCH, length))
    est = estimate(model, BATCH, length - 1).total_bytes
    return est / 2**20, measured_bytes(model, batch) / 2**20


def measure(archs: list[str], sizes: list[tuple[int, int]], seconds: float) -> pd.DataFrame:
    rows = []
    gen = {length: generation_rate(length) for length in sorted({s[1] for s in sizes})}
    for d_model, length in sizes:
        for arch in archs:
            t = step_times(arch, d_model, length, seconds)
            est, meas = memory(arch, d_model, length)
            consumption = BATCH / t.harness
            rows.append({
                "arch": arch, "d_model": d_model, "L": length, "steps/s": 1 / t.harness,
                "tokens/s": BATCH * (length - 1) / t.harness, "harness/bare": t.ratio,
                "ratio IQR": f"{t.ratio_q25:.2f}–{t.ratio_q75:.2f}", "validation share": t.validation / t.bare,
                "gen/consumption": gen[length] / consumption, "decode speed-up": decode_speedup(arch, d_model, length),
                "mem estimate MiB": est, "mem measured MiB": meas,
            })
            print(_fmt(pd.DataFrame(rows[-1:])).splitlines()[-1], flush=True)
    return pd.DataFrame(rows)


def interleaved(calls: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Median seconds per call of each function, over ROUNDS rounds that run them in turn (the order
    rotating), so that a noisy machine slows them all alike; about `seconds` in all."""
    warm = {}
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    reps = max(1, int(seconds / ROUNDS / max(sum(warm.values()), 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(ROUNDS):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(reps):
                calls[name]()
            times[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step(model: torch.nn.Module, length: int) -> Callable[[], None]:
    """One step of the bare loop (forward, the design's loss, backward, clip, AdamW) on a fixed batch."""
    cfg = TrainConfig(batch_size=BATCH, early_stopping=False)
    opt, _ = make_optimizer(model, cfg)
    batch = TrainStream(Curriculum(phases=(1,)), length, BATCH, seed=0, steps_per_epoch=VAL_EVERY).batch(0)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        loss = distance_weighted_ce(model(batch[:, :-1]), batch[:, 1:], cfg.alpha, cfg.distance_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()

    return step


def mixer_pass(mixer: torch.nn.Module, d_model: int, length: int) -> Callable[[], None]:
    """Forward + backward of one mixer on a (BATCH, length, d_model) input."""
    x = torch.randn(BATCH, length, d_model, generator=torch.Generator().manual_seed(0)).requires_grad_()
    return lambda: mixer(x).square().mean().backward()


def mamba_impls() -> dict[str, str]:
    """MAMBA_SCANS less those that cannot run here (printed with the reason the mixer gives)."""
    scans = {}
    for impl, scan in MAMBA_SCANS.items():
        try:
            build_mixer("mamba", 16, impl=impl)
            scans[impl] = scan
        except ValueError as e:
            print(f"Mamba rows without the {scan} scan: {e}", flush=True)
    return scans


def mamba_table(sizes: list[tuple[int, int]], seconds: float) -> pd.DataFrame:
    """Per size and scan: Mamba's training step against the transformer's, and its mixer against
    mambapy's MambaBlock (same d_model, d_state 16, expand 2, d_conv 4), all interleaved per size."""
    scans = mamba_impls() if sizes else {}
    if sizes and MambaBlock is None:
        print("Mamba rows without mambapy: it is not installed (pip install -e '.[perf]')", flush=True)
    rows = []
    for d_model, length in sizes:
        calls = {"transformer": train_step(make_model("transformer", d_model, length), length)}
        for impl in scans:
            calls[f"step {impl}"] = train_step(make_model("mamba", d_model, length, impl=impl), length)
            torch.manual_seed(0)
            calls[f"mixer {impl}"] = mixer_pass(build_mixer("mamba", d_model, d_state=16, impl=impl), d_model, length)
        if MambaBlock is not None:
            torch.manual_seed(0)
            block = MambaBlock(MambaConfig(d_model=d_model, n_layers=1, d_state=16, expand_factor=2, d_conv=4))
            calls["mambapy"] = mixer_pass(block, d_model, length)
        t = interleaved(calls, seconds)
        for impl, scan in scans.items():
            rows.append({"d_model": d_model, "L": length, "scan": scan, "mamba steps/s": 1 / t[f"step {impl}"],
                         "transformer steps/s": 1 / t["transformer"],
                         "mamba/transformer": t["transformer"] / t[f"step {impl}"],
                         "mixer f+b ms": 1e3 * t[f"mixer {impl}"], "mambapy f+b ms": 1e3 * t.get("mambapy", math.nan),
                         "× mambapy": t.get("mambapy", math.nan) / t[f"mixer {impl}"]})
            print(_fmt(pd.DataFrame(rows[-1:])).splitlines()[-1], flush=True)
    return pd.DataFrame(rows)


def mamba_section(table: pd.DataFrame) -> str:
    """The report's part on Mamba's scans, with each ratio against its target."""
    if table.empty:
        return ""
    return f"""
## Mamba's scans against the transformer and mambapy

Targets (issue 19): Mamba's training step ≥ 0.5 × the transformer's steps/s, and its mixer's forward +
backward ≥ 5 × faster than mambapy's MambaBlock (pure PyTorch, its parallel scan), at batch {BATCH}.
Here, with the compiled scan: mamba/transformer {_lowest(table, "mamba/transformer")}, × mambapy
{_lowest(table, "× mambapy")} (lowest over sizes). Every cell of a size was measured interleaved in
one process on one thread ({ROUNDS} rounds, medians); `chunked` is the PyTorch scan (impl=reference),
`compiled` the fused CPU scan (impl=fused_cpu, what impl=auto runs on CPU).

{_fmt(table)}
"""


def _lowest(table: pd.DataFrame, column: str) -> str:
    values = table.loc[table["scan"] == MAMBA_SCANS["fused_cpu"], column].dropna()
    return f"{values.min():.2f}" if len(values) else "not measured"


def _fmt(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, floatfmt=".3g")


def write_report(table: pd.DataFrame, out: Path, command: str, mamba: pd.DataFrame | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    cpu = platform.processor() or platform.machine()
    worst = table["harness/bare"].max()
    over = table[table["harness/bare"] > 1.05]
    above = (f"{len(over)} of {len(table)} cells above 1.05" if len(over) else f"every one of {len(table)} cells "
             f"within 1.05")
    text = f"""# Performance: harness against a bare loop

Generated by `{command}` on {dt.datetime.now(dt.UTC).date()} ({platform.node()}, {cpu}, {os.cpu_count()} cpus,
torch {torch.__version__}, {torch.get_num_threads()} thread, device cpu). Batch {BATCH}, 2 layers, d_state 16;
the harness validates {VAL_SIZE} sequences every {VAL_EVERY} steps as the studies do.

Targets: harness/bare ≤ 1.05 (median here {table["harness/bare"].median():.3f}, worst {worst:.3f}; {above});
data generation ≥ 20 × consumption (lowest here: {table["gen/consumption"].min():.3g} ×). Absolute rates are
indicative; ratios were measured side by side.

{_fmt(table)}

Columns: `harness/bare` is the median, over {ROUNDS} back-to-back pairs (order alternating), of the step
time of `bench.train.train` over that of a minimal hand-written loop on the same pre-made batches and
initial weights, and `ratio IQR` the interquartile range of those pair ratios: the measurement's
noise on this machine. `validation share` is the design's validation (100 sequences every 100 steps,
which the harness must do and the bare loop skips) per step, over the bare step time: the part of
`harness/bare − 1` that is the design's evaluation rather than overhead. `gen/consumption` is how many
sequences per second `TrainStream` generates over how many the harness consumes; `decode speed-up`
is greedy decoding of the second half of 8 sequences, recompute-the-prefix time over cached
(prefill + step) time; memory is the study engine's estimate against autograd's saved activations
plus 4 × parameters, for one step at batch {BATCH}.

Figures behind the mixers' design choices (Mamba's CPU scan, NTK-Attention's batched prefix
product), each with the command that reproduces it: [design-figures.md](design-figures.md); study wall
times and worker scaling against their goals: [studies.md](studies.md).
""" + mamba_section(mamba if mamba is not None else pd.DataFrame())
    return atomic_write(out / "README.md", lambda tmp: tmp.write_text(text))


def parse_size(spec: str) -> tuple[int, int]:
    """'64x8' -> (d_model, L) = (64, 8); ValueError unless two integers >= 3."""
    try:
        size = tuple(int(v) for v in spec.split("x"))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 3:
        raise ValueError(f"sizes look like 64x8 (d_model x L, both >= 3), got {spec!r}")
    return size


def positive_seconds(text: str) -> float:
    """--seconds: a finite number above zero (nan, inf and negatives would time nothing or forever)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--seconds must be a finite number above 0, got {text!r}")
    return value


def make_parser() -> ArgumentParser:
    """The command line; its mistakes raise ConfigError (one `error:` line, exit 2, via `entry_point`)."""
    parser = ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=mixer_names())
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="d_modelxL, e.g. 64x8")
    parser.add_argument("--mamba-sizes", nargs="*", default=list(MAMBA_SIZES),
                        help="sizes of the Mamba scan rows (none: skip them)")
    parser.add_argument("--seconds", type=positive_seconds, default=10.0, help="time per size and architecture")
    parser.add_argument("--out", default="runs/perf",
                        help="folder for README.md (created if missing); the committed one: --out reports/perf")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[int, int]], list[tuple[int, int]]]:
    """The arguments, checked: (args, sizes, Mamba sizes); ConfigError names the first problem, before
    anything is measured or written."""
    args = make_parser().parse_args(argv)
    unknown = [a for a in args.archs if a not in mixer_names()]
    if unknown:
        raise ConfigError(f"unknown archs {', '.join(unknown)} (registered: {', '.join(mixer_names())})")
    try:
        sizes, mamba_sizes = [parse_size(s) for s in args.sizes], [parse_size(s) for s in args.mamba_sizes]
    except ValueError as e:
        raise ConfigError(str(e)) from None
    out = Path(args.out)
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--out {args.out}: {blocking} is a file, not a folder")
    return args, sizes, mamba_sizes


def main(argv: list[str] | None = None) -> int:
    return entry_point(argv, make_parser().format_help(), _perf)


def _perf(argv: list[str]) -> int:
    args, sizes, mamba_sizes = parse(argv)
    torch.set_num_threads(1)
    table = measure(args.archs, sizes, args.seconds)
    mamba = mamba_table(mamba_sizes, args.seconds)
    command = "python -m bench.perf " + " ".join(argv)
    try:
        path = write_report(table, Path(args.out), command, mamba)
    except OSError as e:
        print(f"error: cannot write the report to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(_fmt(table))
    if not mamba.empty:
        print(_fmt(mamba))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
