"""Hydra's primary config; the schema lives in `bench.config`, the studies in top-level `studies/`."""
