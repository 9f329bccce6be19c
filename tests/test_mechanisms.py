"""Phase 5, the mechanism tasks: selective copying, MQAR, noisy recall and the cued variable lag.

Each family's generator keeps to its vocabulary roles, scores exactly the determined predictions,
reproduces its docstring's worked example, has a real held-out region, and an oracle written here from
the rule alone (not from the generator's parameters, nor from `answers`) is right on every scored
position; the Bayes ceiling there is exactly 100 %."""

import math

import numpy as np
import pytest
import torch

from bench.data import FAMILIES, FAMILY_NAMES, PHASES, Bayes, ceiling, families, get_family, scored_positions
from bench.data.mechanisms import (
    HELD_OUT_BAND,
    MQAR,
    NOISY_RECALL,
    SELECTIVE_COPY,
    VARIABLE_LAG,
    Mechanism,
    Recall,
    SelectiveCopy,
    VariableLag,
)
from bench.data.registry import FAMILY_INDEX

NAMES = ([f"selective_copy_{n}" for n in SELECTIVE_COPY] + [f"mqar_{n}" for n in MQAR]
         + [f"noisy_recall_{n}" for n in NOISY_RECALL] + [f"variable_lag_{k}" for k in VARIABLE_LAG])
BEFORE = 26  # phases 1-4: their labels must not move


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lengths(name: str) -> list[int]:
    return sorted({FAMILIES[name].min_length, 64 if FAMILIES[name].min_length <= 64 else 128, 128})


# --- oracles: the rules, written per row in plain Python --------------------------------------------


def oracle(name: str, row: list[int]) -> list[int | None]:
    """The next term after each prefix row[:p+1] by the family's rule, None where the rule gives none."""
    out: list[int | None] = [None] * len(row)
    if name.startswith("selective_copy"):
        if 16 in row:
            s = row.index(16)
            data = [x for x in row[:s] if x >= 128]
            for p in range(s, min(len(row), s + len(data))):
                out[p] = data[p - s]
    elif name.startswith(("mqar", "noisy_recall")):
        value_of: dict[int, int] = {}
        for p, x in enumerate(row):
            if p and 64 <= row[p - 1] <= 127 and row[p - 1] not in value_of:
                value_of[row[p - 1]] = x  # a key's first value
            if 64 <= x <= 127 and x in value_of:
                out[p] = value_of[x]
    else:
        for p, x in enumerate(row):
            if 18 <= x <= 63:
                out[p] = row[p + 1 - (x - 16)]
    return out


def oracle_predictions(name: str, seqs: torch.Tensor) -> torch.Tensor:
    """LongTensor (n, L-1): the oracle's prediction at every position (-1 where it has none)."""
    rows = [oracle(name, row) for row in seqs[:, :-1].tolist()]
    return torch.tensor([[-1 if v is None else v for v in row] for row in rows], dtype=torch.long)


# --- registry ---------------------------------------------------------------------------------------


def test_phase_5_is_registered_after_the_lags():
    assert PHASES[-1] == 5 and [f.name for f in families(5)] == NAMES
    assert FAMILY_NAMES[BEFORE:] == NAMES and FAMILY_NAMES[BEFORE - 1] == "lag_64"
    assert all(f.phase < 5 for f in list(FAMILIES.values())[:BEFORE])
    assert {FAMILY_INDEX[n] for n in NAMES} == set(range(BEFORE, BEFORE + len(NAMES)))
    for fam in families(5):
        assert isinstance(fam, Mechanism) and fam.held_out_kind == "translation"
        assert "Held-out region (translation)" in type(fam).__doc__ and "Example" in type(fam).__doc__
    assert [FAMILIES[n].min_length for n in NAMES] == [7, 13, 25, 49, 8, 16, 32, 64, 12, 20, 36, 68, 8, 16, 32, 64]
    assert {f.group for f in families(5)} == {"copying", "recall", "lag"}


def test_bad_sizes_and_short_lengths_fail_with_one_line():
    for build, msg in ((lambda: SelectiveCopy(0), "at least one data token"),
                       (lambda: Recall(0, noisy=False), r"1\.\.64 key-value pairs"),
                       (lambda: VariableLag(48), r"2\.\.47")):
        with pytest.raises(ValueError, match=msg):
            build()
    msg = r"^family 'mqar_16' \(N=16 pairs\) needs sequence length >= 64, got length 63$"
    with pytest.raises(ValueError, match=msg):
        get_family("mqar_16").generate(2, 63, gen())
    with pytest.raises(ValueError, match=r"'variable_lag_32' \(lags k=2\.\.32\) .*>= 64"):
        get_family("variable_lag_32").validate_length(40)
    with pytest.raises(ValueError, match="at least 3"):
        get_family("selective_copy_4").generate(2, 2, gen())


# --- worked examples (the docstrings') ---------------------------------------------------------------


def long(rows):
    return torch.tensor(rows, dtype=torch.long)


EXAMPLES = [
    (SelectiveCopy(2), {"where": long([[1, 4]]), "data": long([[200, 131]])}, 9,
     [0, 200, 0, 0, 131, 0, 16, 200, 131], [6, 7]),
    (Recall(2, noisy=False), {"keys": long([[70, 90]]), "values": long([[150, 201]]), "pair_slot": long([[0, 1]]),
                              "query_slot": long([[3, 4]]), "order": long([[1, 0]]), "noise": long([[0] * 10])},
     10, [70, 150, 90, 201, 0, 0, 90, 201, 70, 150], [6, 8]),
    (Recall(1, noisy=True), {"keys": long([[70]]), "values": long([[150]]), "pair_slot": long([[1]]), "query_slot":
                             long([[3]]), "order": long([[0]]), "noise": long([[3, 9, 0, 0, 12, 5, 0, 0]])},
     8, [3, 9, 70, 150, 12, 5, 70, 150], [6]),
    (VariableLag(8), {"k": long([3]), "extra": long([[1, 0, 2, 0, 0]]),
                      "values": long([[100, 220, 64, 77, 180, 90, 101, 102, 103]])},
     12, [100, 220, 64, 19, 220, 77, 180, 19, 77, 90, 101, 102], [3, 7]),
]


@pytest.mark.parametrize(("fam", "params", "length", "want", "scored"), EXAMPLES, ids=[e[0].name for e in EXAMPLES])
def test_worked_example(fam, params, length, want, scored):
    seqs = fam.terms(params, length)
    assert seqs.tolist() == [want] and fam.check(seqs, params).all()
    assert fam.scored(seqs).nonzero()[:, 1].tolist() == scored
    assert fam.answers(seqs[:, :-1])[0, scored].tolist() == [want[p + 1] for p in scored]
    bad = seqs.clone()
    bad[0, scored[-1] + 1] = (bad[0, scored[-1] + 1] + 1) % 256  # a wrong answer breaks the rule
    assert not fam.check(bad, params).any()


# --- generators: vocabulary roles ----------------------------------------------------------------------


@pytest.mark.parametrize("n", SELECTIVE_COPY)
def test_selective_copy_roles(n):
    fam = get_family(f"selective_copy_{n}")
    for length in lengths(fam.name):
        seqs, params = fam.generate(300, length, gen(n))
        cut = length - n - 1
        body = seqs[:, :cut]
        assert ((body == 0) | (body >= 128)).all() and ((body >= 128).sum(dim=1) == n).all()
        assert (seqs[:, cut] == 16).all() and (seqs[:, cut + 1:] >= 128).all()
        data = body[body >= 128].reshape(300, n)  # in order of position
        assert torch.equal(data, seqs[:, cut + 1:]) and torch.equal(data, params["data"])
        assert fam.scored(seqs).sum(dim=1).tolist() == [n] * 300
        assert fam.scored(seqs)[0].nonzero().squeeze(1).tolist() == list(range(cut, length - 1))
    _, params = fam.generate(2000, 64, gen(1))
    assert (params["where"].flatten().bincount(minlength=64 - n - 1) > 0).all()  # data anywhere before the separator


@pytest.mark.parametrize("name", [f"mqar_{n}" for n in MQAR] + [f"noisy_recall_{n}" for n in NOISY_RECALL])
def test_recall_roles(name):
    fam = get_family(name)
    n = fam.size
    for length in lengths(name):
        seqs, params = fam.generate(300, length, gen(n))
        keys, values = params["keys"], params["values"]
        assert ((keys >= 64) & (keys <= 127)).all() and ((values >= 128) & (values <= 255)).all()  # disjoint ranges
        assert all(len(set(r)) == n for r in keys.tolist()) and all(len(set(r)) == n for r in values.tolist())
        for row, k, v in zip(seqs.tolist(), keys.tolist(), values.tolist(), strict=True):
            is_key = [64 <= x <= 127 for x in row]
            assert sorted(x for x, kk in zip(row, is_key, strict=True) if kk) == sorted(k * 2)  # each key twice
            assert all(row[p + 1] == v[k.index(row[p])] for p in range(length) if is_key[p])  # followed by its value
            filler = [x for x in row if x < 64]
            assert len(filler) == length - 4 * n and all(x <= 15 for x in filler)
            if not fam.noisy:
                assert row[: 2 * n] == [x for pair in zip(k, v, strict=True) for x in pair] and set(filler) <= {0}
        assert fam.scored(seqs).sum(dim=1).tolist() == [n] * 300
    if fam.noisy:  # noise fills the gaps, uniform on 0..15
        filler = seqs[seqs < 64]
        counts = filler.bincount(minlength=16).double()
        assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


@pytest.mark.parametrize("k_max", VARIABLE_LAG)
def test_variable_lag_roles_each_value_once(k_max):
    fam = get_family(f"variable_lag_{k_max}")
    for length in lengths(fam.name):
        seqs, params = fam.generate(300, length, gen(k_max))
        assert set(params["k"].tolist()) == set(range(2, k_max + 1))
        cue = (seqs >= 18) & (seqs <= 63)
        assert ((seqs >= 64) | cue).all()
        assert (seqs[cue] == (16 + params["k"]).unsqueeze(1).expand_as(seqs)[cue]).all()  # one cue per row: 16 + k
        assert not cue[:, -1].any() and torch.equal(fam.scored(seqs), cue[:, :-1])
        assert (cue.sum(dim=1) >= 1).all()
        answer = torch.zeros_like(cue)
        answer[:, 1:] = cue[:, :-1]
        for row, c, a in zip(seqs.tolist(), cue.tolist(), answer.tolist(), strict=True):
            fresh = [x for x, cc, aa in zip(row, c, a, strict=True) if not cc and not aa]
            assert len(set(fresh)) == len(fresh)  # each value occurs once before it is copied
    k = params["k"]
    blocks = fam.scored(seqs).sum(dim=1).double()
    assert blocks[k == 2].mean() > blocks[k == k_max].mean()  # short lags ask more often


# --- scored masks, held-out regions, the oracle ------------------------------------------------------------


def test_scored_mask_defaults_lag_and_per_set():
    const = get_family("constant").generate(3, 8, gen())[0]
    assert get_family("constant").scored(const).tolist() == [[True] * 7] * 3
    lag4 = get_family("lag_4").generate(2, 8, gen())[0]
    assert get_family("lag_4").scored(lag4).tolist() == [[False] * 3 + [True] * 4] * 2
    mqar = get_family("mqar_4").generate(2, 20, gen())[0]
    seqs = torch.cat([torch.cat([lag4, lag4[:, :4].repeat(1, 3)], dim=1), mqar])
    labels = torch.tensor([FAMILY_INDEX["lag_4"]] * 2 + [FAMILY_INDEX["mqar_4"]] * 2)
    mask = scored_positions(seqs, labels)
    assert mask.shape == (4, 19) and mask[:2].sum().item() == 2 * 16
    assert torch.equal(mask[2:], get_family("mqar_4").scored(mqar))


@pytest.mark.parametrize("name", NAMES)
def test_held_out_is_the_first_value_in_the_band(name):
    fam = get_family(name)
    length = max(64, fam.min_length)
    seqs, params = fam.generate(3000, length, gen(3), region="any")
    held = fam.held_out(seqs)
    first = [next((x for x in row if x >= 128), None) for row in seqs.tolist()]
    assert held.tolist() == [x is not None and HELD_OUT_BAND[0] <= x <= HELD_OUT_BAND[1] for x in first]
    assert 0.08 < held.double().mean().item() < 0.18  # 16 of 128 values: 12.5 %
    ood, params = fam.generate(300, length, gen(4), region="held_out")
    train, _ = fam.generate(300, length, gen(5), region="train")
    assert fam.held_out(ood).all() and not fam.held_out(train).any() and fam.check(ood, params).all()


@pytest.mark.parametrize("name", NAMES)
def test_oracle_scores_every_scored_position_and_answers_agree(name):
    fam = get_family(name)
    for length, region in ((fam.min_length, "train"), (128, "train"), (128, "held_out")):
        seqs, _ = fam.generate(200, length, gen(6), region=region)
        pred, target, mask = oracle_predictions(name, seqs), seqs[:, 1:], fam.scored(seqs)
        assert mask.any(dim=1).all() and (pred[mask] == target[mask]).all()  # 100 % where scored
        assert torch.equal(pred >= 0, mask)  # the rule determines exactly the scored predictions
        claims = fam.answers(seqs[:, :-1])
        assert torch.equal(claims >= 0, mask) and torch.equal(claims[mask], target[mask])


def test_answers_of_different_rules_never_claim_each_others_prefixes():
    """On every family's rows, any family's claims fall on that family's scored positions and are right:
    what makes the mixture's Bayes predictor exact."""
    rows = {name: get_family(name).generate(100, 128, gen(7))[0] for name in NAMES}
    for name, seqs in rows.items():
        mask, target = get_family(name).scored(seqs), seqs[:, 1:]
        for other in NAMES:
            claims = get_family(other).answers(seqs[:, :-1])
            assert not (claims >= 0)[~mask].any(), (name, other)
            assert (claims[claims >= 0] == target[claims >= 0]).all(), (name, other)


# --- the ceiling ------------------------------------------------------------------------------------------


def test_ceiling_is_exactly_100_percent_on_scored_positions_only():
    names = [n for n in NAMES if FAMILIES[n].min_length <= 64]
    table = ceiling((5,), 64, names)
    assert set(table.method) == {"exact"} and (table.se.fillna(0) == 0).all()
    overall = table[table.position.isna()]
    assert overall.accuracy.tolist() == [1.0] * (len(names) + 1) and overall.loss.tolist() == [0.0] * (len(names) + 1)
    sc = table[(table.family == "selective_copy_4") & table.position.notna()]
    assert sc.accuracy.isna().tolist() == [p < 59 for p in range(63)]  # unscored: NaN, not a number to average
    everyone = table[(table.family == "all") & table.position.notna()]
    assert everyone.accuracy.dropna().eq(1.0).all() and everyone.accuracy.isna().iloc[0]  # nobody scores position 0
    known = ceiling((5,), 64, names[:2], family_known=True, region="held_out")
    assert known[known.position.isna()].accuracy.tolist() == [1.0] * 3


def test_bayes_log_probs_put_all_mass_on_the_answer_where_scored():
    bayes = Bayes(["selective_copy_4", "mqar_4", "noisy_recall_4", "variable_lag_8"], 32)
    for name in bayes.methods:
        seqs, _ = get_family(name).generate(50, 32, gen(8))
        lp = bayes.log_probs(seqs[:, :-1]).double()
        assert torch.allclose(lp.exp().sum(-1), torch.ones(50, 31, dtype=torch.float64))
        mask = get_family(name).scored(seqs)
        assert (lp.argmax(-1)[mask] == seqs[:, 1:][mask]).all() and (lp.max(-1).values[mask] == 0).all()
        assert torch.allclose(lp[~mask], torch.full_like(lp[~mask], -math.log(256)))  # not modelled: uniform
    assert set(bayes.methods.values()) == {"exact"}
    with pytest.raises(ValueError, match=r"cannot share a Bayes predictor with lag_1: use family_known=True"):
        Bayes(["lag_1", "mqar_4"], 32)
    table = ceiling((4, 5), 32, ["lag_1", "mqar_4"], family_known=True)
    assert np.allclose(table[table.position.isna()].accuracy, 1.0)
