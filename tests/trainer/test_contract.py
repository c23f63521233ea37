"""trainer.contract: the progress file the trainer appends to and its reader."""

from __future__ import annotations

from trainer import contract
from trainer.callbacks import ProgressCallback, build_callbacks
from trainer.config.trainer import LoggingConfig


def test_progress_lines_are_read_once_and_a_partial_line_waits(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(contract.PROGRESS_ENV, str(path))
    (callback,) = build_callbacks(LoggingConfig(console=False, mlflow=False), rank=0)
    assert isinstance(callback, ProgressCallback)
    assert build_callbacks(LoggingConfig(console=False, mlflow=False), rank=1) == []
    callback.on_step(1, {"loss": 2.5, "tokens_per_s": 100.0, "lr": 1e-3})
    callback.on_step(2, {"loss": 2.0})
    records, offset = contract.read_progress(path)
    assert [(r["step"], r.get("tokens_per_s"), r["loss"]) for r in records] == [
        (1, 100.0, 2.5),
        (2, None, 2.0),
    ]
    assert set(records[0]) == set(contract.PROGRESS_KEYS)
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # the trainer is mid-write
    assert contract.read_progress(path, offset) == ([], offset)
    with open(path, "a") as f:
        f.write('ss": 1.5, "time": 0}\n')
    assert contract.read_progress(path, offset)[0] == [{"step": 3, "loss": 1.5, "time": 0}]
    assert contract.read_progress(tmp_path / "missing", 0) == ([], 0)
