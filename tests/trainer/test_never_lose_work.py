"""Trained weights survive reruns, typos, signals and faults (issue "never lose work").

Each test reproduces a way main used to lose work, on the real `python -m trainer` (a
subprocess, like a user's shell) over a tiny real shard:
1. pruning by name deleted the checkpoints a run had just written into a reused folder;
3. a missing, dangling or garbage `latest` restarted from step 0 over intact checkpoints;
4. a truncated file or another model's checkpoint gave a long traceback and no fallback;
6. SIGTERM/SIGINT killed the trainer without saving;
8. SIGKILL of the launcher left ranks and megatron's checkpoint Manager running;
and `checkpoint.dir` that is a file gave a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.tiny_corpus import write_tiny_manifest
from trainer.checkpoint_store import MARKER, complete_checkpoints, prune, resume_candidates

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_manifest(tmp_path_factory.mktemp("corpus"))


def _args(manifest: Path, ckpt: Path, steps: int, *extra: str) -> list[str]:
    return [
        f"data.manifest={manifest}",
        "data.seq_length=64",
        f"train.steps={steps}",
        "train.global_batch_size=4",
        "train.micro_batch_size=2",
        "train.eval_interval=2",
        "train.eval_iters=1",
        f"checkpoint.dir={ckpt}",
        "checkpoint.save_interval=2",
        *extra,
    ]


def _env(tag: str | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    for key in ("PRETRAIN_STOP_FILE", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        env.pop(key, None)  # a rank env left by an in-process test would be inherited
    if tag:
        env["NEVER_LOSE_WORK_TAG"] = tag
    return env


def _trainer(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _losses(stdout: str) -> dict[int, str]:
    """step -> the console's `loss=...` value (printed with 4 significant digits)."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] == "step" and parts[2].startswith("loss="):
            out[int(parts[1])] = parts[2]
    return out


def _summary(ckpt: Path) -> dict:
    return json.loads((ckpt / "summary.json").read_text())


def _fake_checkpoint(root: Path, step: int, lineage: str) -> None:
    folder = root / f"iter_{step:07d}"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"step": step, "lineage": lineage, "files": {}}))


def test_prune_keeps_by_step_within_the_lineage_and_never_latest(tmp_path: Path) -> None:
    for step in (6, 8):  # an earlier run's higher-step checkpoints in the same folder
        _fake_checkpoint(tmp_path, step, "old")
    for step in (2, 4, 10):
        _fake_checkpoint(tmp_path, step, "new")
    (tmp_path / "latest").write_text("iter_0000004\n")
    deleted = prune(tmp_path, 1, "new")
    assert [p.name for p in deleted] == ["iter_0000002"]  # 10 is the newest, 4 is `latest`
    assert [c.step for c in complete_checkpoints(tmp_path)] == [4, 6, 8, 10]


def test_reused_folder_keeps_the_new_runs_checkpoints(manifest: Path, tmp_path: Path) -> None:
    """Was: resume=false into a folder holding iter_6 deleted the run's own iter_2/iter_4."""
    ckpt = tmp_path / "ck"
    first = _trainer(*_args(manifest, ckpt, 6, "checkpoint.keep_last=1"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = _trainer(*_args(manifest, ckpt, 4, "checkpoint.keep_last=2", "checkpoint.resume=false"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "earlier checkpoints moved to" in again.stderr
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000002", "iter_0000004"]
    assert (ckpt / "latest").read_text().strip() == "iter_0000004"
    previous = list((ckpt / "previous").glob("*/iter_0000006"))
    assert len(previous) == 1 and (previous[0] / MARKER).exists()  # kept, not deleted
    rerun = _trainer(*_args(manifest, ckpt, 6))  # continues the new run from its iter_4
    assert rerun.returncode == 0 and "resumed_from: " + str(ckpt / "iter_0000004") in rerun.stdout
    assert sorted(_losses(rerun.stdout)) == [5, 6]


@pytest.fixture(scope="module")
def reference(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted 6-step run: per-step losses and summary."""
    ckpt = tmp_path_factory.mktemp("reference") / "ck"
    done = _trainer(*_args(manifest, ckpt, 6))
    assert done.returncode == 0, done.stderr[-2000:]
    return {"losses": _losses(done.stdout), "summary": _summary(ckpt)}


@pytest.mark.parametrize("pointer", ["missing", "dangling", "garbage", "empty"])
def test_unusable_latest_picks_the_newest_complete(tmp_path: Path, pointer: str) -> None:
    for step in (2, 4):
        _fake_checkpoint(tmp_path, step, "run")
    (tmp_path / "iter_0000006.tmp").mkdir()  # an interrupted save is never a candidate
    latest = tmp_path / "latest"
    {
        "missing": lambda: None,
        "dangling": lambda: latest.write_text("iter_0000099\n"),
        "garbage": lambda: latest.write_bytes(b"\x00\xff garbage"),
        "empty": lambda: latest.write_text(""),
    }[pointer]()
    candidates, warning = resume_candidates(tmp_path)
    assert [c.step for c in candidates] == [4, 2]
    assert (
        warning
        and warning.startswith(f"{latest} is ")
        and warning.endswith("resuming from the newest complete checkpoint iter_0000004 instead")
    )


def test_garbage_latest_resumes_instead_of_restarting(
    manifest: Path, tmp_path: Path, reference: dict
) -> None:
    """Was: one INFO line, 'resumed_from: scratch', then the intact checkpoints overwritten."""
    ckpt = tmp_path / "ck"
    assert _trainer(*_args(manifest, ckpt, 4)).returncode == 0
    (ckpt / "latest").write_bytes(b"\x00\xff garbage")
    rerun = _trainer(*_args(manifest, ckpt, 6))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from the newest complete checkpoint iter_0000004" in rerun.stderr
    assert sorted(_losses(rerun.stdout)) == [5, 6]
    # Another model's checkpoint (was: a KeyError dump): one line naming both models.
    other = _trainer(*_args(manifest, ckpt, 8, "model=tiny_dense"))
    assert other.returncode == 2 and "Traceback" not in other.stderr
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {ckpt / 'iter_0000006'} was saved with model ")
    assert "'tiny_v3', this run is 'tiny_dense'" in last
    # valid_loss_first is left out: the validation set's size follows train.steps (4 vs 6).
    for key in ("final_step", "train_loss", "valid_loss_last"):
        assert _summary(ckpt)[key] == reference["summary"][key], key


def test_damaged_checkpoint_falls_back_to_the_previous_one(
    manifest: Path, tmp_path: Path, reference: dict
) -> None:
    """Was: a 160-346-line traceback naming neither folder nor file, and no fallback."""
    ckpt = tmp_path / "ck"
    assert _trainer(*_args(manifest, ckpt, 4)).returncode == 0
    shard = max((ckpt / "iter_0000004").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated
    rerun = _trainer(*_args(manifest, ckpt, 6))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"checkpoint {ckpt / 'iter_0000004'} is damaged: {shard.name} has" in rerun.stderr
    assert "resumed_from: " + str(ckpt / "iter_0000002") in rerun.stdout
    assert sorted(_losses(rerun.stdout)) == [3, 4, 5, 6]
    assert _losses(rerun.stdout)[6] == reference["losses"][6]
    # With every checkpoint damaged: one line, exit 2, nothing restarted over them.
    for folder in ckpt.glob("iter_*"):
        (folder / "common.pt").unlink()
    broken = _trainer(*_args(manifest, ckpt, 8))
    assert broken.returncode == 2
    lines = broken.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: checkpoint.dir={ckpt} holds checkpoints")
    assert "Traceback" not in broken.stderr


def test_checkpoint_dir_that_is_a_file_is_one_line(manifest: Path, tmp_path: Path) -> None:
    target = tmp_path / "ck"
    target.write_text("not a folder")
    done = _trainer(*_args(manifest, target, 2))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    expected = f"error: checkpoint.dir={target}: {target} is a file, not a folder"
    assert done.stderr.strip().splitlines()[-1] == expected


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _tagged(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries `tag` (they descend from our launch)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"NEVER_LOSE_WORK_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def _launch(cmd: list[str], tag: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=_env(tag),
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _step_reached(log: Path, step: int) -> bool:
    return step in _losses(log.read_text(errors="replace"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_the_step_boundary_and_rerun_matches(
    manifest: Path, tmp_path: Path, reference: dict, sig: signal.Signals
) -> None:
    """Was: SIGTERM killed at once, Ctrl-C printed a 346-line traceback, nothing saved."""
    ckpt, log, tag = tmp_path / "ck", tmp_path / "log", uuid.uuid4().hex
    args = _args(manifest, ckpt, 6, "checkpoint.save_interval=0", "train.eval_interval=0")
    proc = _launch([sys.executable, "-m", "trainer", *args], tag, log)
    _wait_for(lambda: _step_reached(log, 1), 120, "step 1")
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 75, log.read_text()[-2000:]
    text = log.read_text()
    stopped_at = max(_losses(text))
    assert f"stop requested ({sig.name}): checkpoint at step {stopped_at} saved" in text
    assert "Traceback" not in text and stopped_at < 6
    assert (ckpt / "latest").read_text().strip() == f"iter_{stopped_at:07d}"
    if sig == signal.SIGINT:
        return  # the same path as SIGTERM from here on
    rerun = _trainer(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resumed = _losses(rerun.stdout)
    assert sorted(resumed) == list(range(stopped_at + 1, 7))
    assert {**_losses(text), **resumed} == reference["losses"]


def test_sigkill_of_torchrun_leaves_no_process_and_saves(manifest: Path, tmp_path: Path) -> None:
    """Was: ranks (own sessions) and megatron's dist-checkpoint Manager (~300 MB) lived on."""
    ckpt, log, tag = tmp_path / "ck", tmp_path / "log", uuid.uuid4().hex
    args = _args(manifest, ckpt, 400, "checkpoint.save_interval=1", "train.eval_interval=0")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = _launch([*torchrun, "--nproc-per-node=2", "-m", "trainer", *args], tag, log)
    _wait_for(lambda: (ckpt / "latest").exists(), 180, "the first checkpoint")
    assert len(_tagged(tag)) >= 4  # agent, 2 ranks, a Manager per rank
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not _tagged(tag), 90, "every process of the run to exit")
    text = log.read_text()
    assert "stop requested (SIGTERM)" in text, text[-3000:]
    step = int((ckpt / "latest").read_text().strip().split("_")[1])
    assert (ckpt / f"iter_{step:07d}" / MARKER).exists() and step < 400


def test_sigkill_of_the_trainer_stops_the_checkpoint_manager(
    manifest: Path, tmp_path: Path
) -> None:
    ckpt, log, tag = tmp_path / "ck", tmp_path / "log", uuid.uuid4().hex
    args = _args(manifest, ckpt, 400, "checkpoint.save_interval=1", "train.eval_interval=0")
    proc = _launch([sys.executable, "-m", "trainer", *args], tag, log)
    _wait_for(lambda: (ckpt / "latest").exists(), 120, "the first checkpoint")
    assert len(_tagged(tag)) >= 2  # the trainer and megatron's Manager server
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not _tagged(tag), 30, "the Manager to exit")
