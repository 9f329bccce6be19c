"""Representation similarity from cka.parquet (linear CKA between every pair of final models and
layers, computed at collection): means over seeds by kind of pair, the last blocks' matrix, and the
floors that say what unrelated representations score here (the embedding's from cka_floor.parquet)."""

from __future__ import annotations

import numpy as np
import pandas as pd

CKA_KINDS = {  # cka_means' kind -> what a pair of that kind is
    "architectures": "two architectures on the same seed",
    "architectures_across_seeds": "two architectures on different seeds",
    "seeds": "one architecture on two different seeds",
    "model": "one model against itself (one seed)",
}


def cka_means(cka: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds (or seed pairs) of the layer × layer CKA of every ordered pair of architectures:
    arch_a, layer_a, arch_b, layer_b, kind (`CKA_KINDS`), last (both layers are their model's last
    block), cka, pairs (model pairs averaged). 'model' rows only for an architecture with one seed."""
    depth = pd.concat([cka[["arch_a", "seed", "layer_a"]].set_axis(["arch", "seed", "layer"], axis=1),
                       cka[["arch_b", "seed_b", "layer_b"]].set_axis(["arch", "seed", "layer"], axis=1)]
                      ).groupby(["arch", "seed"])["layer"].max()
    last = ((cka.set_index(["arch_a", "seed"]).index.map(depth) == cka["layer_a"].to_numpy())
            & (cka.set_index(["arch_b", "seed_b"]).index.map(depth) == cka["layer_b"].to_numpy()))
    t = cka.assign(last=np.asarray(last, dtype=bool))
    same_seed, same_arch = t.seed == t.seed_b, t.arch_a == t.arch_b
    kind = np.select([same_seed & ~same_arch, ~same_seed & ~same_arch, ~same_seed & same_arch],
                     ["architectures", "architectures_across_seeds", "seeds"], "model")
    t = t.assign(kind=kind)
    t = t[(t.kind != "model") | ~t.arch_a.isin(set(t.loc[t.kind == "seeds", "arch_a"]))]
    keys = ["arch_a", "layer_a", "arch_b", "layer_b", "kind", "last"]
    return t.groupby(keys, as_index=False)["cka"].agg(cka="mean", pairs="size")


def cka_floors(cka: pd.DataFrame, floor: pd.DataFrame | None, configs: pd.DataFrame) -> dict[str, float]:
    """What unrelated representations score, at the widest d_model d of the study: 'rows', the Gaussian
    floor √(d·d)/n over the table's n rows (`bench.analysis.cka.linear_cka`), and 'embedding' with
    'distinct_tokens', two independent random embedding tables on the probe tokens, the floor for
    layer 0, whose rows repeat tokens (stored by collection in cka_floor.parquet, per d_model, on the
    same probe rows); each left out where it cannot be had."""
    if "d_model" not in configs or not configs["d_model"].notna().any() or "n" not in cka:
        return {}
    d, rows = int(configs["d_model"].max()), int(cka["n"].max())
    floors = {"rows": d / rows}
    if floor is not None and {"d_model", "rows", "embedding", "distinct_tokens"} <= set(floor.columns):
        match = floor[(floor["d_model"] == d) & (floor["rows"] == rows)]  # the same probe the table was computed on
        if len(match):
            floors["embedding"] = float(match["embedding"].iloc[0])
            floors["distinct_tokens"] = float(match["distinct_tokens"].iloc[0])
    return floors


def cka_layer_kinds(means: pd.DataFrame) -> tuple[str, str]:
    """The kinds the layer × layer figure shows: off the diagonal two architectures on different seeds
    where there are several seeds (on one seed, layer 0 mostly measures the shared initialisation of the
    embedding, so early layers would look alike for that reason alone), and on the diagonal one
    architecture on two seeds; with one seed, same-seed pairs and each model against itself."""
    kinds = set(means.kind)
    return ("architectures_across_seeds" if "architectures_across_seeds" in kinds else "architectures",
            "seeds" if "seeds" in kinds else "model")


def cka_last_matrix(means: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Architecture × architecture CKA of the last blocks (`cka_means`), rows and columns in `order`:
    two architectures on the same seed off the diagonal, one architecture on two seeds on it (1 with
    one seed)."""
    diagonal = "seeds" if (means.kind == "seeds").any() else "model"
    last = means[means["last"] & means.kind.isin(["architectures", diagonal])]
    archs = [a for a in order if a in set(last.arch_a)]
    return last.pivot_table(index="arch_a", columns="arch_b", values="cka", aggfunc="mean").reindex(
        index=archs, columns=archs)
