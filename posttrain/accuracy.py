"""Held-out accuracy of a checkpoint: greedy responses to the test prompts, scored by the rule
rewards (posttrain.rewards `accuracy` and `format`).

    python -m posttrain.accuracy checkpoint=runs/sft/ckpt test=runs/task/test.jsonl \\
        tokenizer=runs/dp/tokenizer/tokenizer.json model=tiny_v3 [max_new_tokens=128] \\
        [limit=N] [out=runs/sft/accuracy.json]

Prompts are rendered as the GRPO loop renders them (posttrain.prompts.load_prompts) and decoded
greedily (temperature 0) by the CPU rollout backend (posttrain.rollout.MegatronRollout), one
process, the checkpoint loaded under any layout it was saved with. Prints one JSON line
`{"accuracy", "format", "per_lang": {lang: accuracy}, "n", ...}` (means over the prompts used)
and writes it to `out` when given. Bad input (no checkpoint, no usable test prompt, no
tokenizer) is one line, exit 2.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING

from posttrain.cli import CheckpointDecodeConfig, run_cli

SCORED = ("accuracy", "format")
"""The reward plugins averaged in the report."""


@dataclass
class AccuracyConfig(CheckpointDecodeConfig):
    APP: ClassVar[str] = "accuracy"

    test: str = MISSING
    """Chat JSONL with gold answers (posttrain.tasks.arithmetic's test.jsonl)."""
    out: str | None = None
    """Also write the JSON line to this file."""
    prompts_per_batch: int = 16


def summarise(parts: list[dict[str, float]], langs: list[str | None]) -> dict[str, Any]:
    """Mean of each scored reward, accuracy per language, and the count."""
    n = len(parts)
    out: dict[str, Any] = {name: sum(p[name] for p in parts) / n for name in SCORED}
    by_lang: dict[str, list[float]] = defaultdict(list)
    for p, lang in zip(parts, langs, strict=True):
        by_lang[lang or "unknown"].append(p["accuracy"])
    out["per_lang"] = {k: sum(v) / len(v) for k, v in sorted(by_lang.items())}
    out["n"] = n
    return out


def evaluate(cfg: AccuracyConfig) -> dict[str, Any]:
    """Greedy responses to the test prompts, scored; returns the summary (and writes `out`)."""
    from tokenizers import Tokenizer

    from posttrain.prompts import load_prompts

    if not Path(cfg.checkpoint).exists():
        raise ValueError(f"checkpoint={cfg.checkpoint}: no such folder")
    if not Path(cfg.tokenizer).is_file():
        raise ValueError(f"tokenizer={cfg.tokenizer}: no such file")
    tok = Tokenizer.from_file(cfg.tokenizer)
    eod = tok.token_to_id(cfg.eod_token)
    if eod is None:
        raise ValueError(f"tokenizer={cfg.tokenizer} has no token {cfg.eod_token!r}")
    prompts = load_prompts(cfg.test, tok, cfg.context, 1, cfg.system_prompt)
    usable = prompts.prompts[: cfg.limit]
    # megatron is imported after the input checks: its import-time warnings are not filtered
    from posttrain.grpo import check_cpu_only
    from posttrain.rejection_sample import load_model
    from posttrain.rewards import RewardConfig, Sample
    from posttrain.rollout import MegatronRollout

    check_cpu_only()
    model, ckpt = load_model(cfg)
    backend = MegatronRollout(model, eod, cfg.context)
    rewards = RewardConfig(weights={name: 1.0 for name in SCORED}).build()
    parts: list[dict[str, float]] = []
    for first in range(0, len(usable), cfg.prompts_per_batch):
        batch = usable[first : first + cfg.prompts_per_batch]
        ids = [p.token_ids for p in batch]
        rollout = backend.generate(ids, 1, cfg.max_new_tokens, 0.0, 1.0, [0] * len(batch))
        texts = [tok.decode([t for t in r if t != eod]) for r in rollout.responses()]
        samples = [Sample(p.user, t, p.answer, p.lang) for p, t in zip(batch, texts, strict=True)]
        parts += [s.parts for s in rewards(samples)]
    summary = summarise(parts, [p.lang for p in usable])
    summary.update(checkpoint=str(ckpt.path), step=ckpt.step, skipped=dict(prompts.skipped))
    if rewards.errors:
        summary["reward_errors"] = dict(rewards.errors)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(summary) + "\n")
    return summary


def main() -> None:
    run_cli("accuracy", AccuracyConfig, evaluate)


if __name__ == "__main__":
    main()
