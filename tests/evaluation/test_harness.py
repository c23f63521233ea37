"""evaluation.harness / local_tasks: next-sentence tasks built from held-out documents (zh and
en), scored by lm-evaluation-harness on a transformers folder exactly as a direct computation
scores them; bad task input is one line before any model is loaded."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.local_tasks import next_sentence_items, sentences

REPO = Path(__file__).resolve().parents[2]
WORDS = "alpha beta gamma delta river stone cloud light paper green window music".split()
HANZI = "天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏"


def holdout_texts(seed: int = 0, docs: int = 12) -> dict[str, list[str]]:
    rng = random.Random(seed)
    en = [
        " ".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
            for _ in range(4)
        )
        for _ in range(docs)
    ]
    zh = [
        "".join(
            "".join(rng.choice(HANZI) for _ in range(rng.randint(8, 14))) + "。" for _ in range(4)
        )
        for _ in range(docs)
    ]
    return {"en": en, "zh": zh}


def write_holdout(root: Path, domains: dict[str, list[str]]) -> Path:
    for domain, texts in domains.items():
        (root / "holdout" / domain).mkdir(parents=True)
        lines = [
            json.dumps({"id": f"{domain}{i}", "text": t}, ensure_ascii=False)
            for i, t in enumerate(texts)
        ]
        (root / "holdout" / domain / "00000.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_items_continue_their_document_and_draw_distractors_elsewhere() -> None:
    domains = holdout_texts()
    for domain, texts in domains.items():
        zh = domain == "zh"
        items = next_sentence_items(texts, seed=1)
        assert len(items) == len(texts) and items == next_sentence_items(texts, seed=1)
        for item in items:
            answer = item["choices"][item["label"]]
            assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
            home = [t for t in texts if answer in sentences(t, zh)]
            assert home and (item["context"] + ("" if zh else " ") + answer) in home[0].replace(
                "\n", " "
            )
            for other in item["choices"]:
                if other != answer:
                    assert other not in sentences(home[0], zh)
        assert ("" if zh else " ") == ("" if "。" in items[0]["context"] else " ")
        labels = {i["label"] for i in items}
        assert len(labels) > 1  # the answer is not always in one position


def _hf_folder(root: Path) -> Path:
    """A random LLaMA saved by transformers, with a byte-level BPE tokenizer of our own."""
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from tests.trainer.test_export import write_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.5,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(root)
    texts = [t for ts in holdout_texts(5, 40).values() for t in ts]
    tok_file = write_tokenizer(root / "tokenizer.json", 400, texts)
    eos = "<|endoftext|>"
    PreTrainedTokenizerFast(
        tokenizer_file=str(tok_file), eos_token=eos, bos_token=eos, pad_token=eos
    ).save_pretrained(root)
    return root


def harness(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evaluation.harness", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def direct_accuracy(folder: Path, items: list[dict], zh: bool) -> float:
    """argmax over choices of sum log p(choice | context), computed with transformers directly
    (as lm-eval's hf backend scores: the context's tokens, no start token, then the choice's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    right = 0
    for item in items:
        scores = []
        for choice in item["choices"]:
            context = tok(item["context"], add_special_tokens=False).input_ids
            whole = tok(
                item["context"] + ("" if zh else " ") + choice, add_special_tokens=False
            ).input_ids
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            picked = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)  # [j]: log p(token j + 1)
            scores.append(float(picked[len(context) - 1 :].sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return right / len(items)


@pytest.mark.slow
def test_harness_scores_local_tasks_like_a_direct_computation(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "hf")
    domains = holdout_texts()
    write_holdout(tmp_path / "remix", domains)
    done = harness(f"hf={folder}", f"holdout={tmp_path / 'remix'}", f"output={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["items"] == 24 and result["items_per_s"] > 0
    assert (
        json.loads((tmp_path / "out" / "results.json").read_text())["results"] == result["results"]
    )
    for domain in domains:
        items = [
            json.loads(line)
            for line in (tmp_path / "out" / "tasks" / f"next_sentence_{domain}.jsonl")
            .read_text()
            .splitlines()
        ]
        want = direct_accuracy(folder, items, domain == "zh")
        assert result["results"][f"next_sentence_{domain}"]["acc"] == pytest.approx(want, abs=1e-9)


@pytest.mark.slow
def test_humaneval_generates_and_scores_in_the_sandbox(tmp_path: Path) -> None:
    """The offline HumanEval path: completions generated from the folder, executed in the
    sandbox (a random model solves nothing); scored items counted."""
    folder = _hf_folder(tmp_path / "hf")
    done = harness(
        f"hf={folder}",
        f"output={tmp_path / 'out'}",
        "tasks=[humaneval]",
        "limit=3",
        "humaneval_max_new_tokens=16",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["results"] == {"humaneval": {"pass_at_1": 0.0}} and result["items"] == 3


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_bad_task_input_is_one_line_before_loading(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")  # never loaded: the checks come first
    remix = write_holdout(tmp_path / "remix", holdout_texts())
    out = f"output={tmp_path / 'out'}"
    args = [f"hf={folder}", f"holdout={remix}", out]
    assert "unknown task 'no_such_task'" in _one_line(harness(*args, "tasks=[no_such_task]"))
    broken = tmp_path / "tasks"
    broken.mkdir()
    (broken / "mine.yaml").write_text("task: mine\ndoc_to_text: [unclosed\n")
    line = _one_line(harness(*args, f"include=[{broken}]"))
    assert f"task file {broken / 'mine.yaml'}:3: does not parse" in line
    empty = write_holdout(tmp_path / "empty", {"en": ["One sentence only."]})
    assert "task next_sentence_en: the 1 held-out documents" in _one_line(
        harness(f"hf={folder}", f"holdout={empty}", out)
    )
    (folder / "tokenizer.json").unlink()
    assert "not an exported model folder" in _one_line(harness(*args))
