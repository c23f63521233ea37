"""Read an lm-eval task YAML file: a parse error is one ValueError naming file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_task_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        why = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"task file {path}{where}: does not parse ({why})") from None
