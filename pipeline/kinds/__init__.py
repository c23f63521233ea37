"""Built-in stage kinds (importing this package registers them)."""

from pipeline.kinds import app, data_prep_kind, evaluate, export, sample_corpus, train  # noqa: F401
