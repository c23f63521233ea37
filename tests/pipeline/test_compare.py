"""`python -m pipeline compare A B`: the eval tables of two runs with their differences; the eval
kind's overrides go to the app their prefix names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.kinds.evaluate import metrics_of, split_overrides

REPO = Path(__file__).resolve().parents[2]


def _run_dir(root: Path, metrics: dict[str, float]) -> Path:
    (root / "eval").mkdir(parents=True)
    (root / "eval" / "results.json").write_text(json.dumps({"metrics": metrics}))
    return root


def compare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "compare", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_compare_prints_both_runs_and_the_difference(tmp_path: Path) -> None:
    a = _run_dir(
        tmp_path / "mix50", {"bpb/en": 2.5, "bpb/zh": 3.0, "eval/next_sentence_en/acc": 0.25}
    )
    b = _run_dir(tmp_path / "mix80", {"bpb/en": 2.25, "bpb/zh": 3.5})
    done = compare(str(a), str(b))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert rows["metric"] == ["mix50", "mix80", "Δ", "mix80"]
    assert rows["bpb/en"] == ["2.5000", "2.2500", "-0.2500"]
    assert rows["bpb/zh"] == ["3.0000", "3.5000", "+0.5000"]
    assert rows["eval/next_sentence_en/acc"] == ["0.2500", "-", "-"]


def test_compare_without_results_is_one_line(tmp_path: Path) -> None:
    a = _run_dir(tmp_path / "a", {"bpb/en": 1.0})
    done = compare(str(a), str(tmp_path / "nothing"))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {tmp_path / 'nothing'}: no eval results (*/results.json); run the eval stage first"
    )
    assert compare(str(a)).returncode == 2  # usage


def test_eval_overrides_split_by_app_and_metrics_have_stable_keys() -> None:
    parts = split_overrides(["bpb.holdout=/r", "harness.tasks=[next_sentence]", "bpb.step=3"])
    assert parts == {"bpb": ["holdout=/r", "step=3"], "harness": ["tasks=[next_sentence]"]}
    with pytest.raises(ValueError, match="start it with bpb. or harness."):
        split_overrides(["holdout=/r"])
    metrics = metrics_of(
        {"bpb": {"en": 2.0, "all": 2.5}},
        {"results": {"next_sentence_zh": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.4}}},
    )
    assert metrics == {
        "bpb/en": 2.0,
        "bpb/all": 2.5,
        "eval/next_sentence_zh/acc": 0.5,
        "eval/next_sentence_zh/acc_norm": 0.4,
    }
