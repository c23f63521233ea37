"""PII redaction (stage `pii`): personal data in the text becomes a placeholder.

Kinds, in the order they are applied (longer digit runs first, so a phone pattern never eats
part of an ID or card number):
- `id_number`: PRC resident ID numbers (18 characters: area, a real birth date, sequence, and
  the ISO 7064 MOD 11-2 check character) -> `[ID_NUMBER]`;
- `card`: 13-19 digit card numbers (optionally grouped by spaces or dashes) that start like a
  payment card (3-6) and pass the Luhn check -> `[CARD]`;
- `email` -> `[EMAIL]`;
- `phone`: mainland China mobile numbers (1[3-9]x, optional +86/0086, spaces or dashes between
  the 3-4-4 groups), numbers written with a leading `+` country code, and North American
  `(555) 123-4567` / `555-123-4567` -> `[PHONE]`;
- `ip`: IPv4 and IPv6 addresses that are globally routable (private, loopback, documentation and
  link-local addresses stay: they identify nobody and fill every networking manual) -> `[IP]`.
Validation (checksums, dates, `ipaddress`) keeps version strings, hashes and ordinary numbers.
datatrove's PIIFormatter covers e-mails and IPv4 only, so the patterns live here.
Counts per kind (replacements) and documents redacted go to stats.json `counts`.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_prep.accounting import Ledger
from data_prep.config import PII_KINDS as KINDS

PLACEHOLDER = {kind: f"[{kind.upper()}]" for kind in KINDS}

# Digit runs glued to a decimal point, an ASCII word or a dash are parts of something else
# (0.1000000000000000055511151231257827..., 827.5950000000001, v13812345678); glued to Chinese
# text they are not (客服13812345678): the boundaries are ASCII classes, not \w.
_B, _E = r"(?<![0-9A-Za-z_.+-])", r"(?![0-9A-Za-z_-]|\.\d)"
_ID = re.compile(
    _B + r"[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]" + _E
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CARD = re.compile(
    _B + r"(?:[3-6]\d{3}(?:([ -])\d{4}\1\d{4}\1\d{4}|\d{9,15})|3[47]\d{2}([ -])\d{6}\2\d{5})" + _E
)
_EMAIL = re.compile(
    r"(?<![0-9A-Za-z_.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    r"\.[A-Za-z]{2,}(?![0-9A-Za-z_-])"
)
_CN_MOBILE = r"1(?:3\d|4[5-9]|5[0-35-9]|6[2567]|7[0-8]|8\d|9[0-35-9])"  # allocated prefixes
_PHONE = re.compile(
    _B
    + r"(?:(?:\+|00)86[ -]?)?"
    + _CN_MOBILE
    + r"(?:[ -]?\d{4}){2}"
    + _E
    + r"|(?<![0-9A-Za-z_+])\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d{2,4}(?:[ -]\d{2,4}){1,3}"
    + _E
    + r"|(?<![0-9A-Za-z_(])\(\d{3}\) ?\d{3}-\d{4}"
    + _E
    + r"|"
    + _B
    + r"\d{3}-\d{3}-\d{4}"
    + _E
)
_IPV4 = re.compile(r"(?<![0-9A-Za-z_.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9A-Za-z_]|\.\d)")
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?=[0-9A-Fa-f]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:]{3,39}(?![0-9A-Za-z_:])"
)
_VERSION_BEFORE = re.compile(r"version|release|版本|\bv$", re.I)
_REPEATS = re.compile(r"(\d)\1{5}")


def valid_id_number(text: str) -> bool:
    """A PRC resident ID: a real date of birth and the MOD 11-2 check character."""
    digits = text.upper()
    try:
        datetime.date(int(digits[6:10]), int(digits[10:12]), int(digits[12:14]))
    except ValueError:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:17], _ID_WEIGHTS, strict=True))
    return "10X98765432"[total % 11] == digits[17]


def luhn(number: str) -> bool:
    """The Luhn check of a card number; written without groups, a run of six equal digits
    makes it a number in a calculation instead (827.5950000000001)."""
    if number.isdigit() and _REPEATS.search(number):
        return False
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def _public_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_global
    except ValueError:
        return False


def _ipv6(text: str) -> bool:
    """A global IPv6 address; eight 2-digit groups are a MAC address (f9:2a:c2:77:29:f9:5c:00)."""
    groups = text.split(":")
    return not (len(groups) >= 6 and all(len(g) == 2 for g in groups)) and _public_ip(text)


_RULES: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("id_number", _ID, lambda m: valid_id_number(m.group(0))),
    ("card", _CARD, lambda m: luhn(m.group(0))),
    ("email", _EMAIL, None),
    ("phone", _PHONE, None),
    ("ip", _IPV4, lambda m: _public_ip(m.group(0)) and not _after_version(m)),
    ("ip", _IPV6, lambda m: _ipv6(m.group(0))),
]


def _after_version(match: re.Match) -> bool:
    """`version 3.1.13.1`, `版本 1.3.0.0`, `v1.2.3.4`: a version number, not an address (the
    words within 40 characters before it)."""
    before = match.string[max(0, match.start() - 40) : match.start()]
    return bool(_VERSION_BEFORE.search(before))


def redact(text: str, kinds: tuple[str, ...] = KINDS) -> tuple[str, dict[str, int]]:
    """`text` with every PII item of `kinds` replaced, and the number replaced per kind."""
    counts: dict[str, int] = {}
    for kind, pattern, valid in _RULES:
        if kind not in kinds:
            continue

        def replace(match: re.Match, kind: str = kind, valid=valid) -> str:
            if valid is not None and not valid(match):
                return match.group(0)
            counts[kind] = counts.get(kind, 0) + 1
            return PLACEHOLDER[kind]

        text = pattern.sub(replace, text)
    return text, counts


class RedactPII(PipelineStep):
    """Formatter: replaces PII in every document (none is removed); counts per kind."""

    name = "pii"
    type = "FORMATTER"

    def __init__(self, kinds: tuple[str, ...], ledger: Ledger):
        super().__init__()
        self.kinds = tuple(kinds)
        self.ledger = ledger

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            doc.text, counts = redact(doc.text, self.kinds)
            if counts:
                self.ledger.count("pii:documents_redacted")
                for kind, n in counts.items():
                    self.ledger.count(f"pii:{kind}", n)
                doc.metadata["pii"] = counts
            yield doc
