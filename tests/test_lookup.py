"""The memoriser baseline `LookupTable` and the `PrefixTree` under it (and under the Bayes ceiling)."""

import numpy as np
import pytest
import torch

from bench.data import get_family
from bench.data.lookup import LookupTable, PrefixTree, lexicographic_order

ROWS = torch.tensor([
    [1, 2, 3, 9],
    [1, 2, 4, 9],
    [1, 2, 3, 8],
    [1, 5, 5, 5],
    [7, 7, 7, 7],
    [7, 6, 6, 6],
])  # fmt: skip


def test_hand_made_rows_by_hand():
    """After [1]: 2 three times, 5 once -> 2. After [1, 2]: 3 twice, 4 once -> 3. After [1, 2, 3]: 9
    and 8 once each, a tie -> 8 (the lowest). After [7]: 7 and 6 once each -> 6. Unseen -> last value."""
    table = LookupTable.fit(ROWS)
    inputs = torch.tensor([[1, 2, 3], [1, 2, 4], [7, 7, 7], [7, 6, 200], [9, 9, 9], [1, 5, 6]])
    assert table.predict(inputs).tolist() == [
        [2, 3, 8],
        [2, 3, 9],
        [6, 7, 7],
        [6, 6, 200],  # [7, 6, 200] was never seen: its last value
        [9, 9, 9],  # nothing starts with 9
        [2, 5, 6],
    ]
    assert table.found(inputs).tolist() == [
        [True, True, True],
        [True, True, True],
        [True, True, True],
        [True, True, False],
        [False, False, False],
        [True, True, False],
    ]


def test_any_input_length_positions_past_the_fitted_length_are_unseen():
    table = LookupTable.fit(ROWS)
    long = torch.tensor([[1, 2, 3, 9, 4, 4], [7, 7, 7, 7, 7, 7]])
    assert table.found(long).tolist() == [[True] * 3 + [False] * 3] * 2  # a whole row has no next value
    assert table.predict(long).tolist() == [[2, 3, 8, 9, 4, 4], [6, 7, 7, 7, 7, 7]]
    assert table.predict(long[:, :1]).tolist() == [[2], [6]]
    assert table.predict(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    assert table.predict(torch.tensor([[300, -1]])).tolist() == [[300, -1]]  # out of range: never seen


def test_matches_a_brute_force_dictionary_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 3, (2000, 6), generator=gen)  # small alphabet: prefixes repeat, ties happen
    queries = torch.cat([rows[:300, :5], torch.randint(0, 4, (300, 5), generator=gen)])
    counts: dict[tuple[int, ...], np.ndarray] = {}
    for row in rows.tolist():
        for p in range(5):
            counts.setdefault(tuple(row[: p + 1]), np.zeros(256, dtype=int))[row[p + 1]] += 1
    table = LookupTable.fit(rows)
    pred, found = table.predict(queries).tolist(), table.found(queries).tolist()
    for q, row in enumerate(queries.tolist()):
        for p in range(5):
            c = counts.get(tuple(row[: p + 1]))
            assert found[q][p] == (c is not None)
            assert pred[q][p] == (int(np.argmax(c)) if c is not None else row[p])  # np.argmax: first max


def test_predicts_each_fitted_row_wherever_its_prefix_is_unambiguous():
    rows, _ = get_family("mixed_period").generate(3000, 8, torch.Generator().manual_seed(1))
    table = LookupTable.fit(rows)
    pred = table.predict(rows[:, :-1])
    assert table.found(rows[:, :-1]).all()
    keys = [tuple(r) for r in rows.tolist()]
    nexts: dict[tuple[int, ...], set[int]] = {}
    for key in keys:
        for p in range(7):
            nexts.setdefault(key[: p + 1], set()).add(key[p + 1])
    unambiguous = torch.tensor([[len(nexts[key[: p + 1]]) == 1 for p in range(7)] for key in keys])
    assert unambiguous[:, 5:].float().mean() > 0.9  # a mixed_period row is pinned by its 6th term
    assert (pred[unambiguous] == rows[:, 1:][unambiguous]).all()


def test_prefix_tree_levels_by_hand():
    tree = PrefixTree(torch.tensor([[1, 2], [1, 3], [1, 2], [0, 9]]), np.array([1.0, 1.0, 1.0, 0.5]))
    assert [c.tolist() for c in tree.codes] == [[0], [0, 1], [9, 256 + 2, 256 + 3]]
    assert [m.tolist() for m in tree.mass] == [[3.5], [0.5, 3.0], [0.5, 2.0, 1.0]]
    assert tree.find(torch.tensor([[1, 3], [1, 4], [2, 2]])).tolist() == [[1, 2], [1, -1], [-1, -1]]
    assert tree.next_mass(1, np.array([1, -1]))[:, [2, 3, 9]].tolist() == [[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert tree.best_child(1).tolist() == [9, 2] and tree.best_child(0).tolist() == [1]
    with pytest.raises(ValueError, match="0..255"):
        PrefixTree(torch.tensor([[1, 256]]), np.ones(1))
    with pytest.raises(ValueError, match="at least one row"):
        LookupTable.fit(torch.zeros(0, 4, dtype=torch.long))


def test_lexicographic_order_across_packed_words():
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (500, 19), generator=gen)
    x[:250, :9] = 7  # ties in the first word: the order must continue into the second and third
    order = lexicographic_order(x.numpy())
    assert [tuple(r) for r in x[order].tolist()] == sorted(tuple(r) for r in x.tolist())
