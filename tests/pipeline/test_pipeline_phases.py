"""Training phases (`recipe=NAME`, conf/recipe/): the train stage runs as one stage per phase, each
starting from the previous phase's final weights, each with its own MLflow run.

- DeepSeek-V3's and V2's recipes (and the tiny one) expand into chained train stages whose trainer
  configs the trainer's dry run plans; from phase to phase only weightless model fields change.
- On the real trainer, a tiny model trained at 32 tokens with plain RoPE and then extended with a
  YaRN phase to 128 has a lower held-out bits per byte at 128 tokens than the unextended model.
- The phase chain resumes after the driver is SIGKILLed in the second phase (stand-in trainer).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pipeline_testlib import (
    REPO,
    check_stage_processes_die,
    cli_command,
    cli_env,
    compose,
    sigkill_driver_when,
)

from appconf.strict import compose_checked
from pipeline import run_pipeline
from pipeline.config import PipelineConfig
from pipeline.dag import build_graph
from pipeline.kinds.train import override_value
from trainer.checkpoint_store import model_differences
from trainer.config.model import PHASE_FIELDS
from trainer.config.trainer import TrainerConfig

CONF = REPO / "conf"
PHASES = {
    "deepseek_v3": {
        "pretrain_4k": (4096, "rope", 15360),
        "yarn_32k": (32768, "yarn", 1920),
        "yarn_128k": (131072, "yarn", 480),
    },
    "deepseek_v2": {"pretrain_4k": (4096, "rope", 9216), "yarn_32k": (32768, "yarn", 576)},
    "tiny_yarn": {"short": (32, "rope", 8), "yarn_4x": (128, "yarn", 8)},
}


def _trainer_config(overrides: list[str]) -> TrainerConfig:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)
    extra = ["world_size=1", "train.micro_batch_size=1"]  # any layout: the phase sets none
    cfg = compose_checked(CONF, "trainer", [*overrides, *extra], TrainerConfig, "trainer")
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize("recipe", sorted(PHASES))
def test_recipe_runs_as_chained_phases_the_trainer_accepts(recipe: str, tmp_path: Path) -> None:
    from pipeline.config import register_schema
    from trainer.dry_run import plan

    register_schema()
    overrides = [f"run_dir={tmp_path / 'run'}", f"recipe={recipe}"]
    cfg = compose_checked(CONF, "pipeline", overrides, PipelineConfig, "pipeline")
    graph = build_graph(OmegaConf.to_object(cfg))
    keys = [key for key in graph.nodes if key.startswith("train/")]
    assert keys == [f"train/{phase}" for phase in PHASES[recipe]]
    assert graph.nodes["export"].deps == [keys[-1]]  # stages after training read the last phase
    models, params = [], set()
    for previous, key in zip([None, *keys], keys, strict=False):
        node = graph.nodes[key]
        init = override_value(node.overrides, "checkpoint.init_from")
        assert init == (previous and f"{graph.nodes[previous].output}/checkpoints"), key
        assert previous is None or previous in node.deps
        trainer_cfg = _trainer_config(node.overrides)
        want = PHASES[recipe][node.phase]
        got = trainer_cfg.data.seq_length, trainer_cfg.model.rope_type
        assert (*got, trainer_cfg.train.global_batch_size) == want, key
        assert trainer_cfg.data.seq_length <= trainer_cfg.model.max_position_embeddings
        params.add(plan(trainer_cfg)["total_params"])
        models.append(dataclasses.asdict(trainer_cfg.model))
    for before, after in zip(models, models[1:], strict=False):
        assert not model_differences(before, after, PHASE_FIELDS)  # init_from loads it
    assert len(params) == 1  # one architecture through every phase


def test_init_from_tolerates_weightless_fields_only() -> None:
    from trainer.config.model import ModelConfig

    base = dataclasses.asdict(ModelConfig())
    yarn = {**base, "rope_type": "yarn", "rotary_scaling_factor": 4.0, "max_position_embeddings": 2}
    assert model_differences(base, yarn, PHASE_FIELDS) == []
    assert model_differences(base, {**yarn, "num_layers": 3}, PHASE_FIELDS) == ["num_layers=4 vs 3"]


def _holdout(root: Path) -> Path:
    """Whole license texts the corpus (tests/trainer/real_corpus.py) does not contain: long
    documents, so bits per byte at 128 tokens scores full 128-token windows."""
    (root / "licenses").mkdir(parents=True)
    texts = [Path("/usr/share/common-licenses", n).read_text() for n in ("GPL-1", "MPL-1.1", "BSD")]
    lines = [json.dumps({"text": t}) for t in texts]
    (root / "licenses/docs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _bpb(ckpt: Path, holdout: Path, seq_length: int) -> float:
    cmd = [sys.executable, "-m", "trainer.bpb", f"checkpoint.dir={ckpt}", f"holdout={holdout}"]
    done = subprocess.run(
        [*cmd, f"seq_length={seq_length}"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["bpb"]["all"]


@pytest.mark.slow
def test_yarn_phase_lowers_the_held_out_loss_at_4x_the_length(ray_session, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.trainer.real_corpus import build_corpus

    manifest = build_corpus(tmp_path / "corpus")
    stage = [
        f"data.manifest={manifest}",
        "checkpoint.dir={output}/checkpoints",
        "model.num_experts=null",  # dense MLA: the rope part is what the phases change
        "model.mtp_num_layers=0",
        "train.eval_interval=0",
        "logging.mlflow=true",
    ]
    cfg = compose(
        tmp_path / "run",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        f"hydra.searchpath=[file://{CONF}]",
        "+recipe=tiny_yarn",
        "stages.train.overrides=[" + ",".join(f"'{o}'" for o in stage) + "]",
        config_name="real_train",
    )
    run_pipeline(cfg)
    train = tmp_path / "run/train"
    log = (tmp_path / "run/logs/train.yarn_4x.log").read_text()
    assert f"init_from {train}/short/checkpoints/iter_0000300: model fields differ" in log
    holdout = _holdout(tmp_path / "holdout")
    unextended = _bpb(train / "short/checkpoints", holdout, 128)  # plain RoPE, 4x its length
    extended = _bpb(train / "yarn_4x/checkpoints", holdout, 128)
    print(f"held-out bpb at 128 tokens: unextended {unextended:.4f}, extended {extended:.4f}")
    assert extended < unextended - 0.02, (extended, unextended)  # seen: 2.335 vs 2.386

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("keep_work").experiment_id
    runs = client.search_runs([exp], filter_string="tags.`pipeline.stage` = 'train'")
    phases = {r.info.run_name: (r.data.tags["pipeline.phase"], r.info.status) for r in runs}
    assert phases == {
        "train/short": ("short", "FINISHED"),
        "train/yarn_4x": ("yarn_4x", "FINISHED"),
    }


FAKE_PHASES = (  # one train stage (conf/real_train.yaml) of the stand-in trainer, two phases
    "+recipe=fake_phases",
    "stages.train.options.module=pipeline_fake_trainer",
    "stages.train.overrides=['checkpoint.dir={output}/checkpoints']",
    "tracking.experiment=phases",
)


@pytest.mark.slow
def test_phase_chain_resumes_after_a_kill(tmp_path: Path) -> None:
    run = tmp_path / "run"
    long = run / "train/long/checkpoints"
    cmd = cli_command(run, *FAKE_PHASES, config_name="real_train")
    tree = sigkill_driver_when(
        cmd,
        tmp_path,
        lambda: (long / "step_0002.json").exists(),
        "step 2 of the second phase",
        timeout=120,
    )
    check_stage_processes_die(tree)
    assert (run / "train/short/checkpoints/summary.json").exists()
    assert not (long / "summary.json").exists()

    res = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[pipeline] train/short: running" not in res.stdout  # the finished phase is kept
    log = (run / "logs/train.long.log").read_text()
    resumed = [int(ln.rsplit(" ", 1)[1]) for ln in log.splitlines() if "resumed from step" in ln]
    assert resumed and resumed[-1] >= 2, log
    summary = json.loads((long / "summary.json").read_text())
    assert summary["final_step"] == 6
    assert (summary["init_from"], summary["init_step"]) == (str(run / "train/short/checkpoints"), 3)
