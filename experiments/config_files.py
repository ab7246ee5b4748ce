"""Config files read as plain YAML before jsonargparse sees them: errors name the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

YAML = (".yaml", ".yml")


def yaml_file_error(args: list[str]) -> str | None:
    """The first config file named in `args` (`-c`/`--config` values and any existing *.yaml argument), or
    named inside one (`model: ../model/x.yaml`), that is not plain YAML, as `config file PATH, line L, column C:
    problem`. jsonargparse reports such errors for a `<unicode string>`, without the file; YAML tags that
    would build Python objects are refused the same way."""
    files = []
    for index, arg in enumerate(args):
        if arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif not arg.startswith("-") and ((index and args[index - 1] in ("-c", "--config")) or arg.endswith(YAML)):
            files.append(arg)
    seen: set[Path] = set()
    pending = [Path(f).expanduser() for f in files]
    while pending:
        path = pending.pop(0)
        if path in seen or not path.is_file() or not path.name.endswith(YAML):
            continue
        seen.add(path)
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            return f"config file {path}{_yaml_position(error)}"
        except UnicodeDecodeError as error:
            return f"config file {path}: not UTF-8 text ({error})"
        pending += [path.parent / value for value in _strings(content) if value.endswith(YAML)]
    return None


def _yaml_position(error: yaml.YAMLError) -> str:
    mark, context = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if context is not None and getattr(error, "context", None):
        problem += f" ({error.context} at line {context.line + 1}, column {context.column + 1})"  # type: ignore[attr-defined]
    return f"{where}: {problem}"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
