"""The floors of the house, as a test: the apps (trainer, data_prep, pipeline, evaluation,
posttrain) know no launch layer (`slurm`), and trainer and data_prep import neither each other nor
pipeline. posttrain sits above trainer, data_prep and evaluation (it builds on the model, the
shard writers and the CJK definition, and may score with evaluation's suites), so none of them
imports it; it never imports pipeline, which composes it through its entry points.

An app's `__main__` is the one door to the launch layer (`slurm.launch.route` takes `cluster=...`
off the command line before the app sees it); the pipeline's train kind runs the launch layer's
command line (`python -m slurm.train`) as a process, as it runs `python -m trainer`. Imports
inside functions count like top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPS = ("trainer", "data_prep", "pipeline", "evaluation", "posttrain")
FORBIDDEN = {
    "trainer": {"slurm", "data_prep", "pipeline", "posttrain"},
    "data_prep": {"slurm", "trainer", "pipeline", "posttrain"},
    "pipeline": {"slurm"},
    "evaluation": {"slurm", "pipeline", "posttrain"},
    "posttrain": {"slurm", "pipeline"},
}
"""app -> top-level packages its modules may not import."""


def _imported(path: Path) -> set[str]:
    """Top-level packages a module imports (absolute imports; relative ones stay in the app)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def violations(root: Path) -> set[str]:
    """`app/file.py -> package` for every forbidden import under root."""
    found = set()
    for app, banned in FORBIDDEN.items():
        for path in sorted((root / app).rglob("*.py")):
            if path.name == "__main__.py" and path.parent == root / app:
                continue
            for name in sorted(_imported(path) & banned):
                found.add(f"{path.relative_to(root).as_posix()} -> {name}")
    return found


def test_apps_import_only_what_their_floor_allows():
    assert violations(ROOT) == set()


def test_a_forbidden_import_is_caught(tmp_path):
    for app in APPS:
        (tmp_path / app).mkdir()
    (tmp_path / "trainer" / "__main__.py").write_text("from slurm.launch import route\n")
    (tmp_path / "trainer" / "run.py").write_text("def f():\n    import data_prep.runner\n")
    (tmp_path / "data_prep" / "ok.py").write_text("from . import config\nimport json\n")
    (tmp_path / "pipeline" / "kinds").mkdir()
    (tmp_path / "pipeline" / "kinds" / "x.py").write_text("from slurm import load_cluster\n")
    (tmp_path / "posttrain" / "ok.py").write_text("from trainer.model import build_model\n")
    (tmp_path / "posttrain" / "bad.py").write_text("import pipeline.dag\n")
    (tmp_path / "evaluation" / "up.py").write_text("from posttrain.rewards import REWARDS\n")
    assert violations(tmp_path) == {
        "trainer/run.py -> data_prep",
        "pipeline/kinds/x.py -> slurm",
        "posttrain/bad.py -> pipeline",
        "evaluation/up.py -> posttrain",
    }
