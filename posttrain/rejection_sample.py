"""Rejection sampling (DeepSeek-R1's stage 3): sample N responses per prompt from a checkpoint,
keep the correct and well-formed ones, dedupe, cap per prompt, write an SFT set.

    python -m posttrain.rejection_sample checkpoint=runs/grpo model=tiny_v3 \\
        prompts=runs/task/train.jsonl tokenizer=runs/dp/tokenizer/tokenizer.json n=16 \\
        max_per_prompt=4 out=runs/rs

Writes `out/sft.jsonl` (chat records `{"id", "lang", "messages": [..., {"role": "assistant",
"content": response}], "answer"}`, what the SFT stage reads) and `out/stats.json`: prompts
used and skipped (per reason), responses generated, kept, removed per reason (`failed:<reward>`
for the first `require`d reward under its threshold, `duplicate` within a prompt, `over_cap`),
and kept / generated per prompt. One process (CPU or one GPU), the checkpoint loaded under
any layout it was saved with (dist_checkpointing reshards). Prints one JSON line (the totals);
bad input is one line, exit 2. An existing `out` is moved to OUT.previous-<time>, never deleted.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING

from posttrain.cli import CheckpointDecodeConfig, run_cli
from posttrain.rewards import RewardConfig, Sample


@dataclass
class RejectionSampleConfig(CheckpointDecodeConfig):
    APP: ClassVar[str] = "rejection_sample"

    prompts: str = MISSING
    """Chat JSONL with gold answers (posttrain.tasks.arithmetic's train.jsonl)."""
    out: str = MISSING
    """Output folder: sft.jsonl and stats.json."""
    n: int = 16
    """Samples per prompt."""
    max_per_prompt: int = 4
    """Kept responses per prompt at most (distinct ones, in sampling order)."""
    require: Any = None
    """Reward plugin -> the score a response needs to be kept; null = {accuracy: 1, format: 1}
    (correct and well-formed). A mapping typed Any: `require={format: 1}` replaces it."""
    temperature: float = 1.0
    top_p: float = 1.0
    include: str | None = None
    """Chat JSONL appended to the set after the samples (R1 mixes its rejection samples with
    other SFT data, e.g. the cold-start set), counted as `included`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.include is not None and not Path(self.include).is_file():
            raise ValueError(f"rejection_sample: include={self.include}: no such file")
        for name in ("n", "max_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"rejection_sample: {name} must be >= 1")
        self.require = dict(self.require or {"accuracy": 1.0, "format": 1.0})
        RewardConfig(weights=self.require)  # unknown reward names fail here


def select(
    responses: list[str], scores: list[dict[str, float]], require: dict[str, float], cap: int
) -> tuple[list[int], Counter]:
    """Indices of the responses to keep and the others' reasons, in sampling order."""
    kept, removed, seen = [], Counter(), set()
    for i, (text, parts) in enumerate(zip(responses, scores, strict=True)):
        failed = next((name for name, need in require.items() if parts[name] < need), None)
        key = " ".join(text.split())
        if failed is not None:
            removed[f"failed:{failed}"] += 1
        elif key in seen:
            removed["duplicate"] += 1
        elif len(kept) >= cap:
            removed["over_cap"] += 1
        else:
            kept.append(i)
            seen.add(key)
    return kept, removed


def load_model(cfg: Any) -> Any:
    """The checkpoint's GPTModel in eval mode (one process) and the Checkpoint: `cfg` has
    checkpoint, model, precision and seed (RejectionSampleConfig, AccuracyConfig)."""
    from types import SimpleNamespace

    from trainer.checkpoint import load_checkpoint
    from trainer.checkpoint_store import checkpoint_at
    from trainer.config.parallel import ParallelConfig
    from trainer.model import build_model, build_transformer_config
    from trainer.parallel import initialize_parallel
    from trainer.precision import megatron_precision_kwargs

    ckpt = checkpoint_at(cfg.checkpoint)
    parallel = ParallelConfig()
    initialize_parallel(cfg.model, parallel, cfg.seed)
    tconfig = build_transformer_config(
        cfg.model, parallel, megatron_precision_kwargs(cfg.precision)
    )
    model = build_model(cfg.model, tconfig)
    load_checkpoint(ckpt, [SimpleNamespace(module=model)], None, asdict(cfg.model))
    return model.eval(), ckpt


def _record(prompt: Any, source: dict[str, Any], response: str, k: int) -> dict[str, Any]:
    messages = [m for m in source["messages"] if m["role"] in ("system", "user")]
    return {
        "id": f"{source.get('id', prompt.index)}-rs{k}",
        "lang": prompt.lang,
        "messages": [*messages, {"role": "assistant", "content": response.strip()}],
        "answer": prompt.answer,
    }


def sample(cfg: RejectionSampleConfig) -> dict[str, Any]:
    """Generate, score, select; write out/sft.jsonl (kept samples, then `include`'s records)
    and out/stats.json; return the stats."""
    from tokenizers import Tokenizer

    from posttrain.grpo import check_cpu_only
    from posttrain.grpo_step import sampling_seed
    from posttrain.prompts import load_prompts
    from posttrain.rollout import MegatronRollout

    check_cpu_only()
    if not Path(cfg.tokenizer).is_file():
        raise ValueError(f"tokenizer={cfg.tokenizer}: no such file")
    tok = Tokenizer.from_file(cfg.tokenizer)
    eod = tok.token_to_id(cfg.eod_token)
    if eod is None:
        raise ValueError(f"tokenizer={cfg.tokenizer} has no token {cfg.eod_token!r}")
    prompts = load_prompts(cfg.prompts, tok, cfg.context, 1, cfg.system_prompt)
    usable = prompts.prompts[: cfg.limit]
    sources = Path(cfg.prompts).read_text(encoding="utf-8").splitlines()
    model, ckpt = load_model(cfg)
    backend = MegatronRollout(model, eod, cfg.context)
    rewards = RewardConfig(weights={name: 1.0 for name in cfg.require}).build()
    records, per_prompt, removed, generated = [], [], Counter(), 0
    for first in range(0, len(usable), cfg.prompts_per_batch):
        batch = usable[first : first + cfg.prompts_per_batch]
        seeds = [sampling_seed(cfg.seed, 0, p.index) for p in batch]
        rollout = backend.generate(
            [p.token_ids for p in batch],
            cfg.n,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_p,
            seeds,
        )
        texts = [tok.decode([t for t in ids if t != eod]) for ids in rollout.responses()]
        generated += len(texts)
        for j, prompt in enumerate(batch):
            mine = texts[j * cfg.n : (j + 1) * cfg.n]
            scored = rewards([Sample(prompt.user, t, prompt.answer, prompt.lang) for t in mine])
            kept, why = select(mine, [s.parts for s in scored], cfg.require, cfg.max_per_prompt)
            removed.update(why)
            source = json.loads(sources[prompt.index])
            if not cfg.system_prompt:
                source["messages"] = [m for m in source["messages"] if m["role"] == "user"]
            records += [_record(prompt, source, mine[k], n) for n, k in enumerate(kept)]
            per_prompt.append({"index": prompt.index, "kept": len(kept), "generated": len(mine)})
    included = _included(cfg.include) if cfg.include else []
    stats = {
        "checkpoint": str(ckpt.path),
        "prompts": len(usable),
        "prompts_skipped": dict(prompts.skipped),
        "generated": generated,
        "kept": len(records),
        "included": len(included),
        "removed": dict(removed),
        "reward_errors": dict(rewards.errors),
        "prompts_with_a_kept_response": sum(p["kept"] > 0 for p in per_prompt),
        "per_prompt": per_prompt,
    }
    assert generated == len(records) + sum(removed.values()), "every response is kept or removed"
    _write(Path(cfg.out), records + included, stats)
    return stats


def _included(path: str) -> list[dict[str, Any]]:
    """The records of `include` (a line that is not a JSON object: one error naming it)."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"rejection_sample: include={path} line {number}: not a JSON object")
        rows.append(row)
    return rows


def _write(out: Path, records: list[dict[str, Any]], stats: dict[str, Any]) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (tmp / "sft.jsonl").write_text(lines, encoding="utf-8")
    (tmp / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1))
    if out.exists():  # an earlier set: kept beside, never deleted
        os.replace(out, out.with_name(f"{out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"))
    os.replace(tmp, out)


def main() -> None:
    def work(cfg: RejectionSampleConfig) -> dict[str, Any]:
        stats = sample(cfg)
        return {k: v for k, v in stats.items() if k != "per_prompt"}

    run_cli("rejection_sample", RejectionSampleConfig, work)


if __name__ == "__main__":
    main()
