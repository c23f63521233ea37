"""What each stage runs: a list of phases, each a datatrove pipeline plus an optional driver hook.

A phase is `(name, pipeline_factory, tasks, after)`. Phases of one stage are chained with
datatrove's `depends=` by the runner; `after()` runs in the driver once a phase completed and
returns extra stats fields (remix plan, tokenizer info, manifest summary).

Each stage of `data_prep.config.STAGE_TABLE` has one phase builder here, registered with
`@builds(name)`; tests/data_prep/test_stage_table.py checks the two agree.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fsspec.compression
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.logging import logger

from data_prep import decontaminate, dedup, pii, quality_model, remix, shards, web
from data_prep.accounting import CountIn, Finish, Ledger, LedgerExclusionWriter
from data_prep.config import DataPrepConfig
from data_prep.reader import RecordReader
from data_prep.steps import LangIdFilter, QualityFilters, TextNormalize


def _reproducible_gzip(fileobj, mode="rb", **kwargs):
    """fsspec's gzip codec, but writing mtime 0 in the header (fsspec and datatrove pass no
    mtime, so every rerun wrote different bytes); identical input now gives identical files."""
    kwargs.setdefault("mtime", 0)
    return gzip.GzipFile(fileobj=fileobj, mode=mode, **kwargs)


fsspec.compression.register_compression("gzip", _reproducible_gzip, "gz", force=True)


@dataclass
class Phase:
    """One datatrove pipeline of a stage."""

    name: str
    build: Callable[[], list]
    tasks: int
    after: Callable[[], dict] | None = None


@dataclass
class StageContext:
    """Paths of one stage run."""

    cfg: DataPrepConfig
    out: Path
    work: Path
    paths_file: str

    @property
    def tasks(self) -> int:
        return self.cfg.executor.tasks

    @property
    def ledger_dir(self) -> str:
        return str(self.work / "ledger")

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_dir, self.cfg.removed_samples)

    def read(self, ledger: Ledger | None = None) -> list:
        """Reader + counter. Without a ledger (a pre-pass), rejects go to a scratch folder."""
        scratch = ledger is None
        ledger = ledger or Ledger(str(self.work / "scratch_ledger"), 0)
        rejects = self.work / "scratch_rejects" if scratch else self.out / "rejects"
        reader = RecordReader(self.paths_file, self.cfg.read, ledger, str(rejects))
        return [reader, CountIn(ledger, self.cfg.stage, self.cfg.progress and not scratch)]

    def tail(self, ledger: Ledger, write: bool = True) -> list:
        writer = [JsonlWriter(str(self.out), output_filename="${rank}.jsonl.gz")] if write else []
        return [*writer, Finish(ledger, self.cfg.stage)]

    def simple(self, make_steps: Callable[[Ledger], list]) -> Callable[[], list]:
        """Factory of `read -> steps -> write -> finish` with one fresh ledger."""

        def build() -> list:
            led = self.ledger()
            return [*self.read(led), *make_steps(led), *self.tail(led)]

        return build

    def main(self, make_steps: Callable[[Ledger], list]) -> list[Phase]:
        """The one phase `main` of a `simple` stage."""
        return [Phase("main", self.simple(make_steps), self.tasks)]

    def filter_tail(
        self, make_filter: Callable[[LedgerExclusionWriter], object], step: str, reason: str
    ):
        """Pipeline for dedup filters that report removals through `exclusion_writer`."""
        led = self.ledger()
        writer = LedgerExclusionWriter(led, step, reason)
        return [*self.read(led), make_filter(writer), *self.tail(led)]


PhaseBuilder = Callable[[StageContext], list[Phase]]
BUILDERS: dict[str, PhaseBuilder] = {}
"""Stage name (a key of data_prep.config.STAGE_TABLE) -> the function building its phases."""


def builds(stage: str) -> Callable[[PhaseBuilder], PhaseBuilder]:
    """Decorator: register `fn(ctx) -> phases` as the phase builder of `stage`."""

    def wrap(fn: PhaseBuilder) -> PhaseBuilder:
        assert stage not in BUILDERS, f"two phase builders for stage {stage!r}"
        BUILDERS[stage] = fn
        return fn

    return wrap


def build_phases(ctx: StageContext) -> list[Phase]:
    """The phases of `ctx.cfg.stage`."""
    if ctx.cfg.stage not in BUILDERS:
        raise ValueError(f"unknown stage {ctx.cfg.stage!r}")
    return BUILDERS[ctx.cfg.stage](ctx)


@builds("warc")
def _warc(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg

    def build() -> list:
        led = ctx.ledger()
        read = web.WarcRecords(ctx.paths_file, led, str(ctx.out / "rejects"))
        extract = web.ExtractMainText(led, cfg.warc.timeout_s, cfg.warc.favour_precision)
        return [read, CountIn(led, cfg.stage, cfg.progress), extract, *ctx.tail(led)]

    return [Phase("main", build, ctx.tasks)]


@builds("url_filter")
def _url_filter(ctx: StageContext) -> list[Phase]:
    lists = (ctx.cfg.url_filter.block_domains, ctx.cfg.url_filter.block_substrings)
    return ctx.main(lambda led: [web.UrlFilter(*lists, led)])


@builds("read")
def _read(ctx: StageContext) -> list[Phase]:
    return ctx.main(lambda led: [])


@builds("normalize")
def _normalize(ctx: StageContext) -> list[Phase]:
    return ctx.main(lambda led: [TextNormalize(ctx.cfg.normalize, led)])


@builds("langid")
def _langid(ctx: StageContext) -> list[Phase]:
    return ctx.main(lambda led: [LangIdFilter(ctx.cfg.langid, led)])


@builds("quality")
def _quality(ctx: StageContext) -> list[Phase]:
    return ctx.main(lambda led: [QualityFilters(ctx.cfg.quality, led)])


@builds("quality_model")
def _quality_model(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg.quality_model
    sample, decision = ctx.work / "quality_sample", ctx.work / "threshold.json"

    def train() -> dict:
        return quality_model.train(cfg, ctx.cfg.read, sample, ctx.work, ctx.out)

    def build_sample() -> list:
        step = quality_model.QualitySample(
            str(sample), cfg.max_docs_per_class, cfg.seed, cfg.max_chars
        )
        return [*ctx.read(), step]

    def build_filter(led: Ledger) -> list:
        return [quality_model.QualityModelFilter(str(decision), cfg.label, cfg.max_chars, led)]

    return [
        Phase("sample", build_sample, ctx.tasks, train),
        Phase("filter", ctx.simple(build_filter), ctx.tasks),
    ]


def _dedup_tail(ctx: StageContext, reason: str) -> Callable:
    """`make_filter -> pipeline` for a dedup filter that reports removals as `reason`."""
    return lambda make: ctx.filter_tail(make, ctx.cfg.stage, reason)


@builds("exact_dedup")
def _exact_dedup(ctx: StageContext) -> list[Phase]:
    ex, tail = ctx.cfg.exact_dedup, _dedup_tail(ctx, "duplicate")
    raw = dedup.exact_phases(
        ex.normalize, ex.against, str(ctx.work), ctx.read, tail, ctx.tasks, str(ctx.out)
    )
    return [Phase(name, build, n) for name, build, n in raw]


@builds("minhash_dedup")
def _minhash_dedup(ctx: StageContext) -> list[Phase]:
    tail = _dedup_tail(ctx, "near_duplicate")
    raw = dedup.minhash_phases(
        ctx.cfg.minhash, str(ctx.work), ctx.read, tail, ctx.tasks, str(ctx.out)
    )
    return [Phase(name, build, n) for name, build, n in raw]


@builds("pii")
def _pii(ctx: StageContext) -> list[Phase]:
    kinds = tuple(ctx.cfg.pii.kinds)
    return ctx.main(lambda led: [pii.RedactPII(kinds, led)])


@builds("decontaminate")
def _decontaminate(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg.decontaminate
    index = decontaminate.build_index(cfg.tasks, cfg.word_ngram, cfg.char_ngram)

    def stats() -> dict:
        return {
            "decontaminate": {
                task: {"items": n, "items_skipped": index.skipped.get(task, 0)}
                for task, n in index.items.items()
            }
        }

    build = ctx.simple(lambda led: [decontaminate.Decontaminate(index, led)])
    return [Phase("main", build, ctx.tasks, stats)]


@builds("remix")
def _remix(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg.remix
    counts, plan_path = str(ctx.work / "remix_counts"), str(ctx.work / "remix_plan.json")

    def plan() -> dict:
        p = remix.plan_remix(cfg, counts)
        remix.save_plan(p, plan_path)
        return {"remix": p}

    return [
        Phase(
            "count",
            lambda: [*ctx.read(), remix.RemixCount(counts, cfg.seed, cfg.holdout)],
            ctx.tasks,
            plan,
        ),
        Phase(
            "sample",
            ctx.simple(
                lambda led: [
                    remix.RemixSample(
                        plan_path, cfg.seed, led, cfg.holdout, str(ctx.out / "holdout")
                    )
                ]
            ),
            ctx.tasks,
        ),
    ]


@builds("train_tokenizer")
def _train_tokenizer(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg.train_tokenizer
    folder = str(ctx.work / "tokenizer_sample")

    def build() -> list:
        led = ctx.ledger()
        return [
            *ctx.read(led),
            shards.TokenizerSample(folder, cfg.sample_docs, cfg.seed),
            *ctx.tail(led, False),
        ]

    def train() -> dict:
        return {"tokenizer": shards.train_bpe(cfg, folder, str(ctx.out / "tokenizer.json"))}

    return [Phase("sample", build, ctx.tasks, train)]


@builds("tokenize")
def _tokenize(ctx: StageContext) -> list[Phase]:
    cfg = ctx.cfg.tokenize
    tok_path = str(Path(cfg.tokenizer).expanduser().resolve())
    if not Path(tok_path).is_file():
        raise ValueError(f"tokenize.tokenizer does not exist: {cfg.tokenizer}")
    info = str(ctx.work / "shard_info")

    def build() -> list:
        led = ctx.ledger()
        step = shards.MegatronShards(cfg, tok_path, str(ctx.out), info)
        return [*ctx.read(led), step, *ctx.tail(led, False)]

    def manifest() -> dict:
        files = ["/" + line for line in Path(ctx.paths_file).read_text().splitlines()]
        weights, source = shards.blend_weights(cfg, files)
        m = shards.write_manifest(info, str(ctx.out), tok_path, weights, source)
        if report := shards.mix_report(m["mix"]):
            logger.warning(report)
        mix = {
            d: {k: v for k, v in x.items() if k != "tokens"} for d, x in m["mix"]["domains"].items()
        }
        return {
            "tokens": sum(s["tokens"] for s in m["shards"]),
            "shards": len(m["shards"]),
            "mix": mix,
            "mix_source": m["mix"]["source"],
        }

    return [Phase("shards", build, ctx.tasks, manifest)]


@builds("chat_tokenize")
def _chat_tokenize(ctx: StageContext) -> list[Phase]:
    from data_prep import chat

    cfg = ctx.cfg.chat_tokenize
    tok_path, renderer = chat.tokenizer_path(cfg), chat.renderer_for(cfg)
    info = str(ctx.work / "shard_info")

    def build() -> list:
        led = ctx.ledger()
        read = chat.ChatRecordReader(
            ctx.paths_file, ctx.cfg.read, cfg.messages_field, led, str(ctx.out / "rejects")
        )
        step = chat.ChatShards(cfg, renderer, tok_path, str(ctx.out), info, led)
        return [read, CountIn(led, ctx.cfg.stage, ctx.cfg.progress), step, *ctx.tail(led, False)]

    def manifest() -> dict:
        weights = dict(cfg.weights) if cfg.weights else None
        source = "chat_tokenize.weights" if weights else "documents"
        sft = {"seq_length": cfg.seq_length, "chat_template": renderer.source}
        sft |= {"bos_token": renderer.bos_token, "eos_token": renderer.eos_token}
        sft["loss_mask_dtype"] = "uint8"
        m = shards.write_manifest(
            info, str(ctx.out), tok_path, weights, source, by="documents", extra={"sft": sft}
        )
        return {
            "tokens": sum(s["tokens"] for s in m["shards"]),
            "loss_tokens": sum(s["loss_tokens"] for s in m["shards"]),
            "shards": len(m["shards"]),
            "max_document_tokens": max(s["max_document_tokens"] for s in m["shards"]),
        }

    return [Phase("shards", build, ctx.tasks, manifest)]
