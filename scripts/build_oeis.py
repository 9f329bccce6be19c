"""Build `bench/data/oeis.csv`: the OEIS sequences the `oeissequences` package implements whose
first terms lie in 0..255, with their kind (`bench.data.oeis.classify`).

    pip install -e ".[oeis]"
    python scripts/build_oeis.py                 # every sequence: about 12 min on one core
    python scripts/build_oeis.py --limit 200 --out /tmp/oeis.csv   # a quick look at the first 200

Why a snapshot: the package is large and some of its functions take minutes for a term, so the
benchmark reads a committed csv and never imports it. Per sequence: the first `--terms` terms from
the OEIS offset (the package's generator `Annnnnn_gen` starts there; a plain `Annnnnn(n)` carries no
offset, so it starts at n=1: OEIS offsets are almost all 0 or 1, so every stored term is a true term
of the sequence, and one of offset 0 loses its a(0); starting at 0 would give offset-1 sequences a
term they do not have, e.g. A000027 would read 0 1 2 3 ...), stopping at the first
term outside 0..255, at an error or after `--cap` CPU seconds (the terms computed by then are kept).
One worker process computes the terms, so a function stuck in C code is killed after HANG_S and
skipped; `select` then keeps every sequence of a taught kind and an even spread of the rest.
Example row: `A000045,recurrence_2,0 1 1 2 3 5 8 13 21 34 55 89 144 233`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import io
import multiprocessing as mp
import operator
import os
import re
import resource
import signal
import sys
import warnings
from itertools import count, islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.data.oeis import SNAPSHOT, classify  # noqa: E402

MIN_TERMS = 8  # the default sequence length of the studies
MAX_CONSTANT = 8  # all-equal sequences kept (as periodic): enough to test, not enough to dominate
MAX_OTHER = 1200  # sequences of no taught kind kept (an even spread over A-numbers): the file stays small
HANG_S = 30.0  # wall seconds before the worker is presumed stuck in C code and killed
MEMORY_BYTES = 8 << 30  # the worker's address-space limit (torch's mappings, inherited, included)


class CapReached(BaseException):
    """Raised by the CPU-time alarm; a BaseException so the package's `except Exception` cannot swallow it."""


_armed = [False]  # whether the alarm may raise: a signal that lands after `_disarm` began is ignored


def _on_alarm(signum, frame):
    if _armed[0]:
        raise CapReached


def _arm(cap_s: float) -> None:
    _armed[0] = True
    signal.setitimer(signal.ITIMER_PROF, cap_s)


def _disarm() -> None:
    """Stop the alarm; an alarm that fires while this runs (before the flag is down) is absorbed here."""
    while True:
        try:
            _armed[0] = False
            signal.setitimer(signal.ITIMER_PROF, 0)
            return
        except CapReached:
            continue


def _in_range(value) -> int | None:
    """The term as an int if it is an integer in 0..255 (ints, bools, sympy and gmpy2 integers), else None."""
    try:
        v = operator.index(value)
    except TypeError:
        return None
    return v if 0 <= v <= 255 else None


def _term_source(module, anum: str):
    """An iterator over the sequence's terms from its offset (empty for tables `_T`, which are not sequences)."""
    gen = getattr(module, f"{anum}_gen", None)
    if gen is not None:
        try:
            return gen()
        except Exception:  # a generator function that fails on creation: no terms
            return iter(())
    a = getattr(module, anum, None)
    return iter(()) if a is None else (a(n) for n in count(1))


def first_terms(module, anum: str, n_terms: int, cap_s: float) -> list[int]:
    """The longest prefix (up to n_terms) of in-range terms computed within cap_s CPU seconds."""
    terms: list[int] = []
    source = _term_source(module, anum)
    try:
        try:
            _arm(cap_s)
            for value in islice(source, n_terms):
                v = _in_range(value)
                if v is None:
                    break
                terms.append(v)
        finally:
            _disarm()
    except (CapReached, Exception):  # also an alarm that fires just before `_disarm` (it is one-shot)
        pass
    return terms


def _worker(conn, n_terms: int, cap_s: float) -> None:
    """Answers each A-number received on `conn` with its terms, until it receives None."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    signal.signal(signal.SIGPROF, _on_alarm)
    warnings.simplefilter("ignore")
    sys.setrecursionlimit(10_000)
    from oeis_sequences import OEISsequences as module

    while (anum := conn.recv()) is not None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            conn.send(first_terms(module, anum, n_terms, cap_s))


class Scanner:
    """One worker process at a time; a worker that does not answer within HANG_S is killed and replaced."""

    def __init__(self, n_terms: int, cap_s: float):
        self.ctx, self.args, self.proc = mp.get_context("fork"), (n_terms, cap_s), None

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()  # the worker's end only: a worker that dies reads as EOF at once, not as a hang

    def terms(self, anum: str) -> list[int] | None:
        """The sequence's terms, or None where the worker hung (no answer within HANG_S) or died on it."""
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send(anum)
        if self.conn.poll(HANG_S):
            with contextlib.suppress(EOFError):
                return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return None

    def close(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.conn.send(None)
            self.proc.join()


def anums() -> list[str]:
    """Every A-number with a term function or generator in the package, sorted."""
    from oeis_sequences import OEISsequences as module

    return sorted({name[:7] for name in dir(module) if re.fullmatch(r"A\d{6}(_gen)?", name)})


def _taught(terms: list[int]) -> bool:
    """Of a taught kind over the stored terms or over the first MIN_TERMS (the studies' window)."""
    return classify(terms) != "other" or classify(terms[:MIN_TERMS]) != "other"


def select(scanned: dict[str, list[int]]) -> list[tuple[str, str, list[int]]]:
    """(anum, kind, terms) of the sequences kept, by A-number: at least MIN_TERMS terms, no exact
    repeat of an earlier one, at most MAX_CONSTANT starting with MIN_TERMS equal terms, every one of
    a taught kind (`_taught`) and an evenly spaced MAX_OTHER of the rest (every k-th by A-number).

    Example: of 3,000 candidates of which 500 are taught, all 500 and every 3rd of the other 2,500
    (833 of them; k = ceil(2500 / 1200) = 3) are kept.
    """
    candidates, seen, constants = [], set(), 0
    for anum in sorted(scanned):
        terms = scanned[anum]
        if len(terms) < MIN_TERMS or tuple(terms) in seen:
            continue
        if len(set(terms[:MIN_TERMS])) == 1:
            if constants == MAX_CONSTANT:
                continue
            constants += 1
        seen.add(tuple(terms))
        candidates.append((anum, terms, _taught(terms)))
    n_other = sum(not taught for _, _, taught in candidates)
    stride, rows, i_other = -(-n_other // MAX_OTHER), [], 0
    for anum, terms, taught in candidates:
        if not taught:
            i_other += 1
            if (i_other - 1) % stride:
                continue
        rows.append((anum, classify(terms), terms))
    return rows


def write(rows: list[tuple[str, str, list[int]]], path: Path, n_scanned: int, n_terms: int, version: str) -> None:
    """The csv: '#' provenance lines (source, licence, package version), then anum,kind,terms rows."""
    header = [
        f"OEIS sequences whose first {MIN_TERMS}..{n_terms} terms (from the offset) lie in 0..255:"
        " the longest such prefix.",
        "Source: The On-Line Encyclopedia of Integer Sequences, https://oeis.org"
        " (data licensed CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/).",
        f"Terms computed by the oeissequences package {version} (Chai Wah Wu, https://github.com/postvakje/oeis-sequences).",
        f"Built by scripts/build_oeis.py: {n_scanned} sequences scanned, {len(rows)} kept;"
        " kind = bench.data.oeis.classify on the stored terms.",
    ]
    with open(path, "w", newline="") as f:
        f.writelines(f"# {line}\n" for line in header)
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["anum", "kind", "terms"])
        out.writerows([anum, kind, " ".join(map(str, terms))] for anum, kind, terms in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SNAPSHOT)
    parser.add_argument("--terms", type=int, default=32, help="terms read per sequence (default 32)")
    parser.add_argument("--cap", type=float, default=0.5, help="CPU seconds per sequence (default 0.5)")
    parser.add_argument("--limit", type=int, default=None, help="scan only the first LIMIT A-numbers")
    args = parser.parse_args(argv)
    todo = anums()[: args.limit]
    scanner, scanned = Scanner(args.terms, args.cap), {}
    try:
        for i, anum in enumerate(todo, 1):
            terms = scanner.terms(anum)
            if terms is None:
                print(f"{anum}: worker hung (> {HANG_S:.0f} s) or died, skipped", file=sys.stderr)
            scanned[anum] = terms or []
            if i % 500 == 0:
                print(f"{i}/{len(todo)} scanned", file=sys.stderr)
    finally:
        scanner.close()
    rows = select(scanned)
    write(rows, args.out, len(todo), args.terms, importlib.metadata.version("oeissequences"))
    print(f"{len(rows)} of {len(todo)} sequences kept -> {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
