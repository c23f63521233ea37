"""Hydra multirun sweeps of the real apps on Slurm (`hydra/launcher=slurm_dev`, one job per point).

The cluster tests need the dev cluster (`bash slurm/dev_cluster.sh start`); skipped without one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_corpus import write_tiny_manifest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = ["-m", "hydra/launcher=slurm_dev", "hydra.launcher.timeout_min=5"]
DOCS = [  # clear English/Chinese, a few short or mixed ones that score low, other languages
    "The quick brown fox jumps over the lazy dog near the river bank every morning.",
    "Python is a programming language that lets you work quickly and integrate systems.",
    "这是一个关于中文文本处理的测试文档，用于检查语言识别的阈值。",
    "今天天气很好，我们一起去公园散步吧。",
    "ok ok ok yes",
    "Le chat est sur la table et il dort tranquillement.",
    "Der Hund läuft schnell über die Wiese.",
    "hello 你好 world 世界 mixed text here",
    "data 123 456 789 abc",
    "Ich bin ein Berliner, said the president in English and German.",
]


def _run(app: str, args: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", app, *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _write_docs(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(DOCS):
            f.write(json.dumps({"text": text, "id": str(i)}, ensure_ascii=False) + "\n")
    return path


def _job_logs(sweep: Path) -> list[str]:
    """The stdout of each sweep job (submitit: logs/<array id>_<index>/..._0_log.out)."""
    return [p.read_text() for p in sorted(sweep.glob("logs/*_*/*_0_log.out"))]


@pytest.mark.usefixtures("dev_cluster")
def test_data_prep_threshold_sweep_runs_one_slurm_job_per_threshold(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        *LAUNCHER,
        f"hydra.sweep.dir={sweep}",
        "stage=langid",
        "progress=false",
        f"input={_write_docs(tmp_path / 'in.jsonl')}",
        f"output={tmp_path}/langid_${{langid.threshold}}",
        "langid.threshold=0.3,0.9",
    ]
    proc = _run("data_prep", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"2 sweep jobs; sweep folder {sweep} (Slurm logs: {sweep}/logs/)" in proc.stdout
    stats = {
        t: json.loads((tmp_path / f"langid_{t}/stats.json").read_text()) for t in ("0.3", "0.9")
    }
    for s in stats.values():
        assert s["documents_in"] == len(DOCS)
        assert s["documents_kept"] + sum(s["removed"].values()) == len(DOCS)
    kept = {t: s["documents_kept"] for t, s in stats.items()}
    assert 0 < kept["0.9"] < kept["0.3"], kept  # the stricter threshold keeps fewer
    logs = _job_logs(sweep)
    assert len(logs) == 2 and all('"stage": "langid"' in log for log in logs)  # two real jobs


@pytest.mark.usefixtures("dev_cluster")
def test_trainer_lr_sweep_runs_one_slurm_job_per_lr(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        *LAUNCHER,
        "hydra.launcher.mem_gb=3",
        f"hydra.sweep.dir={sweep}",
        f"data.manifest={write_tiny_manifest(tmp_path)}",
        "data.seq_length=64",
        "train.steps=3",
        "train.global_batch_size=2",
        "train.micro_batch_size=1",
        "train.eval_interval=3",
        "train.eval_iters=1",
        f"checkpoint.dir={tmp_path}/lr_sweep/${{hydra:job.num}}",
        "optim.lr=1e-3,3e-2",
    ]
    proc = _run("trainer", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / "lr_sweep" / n / "summary.json").read_text()) for n in "01"]
    assert [s["final_step"] for s in summaries] == [3, 3]
    assert summaries[0]["valid_loss_first"] == summaries[1]["valid_loss_first"]  # same start
    assert summaries[0]["valid_loss_last"] != summaries[1]["valid_loss_last"]  # lr mattered
    logs = _job_logs(sweep)
    assert len(logs) == 2
    assert all("layout: world 1 = DP1" in log for log in logs)  # SLURM_* env: still one process


@pytest.mark.parametrize(
    ("app", "args", "message"),
    [
        (
            "data_prep",
            ["stage=langid", "input=x", "output=runs/same", "langid.threshold=0.3,0.9"],
            "data_prep: error: sweep jobs share output=",
        ),
        ("trainer", ["optim.lr=1e-3,3e-3"], "error: sweep jobs share checkpoint.dir="),
        (
            "trainer",
            ["optim.lr=1e-3,-1", "checkpoint.dir=c/${hydra:job.num}"],
            "error: optim config: lr must be positive",
        ),
        (
            "data_prep",
            ["stage=langid", "input=x", "output=o/${hydra:job.num}", "langid.nope=1,2"],
            "data_prep: error: Could not override 'langid.nope'",
        ),
    ],
)
def test_bad_sweep_is_refused_before_anything_is_submitted(tmp_path, app, args, message):
    proc = _run(app, [*LAUNCHER, f"hydra.sweep.dir={tmp_path / 'sweep'}", *args], timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()
