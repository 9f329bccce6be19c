"""The package's layers, enforced by reading every import (ast), so the structure cannot blur silently.

    base        bench.util (stdlib only)
    core        data, models (+ ops), analysis, train, mutual, metrics, memory, seeding
    experiment  bench.experiment: config, search, records, storage, workers, collection, tracking
    report      bench.report: stored tables -> markdown and figures; no torch, no core, no engine
    app         the CLIs: bench.cli, bench.run, bench.dashboard, bench.perf, bench.report.__main__

A layer imports only itself and the layers below it (app imports anything). A function-level
(lazy) import is allowed only for an optional third-party package; a lazy import of bench code
would only hide a cycle. No module imports another mixer's file: per-mixer code stays in its file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bench"

APP = {"bench.cli", "bench.run", "bench.dashboard", "bench.perf", "bench.report.__main__"}
CORE = ("bench.data", "bench.models", "bench.analysis", "bench.train", "bench.mutual", "bench.metrics",
        "bench.memory", "bench.seeding")
ALLOWED = {  # layer -> the layers it may import
    "base": {"base"},
    "core": {"base", "core"},
    "experiment": {"base", "core", "experiment"},
    "report": {"base", "report"},
}
FORBIDDEN_THIRD_PARTY = {  # layer -> third-party packages it must not import
    "base": {"torch", "numpy", "pandas", "optuna", "hydra", "omegaconf", "wandb", "matplotlib"},
    "core": {"optuna", "hydra", "omegaconf", "wandb", "matplotlib", "seaborn", "optuna_dashboard"},
    "report": {"torch", "hydra", "wandb"},
}
OPTIONAL = {"wandb", "mamba_ssm", "causal_conv1d", "optuna_dashboard"}  # the only lazy imports allowed


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str:
    if module in APP:
        return "app"
    if module in ("bench", "bench.util") or _is_under(module, "bench.conf"):
        return "base"
    if any(_is_under(module, p) for p in CORE):
        return "core"
    if _is_under(module, "bench.experiment"):
        return "experiment"
    if _is_under(module, "bench.report"):
        return "report"
    raise AssertionError(f"{module} belongs to no layer: add it to one in tests/test_layers.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module, lazy?, line) for every import of `module`; `from pkg import sub` yields
    pkg.sub when that is a module of ours. Imports inside a function or class body are lazy."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.append((sub if sub in MODULES else base, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers(module):
    layer = layer_of(module)
    problems = []
    for target, lazy, line in imports(module):
        top = target.split(".")[0]
        if lazy and top not in OPTIONAL:
            problems.append(f"line {line}: lazy import of {target} (only {sorted(OPTIONAL)} may be imported lazily)")
        if top == "bench":
            if layer != "app" and layer_of(target) not in ALLOWED[layer]:
                problems.append(f"line {line}: {layer} imports {target} ({layer_of(target)})")
        elif top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
            problems.append(f"line {line}: {layer} imports {target}")
    assert not problems, f"{module}:\n" + "\n".join(problems)


def test_no_import_cycles():
    graph = {m: sorted({t for t, lazy, _ in imports(m) if t in MODULES and t != m and not lazy}) for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t] if t in path else [m, t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_mixer_files_are_imported_only_by_the_models_package():
    """A new architecture is one file plus one registry line: nothing outside bench/models may reach
    into a mixer's file (or its ops), so no mixer's forward is written a second time elsewhere."""
    from bench.models import MIXERS

    mixer_modules = {cls.__module__ for cls in MIXERS.values()}
    offenders = [f"{m} imports {t} (line {line})" for m in MODULES if not _is_under(m, "bench.models")
                 for t, _, line in imports(m)
                 if any(_is_under(t, x) for x in mixer_modules) or _is_under(t, "bench.models.ops")]
    assert not offenders, "\n".join(offenders)


def test_importing_the_report_layer_loads_no_torch():
    code = "import sys, bench.report; bad = [m for m in ('torch', 'bench.models', 'bench.experiment') " \
           "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_checker_sees_violations(tmp_path, monkeypatch):
    """The rules above can fail: a core module importing the engine and a lazy bench import are caught."""
    monkeypatch.setitem(MODULES, "bench.train", tmp_path / "train.py")
    (tmp_path / "train.py").write_text("import os\nfrom bench.experiment import config\n"
                                       "def f():\n    import bench.report\n")
    with pytest.raises(AssertionError, match="core imports bench.experiment") as err:
        test_imports_respect_the_layers("bench.train")
    assert "lazy import of bench.report" in str(err.value)
