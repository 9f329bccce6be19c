"""The study's workers: one in this process, or `workers` spawned processes sharing the storage.

Every finished slot prints one line, `[done/total] <arch> <stage> <trial or seed>: <status>, <metric>`,
its count read from the storage, so each worker's lines count the whole study's slots. The parent of
spawned workers only waits for them (no polling). A worker that dies (killed, out of memory) leaves
its trial to go stale and be retried by the others (`storage`: heartbeats); when every slot finished
anyway, the parent says in one line that a worker was lost and the study goes on; when slots remain
because every worker stopped, it is a `StudyError`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection

import optuna
import torch
from optuna.storages import RDBStorage

from bench.experiment.config import STUDY_MARKER, Config, ConfigError
from bench.experiment.stages import StudyError
from bench.experiment.storage import final_name, is_finished, load_study, mutual_name, open_storage, search_name
from bench.experiment.worker import Worker
from bench.util import first_line


def mark_study_dir(cfg: Config) -> None:
    """Mark out_dir as a study's directory (`check_out_dir` then lets later runs write into it); an
    existing mark is left as it is."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    marker = cfg.output_dir / STUDY_MARKER
    if not marker.exists():
        marker.touch()


def worker_tag(cfg: Config, index: int) -> str:
    """Local index; with a shared storage (possibly many machines) also the host and process."""
    return f"{index}" if cfg.storage is None else f"{index}@{platform.node()}:{os.getpid()}"


def slots(cfg: Config) -> list[tuple[str, int]]:
    """(Optuna study name, slots) of every stage this run works on (`cfg.stage`), every replicate."""
    out = []
    for r in range(cfg.search.replicates):
        if cfg.stage in ("all", "search"):
            out += [(search_name(cfg, arch, r), cfg.search.n_trials) for arch in cfg.arch_list]
        if cfg.stage in ("all", "final"):
            out += [(final_name(cfg, arch, r), len(cfg.seeds)) for arch in cfg.arch_list]
            out += [(mutual_name(cfg, r), len(cfg.seeds))] if cfg.mutual.weight is not None else []
    return out


def progress(cfg: Config, storage: RDBStorage) -> tuple[int, int]:
    """(finished slots, total slots) of this run's stages, read from the storage."""
    names, done, total = set(optuna.get_all_study_names(storage)), 0, 0
    for name, n in slots(cfg):
        total += n
        if name in names and n:
            trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
            done += min(n, sum(is_finished(t) for t in trials))
    return done, total


def study_logger(cfg: Config, storage: RDBStorage, worker: int | None = None) -> Callable[[str], None]:
    """One line per finished slot, prefixed by the study's [done/total] (and suffixed by the worker
    that ran it, with several)."""
    suffix = f" (worker {worker})" if worker is not None else ""

    def log(message: str) -> None:
        done, total = progress(cfg, storage)
        print(f"[{done}/{total}] {message}{suffix}", flush=True)
    return log


PARENT_POLL_S = 2.0


def exit_with_parent(parent: int, getppid: Callable[[], int] = os.getppid,
                     exit_now: Callable[[int], object] = os._exit, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that ends this worker process within `poll_s` seconds of its parent's death
    (the parent killed by a signal, its workers reparented): else the orphans would go on claiming
    and training slots nobody collects. The running trial is left as after kill -9: failed by the
    next run's heartbeat check and resumed from its checkpoint."""
    def watch() -> None:
        while getppid() == parent:
            time.sleep(poll_s)
        exit_now(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def worker_main(cfg: Config, device: str, index: int, errors: Connection, parent: int | None = None) -> None:
    """Entry point of a spawned worker process: a failure it can name goes to the parent (one
    line), never a traceback. Training bars are off: several would overwrite each other. The
    worker ends when `parent` (the process that spawned it) dies."""
    if parent is not None:
        exit_with_parent(parent)
    torch.set_num_threads(cfg.threads)
    try:
        storage = open_storage(cfg)
        Worker(replace(cfg, progress=False), torch.device(device), log=study_logger(cfg, storage, index),
               tag=worker_tag(cfg, index)).run()
    except KeyboardInterrupt:  # Ctrl-C reaches every process: the parent says it, once
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - reported by the parent, which decides the exit code
        errors.send((type(e).__name__, first_line(e)[:2000]))  # short: the parent reads it only after join()
        sys.exit(1)


def check_stages(cfg: Config, storage: RDBStorage) -> None:
    """Load (or create) each stage's study: one run under another configuration is refused here,
    in this process, before any worker starts."""
    for name, _ in slots(cfg):
        load_study(storage, cfg, name)


def run_workers(cfg: Config, device: torch.device) -> None:
    """Run the study's workers: in this process for workers=1, else N spawned processes (one torch
    thread each) that this process waits for. Nothing starts when every slot is finished."""
    storage = open_storage(cfg)
    check_stages(cfg, storage)
    done, total = progress(cfg, storage)
    if done >= total:
        return
    if cfg.workers == 1:
        torch.set_num_threads(cfg.threads)
        Worker(cfg, device, log=study_logger(cfg, storage), tag=worker_tag(cfg, 0)).run()
        return
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe(duplex=False) for _ in range(cfg.workers)]  # (read, write): a worker's one-line error
    procs = [ctx.Process(target=worker_main, args=(cfg, str(device), i, pipes[i][1], os.getpid()))
             for i in range(cfg.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lost = {i: p.exitcode for i, p in enumerate(procs) if p.exitcode}
    reasons = {i: pipes[i][0].recv() for i in lost if pipes[i][0].poll()}
    for read, write in pipes:
        read.close()
        write.close()
    if lost:
        after_loss(cfg, storage, lost, reasons)


def after_loss(cfg: Config, storage: RDBStorage, lost: dict[int, int], reasons: dict[int, tuple[str, str]]) -> None:
    """Workers that stopped early: one line when the others finished every slot; otherwise the first
    worker's own error (ConfigError: bad input, exit 2), else a StudyError naming what is left."""
    done, total = progress(cfg, storage)
    if done >= total:
        said = "; ".join(f"worker {i} was lost ({_why(code, reasons.get(i))})" for i, code in lost.items())
        print(f"warning: {said}; the other workers finished its slots", file=sys.stderr, flush=True)
        return
    if reasons:
        kind, message = next(iter(reasons.values()))
        raise (ConfigError if kind == "ConfigError" else StudyError)(message)
    said = ", ".join(f"worker {i}: {_why(code, None)}" for i, code in lost.items())
    raise StudyError(f"{total - done} of {total} slots unfinished: every worker stopped ({said}); rerun the "
                     f"same command to resume")


def _why(code: int, reason: tuple[str, str] | None) -> str:
    if reason is not None:
        return reason[1]
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
