"""The live DAG view renders stage, state, elapsed and throughput."""

from __future__ import annotations

from rich.console import Console

from pipeline.view import DagView, throughput_from


def test_live_table_shows_states_elapsed_and_throughput():
    console = Console(force_terminal=True, record=True, width=120)
    with DagView(["read/en", "remix", "train"], live=True, console=console) as view:
        view.set("read/en", "done", started=100.0, finished=112.5, throughput="350.0 docs_per_s")
        view.set("remix", "failed", started=100.0, finished=101.0, note="boom")
        view.set("train", "blocked", note="upstream remix failed")
    text = console.export_text()
    assert "read/en" in text and "done" in text and "12.5s" in text and "350.0 docs_per_s" in text
    assert "failed" in text and "blocked" in text and "upstream remix failed" in text


def test_log_mode_prints_one_line_per_change():
    console = Console(record=True, width=200)
    view = DagView(["a"], live=True, console=console)  # not a terminal: falls back to lines
    view.set("a", "running", started=1.0)
    view.set("a", "running", started=1.0)
    view.set("a", "done", finished=3.0)
    assert console.export_text().splitlines() == [
        "[pipeline] a: running",
        "[pipeline] a: done in 2.0s",
    ]


def test_throughput_picks_a_rate():
    assert throughput_from({"documents_in": 5, "docs_per_s": 12.34}) == "12.3 docs_per_s"
    assert throughput_from({"tokens_per_s": 1500.0}) == "1,500.0 tokens_per_s"
    assert throughput_from({"documents_in": 5}) == ""
