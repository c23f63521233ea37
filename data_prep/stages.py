"""What each stage runs: a list of phases, each a datatrove pipeline plus an optional driver hook.

A phase is `(name, pipeline_factory, tasks, after)`. Phases of one stage are chained with
datatrove's `depends=` by the runner; `after()` runs in the driver once a phase completed and
returns extra stats fields (remix plan, tokenizer info, manifest summary).
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

    def filter_tail(
        self, make_filter: Callable[[LedgerExclusionWriter], object], step: str, reason: str
    ):
        """Pipeline for dedup filters that report removals through `exclusion_writer`."""
        led = self.ledger()
        writer = LedgerExclusionWriter(led, step, reason)
        return [*self.read(led), make_filter(writer), *self.tail(led)]


def _warc(ctx: StageContext) -> Callable[[], list]:
    cfg = ctx.cfg

    def build() -> list:
        led = ctx.ledger()
        read = web.WarcRecords(ctx.paths_file, led, str(ctx.out / "rejects"))
        extract = web.ExtractMainText(led, cfg.warc.timeout_s, cfg.warc.favour_precision)
        return [read, CountIn(led, cfg.stage, cfg.progress), extract, *ctx.tail(led)]

    return build


def _quality_model(ctx: StageContext, tasks: int) -> list[Phase]:
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
        Phase("sample", build_sample, tasks, train),
        Phase("filter", ctx.simple(build_filter), tasks),
    ]


def _remix(ctx: StageContext, tasks: int) -> list[Phase]:
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
            tasks,
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
            tasks,
        ),
    ]


def _decontaminate(ctx: StageContext, tasks: int) -> list[Phase]:
    cfg = ctx.cfg.decontaminate
    index = decontaminate.build_index(cfg.tasks, cfg.word_ngram, cfg.char_ngram)

    def stats() -> dict:
        return {"decontaminate": {
            task: {"items": n, "items_skipped": index.skipped.get(task, 0)}
            for task, n in index.items.items()
        }}  # fmt: skip

    build = ctx.simple(lambda led: [decontaminate.Decontaminate(index, led)])
    return [Phase("main", build, tasks, stats)]


def _train_tokenizer(ctx: StageContext, tasks: int) -> list[Phase]:
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

    return [Phase("sample", build, tasks, train)]


def _tokenize(ctx: StageContext, tasks: int) -> list[Phase]:
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

    return [Phase("shards", build, tasks, manifest)]


def build_phases(ctx: StageContext) -> list[Phase]:
    """The phases of `ctx.cfg.stage`."""
    cfg, tasks, work = ctx.cfg, ctx.cfg.executor.tasks, str(ctx.work)
    stage = cfg.stage
    if stage == "warc":
        return [Phase("main", _warc(ctx), tasks)]
    if stage == "url_filter":
        lists = (cfg.url_filter.block_domains, cfg.url_filter.block_substrings)
        return [Phase("main", ctx.simple(lambda led: [web.UrlFilter(*lists, led)]), tasks)]
    if stage == "read":
        return [Phase("main", ctx.simple(lambda led: []), tasks)]
    if stage == "normalize":
        return [Phase("main", ctx.simple(lambda led: [TextNormalize(cfg.normalize, led)]), tasks)]
    if stage == "langid":
        return [Phase("main", ctx.simple(lambda led: [LangIdFilter(cfg.langid, led)]), tasks)]
    if stage == "quality":
        return [Phase("main", ctx.simple(lambda led: [QualityFilters(cfg.quality, led)]), tasks)]
    if stage in ("exact_dedup", "minhash_dedup"):
        reason = "duplicate" if stage == "exact_dedup" else "near_duplicate"
        tail = lambda make: ctx.filter_tail(make, stage, reason)  # noqa: E731
        ex, out = cfg.exact_dedup, str(ctx.out)
        if stage == "exact_dedup":
            raw = dedup.exact_phases(ex.normalize, ex.against, work, ctx.read, tail, tasks, out)
        else:
            raw = dedup.minhash_phases(cfg.minhash, work, ctx.read, tail, tasks, out)
        return [Phase(name, build, n) for name, build, n in raw]
    if stage == "pii":
        kinds = tuple(cfg.pii.kinds)
        return [Phase("main", ctx.simple(lambda led: [pii.RedactPII(kinds, led)]), tasks)]
    if stage == "quality_model":
        return _quality_model(ctx, tasks)
    if stage == "decontaminate":
        return _decontaminate(ctx, tasks)
    if stage == "remix":
        return _remix(ctx, tasks)
    if stage == "train_tokenizer":
        return _train_tokenizer(ctx, tasks)
    if stage == "tokenize":
        return _tokenize(ctx, tasks)
    raise ValueError(f"unknown stage {stage!r}")
