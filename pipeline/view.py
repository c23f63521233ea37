"""Live terminal view of the DAG (stage, state, elapsed, throughput), built with rich."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from pipeline.state import ATTEMPT

_COLORS = {
    "pending": "dim",
    "running": "cyan",
    "done": "green",
    "skipped": "blue",
    "failed": "bold red",
    "blocked": "yellow",
    "stopped": "magenta",
}
_RATE_KEY = re.compile(r"(per_s(ec)?|throughput|/s)$")


@dataclass
class StageState:
    key: str
    state: str = "pending"
    started: float | None = None
    finished: float | None = None
    throughput: str = ""
    note: str = ""


def throughput_from(stats: dict) -> str:
    """Pick the first rate-like number from a stats dict (e.g. docs_per_s, tokens_per_s)."""
    for key, value in stats.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and _RATE_KEY.search(key):
            return f"{value:,.1f} {key}"
    return ""


class DagView:
    """Keeps every stage's state; renders a rich table live, or one line per change."""

    def __init__(self, keys: list[str], live: bool, console: Console | None = None):
        self.console = console or Console()
        self.states = {k: StageState(k) for k in keys}
        self.live = (
            Live(console=self.console, auto_refresh=False)
            if live and self.console.is_terminal
            else None
        )

    def __enter__(self) -> DagView:
        if self.live:
            self.live.__enter__()
            self.refresh()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.refresh()
            self.live.__exit__(*exc)

    def set(self, key: str, state: str, **fields) -> None:
        s = self.states[key]
        changed = s.state != state
        s.state = state
        for name, value in fields.items():
            setattr(s, name, value)
        if changed and not self.live:
            extra = f" ({s.note})" if s.note else ""
            elapsed = f" in {s.finished - s.started:.1f}s" if s.finished and s.started else ""
            self.console.print(
                escape(f"[pipeline] {key}: {state}{elapsed}{extra}"), highlight=False
            )

    def poll_running(self, outputs: dict[str, Path], since: float) -> None:
        """Mark submitted stages as running once their attempt file appears; read progress."""
        for key, s in self.states.items():
            if s.state not in ("pending", "running") or key not in outputs:
                continue
            attempt = outputs[key] / ATTEMPT
            try:
                started = json.loads(attempt.read_text())["started_at"]
            except (OSError, ValueError, KeyError):
                continue
            if started >= since:
                progress = _read_progress(outputs[key])
                self.set(key, "running", started=started, throughput=progress or s.throughput)
        self.refresh()

    def table(self) -> Table:
        table = Table(title="pipeline", expand=False)
        for col in ("stage", "state", "elapsed", "throughput", "note"):
            table.add_column(col)
        now = time.time()
        for s in self.states.values():
            end = s.finished or now
            elapsed = f"{end - s.started:.1f}s" if s.started else ""
            state = f"[{_COLORS.get(s.state, '')}]{s.state}[/]"
            table.add_row(s.key, state, elapsed, s.throughput, s.note)
        return table

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.table(), refresh=True)


def _read_progress(folder: Path) -> str:
    try:
        data = json.loads((folder / ".progress.json").read_text())
    except (OSError, ValueError):
        return ""
    if "throughput" in data:
        return f"{data['throughput']:,.1f} {data.get('unit', '/s')}"
    return ""
