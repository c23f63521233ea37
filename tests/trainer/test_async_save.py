"""checkpoint.async_save: steps run while a checkpoint is written by a forked writer; `latest`
moves only when every rank's write is finished; a SIGKILL while a save is in flight leaves
`latest` on the previous complete checkpoint, and the rerun ends exactly where a run with
synchronous saves ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from tests.tiny_corpus import dp2_train_cmd, write_tiny_manifest
from tests.trainer.test_export import REPO, _env

STEPS = 8


def _cmd(tmp: Path, ck: Path, *extra: str) -> list[str]:
    return dp2_train_cmd(
        tmp,
        STEPS,
        f"checkpoint.dir={ck}",
        "checkpoint.save_interval=2",
        "checkpoint.keep_last=5",
        *extra,
    )


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_async_save_overlaps_steps_and_survives_a_kill_mid_write(tmp_path):
    write_tiny_manifest(tmp_path)
    ck = tmp_path / "async"
    slow = ("checkpoint.async_save=true", "checkpoint.inject_write_delay_s=4")
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _cmd(tmp_path, ck, *slow),
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while "step 5 loss" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:  # the whole node goes: torchrun, the ranks (own sessions) and their forked writers
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    # steps 3 and 4 ran while iter 2 was being written (its writer waited 4 s first)
    assert text.index("step 3 loss") < text.index("[checkpoint] iter_0000002 complete"), text[
        -3000:
    ]
    assert (ck / "latest").read_text().strip() == "iter_0000002"  # the step-4 save was in flight
    assert (ck / "iter_0000004.tmp").is_dir() and not (ck / "iter_0000004").exists()

    resumed = _run(_cmd(tmp_path, ck, *slow))
    assert f"resumed_from: {ck}/iter_0000002" in resumed
    reference = tmp_path / "sync"
    _run(_cmd(tmp_path, reference))
    got, want = (json.loads((d / "summary.json").read_text()) for d in (ck, reference))
    assert got["final_step"] == want["final_step"] == STEPS
    assert got["train_loss"] == want["train_loss"]
    assert (ck / "latest").read_text().strip() == f"iter_{STEPS:07d}"
    assert sorted(p.name for p in ck.glob("iter_*") if not p.name.endswith(".tmp")) == [
        f"iter_{s:07d}" for s in (2, 4, 6, 8)
    ]
