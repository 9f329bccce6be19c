"""Phase 5: mechanism tasks from the literature, outside the curriculum (select them with `phases=(5,)`).

Selective copying (Mamba, Gu & Dao 2023, Table 1 / Figure 2), multi-query associative recall
(Zoology, Arora et al. 2023, Figure 2), noisy recall (MAD, Poli et al. 2024) and copying at a cued,
per-sequence lag. Unlike phases 1-4, most terms of these sequences are random (noise, keys, values);
only some next terms are determined by what came before, and only those are scored
(`Family.scored`); the ceiling there is 100 % (`Mechanism.answers`, read by `bench.data.bayes`).

The vocabulary 0..255 is split into roles shared by all four families, so a token's role can be
read off its value (a model sees the same split in every family):

    0..15     noise (noisy_recall draws it uniformly; selective_copy and mqar use only 0, the blank)
    16        separator (selective_copy: "now repeat the data")
    18..63    cues: token 16 + k asks for the term k steps back (variable_lag, k in 2..47)
    64..127   keys (mqar, noisy_recall; variable_lag's values use them too)
    128..255  values (the data of selective_copy, the values of mqar and noisy_recall)

Held-out region (translation), every family: the first value-band token (128..255) of the sequence
lies in 240..255 (`HELD_OUT_BAND`). Those values occur in training, but never as the first value,
as lag_k's band: the `ood` split asks whether the mechanism transfers to a first value never seen there.

Difficulty is the number of items (N data tokens or key-value pairs, or the largest lag K), in the
names as lag_k's (`mqar_8`); the length is the caller's (a study's `data.length`), at least
`min_length`. Since every family of this phase keeps to its own tokens (a separator only in
selective_copy, cues only in variable_lag, keys repeated only in recall), the scored answers of a
mixture of them are still determined by the prefix: `answers` claims a position only where the
prefix uses the family's own alphabet, and no two rules claim the same prefix.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from bench.data.base import VOCAB, Family, Params, check_length, in_band, randint, randint_between

NOISE = (0, 15)
BLANK = 0
SEP = 16
CUE_BASE = 16  # the cue for lag k is token CUE_BASE + k
CUES = (18, 63)
MAX_LAG = CUES[1] - CUE_BASE  # 47
KEYS = (64, 127)
VALUES = (128, 255)
FRESH = (KEYS[0], VALUES[1])  # variable_lag's values: keys and values, 192 tokens
HELD_OUT_BAND = (240, 255)  # the first value of a held-out sequence: 16 of the 128 values
UNBOUNDED = 1 << 30  # `held_out_terms` of a family whose layout depends on the whole length


def alphabet(*bands: tuple[int, int]) -> torch.Tensor:
    """BoolTensor (256,): True on the tokens of `bands` (inclusive ranges)."""
    ok = torch.zeros(VOCAB, dtype=torch.bool)
    for low, high in bands:
        ok[low:high + 1] = True
    return ok


COPY_TOKENS = alphabet((BLANK, BLANK), (SEP, SEP), VALUES)  # each family's alphabet: where its `answers` claim
RECALL_TOKENS = alphabet(NOISE, KEYS, VALUES)
LAG_TOKENS = alphabet(CUES, FRESH)


def within(inputs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """BoolTensor (B, T): does inputs[b, :p+1] use only tokens of `allowed` (a (256,) mask)?"""
    ok = ((inputs >= 0) & (inputs < VOCAB)) & allowed[inputs.clamp(0, VOCAB - 1)]
    return ok.cumprod(dim=1).bool()


def subset(n: int, m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k): k distinct integers of 0..m-1 per row, ascending, every subset equally likely."""
    return torch.rand(n, m, generator=gen).argsort(dim=1)[:, :k].sort(dim=1).values


def distinct(n: int, k: int, band: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """(n, k): k distinct tokens of `band` per row, in random order."""
    low, high = band
    return torch.rand(n, high - low + 1, generator=gen).argsort(dim=1)[:, :k] + low


def first_value_held_out(seqs: torch.Tensor) -> torch.Tensor:
    """BoolTensor (n,): the first token in VALUES lies in HELD_OUT_BAND (False for a row without one)."""
    is_value = in_band(seqs, VALUES)
    first = seqs.gather(1, is_value.int().argmax(dim=1, keepdim=True)).squeeze(1)
    return is_value.any(dim=1) & in_band(first, HELD_OUT_BAND)


class Mechanism(Family):
    """A phase-5 family: random terms around a few determined ones, which alone are scored.

    Subclasses add `answers`, the rule itself, and `scored`; `follows_rule` checks both code paths:
    the terms equal those the parameters make, and every scored term is the rule's answer from the
    observed earlier terms. The layout depends on the length, so `held_out` reads the whole row.
    """

    phase, held_out_kind = 5, "translation"
    held_out_terms = UNBOUNDED
    size: int  # the difficulty: N items, or the largest lag K
    what: str  # how the size reads in messages, e.g. "N=8 pairs"

    @abstractmethod
    def answers(self, inputs: torch.Tensor) -> torch.Tensor:
        """LongTensor (B, T): at every position p, the next term x[p+1] that the prefix inputs[b, :p+1]
        determines under this family's rule, or -1 where it determines none (on the family's own
        sequences: exactly the unscored positions). Needs no parameters and no length: it is the
        oracle any predictor could run, and the Bayes predictor's answer (`bench.data.bayes`)."""

    def validate_length(self, length: int) -> None:
        check_length(length)
        if length < self.min_length:
            raise ValueError(f"family '{self.name}' ({self.what}) needs sequence length >= {self.min_length}, "
                             f"got length {length}")

    def follows_rule(self, seqs: torch.Tensor, params: Params) -> torch.Tensor:
        made = (seqs == self.terms(params, seqs.shape[1])).all(dim=1)
        answered = (self.answers(seqs[:, :-1]) == seqs[:, 1:]) | ~self.scored(seqs)
        return made & answered.all(dim=1)

    def held_out(self, seqs: torch.Tensor) -> torch.Tensor:
        return first_value_held_out(seqs)


class SelectiveCopy(Mechanism):
    """Selective copying (Mamba, Table 1): N data tokens at random places among blanks, a separator,
    then the N data tokens again, in order. The data must be kept and the blanks skipped by content,
    whatever their spacing: the selective S6 layer solves it, the time-invariant S4 does not.

    Layout at length L: positions 0..M-1 (M = L - N - 1) hold the data at N random distinct places
    (`where`, ascending; every placement equally likely) and the blank 0 elsewhere; position M is the
    separator 16; positions M+1..L-1 repeat the data. Data tokens: i.i.d. uniform on the values
    128..255. Scored: the N predictions from the separator on, positions p = L-N-1 .. L-2 (the first
    copy is predicted at the separator). `min_length` = 3N + 1: at least as many blanks as data.
    Example (N=2, L=9, where=[1, 4], data=[200, 131]): [0, 200, 0, 0, 131, 0, 16, 200, 131], scored
    positions 6 and 7.

    Held-out region (translation): the first data token in 240..255 (probability 16/128).
    """

    group = "copying"

    def __init__(self, n_data: int) -> None:
        if n_data < 1:
            raise ValueError(f"selective_copy needs at least one data token, got {n_data}")
        self.size, self.name, self.what = n_data, f"selective_copy_{n_data}", f"N={n_data} data tokens"
        self.min_length = 3 * n_data + 1

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        where = subset(n, length - self.size - 1, self.size, gen)
        return {"where": where, "data": torch.randint(VALUES[0], VALUES[1] + 1, (n, self.size), generator=gen)}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        data, cut = params["data"], length - self.size - 1
        seqs = torch.full((data.shape[0], length), BLANK, dtype=torch.long)
        seqs[:, :cut].scatter_(1, params["where"], data)
        seqs[:, cut] = SEP
        seqs[:, cut + 1:] = data
        return seqs

    def scored(self, seqs: torch.Tensor) -> torch.Tensor:
        n, length = seqs.shape
        return (torch.arange(length - 1) >= length - self.size - 1).repeat(n, 1)

    def answers(self, inputs: torch.Tensor) -> torch.Tensor:
        """After the first separator s: the (p - s)-th data token before s (data: tokens in VALUES)."""
        n, t_len = inputs.shape
        pos = torch.arange(t_len).expand(n, -1)
        is_sep = inputs == SEP
        sep = torch.where(is_sep.any(dim=1), is_sep.int().argmax(dim=1), t_len).unsqueeze(1)
        is_data = in_band(inputs, VALUES) & (pos < sep)
        order = torch.where(is_data, pos, t_len).sort(dim=1).values  # data positions first, in order
        j = pos - sep
        src = order.gather(1, j.clamp(0, t_len - 1))
        ok = (j >= 0) & (j < is_data.sum(dim=1, keepdim=True)) & within(inputs, COPY_TOKENS)
        return torch.where(ok, inputs.gather(1, src.clamp(max=t_len - 1)), -1)


class Recall(Mechanism):
    """Associative recall: N key-value pairs, then each key asked once more, to be answered with its
    value. `mqar` (Zoology, Figure 2) keeps the pairs together at the start and fills the rest with
    blanks; `noisy_recall` (MAD) scatters pairs and queries among random noise tokens.

    Layout at length L: S = L // 2 two-token slots (the last term of an odd length is filler). A pair
    slot holds (key, value), a query slot (key, value) of the key it asks, every other slot two filler
    tokens. mqar: pairs in slots 0..N-1, queries in N random slots of N..S-1. noisy_recall: pairs in N
    random slots of the first half 0..H-1 (H = S // 2), queries in N random slots of H..S-1. The
    queries ask the keys in a random order (`order`: query j asks pair order[j]). Keys: N distinct of
    64..127; values: N distinct of 128..255, both in random order; filler: the blank 0 (mqar) or
    i.i.d. uniform noise 0..15 (noisy_recall). Scored: the N query keys (a key seen before), each
    predicting its value. `min_length`: 4N (mqar); 4N + 4 (noisy_recall: noise in both halves).
    Example (mqar, N=2, L=10, keys=[70, 90], values=[150, 201], query slots=[3, 4], order=[1, 0]):
    [70, 150, 90, 201, 0, 0, 90, 201, 70, 150], scored positions 6 and 8.
    Example (noisy_recall, N=1, L=8, keys=[70], values=[150], pair slot 1, query slot 3, noise
    [3, 9, 0, 0, 12, 5, 0, 0] under the pairs): [3, 9, 70, 150, 12, 5, 70, 150], scored position 6.

    Held-out region (translation): the first pair's value in 240..255 (probability 16/128).
    """

    group = "recall"

    def __init__(self, n_pairs: int, noisy: bool) -> None:
        if n_pairs < 1 or n_pairs > KEYS[1] - KEYS[0] + 1:
            raise ValueError(f"recall needs 1..{KEYS[1] - KEYS[0] + 1} key-value pairs, got {n_pairs}")
        self.size, self.noisy = n_pairs, noisy
        self.name = f"{'noisy_recall' if noisy else 'mqar'}_{n_pairs}"
        self.what = f"N={n_pairs} pairs"
        self.min_length = 4 * n_pairs + (4 if noisy else 0)

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        slots, size = length // 2, self.size
        if self.noisy:
            half = slots // 2
            pair_slot = subset(n, half, size, gen)
            query_slot = half + subset(n, slots - half, size, gen)
            noise = torch.randint(NOISE[0], NOISE[1] + 1, (n, length), generator=gen)
        else:
            pair_slot = torch.arange(size).repeat(n, 1)
            query_slot = size + subset(n, slots - size, size, gen)
            noise = torch.full((n, length), BLANK, dtype=torch.long)
        return {"keys": distinct(n, size, KEYS, gen), "values": distinct(n, size, VALUES, gen),
                "pair_slot": pair_slot, "query_slot": query_slot,
                "order": torch.rand(n, size, generator=gen).argsort(dim=1), "noise": noise}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        keys, values, order = params["keys"], params["values"], params["order"]
        seqs = params["noise"][:, :length].clone()
        for slot, k, v in ((params["pair_slot"], keys, values),
                           (params["query_slot"], keys.gather(1, order), values.gather(1, order))):
            seqs.scatter_(1, 2 * slot, k)
            seqs.scatter_(1, 2 * slot + 1, v)
        return seqs

    @staticmethod
    def first_seen(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, repeated), (B, T) each: the first position of the token inputs[b, p] in the row, and
        whether p is a key seen before (first < p)."""
        n, t_len = inputs.shape
        pos = torch.arange(t_len).expand(n, -1)
        first = torch.full((n, VOCAB), t_len, dtype=torch.long)
        first.scatter_reduce_(1, inputs.clamp(0, VOCAB - 1), pos, reduce="amin")
        first = first.gather(1, inputs.clamp(0, VOCAB - 1))
        return first, in_band(inputs, KEYS) & (first < pos)

    def scored(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.first_seen(seqs[:, :-1])[1]

    def answers(self, inputs: torch.Tensor) -> torch.Tensor:
        """At a key seen before: the term after its first occurrence (its value)."""
        first, repeated = self.first_seen(inputs)
        value = inputs.gather(1, (first + 1).clamp(max=max(inputs.shape[1] - 1, 0)))
        ok = repeated & in_band(value, VALUES) & within(inputs, RECALL_TOKENS)
        return torch.where(ok, value, -1)


class VariableLag(Mechanism):
    """Copying at a cued lag: distinct values, and now and then the cue 16 + k, after which the next
    term repeats the one k steps back (x_t = x_{t-k}, t the answer's position). k is drawn per
    sequence, uniform on 2..K. Every value occurs once before it is copied, and the input at every
    scored position is the same cue, so the source can only be found by its position (k back), not
    by matching content (an induction head that copies what followed the last cue is wrong).

    Layout: blocks, each r fresh values, the cue and the answer; r = k - 1 + e with e uniform on
    0..k-1 per block (`extra`), so the copied value is the block's fresh value e (0-based): always
    k - 1 terms before the cue, anywhere among the first k of its run (the run's start does not give
    it away). The last block is cut at L; a cue never falls on the last term. Fresh values: a random
    permutation of 64..255 (`values`) read in order, so all distinct up to 192 fresh terms (every
    length <= 193; beyond, the permutation is read again from its start).
    Scored: the cue positions (predicting the answer). `min_length` = 2K: a whole block of the
    longest run. Example (k=3, extra=[1, 0, 2], values=[100, 220, 64, 77, 180, 90, 101, 102, ...],
    L=12): [100, 220, 64, 19, 220, 77, 180, 19, 77, 90, 101, 102], blocks [100, 220, 64 | 19 -> 220]
    (e=1) and [77, 180 | 19 -> 77] (e=0), then a run cut at L; scored positions 3 and 7.

    Held-out region (translation): the first fresh value in 128..255 lies in 240..255.
    """

    group = "lag"

    def __init__(self, max_lag: int) -> None:
        if not 2 <= max_lag <= MAX_LAG:
            raise ValueError(f"variable_lag's largest lag must be in 2..{MAX_LAG}, got {max_lag}")
        self.size, self.name, self.what = max_lag, f"variable_lag_{max_lag}", f"lags k=2..{max_lag}"
        self.min_length = 2 * max_lag

    def sample_params(self, n: int, length: int, gen: torch.Generator) -> Params:
        k = randint(2, self.size, n, gen)
        blocks = length // 3 + 1  # every block has >= k + 1 >= 3 terms
        low = torch.zeros(n, blocks, dtype=torch.long)
        extra = randint_between(low, (k - 1).unsqueeze(1).expand(-1, blocks), gen)
        return {"k": k, "extra": extra, "values": distinct(n, FRESH[1] - FRESH[0] + 1, FRESH, gen)}

    def terms(self, params: Params, length: int) -> torch.Tensor:
        k, extra, values = params["k"].unsqueeze(1), params["extra"], params["values"]
        run = k - 1 + extra  # fresh terms of each block
        ends = torch.cumsum(run + 2, dim=1)
        fresh_before = torch.cumsum(run, dim=1) - run
        t = torch.arange(length).repeat(len(k), 1)
        block = torch.searchsorted(ends, t, right=True)
        offset = t - (ends - run - 2).gather(1, block)
        r, before = run.gather(1, block), fresh_before.gather(1, block)
        cue = (offset == r) & (t <= length - 2)
        answer = offset == r + 1
        index = torch.where(answer, before + extra.gather(1, block), before + offset) % values.shape[1]
        return torch.where(cue, CUE_BASE + k, values.gather(1, index))

    def scored(self, seqs: torch.Tensor) -> torch.Tensor:
        return in_band(seqs[:, :-1], CUES)

    def answers(self, inputs: torch.Tensor) -> torch.Tensor:
        """At a cue 16 + k: the term k - 1 steps before the cue (k steps before the answer)."""
        n, t_len = inputs.shape
        src = torch.arange(t_len) + 1 - (inputs - CUE_BASE)
        ok = in_band(inputs, CUES) & (src >= 0) & within(inputs, LAG_TOKENS)
        return torch.where(ok, inputs.gather(1, src.clamp(0, max(t_len - 1, 0))), -1)


SELECTIVE_COPY = (2, 4, 8, 16)  # data tokens N
MQAR = (2, 4, 8, 16)  # key-value pairs N
NOISY_RECALL = (2, 4, 8, 16)
VARIABLE_LAG = (4, 8, 16, 32)  # largest lag K


def all_families() -> list[Mechanism]:
    """Phase 5 in registry order: each ladder from easy to hard."""
    return [*(SelectiveCopy(n) for n in SELECTIVE_COPY), *(Recall(n, noisy=False) for n in MQAR),
            *(Recall(n, noisy=True) for n in NOISY_RECALL), *(VariableLag(k) for k in VARIABLE_LAG)]
