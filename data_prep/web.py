"""Web input: WARC records -> main text (stage `warc`), and URL block lists (stage `url_filter`).

`warc`: every response record of the input WARC files (plain or gzip, read with warcio) is one
document in. Kept: HTTP 2xx HTML pages whose main text trafilatura extracts (datatrove's
Trafilatura settings and its per-document timeout sandbox). Removed, with the reason and a
sample: `warc:redirect` (3xx), `warc:http_error` (4xx/5xx), `warc:not_html` (images, PDFs, ...),
`warc:undecodable`, `extract:empty`, `extract:timeout`, `extract:error`. Other record types
(warcinfo, request, metadata) are no documents; they are tallied in stats `counts`. A broken
record (truncated gzip member, short block, digest mismatch, bad header) is a reject naming the
file and record number, and
the rest of that file is unreadable (warcio cannot resynchronise), which the reject says.
Charset: the HTTP header's, else the page's <meta>, else charset-normalizer's guess; GB2312
and GBK are decoded as GB18030 (their superset: pages labelled GB2312 routinely use GBK).
datatrove's WarcReader does the same parsing but drops such records without a trace and
decodes only UTF-8 or cchardet's guess (not installable here), hence this reader.

`url_filter`: drops documents whose `metadata.url` host is on a domain list (the domain or any
subdomain) or whose URL contains an entry of a substring list (case-insensitive); reason
`url_filter:<list file stem>`. Lists are text files, one entry per line, `#` comments.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.readers.base import BaseDiskReader

from data_prep.accounting import Ledger

HTML_TYPES = ("text/html", "application/xhtml+xml")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "gb_2312-80": "gb18030"}


def _charset(content_type: str | None, payload: bytes) -> str | None:
    """The declared charset: the HTTP header's, else the page's <meta> (None: undeclared)."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'").lower()
    found = _META_CHARSET.search(payload[:4096])
    return found.group(1).decode("ascii", "replace").lower() if found else None


def decode_html(payload: bytes, content_type: str | None) -> tuple[str, str] | None:
    """(text, charset) of an HTML payload, or None when no charset decodes it."""
    declared = _charset(content_type, payload)
    tried = []
    if declared:
        tried.append(_SUPERSETS.get(declared, declared))
    tried.append("utf-8")
    for charset in dict.fromkeys(tried):
        try:
            return payload.decode(charset), charset
        except (UnicodeDecodeError, LookupError):
            continue
    from charset_normalizer import from_bytes

    best = from_bytes(payload).best()
    if best is None or best.encoding is None:
        return None
    charset = _SUPERSETS.get(best.encoding.lower(), best.encoding.lower())
    try:
        return payload.decode(charset), charset
    except (UnicodeDecodeError, LookupError):
        return None


def classify_response(status: int | None, content_type: str | None) -> str | None:
    """Why a response record is no page to extract (None: it is one)."""
    if status is not None and 300 <= status < 400:
        return "redirect"
    if status is not None and status >= 400:
        return "http_error"
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in HTML_TYPES:
        return "not_html"
    return None


class WarcRecords(BaseDiskReader):
    """Every response record as a Document: the decoded HTML as text, or the reason it is no
    page in `metadata["warc_skip"]` (the next step removes it with that reason)."""

    name = "warc records"
    type = "READER"

    def __init__(self, paths_file: str, ledger: Ledger, rejects_dir: str):
        super().__init__("/", paths_file=paths_file)
        self.ledger = ledger
        self.rejects_dir = rejects_dir
        self._rank = 0

    def run(
        self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1
    ) -> DocumentsPipeline:
        self._rank = rank
        yield from super().run(data, rank, world_size)

    def read_file(self, filepath: str) -> Iterator[Document]:
        from warcio.archiveiterator import ArchiveIterator
        from warcio.exceptions import ArchiveLoadFailed

        number = 0
        with self.data_folder.open(filepath, "rb") as fh:
            records = ArchiveIterator(fh, check_digests="raise")
            while True:
                number += 1
                try:
                    record = next(records, None)
                    if record is None:
                        return
                    doc = self._document(record, filepath, number)
                except (ArchiveLoadFailed, EOFError, OSError, ValueError) as err:
                    self._reject(filepath, number, err)
                    return
                if doc is not None:
                    yield doc

    def _document(self, record, filepath: str, number: int) -> Document | None:
        if record.rec_type not in ("response", "conversion"):
            self.ledger.count(f"warc:{record.rec_type}_records")
            return None
        headers = record.rec_headers
        http = record.http_headers
        status = int(http.get_statuscode()) if http is not None and http.get_statuscode() else None
        content_type = http.get_header("Content-Type") if http is not None else None
        if record.rec_type == "conversion":
            content_type = content_type or headers.get_header("Content-Type")
        payload = record.content_stream().read()
        if getattr(record.raw_stream, "limit", 0) > 0:  # the gzip member ended early
            raise EOFError(f"record ends {record.raw_stream.limit} bytes before its Content-Length")
        meta = {
            "url": headers.get_header("WARC-Target-URI"),
            "date": headers.get_header("WARC-Date"),
            "http_status": status,
            "source": f"/{filepath.lstrip('/')}#{number}",
        }
        doc_id = headers.get_header("WARC-Record-ID") or f"{filepath}#{number}"
        skip = classify_response(status, content_type)
        if skip is None:
            decoded = decode_html(payload, content_type)
            if decoded is None:
                skip = "undecodable"
            else:
                text, meta["charset"] = decoded
                return Document(text=text, id=doc_id, metadata=meta)
        preview = payload[:2000].decode("utf-8", "replace") if skip != "not_html" else ""
        meta.update(warc_skip=skip, content_type=content_type)
        return Document(
            text=preview or f"<{content_type}: {len(payload)} bytes>", id=doc_id, metadata=meta
        )

    def _reject(self, filepath: str, number: int, err: Exception) -> None:
        self.ledger.reject("broken_warc_record")
        os.makedirs(self.rejects_dir, exist_ok=True)
        rec = {
            "file": "/" + filepath.lstrip("/"),
            "record": number,
            "reason": "broken_warc_record",
            "detail": f"{type(err).__name__}: {err}"[:300] + "; the rest of the file is unreadable",
        }
        with open(os.path.join(self.rejects_dir, f"{self._rank:05d}.jsonl"), "a") as fh:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


class ExtractMainText(PipelineStep):
    """Removes the records WarcRecords marked, extracts the main text of the pages."""

    name = "extract"
    type = "EXTRACTOR"

    def __init__(self, ledger: Ledger, timeout_s: float, favour_precision: bool):
        super().__init__()
        self.ledger = ledger
        self.timeout_s, self.favour_precision = timeout_s, favour_precision

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.pipeline.extractors import Trafilatura
        from datatrove.pipeline.extractors.base import ExtractorSandbox

        extractor = Trafilatura(favour_precision=self.favour_precision, timeout=self.timeout_s)
        with ExtractorSandbox(timeout=self.timeout_s, warmup_text="") as sandbox:
            for doc in data:
                skip = doc.metadata.pop("warc_skip", None)
                if skip:
                    self.ledger.remove(f"warc:{skip}", doc)
                    continue
                try:
                    text = sandbox.process_document(doc.text, extractor.extract)
                except TimeoutError:
                    self.ledger.remove("extract:timeout", doc)
                    continue
                except Exception:  # noqa: BLE001 - trafilatura's failures on odd pages vary
                    self.ledger.remove("extract:error", doc)
                    continue
                if not text or not text.strip():
                    self.ledger.remove("extract:empty", doc)
                    continue
                doc.text = text
                yield doc


def read_list(path: str) -> list[str]:
    """Entries of a block-list file (one per line, `#` comments, blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ValueError(f"url_filter: cannot read list {path}: {err.strerror}") from None
    return [ln.split("#", 1)[0].strip().lower() for ln in lines if ln.split("#", 1)[0].strip()]


class UrlFilter(PipelineStep):
    """Drops documents whose URL is on a block list (reason `url_filter:<list>`)."""

    name = "url_filter"
    type = "FILTER"

    def __init__(self, domain_lists: list[str], substring_lists: list[str], ledger: Ledger):
        super().__init__()
        self.domains = {Path(p).stem: set(read_list(p)) for p in domain_lists}
        self.substrings = {Path(p).stem: read_list(p) for p in substring_lists}
        self.ledger = ledger

    def blocked_by(self, url: str) -> str | None:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
        parts = host.split(".")
        suffixes = {".".join(parts[i:]) for i in range(len(parts))}
        for name, domains in self.domains.items():
            if suffixes & domains:
                return name
        low = url.lower()
        for name, subs in self.substrings.items():
            if any(s in low for s in subs):
                return name
        return None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            url = doc.metadata.get("url")
            if not url:
                self.ledger.count("url_filter:no_url")
                yield doc
                continue
            name = self.blocked_by(str(url))
            if name is not None:
                self.ledger.remove(f"url_filter:{name}", doc)
                continue
            yield doc
