"""Real WARC files for the web stages, built from HTML pages Debian documentation packages
ship (python3.11-doc in English, debian-faq-zh-cn in Chinese): responses with HTTP headers, one
Chinese page re-encoded as GB18030 and labelled gb2312 in the header only, one labelled in its
<meta> only, images (not HTML), a redirect, a 404, request and warcinfo records, and a second
file whose last record is cut in half."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from data_prep.sample_corpus import fetch_packages

PACKAGES = ("python3.11-doc", "debian-faq-zh-cn")
EN_PAGES = ("library/functions.html", "library/json.html", "tutorial/classes.html")
ZH_PAGES = ("contributing.zh-cn.html", "software.zh-cn.html", "support.zh-cn.html")


@dataclass
class WebCorpus:
    folder: Path
    urls: dict[str, str] = field(default_factory=dict)
    """name -> URL of each HTML page kept (en/<page>, zh/<page>, zh/gb18030, zh/meta_gbk)."""
    responses: int = 0
    requests: int = 0
    files: int = 0
    images: int = 0
    broken_file: str = ""
    broken_record: int = 0


def _response(
    writer: WARCWriter,
    url: str,
    body: bytes,
    status: str,
    content_type: str,
    extra: list[tuple[str, str]] = (),
) -> None:
    headers = StatusAndHeaders(
        status, [("Content-Type", content_type), *extra], protocol="HTTP/1.1"
    )
    writer.write_record(
        writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
    )


def _request(writer: WARCWriter, url: str) -> None:
    headers = StatusAndHeaders(
        f"GET {url} HTTP/1.1", [("User-Agent", "test")], is_http_request=True
    )
    writer.write_record(writer.create_warc_record(url, "request", http_headers=headers))


def build_web_corpus(folder: Path) -> WebCorpus:
    root = fetch_packages(packages=PACKAGES)
    en = root / "usr/share/doc/python3.11/html"
    zh = root / "usr/share/doc/debian/FAQ/zh-cn"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = WebCorpus(folder)
    with open(folder / "crawl-0.warc.gz", "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(w.create_warcinfo_record("crawl-0.warc.gz", {"software": "tests"}))
        for page in EN_PAGES:
            url = f"https://docs.python.org/3.11/{page}"
            _request(w, url)
            _response(w, url, (en / page).read_bytes(), "200 OK", "text/html; charset=utf-8")
            corpus.urls[f"en/{page}"] = url
        for page in ZH_PAGES:
            url = f"https://www.debian.org/doc/manuals/debian-faq/{page}"
            _response(w, url, (zh / page).read_bytes(), "200 OK", "text/html")  # utf-8 <meta>
            corpus.urls[f"zh/{page}"] = url
        # GB18030 bytes, the label only in the header (the page's own <meta> says utf-8: drop it)
        text = (zh / "choosing.zh-cn.html").read_text(encoding="utf-8")
        gb = text.replace('charset="UTF-8"', "").replace("charset=UTF-8", "").encode("gb18030")
        corpus.urls["zh/gb18030"] = "http://mirror.example.cn/faq/choosing.html"
        _response(w, corpus.urls["zh/gb18030"], gb, "200 OK", "text/html; charset=gb2312")
        # GBK bytes labelled in <meta> only
        text = (zh / "kernel.zh-cn.html").read_text(encoding="utf-8")
        meta = text.replace('charset="UTF-8"', 'charset="gbk"').replace(
            "charset=UTF-8", "charset=gbk"
        )
        corpus.urls["zh/meta_gbk"] = "http://mirror.example.cn/faq/kernel.html"
        _response(
            w,
            corpus.urls["zh/meta_gbk"],
            meta.replace("\xa0", " ").encode("gbk"),
            "200 OK",
            "text/html",
        )
        for img in sorted((zh / "images").glob("*.png"))[:4]:
            _response(
                w,
                f"https://www.debian.org/images/{img.name}",
                img.read_bytes(),
                "200 OK",
                "image/png",
            )
            corpus.images += 1
        _response(
            w,
            "http://docs.python.org/",
            b"<html><body>Moved</body></html>",
            "301 Moved Permanently",
            "text/html",
            [("Location", "https://docs.python.org/3/")],
        )
        _response(
            w,
            "https://docs.python.org/missing.html",
            b"<html><body><h1>Not Found</h1></body></html>",
            "404 Not Found",
            "text/html",
        )
    corpus.requests = len(EN_PAGES)
    corpus.responses = len(corpus.urls) + corpus.images + 2
    # a second file: two good pages, then a record cut in half
    broken = folder / "crawl-1.warc.gz"
    with open(broken, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for page in ("library/os.path.html", "library/re.html"):
            url = f"https://docs.python.org/3.11/{page}"
            _response(w, url, (en / page).read_bytes(), "200 OK", "text/html; charset=utf-8")
            corpus.urls[f"en/{page}"] = url
        corpus.responses += 2
        start = fh.tell()
        _response(
            w,
            "https://docs.python.org/3.11/library/sys.html",
            (en / "library/sys.html").read_bytes(),
            "200 OK",
            "text/html",
        )
        end = fh.tell()
    data = broken.read_bytes()
    broken.write_bytes(data[: start + (end - start) // 2])
    corpus.broken_file, corpus.broken_record = str(broken), 3
    corpus.files = 2
    return corpus
