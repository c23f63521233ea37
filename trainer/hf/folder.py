"""A Hugging Face model folder on disk: written atomically, shard by shard; read lazily.

`FolderWriter` collects tensors into `model-0000k-of-0000n.safetensors` files of at most
`shard_bytes` each (a shard is written as soon as it is full, so at most one shard is held),
then writes the index, config.json, generation_config.json and the tokenizer, and renames the
temporary folder into place: a failed export leaves nothing half-written under `output`.
`FolderWeights` reads one tensor at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

INDEX = "model.safetensors.index.json"


class FolderWriter:
    """`with FolderWriter(output) as w: w.add(name, tensor) ...; w.finish(config, ...)`."""

    def __init__(self, output: str | Path, shard_bytes: int = 2 * 1024**3):
        self.output = Path(output)
        self.tmp = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        self.shard_bytes = shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def __enter__(self) -> FolderWriter:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, *rest: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._files):
            raise ValueError(f"tensor {name} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.shard_bytes:
            self._flush()
        tensor = tensor.detach().contiguous()  # a view of the model's weight: no copy held
        if tensor.data_ptr() in {t.data_ptr() for t in self._pending.values()}:
            tensor = tensor.clone()  # safetensors refuses two names for one memory
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        name = f"part-{len(self._files):05d}.safetensors"
        write_safetensors(self.tmp / name, self._pending)
        self._files.append((name, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(
        self, config: dict[str, Any], generation: dict[str, Any], extra: dict[str, Any]
    ) -> Path:
        """Write index + JSON files (`extra`: file name -> dict, or a Path to copy), rename."""
        if self._pending:
            self._flush()
        count, weight_map = len(self._files), {}
        for i, (name, names) in enumerate(self._files):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(self.tmp / name, self.tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(self.tmp / INDEX, index)
        _write_json(self.tmp / "config.json", config)
        _write_json(self.tmp / "generation_config.json", generation)
        for file_name, content in extra.items():
            if isinstance(content, Path):
                shutil.copyfile(content, self.tmp / file_name)
            else:
                _write_json(self.tmp / file_name, content)
        if self.output.exists():  # an earlier export: kept beside, never deleted
            stamp = time.strftime("%Y%m%d-%H%M%S")
            os.replace(self.output, self.output.with_name(f"{self.output.name}.previous-{stamp}"))
        os.replace(self.tmp, self.output)
        return self.output


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file, tensor by tensor. Written here rather than with
    `safetensors.torch.save_file`, which first serialises the whole file into one bytes object
    (a second copy of the shard in memory); the format is an 8-byte header size, a JSON header
    of dtype/shape/offsets, then the raw little-endian tensor bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            f.write(t.contiguous().view(torch.uint8).numpy().data if t.numel() else b"")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


class FolderWeights:
    """Tensors of an HF folder by name (model.safetensors or a sharded index).

    Read with plain file reads into a fresh tensor, one tensor per call. Not `safe_open`: it
    maps each whole file, and every page a read touches stays in the process's memory until the
    file is closed, so reading a model through it costs one more copy of the model."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.folder / "model.safetensors").is_file():
            weight_map = dict.fromkeys(
                _header(self.folder / "model.safetensors")[0], "model.safetensors"
            )
        else:
            raise ValueError(f"{self.folder} holds no model.safetensors or {INDEX}")
        self.weight_map: dict[str, str] = weight_map
        self._headers: dict[str, tuple[dict[str, Any], int]] = {}

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _entry(self, name: str) -> tuple[Path, dict[str, Any], int]:
        file_name = self.weight_map.get(name)
        if file_name is None:
            raise KeyError(f"{self.folder}: no tensor {name}")
        if file_name not in self._headers:
            self._headers[file_name] = _header(self.folder / file_name)
        header, data_start = self._headers[file_name]
        if name not in header:
            raise KeyError(f"{self.folder / file_name}: no tensor {name} (the index names it)")
        return self.folder / file_name, header[name], data_start

    def meta(self, name: str) -> torch.Tensor:
        """A `meta` tensor of `name`'s shape and dtype (read from the header, no data)."""
        _, entry, _ = self._entry(name)
        return torch.empty(entry["shape"], dtype=_TORCH[entry["dtype"]], device="meta")

    def take(self, name: str) -> torch.Tensor:
        path, entry, data_start = self._entry(name)
        begin, end = entry["data_offsets"]
        out = torch.empty(entry["shape"], dtype=_TORCH[entry["dtype"]])
        if end > begin:
            with open(path, "rb") as f:
                f.seek(data_start + begin)
                if f.readinto(out.view(-1).view(torch.uint8).numpy()) != end - begin:
                    raise ValueError(f"{path}: truncated file (tensor {name})")
        return out


_TORCH = {code: dtype for dtype, code in _DTYPES.items()}


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset of the data) of a safetensors file."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    header.pop("__metadata__", None)
    return header, 8 + size
