"""archbench: fair, reproducible comparisons of sequence-model architectures on integer sequences."""

__version__ = "0.1.0"
