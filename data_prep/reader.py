"""Input resolution and the tolerant JSONL / JSONL.gz / Parquet reader every stage starts with.

Bad records never crash a stage and are never dropped silently: each goes to
`rejects/<rank>.jsonl` as {file, line, reason} and is counted in the task's ledger.
"""

from __future__ import annotations

import functools
import glob as globlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader

from data_prep.accounting import Ledger
from data_prep.config import ReadConfig
from data_prep.errors import InputError

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
WARC_SUFFIXES = (".warc", ".warc.gz", ".arc", ".arc.gz")
"""Input of the `warc` stage (every other stage reads SUFFIXES)."""


def _is_data_file(path: str, suffixes: tuple[str, ...] = SUFFIXES) -> bool:
    return path.endswith(suffixes) and not os.path.basename(path).startswith(".")


def _folder_files(
    folder: Path, pattern: str | None, suffixes: tuple[str, ...] = SUFFIXES
) -> list[str]:
    """Data files under a folder; a stage output folder contributes only its top-level docs."""
    if pattern:
        return sorted(str(p) for p in folder.glob(pattern) if p.is_file())
    if (folder / "stats.json").exists() or (folder / ".work").exists():
        return sorted(str(p) for p in folder.glob("*.jsonl.gz"))
    return sorted(
        str(p)
        for p in folder.rglob("*")
        if p.is_file() and _is_data_file(str(p), suffixes) and ".work" not in p.parts
    )


def resolve_inputs(
    spec: str, pattern: str | None = None, suffixes: tuple[str, ...] = SUFFIXES
) -> list[str]:
    """Absolute paths of the input files named by a file, a folder or a glob.

    Raises InputError (one line) when the path does not exist or holds no data files."""
    if not spec:
        raise InputError("input is empty: pass input=FILE|FOLDER|GLOB")
    path = Path(spec).expanduser()
    if path.is_file():
        files = [str(path.resolve())]
    elif path.is_dir():
        files = _folder_files(path.resolve(), pattern, suffixes)
    elif globlib.has_magic(spec):
        files = sorted(
            os.path.abspath(p) for p in globlib.glob(spec, recursive=True) if os.path.isfile(p)
        )
    else:
        raise InputError(f"input path does not exist: {spec}")
    if not files and path.is_dir() and (path / "stats.json").exists():
        raise InputError(
            f"input is a stage output with no documents left (see {path / 'stats.json'})"
        )
    if not files:
        raise InputError(f"input has no {'/'.join(suffixes[:4])} files: {spec}")
    return files


@functools.lru_cache(maxsize=1024)
def _stem(filepath: str) -> str:
    return os.path.basename(filepath).split(".")[0]


def write_paths_file(files: list[str], dest: Path) -> str:
    """Write the file list (relative to '/') that the reader shards over its tasks."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(f.lstrip("/") + "\n" for f in files))
    return str(dest)


def gzip_lines(raw, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """Lines of a (multi-member) gzip stream, yielded as soon as they are complete.

    A truncated or corrupt stream raises EOFError / zlib.error only after every complete line
    before the damage was yielded (gzip.GzipFile loses the lines it had buffered)."""
    dec, in_member, buf = zlib.decompressobj(16 + zlib.MAX_WBITS), False, b""
    while chunk := raw.read(chunk_size):
        while chunk:
            buf += dec.decompress(chunk)
            in_member, chunk = True, b""
            if dec.eof:  # member finished; the rest belongs to the next member
                chunk, in_member = dec.unused_data, False
                dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        *lines, buf = buf.split(b"\n")
        yield from lines
    if in_member:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")
    if buf:
        yield buf


class RecordReader(BaseDiskReader):
    """Reads JSONL(.gz)/Parquet records into Documents, rejecting bad ones with a reason."""

    name = "Records"

    def __init__(self, paths_file: str, cfg: ReadConfig, ledger: Ledger, rejects_dir: str):
        super().__init__("/", paths_file=paths_file, text_key=cfg.text_field, id_key=cfg.id_field)
        self.cfg = cfg
        self.ledger = ledger
        self.rejects_dir = rejects_dir
        self._rejects = None
        self._rank = 0

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        self._rank = rank
        try:
            yield from super().run(data, rank, world_size)
        finally:
            if self._rejects:
                self._rejects.close()
                self._rejects = None

    def _reject(self, filepath: str, line: int, reason: str, detail: str = "") -> None:
        self.ledger.reject(reason)
        if self._rejects is None:
            os.makedirs(self.rejects_dir, exist_ok=True)
            self._rejects = open(os.path.join(self.rejects_dir, f"{self._rank:05d}.jsonl"), "a")
        rec = {
            "file": "/" + filepath.lstrip("/"),
            "line": line,
            "reason": reason,
            "detail": detail[:200],
        }
        self._rejects.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def read_file(self, filepath: str) -> Iterator[Document]:
        if filepath.endswith(".parquet"):
            yield from self._read_parquet(filepath)
        else:
            yield from self._read_jsonl(filepath)

    def _read_jsonl(self, filepath: str) -> Iterator[Document]:
        lineno = 0
        with self.data_folder.open(filepath, "rb") as raw:
            lines = gzip_lines(raw) if filepath.endswith(".gz") else raw
            try:
                for lineno, line in enumerate(lines, 1):  # noqa: B007 - lineno used below
                    if line.strip():
                        doc = self._parse_line(filepath, lineno, line)
                        if doc is not None:
                            yield doc
            except (EOFError, zlib.error) as e:
                self._reject(filepath, lineno + 1, "truncated_gzip", str(e))

    def _parse_line(self, filepath: str, lineno: int, line: bytes) -> Document | None:
        if len(line) > self.cfg.max_doc_bytes:
            self._reject(filepath, lineno, "doc_too_large", f"{len(line)} bytes")
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            self._reject(filepath, lineno, "invalid_utf8", str(e))
            return None
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            self._reject(filepath, lineno, "bad_json", str(e))
            return None
        if not isinstance(record, dict):
            self._reject(filepath, lineno, "bad_json", f"not an object: {type(record).__name__}")
            return None
        return self._to_document(record, filepath, lineno)

    def _to_document(self, record: dict, filepath: str, lineno: int) -> Document | None:
        cfg = self.cfg
        if cfg.text_field not in record:
            self._reject(filepath, lineno, "missing_text", f"no {cfg.text_field!r} field")
            return None
        text = record.pop(cfg.text_field)
        if not isinstance(text, str):
            self._reject(filepath, lineno, "non_string_text", type(text).__name__)
            return None
        if not text.strip():
            self._reject(filepath, lineno, "empty_text")
            return None
        if len(text) > cfg.max_doc_bytes:  # parquet rows are not size-checked as raw lines
            self._reject(filepath, lineno, "doc_too_large", f"{len(text)} chars")
            return None
        stem = _stem(filepath)
        doc_id = record.pop(cfg.id_field, None)
        meta = record.pop("metadata", None)
        metadata = dict(meta) if isinstance(meta, dict) else {}
        keys = cfg.metadata_fields if cfg.metadata_fields is not None else list(record)
        metadata.update({k: record[k] for k in keys if k in record})
        metadata["domain"] = cfg.domain or metadata.get("domain") or stem
        return Document(
            text=text,
            id=str(doc_id) if doc_id is not None else f"{stem}/{lineno}",
            metadata=metadata,
        )

    def _read_parquet(self, filepath: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        row = 0
        try:
            with self.data_folder.open(filepath, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=1000):
                    for record in batch.to_pylist():
                        row += 1
                        doc = self._to_document(record, filepath, row)
                        if doc is not None:
                            yield doc
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid subclasses ValueError
            self._reject(filepath, row + 1, "bad_parquet", str(e))
