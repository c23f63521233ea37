"""After a tiny pipeline run, a real `mlflow server` shows the parent run, the stage runs and
the loss curve: checked through its REST API and in headless Chromium."""

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
import time
import urllib.request
from pathlib import Path

import pytest
from pipeline_testlib import compose

from pipeline import run_pipeline

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process we started (its own session) and everything it spawned."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start_server(uri: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
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
    _stop(proc)
    pytest.fail("mlflow server did not come up in 120 s")


def _page_text(url: str, tmp: Path) -> str:
    """Visible text of a page after Chromium ran its JavaScript for a while."""
    cmd = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={tmp / 'chrome'}", "--virtual-time-budget=20000",
           "--dump-dom", url]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        dom, _ = proc.communicate(timeout=90)
    finally:
        _stop(proc)
    text = re.sub(
        r"<script.*?</script>|<style.*?</style>", " ", dom.decode(errors="replace"), flags=re.S
    )
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)"
)
def test_mlflow_server_shows_runs_and_loss_curve(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(tmp_path / "run", f"tracking.uri={uri}", "tracking.run_name=ui-check")
    result = run_pipeline(cfg)
    proc, base = _start_server(uri, tmp_path)
    try:
        api = base + "/api/2.0/mlflow"
        exp = _get(api + "/experiments/get-by-name?experiment_name=fake")["experiment"][
            "experiment_id"
        ]
        runs = _post(api + "/runs/search", {"experiment_ids": [exp], "max_results": 100})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        parent = by_name["ui-check"]
        assert parent["info"]["run_id"] == result.parent_run_id
        children = {
            name for name, r in by_name.items()
            if {"key": "mlflow.parentRunId", "value": result.parent_run_id} in r["data"].get("tags", [])
        }  # fmt: skip
        assert children == {"source/en", "source/zh", "clean/en", "clean/zh", "join", "train"}
        assert {r["info"]["status"] for r in runs} == {"FINISHED"}
        train_id = by_name["train"]["info"]["run_id"]
        history = _get(api + f"/metrics/get-history?run_id={train_id}&metric_key=loss")["metrics"]
        assert [m["step"] for m in history] == [1, 2, 3, 4, 5, 6]
        assert history[-1]["value"] < history[0]["value"]

        runs_page = _page_text(f"{base}/#/experiments/{exp}/runs", tmp_path)
        assert "ui-check" in runs_page and "7 matching runs" in runs_page, runs_page[:2000]
        run_page = _page_text(f"{base}/#/experiments/{exp}/runs/{train_id}", tmp_path)
        for expected in ("Parent run ui-check", "loss 1.66", "valid_loss_last", "Datasets join"):
            assert expected in run_page, (expected, run_page[:3000])
    finally:
        _stop(proc)
