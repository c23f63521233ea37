"""The training loop: megatron-core schedules, DDP, optimizer, metrics, validation.

`Trainer` assumes `trainer.parallel.initialize_parallel` has run. It builds the model chunks
(one per virtual pipeline stage), wraps them in megatron's DistributedDataParallel, builds
megatron's optimizer (AdamW + clipping, optionally distributed) and runs steps through
`get_forward_backward_func` (no pipelining, 1F1B or interleaved 1F1B, chosen by megatron).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.enums import ModelType
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from trainer.batches import microbatches
from trainer.checkpoint import AsyncSaves, load_checkpoint, save_checkpoint
from trainer.checkpoint_store import Checkpoint, checkpoint_at
from trainer.config.model import PHASE_FIELDS
from trainer.config.trainer import TrainerConfig
from trainer.metrics import MetricsCollector
from trainer.model import build_model, build_transformer_config
from trainer.precision import megatron_precision_kwargs, optimizer_precision_kwargs
from trainer.schedule import lr_at
from trainer.straggler import Report, StragglerMonitor


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor) -> tuple:
    """Per-token cross-entropy summed over unmasked tokens (megatron 3-tuple convention)."""
    mask = loss_mask.view(-1).float()
    loss = torch.sum(output_tensor.float().view(-1) * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.stack([loss.detach(), mask.sum().detach()])
    return loss, num_tokens, {"lm loss": report}


def _forward_step(data_iterator: Any, model: torch.nn.Module) -> tuple:
    batch = next(data_iterator)
    if torch.cuda.is_available():
        batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    output = model(
        batch["tokens"],
        batch["position_ids"],
        None,
        labels=batch["labels"],
        loss_mask=batch["loss_mask"],
    )
    return output, partial(_loss_func, batch["loss_mask"])


class Trainer:
    """Owns model chunks, optimizer and step counter of one run on this rank."""

    def __init__(
        self,
        cfg: TrainerConfig,
        train_data: Sequence[Any],
        valid_data: Sequence[Any] | None = None,
        config_overrides: dict[str, Any] | None = None,
    ):
        self.cfg = cfg
        self.train_data, self.valid_data = train_data, valid_data
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_rank = ps.get_data_parallel_rank()
        self.num_microbatches = cfg.micro_batches(self.dp_size)
        self.tconfig = build_transformer_config(
            cfg.model,
            cfg.parallel,
            megatron_precision_kwargs(cfg.precision),
            cfg.recompute,
            **(config_overrides or {}),
        )
        self.model = self._build_chunks()
        self.optimizer = self._build_optimizer()
        self._wire_config()
        self.metrics = MetricsCollector(cfg.model, self.model, self.tconfig)
        res = cfg.resilience
        slow = (
            res.inject_slow_factor if torch.distributed.get_rank() == res.inject_slow_rank else 1.0
        )
        self.straggler = StragglerMonitor(
            res.straggler_interval, ps.get_pipeline_model_parallel_rank(), slow
        )
        self.saves = AsyncSaves() if cfg.checkpoint.async_save else None
        self.straggler_report: Report | None = None
        """The straggler report of the last step, on the steps that make one."""
        self.step = 0
        self.history: dict[str, Any] = {}
        """Run-level values that survive resume (e.g. the first validation loss, the lineage)."""
        self.new_lineage()

    # ---- construction -------------------------------------------------------------------
    def _build_chunks(self) -> list[DistributedDataParallel]:
        vpp = self.cfg.parallel.virtual_pipeline_parallel
        chunks = []
        for i in range(vpp or 1):
            vp = i if vpp else None
            module = build_model(
                self.cfg.model,
                self.tconfig,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
                vp_stage=vp,
            )
            module.model_type = ModelType.encoder_or_decoder
            if torch.cuda.is_available():  # local-spec norms are built on CPU (as in megatron)
                module.cuda(torch.cuda.current_device())
            if self.tconfig.bf16 or self.tconfig.fp16:
                module = Float16Module(self.tconfig, module)
            chunks.append(module)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=self.cfg.precision.grad_reduce_in_fp32,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer,
            fp8_param_gather=self.cfg.precision.fp8_param,
        )
        return [
            DistributedDataParallel(
                config=self.tconfig, ddp_config=ddp_config, module=m, disable_bucketing=i > 0
            )
            for i, m in enumerate(chunks)
        ]

    def _build_optimizer(self) -> Any:
        o, p = self.cfg.optim, self.cfg.precision
        config = OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.betas[0],
            adam_beta2=o.betas[1],
            adam_eps=o.eps,
            clip_grad=o.clip_grad,
            bf16=p.params_dtype == "bf16",
            fp16=p.params_dtype == "fp16",
            params_dtype=self.tconfig.params_dtype,
            use_distributed_optimizer=self.cfg.parallel.use_distributed_optimizer,
            **optimizer_precision_kwargs(o),
        )
        return get_megatron_optimizer(config, self.model)

    def _wire_config(self) -> None:
        c = self.tconfig
        no_sync = [m.no_sync for m in self.model]
        c.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        c.finalize_model_grads_func = self._finalize_grads
        c.grad_scale_func = self.optimizer.scale_loss

    def _finalize_grads(self, *args: Any, **kwargs: Any) -> Any:
        """megatron's gradient reduction; the rank's compute for this step ends here."""
        self.straggler.arrived()
        return finalize_model_grads(*args, **kwargs)

    # ---- steps ----------------------------------------------------------------------------
    def _run_schedule(self, batches: list[dict], forward_only: bool) -> list[dict]:
        iters: Any = [iter(batches) for _ in self.model]
        return get_forward_backward_func()(
            forward_step_func=_forward_step,
            data_iterator=iters if len(iters) > 1 else iters[0],
            model=self.model,
            num_microbatches=len(batches),
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
        )

    def _batches(self, data: Sequence[Any], step: int) -> list[dict]:
        t = self.cfg.train
        return microbatches(
            data, step, t.global_batch_size, t.micro_batch_size, self.dp_rank, self.dp_size
        )

    def current_lr(self) -> float:
        return lr_at(self.step, self.cfg.train.steps, self.cfg.optim)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on global batch `self.step`; returns reduced metrics."""
        start = time.perf_counter()
        self.straggler.begin()
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.metrics.start_step()
        losses = self._run_schedule(self._batches(self.train_data, self.step), False)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise RuntimeError(f"optimizer step {self.step} failed (inf/nan gradients)")
        self.step += 1
        metrics = self.metrics.reduce(losses, self.num_microbatches)
        metrics.update(grad_norm=float(grad_norm or 0.0), lr=lr)
        metrics.update(self.metrics.throughput(time.perf_counter() - start, self.cfg))
        self.straggler_report = self.straggler.end(self.step)
        if self.straggler_report:
            metrics.update(self.straggler_report.metrics())
        return metrics

    def poll_saves(self) -> list[int]:
        """Finalize async saves that finished on every rank (collective); their steps."""
        return self.saves.poll() if self.saves else []

    def wait_saves(self) -> list[int]:
        """Finish every async save in flight (collective); their steps."""
        return self.saves.wait() if self.saves else []

    def save(self, root: str, keep_last: int) -> str:
        """Checkpoint model, optimizer, RNG and data position (= step) under `root` (written
        in the background with checkpoint.async_save; see poll_saves/wait_saves)."""
        extra = {
            "consumed_samples": self.step * self.cfg.train.global_batch_size,
            "scheduler": {"step": self.step, "total_steps": self.cfg.train.steps},
            "history": dict(self.history),
        }
        identity = {
            "lineage": self.history["lineage"],
            "model": self.model_identity(),
            "data_manifest": self.cfg.data.manifest
            and str(Path(self.cfg.data.manifest).absolute()),
            "seq_length": self.cfg.data.seq_length,
        }
        saved = save_checkpoint(
            root,
            self.step,
            self.model,
            self.optimizer,
            extra,
            keep_last,
            identity,
            self.saves,
            self.cfg.checkpoint.inject_write_delay_s,
        )
        return str(saved)

    def model_identity(self) -> dict[str, Any]:
        """The model config a checkpoint records (and a loading run must match)."""
        return dataclasses.asdict(self.cfg.model)

    def new_lineage(self) -> None:
        """Start a new run lineage (one id on every rank): what pruning may touch."""
        lineage = [uuid.uuid4().hex[:12]]
        torch.distributed.broadcast_object_list(lineage, src=0)
        self.history["lineage"] = lineage[0]

    def load(self, ckpt: Checkpoint | str, weights_only: bool = False) -> None:
        """Resume from checkpoint `ckpt` (or only initialise the weights from it: then the model
        config may differ in weightless fields, PHASE_FIELDS, as a training phase's does)."""
        ckpt = ckpt if isinstance(ckpt, Checkpoint) else checkpoint_at(ckpt)
        optimizer = None if weights_only else self.optimizer
        tolerate = PHASE_FIELDS if weights_only else ()
        common = load_checkpoint(
            ckpt, self.model, optimizer, self.model_identity(), tolerate=tolerate
        )
        if not weights_only:
            self.step = int(common["step"])
            self.history = dict(common.get("history", {}))
            self.history.setdefault("lineage", ckpt.lineage or "unknown")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean LM loss over `eval_iters` global batches of the validation data."""
        if not self.valid_data or self.cfg.train.eval_iters == 0:
            return float("nan")
        for chunk in self.model:
            chunk.eval()
        total = torch.zeros(2)
        for i in range(self.cfg.train.eval_iters):
            losses = self._run_schedule(self._batches(self.valid_data, i), True)
            for item in losses:
                total += item["lm loss"].float().cpu()
        for chunk in self.model:
            chunk.train()
        self.metrics.clear_trackers()
        return self.metrics.broadcast_lm_loss(total)
