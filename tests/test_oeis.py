"""The OEIS snapshot and its classifier: hand-made sequences of every kind, the committed csv, the
windows the studies score on. The `oeissequences` package is only the build script's; it is never
imported here."""

import importlib.util
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.data.oeis import KINDS, SNAPSHOT, TAUGHT, OeisSet, classify, oeis_windows, read_snapshot

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("terms", "kind"),
    [
        ([3, 1, 4, 3, 1, 4], "periodic"),
        ([7, 7, 7, 7, 7, 7, 7, 7], "periodic"),  # constants are period 1
        ([0, 255, 0, 255, 0, 255, 0, 255], "periodic"),  # alternating
        ([1, 2, 3, 1, 2, 3, 1, 2], "periodic"),  # the window need not end on a full period
        ([5, 9, 13, 17, 21, 25, 29, 33], "arithmetic"),
        ([200, 150, 100, 50, 0], "arithmetic"),  # negative step, 3 checks
        ([0, 1, 2, 3, 4, 5, 6, 7], "arithmetic"),  # no wrap: the terms themselves, not mod 256
        ([1, 2, 4, 8, 16, 32, 64, 128], "recurrence_1"),  # powers of 2
        ([1, 3, 7, 15, 31, 63], "recurrence_1"),  # 2x + 1
        ([2, 5, 14, 41, 122], "other"),  # 3x - 1 with only 2 checks
        ([200, 100, 0, 200, 100, 0, 200, 100], "periodic"),  # period 3, decreasing within it
        ([250, 252, 254, 0, 2, 4, 6, 8], "other"),  # no wrap: step 2 mod 256 is not an exact rule
        ([129, 126, 132, 120, 144, 96, 192, 0], "recurrence_1"),  # x_t = -2 x_{t-1} + 384
        ([0, 1, 1, 2, 3, 5, 8, 13], "recurrence_2"),  # Fibonacci
        ([2, 1, 3, 4, 7, 11, 18, 29], "recurrence_2"),  # Lucas
        ([0, 1, 2, 5, 12, 29, 70, 169], "recurrence_2"),  # Pell: a = 2, b = 1
        ([0, 1, 4, 9, 16, 25, 36, 49], "recurrence_2"),  # squares: 2x_{t-1} - x_{t-2} + 2
        ([0, 1, 1, 2, 3, 5, 8], "other"),  # Fibonacci with 2 checks only
        ([2, 3, 5, 7, 11, 13, 17, 19], "other"),  # primes
        ([128, 64, 32, 16, 8, 4, 2, 1], "other"),  # halving: the ratio 1/2 is not an integer
        ([1, 0, 0, 0, 0, 0, 0, 0], "other"),  # an impulse: order 2 would need b = 0
        ([5, 6], "other"),
        ([], "other"),
    ],
)
def test_classify(terms, kind):
    assert classify(terms) == kind
    assert classify(torch.tensor(terms, dtype=torch.long)) == kind  # tensors and lists alike


def test_kinds_are_exported_in_order():
    assert KINDS == ("periodic", "arithmetic", "recurrence_1", "recurrence_2", "other")
    assert KINDS[:4] == TAUGHT


def test_snapshot_rows():
    rows = read_snapshot()
    header = [line for line in SNAPSHOT.read_text().splitlines() if line.startswith("#")]
    assert any("https://oeis.org" in line and "CC BY-SA 4.0" in line for line in header)
    assert any("oeissequences" in line for line in header)
    anums = [a for a, _, _ in rows]
    assert anums == sorted(anums) and len(set(anums)) == len(anums)
    assert 300 <= len(rows) <= 3000 and SNAPSHOT.stat().st_size < 300_000
    for anum, kind, terms in rows:
        assert len(anum) == 7 and anum[0] == "A" and anum[1:].isdigit()
        assert 8 <= len(terms) <= 32 and all(0 <= v <= 255 for v in terms)
        assert kind == classify(terms), anum  # the script wrote the loader's classification
    assert len({tuple(t) for _, _, t in rows}) == len(rows)  # no exact duplicates


def test_windows_at_length_8():
    windows = oeis_windows(8)
    prefixes = {}  # every sequence has >= 8 terms; a repeated prefix counts once, under its lowest A-number
    for anum, _, terms in read_snapshot():
        prefixes.setdefault(tuple(terms[:8]), anum)
    assert windows.seqs.shape == (len(prefixes), 8) and windows.seqs.dtype == torch.long
    assert windows.anum == list(prefixes.values())
    assert [tuple(row) for row in windows.seqs.tolist()] == list(prefixes)
    assert int(windows.seqs.min()) >= 0 and int(windows.seqs.max()) <= 255
    assert windows.kind == [classify(row.tolist()) for row in windows.seqs]
    counts = {k: windows.kind.count(k) for k in KINDS}
    assert all(counts[k] > 0 for k in TAUGHT), counts
    fib = windows.anum.index("A000045")
    assert windows.seqs[fib].tolist() == [0, 1, 1, 2, 3, 5, 8, 13] and windows.kind[fib] == "recurrence_2"


def test_longer_windows_skip_short_sequences():
    short, long = oeis_windows(8), oeis_windows(32)
    assert 0 < len(long) < len(short)
    assert "A000045" not in long.anum  # Fibonacci leaves 0..255 at its 15th term
    short_rows = {tuple(row) for row in short.seqs.tolist()}
    assert all(tuple(row[:8]) in short_rows for row in long.seqs.tolist())
    assert len({tuple(row) for row in long.seqs.tolist()}) == len(long)


def test_windows_are_deterministic_and_private():
    a = oeis_windows(8)
    a.seqs.zero_()
    a.kind.clear()
    b, c = oeis_windows(8), oeis_windows(8)
    assert int(b.seqs.max()) > 0 and len(b.kind) == b.seqs.shape[0]  # the cache was not mutated
    assert torch.equal(b.seqs, c.seqs) and b.kind == c.kind and b.anum == c.anum


def test_subset():
    windows = oeis_windows(8)
    parts = [windows.subset(k) for k in KINDS]
    assert sum(len(p) for p in parts) == len(windows)
    assert all(set(p.kind) <= {k} for p, k in zip(parts, KINDS, strict=True))
    taught = windows.subset("taught")
    assert len(taught) == len(windows) - len(windows.subset("other")) and isinstance(taught, OeisSet)
    assert len(windows.subset("all")) == len(windows)
    with pytest.raises(ValueError, match="kind must be one of"):
        windows.subset("fibonacci")
    with pytest.raises(ValueError, match="window length"):
        oeis_windows(0)


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_oeis", ROOT / "scripts" / "build_oeis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spin(n):
    """a(n) = n, but a(5) never returns: only the CPU-time cap ends it."""
    while n >= 5:
        pass
    return n


def test_build_script_reads_terms_from_the_offset_within_range_and_cap(build):
    """`first_terms` on a stand-in for the package: generators from their first term, plain a(n) from
    n = 1 (never a term an offset-1 sequence lacks), stopping outside 0..255 and at the cap with the
    terms computed so far."""
    fake = SimpleNamespace(
        A000001_gen=lambda: iter(range(250, 300)),
        A000001=lambda n: -1,  # the generator wins
        A000002=lambda n: 120 // n,  # a(0) would raise: starts at n = 1
        A000003=lambda n: n * n,  # a(0) = 0 would be in range: still starts at n = 1
        A000004=_spin,
        A000005_T=lambda n, k: 1,  # tables are not sequences
    )
    previous = signal.signal(signal.SIGPROF, build._on_alarm)
    try:
        terms = {anum: build.first_terms(fake, anum, 32, 0.05) for anum in ("A000001", "A000002", "A000003", "A000004")}
        terms["A000005"] = build.first_terms(fake, "A000005", 32, 0.05)
    finally:
        signal.signal(signal.SIGPROF, previous)
    assert terms["A000001"] == [250, 251, 252, 253, 254, 255]
    assert terms["A000002"] == [120 // n for n in range(1, 33)]
    assert terms["A000003"] == [n * n for n in range(1, 16)]  # 16^2 = 256 leaves the range
    assert terms["A000004"] == [1, 2, 3, 4]
    assert terms["A000005"] == []


def test_build_script_uses_the_loaders_classifier(build, tmp_path):
    """The script's selection rules on a fake scan; its rows carry `classify`'s kind (no package import)."""
    assert build.classify is classify
    scanned = {f"A{i:06d}": [i] * 10 for i in range(1, 20)}  # 19 constants: the first MAX_CONSTANT kept
    scanned |= {
        "A100000": [0, 1, 1, 2, 3, 5, 8, 13],
        "A100001": [0, 1, 1, 2, 3, 5, 8, 13],  # a duplicate of A100000
        "A100002": [1, 2, 3],  # too short
        "A100003": [0, 1, 2, 3, 4, 5, 6, 7, 8],
    }
    rows = build.select(scanned)
    assert [a for a, _, _ in rows if a >= "A100000"] == ["A100000", "A100003"]
    assert [a for a, _, _ in rows if a < "A100000"] == [f"A{i:06d}" for i in range(1, build.MAX_CONSTANT + 1)]
    assert all(kind == classify(terms) for _, kind, terms in rows)
    out = tmp_path / "oeis.csv"
    build.write(rows, out, n_scanned=len(scanned), n_terms=32, version="0.0")
    assert read_snapshot(out) == rows
    assert "oeis_sequences" not in sys.modules


def test_build_script_keeps_an_even_spread_of_the_rest(build, monkeypatch):
    """Every taught sequence stays; of the others every k-th by A-number, k = ceil(others / MAX_OTHER)."""
    monkeypatch.setattr(build, "MAX_OTHER", 2)
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23]
    scanned = {f"A{i:06d}": [p + i for p in primes] for i in range(5)}  # 5 others: every 3rd kept
    scanned["A000010"] = [0, 1, 1, 2, 3, 5, 8, 13, 21]
    scanned["A000011"] = [0, 1, 2, 3, 4, 5, 6, 7, 9]  # other over 9 terms, arithmetic over the first 8: taught
    rows = build.select(scanned)
    assert [(a, k) for a, k, _ in rows] == [
        ("A000000", "other"),
        ("A000003", "other"),
        ("A000010", "recurrence_2"),
        ("A000011", "other"),
    ]
