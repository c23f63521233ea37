"""Stage kind `app` (a one-shot CLI ending in a JSON line), the run's `result` line and the
launch layer's `--config-name` (how `python -m pipeline --config-name r1` reaches Slurm)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pipeline_testlib import REPO, compose, stage_context

from pipeline.kinds.app import AppOptions, code_of
from pipeline.registry import TaskContext, get_kind
from pipeline.state import MARKER, result_values
from slurm.launch import LaunchError, config_name

APP = """
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
if args.get("fail"):
    print("error: bad input", file=sys.stderr)
    sys.exit(2)
Path(args["out"]).write_text("{}")
print("progress line")
print(json.dumps([1]) if args.get("list") else json.dumps({"accuracy": 0.5, "n": 3}))
"""


def _ctx(tmp_path: Path, overrides: list[str], **options) -> TaskContext:
    return stage_context(tmp_path, "acc", overrides, AppOptions(**options))


@pytest.fixture
def fake_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "fake_eval_app.py").write_text(APP)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))
    out = tmp_path / "stage"
    out.mkdir()
    return out


def test_app_stats_are_its_json_line_and_its_artifacts_are_logged(fake_app: Path) -> None:
    ctx = _ctx(fake_app, [f"out={fake_app / 'stats.json'}"], module="fake_eval_app")
    ctx.options.artifacts = ["stats.json", "missing.json"]
    stats = get_kind("app").run(ctx)
    assert stats["accuracy"] == 0.5 and stats["n"] == 3 and stats["wall_s"] >= 0
    assert ctx.artifacts == [fake_app / "stats.json"]
    assert ctx.params["app_module"] == "fake_eval_app"


def test_app_failure_carries_its_error_line_and_a_non_object_is_refused(fake_app: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code 2: error: bad input"):
        get_kind("app").run(_ctx(fake_app, ["fail=1"], module="fake_eval_app"))
    with pytest.raises(RuntimeError, match="printed list, not a JSON object"):
        get_kind("app").run(
            _ctx(fake_app, [f"out={fake_app / 'x'}", "list=1"], module="fake_eval_app")
        )


def test_app_options_and_code_version() -> None:
    with pytest.raises(ValueError, match="a Python module name is needed"):
        AppOptions(module="not a module")
    assert code_of(AppOptions(module="posttrain.accuracy")) == ("posttrain",)
    narrow = AppOptions(module="posttrain.tasks.arithmetic", code=["posttrain.tasks"])
    assert code_of(narrow) == ("posttrain.tasks",)


def test_result_values_read_the_markers_and_null_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "acc").mkdir()
    marker = {"stats": {"accuracy": 0.25, "per_lang": {"zh": 0.5}}}
    (tmp_path / "acc" / MARKER).write_text(json.dumps(marker))
    refs = {"a": "acc.accuracy", "zh": "acc.per_lang.zh", "no_key": "acc.nope", "no_stage": "x.y"}
    assert result_values(tmp_path, refs) == {"a": 0.25, "zh": 0.5, "no_key": None, "no_stage": None}


def test_result_refs_must_name_a_stage(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="expected STAGE.KEY with STAGE one of the stages"):
        compose(tmp_path, "+result.acc=nostage.accuracy")


@pytest.mark.parametrize(
    "args, name, rest",
    [
        (["run_dir=x"], "pipeline", ["run_dir=x"]),
        (["--config-name", "r1", "run_dir=x"], "r1", ["run_dir=x"]),
        (["--config-name=r1", "dry_run=true"], "r1", ["dry_run=true"]),
        (["-cn", "r1"], "r1", []),
    ],
)
def test_config_name_is_taken_off_the_arguments(args, name, rest) -> None:
    assert config_name(args, "pipeline") == (name, rest)


def test_config_name_without_a_value_is_one_line() -> None:
    with pytest.raises(LaunchError, match="--config-name needs a config name"):
        config_name(["--config-name"], "pipeline")


def test_two_stages_logging_the_same_input_dataset_both_succeed(tmp_path: Path) -> None:
    """sft_rs and student_distill start together and both read rs_tokenize: MLflow's SQL store
    looks the dataset up, then inserts it, so the second insert can hit the unique key. The
    loser retries and finds the winner's row (here the race is replayed in order: the dataset
    is inserted by another run between the loser's failure and its retry)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import _dataset, log_inputs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("r1")
    first, second = (client.create_run(exp).info.run_id for _ in range(2))
    shared = _dataset(str(tmp_path / "rs_tokenize"), "rs_tokenize", "6b123b75fb74be04abcd")
    inputs = [DatasetInput(shared._to_mlflow_entity(), [InputTag("mlflow.data.context", "input")])]

    class Racing:
        """The loser's client: its first call fails as the store does after losing the race."""

        calls = 0

        def log_inputs(self, run_id: str, datasets: list) -> None:
            self.calls += 1
            if self.calls == 1:
                client.log_inputs(first, datasets=datasets)  # the winner commits first
                raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed")
            client.log_inputs(run_id, datasets=datasets)

    racing = Racing()
    log_inputs(racing, second, inputs)
    assert racing.calls == 2
    for run_id in (first, second):
        names = [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs]
        assert names == ["rs_tokenize"]
    with pytest.raises(MlflowException, match="other failure"):
        log_inputs(_Failing(), second, inputs)


class _Failing:
    def log_inputs(self, run_id: str, datasets: list) -> None:
        from mlflow.exceptions import MlflowException

        raise MlflowException("other failure")
