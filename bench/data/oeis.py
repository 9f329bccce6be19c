"""Real integer sequences (OEIS) for a held-out check of what a model learned from the curriculum.

`bench/data/oeis.csv` is a committed snapshot (built by `scripts/build_oeis.py` from the
`oeissequences` package): OEIS sequences whose first terms all lie in 0..255, each stored as its
longest in-range prefix (8..32 terms). No training stream ever draws them; they show whether the
rules the curriculum teaches transfer to sequences people actually study.

Each window is sorted into one of `KINDS` by `classify`, on the window's own terms (the first
matching kind wins, in this order):

- periodic:     x_t = x_{t-P} for some period P <= len/2 (constants are period 1),
- arithmetic:   x_t = x_{t-1} + d, d != 0,
- recurrence_1: x_t = a*x_{t-1} + b with integers a not in {0, 1} and b,
- recurrence_2: x_t = a*x_{t-1} + b*x_{t-2} + c with integers a, b != 0 and c,
- other:        the rest (primes, digit sums, ...).

Every fit is exact over the whole window and must be checked on at least 3 terms beyond the ones
its parameters are fitted to (`MIN_CHECKS`), so a window of 8 terms can show every kind but a
window of 5 cannot show an order-2 recurrence. Worked example, Fibonacci (A000045):

    >>> classify([0, 1, 1, 2, 3, 5, 8, 13])     # x_t = x_{t-1} + x_{t-2}: 5 fitted + 3 checked terms
    'recurrence_2'
    >>> classify([1, 2, 4, 8, 16, 32, 64, 128])  # powers of 2: x_t = 2*x_{t-1}
    'recurrence_1'
    >>> oeis_windows(8).subset("recurrence_2").seqs.shape   # (n, 8), n the order-2 windows  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import torch

KINDS = ("periodic", "arithmetic", "recurrence_1", "recurrence_2", "other")
TAUGHT = KINDS[:4]
POOLS = ("taught", "all")  # pooled kinds `OeisSet.subset` also accepts
MIN_CHECKS = 3  # terms a fitted rule must predict beyond those its parameters are fitted to
SNAPSHOT = Path(__file__).with_name("oeis.csv")


def _affine(u: Sequence[int], y: Sequence[int]) -> tuple[int, int] | None:
    """Integers (a, c) with y_i = a*u_i + c for every i, or None.

    Where u is constant a is free and reported as 0. Example: u = [1, 2, 3], y = [5, 7, 9] -> (2, 3).
    """
    i = next((i for i in range(1, len(u)) if u[i] != u[0]), None)
    if i is None:
        return (0, y[0]) if all(v == y[0] for v in y) else None
    a, rem = divmod(y[i] - y[0], u[i] - u[0])
    if rem:
        return None
    c = y[0] - a * u[0]
    return (a, c) if all(yi == a * ui + c for ui, yi in zip(u, y, strict=True)) else None


def _periodic(x: Sequence[int]) -> bool:
    n = len(x)
    return any(all(x[t] == x[t - p] for t in range(p, n)) for p in range(1, n // 2 + 1) if n - p >= MIN_CHECKS)


def _arithmetic(x: Sequence[int]) -> bool:
    if len(x) < 2 + MIN_CHECKS:
        return False
    d = x[1] - x[0]
    return d != 0 and all(x[t] - x[t - 1] == d for t in range(2, len(x)))


def _order1(x: Sequence[int]) -> bool:
    """x_t = a*x_{t-1} + b with a not in {0, 1}: a, b fitted on x0..x2, the rest checked."""
    if len(x) < 3 + MIN_CHECKS:
        return False
    fit = _affine(x[:-1], x[1:])
    return fit is not None and fit[0] not in (0, 1)


def _det3(p: Sequence[int], q: Sequence[int], r: Sequence[int]) -> int:
    return p[0] * (q[1] * r[2] - q[2] * r[1]) - p[1] * (q[0] * r[2] - q[2] * r[0]) + p[2] * (q[0] * r[1] - q[1] * r[0])


def _solve3(rows: list[tuple[int, int, int]], rhs: Sequence[int]) -> tuple[Fraction, ...] | None:
    """The unique solution s of rows @ s = rhs fitted on the first three independent rows (Cramer's
    rule in exact integers), or None where no three rows are independent (many solutions or none).
    The caller checks the remaining rows. Example: rows (1, 0, 1), (0, 1, 1), (1, 1, 1), rhs 3, 4, 5
    -> (1, 2, 2)."""
    j = next((j for j in range(1, len(rows)) if rows[j] != rows[0]), None)  # rows end in 1: unequal = independent
    k = None if j is None else next((k for k in range(j + 1, len(rows)) if _det3(rows[0], rows[j], rows[k])), None)
    if k is None:
        return None
    m, y = (rows[0], rows[j], rows[k]), (rhs[0], rhs[j], rhs[k])
    swapped = [[r[:c] + (v,) + r[c + 1 :] for r, v in zip(m, y, strict=True)] for c in range(3)]  # column c := y
    return tuple(Fraction(_det3(*mc), _det3(*m)) for mc in swapped)


def _order2(x: Sequence[int]) -> bool:
    """x_t = a*x_{t-1} + b*x_{t-2} + c, integers, b != 0, not a lower kind: (a, b, c) fitted on three
    independent equations (x0..x4 unless the opening terms repeat), the rest checked."""
    if len(x) < 5 + MIN_CHECKS:
        return False
    rows = [(x[t - 1], x[t - 2], 1) for t in range(2, len(x))]
    sol = _solve3(rows, x[2:])
    if sol is None:
        # No three independent rows: x_0..x_{L-2} obey an affine order-1 rule and every solution
        # predicts the same x_{L-1}, so the window is order-1 with a rational ratio r. An integer
        # order-2 fit would make r a root of the monic t^2 - a*t - b, hence an integer: the window
        # is constant, arithmetic, recurrence_1 or x0, c, c, c, ... (where b would have to be 0).
        return False
    if any(v.denominator != 1 for v in sol) or sol[1] == 0:
        return False
    a, b, c = (int(v) for v in sol)
    return all(x[t] == a * x[t - 1] + b * x[t - 2] + c for t in range(2, len(x)))


def classify(terms: Sequence[int]) -> str:
    """The first of `KINDS` whose rule reproduces every term of `terms` exactly.

    >>> classify([3, 1, 4, 3, 1, 4]), classify([7, 7, 7, 7]), classify([200, 150, 100, 50, 0])
    ('periodic', 'periodic', 'arithmetic')
    >>> classify([1, 3, 7, 15, 31, 63]), classify([2, 3, 5, 7, 11, 13, 17, 19])   # 2x+1; primes
    ('recurrence_1', 'other')
    """
    x = [int(v) for v in terms]
    for kind, test in zip(TAUGHT, (_periodic, _arithmetic, _order1, _order2), strict=True):
        if test(x):
            return kind
    return "other"


@dataclass
class OeisSet:
    """Windows of real sequences: `seqs` LongTensor (n, length) in 0..255, distinct rows, `kind[i]`
    (one of KINDS, from `classify` on row i) and `anum[i]` (the lowest OEIS A-number opening with
    that row, e.g. "A000045")."""

    seqs: torch.Tensor
    kind: list[str]
    anum: list[str]

    def __len__(self) -> int:
        return len(self.kind)

    def subset(self, kind: str) -> OeisSet:
        """The rows of one kind; "taught" pools TAUGHT, "all" is every row."""
        wanted = {"taught": set(TAUGHT), "all": set(KINDS)}.get(kind, {kind})
        if not wanted <= set(KINDS):
            raise ValueError(f"kind must be one of {', '.join(KINDS + POOLS)}, got {kind!r}")
        keep = [i for i, k in enumerate(self.kind) if k in wanted]
        return OeisSet(self.seqs[keep], [self.kind[i] for i in keep], [self.anum[i] for i in keep])


def read_snapshot(path: Path = SNAPSHOT) -> list[tuple[str, str, list[int]]]:
    """(anum, kind, terms) rows of the snapshot csv, in file order; '#' lines are its provenance."""
    with open(path, newline="") as f:
        body = [line for line in f if not line.startswith("#")]
    return [(r["anum"], r["kind"], [int(v) for v in r["terms"].split()]) for r in csv.DictReader(body)]


@lru_cache(maxsize=8)
def _windows(length: int) -> OeisSet:
    rows, seen = [], set()
    for anum, _, terms in read_snapshot():
        window = tuple(terms[:length])
        if len(window) == length and window not in seen:
            seen.add(window)
            rows.append((anum, list(window)))
    seqs = torch.tensor([w for _, w in rows], dtype=torch.long).reshape(len(rows), length)
    return OeisSet(seqs, [classify(w) for _, w in rows], [a for a, _ in rows])


def oeis_windows(length: int) -> OeisSet:
    """One window per distinct prefix: each snapshot sequence's first `length` terms (sequences with
    fewer in-range terms are skipped; a window already taken by a lower A-number is not repeated, so
    the hundreds of "numbers such that ..." entries that open 1 2 3 4 5 6 7 8 count once), classified
    on the window itself, so the same sequence may be `other` at length 8 and `periodic` at 32 or the
    reverse. Cached per length; the caller gets its own copy.

    Example: A000045 (Fibonacci, 0 1 1 2 3 5 8 13 21 ...) at length 8 is the row [0, 1, 1, 2, 3, 5,
    8, 13] with kind "recurrence_2"; at length 16 it is absent (its 15th term, 377, exceeds 255).
    """
    if length < 1:
        raise ValueError(f"window length must be positive, got {length}")
    cached = _windows(length)
    return OeisSet(cached.seqs.clone(), list(cached.kind), list(cached.anum))
