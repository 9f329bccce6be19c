"""Analyses of trained models that go beyond the metrics: probes of what a model has learned."""

from bench.analysis.memory_decay import decay_ks, gradient_decay, memory_decay, perturbation_decay

__all__ = ["decay_ks", "gradient_decay", "memory_decay", "perturbation_decay"]
