"""Does a tiny model learn the R1 demo's arithmetic task on CPU? SFT from random weights on worked
solutions, then GRPO from the SFT checkpoint; held-out greedy accuracy after each.

Every stage runs through its own entry point, as the `r1` pipeline will run them:
`posttrain.tasks.arithmetic` (easy settings, no system prompt, no backwards check), a byte-level
BPE trained on the task's text, `data_prep stage=chat_tokenize` over the cold-start split (worked
solutions), `trainer` (SFT from scratch), `posttrain.accuracy`, `posttrain.grpo`,
`posttrain.accuracy`. Prints each stage's wall time and a final JSON line with the accuracies and
the ratio GRPO / SFT accuracy (baseline: the SFT checkpoint GRPO starts from).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/r1_learning.py [--sft-steps 900]
        [--grpo-steps 30] [--grpo-lr 3e-5] [--n-sft 1900] [--model tiny_dense] [--hidden 64]
        [--out DIR] [--reuse] [--grpo-out NAME] [--seed N] [--grpo-extra KEY=VALUE ...]

`--reuse` keeps what `--out DIR` already holds (task, tokenizer, shards, SFT checkpoint and its
accuracy), so several GRPO runs (`--grpo-out NAME`, `--seed`, `--grpo-extra` overrides of
posttrain.grpo, which replace the script's own for the same key) can share one SFT.

Task: max_operand=9 max_value=50 max_factor=3, 1-2 operations, no system prompt, no backwards
check (conversations <= 119 tokens, seq_length 128); tiny_dense (4 layers, hidden 64, vocab
512); SFT batch 32, LR 3e-3 cosine to 3e-4; GRPO 8 prompts x 8 samples, 96 new tokens, rewards
accuracy 1 + format 0.5. Figures (shared 2-core machine, load 5-15): see README, Post-training.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512
EOD = "<|endoftext|>"
SEQ = 128
EASY = ["max_operand=9", "max_value=50", "max_factor=3", "min_ops=1", "max_ops=2"]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_dense", choices=["tiny_dense", "tiny_v3"])
    p.add_argument("--hidden", type=int, default=64, help="model.hidden_size (ffn = 3x)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--n-sft", type=int, default=1900, help="worked solutions (cold_start split)")
    p.add_argument("--n-train", type=int, default=200, help="GRPO prompts (train split)")
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--sft-steps", type=int, default=900)
    p.add_argument("--sft-batch", type=int, default=32)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--grpo-steps", type=int, default=30)
    p.add_argument("--grpo-prompts", type=int, default=8)
    p.add_argument("--grpo-group", type=int, default=8)
    p.add_argument("--grpo-lr", type=float, default=3e-5)
    p.add_argument("--new", type=int, default=96, help="max_new_tokens (rollouts and eval)")
    p.add_argument("--seed", type=int, default=1234, help="GRPO train.seed")
    p.add_argument("--grpo-extra", nargs="*", default=[], help="posttrain.grpo KEY=VALUE")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--grpo-out", default="grpo", help="GRPO checkpoint folder under --out")
    p.add_argument("--reuse", action="store_true", help="keep --out's task, tokenizer and SFT")
    return p.parse_args()


def _run(name: str, args: list[str], times: dict[str, float]) -> str:
    """`python -m ARGS` in the repo; its stdout's last line; the wall time under `name`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # rollouts are CPU only for now
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    times[name] = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        tail = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        sys.exit(f"{name} failed ({done.returncode}):\n{tail}")
    print(f"{name}: {times[name]} s", flush=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def _tokenizer(task: Path) -> str:
    """A byte-level BPE (VOCAB tokens, EOD special) trained on the task's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = []
    for split in ("train", "cold_start"):
        for line in (task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            texts += [m["content"] for m in json.loads(line)["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=[EOD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    markers = ["User: \n\nAssistant: <think></think><answer></answer>"] * 20
    tok.train_from_iterator(texts + markers, trainer)
    path = task.parent / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def _model_args(a: argparse.Namespace) -> list[str]:
    return [
        f"model={a.model}",
        f"model.vocab_size={VOCAB}",
        f"model.hidden_size={a.hidden}",
        f"model.ffn_hidden_size={3 * a.hidden}",
        f"model.num_layers={a.layers}",
        "model.max_position_embeddings=256",
    ]


def _accuracy(name: str, ckpt: Path, task: Path, tok: str, a, times: dict) -> dict:
    line = _run(
        name,
        [
            "posttrain.accuracy",
            f"checkpoint={ckpt}",
            f"test={task / 'test.jsonl'}",
            f"tokenizer={tok}",
            f"max_new_tokens={a.new}",
            "system_prompt=false",
            *_model_args(a),
        ],
        times,
    )
    out = json.loads(line)
    print(f"  {name}: {json.dumps({k: out[k] for k in ('accuracy', 'format', 'per_lang', 'n')})}")
    return out


def _prepare(root: Path, a: argparse.Namespace, times: dict) -> tuple[Path, str, dict]:
    """Task, tokenizer, SFT checkpoint and its accuracy under `root`; with `--reuse` those
    already there are kept."""
    task, tok = root / "task", str(root / "tokenizer.json")
    cached = root / "accuracy_sft.json"
    if a.reuse and cached.is_file() and (root / "sft").is_dir() and Path(tok).is_file():
        print(f"reusing task, tokenizer and SFT checkpoint under {root}")
        return task, tok, json.loads(cached.read_text())
    _run(
        "task",
        [
            "posttrain.tasks.arithmetic",
            f"out={task}",
            f"n_train={a.n_train}",
            f"n_test={a.n_test}",
            f"n_cold_start={a.n_sft}",
            "system_prompt=false",
            "backwards_check=false",
            *EASY,
        ],
        times,
    )
    tok = _tokenizer(task)
    (root / "chats").mkdir(exist_ok=True)
    (root / "chats" / "arith.jsonl").write_text((task / "cold_start.jsonl").read_text())
    _run(
        "chat_tokenize",
        [
            "data_prep",
            "stage=chat_tokenize",
            f"input={root / 'chats'}",
            f"output={root / 'shards'}",
            f"chat_tokenize.tokenizer={tok}",
            f"chat_tokenize.seq_length={SEQ}",
        ],
        times,
    )
    manifest = json.loads((root / "shards" / "manifest.json").read_text())
    longest = max(s.get("max_document_tokens", 0) for s in manifest["shards"])
    print(f"  longest conversation: {longest} tokens")
    warmup = max(1, a.sft_steps // 20)
    _run(
        "sft",
        [
            "trainer",
            *_model_args(a),
            f"data.manifest={root / 'shards' / 'manifest.json'}",
            f"data.seq_length={SEQ}",
            f"train.steps={a.sft_steps}",
            f"train.global_batch_size={a.sft_batch}",
            f"train.micro_batch_size={a.sft_batch}",
            f"train.eval_interval={a.sft_steps}",
            "train.eval_iters=1",
            f"train.log_interval={max(1, a.sft_steps // 10)}",
            f"optim.lr={a.sft_lr}",
            f"optim.min_lr={a.sft_lr / 10}",
            f"optim.warmup_steps={warmup}",
            "optim.weight_decay=0.0",
            f"checkpoint.dir={root / 'sft'}",
            "checkpoint.save_interval_s=0",
            "logging.peak_flops_per_device=1e12",
        ],
        times,
    )
    sft = _accuracy("accuracy_sft", root / "sft", task, tok, a, times)
    cached.write_text(json.dumps(sft))
    return task, tok, sft


def _grpo_args(root: Path, task: Path, tok: str, a: argparse.Namespace) -> list[str]:
    """posttrain.grpo's overrides: the script's, then `--grpo-extra` (same key: extra wins)."""
    ours = [
        *_model_args(a),
        f"prompts.path={task / 'train.jsonl'}",
        f"prompts.tokenizer={tok}",
        "prompts.system_prompt=false",
        f"prompts.context={SEQ}",
        f"rollout.prompts_per_step={a.grpo_prompts}",
        f"rollout.group_size={a.grpo_group}",
        f"rollout.max_new_tokens={a.new}",
        f"train.steps={a.grpo_steps}",
        f"train.micro_batch_size={a.grpo_group}",
        f"train.seed={a.seed}",
        f"optim.lr={a.grpo_lr}",
        f"optim.min_lr={a.grpo_lr}",
        "rewards.weights={accuracy: 1.0, format: 0.5}",
        f"checkpoint.init_from={root / 'sft'}",
        f"checkpoint.dir={root / a.grpo_out}",
        "checkpoint.save_interval_s=0",
        "logging.console=false",
    ]
    merged = {o.split("=", 1)[0]: o for o in ours}
    merged.update({o.split("=", 1)[0]: o for o in a.grpo_extra})
    return list(merged.values())


def main() -> None:
    a = _args()
    root = Path(a.out or tempfile.mkdtemp(prefix="r1_learning_"))
    root.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    task, tok, sft = _prepare(root, a, times)
    _run("grpo", ["posttrain.grpo", *_grpo_args(root, task, tok, a)], times)
    summary = json.loads((root / a.grpo_out / "summary.json").read_text())
    grpo = _accuracy("accuracy_grpo", root / a.grpo_out, task, tok, a, times)
    ratio = grpo["accuracy"] / sft["accuracy"] if sft["accuracy"] else float("nan")
    result = {
        "sft": {k: sft[k] for k in ("accuracy", "format", "per_lang")},
        "grpo": {k: grpo[k] for k in ("accuracy", "format", "per_lang")},
        "grpo_vs_sft_accuracy": round(ratio, 3),
        "n_test": sft["n"],
        "sft_steps": a.sft_steps,
        "grpo_steps": a.grpo_steps,
        "grpo_seed": a.seed,
        "grpo_extra": a.grpo_extra,
        "grpo_summary": {k: v for k, v in summary.items() if isinstance(v, int | float)},
        "wall_s": times,
        "root": str(root),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
