"""The published findings the mechanism reports check (`bench.report.mechanisms`), each tied to its
paper, table or figure, the numbers reported there, and which of this suite's mixers stand for the
paper's layers.

The mapping, from bench/models and ../ARCHITECTURES.md: `mamba` is the Mamba block with the
selective S6 scan; `s4d` a time-invariant (LTI) diagonal S4 layer, the paper's "S4"; `sgconv` a
long time-invariant convolution, the closest to Hyena's long convolution (Hyena adds input gates;
sgconv's state is a window of past inputs, not a fixed size, so it never stands for a fixed-state
recurrence); `stable_ssm` a time-invariant linear recurrence (RWKV- and RetNet-like in having a
fixed decay); `transformer` and `ntk_attention` attention. A claim about a layer the suite lacks
(H3, RWKV, BaseConv) is checked on its closest mixer only, and says so. Widths: the papers trained
at d_model 64 and up, so a claim is read at this study's widest width (d64) unless it is about
how accuracy changes with width. A row marked `hypothesis` states what a benchmark's task was
designed to expose, where the paper's per-mixer numbers are not transcribed here; its verdict is
about the hypothesis, not a published number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAMBA_T1 = "Mamba (Gu & Dao 2023, arXiv 2312.00752), Table 1"
ZOOLOGY_F2 = "Zoology (Arora et al. 2023, arXiv 2312.04927), Figure 2"
MAD = "MAD (Poli et al. 2024, arXiv 2403.17844), noisy in-context recall"


@dataclass(frozen=True)
class Claim:
    """One finding: `kind` solves (a), order (a > b) or grows (a with width), on the study's families
    of `task` (selective_copy, mqar, noisy_recall), at the widths `where` (all, narrowest, widest)."""

    task: str
    kind: str
    a: str
    b: str | None
    where: str
    source: str
    published: str
    hypothesis: bool = False  # the task's design intent, not a transcribed result

    def families(self, names: Iterable[str]) -> list[str]:
        return sorted(n for n in names if n.rsplit("_", 1)[0] == self.task)

    @property
    def text(self) -> str:
        return {"solves": f"{self.a} solves it (≥ 90 %)", "order": f"{self.a} > {self.b}",
                "grows": f"{self.a} gains with width"}[self.kind]


CLAIMS = (
    Claim("selective_copy", "solves", "mamba", None, "widest", MAMBA_T1,
          "the selective S6 layer solves selective copying: 99.8 % in the Mamba block, 97.0 % without a gate "
          "(length 4096, 16 data tokens from a vocabulary of 16, 2 layers at D = 64, 400k steps)"),
    Claim("selective_copy", "order", "mamba", "s4d", "widest", MAMBA_T1,
          "the time-invariant S4 layer does not: 56.4 % in the Mamba block, 18.3 % without a gate (S6: 99.8 / 97.0 %)"),
    Claim("selective_copy", "order", "mamba", "sgconv", "widest", MAMBA_T1,
          "Hyena's long convolution does not either: 28.4 % in the Mamba block, 30.1 % in H3 (sgconv stands for "
          "the long convolution)"),
    Claim("mqar", "solves", "transformer", None, "widest", ZOOLOGY_F2,
          "attention solves MQAR at every width tried (d_model 64 to 512) and every length (64 to 512, 4 to 64 "
          "pairs): about 100 %"),
    *(Claim("mqar", "order", "transformer", b, "widest", ZOOLOGY_F2,
            f"gated convolutions and recurrences (H3, Hyena, RWKV, BaseConv) fall below attention at the widths where "
            f"attention solves it; {b} stands for them") for b in ("sgconv", "s4d", "stable_ssm")),
    *(Claim("mqar", "grows", a, None, "all", ZOOLOGY_F2,
            f"a fixed-state recurrence needs more width (state) to recall more pairs: Zoology's gated models gain "
            f"with d_model, and Based (Arora et al. 2024, arXiv 2402.18668, Figure 2) plots recall rising with "
            f"recurrent state size; {a} stands for them") for a in ("mamba", "s4d", "stable_ssm")),
    Claim("noisy_recall", "order", "transformer", "sgconv", "widest", MAD,
          "attention, which selects by content, recalls through the interleaved noise better than a long "
          "convolution whose filter does not depend on the input", hypothesis=True),
    Claim("noisy_recall", "order", "mamba", "s4d", "widest", MAD,
          "an input-dependent (selective) recurrence recalls through the noise better than a time-invariant one",
          hypothesis=True),
    Claim("noisy_recall", "order", "mamba", "sgconv", "widest", MAD,
          "likewise against the time-invariant long convolution", hypothesis=True),
)
