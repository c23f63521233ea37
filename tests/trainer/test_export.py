"""trainer.export: checkpoints of every family and layout become Hugging Face folders whose
logits equal ours under transformers' own implementation (fp32, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_corpus import write_tiny_manifest

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


def write_tokenizer(path: Path, size: int = 400, texts: list[str] | None = None) -> Path:
    """A byte-level BPE with `<|endoftext|>` at id 0 (the tiny corpus' EOD); en and zh merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = texts or ["the quick brown fox jumps over the lazy dog 你好世界 中文文本"] * 50
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_corpus")
    write_tokenizer(root / "tokenizer.json")
    return write_tiny_manifest(root)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)  # set by this process' own single-rank group (our_logits)
    return env


def train(manifest: Path, ckpt: Path, *extra: str, nproc: int = 1) -> None:
    args = [
        f"data.manifest={manifest}",
        "data.seq_length=64",
        "train.steps=1",
        "train.global_batch_size=4",
        "train.micro_batch_size=1",
        "train.eval_interval=0",
        f"checkpoint.dir={ckpt}",
        "checkpoint.save_interval=1",
        *extra,
    ]
    launch = [sys.executable, "-m", "trainer"]
    if nproc > 1:
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "trainer",
        ]
    done = subprocess.run([*launch, *args], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def export(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.export", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)


def exported(ckpt: Path, out: Path) -> dict:
    done = export(f"checkpoint.dir={ckpt}", f"output={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def our_logits(ckpt: Path, tokens: torch.Tensor) -> torch.Tensor:
    from trainer.export import find_checkpoint, load_single, saved_model
    from trainer.model import lm_logits
    from trainer.parallel import destroy_parallel

    found = find_checkpoint(str(ckpt), None)
    env = dict(os.environ)
    try:
        return lm_logits(load_single(found, saved_model(found)), tokens)
    finally:
        destroy_parallel()
        os.environ.clear()  # the single-rank group set MASTER_PORT & co: later subprocesses of
        os.environ.update(env)  # this test session must not inherit a port in TIME_WAIT


def hf_logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


TOKENS = torch.randint(1, 400, (2, 48), generator=torch.Generator().manual_seed(0))
FAMILIES = {
    "tiny_v3": "deepseek_v3",  # MLA with q compression, sigmoid + expert bias, shared, MTP
    "tiny_v2_lite": "deepseek_v2",  # no q compression, softmax routing
    "tiny_dense": "llama",  # GQA
    "tiny_moe": "qwen2_moe",  # MHA + DeepSeekMoE
}


@pytest.mark.parametrize("model", list(FAMILIES))
def test_export_matches_transformers(corpus: Path, tmp_path: Path, model: str) -> None:
    ckpt, out = tmp_path / "ck", tmp_path / "hf"
    train(corpus, ckpt, f"model={model}")
    result = exported(ckpt, out)
    config = json.loads((out / "config.json").read_text())
    assert result["model_type"] == config["model_type"] == FAMILIES[model]
    diff = (our_logits(ckpt, TOKENS) - hf_logits(out, TOKENS)).abs().max().item()
    assert diff <= TOL, f"{model}: max |logit diff| {diff}"
    names = set(hf_tensors(out))
    if model in ("tiny_v3", "tiny_v2_lite"):
        assert "model.layers.1.mlp.experts.7.gate_proj.weight" in names  # per-expert names
    if model == "tiny_v3":  # MTP as DeepSeek's release lays it out, after the 4 layers
        for part in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head"):
            assert f"model.layers.4.{part}.weight" in names
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == names
    if model == "tiny_v3":  # MTP survives ours -> HF -> ours -> HF bit for bit
        cmd = [
            sys.executable,
            "-m",
            "trainer.import_hf",
            f"source={out}",
            f"output={tmp_path / 'in'}",
        ]
        done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True)
        assert done.returncode == 0 and "mtp_num_layers: 1" in done.stdout, done.stderr[-2000:]
        again = export(
            f"checkpoint.dir={tmp_path / 'in'}",
            f"output={tmp_path / 'again'}",
            f"tokenizer={out / 'tokenizer.json'}",
        )
        assert again.returncode == 0, again.stderr[-2000:]
        first, second = hf_tensors(out), hf_tensors(tmp_path / "again")
        assert sorted(first) == sorted(second)
        assert all(torch.equal(first[n], second[n]) for n in first)


def test_yarn_export_matches_beyond_the_original_length(corpus: Path, tmp_path: Path) -> None:
    ckpt, out = tmp_path / "ck", tmp_path / "hf"
    yarn = [
        "model.rope_type=yarn",
        "model.rotary_scaling_factor=4",
        "model.original_max_position_embeddings=16",
        "model.rope_mscale=1.0",
        "model.rope_mscale_all_dim=0.8",
    ]
    train(corpus, ckpt, "model=tiny_v3", *yarn)
    exported(ckpt, out)
    assert json.loads((out / "config.json").read_text())["rope_scaling"]["factor"] == 4
    tokens = TOKENS[:, :48]  # 48 > original_max_position_embeddings=16
    diff = (our_logits(ckpt, tokens) - hf_logits(out, tokens)).abs().max().item()
    assert diff <= TOL, f"yarn: max |logit diff| {diff}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "pp2", "ep2", "pp2_vpp2", "dp2"])
def test_export_of_every_layout_equals_the_single_process_export(
    corpus: Path, tmp_path_factory: pytest.TempPathFactory, layout: str
) -> None:
    """A checkpoint saved under another layout exports to the same tensors as the single-process
    checkpoint it started from, and transformers' logits equal ours."""
    # The layout run starts from the single-process weights (pipeline stages initialise from
    # other RNG states) and takes one step that barely moves them: a warmup this long keeps
    # the step at ~3e-9 (Adam moves each weight by ~lr) and the expert-bias update is off, so
    # the exports must agree to 1e-8 while a wrong reshard or mapping is off by ~1e-2.
    still = ["model=tiny_v3", "optim.warmup_steps=1000000", "model.router_bias_update_rate=0"]
    single = tmp_path_factory.getbasetemp() / "single_layout_reference"
    if not (single / "hf" / "config.json").exists():
        train(corpus, single / "ck", *still)
        exported(single / "ck", single / "hf")
    tmp = tmp_path_factory.mktemp(layout)
    init = f"checkpoint.init_from={single / 'ck'}"
    distributed_optimizer = ["parallel.use_distributed_optimizer=true"] if layout == "dp2" else []
    train(corpus, tmp / "ck", *still, init, f"parallel={layout}", *distributed_optimizer, nproc=2)
    exported(tmp / "ck", tmp / "hf")
    ref, got = hf_tensors(single / "hf"), hf_tensors(tmp / "hf")
    assert sorted(got) == sorted(ref)
    for name, tensor in ref.items():
        assert got[name].shape == tensor.shape, name
        diff = (got[name] - tensor).abs().max().item()
        assert diff <= 1e-8, f"{layout}: {name} differs by {diff}"
    diff = (our_logits(tmp / "ck", TOKENS) - hf_logits(tmp / "hf", TOKENS)).abs().max().item()
    assert diff <= TOL
    # held-out bits per byte (trainer.bpb) is the same number whichever layout saved the weights
    from tests.trainer.test_bpb import bpb_of, write_holdout

    holdout = single / "remix"
    if not holdout.exists():
        write_holdout(holdout)
    cached = single / "bpb.json"  # the reference's score, computed once for all layouts
    if not cached.exists():
        cached.write_text(json.dumps(bpb_of(single / "ck", holdout)))
    ref_bpb, got_bpb = json.loads(cached.read_text()), bpb_of(tmp / "ck", holdout)
    for domain, value in ref_bpb.items():
        assert abs(got_bpb[domain] - value) <= 1e-6 * value, (layout, domain, got_bpb, ref_bpb)
