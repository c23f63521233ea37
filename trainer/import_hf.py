"""Import a Hugging Face model folder (llama, deepseek_v2, deepseek_v3) as a trainer checkpoint.

    python -m trainer.import_hf source=path/to/hf_folder output=runs/imported [name=my_model]

Writes `output/model/<name>.yaml` (our model config derived from config.json, also printed) and
a weights-only checkpoint `output/iter_0000000` that a run of any layout starts from:

    python -m trainer hydra.searchpath=[file://runs/imported] model=my_model \\
        checkpoint.init_from=runs/imported ...

`checkpoint.init_from=hf:DIR` does both steps itself (into checkpoint.dir/hf_import, reused
while DIR is unchanged). Tensors are read, converted and written one at a time (peak memory is
the largest tensor and its sources, not the model). Bad input
(not an HF folder, unsupported model_type or field, a missing tensor, a wrong shape) is one
line, exit 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from appconf.cli import QUIET_HYDRA
from trainer.cli import run_one_process

SOURCE_MARK = "hf_source.json"


@dataclass
class ImportConfig:
    source: str = MISSING
    """Hugging Face model folder (config.json + safetensors)."""
    output: str = MISSING
    """Folder for model/<name>.yaml and the checkpoint."""
    name: str | None = None
    """Model name (default: the source folder's name)."""


ConfigStore.instance().store(name="import_schema", node=ImportConfig)


def read_config(source: Path) -> dict[str, Any]:
    path = source / "config.json"
    if not path.is_file():
        raise ValueError(f"source={source} is not a Hugging Face model folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def source_fingerprint(source: Path) -> str:
    """Changes when config.json or any weight file of `source` changes (size + mtime)."""
    parts = []
    for f in sorted(source.glob("*.json")) + sorted(source.glob("*.safetensors")):
        stat = f.stat()
        parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def model_yaml(fields: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(fields))


def converted(model_cfg: Any, source: Path, entries: dict[str, Any]):
    """`tensor_of(name)`: the full megatron tensor `name` read and converted from the HF folder.

    Every name is first converted on the `meta` device (shapes from the safetensors headers, no
    data), so a missing tensor or a wrong shape is a ValueError before anything is written."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from trainer.hf.convert import from_hf
    from trainer.hf.folder import FolderWeights

    weights = FolderWeights(source)

    def convert(name: str, take) -> torch.Tensor:
        try:
            return from_hf(model_cfg, name, take)
        except KeyError as err:
            raise ValueError(f"{source}: no tensor for {name} ({err.args[0]})") from None

    for name, entry in entries.items():
        if isinstance(entry, ShardedObject):
            continue
        shape, need = tuple(convert(name, weights.meta).shape), tuple(entry.data.shape)
        if shape != need:
            raise ValueError(
                f"{source}: {name} has shape {list(shape)}, the model from config.json "
                f"needs {list(need)}"
            )
    return lambda name: convert(name, weights.take)


def _has_mtp(source: Path, num_layers: int) -> bool:
    from trainer.hf.folder import FolderWeights

    return f"model.layers.{num_layers}.enorm.weight" in FolderWeights(source).weight_map


def import_folder(cfg: ImportConfig) -> dict[str, Any]:
    """Write model/<name>.yaml and the weights-only checkpoint; returns what the CLI prints."""
    from trainer.checkpoint import save_weights
    from trainer.config.model import ModelConfig
    from trainer.config.parallel import ParallelConfig
    from trainer.hf.convert import model_fields
    from trainer.hf.stream import model_entries, write_weights
    from trainer.parallel import initialize_parallel

    source, output = Path(cfg.source), Path(cfg.output)
    name = cfg.name or source.name
    fields = model_fields(read_config(source), name)
    if fields.get("mtp_num_layers") and not _has_mtp(source, fields["num_layers"]):
        fields["mtp_num_layers"] = 0  # config.json names MTP layers the folder does not hold

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in fields.items() if k in known})
    parallel = ParallelConfig()
    initialize_parallel(model_cfg, parallel, seed=0)
    tensor_of = converted(model_cfg, source, model_entries(model_cfg))
    identity = {
        "lineage": f"hf-{source_fingerprint(source)}",
        "model": fields,
        "source": str(source.absolute()),
    }
    path = save_weights(
        output, identity, lambda folder, extra: write_weights(folder, model_cfg, tensor_of, extra)
    )
    (output / "model").mkdir(exist_ok=True)  # written once the checkpoint is complete
    (output / "model" / f"{name}.yaml").write_text(model_yaml(fields))
    (output / SOURCE_MARK).write_text(
        json.dumps({"source": str(source.absolute()), "fingerprint": source_fingerprint(source)})
    )
    return {
        "checkpoint": str(path),
        "model_yaml": str(output / "model" / f"{name}.yaml"),
        "model": fields,
    }


def is_current(output: Path, source: Path) -> bool:
    """Whether `output` already holds the import of `source` as it is now."""
    try:
        mark = json.loads((output / SOURCE_MARK).read_text())
    except (OSError, ValueError):
        return False
    return mark.get("fingerprint") == source_fingerprint(source)


@hydra.main(config_path=None, config_name="import_schema", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = run_one_process(cfg, import_folder)
    print(model_yaml(result.pop("model")), end="")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.argv[1:] = [*sys.argv[1:], *QUIET_HYDRA]
    main()
