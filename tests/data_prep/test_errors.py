"""Bad input gets one-line errors; failed tasks are reported with ranks and logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datatrove.executor.local import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep

from data_prep import DataPrepError, IncompleteRanksError, InputError, run_stage
from data_prep.config import ExecutorConfig
from data_prep.executors import run_and_check
from data_prep.sample_corpus import strip_rest, strip_roff

ROOT = Path(__file__).resolve().parents[2]


def _args(tmp_path, inp) -> list[str]:
    return [f"input={inp}", f"output={tmp_path / 'out'}", "progress=false"]


def test_missing_input_path(tmp_path):
    with pytest.raises(InputError, match="does not exist: .*nowhere"):
        run_stage("read", _args(tmp_path, tmp_path / "nowhere"))


def test_empty_input_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .jsonl"):
        run_stage("read", _args(tmp_path, tmp_path / "empty"))


def test_input_without_valid_records(tmp_path):
    (tmp_path / "bad.jsonl").write_text("not json\n")
    stats = run_stage("read", _args(tmp_path, tmp_path / "bad.jsonl"))
    assert stats["documents_in"] == 0 and stats["rejected"] == {"bad_json": 1}
    with pytest.raises(InputError, match="stage output with no documents left"):
        run_stage(
            "normalize", [f"input={tmp_path / 'out'}", f"output={tmp_path / 'n'}", "progress=false"]
        )


@pytest.mark.parametrize(
    ("stage", "extra", "message"),
    [
        ("dedupe", [], "unknown stage 'dedupe'"),
        ("read", ["minhash.bogus=1"], "minhash.bogus"),
        ("read", ["executor=nope"], "executor/nope"),
        ("read", ["executor.kind=mpi"], "executor.kind"),
        ("remix", ["remix.weights={nope:1.0}"], "absent from the input"),
        ("tokenize", [], "tokenize.tokenizer"),
    ],
)
def test_bad_options_raise_clear_errors(tmp_path, stage, extra, message):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    with pytest.raises(InputError, match=message) as err:
        run_stage(stage, [*_args(tmp_path, tmp_path / "a.jsonl"), *extra])
    assert "\n" not in str(err.value)


def test_cli_prints_one_line_error_and_exits_nonzero(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "stage=read",
            f"input={tmp_path}/missing",
            f"output={tmp_path}/o",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "input path does not exist" in lines[0]


def test_cli_prints_resolved_config(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "data_prep", "stage=quality", "input=x", "output=y", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "stage: quality" in res.stdout and "gopher_quality" in res.stdout


class _FailOnRank(PipelineStep):
    name = "fail"
    type = "TEST"

    def run(self, data, rank: int = 0, world_size: int = 1):
        if rank == 1:
            raise RuntimeError("boom on rank 1")
        return
        yield


def test_incomplete_ranks_are_named_with_their_logs(tmp_path):
    ex = LocalPipelineExecutor(
        [_FailOnRank()], tasks=3, workers=1, logging_dir=str(tmp_path / "logs")
    )
    with pytest.raises(IncompleteRanksError) as err:
        run_and_check(ex, "test/phase", ExecutorConfig())
    assert isinstance(err.value, DataPrepError)
    assert 1 in err.value.ranks and 0 not in err.value.ranks
    log = tmp_path / "logs" / "logs" / "task_00001.log"
    assert str(log) in str(err.value) and "boom on rank 1" in log.read_text()


def test_markup_is_stripped():
    roff = '.\\" comment\n.TH LS 1\n.SH NAME\nls \\- 列出目录内容\n.B \\-a\n\\fB粗体\\fR 文字\n'
    text = strip_roff(roff)
    assert (
        "\\f" not in text and ".SH" not in text and "列出目录内容" in text and "粗体 文字" in text
    )
    rest = (
        ":mod:`bisect` --- Array\n=======\n\n"
        ".. module:: bisect\n\nUse ``insort()`` and :func:`bisect`.\n"
    )
    assert strip_rest(rest) == "bisect --- Array\n\nUse insort() and bisect."
