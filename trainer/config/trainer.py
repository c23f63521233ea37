"""Top-level trainer schema (conf/trainer.yaml): composes every group and the run settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainer.config.data import DataConfig
from trainer.config.model import ModelConfig
from trainer.config.optim import OptimConfig
from trainer.config.parallel import ParallelConfig
from trainer.config.precision import PrecisionConfig
from trainer.config.recompute import RecomputeConfig, check_recompute_for_model


@dataclass
class TrainConfig:
    steps: int = 20
    """Optimizer steps of the whole run (resume continues up to this number)."""
    global_batch_size: int = 8
    """Sequences per optimizer step, summed over data-parallel ranks and micro-batches."""
    micro_batch_size: int = 2
    """Sequences per forward/backward pass on one rank."""
    seed: int = 1234
    """Seed of weight initialisation and of megatron's RNG tracker."""
    eval_interval: int = 10
    """Run validation every this many steps (0 = never; also after the last step if > 0)."""
    eval_iters: int = 2
    """Global batches per validation run."""
    log_interval: int = 1
    """Report training metrics to the callbacks every this many steps."""

    def __post_init__(self) -> None:
        for name in ("steps", "global_batch_size", "micro_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"train config: {name} must be >= 1")
        if self.eval_interval < 0 or self.eval_iters < 0:
            raise ValueError("train config: eval_interval and eval_iters must be >= 0")


@dataclass
class CheckpointConfig:
    dir: str = "runs/trainer"
    """Run directory: checkpoints (iter_XXXXXXX/), the `latest` pointer and summary.json."""
    save_interval: int = 0
    """Save every this many steps (0 = no step cadence; see save_interval_s)."""
    save_interval_s: float = 1800.0
    """Also save when this many seconds passed since the last save (rank 0's clock; 0 = off):
    a run killed without warning (SIGKILL, node loss) loses at most this much work. SIGTERM,
    SIGINT and the stop file always save first."""
    keep_last: int = 2
    """Complete checkpoints of this run's lineage to keep, by step (older ones are pruned after
    a successful save; other runs' checkpoints and the one `latest` names never are)."""
    resume: bool = True
    """Resume from `dir/latest` (or, if it is missing or damaged, the newest complete
    checkpoint). false = start a new run: existing checkpoints are moved to dir/previous/."""
    init_from: str | None = None
    """Checkpoint directory (iter_XXXXXXX) whose model weights initialise a fresh run, or
    `hf:DIR`, a Hugging Face folder (llama, deepseek_v2, deepseek_v3) imported first."""
    async_save: bool = False
    """Write checkpoints in a forked process while training continues (megatron-core's async
    dist_checkpointing save); `latest` moves when every rank's write is finished, checked after
    each step. Costs one more host copy of the saved state while a save is in flight."""
    inject_write_delay_s: float = 0.0
    """Test only: an async save's writer waits this long before writing (a slow file system)."""
    stop_file: str | None = None
    """When this file appears (checked after every step), save a checkpoint and exit with code
    75 so the job is requeued and resumes; conf/trainer.yaml reads env PRETRAIN_STOP_FILE,
    which the sbatch script sets and touches on Slurm's pre-timeout signal."""

    def __post_init__(self) -> None:
        if self.save_interval < 0 or self.save_interval_s < 0 or self.keep_last < 1:
            raise ValueError(
                "checkpoint config: save_interval >= 0, save_interval_s >= 0 and keep_last >= 1 "
                "required"
            )


@dataclass
class LoggingConfig:
    console: bool = True
    """Print metrics to the console (rich table rows) on rank 0."""
    mlflow: bool = False
    """Log params/metrics to MLflow on rank 0 (run id from env MLFLOW_RUN_ID if set)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None = env MLFLOW_TRACKING_URI or sqlite:///mlflow.db."""
    experiment: str = "trainer"
    """MLflow experiment name when no run id is given."""
    system_metrics_interval_s: float = 10.0
    """With mlflow: one process per node samples CPU, memory, disk, network (and GPU where
    there is one) every this many seconds in a background thread, logged as `system/<host>/*`
    (MLflow's SystemMetricsMonitor). 0 = off."""
    peak_flops_per_device: float = 1.0e12
    """Peak FLOP/s of one device, the MFU denominator (H100 bf16 dense: 989e12)."""


@dataclass
class ResilienceConfig:
    """Failure detection (trainer.watchdog)."""

    hang_timeout_s: float = 1800.0
    """A rank without progress (a step, an eval, a save) this long dumps its stacks, writes
    checkpoint.dir/hang/ and exits 76; 0 turns the watchdog off. Keep it above the slowest save
    and first step; it is independent of the collectives' own (distributed) timeout."""
    straggler_interval: int = 50
    """Every this many steps compare the ranks' compute times (one all-gather of 3 numbers per
    rank): `straggler/*` metrics, and a line naming the slowest ranks when one is
    `straggler_ratio` times its pipeline stage's median or slower. 0 = off."""
    straggler_ratio: float = 1.2
    inject_slow_rank: int = -1
    """Test only: this rank's compute takes `inject_slow_factor` times as long (it sleeps)."""
    inject_slow_factor: float = 2.0
    inject_hang_rank: int = -1
    """Test only: this rank sleeps forever at the start of step `inject_hang_step` (first
    attempt only: a restarted job runs through)."""
    inject_hang_step: int = -1
    inject_kill_rank: int = -1
    """Test only: this rank SIGKILLs itself at the start of step `inject_kill_step` (first
    attempt only)."""
    inject_kill_step: int = -1

    def __post_init__(self) -> None:
        if self.hang_timeout_s < 0:
            raise ValueError(f"resilience.hang_timeout_s must be >= 0, got {self.hang_timeout_s}")
        if self.straggler_interval < 0:
            raise ValueError(
                f"resilience.straggler_interval must be >= 0, got {self.straggler_interval}"
            )


@dataclass
class TrainerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture (conf/model/*)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Process layout (conf/parallel/*)."""
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    """Numeric precision (conf/precision/*)."""
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    """Activation recompute (conf/recompute/*): none, selective modules, or full layers."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard manifest and sequence settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, batch sizes, validation cadence."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Where and how often checkpoints are written."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric callbacks."""
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    """Hang detection."""
    dry_run: bool = False
    """Build nothing heavy: print layout, parameter counts, memory estimate and a JSON line.
    With `cluster=...` (slurm/launch.py): print the job script instead of submitting it."""
    world_size: int | None = None
    """Dry run only: world size to plan for (default: env WORLD_SIZE or 1)."""

    def __post_init__(self) -> None:
        if self.data.seq_length > self.model.max_position_embeddings:
            raise ValueError(
                f"trainer config: data.seq_length={self.data.seq_length} exceeds the model's "
                f"rope limit max_position_embeddings={self.model.max_position_embeddings}"
            )
        if self.world_size is not None and self.world_size < 1:
            raise ValueError("trainer config: world_size must be >= 1")
        self._check_optimizer_precision()
        self._check_a2a_overlap()
        check_recompute_for_model(self.recompute, self.model, self.parallel, self.precision)

    def _check_optimizer_precision(self) -> None:
        if not self.optim.precision_aware:
            return
        if not self.parallel.use_distributed_optimizer:
            raise ValueError(
                "trainer config: optim.precision_aware needs parallel.use_distributed_optimizer"
                "=true (megatron-core shards the low-precision states with it)"
            )
        if self.precision.params_dtype == "fp32":
            raise ValueError(
                "trainer config: optim.precision_aware needs a bf16/fp16 model (precision=bf16 "
                "or an fp8 precision); an fp32 model has no lower-precision states to keep"
            )

    def _check_a2a_overlap(self) -> None:
        """megatron-core's requirements of `overlap_moe_expert_parallel_comm`, before any
        process starts (megatron asserts them one by one at model build)."""
        p = self.parallel
        if not p.moe_a2a_overlap:
            return
        problems = []
        if p.expert_parallel < 2:
            problems.append("expert_parallel > 1")
        if p.moe_token_dispatcher not in ("alltoall", "flex"):
            problems.append("moe_token_dispatcher alltoall or flex")
        if p.pipeline_parallel > 1 and not p.virtual_pipeline_parallel:
            problems.append("virtual pipeline stages when pipeline_parallel > 1")
        if self.precision.params_dtype == "fp32":
            problems.append("a bf16/fp16 model")
        if self.model.mtp_num_layers > 1:
            problems.append("at most one MTP layer")
        if self.model.mtp_num_layers == 1 and p.pipeline_parallel < 2:
            problems.append("pipeline_parallel > 1 with an MTP layer")
        if problems:
            raise ValueError(
                "trainer config: parallel.moe_a2a_overlap needs " + ", ".join(problems)
            )

    def micro_batches(self, data_parallel: int) -> int:
        """Micro-batches per step on each rank; raises if the batch sizes do not divide."""
        per_step = self.train.micro_batch_size * data_parallel
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"trainer config: global_batch_size={self.train.global_batch_size} is not "
                f"divisible by micro_batch_size x DP = {self.train.micro_batch_size} x "
                f"{data_parallel}"
            )
        return self.train.global_batch_size // per_step
