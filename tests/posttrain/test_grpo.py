"""The GRPO loop (posttrain.grpo) on a tiny dense policy over gloo: metrics of a step, refit
parity of the rollout backend, bad input counted, save/resume, DP2 and TP2 == single.

Two process groups per module (1 and 2 ranks); each does several checks so that process start-up
(importing megatron) is paid once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.distributed import run_distributed

REWARDS = {"exact_match": 1.0, "format": 0.5, "test_vowels": 1.0, "test_raises": 0.1}
COMPARED = ("reward/mean", "reward/std", "response_length/mean", "loss", "kl", "entropy")


def _cfg(root: Path, files: dict[str, str], name: str, parallel: dict | None = None, **over: Any):
    from tests.posttrain.grpo_setup import grpo_config, register_test_rewards

    register_test_rewards()
    over.setdefault("rewards", {"weights": REWARDS})
    over.setdefault("optim", _optim())
    return grpo_config(files, str(root / name), parallel, **over)


def _optim() -> Any:
    from trainer.config.optim import OptimConfig

    return OptimConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.0)


def _grpo(cfg: Any) -> Any:
    from tokenizers import Tokenizer

    from posttrain.grpo_step import GRPO
    from posttrain.prompts import load_prompts
    from trainer.parallel import initialize_parallel

    tok = Tokenizer.from_file(cfg.prompts.tokenizer)
    prompts = load_prompts(cfg.prompts.path, tok, cfg.prompts.context)
    initialize_parallel(cfg.model, cfg.parallel, cfg.train.seed)
    return GRPO(cfg, tok, prompts)


def _parity(grpo: Any) -> dict[str, float]:
    """Max |backend logits - policy logits| on a rollout, and how far both moved from the
    reference (the update did change the policy)."""
    import torch

    from posttrain.grpo_step import without_mtp
    from trainer.model import lm_logits

    prompts, seeds = grpo.my_prompts()
    rollout = grpo.backend.generate([p.token_ids for p in prompts], 2, 8, 1.0, 1.0, seeds)
    tokens = rollout.tokens[:, : rollout.tokens.shape[1] // 2 * 2]
    backend = grpo.backend.logits(tokens)
    policy = grpo.trainer.model[0]
    with torch.no_grad(), without_mtp(policy):
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        trained = grpo.backend._gather_vocab(policy(tokens, positions, None))
        reference = grpo.backend._gather_vocab(lm_logits(grpo.reference, tokens))
    return {
        "backend_vs_policy": float((backend - trained).abs().max()),
        "policy_vs_reference": float((trained - reference).abs().max()),
    }


def _single(root: Path, files: dict[str, str]) -> dict[str, Any]:
    from posttrain.grpo import run

    grpo = _grpo(_cfg(root, files, "single"))
    first = grpo.step()
    out = {"first": first, "parity": _parity(grpo), "skipped": dict(grpo.prompts.skipped)}
    out["two_updates"] = _grpo(_cfg(root, files, "two", train={"updates_per_step": 2})).step()
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    straight = _cfg(root, files, "straight", train={"steps": 3})
    straight.logging.mlflow, straight.logging.tracking_uri = True, tracking
    straight.logging.experiment = "grpo"
    out["straight"] = run(straight)
    run(_cfg(root, files, "resumed", train={"steps": 2}))
    out["resumed"] = run(_cfg(root, files, "resumed", train={"steps": 3}))
    out["mlflow_run"] = _mlflow_metrics(tracking)
    out["rejection"] = _rejection_sample(root, files, straight)
    out["accuracy"] = _accuracy(root, files, straight)
    out["init_from"] = _init_from(root, files, straight.checkpoint.dir)
    return out


def _init_from(root: Path, files: dict[str, str], source: str) -> dict[str, Any]:
    """A run initialised from `source`: first-step KL, and whether a resumed run's reference
    still holds `source`'s weights (not the checkpointed policy's)."""
    import torch

    cfg = _cfg(root, files, "from_init", checkpoint={"init_from": source})
    fresh = _grpo(cfg)
    first = fresh.step()
    fresh.trainer.save(cfg.checkpoint.dir, 2)
    resumed = _grpo(cfg)

    def tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}

    reference = tensors(fresh.reference)
    same = all(torch.equal(v, reference[k]) for k, v in tensors(resumed.reference).items())
    policy = tensors(fresh.trainer.model[0].module)
    moved = any(not torch.equal(v, reference[k]) for k, v in policy.items() if k in reference)
    return {
        "kl": first["kl"],
        "resumed_from": resumed.resumed_from,
        "fresh_from": fresh.resumed_from,
        "reference_kept": same,
        "policy_moved": moved,
    }


def _rejection_sample(root: Path, files: dict[str, str], grpo_cfg: Any) -> dict[str, Any]:
    """Greedy (every sample alike: one kept, the rest duplicates) and sampled (a threshold on
    test_vowels, a cap of 2) sets from the GRPO run's checkpoint."""
    from posttrain.rejection_sample import RejectionSampleConfig, sample

    common = dict(
        checkpoint=grpo_cfg.checkpoint.dir,
        prompts=files["prompts"],
        tokenizer=files["tokenizer"],
        n=4,
        max_new_tokens=12,
        context=64,
        limit=4,
        model=grpo_cfg.model,
        precision=grpo_cfg.precision,
    )
    greedy = sample(
        RejectionSampleConfig(
            **common, out=str(root / "rs_greedy"), temperature=0.0, require={"format": 0.0}
        )
    )
    sampled = sample(
        RejectionSampleConfig(
            **common, out=str(root / "rs"), max_per_prompt=2, require={"test_vowels": 0.2}
        )
    )
    lines = (root / "rs" / "sft.jsonl").read_text().splitlines()
    return {"greedy": greedy, "sampled": sampled, "records": [json.loads(x) for x in lines]}


def _accuracy(root: Path, files: dict[str, str], grpo_cfg: Any) -> dict[str, Any]:
    """posttrain.accuracy on the GRPO run's checkpoint (3 prompts, written to a file), and the
    greedy responses it scored, decoded again by the rollout backend for comparison."""
    from posttrain.accuracy import AccuracyConfig, evaluate

    cfg = AccuracyConfig(
        checkpoint=grpo_cfg.checkpoint.dir,
        test=files["prompts"],
        tokenizer=files["tokenizer"],
        out=str(root / "acc" / "accuracy.json"),
        max_new_tokens=12,
        context=64,
        prompts_per_batch=2,
        limit=3,
        model=grpo_cfg.model,
        precision=grpo_cfg.precision,
    )
    summary = evaluate(cfg)
    return {"summary": summary, "written": json.loads(Path(cfg.out).read_text())}


def _mlflow_metrics(uri: str) -> dict[str, int]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    run = mlflow.search_runs(experiment_names=["grpo"], output_format="list", filter_string="")
    return {k: len(client.get_metric_history(run[0].info.run_id, k)) for k in run[0].data.metrics}


def _two_ranks(root: Path, files: dict[str, str]) -> dict[str, Any]:
    import torch.distributed as dist

    out = {}
    for name, parallel in (("dp2", {}), ("tp2", {"tensor_parallel": 2, "sequence_parallel": True})):
        grpo = _grpo(_cfg(root, files, name, parallel))
        prompts, seeds = grpo.my_prompts()
        rollout = grpo.backend.generate([p.token_ids for p in prompts], 2, 8, 1.0, 1.0, seeds)
        out[name] = {"first": grpo.step(), "tokens": rollout.tokens.tolist()}
        if name == "tp2":
            out[name]["parity"] = _parity(grpo)
        dist.barrier()
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from tests.posttrain.grpo_setup import write_task

    root = tmp_path_factory.mktemp("grpo")
    return root, write_task(root, long_prompts=2)


@pytest.fixture(scope="module")
def single(task: tuple[Path, dict[str, str]]) -> dict[str, Any]:
    return run_distributed(_single, 1, *task)[0]


def test_a_step_reports_sane_metrics_and_counts_bad_input(single: dict[str, Any]) -> None:
    m = single["first"]
    assert all(math.isfinite(v) for v in m.values()), m
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_fraction"] == 0.0
    assert m["reward/std"] > 0 and m["grad_norm"] > 0 and m["loss"] != 0
    assert 0 < m["response_length/mean"] <= 16 and m["entropy"] > 0
    assert m["gen_tokens_per_s"] > 0 and m["train_tokens_per_s"] > 0
    # the failing plugin scored 0 on each of the 16 samples, counted, no crash
    assert m["reward_errors/test_raises: RuntimeError"] == 16.0 == m["reward_errors"]
    assert m["prompts_skipped/prompt_longer_than_context"] == 2.0
    assert m["prompts_skipped/bad_record"] == 1.0


def test_init_from_is_the_reference_also_after_a_resume(single: dict[str, Any]) -> None:
    m = single["init_from"]
    assert m["fresh_from"].startswith("weights of") and "iter_0000001" in m["resumed_from"]
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["reference_kept"] and m["policy_moved"]


def test_a_second_update_per_rollout_sees_a_ratio_off_one(single: dict[str, Any]) -> None:
    m = single["two_updates"]  # the second mini-batch's policy already moved from the old one
    assert abs(m["ratio_mean"] - 1.0) > 1e-7 and m["kl"] > 0
    assert m["reward/mean"] == pytest.approx(single["first"]["reward/mean"])  # same rollouts


def test_rollout_backend_logits_equal_the_trained_policy(single: dict[str, Any]) -> None:
    assert single["parity"]["backend_vs_policy"] <= 1e-4
    assert single["parity"]["policy_vs_reference"] > 1e-3  # the update moved the policy


def test_resume_gives_the_uninterrupted_metrics(single: dict[str, Any]) -> None:
    straight, resumed = single["straight"], single["resumed"]
    assert straight["final_step"] == resumed["final_step"] == 3
    for key in ("reward_mean", "kl", "loss", "entropy", "grad_norm", "response_length"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-7), key
    assert resumed["reward_errors"] == straight["reward_errors"]  # counters survive the resume
    curves = single["mlflow_run"]
    for key in (
        "reward.mean",
        "reward.std",
        "kl",
        "clip_fraction",
        "entropy",
        "response_length.mean",
        "gen_tokens_per_s",
        "train_tokens_per_s",
        "format",
    ):
        assert curves[key] == 3, key


def test_dp2_and_tp2_match_single(task: tuple[Path, dict[str, str]], single: dict) -> None:
    ranks = run_distributed(_two_ranks, 2, *task)
    for layout in ("dp2", "tp2"):
        for rank in ranks:
            got = rank[layout]["first"]
            for key in COMPARED + ("grad_norm",):
                assert got[key] == pytest.approx(single["first"][key], rel=1e-4, abs=1e-6), (
                    layout,
                    key,
                )
    assert ranks[0]["tp2"]["tokens"] == ranks[1]["tp2"]["tokens"]  # TP ranks sample alike
    assert ranks[0]["tp2"]["parity"]["backend_vs_policy"] <= 1e-4


def test_rejection_sampling_keeps_dedupes_caps_and_accounts(single: dict[str, Any]) -> None:
    greedy, sampled = single["rejection"]["greedy"], single["rejection"]["sampled"]
    assert greedy["generated"] == 16 and greedy["kept"] == 4
    assert greedy["removed"] == {"duplicate": 12}
    assert all(p == {**p, "kept": 1, "generated": 4} for p in greedy["per_prompt"])
    removed = sum(sampled["removed"].values())
    assert sampled["generated"] == 16 == sampled["kept"] + removed
    assert set(sampled["removed"]) <= {"failed:test_vowels", "duplicate", "over_cap"}
    assert all(p["kept"] <= 2 for p in sampled["per_prompt"])
    records = single["rejection"]["records"]
    assert len(records) == sampled["kept"] > 0
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in records)


def test_accuracy_scores_greedy_responses_and_writes_the_line(single: dict[str, Any]) -> None:
    summary, written = single["accuracy"]["summary"], single["accuracy"]["written"]
    assert summary == written
    assert summary["n"] == 3 and set(summary["per_lang"]) == {"en"}
    assert 0.0 <= summary["accuracy"] <= summary["format"] + 1.0
    assert summary["per_lang"]["en"] == summary["accuracy"]
    assert summary["skipped"] == {"bad_record": 1, "prompt_longer_than_context": 2}
    assert summary["step"] == 3


DRIVER = Path(__file__).with_name("grpo_driver.py")


def _cli(files: dict[str, str], ckpt: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m posttrain.grpo` (with the test rewards) on the config of `_cfg(..., steps=3)`."""
    weights = ", ".join(f"{k}: {v}" for k, v in REWARDS.items())
    args = [
        "model=tiny_dense",
        "model.num_layers=2",
        "model.vocab_size=512",
        "model.max_position_embeddings=128",
        "model.init_method_std=0.02",
        f"prompts.path={files['prompts']}",
        f"prompts.tokenizer={files['tokenizer']}",
        "prompts.context=64",
        "rollout.prompts_per_step=4",
        "rollout.group_size=4",
        "rollout.max_new_tokens=16",
        "train.steps=3",
        "train.micro_batch_size=4",
        "optim.lr=1e-3",
        "optim.min_lr=1e-3",
        f"rewards.weights={{{weights}}}",
        "checkpoint.save_interval=1",
        "checkpoint.save_interval_s=0",
        f"checkpoint.dir={ckpt}",
        "logging.console=false",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread count of the uninterrupted run
    cmd = [sys.executable, str(DRIVER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_metrics(
    task: tuple[Path, dict[str, str]], single: dict[str, Any]
) -> None:
    root, files = task
    ckpt = root / "killed"
    killed = _cli(files, ckpt, "train.inject_kill_step=3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (ckpt / "iter_0000002").is_dir() and not (ckpt / "iter_0000003").exists()
    again = _cli(files, ckpt)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((ckpt / "summary.json").read_text())
    straight = single["straight"]
    assert resumed["final_step"] == 3
    for key in ("reward_mean", "kl", "loss", "entropy", "grad_norm", "response_length"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5, abs=1e-7), key
    assert resumed["reward_errors"] == straight["reward_errors"]
