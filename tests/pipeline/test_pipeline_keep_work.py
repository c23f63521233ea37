"""Never lose work (fake DAG, real Ray and MLflow): a stage's new config is validated by its app
before its earlier outputs are touched; earlier outputs are moved aside into run_dir/.trash (and
`python -m pipeline trash` lists and purges them), never deleted; changing only extend-only keys
(train.steps raised) continues training; SIGTERM to the driver ends its MLflow runs KILLED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pipeline_testlib import REPO, cli_command, cli_env, compose, output_files

from pipeline import PipelineError, run_pipeline
from pipeline.dag import build_graph
from pipeline.engine import plan
from pipeline.state import MARKER, TRASH, extension

TRAIN = "stages.train.overrides=['checkpoint.dir={output}/checkpoints','data={deps[join]}',{}]"


def _train(*extra: str) -> str:
    return TRAIN.replace("{}", ",".join(f"'{e}'" for e in extra))


def _trash(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "trash", f"run_dir={run}", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_train_override_fails_before_any_output_is_touched(ray_session, tmp_path):
    run, off = tmp_path / "run", "tracking.enabled=false"
    run_pipeline(compose(run, off, _train("train.steps=4")))
    before = output_files(run)
    marker = (run / "train" / MARKER).read_bytes()

    # caught at plan time (the train stage's inputs are final): nothing runs at all
    with pytest.raises(ValueError, match=r"stage train: bad config \(train.steps must be >= 1"):
        run_pipeline(compose(run, off, _train("train.steps=-1")))
    # upstream reruns too, so the train task checks it, still before touching its folder
    with pytest.raises(PipelineError, match=r"stage train failed: stage train: bad config"):
        run_pipeline(compose(run, off, _train("train.steps=-1"), "+stages.join.options.suffix=x"))
    assert (run / "train" / MARKER).read_bytes() == marker
    after = output_files(run)
    assert {k: v for k, v in after.items() if k.startswith("train/")} == {
        k: v for k, v in before.items() if k.startswith("train/")
    }
    assert not (run / TRASH / "train").exists()


def test_raising_steps_continues_other_changes_move_outputs_aside(ray_session, tmp_path):
    run, off = tmp_path / "run", "tracking.enabled=false"
    run_pipeline(compose(run, off, _train("train.steps=4")))
    ckpts = run / "train/checkpoints"

    decisions = plan(build_graph(compose(run, off, _train("train.steps=6", "logging.x=1"))))
    assert decisions["train"].action == "continue", decisions["train"]
    assert decisions["train"].reason == (
        "continue: logging.x (default) -> 1, train.steps 4 -> 6 (resumes from its checkpoint)"
    )
    res = run_pipeline(compose(run, off, _train("train.steps=6", "logging.x=1")))
    assert res.ran == ["train"] and not (run / TRASH).exists()
    assert "fake trainer: resumed from step 4" in (run / "logs/train.log").read_text()
    assert sorted(p.name for p in ckpts.glob("step_*")) == [
        f"step_{i:04d}.json" for i in range(1, 7)
    ]

    # fewer steps, or any other key: restart, the finished run moved aside (not deleted)
    fewer = plan(build_graph(compose(run, off, _train("train.steps=3", "logging.x=1"))))
    assert fewer["train"].action == "restart"
    assert "config changed (overrides: train.steps)" in fewer["train"].reason
    run_pipeline(compose(run, off, _train("train.steps=3", "logging.x=1", "model=other")))
    assert sorted(p.name for p in ckpts.glob("step_*")) == [
        f"step_{i:04d}.json" for i in range(1, 4)
    ]
    (aside,) = (run / TRASH).glob("train.*")
    assert len(list((aside / "checkpoints").glob("step_*"))) == 6 and (aside / MARKER).exists()

    listing = _trash(run)
    assert listing.returncode == 0, listing.stderr
    assert f"{aside.name}  stage train, moved " in listing.stdout
    assert "config changed (overrides: model, train.steps)" in listing.stdout
    assert "1 folder(s) moved aside" in listing.stdout
    gone = _trash(run, "purge=true")
    assert gone.returncode == 0 and "deleted 1 folder(s)" in gone.stdout
    assert not aside.exists() and "0 folder(s) moved aside" in _trash(run).stdout


def test_removed_domain_is_moved_aside(ray_session, tmp_path):
    run, off = tmp_path / "run", "tracking.enabled=false"
    run_pipeline(compose(run, off))
    run_pipeline(compose(run, off, "~domains.zh"))
    assert not (run / "clean/zh").exists()
    names = sorted(p.name.rsplit(".", 1)[0] for p in (run / TRASH).iterdir())
    assert names == ["clean.zh", "join", "source.zh", "train"]  # join/train reran on fewer inputs


def test_extension_needs_same_code_inputs_and_other_overrides(tmp_path):
    graph = build_graph(compose(tmp_path, _train("train.steps=4", "checkpoint.keep_last=2")))
    node = graph.nodes["train"]
    record = {
        "config": dict(node.config),
        "code_version": node.code_version,
        "inputs": dict(node.input_fingerprints),
    }
    new = _train("checkpoint.keep_last=3", "train.steps=4")  # reordered and one changed
    other = build_graph(compose(tmp_path, new)).nodes["train"]
    assert extension(other, record) == "checkpoint.keep_last 2 -> 3"
    assert extension(other, {**record, "code_version": "old"}) is None
    assert extension(other, {**record, "inputs": {"join": "old"}}) is None
    longer = build_graph(compose(tmp_path, _train("train.steps=4", "train.steps=5")))
    assert extension(longer.nodes["train"], record).startswith(
        "checkpoint.keep_last 2 -> (default)"
    )


def _runs(db: Path) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("fake").experiment_id
    return client.search_runs([exp])


@pytest.mark.slow  # two driver starts (Ray) on 2 cores: ~50 s
def test_sigterm_ends_driver_and_its_mlflow_runs_killed(tmp_path):
    """Before: SIGTERM left the train stage's MLflow run RUNNING forever."""
    run = tmp_path / "run"
    cmd = cli_command(run, _train("train.steps=20", "sleep_s=0.2"))
    with open(tmp_path / "driver.log", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=out, stderr=out)
        deadline = time.time() + 120
        while not (run / "train/checkpoints/step_0002.json").exists():
            assert proc.poll() is None and time.time() < deadline, (
                tmp_path / "driver.log"
            ).read_text()
            time.sleep(0.1)
        started = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    log = (tmp_path / "driver.log").read_text()
    assert code == 143, log
    assert "terminated (SIGTERM); rerun the same command to resume" in log
    runs = {r.info.run_name: r.info.status for r in _runs(tmp_path / "mlflow.db")}
    assert runs["run"] == "KILLED" and runs["train"] == "KILLED", runs
    assert "RUNNING" not in runs.values(), runs
    print(f"driver exited {time.time() - started:.1f}s after SIGTERM")
    # the rerun resumes the interrupted training
    res = subprocess.run(
        cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "fake trainer: resumed from step" in (run / "logs/train.log").read_text()


def test_typo_in_a_data_prep_stage_fails_before_its_finished_output_is_touched(tmp_path):
    """Before: a typo'd key in train_tokenizer's overrides deleted the trained tokenizer."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_schema
    from pipeline.state import decide, write_marker
    from pipeline.task import InvalidConfig, validate

    register_schema()
    typo = (
        "stages.train_tokenizer.overrides="
        "['input={input}','output={output}','train_tokenizer.vocab_sise=4096']"
    )
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        good = OmegaConf.to_object(hydra_compose("pipeline", [f"run_dir={tmp_path}"]))
        bad = OmegaConf.to_object(hydra_compose("pipeline", [f"run_dir={tmp_path}", typo]))
    node = build_graph(good).nodes["train_tokenizer"]
    node.output.mkdir(parents=True)
    (node.output / "tokenizer.json").write_text("{}")  # the finished stage
    write_marker(node, {}, 0.0, None)
    node = build_graph(bad).nodes["train_tokenizer"]
    decision = decide(node)
    assert decision.action == "restart", decision
    with pytest.raises(InvalidConfig, match=r"unknown config key 'train_tokenizer.vocab_sise'"):
        validate(node, decision)
    assert (node.output / "tokenizer.json").read_text() == "{}" and (node.output / MARKER).exists()
