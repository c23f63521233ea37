"""resilience.straggler_*: a rank made 3x slower (test hook) is named with its ratio on the
console and in MLflow; the same run shows per-node system metrics sampled off the step, and
the steps' metrics arrive although they are logged asynchronously."""

from __future__ import annotations

import re
import subprocess

from mlflow import MlflowClient

from tests.tiny_corpus import dp2_train_cmd, write_tiny_manifest
from tests.trainer.test_export import REPO, _env

STEPS = 6


def test_slow_rank_is_named_and_system_metrics_are_logged(tmp_path):
    write_tiny_manifest(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = dp2_train_cmd(
        tmp_path,
        STEPS,
        f"checkpoint.dir={tmp_path / 'ck'}",
        "resilience.straggler_interval=3",
        "resilience.inject_slow_rank=1",
        "resilience.inject_slow_factor=3",
        "logging.mlflow=true",
        f"logging.tracking_uri={uri}",
        "logging.experiment=straggler",
        "logging.system_metrics_interval_s=0.5",
    )
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = re.findall(
        r"\[straggler\] step (\d+): slowest rank (\d) \((\S+)\) [\d.]+ s = ([\d.]+)x", done.stdout
    )
    assert [(int(s), int(r)) for s, r, _, _ in lines] == [(3, 1), (6, 1)], done.stdout[-3000:]
    # slept twice as long as it computed (x3), but on a loaded 2-core machine either rank's
    # compute time swings (a x2 rank was seen at 1.36x-2.95x), so each report is held to the
    # report threshold (1.2) and a bound only a wrong measure (e.g. wall time) would pass
    assert all(1.2 <= float(x) <= 6.0 for *_, x in lines), lines
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("straggler").experiment_id])[0]
    slowest = client.get_metric_history(run.info.run_id, "straggler.slowest_rank")
    assert [(m.step, m.value) for m in slowest] == [(3, 1.0), (6, 1.0)]
    ratio = client.get_metric_history(run.info.run_id, "straggler.max_ratio")
    assert [round(m.value, 2) for m in ratio] == [round(float(x), 2) for *_, x in lines]
    assert run.data.tags["straggler"].startswith(f"step {STEPS}: slowest rank 1 (")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(
        range(1, STEPS + 1)
    )
    host = lines[0][2]
    system = {k for k in run.data.metrics if k.startswith(f"system/{host}/")}
    assert {
        f"system/{host}/cpu_utilization_percentage",
        f"system/{host}/system_memory_usage_megabytes",
    } <= system, sorted(run.data.metrics)
