"""Hydra's primary config; the schema lives in `bench.experiment.config`, the studies in top-level `studies/`."""
