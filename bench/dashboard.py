"""`python -m bench.dashboard study=<name> [key=value ...] [--port N] [--host H]`: optuna-dashboard
on the study's storage (the same `storage=`/`out_dir=` overrides as `bench.run` pick it).

Every trial of both stages is there as `<study>/<arch>` and `<study>/<arch>/final`, with its user
attributes (architecture, sizes, parameter count, state size, tokens seen, wall time, validation
metrics, memory estimate, pruning or failure reason, W&B run id). The study's report
(`<out_dir>/report/` by default) is attached to each study as its note and as artifacts (README
and figures), served from `<out_dir>/artifacts`. Serves on localhost by default; the host and port
are checked before the storage is opened, so a busy port or an unknown host is one `error:` line.
"""

from __future__ import annotations

import socket
import sys

from optuna.artifacts import FileSystemArtifactStore

from bench.cli import entry_point
from bench.experiment.config import ConfigError, compose_config
from bench.experiment.storage import open_storage

USAGE = "usage: python -m bench.dashboard study=<name> [key=value ...] [--port 8080] [--host 127.0.0.1]"


def parse(argv: list[str]) -> tuple[list[str], str, int]:
    """Split key=value overrides from --port/--host (also accepted as --port=N)."""
    overrides, host, port = [], "127.0.0.1", 8080
    args = iter(argv)
    for a in args:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            if key not in ("port", "host"):
                raise ConfigError(f"unknown flag '{a}' ({USAGE})")
            value = value or next(args, "")
            if key == "host":
                host = value
            elif value.isdigit() and 0 < int(value) < 65536:
                port = int(value)
            else:
                raise ConfigError(f"--port must be a number in 1..65535, got '{value}'")
        else:
            overrides.append(a)
    return overrides, host, port


def check_address(host: str, port: int) -> None:
    """`host` resolves and `port` can be bound there now (nothing else listens on it)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise ConfigError(f"--host '{host}' is not a known host name or address ({why})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            raise ConfigError(f"cannot serve on {host}:{port}: {e.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    return entry_point(argv, USAGE, _serve)


def _serve(args: list[str]) -> int:
    overrides, host, port = parse(args)
    if not host:
        raise ConfigError("--host needs a host name or address")
    check_address(host, port)
    cfg = compose_config(overrides)
    if cfg.storage is None and not (cfg.output_dir / "optuna.db").exists():
        raise ConfigError(f"study '{cfg.name}' has no storage yet ({cfg.output_dir / 'optuna.db'}); run it first")
    storage = open_storage(cfg)
    from optuna_dashboard import run_server  # imported late: --help and errors stay fast

    print(f"optuna-dashboard for study {cfg.name} ({cfg.storage_url}) on http://{host}:{port}/", flush=True)
    artifacts = cfg.output_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    run_server(storage, host=host, port=port, artifact_store=FileSystemArtifactStore(str(artifacts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
