"""FastMinhashSignature against datatrove's MinhashDedupSignature: same arguments, same values,
an unbiased similarity estimate on repetitive text (datatrove's own tests are vendored in
test_datatrove_minhash.py)."""

from __future__ import annotations

import inspect
import random
from math import floor
from pathlib import Path

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import load_word_tokenizer

from data_prep.dedup import FastMinhashSignature, simplify, text_shingles

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. Aliquam euismod vel ante vitae "
    "rhoncus. Curabitur eu lectus et magna maximus facilisis eu non magna. Maecenas sed velit "
    "vitae est ornare placerat. Vestibulum quis consectetur nunc, a feugiat lorem. Cras in ipsum "
    "fringilla, vestibulum urna sit amet, viverra tortor. Suspendisse potenti. Ut feugiat nibh ex."
)
TRICKY = [
    "",
    "one",
    "two words",
    "I cannot go, don't ask; we'll see. It's 10km (6.2mi) away -- e.g. at 5pm on 2024-01-31!",
    "Café naïve Ångström façade résumé coöperate Zürich São Paulo ñandú \u0301x",
    "tabs\tand\nnewlines\r\n  and   runs of    spaces\u00a0nbsp\u2003em",
    "def f(x):\n    return x**2 + 1  # comment\nclass A(B): pass\nfoo_bar.baz[0] = {'k': v}",
    ".TH LS 1\n.SH NAME\nls \\- list directory contents\n.TP\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR",
    "http://example.org/a?b=c&d=e user@example.com #hashtag @handle :) ;-) U.S.A. Mr. Dr.",
    "Le garçon d'aujourd'hui n'a pas mangé l'œuf; c'est-à-dire qu'il l'a jeté.",
    "Die Straße ist groß; wir gehen um 8 Uhr zum Bahnhof. Größenverhältnisse!",
]


def _word(rng: random.Random, vocab: list[str]) -> str:
    return rng.choice(vocab)


def repetitive_doc(rng: random.Random, vocab: list[str], sentences: int = 40) -> str:
    """Templated text: a few sentence templates with slots, reused over and over."""
    templates = [
        "The {0} option sets the {1} of the {2}.",
        "If {0} is given, {1} {2} the {3} before it {4}.",
        "{0} {1} {2} {3}, {0} {1} {4}.",
        "See also {0}, {1} and {2}.",
    ]
    out = []
    for _ in range(sentences):
        t = rng.choice(templates)
        out.append(t.format(*(_word(rng, vocab) for _ in range(5))))
    return " ".join(out)


def _sim(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ba, bb in zip(a, b, strict=True) for x, y in zip(ba, bb, strict=True)]
    return sum(x == y for x, y in pairs) / len(pairs)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.ravel().tolist()), set(b.ravel().tolist())
    return len(sa & sb) / len(sa | sb)


def test_accepts_every_keyword_of_datatrove_with_the_same_defaults():
    ours = inspect.signature(FastMinhashSignature.__init__).parameters
    theirs = inspect.signature(MinhashDedupSignature.__init__).parameters
    for name, p in theirs.items():
        assert name in ours, name
        assert ours[name].default == p.default, name
    # same positional order as datatrove's, so positional calls mean the same too
    assert list(ours)[: len(theirs)] == list(theirs)


def test_keywords_are_honoured(tmp_path: Path):
    cfg = MinhashConfig(n_grams=3, num_buckets=4, hashes_per_bucket=5, seed=7)
    step = FastMinhashSignature(
        output_folder=str(tmp_path), config=cfg, language="fr", skip_existing_sigs=True
    )
    ref = MinhashDedupSignature(str(tmp_path / "ref"), config=cfg, language="fr")
    assert step.skip_existing_sigs and step.language == "fr" and step.config is cfg
    assert step.num_hashes == 20
    text = TRICKY[9]
    assert step.get_signature(step.get_shingles(text)) == ref.get_signature(ref.get_shingles(text))
    assert FastMinhashSignature(str(tmp_path)).config == MinhashConfig()


@pytest.mark.parametrize(
    "hash_config",
    [HashConfig(), HashConfig(precision=32), HashConfig(hash_fc="sha1")],
    ids=str,
)
@pytest.mark.parametrize("language", ["en", "fr", "de"])
def test_same_signatures_as_datatrove(tmp_path: Path, hash_config: HashConfig, language: str):
    cfg = MinhashConfig(hash_config=hash_config)
    ours = FastMinhashSignature(str(tmp_path / "a"), cfg, language)
    ref = MinhashDedupSignature(str(tmp_path / "b"), cfg, language)
    rng = random.Random(0)
    texts = TRICKY + [LOREM, LOREM[::-1]]
    texts += [repetitive_doc(rng, LOREM.split(), 10) for _ in range(5)]
    for text in texts:
        theirs = ref.get_shingles(text)
        mine = ours.get_shingles(text)
        if theirs.size == 0:  # fewer than n_grams words: datatrove has no shingle, we have one
            assert mine.size <= 1
            continue
        assert np.array_equal(np.unique(theirs), mine.ravel()), text
        assert ours.get_signature(mine) == ref.get_signature(theirs), text


def test_simplify_equals_datatrove():
    from datatrove.utils.text import simplify_text

    for cfg in (TextNormConfig(), TextNormConfig(norm_unicode_diacritics=False, lowercase=False)):
        for text in TRICKY:
            assert simplify(text, cfg) == simplify_text(text, cfg)


def test_custom_word_tokenizer_is_used(tmp_path: Path):
    tok = load_word_tokenizer("en")
    ours = FastMinhashSignature(str(tmp_path), language=tok)
    assert ours.get_shingles(LOREM).size == text_shingles(LOREM, 5, 5, language=tok).size


@pytest.mark.parametrize("hash_config", [HashConfig(), HashConfig(precision=32)], ids=str)
def test_get_signature_matches_datatrove_including_tiny_residues(
    tmp_path: Path, hash_config: HashConfig
):
    cfg = MinhashConfig(hash_config=hash_config)
    ours = FastMinhashSignature(str(tmp_path / "a"), cfg)
    ref = MinhashDedupSignature(str(tmp_path / "b"), config=cfg)
    a, b = ours.parameters
    col = next(i for i in range(a.shape[1]) if int(a[0, i]) % 2)
    # x * a + b == 0 (mod 2^64) for this column: the residue 0 path
    x0 = (-int(b[0, col]) * pow(int(a[0, col]), -1, 1 << 64)) % (1 << 64)
    rng = np.random.default_rng(0)
    for n in (1, 7, 300, 1000):
        sh = rng.integers(0, 2**63, size=(n, 1), dtype=np.uint64) * np.uint64(2)
        sh[0, 0] = x0
        if hash_config.precision == 32:
            sh &= np.uint64(0xFFFFFFFF)
        assert ours.get_signature(sh) == ref.get_signature(sh)


def test_skip_existing_sigs_resumes_without_reading(tmp_path: Path):
    docs = [Document(text=f"{LOREM} number {i}", id=str(i)) for i in range(20)]
    FastMinhashSignature(str(tmp_path))(docs)
    files = sorted(tmp_path.rglob("*.minhash.sig"))
    before = {p: p.read_bytes() for p in files}

    def must_not_read():
        raise AssertionError("the documents were read again")
        yield

    step = FastMinhashSignature(str(tmp_path), skip_existing_sigs=True)
    assert step.check_can_skip_sig_writing(0) == (True, 20)
    step.run(must_not_read(), rank=0)
    assert {p: p.read_bytes() for p in files} == before
    # without the flag the files are rewritten from the documents
    assert FastMinhashSignature(str(tmp_path)).check_can_skip_sig_writing(0) == (False, None)
    files[0].write_bytes(before[files[0]][:-3])  # an incomplete file is not skipped
    assert step.check_can_skip_sig_writing(0) == (False, None)


def test_estimate_is_unbiased_on_repetitive_text(tmp_path: Path):
    """Mean (estimate - true Jaccard) over many pairs of templated/repetitive documents."""
    step = FastMinhashSignature(str(tmp_path))
    rng = random.Random(17)
    vocab = LOREM.lower().replace(",", "").replace(".", "").split()[:25]
    errors = []
    for _ in range(240):
        doc = repetitive_doc(rng, vocab, rng.randint(30, 80))
        x = rng.uniform(0.2, 0.9)
        end = floor(len(doc) * x)
        if rng.random() < 0.5:  # datatrove's construction: first X% kept, the rest reversed
            other = doc[:end] + doc[len(doc) - 1 : end : -1]
        else:  # the tail replaced by a fresh templated text
            other = doc[:end] + " " + repetitive_doc(rng, vocab, rng.randint(5, 40))
        s1, s2 = step.get_shingles(doc), step.get_shingles(other)
        errors.append(_sim(step.get_signature(s1), step.get_signature(s2)) - _jaccard(s1, s2))
    assert abs(float(np.mean(errors))) < 0.02, np.mean(errors)
