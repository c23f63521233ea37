"""Rollout pieces without a model (posttrain.rollout, posttrain.prompts, posttrain.grpo_config):
sampling, response masks, the prompt template and filter, the vllm guard, config checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from posttrain.chat import render_prompt
from posttrain.rollout import ROLLOUT_BACKENDS, Rollout, nucleus_filter, sample_tokens


def test_gumbel_max_sampling_follows_the_softmax_and_greedy_at_zero() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    noise = torch.rand(20000, 4, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_tokens(logits, 1.0, 1.0, noise), minlength=4) / 20000
    assert counts.tolist() == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.015)
    assert set(sample_tokens(logits, 0.0, 1.0, noise).tolist()) == {0}
    nucleus = sample_tokens(logits, 1.0, 0.7, noise)  # {0.5, 0.3} reach 0.7
    assert set(nucleus.tolist()) == {0, 1}


def test_nucleus_filter_keeps_the_smallest_set_and_the_top_token() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.9, 0.05, 0.05]]))
    kept = torch.isfinite(nucleus_filter(logits, 0.8))
    assert kept.tolist() == [[False, True, True], [True, False, False]]
    assert torch.equal(nucleus_filter(logits, 1.0), logits)


def test_response_mask_marks_targets_of_response_tokens() -> None:
    eod = 0
    tokens = torch.tensor([[5, 6, 7, 8, eod, eod], [5, 6, 9, eod, eod, eod]])
    rollout = Rollout(tokens, torch.tensor([2, 3]), torch.tensor([3, 1]), torch.tensor([1, 1]))
    # row 0: response = positions 2..4 -> targets t+1 in {2,3,4} -> t in {1,2,3}
    assert rollout.response_mask().int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert rollout.responses() == [[7, 8, eod], [eod]]


def test_prompt_template_is_deepseek_chat() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert render_prompt(messages) == "Be brief.\n\nUser: 1+1?\n\nAssistant:"
    with pytest.raises(ValueError, match="role"):
        render_prompt([{"role": "assistant", "content": "2"}])


def test_prompt_is_the_prefix_of_the_sft_conversation_up_to_the_answer() -> None:
    """One owner of the format: what GRPO prompts with is exactly what the SFT stage trained
    on before the assistant's content (data_prep's `deepseek` template, bos included)."""
    from data_prep.chat import DEEPSEEK_TEMPLATE, ChatRenderer

    messages = [{"role": "user", "content": "Tom has 3 apples."}]
    answer = {"role": "assistant", "content": "<think>3</think>\n<answer>3</answer>"}
    segments = ChatRenderer(DEEPSEEK_TEMPLATE, "<eod>", "<eod>").segments([*messages, answer])
    prefix = "".join(text for text, is_answer in segments[: [a for _, a in segments].index(True)])
    assert render_prompt(messages, bos="<eod>") == prefix
    assert segments[-1] == (" " + answer["content"] + "<eod>", True)


def test_prompts_too_long_or_without_answer_are_counted(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from posttrain.prompts import load_prompts
    from tests.posttrain.grpo_setup import write_task

    files = write_task(tmp_path, n_train=16, long_prompts=3)
    with Path(files["prompts"]).open("a") as f:
        f.write("not json\n")
    tok = Tokenizer.from_file(files["tokenizer"])
    prompts = load_prompts(files["prompts"], tok, context=64)
    assert len(prompts.prompts) == 16
    assert prompts.skipped == {"prompt_longer_than_context": 3, "bad_record": 2}
    step0, step1 = prompts.for_step(0, 4, seed=1), prompts.for_step(1, 4, seed=1)
    assert step0 == prompts.for_step(0, 4, seed=1) and step0 != step1
    with pytest.raises(ValueError, match="no usable prompt"):
        load_prompts(files["prompts"], tok, context=8)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="needs the vllm package") as err:
        ROLLOUT_BACKENDS["vllm"](None, 0, 64)
    assert "\n" not in str(err.value)


def test_config_refuses_bad_values_in_one_line() -> None:
    from posttrain.grpo_config import GRPOConfig, RolloutConfig
    from trainer.config.parallel import ParallelConfig

    with pytest.raises(ValueError, match="rollout.backend"):
        RolloutConfig(backend="sglang")
    with pytest.raises(ValueError, match="group_size >= 2"):
        RolloutConfig(group_size=1)
    with pytest.raises(ValueError, match="pipeline_parallel > 1"):
        GRPOConfig(parallel=ParallelConfig(pipeline_parallel=2))
    with pytest.raises(ValueError, match="context_parallel > 1"):
        GRPOConfig(parallel=ParallelConfig(context_parallel=2))
    with pytest.raises(ValueError, match="must split over DP=2"):
        GRPOConfig(rollout=RolloutConfig(prompts_per_step=3)).check_layout(2)


def test_rejection_selection_requires_dedupes_and_caps() -> None:
    from posttrain.rejection_sample import select

    texts = ["a  b", "a b", "c", "d", "e", "f"]
    scores = [{"accuracy": 1.0, "format": 1.0}] * 6
    scores[2] = {"accuracy": 0.0, "format": 1.0}
    scores[3] = {"accuracy": 1.0, "format": 0.0}
    kept, removed = select(texts, scores, {"accuracy": 1.0, "format": 1.0}, cap=2)
    assert kept == [0, 4]
    assert removed == {"duplicate": 1, "failed:accuracy": 1, "failed:format": 1, "over_cap": 1}


def test_a_cuda_machine_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.grpo import check_cpu_only

    if not torch.cuda.is_available():
        check_cpu_only()  # a CPU machine passes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        check_cpu_only()


def test_dry_run_plans_the_layout_without_reading_the_prompts() -> None:
    """What the pipeline's train kind runs to validate a GRPO stage (`dry_run=true`)."""
    from posttrain.grpo import plan
    from posttrain.grpo_config import GRPOConfig, PromptsConfig, RolloutConfig
    from trainer.config.parallel import ParallelConfig

    prompts = PromptsConfig(path="not/yet/written.jsonl", tokenizer="nor/this.json")
    cfg = GRPOConfig(prompts=prompts, parallel=ParallelConfig(tensor_parallel=2), world_size=4)
    assert plan(cfg) | {"steps": 0} == {
        "dry_run": True,
        "world_size": 4,
        "data_parallel": 2,
        "rows_per_step": 32,
        "steps": 0,
    }
    with pytest.raises(ValueError, match="world size 3 is not divisible by TP\\*PP\\*CP = 2"):
        plan(GRPOConfig(prompts=prompts, parallel=ParallelConfig(tensor_parallel=2), world_size=3))
    odd = GRPOConfig(prompts=prompts, rollout=RolloutConfig(prompts_per_step=3), world_size=2)
    with pytest.raises(ValueError, match="must split over DP=2"):
        plan(odd)


def test_included_records_are_checked_line_by_line(tmp_path: Path) -> None:
    from posttrain.rejection_sample import _included

    good = tmp_path / "cold.jsonl"
    good.write_text('{"messages": []}\n\n{"messages": [], "id": 2}\n')
    assert [r.get("id") for r in _included(str(good))] == [None, 2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: not a JSON object"):
        _included(str(bad))
