"""Reading one study file (`studies/<name>.yaml`) so that a mistake in it is named where it is.

Only the study a command uses is read: a broken file elsewhere in the folder breaks nothing else.
A YAML syntax error is reported with its file and line; a key the schema does not have, or a value
of the wrong type, with its file, line and dotted key (line numbers come from the YAML node tree,
since OmegaConf keeps none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.experiment.checks import ConfigError
from bench.util import first_line


def load_study_file(path: Path, schema: Any) -> DictConfig:
    """The study file at `path` as a DictConfig, checked against the structured `schema`."""
    try:
        text = path.read_text()
        tree = yaml.compose(text)
        loaded = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.MarkedYAMLError as e:
        mark = e.context_mark or e.problem_mark  # where an unclosed bracket or quote opened, else the spot
        where = f":{mark.line + 1}" if mark is not None else ""
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"study file {path}{where} is not valid YAML: {what}") from None
    except (OSError, yaml.YAMLError, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"study file {path} cannot be read: {first_line(e)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"study file {path} must be a mapping of keys (key: value), not a list or a value")
    try:
        OmegaConf.merge(OmegaConf.structured(schema), loaded)
    except OmegaConfBaseException as e:
        key = str(getattr(e, "full_key", "") or "")
        line = _line_of(tree, key.split(".") if key else [])
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"study file {where}: key '{key}': {first_line(e)}") from None
    return loaded


def _line_of(node: Any, keys: list[str]) -> int | None:
    """1-based line of the dotted key `keys` in the YAML node tree, or of its deepest present parent."""
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line

