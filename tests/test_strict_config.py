"""Unknown config keys fail in every app, with or without Hydra's `+`/`++` (issue 16).

Before: Hydra's hint for `train.stepz=5` said "use +train.stepz=5", and `+train.stepz=5`,
`+read.text_feild=body` or `+bogus=1` were then accepted and ignored (exit 0, defaults used).
Free-form maps by design (remix weights, pipeline stages/options, cluster env) stay open.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appconf.strict import UnknownKeyError, check_keys, compose_checked

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def _cli(app: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", app, *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _schemas():
    from data_prep.config import DataPrepConfig, register_configs
    from pipeline.config import PipelineConfig, register_schema
    from slurm.config import LaunchConfig
    from slurm.config import register_configs as register_launch
    from trainer.config.trainer import TrainerConfig

    register_configs()
    register_schema()
    register_launch()
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="trainer_schema", node=TrainerConfig)
    return {
        "data_prep": DataPrepConfig,
        "trainer": TrainerConfig,
        "pipeline": PipelineConfig,
        "launch": LaunchConfig,
    }


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _every_shipped_config():
    yield "data_prep", ["stage=remix", "input=x", "output=y"]
    for ex in _group_options("executor"):
        yield "data_prep", ["stage=read", "input=x", "output=y", f"executor={ex}"]
    yield "pipeline", []
    for recipe in _group_options("recipe"):  # training phases: stages.train.phases
        yield "pipeline", [f"recipe={recipe}"]
    for cluster in _group_options("cluster"):  # `cluster=` goes to the launch layer
        yield "launch", [f"cluster={cluster}"]
    for group in ("model", "parallel", "precision", "recompute"):
        for option in _group_options(group):
            # production layouts turn on the precision-aware optimizer: it needs a bf16 model
            extra = ["precision=bf16"] if group == "parallel" else []
            yield "trainer", [f"{group}={option}", *extra]


def test_every_shipped_config_has_only_schema_keys():
    schemas = _schemas()
    for app, overrides in _every_shipped_config():
        compose_checked(CONF, app, overrides, schemas[app], app)


@pytest.mark.parametrize(
    "app, overrides, key",
    [
        ("data_prep", ["+read.text_feild=body"], "read.text_feild"),
        ("data_prep", ["++bogus=1"], "bogus"),
        ("data_prep", ["+quality.zh.bogus=1"], "quality.zh.bogus"),
        ("trainer", ["+train.stepz=5"], "train.stepz"),
        ("trainer", ["train.stepz=5"], "train.stepz"),
        ("pipeline", ["+stages.train.bogus=1"], "stages.train.bogus"),
        ("pipeline", ["+domains.en.inptu=x"], "domains.en.inptu"),
    ],
)
def test_unknown_key_is_named(app, overrides, key):
    schemas = _schemas()
    base = ["stage=read", "input=x", "output=y"] if app == "data_prep" else []
    with pytest.raises(UnknownKeyError, match=f"unknown config key '{key}' .not in the {app}"):
        compose_checked(CONF, app, [*base, *overrides], schemas[app], app)


@pytest.mark.parametrize(
    "app, overrides",
    [
        ("data_prep", ["+remix.weights.en=0.5", "+remix.weights.zh=0.5"]),
        ("data_prep", ["remix.weights={zh_man:0.3,en_docs:0.7}", "+langid.thresholds.zh=0.5"]),
        ("data_prep", ["+executor.sbatch_args.qos=high", "+quality.en.c4.min_words=3"]),
        ("launch", ["+cluster.env.NCCL_DEBUG=INFO"]),
        ("pipeline", ["+stages.train.options.launcher=slurm"]),
        ("launch", ["+data_cluster.nodes=4"]),
        (
            "pipeline",
            ["++stages.train.options.nproc_per_node=2", "+domains.en.stage_overrides.read=[x]"],
        ),
    ],
)
def test_free_form_maps_stay_open(app, overrides):
    schemas = _schemas()
    base = ["stage=remix", "input=x", "output=y"] if app == "data_prep" else []
    check_keys(
        compose_checked(CONF, app, [*base, *overrides], schemas[app], app), schemas[app], app
    )


def test_data_prep_cli_refuses_unknown_keys(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "hello world", "id": "a"}\n')
    base = ["stage=read", f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'out'}"]
    for extra in ("+read.text_feild=body", "read.text_feild=body", "+bogus=1", "++bogus=1"):
        line = _one_error_line(_cli("data_prep", *base, extra))
        key = extra.lstrip("+").split("=")[0]
        assert line.startswith(
            f"data_prep: error: unknown config key '{key}' (not in the data_prep"
        )
    assert not (tmp_path / "out").exists()
    assert "did you mean 'read.text_field'" in _one_error_line(
        _cli("data_prep", *base, "+read.text_feild=body")
    )


def test_data_prep_api_refuses_unknown_keys_in_stage_overrides(tmp_path):
    """The pipeline's data_prep kind passes its stage overrides to run_stage."""
    from data_prep import InputError, run_stage
    from data_prep.runner import compose_config

    (tmp_path / "in.jsonl").write_text('{"text": "hello world", "id": "a"}\n')
    args = [f"input={tmp_path / 'in.jsonl'}", f"output={tmp_path / 'out'}", "progress=false"]
    with pytest.raises(InputError, match="unknown config key 'read.text_feild'"):
        run_stage("read", [*args, "+read.text_feild=body"])
    with pytest.raises(InputError, match="unknown config key 'tokenize.wieghts'"):
        compose_config(["stage=read", *args, "+tokenize.wieghts.en=1"], validate=False)
    assert not (tmp_path / "out").exists()


def test_trainer_cli_refuses_unknown_keys(tmp_path):
    for extra in ("+train.stepz=5", "train.stepz=5", "++bogus=1"):
        line = _one_error_line(
            _cli("trainer", "dry_run=true", f"checkpoint.dir={tmp_path}/ck", extra)
        )
        key = extra.lstrip("+").split("=")[0]
        assert line.startswith(f"error: unknown config key '{key}' (not in the trainer schema")


def test_pipeline_cli_refuses_unknown_keys(tmp_path):
    for extra in ("+bogus=1", "++ray.num_cpu=2", "ray.num_cpu=2", "+stages.train.overides=[x]"):
        line = _one_error_line(
            _cli("pipeline", "dry_run=true", f"run_dir={tmp_path}/run", extra, cwd=tmp_path)
        )
        key = extra.lstrip("+").split("=")[0]
        assert line.startswith(f"error: unknown config key '{key}' (not in the pipeline schema")
    assert not (tmp_path / "run").exists()


def _leaves(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("defaults", "hydra"):
                yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


def _schema_default(schema, key: str):
    node = schema
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return "<absent>"
        node = node[part]
    return node


@pytest.mark.parametrize("app", ["trainer", "data_prep", "pipeline"])
def test_app_yaml_does_not_repeat_a_schema_default(app):
    """One place per default: the schema's dataclass; the app YAML only adds or changes."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(_schemas()[app])
    repeated = [
        key
        for key, value in _leaves(OmegaConf.to_container(OmegaConf.load(CONF / f"{app}.yaml")))
        if _schema_default(schema, key) == value and value != "???"
    ]
    assert repeated == [], f"conf/{app}.yaml repeats schema defaults: {repeated}"
