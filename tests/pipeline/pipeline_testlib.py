"""Helpers for pipeline tests: configs of the fake DAG, CLI runs, output snapshots."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_worker_niceness", "0")


# The real DAG, small: 40 docs per domain, 4 training steps.
TINY = (
    "live=false",
    "stages.sample_corpus.options.docs_per_domain=40",
    "stages.train.overrides=['data.manifest={deps[tokenize]}/manifest.json',"
    "'checkpoint.dir={output}/checkpoints','data.cache_dir={output}/dataset_cache',"
    "'logging.mlflow=true','train.steps=4',"
    "'train.eval_interval=2','train.eval_iters=1','checkpoint.save_interval=2',"
    "'data.split=\"90,10,0\"']",  # a 2% valid split of a tiny shard would be empty
    # 30% held out: enough documents per domain for the eval stage's local tasks
    "stages.remix.overrides=['input={run_dir}/decontaminate/*/*.jsonl.gz','output={output}',"
    "'+remix.weights.en=0.5','+remix.weights.zh=0.5','remix.holdout=0.3']",
)


def stage_context(output: Path, name: str, overrides: list[str], options, **extra):
    """The TaskContext the engine would give a single (not per-domain) stage `name` writing to
    `output` (its parent as the run folder), for calling a kind directly."""
    from pipeline.registry import TaskContext

    return TaskContext(
        key=name,
        name=name,
        domain=None,
        output=output,
        run_dir=output.parent,
        inputs={},
        overrides=overrides,
        options=options,
        log_path=output / f"{name}.log",
        **extra,
    )


def pythonpath() -> str:
    return os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )


def compose(run_dir: Path, *overrides: str, config_name: str = "fake_pipeline"):
    """The fake DAG's PipelineConfig, composed by Hydra as the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(HERE / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=[f"run_dir={run_dir}", *overrides])
    return OmegaConf.to_object(cfg)


def cli_command(run_dir: Path, *overrides: str, config_name: str = "fake_pipeline") -> list[str]:
    conf = str(HERE / "conf")
    return [
        sys.executable,
        "-m",
        "pipeline",
        "--config-dir",
        conf,
        "--config-name",
        config_name,
        f"run_dir={run_dir}",
        *overrides,
    ]


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=pythonpath(), RAY_AUTH_MODE="disabled")


def run_cli(
    run_dir: Path, *overrides: str, cwd: Path, timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(run_dir, *overrides),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output_files(run_dir: Path) -> dict[str, bytes]:
    """Every stage output file (not logs, markers or other dot-files) -> its bytes."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if (
            path.is_file()
            and rel.parts[0] != "logs"
            and not any(p.startswith(".") for p in rel.parts)
        ):
            files[str(rel)] = path.read_bytes()
    return files


def data_outputs(run: Path) -> dict[str, bytes]:
    """Every data stage output (not training, evaluation or Slurm job files) -> its bytes."""
    return {
        k: v
        for k, v in output_files(run).items()
        if not k.startswith(("train/", "slurm/", "eval/"))
    }


def same_output(name: str, got: bytes, want: bytes) -> bool:
    """Equal bytes, except stats.json files, compared without their wall-clock timings."""
    if name.endswith("stats.json"):
        return _untimed(got) == _untimed(want)
    return got == want


def _untimed(raw: bytes) -> dict:
    return {k: v for k, v in json.loads(raw).items() if not k.endswith(("_s", "per_s"))}


def sigkill_driver_when(
    cmd: list[str], cwd: Path, ready, what: str, timeout: float
) -> list[psutil.Process]:
    """Start a pipeline driver, SIGKILL it once ready() holds; returns its process tree as it was
    then. Its output goes to a file (a chatty driver would block on a full pipe)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        try:
            while not ready():
                if proc.poll() is not None:
                    out.seek(0)
                    raise AssertionError(f"driver ended before {what}: {out.read()[-2000:]!r}")
                assert time.time() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)
            tree = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            proc.kill()
    return tree


def check_stage_processes_die(tree: list[psutil.Process]) -> None:
    """Stage workers and the trainer die with the driver; Ray's helper agents are reaped here."""
    writers, helpers = [], []
    for p in tree:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        is_writer = ("ray::" in cmd and "Agent" not in cmd) or "fake_trainer" in cmd
        (writers if is_writer else helpers).append(p)
    _, alive = psutil.wait_procs(writers, timeout=3)
    for p in alive + helpers:  # processes this test started (the killed driver's Ray helpers)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    alive = [p for p in alive if _status(p) not in (psutil.STATUS_ZOMBIE, None)]
    assert not alive, f"stage processes outlived the killed driver by 3 s: {alive}"


def _status(p: psutil.Process) -> str | None:
    try:
        return p.status()
    except psutil.NoSuchProcess:
        return None


# MLflow server and headless Chromium (UI checks)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process we started (its own session) and everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_mlflow_server(uri: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp / "mlflow_server.log", "w")
    proc = subprocess.Popen(
        cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return proc, base
        except OSError:
            assert proc.poll() is None, (tmp / "mlflow_server.log").read_text()[-3000:]
            time.sleep(0.5)
    stop_group(proc)
    pytest.fail("mlflow server did not come up in 120 s")


def page_text(url: str, tmp: Path) -> str:
    """Visible text of a page after Chromium ran its JavaScript for a while."""
    cmd = [
        CHROMIUM,
        *CHROME_FLAGS,
        f"--user-data-dir={tmp / 'chrome'}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        dom, _ = proc.communicate(timeout=90)
    finally:
        stop_group(proc)
    text = re.sub(
        r"<script.*?</script>|<style.*?</style>", " ", dom.decode(errors="replace"), flags=re.S
    )
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))
