"""Training data: the shard manifest written by data_prep, and megatron-core blended GPT datasets.

`load_manifest(path)` reads and checks `manifest.json` (every shard's .bin/.idx exist and
match the manifest's token and document counts, weights sum to 1, vocabulary fits the model,
sequence length fits the rope limit) and fails with a `ManifestError` naming the file and field.
`build_datasets` then builds train/valid datasets with megatron-core's
`BlendedMegatronDatasetBuilder`, blending shards by the manifest weights; the sample order is a
deterministic function of the seed. megatron's prebuilt `helpers_cpp` extension is used as is
(`compile_helpers()` must not be called on a pip install). A manifest whose shards carry loss
masks (data_prep's chat_tokenize) gets SFT datasets instead (`trainer.sft_data`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config.data import DataConfig
from trainer.config.model import ModelConfig
from trainer.sft_data import build_sft_datasets, check_loss_masks

DTYPES = {"uint16": np.uint16, "int32": np.int32}
WEIGHT_TOLERANCE = 1e-6


class ManifestError(ValueError):
    """The manifest or its shards are missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Shard:
    """One tokenized shard listed in the manifest."""

    prefix: Path
    """Absolute path of the shard without .bin/.idx."""
    domain: str
    """Data domain (web, code, zh, ...)."""
    documents: int
    """Documents in the shard."""
    tokens: int
    """Tokens in the shard."""
    weight: float
    """Blend weight (fraction of training samples drawn from this shard)."""
    max_token_id: int | None = None
    """Largest token id in the shard as tokenize recorded it (None: scan the .bin to find it)."""
    loss_mask: Path | None = None
    """SFT shards (chat_tokenize): absolute prefix of the uint8 loss-mask dataset with the same
    documents (1 = a token the loss counts); None: pretraining text."""
    max_document_tokens: int | None = None
    """Longest document (SFT: conversation) in tokens, when recorded."""


@dataclass(frozen=True)
class Manifest:
    """A validated shard manifest."""

    path: Path
    """The manifest file."""
    tokenizer: Path
    """The tokenizer.json that produced the shards (absolute)."""
    vocab_size: int
    """Tokenizer vocabulary size."""
    eod_token_id: int
    """End-of-document token id."""
    dtype: str
    """Token dtype of the .bin files (uint16 or int32)."""
    shards: tuple[Shard, ...]
    """The shards, in manifest order."""
    sft: dict[str, Any] | None = None
    """chat_tokenize's `sft` section (chat template, its sequence length); None: pretraining."""

    @property
    def has_loss_masks(self) -> bool:
        """SFT data: the shards carry loss masks (trainer.sft_data builds the samples)."""
        return any(s.loss_mask is not None for s in self.shards)

    @property
    def blend(self) -> tuple[list[str], list[float]]:
        """megatron's blend argument: (prefixes, weights)."""
        return [str(s.prefix) for s in self.shards], [s.weight for s in self.shards]

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ManifestError(f"{where}: field '{key}' has the wrong type ({value!r})")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} not found (data.manifest must point at the tokenize stage's "
            f"manifest.json)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"manifest {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path}: top level must be a JSON object")
    return data


def _idx_counts(prefix: Path, where: str) -> tuple[int, int, np.dtype]:
    """(documents, tokens, dtype) recorded in a shard's .idx file."""
    from megatron.core.datasets.indexed_dataset import _IndexReader

    try:
        index = _IndexReader(str(prefix) + ".idx", multimodal=False)
    except (AssertionError, ValueError, OSError) as err:
        raise ManifestError(f"{where}: cannot read {prefix}.idx ({err})") from None
    documents = len(index.document_indices) - 1
    tokens = int(index.sequence_lengths.sum(dtype=np.int64))
    return documents, tokens, np.dtype(index.dtype)


def _check_shard(shard: Shard, dtype: str, where: str) -> None:
    for suffix in (".bin", ".idx"):
        if not Path(str(shard.prefix) + suffix).is_file():
            raise ManifestError(f"{where}: shard file {shard.prefix}{suffix} is missing")
    documents, tokens, idx_dtype = _idx_counts(shard.prefix, where)
    if idx_dtype != np.dtype(DTYPES[dtype]):
        raise ManifestError(
            f"{where}: {shard.prefix}.idx stores {idx_dtype}, manifest says {dtype}"
        )
    if documents != shard.documents:
        raise ManifestError(
            f"{where}: field 'documents' is {shard.documents} but {shard.prefix}.idx has "
            f"{documents} documents"
        )
    if tokens != shard.tokens:
        raise ManifestError(
            f"{where}: field 'tokens' is {shard.tokens} but {shard.prefix}.idx has {tokens} tokens"
        )
    bin_bytes = Path(str(shard.prefix) + ".bin").stat().st_size
    if bin_bytes != tokens * idx_dtype.itemsize:
        raise ManifestError(
            f"{where}: {shard.prefix}.bin has {bin_bytes} bytes, expected {tokens} tokens x "
            f"{idx_dtype.itemsize} bytes (truncated or from another run?)"
        )


def _parse_shard(entry: Any, root: Path, where: str) -> Shard:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: must be an object")
    weight = float(_field(entry, "weight", (int, float), where))
    if not math.isfinite(weight) or weight < 0:
        raise ManifestError(f"{where}: field 'weight' must be a finite number >= 0, got {weight}")
    return Shard(
        prefix=(root / _field(entry, "prefix", str, where)).resolve(),
        domain=_field(entry, "domain", str, where),
        documents=_field(entry, "documents", int, where),
        tokens=_field(entry, "tokens", int, where),
        weight=weight,
        max_token_id=_optional_int(entry, "max_token_id"),
        loss_mask=(root / _field(entry, "loss_mask", str, where)).resolve()
        if "loss_mask" in entry
        else None,
        max_document_tokens=_optional_int(entry, "max_document_tokens"),
    )


def _optional_int(entry: dict[str, Any], key: str) -> int | None:
    value = entry.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_model_fit(manifest: Manifest, model_cfg: ModelConfig | None, seq: int | None) -> None:
    where = f"manifest {manifest.path}"
    if model_cfg is not None and manifest.vocab_size > model_cfg.vocab_size:
        raise ManifestError(
            f"{where}: field 'vocab_size' is {manifest.vocab_size}, larger than the model's "
            f"vocab_size {model_cfg.vocab_size} (model={model_cfg.name}); raise model.vocab_size"
        )
    if model_cfg is not None and seq is not None and seq > model_cfg.max_position_embeddings:
        raise ManifestError(
            f"data.seq_length {seq} exceeds model.max_position_embeddings "
            f"{model_cfg.max_position_embeddings} (model={model_cfg.name})"
        )


def load_manifest(
    path: str | Path, model_cfg: ModelConfig | None = None, seq_length: int | None = None
) -> Manifest:
    """Read and validate a shard manifest; with `model_cfg`, also check it fits the model."""
    path = Path(path).resolve()
    data = _read_json(path)
    where = f"manifest {path}"
    version = _field(data, "format_version", int, where)
    if version != 1:
        raise ManifestError(f"{where}: unsupported format_version {version} (expected 1)")
    dtype = _field(data, "dtype", str, where)
    if dtype not in DTYPES:
        raise ManifestError(
            f"{where}: field 'dtype' must be one of {sorted(DTYPES)}, got {dtype!r}"
        )
    entries = _field(data, "shards", list, where)
    if not entries:
        raise ManifestError(f"{where}: field 'shards' is empty")
    shards = tuple(
        _parse_shard(e, path.parent, f"{where}: shards[{i}]") for i, e in enumerate(entries)
    )
    total = sum(s.weight for s in shards)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ManifestError(f"{where}: shard weights sum to {total:.8g}, expected 1")
    manifest = Manifest(
        path=path,
        tokenizer=(path.parent / _field(data, "tokenizer", str, where)).resolve(),
        vocab_size=_field(data, "vocab_size", int, where),
        eod_token_id=_field(data, "eod_token_id", int, where),
        dtype=dtype,
        shards=shards,
        sft=data.get("sft") if isinstance(data.get("sft"), dict) else None,
    )
    if not 0 <= manifest.eod_token_id < manifest.vocab_size:
        raise ManifestError(f"{where}: field 'eod_token_id' is outside [0, vocab_size)")
    _check_model_fit(manifest, model_cfg, seq_length)
    for i, shard in enumerate(shards):
        _check_shard(shard, dtype, f"{where}: shards[{i}]")
    for i, shard in enumerate(shards):
        check_token_ids(shard, dtype, manifest.vocab_size, f"{where}: shards[{i}]")
    check_loss_masks(manifest, seq_length)
    return manifest


def check_token_ids(shard: Shard, dtype: str, vocab_size: int, where: str) -> None:
    """Every token id of the shard must be < the tokenizer's vocab_size (else the embedding
    lookup fails with an IndexError naming no shard). O(1) with the `max_token_id` tokenize
    records; without it one numpy max over the memory-mapped .bin (~1 s per GB read)."""
    if shard.tokens == 0:
        return
    top = shard.max_token_id
    if top is None:
        tokens = np.memmap(str(shard.prefix) + ".bin", dtype=DTYPES[dtype], mode="r")
        top = int(tokens.max())
        del tokens
    if top >= vocab_size:
        raise ManifestError(
            f"{where}: shard {shard.prefix} holds token id {top}, outside the tokenizer's "
            f"vocabulary of size {vocab_size} (tokenized with another tokenizer?)"
        )


# ------------------------------------------------------------------------------------------
# Datasets


class ManifestTokenizer:
    """The tokenizer facts megatron's GPTDataset needs (it never tokenizes: data is
    pre-tokenized)."""

    def __init__(self, vocab_size: int, eod: int, path: str = "") -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        # Part of megatron's dataset cache key (hashed into the index file names).
        self.unique_identifiers = {"tokenizer": path, "vocab_size": vocab_size, "eod": eod}


def dataset_sizes(
    global_batch_size: int, train_steps: int, eval_steps: int, eval_interval: int
) -> list[int]:
    """Samples needed per split (train, valid, test), megatron's convention for validation:
    `eval_steps` batches every `eval_interval` steps and once at the end (0 = no validation)."""
    if min(global_batch_size, train_steps) < 1 or min(eval_steps, eval_interval) < 0:
        raise ValueError(
            "dataset sizes: global_batch_size and train steps must be positive, "
            "eval steps and eval_interval >= 0"
        )
    num_evals = train_steps // eval_interval + 1 if eval_interval else 0
    return [global_batch_size * train_steps, global_batch_size * eval_steps * num_evals, 0]


def gpt_dataset_config(data_cfg: DataConfig, manifest: Manifest) -> Any:
    """megatron-core GPTDatasetConfig for the manifest's blend."""
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    # megatron's index cache coordinates ranks through torch.distributed (rank 0 writes).
    cache = data_cfg.cache_dir if torch.distributed.is_initialized() else None
    return GPTDatasetConfig(
        random_seed=data_cfg.seed,
        sequence_length=data_cfg.seq_length,
        blend=manifest.blend,
        split=data_cfg.split,
        path_to_cache=cache,
        tokenizer=ManifestTokenizer(
            manifest.vocab_size, manifest.eod_token_id, str(manifest.tokenizer)
        ),
        reset_position_ids=data_cfg.reset_position_ids,
        reset_attention_mask=data_cfg.reset_attention_mask,
        eod_mask_loss=data_cfg.eod_mask_loss,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def check_splits_nonempty(manifest: Manifest, split: str) -> None:
    """Every shard must give each split with a nonzero share at least one document: megatron
    builds every such split (even one no step asks samples of) and its GPTDataset loops
    forever (`_get_num_epochs`) on a split with no tokens."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for name, bounds in zip(("train", "valid", "test"), matrix, strict=True):
        if bounds is None:
            continue
        for shard in manifest.shards:
            beg, end = (int(round(b * float(shard.documents))) for b in bounds)
            if end - beg < 1:
                raise ManifestError(
                    f"{manifest.path}: shard {shard.prefix} ({shard.documents} documents) gets no "
                    f"{name} documents under data.split={split}; give that split a larger share "
                    f"or add data"
                )


def build_datasets(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    global_batch_size: int,
    train_steps: int,
    eval_steps: int,
    eval_interval: int,
    is_built_on_rank: Any = None,
) -> tuple[Any, Any]:
    """(train, valid) blended GPT datasets for `data_cfg.manifest` (valid may be None)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset

    if data_cfg.manifest is None:
        raise ValueError("data.manifest is not set: pass data.manifest=PATH/manifest.json")
    manifest = load_manifest(data_cfg.manifest, model_cfg, data_cfg.seq_length)
    sizes = dataset_sizes(global_batch_size, train_steps, eval_steps, eval_interval)
    if manifest.has_loss_masks:
        return build_sft_datasets(data_cfg, manifest, sizes)
    check_splits_nonempty(manifest, data_cfg.split)
    builder = BlendedMegatronDatasetBuilder(
        GPTDataset,
        sizes,
        is_built_on_rank or (lambda: True),
        gpt_dataset_config(data_cfg, manifest),
    )
    train, valid, _test = builder.build()
    if train is not None:
        log_data_mix(data_mix(train, manifest, sizes[0]))
    return train, valid


def data_mix(train: Any, manifest: Manifest, num_samples: int) -> dict[str, dict[str, float]]:
    """Per domain: the share of the first `num_samples` training samples (fixed-length, so also
    of training tokens) drawn from it, and its target (the manifest's blend weight)."""
    target: dict[str, float] = {}
    for shard in manifest.shards:
        target[shard.domain] = target.get(shard.domain, 0.0) + shard.weight
    index = getattr(train, "dataset_index", None)
    if index is None:  # one shard: megatron builds no BlendedDataset
        counts = np.ones(1)
        shard_ids = [i for i, s in enumerate(manifest.shards) if s.weight > 0][:1]
    else:
        counts = np.bincount(
            np.asarray(index[: max(num_samples, 1)]), minlength=len(manifest.shards)
        )
        shard_ids = list(range(len(counts)))
    realised = dict.fromkeys(target, 0.0)
    for i in shard_ids:
        realised[manifest.shards[i].domain] += float(counts[i]) / float(counts.sum())
    return {d: {"realised": realised[d], "target": target[d]} for d in sorted(target)}


def log_data_mix(mix: dict[str, dict[str, float]]) -> None:
    """`[trainer] data mix: en 0.500 (target 0.500) zh 0.500 (target 0.500)` on rank 0."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    parts = [f"{d} {m['realised']:.3f} (target {m['target']:.3f})" for d, m in mix.items()]
    print(f"[trainer] data mix: {' '.join(parts)}", flush=True)
