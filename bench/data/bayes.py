"""The Bayes-optimal next-term predictor of a family mixture, and the ceiling table it scores.

A model that knows every family's parameter distribution, but not which family a sequence comes
from, predicts x[p+1] from x[0..p] by

    P(x[p+1] = v | x[0..p])  ∝  Σ_f w_f · P_f(x[0..p], v),

P_f(prefix) being the probability that a sequence of family f, conditioned on the region (`train`:
not `held_out`; `held_out`; `any`), starts with that prefix, and w_f the family's share of the
stream (equal by default, as a single-phase training stream mixes them). No predictor does better
on average: its argmax accuracy and its cross-entropy are the ceiling (and the floor) of every
model on those sequences. `family_known=True` is the same with the true family's distribution only.
Ties in the argmax go to the lowest value (torch.argmax's rule); a prefix of zero mass (no
sequence of the mixture starts with it) gets the uniform distribution.

Where P_f comes from, per family (`Bayes.methods`):

* a `support(length)` (`bench.data.base.Support`): exact; restricted to the region with
  `Support.restrict` and merged into one `PrefixTree` over all families, weights w_f · prob;
* the optional *prefix-mass protocol*, for families too large to enumerate: `prefix_mass(prefixes
  (n, q), region) -> DoubleTensor (n,)` (the probability above) and `next_distribution(inputs
  (B, T), region) -> (DoubleTensor (B, T), DoubleTensor (B, T, 256))`, for all positions p at once
  the log prefix_mass of inputs[b, :p+1] and the next term's conditional distribution given it
  (their product is the prefix_mass of each one-term extension). A family with it is exact without
  a support (`bench.data.memory.Lag`: 256^k parameter settings, closed-form masses);
* the optional *answer protocol*, for families whose scored next terms are determined by the prefix
  (`bench.data.mechanisms`, phase 5): `answers(inputs (B, T)) -> LongTensor (B, T)`, the next term
  each prefix determines, -1 where it determines none. Their ceiling on scored positions is 100 % by
  construction, so there is nothing to enumerate: the predictor puts all mass on the answer where
  some family claims one (no two claim the same prefix: each answers only on prefixes of its own
  alphabet, and same-rule families agree) and is uniform elsewhere, i.e. at the unscored positions
  (noise, keys, fresh values), which no model is scored on and which it does not model. Such
  families can only share a predictor with families like them (else ValueError; `family_known=True`
  mixes anything);
* neither (a continuous parameter, e.g. floor_geometric): `monte_carlo`, a plug-in support of
  `mc_draws` draws from generator("ceiling", seed, family, length, region), each of mass 1/mc_draws.
  The predictor is then mixed with the uniform at weight 1/mc_draws, so a continuation the draws
  never showed costs ln(256 · mc_draws) nats instead of an infinite loss; argmaxes do not change.

`ceiling` scores the predictor per family and position. A family with a support is enumerated:
accuracy(p) = Σ_{prefix, v} P_f(prefix, v) · [v = argmax], loss(p) = -Σ P_f(prefix, v) ·
log P(v | prefix), se 0; its method is "exact" only if every family of the predictor is exact (else
the predictor is a plug-in estimate: "monte_carlo", though the scoring itself has no sampling error).
Other families are scored on `score_draws` independent draws (the same stream, after the plug-in's
draws): a plug-in family by its targets (binomial se), a prefix-mass family
Rao-Blackwellised, by the exact conditional of each drawn prefix (accuracy P_f(argmax | prefix),
loss -Σ_v P_f(v | prefix) log P(v | prefix): only the prefixes are sampled); both "monte_carlo".
An answer family is scored on the same number of draws as a prefix-mass family, on its scored
positions only (`Family.scored`): a position no draw scores has NaN accuracy and loss, the family's
mean (position <NA>) is over its scored predictions, and "all" averages, per position, the families
that score it. Its method is "exact" (the draws only say where the answers are; each is certain).

    table = ceiling((2,), 8)          # phase 2 at length 8: exact, a few seconds
    table.query("family == 'all' and position.isna()")   # the mixture's accuracy and loss floor
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from bench.data.base import REGIONS, VOCAB, Family, Support
from bench.data.lookup import PrefixTree
from bench.data.registry import FAMILIES, FAMILY_INDEX, get_family
from bench.data.registry import families as registry_families
from bench.seeding import generator

EXACT, MONTE_CARLO = "exact", "monte_carlo"
CHUNK = 1 << 21  # elements of a (rows, positions, 256) block evaluated at once


def score_draws(mc_draws: int, prefix_mass: bool = False) -> int:
    """Sequences a non-enumerable family is scored on: a twentieth of the plug-in's draws (>= 1000);
    a prefix-mass family a two-hundredth (>= 1000): scored Rao-Blackwellised, its per-row values vary
    only through rare coincidences (e.g. a lag-4 prefix that also repeats at lag 2)."""
    return max(1000, mc_draws // (200 if prefix_mass else 20))


@functools.lru_cache(maxsize=64)
def region_support(family: Family, length: int, region: str) -> Support | None:
    """`family.support(length)` conditioned on `region` (None where the family has no support)."""
    support = family.support(length)
    if support is None or region == "any":
        return support
    held = family.held_out(support.seqs)
    return support.restrict(held if region == "held_out" else ~held)


@functools.lru_cache(maxsize=16)
def draws(family: Family, length: int, region: str, n: int, seed: int, skip: int = 0) -> torch.Tensor:
    """n sequences of `family` in `region` from generator("ceiling", seed, family, length, region),
    after the first `skip` (so the scoring draws are independent of a plug-in fit on the first)."""
    gen = generator("ceiling", seed, family.name, length, region)
    if skip:
        family.generate(skip, length, gen, region=region)
    return family.generate(n, length, gen, region=region)[0]


def has_answers(family: Family) -> bool:
    return callable(getattr(family, "answers", None))


def has_prefix_mass(family: Family) -> bool:
    return callable(getattr(family, "prefix_mass", None)) and callable(getattr(family, "next_distribution", None))


def source(family: Family, length: int, region: str, mc_draws: int, seed: int) -> tuple[str, Support | None]:
    """(method, support): the exact region support, None for a prefix-mass or answer family, or the plug-in."""
    if has_answers(family):
        return EXACT, None
    support = region_support(family, length, region)
    if support is not None or has_prefix_mass(family):
        return EXACT, support
    seqs = draws(family, length, region, mc_draws, seed)
    return MONTE_CARLO, Support(seqs, torch.full((mc_draws,), 1 / mc_draws, dtype=torch.float64), {})


class Mixture:
    """Log P(v | prefix) of Σ_f w_f P_f: one PrefixTree for the families with a support, plus the
    prefix-mass families' `next_distribution` (prefix masses rescaled per prefix before they are summed)."""

    def __init__(self, members: Sequence[tuple[Family, float, Support | None]], length: int, region: str,
                 smooth: float) -> None:
        self.answering = [f for f, _, _ in members if has_answers(f)]
        if self.answering and len(self.answering) < len(members):
            others = [f.name for f, _, _ in members if not has_answers(f)]
            raise ValueError(f"families with determined answers ({', '.join(f.name for f in self.answering)}) "
                             f"cannot share a Bayes predictor with {', '.join(others)}: use family_known=True")
        tabled = [(w, s) for _, w, s in members if s is not None]
        self.tree = None
        if tabled:
            seqs = torch.cat([s.seqs for _, s in tabled])
            weight = torch.cat([w * s.prob for w, s in tabled])
            self.tree = PrefixTree(seqs, weight.numpy())
        self.analytic = [(f, math.log(w)) for f, w, s in members if s is None and not has_answers(f)]
        self.length, self.region, self.smooth = length, region, smooth

    @functools.cached_property
    def best(self) -> list[np.ndarray]:
        """best[p]: the argmax next value after each (p+1)-term prefix of the tree (ties lowest)."""
        return [self.tree.best_child(q) for q in range(1, self.length)]

    def row_scores(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and loss (n, L-1) of whole rows without the 256-wide distribution: the argmax is
        the prefix node's best child, P(next | prefix) = mass(child) / mass(node) (uniform after a
        prefix of zero mass, as `log_probs`). Only for a mixture without prefix-mass families."""
        ids, x = self.tree.find(seqs), seqs.numpy()
        acc, prob = [], []
        for p in range(self.length - 1):
            node, child, seen = ids[:, p], ids[:, p + 1], ids[:, p] >= 0
            best = np.where(seen, self.best[p][node.clip(min=0)], 0)
            ratio = np.where(child >= 0, self.tree.mass[p + 2][child] / self.tree.mass[p + 1][node], 0.0)
            acc.append(x[:, p + 1] == best)
            prob.append(np.where(seen, (1 - self.smooth) * ratio + self.smooth / VOCAB, 1 / VOCAB))
        with np.errstate(divide="ignore"):
            loss = -np.log(np.stack(prob, axis=1))
        return torch.from_numpy(np.stack(acc, axis=1)).double(), torch.from_numpy(loss)

    def log_probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """float64 (B, T, 256), evaluated in row chunks of about CHUNK elements."""
        if not inputs.numel():
            return torch.zeros(*inputs.shape, VOCAB, dtype=torch.float64)
        rows = max(1, CHUNK // (VOCAB * inputs.shape[1]))
        return torch.cat([self.probs(chunk).log() for chunk in inputs.split(rows)])

    def answer(self, inputs: torch.Tensor) -> torch.Tensor:
        """LongTensor (B, T): the answer some family claims for each prefix (-1: none), answer families only."""
        out = torch.full(inputs.shape, -1, dtype=torch.long)
        for family in self.answering:
            out = torch.where(out >= 0, out, family.answers(inputs))
        return out

    def probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """P(x[p+1] = v | x[0..p]), float64 (B, T, 256), in one block."""
        n, t_len = inputs.shape
        if self.answering:  # all mass on a claimed answer, uniform where none is claimed
            answer = self.answer(inputs)
            hot = torch.zeros(n, t_len, VOCAB, dtype=torch.float64).scatter_(2, answer.clamp(min=0).unsqueeze(2), 1.0)
            return torch.where((answer >= 0).unsqueeze(2), hot, 1 / VOCAB)
        mass = torch.zeros(n, t_len, VOCAB, dtype=torch.float64)
        if self.tree is not None:
            ids = self.tree.find(inputs)
            mass = torch.from_numpy(np.stack([self.tree.next_mass(p + 1, ids[:, p]) for p in range(t_len)], axis=1))
        if self.analytic:  # prefix masses rescaled by the largest, so that nothing underflows
            parts = [family.next_distribution(inputs, self.region) for family, _ in self.analytic]
            logs = [log_w + prefix for (_, log_w), (prefix, _) in zip(self.analytic, parts, strict=True)]
            peak = torch.stack(logs).amax(dim=0)
            if self.tree is not None:
                peak = torch.maximum(peak, mass.sum(dim=2).log())
            peak = torch.where(peak > -math.inf, peak, 0.0)
            mass = mass * torch.exp(-peak).unsqueeze(2)
            for log_prefix, (_, nxt) in zip(logs, parts, strict=True):
                mass.addcmul_(nxt, torch.exp(log_prefix - peak).unsqueeze(2))
        total = mass.sum(dim=2, keepdim=True)
        prob = torch.where(total > 0, mass / total, 1 / VOCAB)
        return (1 - self.smooth) * prob + self.smooth / VOCAB


@functools.lru_cache(maxsize=16)
def build_mixture(families: tuple[Family, ...], weights: tuple[float, ...], length: int, region: str,
                  mc_draws: int, seed: int) -> Mixture:
    sources = [source(f, length, region, mc_draws, seed) for f in families]
    smooth = 1 / mc_draws if any(m == MONTE_CARLO for m, _ in sources) else 0.0
    members = [(f, w, s) for f, w, (_, s) in zip(families, weights, sources, strict=True)]
    return Mixture(members, length, region, smooth)


def resolve(families: Sequence[Family | str]) -> tuple[Family, ...]:
    out = tuple(get_family(f) if isinstance(f, str) else f for f in families)
    if not out:
        raise ValueError("the Bayes predictor needs at least one family")
    if len({f.name for f in out}) != len(out):
        raise ValueError(f"families must not repeat, got {[f.name for f in out]}")
    return out


def normalise(weights: Sequence[float] | None, n: int) -> tuple[float, ...]:
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weights must be {n} positive numbers, one per family, got {weights}")
    return tuple(float(x) for x in w / w.sum())


class Bayes:
    """The Bayes-optimal next-term predictor of `families` (objects or names) at `length`, see the
    module docstring. `log_probs(inputs (B, T))`, T <= length - 1, gives log P(x[p+1] = v | x[0..p])
    as a FloatTensor (B, T, 256); with `family_known=True` pass `family` (B,) labels too: the global
    FAMILY_INDEX of a registered family (a family outside the registry: its position in `families`).
    `methods` maps each family name to "exact" or "monte_carlo".
    """

    def __init__(self, families: Sequence[Family | str], length: int, *, region: str = "train",
                 weights: Sequence[float] | None = None, family_known: bool = False, mc_draws: int = 200_000,
                 seed: int = 0) -> None:
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        if mc_draws < 1:
            raise ValueError(f"mc_draws must be positive, got {mc_draws}")
        self.families = resolve(families)
        for f in self.families:
            f.validate_length(length)
        self.weights = normalise(weights, len(self.families))
        self.length, self.region, self.family_known = length, region, family_known
        self.mc_draws, self.seed = mc_draws, seed
        self.labels = [FAMILY_INDEX[f.name] if FAMILIES.get(f.name) is f else i for i, f in enumerate(self.families)]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("family labels collide: mix registered families with unregistered ones by name only")
        self.methods = {f.name: source(f, length, region, mc_draws, seed)[0] for f in self.families}
        self.mixture = None if family_known else build_mixture(self.families, self.weights, length, region,
                                                                mc_draws, seed)

    def own(self, family: Family) -> Mixture:
        """The predictor that knows the sequence is from `family` (its own distribution only)."""
        return build_mixture((family,), (1.0,), self.length, self.region, self.mc_draws, self.seed)

    def log_probs(self, inputs: torch.Tensor, family: torch.Tensor | None = None) -> torch.Tensor:
        """log P(x[p+1] = v | x[0..p]) as FloatTensor (B, T, 256) (computed in float64)."""
        if inputs.dim() != 2 or inputs.shape[1] > self.length - 1:
            raise ValueError(f"inputs must be (B, T) with T <= length - 1 = {self.length - 1}, "
                             f"got shape {tuple(inputs.shape)}")
        inputs = inputs.long().cpu()
        if self.mixture is not None:
            if family is not None:
                raise ValueError("family labels are only read with family_known=True")
            return self.mixture.log_probs(inputs).float()
        if family is None or family.shape != (inputs.shape[0],):
            raise ValueError("family_known=True needs family labels, one per input row")
        unknown = set(family.tolist()) - set(self.labels)
        if unknown:
            raise ValueError(f"family labels {sorted(unknown)} are not among this predictor's families")
        out = torch.empty(*inputs.shape, VOCAB)
        for label, fam in zip(self.labels, self.families, strict=True):
            rows = family.cpu() == label
            if rows.any():
                out[rows] = self.own(fam).log_probs(inputs[rows]).float()
        return out


def element_scores(predictor: Mixture, seqs: torch.Tensor, own: Mixture | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, position) accuracy and loss (float64 (n, L-1)) of `predictor` on rows `seqs`.

    Without `own`: [argmax = next term] and -log P(next term). With `own` (the row's family's own
    predictor, exact): Rao-Blackwellised, the expectation over the next term given the prefix,
    P_own(argmax | prefix) and -Σ_v P_own(v | prefix) log P(v | prefix).
    """
    if own is None and not predictor.analytic:
        return predictor.row_scores(seqs)
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    rows = max(1, CHUNK // (VOCAB * max(1, inputs.shape[1])))
    acc, loss = [], []
    for x, y in zip(inputs.split(rows), targets.split(rows), strict=True):
        prob = predictor.probs(x)
        log_p, pred = prob.log(), prob.argmax(dim=2, keepdim=True)
        if own is None:
            acc.append((pred.squeeze(2) == y).double())
            loss.append(-log_p.gather(2, y.unsqueeze(2)).squeeze(2))
        else:
            p_own = prob if own is predictor else own.probs(x)
            acc.append(p_own.gather(2, pred).squeeze(2))
            loss.append(-torch.where(p_own > 0, p_own * log_p, 0.0).sum(dim=2))
    return torch.cat(acc), torch.cat(loss)


def answer_ceiling(bayes: Bayes, family: Family, predictor: Mixture) -> dict[str, object]:
    """`family_ceiling` of an answer family: its scored positions of `score_draws` draws (NaN where none
    is scored); a hit costs 0 nats, an unclaimed prefix ln 256 (uniform), a wrong claim infinity."""
    seqs = draws(family, bayes.length, bayes.region, score_draws(bayes.mc_draws, True), bayes.seed)
    pred, target, mask = predictor.answer(seqs[:, :-1]), seqs[:, 1:], family.scored(seqs)
    hit = pred == target
    loss = torch.where(hit, 0.0, torch.where(pred < 0, math.log(VOCAB), math.inf)).double()
    cols = []
    for value in (hit.double(), loss):
        per_position = torch.where(mask, value, 0.0).sum(0) / mask.sum(0)  # 0 / 0: NaN, never scored
        cols.append(torch.cat([per_position, value[mask].mean().reshape(1)]).numpy())
    return {"accuracy": cols[0], "loss": cols[1], "se": np.zeros(bayes.length), "method": EXACT}


def family_ceiling(bayes: Bayes, family: Family) -> dict[str, object]:
    """accuracy, loss, se: float64 arrays (L,) = the L-1 positions then their mean; and the method."""
    length, region, mc_draws, seed = bayes.length, bayes.region, bayes.mc_draws, bayes.seed
    predictor = bayes.own(family) if bayes.family_known else bayes.mixture
    if has_answers(family):
        return answer_ceiling(bayes, family, predictor)
    used = [bayes.methods[family.name]] if bayes.family_known else list(bayes.methods.values())
    support = region_support(family, length, region)
    if support is not None:
        acc, loss = element_scores(predictor, support.seqs)
        w = support.prob.unsqueeze(1)
        acc, loss = (w * acc).sum(0), (w * loss).sum(0)
        cols = [torch.cat([v, v.mean().reshape(1)]).numpy() for v in (acc, loss)]
        method = EXACT if set(used) == {EXACT} else MONTE_CARLO
        return {"accuracy": cols[0], "loss": cols[1], "se": np.zeros(length), "method": method}
    plug_in = bayes.methods[family.name] == MONTE_CARLO
    seqs = draws(family, length, region, score_draws(mc_draws, not plug_in), seed, mc_draws if plug_in else 0)
    acc, loss = element_scores(predictor, seqs, None if plug_in else bayes.own(family))
    scored = family.scored(seqs)
    if not bool(scored.all()):  # e.g. a lag's first k values: no row at those positions, as in the results
        return _scored_ceiling(acc, loss, scored)
    acc = torch.cat([acc, acc.mean(dim=1, keepdim=True)], dim=1)  # the last column: each row's mean
    loss = torch.cat([loss, loss.mean(dim=1, keepdim=True)], dim=1)
    se = acc.std(dim=0, correction=0) / math.sqrt(len(seqs))  # binomial sqrt(a(1-a)/n) for 0/1 scores
    return {"accuracy": acc.mean(0).numpy(), "loss": loss.mean(0).numpy(), "se": se.numpy(), "method": MONTE_CARLO}


def _scored_ceiling(acc: torch.Tensor, loss: torch.Tensor, scored: torch.Tensor) -> dict[str, object]:
    """`family_ceiling`'s columns from per-draw scores (n, L-1) where only `scored` positions count
    (`Family.scored`), as every metric counts them: NaN at a position no draw scores, and the last
    column the mean over the scored predictions (pooled, as the results' "all positions" rows)."""
    w = scored.double()
    per_pos = [torch.where(w.sum(0) > 0, (v.double() * w).sum(0) / w.sum(0), torch.nan) for v in (acc, loss)]
    pooled = [(v.double() * w).sum() / w.sum() for v in (acc, loss)]
    cols = [torch.cat([p, q.reshape(1)]).numpy() for p, q in zip(per_pos, pooled, strict=True)]
    a = torch.cat([per_pos[0], pooled[0].reshape(1)])
    n = torch.cat([w.sum(0), w.sum().reshape(1)])
    se = torch.sqrt(a * (1 - a) / n.clamp(min=1))  # binomial, over the scored predictions
    return {"accuracy": cols[0], "loss": cols[1], "se": se.numpy(), "method": MONTE_CARLO}


def select(phases: Sequence[int], families: Sequence[Family | str] | None) -> tuple[Family, ...]:
    """The families of `phases` (registry order), or those of `families`, each checked to be in `phases`."""
    chosen = tuple(f for p in phases for f in registry_families(p)) if families is None else resolve(families)
    outside = [f.name for f in chosen if f.phase not in tuple(phases)]
    if outside:
        raise ValueError(f"families {outside} are not in phases {tuple(phases)}")
    return chosen


def ceiling(phases: Sequence[int], length: int, families: Sequence[Family | str] | None = None, *,
            region: str = "train", family_known: bool = False, weights: Sequence[float] | None = None,
            mc_draws: int = 200_000, seed: int = 0) -> pd.DataFrame:
    """The Bayes predictor's accuracy and cross-entropy (nats) per family and position, tidy.

    Columns family, position (p predicts x[p+1]; <NA> = the mean over positions), accuracy, loss,
    method ("exact" | "monte_carlo"), se (standard error of accuracy; 0 where enumerated). Rows with
    family "all" are the mixture: families averaged with the predictor's weights (per position, over
    the families that score it: NaN marks an unscored position), se combined as independent.
    `families` None = every family of `phases`. See the module docstring.
    """
    bayes = Bayes(select(phases, families), length, region=region, weights=weights, family_known=family_known,
                  mc_draws=mc_draws, seed=seed)
    scores = {f.name: family_ceiling(bayes, f) for f in bayes.families}
    stacked = {k: np.stack([s[k] for s in scores.values()]) for k in ("accuracy", "loss", "se")}
    scored = ~np.isnan(stacked["accuracy"])
    w = np.where(scored, np.asarray(bayes.weights)[:, None], 0.0)
    total = w.sum(0)  # per position over the families that score it (0: none does, the row is NaN)
    methods = {s["method"] for s in scores.values()}
    with np.errstate(invalid="ignore", divide="ignore"):
        scores["all"] = {"accuracy": (w * np.nan_to_num(stacked["accuracy"])).sum(0) / total,
                         "loss": (w * np.where(scored, stacked["loss"], 0.0)).sum(0) / total,
                         "se": np.sqrt((w**2 * stacked["se"] ** 2).sum(0)) / total,
                         "method": EXACT if methods == {EXACT} else MONTE_CARLO}
    position = pd.array([*range(length - 1), pd.NA], dtype="Int64")
    table = pd.concat([pd.DataFrame({"family": name, "position": position, "accuracy": s["accuracy"],
                                     "loss": s["loss"], "method": s["method"], "se": s["se"]})
                       for name, s in scores.items()], ignore_index=True)
    return table
