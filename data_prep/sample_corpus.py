"""Build a small bilingual (zh/en) corpus of real text from Debian packages, offline-friendly.

    python -m data_prep.sample_corpus OUT_DIR [--docs-per-domain 800] [--seed 0]

Downloads (once, cached under ~/.cache/deepseek-pretrain/debs) manpages-zh, fortunes-zh,
python3.11-doc and fortunes with `apt-get download`, unpacks them with `dpkg-deb -x`, strips roff,
ANSI and reST markup and writes one JSONL file per domain: zh_man.jsonl (Chinese man pages),
zh_poems.jsonl (Tang/Song poems and sayings), en_docs.jsonl (Python documentation sections),
en_fortunes.jsonl (English fortunes). Records: {"text", "id", "source"}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("manpages-zh", "fortunes-zh", "python3.11-doc", "fortunes")
CACHE = Path(os.environ.get("DEEPSEEK_PRETRAIN_CACHE", "~/.cache/deepseek-pretrain")).expanduser()
ZH_FORTUNES = ("tang300", "song100", "chinese")
GROUP = 4  # fortunes/poems per document, so a document is more than one line

_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")
_ROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ROFF_ESC = re.compile(r"\\(\(..|\*\(..|\*.|[&|^%])")
_REST_ROLE = re.compile(r":[\w:+-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_REST_LINK = re.compile(r"`([^`<]+?)(?:\s*<[^>]*>)?`_{1,2}")
_HEADING = re.compile(r"^([=\-~^\"'`#*+.:_])\1{3,}\s*$")


class CorpusError(RuntimeError):
    """The sample corpus cannot be built (no apt, download failed)."""


def fetch_packages(cache: Path = CACHE, packages: tuple[str, ...] = PACKAGES) -> Path:
    """Download and unpack `packages` once each; return the extraction root."""
    debs, root = cache / "debs", cache / "extract"
    if (root / ".complete").exists():  # caches from before per-package markers
        for name in PACKAGES:
            (root / f".extracted-{name}").touch()
    todo = [p for p in packages if not (root / f".extracted-{p}").exists()]
    if not todo:
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise CorpusError(
            "apt-get/dpkg-deb not found: the sample corpus is built from Debian packages "
            f"({', '.join(packages)}); run on Debian/Ubuntu or pass your own JSONL input"
        )
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in todo if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        res = subprocess.run(
            ["apt-get", "download", *missing], cwd=debs, capture_output=True, text=True
        )
        if res.returncode != 0:
            msg = res.stderr.strip().splitlines()[-1:] or ["unknown error"]
            raise CorpusError(
                f"apt-get download {' '.join(missing)} failed: {msg[0]} (try: apt-get update)"
            )
    root.mkdir(parents=True, exist_ok=True)
    for name in todo:
        for deb in sorted(debs.glob(f"{name}_*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        (root / f".extracted-{name}").touch()
    return root


LITERAL = "\x00"  # marks reST literal-block lines so unwrap() leaves them alone
_CJK_END = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]$")
_CJK_START = re.compile(r"^[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def unwrap(text: str) -> str:
    """Join hard-wrapped lines of a paragraph (same indentation; no space between CJK).

    Lines starting with LITERAL (code blocks, marked by strip_rest) are kept as they are."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        joinable = (
            prev.strip()
            and line.strip()
            and _indent(prev) == _indent(line)
            and not (prev + line).startswith(LITERAL)
            and LITERAL not in line
            and not line.lstrip().startswith(("-", "*", ">>>", "%", "|"))
        )
        if joinable:
            sep = "" if _CJK_END.search(prev) and _CJK_START.search(line.lstrip()) else " "
            out[-1] = prev.rstrip() + sep + line.strip()
        else:
            out.append(line)
    return "\n".join(out).replace(LITERAL, "")


def strip_roff(src: str) -> str:
    """Plain text of a man page: drop comments, macro definitions and font escapes."""
    out, in_def = [], False
    for line in src.splitlines():
        if in_def:
            in_def = line.strip() != ".."
            continue
        if line.startswith((".de ", ".de\t")):
            in_def = True
            continue
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')):
            continue
        if line.startswith((".", "'")):
            parts = line[1:].split(None, 1)
            macro = parts[0] if parts else ""
            if macro in ("SH", "SS", "PP", "LP", "P", "TP", "IP", "br", "sp", "TH"):
                out.append("")  # paragraph break: keeps unwrap() from joining across blocks
            if (
                macro in ("SH", "SS", "B", "I", "BI", "BR", "IR", "RB", "IP", "TH")
                and len(parts) > 1
            ):
                line = parts[1].replace('"', "")
                if macro in ("SH", "SS", "TH", "IP"):
                    out.extend([_ROFF_FONT.sub("", line).strip(), ""])
                    continue
            else:
                continue
        line = _ROFF_FONT.sub("", line).replace("\\-", "-").replace("\\e", "\\")
        out.append(_ROFF_ESC.sub("", line).strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def strip_rest(src: str) -> str:
    """Plain text of reST: drop directives/options/heading underlines, unwrap roles and literals.

    Lines of literal blocks (after a line ending in '::') are marked with LITERAL."""
    out, literal_indent = [], None
    for line in src.splitlines():
        s = line.strip()
        if literal_indent is not None and s and _indent(line) <= literal_indent:
            literal_indent = None
        if literal_indent is not None:
            out.append(LITERAL + line.rstrip() if s else "")
            continue
        if s.startswith(".. ") or (
            s.startswith(":") and s.count(":") >= 2 and not s.startswith(":mod:")
        ):
            continue
        if _HEADING.match(line):
            continue
        if s.endswith("::"):
            literal_indent = _indent(line)
        line = _REST_ROLE.sub(r"\1", line)
        line = _REST_LINK.sub(r"\1", line)
        line = line.replace("``", "").replace("**", "").replace("::", ":")
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def rest_sections(src: str) -> list[str]:
    """Split a reST file at section headings (a title line followed by an underline)."""
    lines, cuts = src.splitlines(), [0]
    for i in range(1, len(lines)):
        if _HEADING.match(lines[i]) and lines[i - 1].strip() and i - 1 > cuts[-1]:
            cuts.append(i - 1)
    cuts.append(len(lines))
    return ["\n".join(lines[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]


def split_fortunes(path: Path) -> list[str]:
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return [f.strip() for f in re.split(r"^%\s*$", text, flags=re.M) if f.strip()]


def grouped(items: list[str], n: int = GROUP) -> list[str]:
    return ["\n\n".join(items[i : i + n]) for i in range(0, len(items), n)]


def zh_man(root: Path) -> Iterator[tuple[str, str]]:
    for page in sorted((root / "usr/share/man/zh_CN").rglob("*.gz")):
        text = unwrap(strip_roff(gzip.open(page, "rt", encoding="utf-8", errors="replace").read()))
        if len(text) >= 200:
            yield f"zh_man/{page.name}", text


def zh_poems(root: Path) -> Iterator[tuple[str, str]]:
    for name in ZH_FORTUNES:
        for i, text in enumerate(grouped(split_fortunes(root / "usr/share/games/fortunes" / name))):
            yield f"zh_poems/{name}/{i}", text


def en_docs(root: Path) -> Iterator[tuple[str, str]]:
    for src in sorted((root / "usr/share/doc/python3.11/html/_sources").rglob("*.rst.txt")):
        for i, sec in enumerate(rest_sections(src.read_text(encoding="utf-8", errors="replace"))):
            text = unwrap(strip_rest(sec))
            if len(text) >= 300:
                yield f"en_docs/{src.name}/{i}", text


def en_fortunes(root: Path) -> Iterator[tuple[str, str]]:
    folder = root / "usr/share/games/fortunes"
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file() or path.name in ZH_FORTUNES:
            continue
        for i, text in enumerate(grouped(split_fortunes(path))):
            yield f"en_fortunes/{path.name}/{i}", text


DOMAINS = {"zh_man": zh_man, "zh_poems": zh_poems, "en_docs": en_docs, "en_fortunes": en_fortunes}


def build(
    out_dir: str | Path, docs_per_domain: int = 800, seed: int = 0, cache: Path = CACHE
) -> dict[str, int]:
    """Write `<domain>.jsonl` files (a seeded sample of up to docs_per_domain each); return
    counts."""
    root = fetch_packages(cache)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for domain, source in DOMAINS.items():
        docs = list(source(root))
        random.Random(seed).shuffle(docs)
        docs = sorted(docs[:docs_per_domain])
        with open(out / f"{domain}.jsonl", "w", encoding="utf-8") as f:
            for doc_id, text in docs:
                f.write(
                    json.dumps({"text": text, "id": doc_id, "source": domain}, ensure_ascii=False)
                    + "\n"
                )
        counts[domain] = len(docs)
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument(
        "--docs-per-domain", type=int, default=800, help="max documents per domain (default 800)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        counts = build(args.out_dir, args.docs_per_domain, args.seed)
    except CorpusError as e:
        raise SystemExit(f"sample_corpus: error: {e}") from None
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
