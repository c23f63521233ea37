"""trainer.bpb: held-out bits per byte with our model equals a direct computation with
transformers on the exported folder; bad input is one line before any model is loaded."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_corpus import write_tiny_manifest
from tests.trainer.test_export import REPO, _env, exported, train, write_tokenizer

EN = ["the quick brown fox jumps over the lazy dog", "a lazy dog sleeps", "brown foxes run fast"]
ZH = ["你好世界", "中文文本的测试", "世界你好，中文"]


def write_holdout(root: Path) -> Path:
    """A remix output's holdout folder: en and zh documents, one longer than seq_length."""
    docs = {"en": [*EN, " ".join(EN * 12)], "zh": ZH}
    for domain, texts in docs.items():
        folder = root / "holdout" / domain
        folder.mkdir(parents=True)
        lines = [
            json.dumps({"id": f"{domain}{i}", "text": t}, ensure_ascii=False)
            for i, t in enumerate(texts)
        ]
        (folder / "00000.jsonl").write_text("\n".join(lines) + "\n")
    return root


def bpb(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.bpb", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)


def bpb_of(ckpt: Path, holdout: Path) -> dict[str, float]:
    done = bpb(f"checkpoint.dir={ckpt}", f"holdout={holdout}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["bpb"]


def direct_bpb(folder: Path, texts: list[str], seq_length: int) -> float:
    """-log2 p of every token of every text / UTF-8 bytes, each window a separate forward of
    transformers' model (no batching, no padding), written independently of evaluation.bpb."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    nats, size = 0.0, 0
    for text in texts:
        ids = [tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False).input_ids]
        for start in range(0, len(ids) - 1, seq_length):
            window = torch.tensor([ids[start : start + seq_length + 1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(window[:, :-1]).logits[0].double(), -1)
            nats -= float(logp.gather(-1, window[0, 1:, None]).sum())
        size += len(text.encode("utf-8"))
    return nats / math.log(2) / size


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bpb")
    write_tokenizer(root / "tokenizer.json")
    write_tiny_manifest(root)
    train(root / "manifest.json", root / "ck", "model=tiny_v3")
    exported(root / "ck", root / "hf")
    write_holdout(root / "remix")
    return root


def test_bits_per_byte_equals_transformers_on_the_export(run: Path) -> None:
    done = bpb(f"checkpoint.dir={run / 'ck'}", f"holdout={run / 'remix'}", "batch_size=3")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seq_length"] == 64 and result["documents"] == {"en": 4, "zh": 3, "all": 7}
    long_doc = [*EN, " ".join(EN * 12)]
    for domain, texts in {"en": long_doc, "zh": ZH, "all": long_doc + ZH}.items():
        want = direct_bpb(run / "hf", texts, 64)
        got = result["bpb"][domain]
        assert abs(got - want) <= 1e-4 * want, (domain, got, want)
    # an untrained tiny model is near uniform over 512 tokens: ~9 bits per token
    assert 1.0 < result["bpb"]["en"] < 12.0


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_bad_input_is_one_line(run: Path, tmp_path: Path) -> None:
    ck = f"checkpoint.dir={run / 'ck'}"
    assert "no held-out documents" in _one_line(bpb(ck, f"holdout={tmp_path}"))
    bad = tmp_path / "bad" / "holdout" / "en"
    bad.mkdir(parents=True)
    (bad / "00000.jsonl").write_text('{"text": "ok"}\n{"id": 3}\n')
    assert f"{bad / '00000.jsonl'}:2: not a JSON record" in _one_line(
        bpb(ck, f"holdout={tmp_path / 'bad'}")
    )
    assert "holds no complete checkpoint" in _one_line(
        bpb(f"checkpoint.dir={tmp_path}", f"holdout={run / 'remix'}")
    )
    assert "holdout=... is required" in _one_line(bpb(ck))
    # a checkpoint whose tokenizer cannot be found
    missing = tmp_path / "no_tokenizer.json"
    assert f"tokenizer={missing}: no such file" in _one_line(
        bpb(ck, f"holdout={run / 'remix'}", f"tokenizer={missing}")
    )


def test_watch_scores_each_checkpoint_while_training_runs(tmp_path: Path) -> None:
    """`watch=true` started before training: every checkpoint (steps 2, 4, 6) is scored once,
    in order, logged at its step into an MLflow run, and the watcher ends with the run; the
    last score equals a plain evaluation of that step."""
    from mlflow import MlflowClient

    write_tokenizer(tmp_path / "tokenizer.json")
    write_tiny_manifest(tmp_path)
    holdout = write_holdout(tmp_path / "remix")
    ck = tmp_path / "ck"
    ck.mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("bpb")).info.run_id
    cmd = [
        sys.executable,
        "-m",
        "trainer.bpb",
        f"checkpoint.dir={ck}",
        f"holdout={holdout}",
        "watch=true",
        "poll_s=0.2",
        f"mlflow_run_id={run_id}",
        f"tracking_uri={uri}",
    ]
    watcher = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        train(
            tmp_path / "manifest.json",
            ck,
            "model=tiny_dense",
            "train.steps=6",
            "checkpoint.save_interval=2",
            "checkpoint.keep_last=3",
        )
        out, err = watcher.communicate(timeout=300)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err[-3000:]
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in results] == [2, 4, 6]
    history = client.get_metric_history(run_id, "bpb/all")
    assert [m.step for m in history] == [2, 4, 6]
    assert [m.value for m in history] == [r["bpb"]["all"] for r in results]
    assert results[-1]["bpb"] == bpb_of(ck, holdout)
