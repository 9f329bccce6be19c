"""Sequences grouped by prefix (`PrefixTree`) and the memoriser baseline built on it (`LookupTable`).

`baseline_lookup` answers the question a skeptical reader asks of any score: how much of it could a
table of the training data give? For every prefix x[0..p] seen in training it predicts the most
frequent next value that followed that prefix there (ties to the lowest value); for a prefix never
seen it falls back to the last-value rule (predicts x[p]), so it is never worse than
`baseline_last_value` on what it has not memorised.

    table = LookupTable.fit(torch.tensor([[1, 2, 3], [1, 2, 4], [1, 2, 3], [5, 5, 5]]))
    table.predict(torch.tensor([[1, 2], [5, 6]]))   # [[2, 3], [5, 6]]: [5, 6] was never seen -> 6
    table.found(torch.tensor([[1, 2], [5, 6]]))     # [[True, True], [True, False]]

`bench.data.bayes` builds its Bayes predictor on the same tree, with probabilities as weights.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.data.base import VOCAB


def _as_array(seqs: torch.Tensor | np.ndarray) -> np.ndarray:
    x = seqs.cpu().numpy() if isinstance(seqs, torch.Tensor) else np.asarray(seqs)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of sequences (n, length), got shape {tuple(x.shape)}")
    return x.astype(np.int64, copy=False)


def lexicographic_order(x: np.ndarray) -> np.ndarray:
    """Row order that sorts x (m, L) of values 0..255 lexicographically: 8 columns packed big-endian
    into one uint64 key, so the sort has ceil(L / 8) keys instead of L."""
    width = -(-x.shape[1] // 8) * 8
    padded = np.zeros((len(x), width), dtype=np.uint64)
    padded[:, : x.shape[1]] = x
    shifts = np.arange(56, -8, -8, dtype=np.uint64)
    words = [(padded[:, i:i + 8] << shifts).sum(axis=1, dtype=np.uint64) for i in range(0, width, 8)]
    return np.lexsort(words[::-1]) if words else np.arange(len(x))


class PrefixTree:
    """Weighted rows (m, L) of values in 0..255, grouped by prefix, one level per prefix length.

    Level q (0..L) lists the distinct q-term prefixes of the rows, sorted, as int64 codes
    `parent * 256 + x[q-1]` where `parent` is the index of the (q-1)-term prefix at level q-1 (level
    0 is the empty prefix, index 0), with `mass` = the summed weight of the rows that start with it.
    The children of node h at level q are therefore the contiguous codes h*256 .. h*256 + 255 of level
    q+1, in order of their value, and finding a prefix is one binary search per level; no Python loop
    runs over rows (they are sorted once; then each level's prefixes are runs of rows).
    Example: rows [[1, 2], [1, 3], [1, 2]], weight 1 each: level 1 has codes [1] (mass 3); level 2
    has codes [2, 3] (0 * 256 + 2 and 0 * 256 + 3: node 0 of level 1, then the value; masses 2, 1).
    """

    def __init__(self, seqs: torch.Tensor | np.ndarray, weight: torch.Tensor | np.ndarray) -> None:
        x, w = _as_array(seqs), np.asarray(weight, dtype=np.float64)
        if ((x < 0) | (x >= VOCAB)).any():
            raise ValueError("sequence values must lie in 0..255")
        if not len(x):
            raise ValueError("a prefix tree needs at least one row")
        if w.shape != (len(x),):
            raise ValueError(f"expected one weight per row ({len(x)}), got shape {w.shape}")
        self.length = x.shape[1]
        self.codes, self.mass = [np.zeros(1, dtype=np.int64)], [np.array([w.sum()])]
        order = lexicographic_order(x)
        x, w = x[order], w[order]
        new = np.zeros(len(x), dtype=bool)  # row i starts a new q-prefix (differs from row i-1)
        new[:1] = True
        node = np.zeros(len(x), dtype=np.int64)
        for q in range(self.length):  # sorted rows: each prefix is a run, its start where `new`
            new[1:] |= x[1:, q] != x[:-1, q]
            starts = np.flatnonzero(new)
            self.codes.append(node[starts] * VOCAB + x[starts, q])
            self.mass.append(np.add.reduceat(w, starts))
            node = np.cumsum(new) - 1

    def find(self, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        """int64 (B, T): ids[b, p] = index of the prefix inputs[b, :p+1] at level p+1, or -1 where no
        row starts with it (values outside 0..255 and prefixes longer than L included)."""
        x = _as_array(inputs)
        ids = np.full(x.shape, -1, dtype=np.int64)
        node, alive = np.zeros(len(x), dtype=np.int64), np.ones(len(x), dtype=bool)
        for p in range(min(x.shape[1], self.length)):
            codes = self.codes[p + 1]
            want = node * VOCAB + x[:, p]
            pos = np.searchsorted(codes, want).clip(max=len(codes) - 1)
            alive &= (x[:, p] >= 0) & (x[:, p] < VOCAB) & (codes[pos] == want)
            node = np.where(alive, pos, 0)
            ids[:, p] = np.where(alive, pos, -1)
        return ids

    def children(self, level: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next values after nodes (n,) of `level` (-1 = none): flat arrays (which, value, mass),
        one entry per (node, next value) present, `which` indexing into `nodes`. level < L."""
        codes = self.codes[level + 1]
        lo = np.searchsorted(codes, nodes * VOCAB)
        count = np.where(nodes >= 0, np.searchsorted(codes, nodes * VOCAB + VOCAB) - lo, 0)
        which = np.repeat(np.arange(len(nodes)), count)
        entry = lo[which] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return which, codes[entry] % VOCAB, self.mass[level + 1][entry]

    def next_mass(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """float64 (n, 256): the mass of each one-term extension of nodes (n,) at `level` (0 for -1)."""
        out = np.zeros((len(nodes), VOCAB))
        which, value, mass = self.children(level, nodes)
        out[which, value] = mass
        return out

    def best_child(self, level: int) -> np.ndarray:
        """int64 (nodes at `level`,): each node's heaviest next value, ties to the lowest. level < L."""
        codes, mass = self.codes[level + 1], self.mass[level + 1]
        parent = codes // VOCAB
        order = np.lexsort((codes, -mass, parent))  # by parent, then heaviest, then lowest value
        first = order[np.r_[True, parent[order][1:] != parent[order][:-1]]]
        best = np.zeros(len(self.codes[level]), dtype=np.int64)
        best[parent[first]] = codes[first] % VOCAB
        return best


class LookupTable:
    """The memoriser: every prefix x[0..p] of the fitted rows -> its most frequent next value.

    `fit(seqs (N, L))` counts, for each prefix of 1..L-1 terms, how often each value followed it;
    `predict(inputs (B, T))` gives, at every position p, that prefix's most frequent next value (ties
    to the lowest value, as `torch.argmax`), or, for a prefix the rows never began with, the last
    value inputs[b, p] (the `baseline_last_value` rule). Any T works: positions with p + 1 >= L have
    no fitted continuation, so they are unseen. `found(inputs)` says where the table answered.
    """

    def __init__(self, tree: PrefixTree) -> None:
        self.tree = tree
        self.best = [tree.best_child(q) for q in range(1, tree.length)]  # best[p]: after the (p+1)-term prefix

    @classmethod
    def fit(cls, seqs: torch.Tensor) -> LookupTable:
        """The table of `seqs` (LongTensor (N, L), values 0..255), each row counted once."""
        return cls(PrefixTree(seqs, np.ones(len(seqs))))

    def found(self, inputs: torch.Tensor) -> torch.Tensor:
        """BoolTensor (B, T): some fitted row starts with inputs[b, :p+1] and continues past it."""
        ids = self.tree.find(inputs)
        ids[:, self.tree.length - 1:] = -1  # a whole row has no next value
        return torch.from_numpy(ids >= 0)

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """LongTensor (B, T): the next value after each prefix (the last value where not found)."""
        ids = self.tree.find(inputs)
        pred = _as_array(inputs).copy()
        for p in range(min(ids.shape[1], self.tree.length - 1)):
            hit = ids[:, p] >= 0
            pred[hit, p] = self.best[p][ids[hit, p]]
        return torch.from_numpy(pred)
