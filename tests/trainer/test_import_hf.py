"""trainer.import_hf and checkpoint.init_from=hf:DIR: models transformers itself created load
with equal logits, train, and round-trip HF -> ours -> HF bit for bit; bad input is one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_corpus import write_tiny_manifest
from tests.trainer.test_export import (
    REPO,
    TOKENS,
    TOL,
    _env,
    export,
    exported,
    hf_logits,
    hf_tensors,
    our_logits,
    train,
    write_tokenizer,
)


def _transformers_model(kind: str, out: Path) -> Path:
    """A tiny random model made and saved by transformers (norms and expert bias perturbed so
    that a swapped or dropped tensor shows in the logits)."""
    from transformers import AutoModelForCausalLM, DeepseekV3Config, LlamaConfig

    torch.manual_seed(0)
    if kind == "deepseek_v3":
        config = DeepseekV3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_shared_experts=1,
            n_routed_experts=8,
            routed_scaling_factor=2.5,
            kv_lora_rank=32,
            q_lora_rank=48,
            qk_rope_head_dim=8,
            v_head_dim=16,
            qk_nope_head_dim=16,
            n_group=2,
            topk_group=1,
            num_experts_per_tok=2,
            first_k_dense_replace=1,
            norm_topk_prob=True,
            max_position_embeddings=256,
            rope_interleave=True,
            initializer_range=0.1,
        )
    else:
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.1,
        )
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(torch.randn_like(b) * 0.1)
    model.save_pretrained(out)
    return out


def import_hf(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.import_hf", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("import_corpus")
    write_tokenizer(root / "tokenizer.json")
    return write_tiny_manifest(root)


@pytest.mark.parametrize("kind", ["deepseek_v3", "llama"])
def test_transformers_model_imports_with_equal_logits_and_round_trips(
    corpus: Path, tmp_path: Path, kind: str
) -> None:
    source = _transformers_model(kind, tmp_path / "src")
    done = import_hf(f"source={source}", f"output={tmp_path / 'ours'}", "name=imported")
    assert done.returncode == 0, done.stderr[-2000:]
    yaml = (tmp_path / "ours" / "model" / "imported.yaml").read_text()
    assert yaml in done.stdout and "num_layers:" in yaml  # printed and saved
    diff = (our_logits(tmp_path / "ours", TOKENS) - hf_logits(source, TOKENS)).abs().max().item()
    assert diff <= TOL, f"{kind}: max |logit diff| {diff}"
    tok = f"tokenizer={corpus.parent / 'tokenizer.json'}"
    back = export(f"checkpoint.dir={tmp_path / 'ours'}", f"output={tmp_path / 'back'}", tok)
    assert back.returncode == 0, back.stderr[-2000:]
    before, after = hf_tensors(source), hf_tensors(tmp_path / "back")
    assert sorted(after) == sorted(before)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name


def test_init_from_hf_trains_and_exports(corpus: Path, tmp_path: Path) -> None:
    source = _transformers_model("deepseek_v3", tmp_path / "src")
    assert import_hf(f"source={source}", f"output={tmp_path / 'conf'}", "name=v3hf").returncode == 0
    ckpt = tmp_path / "ck"
    conf = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=v3hf"]
    train(corpus, ckpt, *conf, f"checkpoint.init_from=hf:{source}", "train.steps=3")
    marker = json.loads((ckpt / "iter_0000003" / "checkpoint.json").read_text())
    assert marker["step"] == 3
    result = exported(ckpt, tmp_path / "hf")
    assert result["step"] == 3
    diff = (our_logits(ckpt, TOKENS) - hf_logits(tmp_path / "hf", TOKENS)).abs().max().item()
    assert diff <= TOL
    # Another model than the folder holds: one line naming the differing fields.
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "model=tiny_v3",
            f"data.manifest={corpus}",
            "data.seq_length=64",
            f"checkpoint.dir={tmp_path / 'ck2'}",
            f"checkpoint.init_from=hf:{source}",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    last = wrong.stderr.strip().splitlines()[-1]
    assert "this run is 'tiny_v3'" in last and "num_layers=3 vs 4" in last, last


def test_exported_model_generates_through_its_tokenizer(corpus: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(corpus, tmp_path / "ck", "model=tiny_v3")
    exported(tmp_path / "ck", tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert model.generation_config.eos_token_id == 0
    for prompt in ("the quick brown fox", "你好世界"):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        assert out.shape[1] > ids.shape[1]
        assert tokenizer.decode(out[0, : ids.shape[1]]) == prompt  # the prompt round-trips
        text = tokenizer.decode(out[0], skip_special_tokens=False)
        assert text.startswith(prompt)
    special = tokenizer("a<|endoftext|>b").input_ids
    assert 0 in special and tokenizer.decode(special) == "a<|endoftext|>b"


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stderr.strip().splitlines()[-1]


def _bad_weights_are_one_line(source: Path, config: dict, out: Path) -> None:
    """Weights that disagree with config.json, or are missing or cut short: the tensor named,
    nothing left under `out` (shapes are checked from the headers before anything is written)."""
    from safetensors.torch import load_file, save_file

    weights = source / "model.safetensors"
    original = weights.read_bytes()
    (source / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    line = _one_line(import_hf(f"source={source}", f"output={out}"))
    assert re.search(r"mlp.linear_fc1.weight has shape \[256, 64\], .* needs \[192, 64\]", line)
    (source / "config.json").write_text(json.dumps(config))
    tensors = load_file(weights)
    del tensors["model.norm.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    line = _one_line(import_hf(f"source={source}", f"output={out}"))
    assert "no tensor for decoder.final_layernorm.weight" in line and "model.norm.weight" in line
    weights.write_bytes(original[: len(original) - 1000])
    assert "truncated file" in _one_line(import_hf(f"source={source}", f"output={out}"))
    weights.write_bytes(original)
    assert not out.exists() or not list(out.iterdir())


def test_bad_input_is_one_line_and_writes_nothing(corpus: Path, tmp_path: Path) -> None:
    from trainer.export import ExportConfig, SourceConfig
    from trainer.export import export as export_folder
    from trainer.import_hf import ImportConfig, import_folder

    out = tmp_path / "out"
    # The CLIs: one line, exit 2 (the cases below raise the same ValueError in-process).
    assert "is not a Hugging Face model folder" in _one_line(
        import_hf(f"source={tmp_path}", f"output={out}")
    )
    source = _transformers_model("llama", tmp_path / "src")
    assert import_hf(f"source={source}", f"output={tmp_path / 'ours'}").returncode == 0
    assert "no complete checkpoint at step=5" in _one_line(
        export(f"checkpoint.dir={tmp_path / 'ours'}", f"output={out}", "step=5")
    )
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    config = json.loads((source / "config.json").read_text())
    bad = {
        "model_type='gpt2' is not supported": (gpt2, None),
        "attention_bias=true: our models have no linear biases": (
            source,
            {**config, "attention_bias": True},
        ),
        "quantization_config .*dequantize": (
            source,
            {**config, "quantization_config": {"quant_method": "fp8"}},
        ),
    }
    for message, (folder, content) in bad.items():
        if content is not None:
            (folder / "config.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            import_folder(ImportConfig(source=str(folder), output=str(out)))
    (source / "config.json").write_text(json.dumps(config))
    _bad_weights_are_one_line(source, config, tmp_path / "partial")
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        export_folder(ExportConfig(SourceConfig(str(tmp_path)), output=str(out)))
    words = [f"w{i} x{i * 7} y{i * 13}" for i in range(3000)]
    big = write_tokenizer(tmp_path / "big.json", 700, words)
    with pytest.raises(ValueError, match="has 7.. tokens, more than the model's vocab_size 512"):
        export_folder(
            ExportConfig(SourceConfig(str(tmp_path / "ours")), str(out), tokenizer=str(big))
        )
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
