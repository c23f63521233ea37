"""Tokens/s of the tiny DeepSeek-V3 model on CPU: our Trainer vs a minimal megatron-core loop.

Both use the same TransformerConfig, model, DDP wrapper, optimizer and schedule function; the
baseline skips everything our loop adds (metrics hooks and reduction, LR schedule, batching
helpers). Runs in one process (world size 1), alternating single steps so machine noise hits both;
reports median step times.

    .venv/bin/python benchmarks/trainer_throughput.py [--steps 20] [--seq 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def _config(seq: int):
    from trainer.config.precision import PrecisionConfig
    from trainer.config.trainer import TrainConfig, TrainerConfig

    cfg = TrainerConfig(
        precision=PrecisionConfig(name="fp32", params_dtype="fp32"),
        train=TrainConfig(steps=10_000, global_batch_size=8, micro_batch_size=2),
    )
    cfg.data.seq_length = seq
    return cfg


def _loss_func(mask, output):
    import torch

    loss = (output.float().view(-1) * mask.view(-1)).sum()
    return loss, mask.sum().to(torch.int), {"lm loss": loss.detach()}


class Baseline:
    """The least code that trains the same model with megatron-core directly."""

    def __init__(self, cfg, data):
        import torch
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from trainer.model import build_model, build_transformer_config
        from trainer.precision import megatron_precision_kwargs

        self.cfg, self.data, self.torch = cfg, data, torch
        tconfig = build_transformer_config(
            cfg.model, cfg.parallel, megatron_precision_kwargs(cfg.precision)
        )
        model = build_model(cfg.model, tconfig)
        ddp = DistributedDataParallelConfig(grad_reduce_in_fp32=True)
        self.model = [DistributedDataParallel(config=tconfig, ddp_config=ddp, module=model)]
        o = cfg.optim
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=o.lr,
                weight_decay=o.weight_decay,
                adam_beta1=o.betas[0],
                adam_beta2=o.betas[1],
                clip_grad=o.clip_grad,
            ),
            self.model,
        )
        tconfig.no_sync_func = self.model[0].no_sync
        tconfig.finalize_model_grads_func = finalize_model_grads
        tconfig.grad_scale_func = self.optimizer.scale_loss
        self.step = 0

    @staticmethod
    def _forward(data_iterator, model):
        b = next(data_iterator)
        out = model(
            b["tokens"], b["position_ids"], None, labels=b["labels"], loss_mask=b["loss_mask"]
        )

        return out, partial(_loss_func, b["loss_mask"])

    def train_step(self):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from trainer.batches import microbatches

        t = self.cfg.train
        batches = microbatches(self.data, self.step, t.global_batch_size, t.micro_batch_size, 0, 1)
        self.model[0].zero_grad_buffer()
        self.optimizer.zero_grad()
        get_forward_backward_func()(
            forward_step_func=self._forward,
            data_iterator=iter(batches),
            model=self.model,
            num_microbatches=len(batches),
            seq_length=self.cfg.data.seq_length,
            micro_batch_size=t.micro_batch_size,
            forward_only=False,
        )
        self.optimizer.step()
        self.step += 1


def _step_time(runner) -> float:
    start = time.perf_counter()
    runner.train_step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("WORLD_SIZE", "1")
    import torch

    from trainer.batches import SyntheticDataset
    from trainer.loop import Trainer
    from trainer.parallel import initialize_parallel

    cfg = _config(args.seq)
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    data = SyntheticDataset(4096, args.seq, cfg.model.vocab_size)
    ours, base = Trainer(cfg, data), Baseline(cfg, data)
    tokens = cfg.train.global_batch_size * args.seq
    for runner in (ours, base):  # warm-up
        runner.train_step()
    times: dict[str, list[float]] = {"trainer": [], "megatron_direct": []}
    for i in range(args.steps):  # alternate step by step (and who goes first)
        pair = [("trainer", ours), ("megatron_direct", base)]
        for name, runner in pair if i % 2 == 0 else pair[::-1]:
            times[name].append(_step_time(runner))
    med = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(
        f"torch threads: {torch.get_num_threads()}, seq {args.seq}, {args.steps} steps each, "
        f"{tokens} tokens/step (median step time)"
    )
    print(f"trainer (ours)          : {med['trainer']:9.1f} tokens/s")
    print(f"megatron-core directly  : {med['megatron_direct']:9.1f} tokens/s")
    ratio = med["trainer"] / med["megatron_direct"]
    print(f"ratio ours / direct = {ratio:.3f} (overhead {100 * (1 - ratio):+.1f}%)")


if __name__ == "__main__":
    main()
