"""nox sessions: `nox -s tests` (the default suite), `nox -s lint`, `nox -s perf` (the benchmark).

torch is installed first and pinned so that pip takes the local CPU build on CPU machines
instead of resolving an unpinned torch to a multi-GB CUDA build.
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs, env={"WANDB_MODE": "disabled"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", "bench", "tests", "benchmarks", "scripts", "noxfile.py")


@nox.session(python="3.11")
def perf(session: nox.Session) -> None:
    """python -m bench.perf: harness vs bare loop, data generation, decoding, memory, Mamba's scans.

    Writes runs/perf/ (`nox -s perf -- --out reports/perf` regenerates the committed one)."""
    session.install(TORCH)
    session.install("-e", ".")
    session.run("python", "-m", "bench.perf", *session.posargs)
