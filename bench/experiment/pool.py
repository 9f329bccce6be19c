"""The study's workers: one in this process, or `workers` spawned processes sharing the storage,
with one progress line for the whole study read from that storage."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import time
from collections.abc import Callable

import optuna
import torch
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from tqdm.auto import tqdm

from bench.experiment.config import STUDY_MARKER, Config
from bench.experiment.storage import final_name, is_finished, mutual_name, open_storage, search_name
from bench.experiment.worker import Worker


def mark_study_dir(cfg: Config) -> None:
    """Mark out_dir as a study's directory (`check_out_dir` then lets later runs write into it)."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    (cfg.output_dir / STUDY_MARKER).touch()


def worker_tag(cfg: Config, index: int) -> str:
    """Local index; with a shared storage (possibly many machines) also the host and process."""
    return f"{index}" if cfg.storage is None else f"{index}@{platform.node()}:{os.getpid()}"


def worker_main(cfg: Config, device: str, index: int) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(cfg.threads)
    prefix = f"[worker {index}] "
    Worker(cfg, torch.device(device), log=lambda m: print(prefix + m, flush=True), tag=worker_tag(cfg, index)).run()


def progress(cfg: Config, storage: RDBStorage) -> tuple[int, int, dict[str, float]]:
    """(finished slots, total slots, best search value per architecture) read from the storage."""
    done, total, best = 0, 0, {}
    names = optuna.get_all_study_names(storage)
    slots = [(arch, name, n) for arch in cfg.arch_list
             for name, n in ((search_name(cfg, arch), cfg.search.n_trials), (final_name(cfg, arch), len(cfg.seeds)))]
    if cfg.mutual.weight is not None:
        slots.append((None, mutual_name(cfg), len(cfg.seeds)))
    for arch, name, n in slots:
        total += n
        if name not in names or n == 0:
            continue
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        done += min(n, sum(is_finished(t) for t in trials))
        if arch is not None and name == search_name(cfg, arch):
            values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
            if values:
                best[arch] = min(values)
    return done, total, best


def study_logger(cfg: Config, storage: RDBStorage) -> Callable[[str], None]:
    """One line per finished trial, prefixed by the study's progress (done/total, best per arch)."""
    def log(message: str) -> None:
        done, total, best = progress(cfg, storage)
        tail = " ".join(f"{a}={v:.3f}" for a, v in best.items())
        print(f"[{done}/{total}{' best ' + tail if tail else ''}] {message}", flush=True)
    return log


def run_workers(cfg: Config, device: torch.device) -> None:
    """Run the study's workers: in this process for workers=1, else N spawned processes (one torch
    thread each), while this process shows one progress line for the whole study."""
    storage = open_storage(cfg)
    if cfg.workers == 1:
        torch.set_num_threads(cfg.threads)
        Worker(cfg, device, log=study_logger(cfg, storage), tag=worker_tag(cfg, 0)).run()
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker_main, args=(cfg, str(device), i), daemon=False) for i in range(cfg.workers)]
    for p in procs:
        p.start()
    bar = tqdm(desc=f"study {cfg.name}", unit="run", disable=None if cfg.progress else True, dynamic_ncols=True)
    try:
        while any(p.is_alive() for p in procs):
            done, total, best = progress(cfg, storage)
            bar.total, bar.n = total, done
            bar.set_postfix_str(" ".join(f"{a}={v:.3f}" for a, v in best.items()))
            time.sleep(2)
    finally:
        bar.close()
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"{len(bad)} of {cfg.workers} workers exited with an error (exit codes {bad})")
