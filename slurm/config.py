"""Typed schemas: where a job runs (`ClusterConfig`, the `cluster:` group of conf/cluster/*.yaml)
and what runs (`TrainJob`, `CommandJob`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SCHEDULERS = ("local", "slurm")
LAUNCHES = ("torchrun", "srun")
_TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$|^\d+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that land in `#SBATCH --opt=VALUE` lines: sbatch reads them itself (no shell), so only a
# line break (which would end the comment and start a shell line) or a space/quote (which sbatch
# would split or keep literally) can do harm; such values are refused, not escaped.
_DIRECTIVE_RE = re.compile(r"^[^\s'\"\\]+$")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class ClusterConfig:
    """Where and with which resources a job runs. One YAML per cluster in conf/cluster/."""

    scheduler: str = "slurm"
    """`slurm` (sbatch) or `local` (the same script run with bash on this machine, no Slurm)."""
    partition: str | None = None
    """Slurm partition (`--partition`); None = the cluster's default partition."""
    account: str | None = None
    """Slurm account to charge (`--account`)."""
    qos: str | None = None
    """Slurm quality of service (`--qos`)."""
    nodes: int = 1
    """Number of nodes; torchrun runs once per node and spawns `procs_per_node` workers."""
    gpus_per_node: int = 0
    """GPUs per node (`--gpus-per-node`); 0 = CPU job."""
    procs_per_node: int | None = None
    """Training processes per node; None = gpus_per_node, or cpus_per_task on CPU."""
    cpus_per_task: int = 1
    """CPUs for the one task per node (shared by all its training processes)."""
    mem: str | None = None
    """Memory per node (`--mem`, e.g. `64G`, `0` = all); None = the cluster default."""
    constraint: str | None = None
    """Node features (`--constraint`, e.g. `h100&ib`)."""
    time: str = "01:00:00"
    """Wall-clock limit (`--time`): `MM`, `HH:MM:SS` or `D-HH:MM:SS`."""
    job_name: str | None = None
    """Job name (`--job-name`), also naming the script and the logs `<run_dir>/logs/<name>-<id>.out`
    and `.err`; None = chosen by what runs (train, data, data_prep-<stage>, pipeline-<part>)."""
    exclusive: bool = False
    """Request whole nodes (`--exclusive`)."""
    python: str | None = None
    """Interpreter on the compute nodes (after env_setup); None = the submitting interpreter."""
    env_setup: list[str] = field(default_factory=list)
    """Shell lines run before launching, e.g. `module load cuda/12.4`,
    `source .venv/bin/activate`."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables exported in the job (values are quoted, not expanded)."""
    container_image: str | None = None
    """Container image for `srun --container-image` (pyxis/enroot); None = no container."""
    container_mounts: list[str] = field(default_factory=list)
    """`src:dst` mounts for the container (`--container-mounts`)."""
    master_port: int | None = None
    """Rendezvous port on the head node; None = the first port from 20000 + job id % 20000 that
    nothing on the head node listens on."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Further sbatch options, each starting with `--`, e.g. `--reservation=llm`."""
    mpi: str = "none"
    """`srun --mpi=TYPE`; `none` (default) avoids PMIx/PMI2 plugins torchrun does not need."""
    launch: str = "torchrun"
    """Training launch: `torchrun` (one task per node, torchrun spawns `procs_per_node` workers)
    or `srun` (one Slurm task per GPU/process; ranks come from SLURM_PROCID)."""
    requeue: bool = True
    """Submit requeueable (`--requeue`): after a pre-timeout stop the job requeues itself, and a
    preempted job is requeued by Slurm; both resume from the checkpoint and completion markers."""
    signal_before_s: int = 120
    """Ask for SIGUSR1 this many seconds before the time limit (`--signal=B:USR1@N`); the job then
    checkpoints, stops and requeues. 0 = no signal."""
    max_requeues: int = 3
    """Bounded retries: a job stopped by the signal requeues at most this many times."""
    max_restarts: int = 2
    """Training jobs that fail (a rank crashed or was killed, the hang watchdog fired) are
    requeued at most this many times, resuming from the last checkpoint; a node-local failure
    also excludes the node (see slurm.recover). Locally: `torchrun --max-restarts`."""
    ray_port: int | None = None
    """Data jobs: Ray head port on the first node; None = 30000 + job id % 20000."""
    ray_object_store_mb: int = 1024
    """Data jobs: object store per Ray node in MiB (stages pass only small results)."""
    ray_wait_s: int = 300
    """Data jobs: fail if not every node has joined the Ray cluster after this many seconds."""
    wait: bool = False
    """Apps (`python -m trainer|data_prep|pipeline cluster=...`): after submitting, block until the
    job(s) end and exit non-zero if one fails. False: print the job ids and log paths and return."""

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"cluster.scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}"
            )
        for name in ("nodes", "cpus_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"cluster.{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"cluster.gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.procs_per_node is not None and self.procs_per_node < 1:
            raise ValueError(f"cluster.procs_per_node must be >= 1, got {self.procs_per_node}")
        if not _TIME_RE.match(self.time):
            raise ValueError(f"cluster.time {self.time!r} is not MM, HH:MM:SS or D-HH:MM:SS")
        if self.job_name is not None and not _NAME_RE.match(self.job_name):
            raise ValueError(f"cluster.job_name {self.job_name!r}: use letters, digits, _ . -")
        for name in ("partition", "account", "qos", "mem", "constraint"):
            value = getattr(self, name)
            if value is not None and not _DIRECTIVE_RE.match(value):
                raise ValueError(
                    f"cluster.{name} {value!r}: spaces, quotes, backslashes and line breaks "
                    "are not allowed in sbatch directives"
                )
        for opt in self.extra_sbatch:
            if not opt.startswith("--") or not _DIRECTIVE_RE.match(opt):
                raise ValueError(
                    f"cluster.extra_sbatch entry {opt!r} must be one `--option[=value]` "
                    "without spaces, quotes or line breaks"
                )
        for key in self.env:
            if not _ENV_KEY_RE.match(str(key)):
                raise ValueError(f"cluster.env key {key!r} is not a valid variable name")
        if not re.match(r"^[a-z0-9_]+$", self.mpi):
            raise ValueError(
                f"cluster.mpi {self.mpi!r}: expected an srun --mpi type, e.g. none, pmix"
            )
        if self.launch not in LAUNCHES:
            raise ValueError(f"cluster.launch must be one of {LAUNCHES}, got {self.launch!r}")
        for name in ("signal_before_s", "max_requeues", "max_restarts"):
            if getattr(self, name) < 0:
                raise ValueError(f"cluster.{name} must be >= 0, got {getattr(self, name)}")
        if self.scheduler == "local" and self.nodes != 1:
            raise ValueError("cluster.scheduler=local runs on this machine: nodes must be 1")
        for name in ("master_port", "ray_port"):
            port = getattr(self, name)
            if port is not None and not 1024 <= port <= 65535:
                raise ValueError(f"cluster.{name} {port} is not in 1024..65535")

    @property
    def nproc_per_node(self) -> int:
        """Training processes torchrun starts on each node."""
        return self.procs_per_node or self.gpus_per_node or self.cpus_per_task

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node


@dataclass
class TrainJob:
    """Run the trainer (`-m trainer` under torchrun) with Hydra overrides."""

    overrides: list[str]
    """Hydra overrides for the trainer, e.g. `model=tiny_v3 train.max_steps=10`."""
    run_dir: str
    """Directory for the script, logs (`logs/`) and the trainer's Hydra output (`hydra/`)."""
    workdir: str | None = None
    """Working directory of the job; None = the current directory at render time."""
    python: str | None = None
    """Interpreter when the cluster names none; None = this process's interpreter."""
    module: str = "trainer"
    """Python module torchrun runs."""


@dataclass
class CommandJob:
    """Run one command (argv): once per node through srun, or once in the batch script."""

    command: list[str]
    """The argv to run, e.g. `["python", "-c", "print(1)"]`."""
    run_dir: str
    """Directory for the script and the logs (`logs/`)."""
    workdir: str | None = None
    """Working directory of the job; None = the current directory at render time."""
    per_node: bool = True
    """True: `srun` runs it on every node; False: the batch script runs it on the first node
    (a driver that starts its own job steps, e.g. the pipeline's training part)."""
    restart_on_failure: bool = False
    """Requeue after a failure (at most `cluster.max_restarts` times): for commands that resume
    where they stopped, e.g. the pipeline's training part."""

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("CommandJob.command is empty")


@dataclass
class RayJob:
    """Start a Ray cluster over the allocation (head on the first node, a worker on each other
    node), wait until every node has joined, run `command` as the driver with RAY_ADDRESS set,
    then stop the cluster."""

    command: list[str]
    """The driver's argv, e.g. `["python", "-m", "data_prep", "executor=ray", ...]`."""
    run_dir: str
    """Directory for the script and the logs (`logs/`)."""
    workdir: str | None = None
    """Working directory of the job; None = the current directory at render time."""
    python: str | None = None
    """Interpreter whose `ray` CLI starts the nodes; None = the cluster's, else this process's."""

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("RayJob.command is empty")


@dataclass
class SlurmAppConfig:
    """Schema of conf/slurm.yaml: `python -m slurm submit|render cluster=NAME -- overrides`."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The cluster group (conf/cluster/*.yaml)."""
    run_dir: str = "runs/slurm"
    """Where the script, logs and the submit config go."""
    wait: bool = True
    """After submitting, wait for the job and fail if it fails."""
    poll_s: float = 2.0
    """Seconds between state polls while waiting."""
    timeout_s: float | None = None
    """Give up waiting after this many seconds (the job keeps running); None = wait forever."""


@dataclass
class LaunchConfig:
    """Schema of conf/launch.yaml: the launch overrides on an app's command line
    (`python -m trainer|data_prep|pipeline cluster=NAME cluster.KEY=VALUE ...`)."""

    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig(scheduler="local"))
    """Where the command runs (conf/cluster/*): `local` here; `slurm` submits it as job(s)."""
    data_cluster: dict[str, Any] = field(default_factory=dict)
    """Pipeline only: changes to `cluster` for the data job, e.g.
    `'++data_cluster={partition: cpu, gpus_per_node: 0, nodes: 4}'` or `+data_cluster.nodes=4`."""


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (listed first in conf/slurm.yaml's and
    conf/launch.yaml's defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="slurm_app_schema", node=SlurmAppConfig)
    ConfigStore.instance().store(name="launch_schema", node=LaunchConfig)


def load_cluster(spec: ClusterConfig | DictConfig | dict[str, Any] | str) -> ClusterConfig:
    """A validated ClusterConfig from an instance, a mapping, a name in conf/cluster/ or the
    path of a YAML file."""
    if isinstance(spec, ClusterConfig):
        return spec
    if isinstance(spec, str) and spec.endswith((".yaml", ".yml")) and Path(spec).is_file():
        spec = OmegaConf.load(spec)
    elif isinstance(spec, str):
        path = CONF_DIR / "cluster" / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml"))
            raise ValueError(f"unknown cluster {spec!r}; known: {', '.join(known)}")
        spec = OmegaConf.load(path)
    merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig), spec)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
