"""`python -m pipeline`: clear one-line errors, --cfg job, dry runs that touch nothing."""

from __future__ import annotations

import subprocess

from pipeline_testlib import cli_command, cli_env


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = cli_command(tmp_path / "run", *args)
    return subprocess.run(
        cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120
    )


def test_bad_config_is_one_line_error_without_traceback(tmp_path):
    res = _cli(tmp_path, "stages.join.kind=nope")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "error: unknown stage kind 'nope'; registered kinds: app, data_prep, eval, export, "
        "fake_map, fake_source, sample_corpus, train"
    ]
    res = _cli(tmp_path, "ray.num_cpus=0")
    assert res.returncode == 1 and "ray.num_cpus must be >= 1" in res.stderr
    assert "Traceback" not in res.stderr


def test_cfg_job_and_dry_run(tmp_path):
    res = _cli(tmp_path, "--cfg", "job")
    assert res.returncode == 0 and "stages:" in res.stdout and "kind: fake_map" in res.stdout
    res = _cli(tmp_path, "dry_run=true")
    assert res.returncode == 0, res.stderr
    assert "RUN  train [train] <- join: not run yet" in res.stdout
    assert "6 to run, 0 up to date" in res.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()
