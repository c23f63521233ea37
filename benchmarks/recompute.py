"""Cost and benefit of activation recompute on CPU: tokens/s and saved activation bytes.

For none, selective module sets and full recompute: training throughput of our Trainer (one
process, one thread, fp32, tiny model; steps alternate between the choices so machine noise hits
all; the fastest step, which noise only slows, and the median), its ratio to no recompute, and
the bytes autograd saves for one micro-batch (trainer.memory_measure) against the estimator
(trainer.memory.estimate_memory).

    .venv/bin/python benchmarks/recompute.py [--model tiny_v3] [--steps 10] [--seq 128]
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

CHOICES = {
    "none": {},
    "selective core_attn": {"granularity": "selective", "modules": ["core_attn"]},
    "selective mla_up_proj": {"granularity": "selective", "modules": ["mla_up_proj"]},
    "selective layernorm": {"granularity": "selective", "modules": ["layernorm"]},
    "selective moe": {"granularity": "selective", "modules": ["moe"]},
    "selective mlp": {"granularity": "selective", "modules": ["mlp"]},
    "selective all": {  # those the model has
        "granularity": "selective",
        "modules": ["core_attn", "mla_up_proj", "layernorm", "mlp", "moe"],
    },
    "full uniform 1": {"granularity": "full", "method": "uniform", "num_layers": 1},
}


def _config(model: str, seq: int, recompute: dict):
    from omegaconf import OmegaConf

    from trainer.config.model import ModelConfig
    from trainer.config.precision import PrecisionConfig
    from trainer.config.recompute import RecomputeConfig
    from trainer.config.trainer import TrainConfig, TrainerConfig

    conf = Path(__file__).resolve().parents[1] / "conf" / "model" / f"{model}.yaml"
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(conf))
    model_cfg = OmegaConf.to_object(model_cfg)
    if recompute.get("modules") and len(recompute["modules"]) > 1:
        lacks = {"mla_up_proj": not model_cfg.is_mla, "moe": not model_cfg.is_moe}
        recompute = {**recompute, "modules": [m for m in recompute["modules"] if not lacks.get(m)]}
    cfg = TrainerConfig(
        model=model_cfg,
        precision=PrecisionConfig(name="fp32", params_dtype="fp32"),
        recompute=RecomputeConfig(**recompute),
        train=TrainConfig(steps=10_000, global_batch_size=8, micro_batch_size=2),
    )
    cfg.data.seq_length = seq
    return cfg


def _saved_bytes(cfg) -> int:
    """Bytes autograd saves for one micro-batch (fresh model, same layer specs)."""
    import torch

    from trainer.memory_measure import saved_activation_bytes
    from trainer.model import build_model, build_transformer_config

    m, b, s = cfg.model, cfg.train.micro_batch_size, cfg.data.seq_length
    model = build_model(m, build_transformer_config(m, cfg.parallel, recompute=cfg.recompute))
    tokens = torch.randint(0, m.vocab_size, (b, s))
    positions = torch.arange(s).unsqueeze(0).expand(b, -1)
    fwd = partial(model, tokens, positions, None, labels=tokens, loss_mask=torch.ones(b, s))
    return saved_activation_bytes(model, fwd)[0]


def _estimate(cfg):
    from trainer.memory import estimate_memory

    return estimate_memory(
        cfg.model,
        cfg.parallel,
        cfg.precision,
        cfg.train.micro_batch_size,
        cfg.data.seq_length,
        1,
        flash_attention=False,
        recompute=cfg.recompute,
    )


def _step_time(trainer) -> float:
    start = time.perf_counter()
    trainer.train_step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_v3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("WORLD_SIZE", "1")
    import torch

    torch.set_num_threads(1)

    from trainer.batches import SyntheticDataset
    from trainer.config.recompute import check_recompute_for_model
    from trainer.loop import Trainer
    from trainer.parallel import initialize_parallel

    cfgs = {}
    for name, recompute in CHOICES.items():
        try:
            cfgs[name] = _config(args.model, args.seq, recompute)
        except ValueError as e:  # a module this model lacks (mla_up_proj, moe on tiny_dense)
            print(f"skipping {name}: {e}")
    first = next(iter(cfgs.values()))
    initialize_parallel(first.model, first.parallel, first.train.seed)
    data = SyntheticDataset(4096, args.seq, first.model.vocab_size)
    trainers = {}
    for name, cfg in cfgs.items():
        check_recompute_for_model(cfg.recompute, cfg.model, cfg.parallel)
        trainers[name] = Trainer(cfg, data)
        trainers[name].train_step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in trainers}
    order = list(trainers)
    for i in range(args.steps):  # round robin, rotating who goes first
        for name in order[i % len(order) :] + order[: i % len(order)]:
            times[name].append(_step_time(trainers[name]))
    tokens = first.train.global_batch_size * args.seq
    best = {name: tokens / min(t) for name, t in times.items()}
    med = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(
        f"{args.model}, fp32, torch threads {torch.get_num_threads()}, seq {args.seq}, "
        f"{tokens} tokens/step, {args.steps} steps each (tokens/s of the fastest step; median in "
        f"brackets); activations: one micro-batch of {first.train.micro_batch_size}, measured = "
        "bytes autograd saves after the forward"
    )
    print(
        f"{'recompute':22s} {'tokens/s':>8s} {'(median)':>9s} {'vs none':>8s} {'(median)':>8s}"
        f" {'measured':>10s} {'estimate':>10s}"
    )
    for name in trainers:
        saved, est = _saved_bytes(cfgs[name]), _estimate(cfgs[name]).activations
        print(
            f"{name:22s} {best[name]:8.1f} ({med[name]:7.1f}) {best[name] / best['none']:8.3f} "
            f"({med[name] / med['none']:6.3f}) {saved / 2**20:8.2f}Mi {est / 2**20:8.2f}Mi "
            f"({est / saved - 1:+.1%})"
        )


if __name__ == "__main__":
    main()
