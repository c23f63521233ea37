"""Per-task accounting: every document that enters a stage is kept or removed with a reason.

One `Ledger` object is shared by the steps of a pipeline (datatrove copies the pipeline per task
with deepcopy/pickle, which keeps shared references), so counts from the reader, the filters and
the final step add up in one place and are written once per task to `<work>/ledger/<rank>.json`.
The stage runner merges these files into `stats.json`.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from tqdm import tqdm


def reason_key(step: str, reason: str | None) -> str:
    """`<filter name>:<rule>` with a stable, file-name-safe spelling."""
    slug = re.sub(r"[^0-9A-Za-z_]+", "_", step).strip("_").lower()
    return f"{slug}:{reason or 'dropped'}"


class Ledger:
    """Counts of one task: documents in/kept/added, removed and rejected by reason."""

    def __init__(self, folder: str, max_samples: int = 20):
        self.folder = folder
        self.max_samples = max_samples
        self.reset()

    def reset(self) -> None:
        self.documents_in = 0
        self.documents_kept = 0
        self.added = 0
        self.bytes_in = 0
        self.removed: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, list[dict]] = defaultdict(list)
        self.start = time.perf_counter()

    def remove(self, reason: str, doc: Document) -> None:
        self.removed[reason] += 1
        if len(self.samples[reason]) < self.max_samples:
            self.samples[reason].append(
                {"id": doc.id, "text": doc.text[:2000], "metadata": doc.metadata}
            )

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def count(self, key: str, n: int = 1) -> None:
        """A stage-specific tally (e.g. PII replaced per kind): stats.json `counts`."""
        self.counts[key] += n

    def flush(self, rank: int) -> None:
        os.makedirs(self.folder, exist_ok=True)
        record = {
            "documents_in": self.documents_in,
            "documents_kept": self.documents_kept,
            "added": self.added,
            "bytes_in": self.bytes_in,
            "removed": dict(self.removed),
            "rejected": dict(self.rejected),
            "counts": dict(self.counts),
            "samples": self.samples,
            "elapsed_s": time.perf_counter() - self.start,
        }
        tmp = Path(self.folder) / f".{rank:05d}.json.tmp"
        tmp.write_text(json.dumps(record, ensure_ascii=False, default=str))
        os.replace(tmp, Path(self.folder) / f"{rank:05d}.json")


class LedgerExclusionWriter:
    """Duck-typed datatrove `exclusion_writer` that records removals in the ledger.

    datatrove filters (BaseFilter, ExactDedupFilter, MinhashDedupFilter) call
    `with writer: writer.write(doc, rank)` for each dropped document."""

    def __init__(self, ledger: Ledger, step: str, default_reason: str = "dropped"):
        self.ledger = ledger
        self.step = step
        self.default_reason = default_reason

    def __enter__(self) -> LedgerExclusionWriter:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __bool__(self) -> bool:
        return True

    def write(self, doc: Document, rank: int = 0, **kwargs) -> None:
        reason = doc.metadata.pop("filter_reason", None) or self.default_reason
        self.ledger.remove(reason_key(self.step, reason), doc)


class CountIn(PipelineStep):
    """Counts documents (and UTF-8 bytes) entering the stage; shows a progress bar."""

    name = "count in"
    type = "ACCOUNTING"

    def __init__(self, ledger: Ledger, stage: str, progress: bool = True):
        super().__init__()
        self.ledger = ledger
        self.stage = stage
        self.progress = progress

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.ledger.reset()
        with tqdm(desc=f"{self.stage}[{rank}]", unit="doc", disable=not self.progress) as bar:
            for doc in data:
                self.ledger.documents_in += 1
                self.ledger.bytes_in += len(doc.text.encode("utf-8", "surrogatepass"))
                bar.update()
                yield doc


class Finish(PipelineStep):
    """Last step: counts kept documents, logs throughput and writes the task's ledger."""

    name = "finish"
    type = "ACCOUNTING"

    def __init__(self, ledger: Ledger, stage: str):
        super().__init__()
        self.ledger = ledger
        self.stage = stage

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yielded = sum(1 for _ in data or ())
        self.ledger.documents_kept = yielded - self.ledger.added  # remix copies are 'added'
        led = self.ledger
        secs = max(time.perf_counter() - led.start, 1e-9)
        logger.info(
            f"[{self.stage}] task {rank}: {led.documents_in} docs in, {led.documents_kept} kept, "
            f"{sum(led.removed.values())} removed, {sum(led.rejected.values())} rejected; "
            f"{led.documents_in / secs:.0f} docs/s, {led.bytes_in / secs / 1e6:.2f} MB/s"
        )
        led.flush(rank)
        return
        yield  # a generator, like every step


def merge_ledgers(folder: str | Path, ranks: int) -> dict:
    """Sum the per-task ledgers of one stage into the stats.json fields."""
    total = {"documents_in": 0, "documents_kept": 0, "added": 0, "bytes_in": 0}
    removed: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    samples: dict[str, list] = defaultdict(list)
    elapsed = 0.0
    for rank in range(ranks):
        path = Path(folder) / f"{rank:05d}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        for k in total:
            total[k] += rec[k]
        removed.update(rec["removed"])
        rejected.update(rec["rejected"])
        counts.update(rec.get("counts", {}))
        for reason, docs in rec["samples"].items():
            samples[reason].extend(docs)
        elapsed = max(elapsed, rec["elapsed_s"])
    return total | {
        "removed": dict(sorted(removed.items())),
        "rejected": dict(sorted(rejected.items())),
        **({"counts": dict(sorted(counts.items()))} if counts else {}),
        "samples": samples,
        "task_elapsed_s": elapsed,
    }
