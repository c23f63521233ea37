"""Tokens/s of a GRPO step on CPU (one process, tiny policy): generation and training.

Per step it prints the rollout backend's generated tokens/s (posttrain.rollout's sampling loop,
full recompute per new token) and the update's tokens/s (reference log-probs + forward/backward
+ optimizer over prompt + response tokens). Baselines, run side by side in the same process:
- generation vs one no-grad forward over the finished rollouts (what scoring them once costs:
  the bound a KV-cached sampler approaches);
- training vs the trainer's own pretraining step (trainer.loop.Trainer.train_step) on the same
  rows x sequence length of synthetic tokens.

    .venv/bin/python benchmarks/grpo_throughput.py [--steps 5] [--model tiny_dense|tiny_v3]
        [--prompts 8] [--group 4] [--new 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--model", default="tiny_dense", choices=["tiny_dense", "tiny_v3"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def _grpo(args: argparse.Namespace, root: Path):
    import yaml
    from tokenizers import Tokenizer

    from posttrain.grpo_step import GRPO
    from posttrain.prompts import load_prompts
    from tests.posttrain.grpo_setup import ROOT, grpo_config, write_task
    from trainer.config.model import ModelConfig
    from trainer.parallel import initialize_parallel

    files = write_task(root, n_train=128)
    model = yaml.safe_load((ROOT / f"conf/model/{args.model}.yaml").read_text())
    model.update(vocab_size=512, max_position_embeddings=256)
    cfg = grpo_config(
        files,
        str(root / "ck"),
        rollout={
            "prompts_per_step": args.prompts,
            "group_size": args.group,
            "max_new_tokens": args.new,
        },
        prompts={"min_response_tokens": 1},
        train={"steps": args.steps + 1, "micro_batch_size": args.group},
    )
    cfg.model = ModelConfig(**model)
    cfg.prompts.context = 128
    tok = Tokenizer.from_file(files["tokenizer"])
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    return GRPO(cfg, tok, load_prompts(files["prompts"], tok, cfg.prompts.context))


def _scoring_tokens_per_s(grpo, rollout) -> float:
    from trainer.model import lm_logits

    start = time.perf_counter()
    lm_logits(grpo.backend.model, rollout.tokens)
    return float(rollout.response_lengths.sum()) / (time.perf_counter() - start)


def _pretraining_tokens_per_s(grpo, rows: int, seq: int) -> float:
    import dataclasses

    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    from trainer.batches import SyntheticDataset
    from trainer.loop import Trainer

    get_moe_layer_wise_logging_tracker().clear()  # sized without MTP by the GRPO steps

    tcfg = grpo.tcfg
    tcfg = dataclasses.replace(
        tcfg,
        train=dataclasses.replace(tcfg.train, global_batch_size=rows, steps=1000),
        data=dataclasses.replace(tcfg.data, seq_length=seq),
    )
    trainer = Trainer(tcfg, SyntheticDataset(4 * rows, seq, tcfg.model.vocab_size))
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    trainer.train_step()
    return rows * seq / (time.perf_counter() - start)


def main() -> None:
    args = _args()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch

    torch.set_num_threads(args.threads)
    grpo = _grpo(args, Path(tempfile.mkdtemp(prefix="grpo_bench_")))
    grpo.step()  # warm-up
    gen, train, score = [], [], []
    for _ in range(args.steps):
        prompts, seeds = grpo.my_prompts()
        m = grpo.step()
        gen.append(m["gen_tokens_per_s"])
        train.append(m["train_tokens_per_s"])
        r = grpo.cfg.rollout
        rollout = grpo.backend.generate(
            [p.token_ids for p in prompts], r.group_size, r.max_new_tokens, 1.0, 1.0, seeds
        )
        score.append(_scoring_tokens_per_s(grpo, rollout))
        print(
            f"step {grpo.trainer.step}: generation {m['gen_tokens_per_s']:.0f} tok/s, "
            f"training {m['train_tokens_per_s']:.0f} tok/s, "
            f"response length {m['response_length/mean']:.1f}",
            flush=True,
        )
    rows = grpo.cfg.rows_per_step
    seq = int(rollout.tokens.shape[1])
    pretrain = _pretraining_tokens_per_s(grpo, rows, seq)
    g, t, s = (statistics.median(x) for x in (gen, train, score))
    print(
        f"model {args.model}, {rows} rows/step ({args.prompts} prompts x {args.group}), "
        f"{args.new} new tokens, {args.threads} thread(s)"
    )
    print(f"generation: {g:.0f} tok/s vs one scoring forward {s:.0f} tok/s = {g / s:.3f}x")
    print(
        f"training:   {t:.0f} tok/s vs trainer pretraining step {pretrain:.0f} tok/s = "
        f"{t / pretrain:.3f}x"
    )


if __name__ == "__main__":
    main()
