"""Export a trainer checkpoint (any layout) as a Hugging Face model folder.

    python -m trainer.export checkpoint.dir=runs/x/checkpoints output=runs/x/hf [step=N]
        [dtype=bfloat16] [tokenizer=PATH/manifest.json]

The checkpoint records its model config, so no `model=` is needed. Its files hold global,
layout-independent tensors whatever layout wrote them (TP, PP, VPP, EP, DP with the distributed
optimizer); trainer.hf.stream reads them one layer at a time (peak memory: one layer set plus
one output shard; the model is built on the meta device only for its checkpoint map),
trainer.hf.convert renames them to the transformers family that expresses the model, and they
are written shard by shard into a temporary folder that is renamed to `output` at the end. The
tokenizer comes from the data manifest the run trained on (or `tokenizer=`). Prints one JSON
line; bad input is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from appconf.cli import QUIET_HYDRA
from trainer.cli import run_one_process
from trainer.config.model import ModelConfig
from trainer.config.parallel import ParallelConfig


@dataclass
class SourceConfig:
    dir: str = MISSING
    """checkpoint.dir of the training run (or one iter_N folder)."""


@dataclass
class ExportConfig:
    checkpoint: SourceConfig = field(default_factory=SourceConfig)
    output: str = MISSING
    """Hugging Face folder to write (an existing one is renamed to OUTPUT.previous-<time>)."""
    step: int | None = None
    """Checkpoint step to export (None: the newest complete one)."""
    tokenizer: str | None = None
    """manifest.json or tokenizer.json (None: the manifest the run trained on)."""
    dtype: str = "float32"
    """float32 or bfloat16 (DeepSeek's releases are bf16; bf16 halves the folder)."""
    shard_size_mb: int = 2048
    """Largest safetensors file."""


ConfigStore.instance().store(name="export_schema", node=ExportConfig)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def find_checkpoint(root: str, step: int | None):
    """The checkpoint to export (ValueError naming what exists when it is not there)."""
    from trainer.checkpoint_store import checkpoint_at, complete_checkpoints, iteration_dir

    if not Path(root).is_dir():
        raise ValueError(f"checkpoint.dir={root} is not a folder")
    if step is None:
        try:
            return checkpoint_at(root)
        except ValueError:
            raise ValueError(f"checkpoint.dir={root} holds no complete checkpoint") from None
    complete = {c.step: c for c in complete_checkpoints(root)}
    if step not in complete:
        have = sorted(complete) or "none"
        raise ValueError(
            f"checkpoint.dir={root} has no complete checkpoint at step={step} "
            f"({iteration_dir(root, step).name}); complete steps: {have}"
        )
    return complete[step]


def saved_model(ckpt: Any) -> ModelConfig:
    fields = ckpt.marker.get("model")
    if not isinstance(fields, dict):
        raise ValueError(
            f"checkpoint {ckpt.path} records no model config (saved by an old trainer)"
        )
    try:
        return ModelConfig(**fields)
    except TypeError as err:
        raise ValueError(f"checkpoint {ckpt.path}: model config not understood ({err})") from None


def load_single(ckpt: Any, model_cfg: ModelConfig) -> torch.nn.Module:
    """One full GPTModel (fp32, this process alone) holding `ckpt`'s weights."""
    from trainer.checkpoint import load_checkpoint
    from trainer.config.parallel import ParallelConfig
    from trainer.model import build_model, build_transformer_config
    from trainer.parallel import initialize_parallel

    parallel = ParallelConfig()
    initialize_parallel(model_cfg, parallel, seed=0)
    model = build_model(model_cfg, build_transformer_config(model_cfg, parallel))
    load_checkpoint(ckpt, [SimpleNamespace(module=model)], None, dataclasses.asdict(model_cfg))
    return model.eval()


@dataclass(frozen=True)
class TokenizerFiles:
    path: Path
    """tokenizer.json"""
    eod_id: int
    eod: str
    chat_template: str | None = None
    """The chat template SFT data was rendered with (the manifest's `sft` section)."""


def tokenizer_files(spec: str | None, ckpt: Any, vocab_size: int) -> TokenizerFiles:
    """tokenizer.json and its end-of-document token, from a manifest or a tokenizer.json."""
    from tokenizers import Tokenizer

    spec = spec or ckpt.marker.get("data_manifest")
    if not spec:
        raise ValueError(f"checkpoint {ckpt.path} records no data manifest: pass tokenizer=PATH")
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"tokenizer={spec}: no such file")
    eod_id, chat_template = None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"tokenizer={spec}: not a JSON manifest or tokenizer ({err})") from None
    if isinstance(data, dict) and "shards" in data:  # a data manifest: its tokenizer and EOD
        eod_id = data.get("eod_token_id")
        path = path.parent / data.get("tokenizer", "tokenizer.json")
        chat_template = (data.get("sft") or {}).get("chat_template")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception
        raise ValueError(f"tokenizer {path} cannot be read ({err})") from None
    if tok.get_vocab_size() > vocab_size:
        raise ValueError(
            f"tokenizer {path} has {tok.get_vocab_size()} tokens, more than the model's "
            f"vocab_size {vocab_size}"
        )
    if eod_id is None:
        specials = [t for t in tok.get_added_tokens_decoder().values() if t.special]
        if not specials:
            raise ValueError(f"tokenizer {path} has no special (end-of-document) token")
        eod_id = tok.token_to_id(specials[0].content)
    return TokenizerFiles(path, int(eod_id), tok.id_to_token(int(eod_id)), chat_template)


def hf_tensors(model_cfg: ModelConfig, reader: Any):
    """(HF name, tensor) for every weight, read layer by layer; MTP laid out as in DeepSeek's
    release (each MTP layer repeats the embedding and the output head)."""
    from trainer.hf.convert import to_hf

    for name, tensor in reader.model_tensors():
        yield from to_hf(model_cfg, name, tensor)
    if model_cfg.mtp_num_layers:
        head = "output_layer.weight" if "output_layer.weight" in reader else None
        shared = reader.read([k for k in ("embedding.word_embeddings.weight", head) if k])
        embedding = shared["embedding.word_embeddings.weight"]
        for k in range(model_cfg.mtp_num_layers):
            layer = f"model.layers.{model_cfg.num_layers + k}"
            yield f"{layer}.embed_tokens.weight", embedding
            yield f"{layer}.shared_head.head.weight", shared.get(head, embedding)


def _reader(ckpt: Any, model_cfg: ModelConfig) -> Any:
    """The checkpoint's tensors, one layer at a time (CheckpointDamaged when its files do not
    have the sizes its marker records, or cannot be read)."""
    from trainer.checkpoint_store import verify_files
    from trainer.hf.stream import CheckpointReader
    from trainer.parallel import initialize_parallel

    verify_files(ckpt)
    initialize_parallel(model_cfg, ParallelConfig(), seed=0)  # one rank: megatron's loader needs it
    return CheckpointReader(ckpt.path, model_cfg)


def write_folder(
    output: str | Path,
    model_cfg: ModelConfig,
    tensors: Iterable[tuple[str, torch.Tensor]],
    tok: TokenizerFiles,
    dtype: str = "float32",
    shard_size_mb: int = 2048,
) -> tuple[Path, int]:
    """Write HF-named `tensors` (cast to `dtype`), config, generation config and tokenizer as
    the folder `output`; returns it and the bytes of its weights."""
    from trainer.hf.convert import hf_config
    from trainer.hf.folder import FolderWriter

    special = {"bos_token_id": tok.eod_id, "eos_token_id": tok.eod_id, "pad_token_id": tok.eod_id}
    with FolderWriter(output, shard_size_mb * 1024**2) as writer:
        for name, tensor in tensors:
            keep_fp32 = name.endswith("e_score_correction_bias")  # routing stays fp32 in HF
            writer.add(name, tensor if keep_fp32 else tensor.to(DTYPES[dtype]))
        config = {**hf_config(model_cfg, special), "torch_dtype": dtype}
        generation = {**special, "do_sample": True, "temperature": 0.6, "top_p": 0.95}
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tok.eod,
            "eos_token": tok.eod,
            "pad_token": tok.eod,
            "add_bos_token": False,
            "add_eos_token": False,
            "model_max_length": model_cfg.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
        }
        if tok.chat_template:  # trained on chat_tokenize data: generate in the same format
            tokenizer_config["chat_template"] = tok.chat_template
        files = {
            "tokenizer.json": tok.path,
            "tokenizer_config.json": tokenizer_config,
            "special_tokens_map.json": {
                k: tok.eod for k in ("bos_token", "eos_token", "pad_token")
            },
        }
        return writer.finish(config, generation, files), writer.total_bytes


def export(cfg: ExportConfig) -> dict[str, Any]:
    """Write the HF folder; returns what the CLI prints."""
    from trainer.hf.convert import family

    start = time.perf_counter()
    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype={cfg.dtype}: expected one of {sorted(DTYPES)}")
    ckpt = find_checkpoint(cfg.checkpoint.dir, cfg.step)
    model_cfg = saved_model(ckpt)
    kind = family(model_cfg)  # UnsupportedModel before any heavy work
    tok = tokenizer_files(cfg.tokenizer, ckpt, model_cfg.vocab_size)
    reader = _reader(ckpt, model_cfg)
    out, size = write_folder(
        cfg.output, model_cfg, hf_tensors(model_cfg, reader), tok, cfg.dtype, cfg.shard_size_mb
    )
    return {
        "output": str(out),
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "model_type": kind,
        "bytes": size,
        "dtype": cfg.dtype,
        "seconds": round(time.perf_counter() - start, 2),
    }


@hydra.main(config_path=None, config_name="export_schema", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(json.dumps(run_one_process(cfg, export)))


if __name__ == "__main__":
    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    main()
