"""Bad input, as a new user types it, across the four command lines: each case gets its exit code
(2 for bad input), exactly one `error:` line on stderr naming the cause, no traceback, and leaves an
existing finished study and its report byte for byte as they were (every file hashed before and
after) and nothing new behind in the test's folder.

The CLIs run in-process (`main(argv)`, stderr captured); a few run as `python -m` subprocesses, to
check the module entry points too. The table's placeholders: {out} the finished study's out_dir,
{report} its report, {tmp} the test's own folder, {file} a plain file there, {port} a port another
socket listens on, {copy} a copy of the study with one stored file corrupted (`setup`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import bench.dashboard
import bench.perf
import bench.report.__main__
import bench.run
from bench.experiment import config

MAINS = {"run": bench.run.main, "report": bench.report.__main__.main, "dashboard": bench.dashboard.main,
         "perf": bench.perf.main}
LONG = "n" * 300  # longer than any file system allows for one name
HUGE = "k" * 50_000
UNREACHABLE_PG = "postgresql+psycopg2://u:pw@127.0.0.1:1/db"  # nothing listens on port 1

# (cli, args, expected exit code, words the error line must contain, setup)
CASES: dict[str, tuple[str, list[str], int, str, str | None]] = {
    # ---- bench.run: numbers
    "run lr nan": ("run", ["train.lr=nan"], 2, "train.lr must be a finite number", None),
    "run lr inf": ("run", ["train.lr=inf"], 2, "train.lr must be a finite number", None),
    "run lr -inf": ("run", ["train.lr=-inf"], 2, "train.lr must be a finite number", None),
    "run memory_budget nan": ("run", ["memory_budget=nan"], 2, "memory_budget must be a finite number", None),
    "run memory_budget inf": ("run", ["memory_budget=inf"], 2, "memory_budget must be a finite number", None),
    "run memory_budget 0": ("run", ["memory_budget=0"], 2, "memory_budget must be positive", None),
    "run grad_clip nan": ("run", ["train.grad_clip=nan"], 2, "train.grad_clip must be a finite number", None),
    "run weight_decay inf": ("run", ["train.weight_decay=inf"], 2, "train.weight_decay must be a finite", None),
    "run mutual weight nan": ("run", ["mutual.weight=nan"], 2, "mutual.weight must be a finite number", None),
    "run search lr inf": ("run", ["search.space.lr=[1e-4,inf]"], 2, "search.space.lr[1] must be a finite", None),
    "run steps 1e30": ("run", ["train.steps=1e30"], 2, "train.steps", None),
    "run steps 10^23": ("run", ["train.steps=99999999999999999999999"], 2, "train.steps is out of range", None),
    "run seed huge": ("run", ["seeds=[99999999999999]"], 2, "seeds[0] is out of range", None),
    "run length huge": ("run", ["data.length=99999999999"], 2, "data.length is out of range", None),
    "run heads huge": ("run", ["model.mixer.transformer.n_heads=99999999999"], 2,
                       "model.mixer.transformer.n_heads is out of range", None),
    "run d_model 2^20": ("run", ["model.d_model=1048576"], 2, "model.d_model/num_layers/d_state needs an estimated",
                         None),
    "run search d_model 2^20": ("run", ["search.n_trials=1", "search.space.d_model=[32,1048576]"], 2,
                                "search.space's largest sizes needs an estimated", None),
    "run steps 0": ("run", ["train.steps=0"], 2, "train.steps must be positive", None),
    "run workers 0": ("run", ["workers=0"], 2, "workers must be positive", None),
    "run heartbeat -1": ("run", ["heartbeat=-1"], 2, "heartbeat must be positive", None),
    "run threads 0": ("run", ["threads=0"], 2, "threads must be positive", None),
    "run iso_target 0": ("run", ["iso_target=0"], 2, "iso_target must be positive", None),
    "run prefix 0": ("run", ["eval.continuation_prefix=0"], 2, "eval.continuation_prefix must be in", None),
    "run val_fixed_size 0": ("run", ["data.val_fixed_size=0"], 2, "data.val_fixed_size must be positive", None),
    "run test length = length": ("run", ["data.test_lengths=[8]"], 2,
                                 "data.test_lengths must each exceed data.length (8), got 8", None),
    "run test length shorter": ("run", ["data.length=16", "data.test_lengths=[32,12]"], 2,
                                "data.test_lengths must each exceed data.length (16), got 12", None),
    "run test length twice": ("run", ["data.test_lengths=[16,16]"], 2, "data.test_lengths lists a length twice",
                              None),
    "run test length huge": ("run", ["data.test_lengths=[99999999999]"], 2, "data.test_lengths[0] is out of range",
                             None),
    "run test lengths a word": ("run", ["data.test_lengths=long"], 2, "test_lengths", None),
    # ---- bench.run: words and keys
    "run unknown study": ("run", ["study=nope"], 2, "unknown study 'nope'", None),
    "run empty study": ("run", ["study="], 2, "unknown study ''", None),
    "run study path": ("run", ["study=../studies/smoke"], 2, "unknown study '../studies/smoke'", None),
    "run unknown arch": ("run", ["archs=[gru]"], 2, "unknown architecture 'gru'", None),
    "run unknown long study": ("run", ["long_study=nope"], 2, "long_study: no study file studies/nope.yaml", None),
    "run malformed list": ("run", ["seeds=[1,2"], 2, "malformed override", None),
    "run unknown flag": ("run", ["--frobnicate"], 2, "unknown flag '--frobnicate'", None),
    "run 50k-char key": ("run", [f"{HUGE}=1"], 2, "not a key of the configuration", None),
    "run device tpu": ("run", ["device=tpu"], 2, "device must be auto, cpu or cuda", None),
    "run distance weight": ("run", ["train.distance_weight=cubic"], 2, "train.distance_weight must be", None),
    "run stage": ("run", ["stage=both"], 2, "stage must be all, search or final", None),
    "run tracking": ("run", ["tracking=mlflow"], 2, "tracking must be wandb or none", None),
    "run WANDB_MODE bogus": ("run", ["tracking=wandb"], 2, "WANDB_MODE must be one of", "env:WANDB_MODE=bogus"),
    # ---- bench.run: storage, folders
    "run storage plain postgresql": ("run", ["storage=postgresql://u:pw@127.0.0.1:1/db", "out_dir={tmp}/new"], 2,
                                     "driver 'psycopg' for postgresql is not installed", None),
    "run storage unknown scheme": ("run", ["storage=foo://x", "out_dir={tmp}/new"], 2, "unknown database 'foo'", None),
    "run storage mysql driver": ("run", ["storage=mysql://u@127.0.0.1/db", "out_dir={tmp}/new"], 2,
                                 "driver 'mysqldb' for mysql is not installed", None),
    "run storage not a URL": ("run", ["storage=runs/x.db", "out_dir={tmp}/new"], 2, "must be an Optuna RDB URL", None),
    "run storage garbage URL": ("run", ["storage=://", "out_dir={tmp}/new"], 2, "is not a database URL", None),
    "run storage unreachable": ("run", [f"storage={UNREACHABLE_PG}", "out_dir={tmp}/new"], 2,
                                "u:***@127.0.0.1:1/db' is unreachable", None),
    "run storage missing folder": ("run", ["storage=sqlite:///{tmp}/no/such/x.db", "out_dir={tmp}/new"], 2,
                                   "does not exist", None),
    "run report_dir a file": ("run", ["report_dir={file}"], 2, "report_dir", "file"),
    "run report_dir under a file": ("run", ["report_dir={file}/sub"], 2, "report_dir", "file"),
    "run report_dir too long": ("run", [f"report_dir={{tmp}}/{LONG}"], 2, "File name too long", None),
    "run out_dir a file": ("run", ["out_dir={file}"], 2, "exists and is not a directory", "file"),
    "run out_dir too long": ("run", [f"out_dir={{tmp}}/{LONG}/x"], 2, "File name too long", None),
    "run out_dir 50k chars": ("run", [f"out_dir={{tmp}}/{HUGE}"], 2, "out_dir", None),
    "run foreign out_dir": ("run", ["out_dir={tmp}/mine"], 2, "holds no earlier study", "foreign"),
    # ---- bench.run: study files
    "study file unknown key": ("run", ["study=smoke"], 2, "smoke.yaml:3: key 'train.stepz'", "studies:unknown key"),
    "study file wrong type": ("run", ["study=smoke"], 2, "smoke.yaml:2: key 'train.steps'", "studies:wrong type"),
    "study file broken YAML": ("run", ["study=smoke"], 2, "smoke.yaml:2 is not valid YAML", "studies:broken"),
    "study file a list": ("run", ["study=smoke"], 2, "must be a mapping of keys", "studies:list"),
    # ---- bench.report
    "report unknown study": ("report", ["study=nope"], 2, "unknown study 'nope'", None),
    "report unknown flag": ("report", ["--bogus"], 2, "unknown flag '--bogus'", None),
    "report --out missing": ("report", ["--out"], 2, "--out needs a directory", None),
    "report --out a file": ("report", ["--out", "{file}"], 2, "--out", "file"),
    "report --out too long": ("report", ["--out", f"{{tmp}}/{LONG}"], 2, "File name too long", None),
    "report report_dir a file": ("report", ["report_dir={file}"], 2, "exists and is not a directory", "file"),
    "report no results": ("report", ["out_dir={tmp}/empty"], 2, "results.parquet is missing", None),
    "report lr nan": ("report", ["train.lr=nan"], 2, "train.lr must be a finite number", None),
    "report corrupt results": ("report", ["out_dir={copy}", "--out", "{tmp}/r"], 2,
                               "results.parquet cannot be read", "copy:results.parquet"),
    "report corrupt runs": ("report", ["out_dir={copy}", "--out", "{tmp}/r"], 2, "runs.parquet cannot be read",
                            "copy:runs.parquet"),
    "report corrupt history": ("report", ["out_dir={copy}", "--out", "{tmp}/r"], 2,
                               "history.parquet cannot be read", "copy:history.parquet"),
    "report config not a mapping": ("report", ["out_dir={copy}", "--out", "{tmp}/r"], 2, "is not a mapping",
                                    "copy:config.yaml"),
    "report meta broken YAML": ("report", ["out_dir={copy}", "--out", "{tmp}/r"], 2, "meta.yaml cannot be read",
                                "copy:meta.yaml"),
    "report storage scheme": ("report", ["storage=foo://x"], 2, "unknown database 'foo'", None),
    # ---- bench.dashboard
    "dashboard port 0": ("dashboard", ["--port", "0"], 2, "--port must be a number in 1..65535", None),
    "dashboard port 70000": ("dashboard", ["--port=70000"], 2, "--port must be a number in 1..65535", None),
    "dashboard port word": ("dashboard", ["--port", "http"], 2, "--port must be a number", None),
    "dashboard port missing": ("dashboard", ["--port"], 2, "--port must be a number", None),
    "dashboard host missing": ("dashboard", ["--host"], 2, "--host needs a host name", None),
    "dashboard host unknown": ("dashboard", ["--host", "no-such-host.invalid"], 2, "is not a known host", None),
    "dashboard host bad address": ("dashboard", ["--host", "256.256.256.256"], 2, "is not a known host", None),
    "dashboard busy port": ("dashboard", ["--port", "{port}"], 2, "cannot serve on 127.0.0.1", "busy"),
    "dashboard unknown flag": ("dashboard", ["--bogus"], 2, "unknown flag '--bogus'", None),
    "dashboard unknown study": ("dashboard", ["study=nope"], 2, "unknown study 'nope'", None),
    "dashboard no storage yet": ("dashboard", ["out_dir={tmp}/none"], 2, "has no storage yet", None),
    "dashboard unreachable": ("dashboard", [f"storage={UNREACHABLE_PG}"], 2, "u:***@127.0.0.1:1/db' is unreachable",
                              None),
    "dashboard storage scheme": ("dashboard", ["storage=foo://x"], 2, "unknown database 'foo'", None),
    # ---- bench.perf
    "perf unknown flag": ("perf", ["--bogus"], 2, "--bogus", None),
    "perf seconds nan": ("perf", ["--seconds", "nan"], 2, "--seconds", None),
    "perf seconds inf": ("perf", ["--seconds", "inf"], 2, "--seconds", None),
    "perf seconds -1": ("perf", ["--seconds", "-1"], 2, "--seconds", None),
    "perf seconds word": ("perf", ["--seconds", "ten"], 2, "--seconds", None),
    "perf sizes": ("perf", ["--sizes", "16by8"], 2, "sizes", None),
    "perf sizes too small": ("perf", ["--sizes", "2x2"], 2, "sizes", None),
    "perf unknown arch": ("perf", ["--archs", "gru"], 2, "gru", None),
    "perf out a file": ("perf", ["--out", "{file}", "--seconds", "0.1"], 2, "--out", "file"),
}
DEFAULT_TARGET = {"run": ["study=smoke", "out_dir={out}"], "report": ["study=smoke", "out_dir={out}"],
                  "dashboard": ["study=smoke", "out_dir={out}"], "perf": []}

STUDY_FILES = {
    "unknown key": "seeds: [0]\ntrain:\n  stepz: 5\n",
    "wrong type": "train:\n  steps: many\n",
    "broken": "train:\n  steps: [1, 2\nseeds: [0]\n",
    "list": "- 1\n- 2\n",
}
CORRUPT = {"results.parquet": b"PAR1 not a table", "runs.parquet": b"", "history.parquet": b"\x00" * 64,
           "config.yaml": b"- a list\n- of things\n", "meta.yaml": b"command: [unclosed\n"}


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """One tiny finished study (lstm, 20 steps, no search, no tracking) with its report beside it."""
    base = tmp_path_factory.mktemp("finished")
    argv = ["study=smoke", "archs=[lstm]", "search.n_trials=0", "train.steps=20", "train.val_every=10",
            "train.batch_size=8", "data.test_per_family=8", "data.val_size=8", "model.d_model=16",
            "model.num_layers=1", "progress=false", "tracking=none", f"out_dir={base / 'study'}",
            f"report_dir={base / 'report'}"]
    assert bench.run.main(argv) == 0
    assert (base / "report" / "README.md").is_file() and (base / "study" / "results.parquet").is_file()
    return base


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def prepare(setup: str | None, tmp: Path, finished: Path, monkeypatch, stack: list) -> dict[str, str]:
    """Make what a case needs beside its arguments; returns the placeholders' values."""
    values = {"out": str(finished / "study"), "report": str(finished / "report"), "tmp": str(tmp),
              "file": str(tmp / "file"), "copy": str(tmp / "copy"), "port": "0"}
    kind, _, arg = (setup or "").partition(":")
    if kind == "file":
        (tmp / "file").write_text("a plain file")
    elif kind == "foreign":
        (tmp / "mine").mkdir()
        (tmp / "mine" / "thesis.tex").write_text("precious")
    elif kind == "busy":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stack.append(listener)
        values["port"] = str(listener.getsockname()[1])
    elif kind == "copy":
        shutil.copytree(finished / "study", tmp / "copy")
        (tmp / "copy" / arg).write_bytes(CORRUPT[arg])
    elif kind == "studies":
        (tmp / "studies").mkdir()
        (tmp / "studies" / "smoke.yaml").write_text(STUDY_FILES[arg])
        (tmp / "studies" / "other.yaml").write_text("seeds: [0\n")  # broken too: unused, so never read
        monkeypatch.setattr(config, "STUDIES_DIR", tmp / "studies")
    elif kind == "env":
        key, _, value = arg.partition("=")
        monkeypatch.setenv(key, value)
    return values


def check_one_error_line(err: str, words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: ") and words in lines[0], lines[0][:2000]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_changes_nothing(case, finished, tmp_path, capsys, monkeypatch):
    cli, args, code, words, setup = CASES[case]
    monkeypatch.setattr("optuna_dashboard.run_server", lambda *a, **k: pytest.fail("the dashboard started"))
    stack: list = []
    values = prepare(setup, tmp_path, finished, monkeypatch, stack)
    given = {a.split("=", 1)[0] for a in args}
    defaults = [a for a in DEFAULT_TARGET[cli] if a.split("=", 1)[0] not in given]
    argv = [a.format(**values) for a in (*defaults, *args)]
    before, files = digests(finished), listing(tmp_path)
    capsys.readouterr()
    try:
        got = MAINS[cli](argv)
    except SystemExit as e:  # argparse's own exit: a failure of this test, reported with its output
        got = e.code
    err = capsys.readouterr().err
    for s in stack:
        s.close()
    assert got == code, err[-3000:]
    check_one_error_line(err, words)
    assert digests(finished) == before  # the existing study and its report, byte for byte
    assert listing(tmp_path) == files  # nothing created beside them


def test_a_broken_study_file_breaks_only_itself(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "good.yaml").write_text("seeds: [0, 1]\ntrain:\n  steps: 7\n")
    (tmp_path / "studies" / "bad.yaml").write_text("train: [unclosed\n")
    monkeypatch.setattr(config, "STUDIES_DIR", tmp_path / "studies")
    cfg = config.compose_config(["study=good", f"out_dir={tmp_path / 'o'}"])
    assert cfg.train.steps == 7 and cfg.seeds == [0, 1]
    with pytest.raises(config.ConfigError, match=r"bad\.yaml:1 is not valid YAML"):
        config.compose_config(["study=bad", f"out_dir={tmp_path / 'o'}"])


def test_the_report_goes_into_out_dir_by_default_and_reports_only_when_named():
    cfg = config.compose_config(["study=phase2", "out_dir=runs/phase2-big"])
    assert cfg.report_path == Path("runs/phase2-big/report")
    assert config.compose_config(["study=phase2"]).report_path == Path("runs/phase2/report")
    assert config.compose_config(["study=phase2", "report_dir=reports/phase2"]).report_path == Path("reports/phase2")


SUBPROCESS = {  # the module entry points themselves: `python -m ...`
    "bench.run": (["study=smoke", "train.lr=nan", "out_dir={out}"], "train.lr must be a finite number"),
    "bench.report": (["study=smoke", "out_dir={copy}", "--out", "{tmp}/r"], "results.parquet cannot be read"),
    "bench.dashboard": (["study=smoke", "--port", "99999"], "--port must be a number"),
    "bench.perf": (["--seconds", "nan"], "--seconds"),
}


@pytest.mark.slow
@pytest.mark.parametrize("module", list(SUBPROCESS))
def test_module_entry_points_exit_2_with_one_line(module, finished, tmp_path):
    args, words = SUBPROCESS[module]
    shutil.copytree(finished / "study", tmp_path / "copy")
    (tmp_path / "copy" / "results.parquet").write_bytes(CORRUPT["results.parquet"])
    values = {"out": str(finished / "study"), "copy": str(tmp_path / "copy"), "tmp": str(tmp_path)}
    before = digests(finished)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *(a.format(**values) for a in args)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    check_one_error_line(proc.stderr, words)
    assert digests(finished) == before
