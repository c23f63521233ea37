"""Stage kind `sample_corpus`: build the bilingual demo corpus (data_prep.sample_corpus)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.registry import TaskContext, register_kind


@dataclass
class SampleCorpusOptions:
    docs_per_domain: int = 800
    """Documents per source (zh_man, zh_poems, en_docs, en_fortunes)."""
    seed: int = 0
    """Sampling seed."""

    def __post_init__(self) -> None:
        if self.docs_per_domain < 1:
            raise ValueError(
                f"sample_corpus docs_per_domain must be >= 1, got {self.docs_per_domain}"
            )


@register_kind("sample_corpus", options=SampleCorpusOptions, code=("data_prep.sample_corpus",))
def sample_corpus(ctx: TaskContext) -> dict:
    """Write `<source>.jsonl` files into the stage folder; returns documents per source."""
    from data_prep.sample_corpus import build

    counts = build(ctx.output, ctx.options.docs_per_domain, ctx.options.seed)
    return {"documents": counts, "documents_total": sum(counts.values())}
