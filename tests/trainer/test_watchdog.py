"""resilience.hang_timeout_s: a rank that sleeps inside a step (the test-only hook) is found by
the hang watchdog within the timeout + 10 s; every rank's stacks are in the log, the report
names the sleeping rank as the suspect and the ranks stop with the watchdog's exit code."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

from tests.tiny_corpus import dp2_train_cmd, write_tiny_manifest
from tests.trainer.test_export import REPO, _env, write_tokenizer

TIMEOUT_S = 10  # well above a tiny step even on a loaded 2-core machine


def test_hang_is_reported_with_the_sleeping_rank(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "tokenizer.json")
    write_tiny_manifest(tmp_path)
    ck = tmp_path / "ck"
    cmd = dp2_train_cmd(
        tmp_path,
        20,
        f"checkpoint.dir={ck}",
        "checkpoint.save_interval=0",
        f"resilience.hang_timeout_s={TIMEOUT_S}",
        "resilience.inject_hang_rank=1",
        "resilience.inject_hang_step=3",
    )
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    guard = threading.Timer(120, proc.kill)  # a watchdog that never fires must not hang the suite
    guard.start()
    try:
        for line in proc.stdout:
            lines.append((time.monotonic(), line))
        proc.wait()
    finally:
        guard.cancel()
    log = "".join(line for _, line in lines)
    assert proc.returncode != 0, log[-3000:]
    hook = next(t for t, line in lines if "test hook: rank 1 sleeps in step 3" in line)
    fired = [t for t, line in lines if re.search(r"\[watchdog\] rank \d: no progress", line)]
    assert len(fired) == 2 and max(fired) - hook <= TIMEOUT_S + 10, log[-3000:]
    assert log.count("most recent call first") >= 4  # every thread of both ranks
    report = json.loads((ck / "hang" / "report.json").read_text())
    assert report["suspects"] == [1] and report["waiting"] == [0], report["summary"]
    assert "watchdog.py" in report["ranks"]["1"]["where"]  # asleep in the hook
    assert report["step"] == 2 and "suspects [1]" in log
    assert re.search(r"exitcode\s*:\s*76", log), log[-2000:]
