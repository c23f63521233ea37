"""posttrain.accuracy: the summary's arithmetic and bad input as one line (the scoring of a real
checkpoint runs in test_grpo.py, on the GRPO run's checkpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.accuracy import AccuracyConfig, summarise

ROOT = Path(__file__).resolve().parents[2]


def test_summary_means_and_per_language_accuracy() -> None:
    parts = [
        {"accuracy": 1.0, "format": 1.0},
        {"accuracy": 0.0, "format": 1.0},
        {"accuracy": 1.0, "format": 0.0},
        {"accuracy": 0.0, "format": 0.0},
    ]
    out = summarise(parts, ["en", "zh", "zh", None])
    assert out == {
        "accuracy": 0.5,
        "format": 0.5,
        "per_lang": {"en": 1.0, "unknown": 0.0, "zh": 0.5},
        "n": 4,
    }


def test_bad_settings_fail_in_the_schema() -> None:
    with pytest.raises(ValueError, match="limit"):
        AccuracyConfig(checkpoint="c", test="t", tokenizer="k", limit=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        AccuracyConfig(checkpoint="c", test="t", tokenizer="k", max_new_tokens=0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "posttrain.accuracy", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    from tests.posttrain.grpo_setup import write_task

    files = write_task(tmp_path, n_train=4)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = {
        "no such folder": [f"checkpoint={tmp_path / 'none'}", f"test={files['prompts']}"],
        "no usable prompt": [f"checkpoint={tmp_path}", f"test={empty}"],
        "checkpoint=... is required": [f"test={files['prompts']}"],
    }
    for message, args in cases.items():
        done = _cli(*args, f"tokenizer={files['tokenizer']}")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], done.stderr
