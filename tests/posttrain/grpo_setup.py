"""A tiny GRPO setup for tests and the benchmark: arithmetic prompts (en, user message only), a
byte-level BPE trained on them, and a 2-layer dense policy with a 512-token vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512


def write_task(root: Path, n_train: int = 64, long_prompts: int = 0) -> dict[str, str]:
    """train.jsonl (+ `long_prompts` records too long for a 64-token context, and one record
    without an answer) and tokenizer.json under `root`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from posttrain.tasks.arithmetic import ArithmeticConfig, build_splits

    cfg = ArithmeticConfig(
        out=str(root),
        n_train=n_train,
        n_test=0,
        n_cold_start=8,
        seed=0,
        zh_share=0.0,
        system_prompt=False,
        min_ops=1,
        max_ops=2,
    )
    splits = build_splits(cfg)
    rows = list(splits["train"])
    for i in range(long_prompts):
        long_text = " ".join(["Then Tom gets 3 more."] * 30)
        rows.append(
            {**rows[i], "id": f"long-{i}", "messages": [{"role": "user", "content": long_text}]}
        )
    rows.append({"id": "no-answer", "messages": rows[0]["messages"]})
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    texts = [m["content"] for r in splits["train"] + splits["cold_start"] for m in r["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        texts + ["User: \n\nAssistant: <think></think><answer></answer>"] * 20, trainer=trainer
    )
    tok.save(str(root / "tokenizer.json"))
    return {"prompts": str(train), "tokenizer": str(root / "tokenizer.json")}


def grpo_config(
    files: dict[str, str], ckpt: str, parallel: dict[str, Any] | None = None, **over: Any
) -> Any:
    """A GRPOConfig for the tiny policy (`over`: section -> dict of field overrides)."""
    import yaml

    from posttrain.grpo_config import GRPOConfig, GRPOTrainConfig, PromptsConfig, RolloutConfig
    from posttrain.rewards import RewardConfig
    from trainer.config.model import ModelConfig
    from trainer.config.parallel import ParallelConfig
    from trainer.config.precision import PrecisionConfig
    from trainer.config.trainer import CheckpointConfig, LoggingConfig

    model = yaml.safe_load((ROOT / "conf/model/tiny_dense.yaml").read_text())
    model.update(num_layers=2, vocab_size=VOCAB, max_position_embeddings=128, init_method_std=0.02)
    model.update(over.get("model", {}))
    return GRPOConfig(
        model=ModelConfig(**model),
        parallel=ParallelConfig(**(parallel or {})),
        precision=PrecisionConfig(name="fp32", params_dtype="fp32"),
        prompts=PromptsConfig(
            path=files["prompts"],
            tokenizer=files["tokenizer"],
            context=64,
            **over.get("prompts", {}),
        ),
        rollout=RolloutConfig(
            **{
                "prompts_per_step": 4,
                "group_size": 4,
                "max_new_tokens": 16,
                **over.get("rollout", {}),
            }
        ),
        rewards=RewardConfig(
            **over.get("rewards", {"weights": {"exact_match": 1.0, "format": 0.5}})
        ),
        train=GRPOTrainConfig(**{"steps": 2, "micro_batch_size": 4, **over.get("train", {})}),
        checkpoint=CheckpointConfig(dir=ckpt, save_interval_s=0, **over.get("checkpoint", {})),
        logging=LoggingConfig(console=False),
        **({"optim": over["optim"]} if "optim" in over else {}),
    )


def _raises(sample: Any) -> float:
    raise RuntimeError("this plugin always fails")


def _vowels(sample: Any) -> float:
    return sum(c in "aeiou" for c in sample.response) / max(len(sample.response), 1)


def register_test_rewards() -> None:
    """Rewards `test_raises` (every call raises) and `test_vowels` (share of vowels: varies on a
    random policy's text, so advantages are not all zero), registered once per process."""
    from posttrain.rewards import REWARDS, register_reward

    if "test_raises" not in REWARDS:
        register_reward("test_raises")(_raises)
        register_reward("test_vowels")(_vowels)
