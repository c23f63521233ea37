"""Reward plugins (posttrain.rewards) and the response format they read (posttrain.chat)."""

from __future__ import annotations

import pytest

from posttrain.chat import final_answer, format_response, parse_response
from posttrain.rewards import REWARDS, RewardConfig, Sample, register_reward

GOOD = format_response("Step 1: 12 + 7 = 19.\nStep 2: 19 * 2 = 38.", "38")
ZH_GOOD = format_response("第1步：12 + 7 = 19。第2步：19 * 2 = 38。", "38")
EN_PROMPT = "Tom has 12 apples. Then Tom gets 7 more. How many apples does Tom have now?"
ZH_PROMPT = "小明有12个苹果。然后又得到7个。小明现在有多少个苹果？"


def score(name: str, response: str, answer: str | None = "38", prompt: str = EN_PROMPT) -> float:
    return REWARDS[name](Sample(prompt, response, answer))


@pytest.mark.parametrize(
    "response",
    [
        GOOD,
        "  <think>a</think><answer>38</answer>\n",
    ],
)
def test_format_accepts_think_then_answer(response: str) -> None:
    assert score("format", response) == 1.0
    assert parse_response(response) is not None


@pytest.mark.parametrize(
    "response",
    [
        "<answer>38</answer>",  # no reasoning
        "<think>a</think>38",  # no answer tags
        GOOD + " thanks",  # something after the answer
        "<think>a<think>b</think><answer>38</answer>",  # nested think
        "<think>a</think><answer>38</answer><answer>39</answer>",  # two answers
        "<think> </think><answer>38</answer>",  # empty reasoning
        "intro <think>a</think><answer>38</answer>",  # something before
    ],
)
def test_format_rejects_anything_else(response: str) -> None:
    assert score("format", response) == 0.0


def test_accuracy_checks_the_last_answer_with_math_verify() -> None:
    assert score("accuracy", GOOD) == 1.0
    assert score("accuracy", format_response("x", "38.0")) == 1.0
    assert score("accuracy", format_response("x", "-38")) == 0.0
    assert score("accuracy", format_response("x", "39")) == 0.0
    assert score("accuracy", "<answer>1</answer> then <answer>38</answer>") == 1.0
    assert score("accuracy", "the answer is 38") == 0.0  # no answer tags: not extracted
    assert score("accuracy", format_response("x", "3" * 100)) == 0.0  # too long to parse
    assert final_answer("no tags") is None


def test_exact_match() -> None:
    assert score("exact_match", format_response("x", " 38 ")) == 1.0
    assert score("exact_match", format_response("x", "38.0")) == 1.0
    assert score("exact_match", format_response("x", "thirty-eight")) == 0.0


def test_language_consistency_is_the_share_of_the_prompt_language() -> None:
    assert score("language", ZH_GOOD, prompt=ZH_PROMPT) == 1.0
    assert score("language", GOOD, prompt=EN_PROMPT) == 1.0
    assert score("language", GOOD, prompt=ZH_PROMPT) == 0.0
    mixed = format_response("第一步 is 12 + 7 = 19", "19")  # 3 CJK characters, 1 English word
    assert score("language", mixed, prompt=ZH_PROMPT) == pytest.approx(0.75)
    assert score("language", mixed, prompt=EN_PROMPT) == pytest.approx(0.25)
    assert score("language", format_response("12 + 7 = 19", "19")) == 0.0  # no words at all
    assert REWARDS["language"](Sample(EN_PROMPT, ZH_GOOD, lang="zh")) == 1.0  # lang wins


def test_combined_reward_weights_and_survives_failing_plugins() -> None:
    @register_reward("test_raises")
    def _raises(sample: Sample) -> float:
        raise RuntimeError("boom")

    @register_reward("test_nan")
    def _nan(sample: Sample) -> float:
        return float("nan")

    try:
        weights = {"accuracy": 1.0, "format": 0.5, "test_raises": 1.0, "test_nan": 1.0}
        rewards = RewardConfig(weights=weights).build()
        scores = rewards(
            [
                Sample(EN_PROMPT, GOOD, "38"),
                Sample(EN_PROMPT, GOOD, None),
                Sample(EN_PROMPT, "", "1"),
            ]
        )
    finally:
        del REWARDS["test_raises"], REWARDS["test_nan"]
    assert [s.total for s in scores] == [1.5, 0.5, 0.0]
    assert scores[1].parts == {"accuracy": 0.0, "format": 1.0, "test_raises": 0.0, "test_nan": 0.0}
    assert dict(rewards.errors) == {
        "test_raises: RuntimeError": 3,
        "test_nan: non-finite": 3,
        "accuracy: ValueError": 1,  # the sample without a gold answer
    }
    assert rewards.examples["accuracy: ValueError"] == "sample has no gold answer"


def test_reward_config_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown reward 'acc'"):
        RewardConfig(weights={"acc": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format")(lambda s: 0.0)
