"""Typed schema of `conf/pipeline.yaml`: the stage DAG, domains, Ray and MLflow settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

PARTS = ("all", "data", "train")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class RayConfig:
    address: str | None = None
    """Ray cluster to join ("auto", "ray://host:10001", ...); null starts a local Ray instance."""
    num_cpus: int = 2
    """CPUs of the local Ray instance (ignored when joining a cluster)."""
    object_store_mb: int = 128
    """Object store size of the local Ray instance in MiB (stages pass only small results)."""

    def __post_init__(self) -> None:
        if self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")
        if self.object_store_mb < 80:
            raise ValueError(
                f"ray.object_store_mb must be >= 80 (Ray's minimum), got {self.object_store_mb}"
            )


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log the run to MLflow (a parent run per pipeline run, a nested run per stage)."""
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; a relative sqlite path is taken relative to the working directory."""
    experiment: str = "pipeline"
    """MLflow experiment name."""
    run_name: str | None = None
    """Name of the parent run; null uses the run directory's name."""
    max_removed_samples_mb: float = 20.0
    """Skip uploading a stage's removed_samples/ folder when it is larger than this."""
    parent_run_id: str | None = None
    """Attach to this existing parent run instead of starting one (set by `cluster=slurm` for
    its jobs; the last job ends the run)."""


@dataclass
class DomainConfig:
    input: str = MISSING
    """Raw input of this domain (file, folder or glob); may use {deps[STAGE]} and {run_dir}."""
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)
    """Extra overrides for this domain's instance of a per-domain stage: stage name -> overrides."""


@dataclass
class StageConfig:
    kind: str = MISSING
    """Registered stage kind (pipeline.registry): data_prep, sample_corpus, train, ..."""
    after: list[str] = field(default_factory=list)
    """Upstream stages; their outputs are this stage's inputs and must complete first."""
    per_domain: bool = False
    """Run one instance per domain (a parallel branch per domain) instead of a single one."""
    overrides: list[str] = field(default_factory=list)
    """Hydra overrides for the stage. Placeholders: {output}, {input}, {inputs}, {deps[STAGE]},
    {domain}, {domain_input}, {run_dir}, {nproc}, {previous} (see pipeline.dag.render)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the stage kind, checked against the kind's own schema."""
    num_cpus: float = 1.0
    """CPUs the stage's Ray task reserves (decides how many stages run at once)."""
    enabled: bool = True
    """A disabled stage is left out of the DAG (its dependants must not need it)."""
    phases: dict[str, list[str]] = field(default_factory=dict)
    """Training phases (`recipe=NAME`, conf/recipe/): phase name -> overrides added after the
    stage's own. The stage runs as one node per phase (`<stage>/<phase>`), in this order, each
    after the previous; {previous} is the previous phase's folder (a phase starts from its
    weights with `checkpoint.init_from={previous}/checkpoints`). Stages after this one read the
    last phase's folder."""

    def __post_init__(self) -> None:
        if self.num_cpus < 0:
            raise ValueError(f"stage num_cpus must be >= 0, got {self.num_cpus}")
        if self.phases and self.per_domain:
            raise ValueError("a stage cannot both be per_domain and have phases")
        for name in self.phases:
            if not _NAME_RE.match(name):
                raise ValueError(
                    f"phase name {name!r} is invalid: use letters, digits, '_' or '-', "
                    "starting with a letter"
                )


@dataclass
class PipelineConfig:
    run_dir: str = "runs/demo"
    """Folder of this pipeline run: a subfolder per stage, logs/, the run lock."""
    dry_run: bool = False
    """Print the DAG and which stages would run or be skipped (and why), then exit."""
    live: bool = True
    """Show the live DAG view (rich) while running; off prints one line per state change."""
    plugins: list[str] = field(default_factory=list)
    """Modules imported before the DAG is built, to register extra stage kinds."""
    domains: dict[str, DomainConfig] = field(default_factory=dict)
    """Input domains; per-domain stages get one branch per domain."""
    stages: dict[str, StageConfig] = field(default_factory=dict)
    """The stages: name -> kind, upstream stages, overrides, options."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where stages run."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow settings."""
    vars: dict[str, Any] = field(default_factory=dict)
    """Named values the config interpolates (`train.steps=${vars.grpo_steps}` in a stage's
    overrides), so one command-line override resizes every stage that uses it."""
    result: dict[str, str] = field(default_factory=dict)
    """The run's result line: name -> `STAGE.KEY[.KEY...]`, a value from a stage's stats.
    When set, the run ends by printing one JSON line `{name: value}` (null where the stage or
    key is missing) for scripts to read, e.g. `sft: acc_sft.accuracy` (conf/r1.yaml)."""
    part: str = "all"
    """Which stages this driver runs: all, data (everything not downstream of a train stage) or
    train (train stages and their dependants; the data part must be complete)."""

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {self.part!r}")
        for name, ref in self.result.items():
            stage = ref.split(".", 1)[0]
            if "." not in ref or stage not in self.stages:
                raise ValueError(
                    f"result.{name}={ref!r}: expected STAGE.KEY with STAGE one of the stages"
                )
        for what, names in (("domain", self.domains), ("stage", self.stages)):
            for name in names:
                if not _NAME_RE.match(name):
                    raise ValueError(
                        f"{what} name {name!r} is invalid: use letters, digits, '_' or '-', "
                        "starting with a letter"
                    )


def register_schema() -> None:
    """Register PipelineConfig as `pipeline_schema` (listed first in conf/pipeline.yaml)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
