"""What every trial of one worker shares: the curriculum, the fixed test set, the validation sets
(identical for every architecture of a seed, built once) and the device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.data import Curriculum, SequenceSet, TrainStream, make_test_set, validation_set
from bench.experiment.config import Config, ConfigError
from bench.metrics import score_logits
from bench.train import distance_weighted_ce

PROBE_SEQUENCES = 256  # test sequences the memory-decay and CKA probes average over (spread over every family)


def resolve_device(name: str) -> torch.device:
    """`device=auto` is CUDA when there is one; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def probe_tokens(test: SequenceSet) -> torch.Tensor:
    """The inputs (N, L-1) of the PROBE_SEQUENCES test sequences every probe of the final models uses:
    spread evenly over the test set, hence over every family."""
    index = torch.linspace(0, len(test) - 1, min(PROBE_SEQUENCES, len(test))).round().long().unique()
    return test.seqs[index, :-1]


@dataclass
class Context:
    """Data, validation sets and test set of a study on one device; the same for every architecture."""

    cfg: Config
    device: torch.device
    curriculum: Curriculum
    test: SequenceSet
    val_cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> Context:
        curriculum = cfg.curriculum()
        test = make_test_set(curriculum.phases, cfg.data.length, cfg.data.test_per_family, cfg.data.eval_seed,
                             curriculum.families)
        return cls(cfg, device, curriculum, test)

    def stream(self, seed: int) -> TrainStream:
        d, t = self.cfg.data, self.cfg.train
        return TrainStream(self.curriculum, d.length, t.batch_size, seed, steps_per_epoch=t.val_every)

    def validator(self, seed: int) -> Callable[[torch.nn.Module, int, float], dict[str, float]]:
        """Validation `index` of `seed`: fresh sequences drawn once, then scored for every model."""
        d, t = self.cfg.data, self.cfg.train

        def validate(model: torch.nn.Module, index: int, epoch: float) -> dict[str, float]:
            if (seed, index) not in self.val_cache:
                fresh = validation_set(self.curriculum, d.length, seed, index, epoch, d.val_size)
                self.val_cache[(seed, index)] = fresh.seqs.to(self.device)
            seqs = self.val_cache[(seed, index)]
            logits = model(seqs[:, :-1])
            scores = {k: v.mean().item() for k, v in score_logits(logits, seqs[:, 1:]).items()}
            return {"val_loss": distance_weighted_ce(logits, seqs[:, 1:], t.alpha, t.distance_weight).item(),
                    "val_ce": scores["loss"], "val_accuracy": scores["accuracy"],
                    "val_distance_error": scores["distance_error"]}

        return validate
