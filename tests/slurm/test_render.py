"""Rendered scripts: golden files per conf/cluster/*.yaml (regenerate with UPDATE_GOLDEN=1),
and the scripts really run: argv quoting and rendezvous values checked with fake srun/python."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from pathlib import Path

import pytest

from slurm.config import CONF_DIR, ClusterConfig, CommandJob, RayJob, TrainJob, load_cluster
from slurm.render import render_sbatch, trainer_overrides
from tests.slurm.fake_bin import write_fakes

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate golden files
CLUSTERS = sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml"))
GOLDEN_TRAIN = TrainJob(
    overrides=["model=tiny_v3", "train.steps=10", "data.manifest=/data/tok/manifest.json"],
    run_dir="/runs/example",
    workdir="/work/project",
    python="/opt/venv/bin/python",
)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN_DIR / name
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert path.is_file(), f"missing golden {path}; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from its golden (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("name", CLUSTERS)
def test_train_script_matches_golden(name):
    _check_golden(f"train_{name}.sbatch", render_sbatch(GOLDEN_TRAIN, load_cluster(name)))


def test_command_script_matches_golden():
    job = CommandJob(["python", "-c", "print('hi')"], run_dir="/runs/cmd", workdir="/work/project")
    cluster = dataclasses.replace(load_cluster("slurm_dev"), python="/opt/venv/bin/python")
    _check_golden("command_slurm_dev.sbatch", render_sbatch(job, cluster))


GOLDEN_DATA = RayJob(
    ["/opt/venv/bin/python", "-m", "data_prep", "stage=minhash_dedup", "executor=ray"],
    run_dir="/runs/data",
    workdir="/work/project",
    python="/opt/venv/bin/python",
)


def test_multi_node_ray_data_job_matches_golden():
    cluster = dataclasses.replace(
        load_cluster("slurm_h100"), nodes=4, gpus_per_node=0, job_name=None
    )
    _check_golden("data_ray_4_nodes.sbatch", render_sbatch(GOLDEN_DATA, cluster))


def test_task_per_gpu_launch_without_requeue_matches_golden():
    cluster = dataclasses.replace(
        load_cluster("slurm_h100"),
        launch="srun",
        requeue=False,
        signal_before_s=0,
        container_image=None,
        extra_sbatch=[],
    )
    text = render_sbatch(GOLDEN_TRAIN, cluster)
    _check_golden("train_srun_no_requeue.sbatch", text)
    assert "#SBATCH --ntasks-per-node=8" in text and "-m slurm.srun_task trainer" in text
    assert "--requeue" not in text and "--signal" not in text and "scontrol requeue" not in text


def test_every_golden_is_checked_and_valid_bash():
    expected = {f"train_{n}.sbatch" for n in CLUSTERS} | {
        "command_slurm_dev.sbatch",
        "data_ray_4_nodes.sbatch",
        "train_srun_no_requeue.sbatch",
    }
    assert {p.name for p in GOLDEN_DIR.glob("*.sbatch")} == expected
    for path in GOLDEN_DIR.glob("*.sbatch"):
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_sbatch_directives_follow_the_cluster():
    text = render_sbatch(GOLDEN_TRAIN, load_cluster("slurm_h100"))
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    for expected in (
        "--nodes=16",
        "--gpus-per-node=8",
        "--account=llm-pretrain",
        "--exclusive",
        "--output=/runs/example/logs/%x-%j.out",
        "--error=/runs/example/logs/%x-%j.err",
        "--constraint=h100",
        "--requeue",
        "--signal=B:USR1@300",
    ):
        assert f"#SBATCH {expected}" in directives
    local = render_sbatch(GOLDEN_TRAIN, load_cluster("local"))
    assert "#SBATCH" not in local and "srun" not in local and "--standalone" in local


def test_hydra_run_dir_is_added_once():
    job = TrainJob(overrides=["a=1"], run_dir="/r")
    assert trainer_overrides(job, "/r") == ["a=1", "hydra.run.dir=/r/hydra"]
    job = TrainJob(overrides=["hydra.run.dir=/mine"], run_dir="/r")
    assert trainer_overrides(job, "/r") == ["hydra.run.dir=/mine"]


def _fake_bin(tmp_path: Path) -> Path:
    """Fake python/srun/scontrol that record their argv (one per line) and environment."""
    scripts = {
        "python": 'printf "%s\\n" "$@" > "$REC/python.argv"; env > "$REC/python.env"',
        "srun": 'printf "%s\\n" "$@" > "$REC/srun.argv"\n'
        'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
        # a long node list (> a pipe buffer): `| head -n 1` would die of SIGPIPE under pipefail
        "scontrol": '[ "$1 $2" = "show hostnames" ] && seq -f "node%g" 7 20006',
    }
    return write_fakes(tmp_path / "bin", scripts)


def _run_script(text: str, tmp_path: Path, extra_env: dict[str, str]) -> Path:
    bin_dir, rec = _fake_bin(tmp_path), tmp_path / "rec"
    rec.mkdir()
    script = tmp_path / "job.sh"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REC": str(rec), **extra_env}
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path)
    return rec


TRICKY = ["model=tiny_v3", "name='a b'", "tag=$HOME", 'q="x;y"', "+train.seed=3"]


def test_local_script_passes_overrides_verbatim(tmp_path):
    job = TrainJob(overrides=TRICKY, run_dir=str(tmp_path / "run"), workdir=str(tmp_path))
    cluster = ClusterConfig(scheduler="local", cpus_per_task=2, python="python")
    rec = _run_script(render_sbatch(job, cluster), tmp_path, {})
    argv = (rec / "python.argv").read_text().splitlines()
    assert argv == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=2",
        "-m",
        "trainer",
        *TRICKY,
        f"hydra.run.dir={tmp_path}/run/hydra",
    ]
    assert (tmp_path / "run" / "logs").is_dir()


def test_slurm_script_rendezvous_on_the_head_node(tmp_path):
    job = TrainJob(overrides=TRICKY, run_dir=str(tmp_path / "run"), workdir=str(tmp_path))
    cluster = ClusterConfig(
        nodes=2,
        gpus_per_node=4,
        python="python",
        env={"NCCL_DEBUG": "WARN"},
        env_setup=['export FROM_SETUP="yes$UNSET_IN_SETUP"'],
        container_image="img:1",
    )
    slurm_env = {
        "SLURM_JOB_ID": "12345",
        "SLURM_JOB_NODELIST": "node[7-8]",
        "SLURM_JOB_NUM_NODES": "2",
    }
    rec = _run_script(render_sbatch(job, cluster), tmp_path, slurm_env)
    argv = (rec / "python.argv").read_text().splitlines()
    assert argv[:7] == [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=node7:32345",
        "--rdzv-id=12345",
    ]
    assert argv[7:] == ["-m", "trainer", *TRICKY, f"hydra.run.dir={tmp_path}/run/hydra"]
    srun = (rec / "srun.argv").read_text().splitlines()
    assert srun[:4] == [
        "--kill-on-bad-exit=1",
        "--mpi=none",
        "--container-image=img:1",
        f"--container-workdir={tmp_path}",
    ]
    env = dict(
        line.split("=", 1) for line in (rec / "python.env").read_text().splitlines() if "=" in line
    )
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node7", "32345")
    assert (env["NCCL_DEBUG"], env["FROM_SETUP"]) == ("WARN", "yes")


def _listen_in_rendezvous_range() -> socket.socket:
    """A socket listening on a port in 20000..39999 (the range of 20000 + job id % 20000)."""
    for port in range(23456, 39999):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen()
        return sock
    raise RuntimeError("no port to occupy")


def test_rendezvous_port_skips_ports_in_use_on_the_head_node(tmp_path):
    job = TrainJob(overrides=[], run_dir=str(tmp_path / "run"), workdir=str(tmp_path))
    cluster = ClusterConfig(gpus_per_node=2, python="python")
    with _listen_in_rendezvous_range() as busy:
        port = busy.getsockname()[1]
        job_id = str(port - 20000 + 20000 * 3)  # 20000 + job id % 20000 == the busy port
        env = {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node7", "SLURM_JOB_NUM_NODES": "1"}
        rec = _run_script(render_sbatch(job, cluster), tmp_path, env)
    argv = (rec / "python.argv").read_text().splitlines()
    assert f"--rdzv-endpoint=node7:{port + 1}" in argv  # 20000 + id % 20000 was taken


def test_newlines_in_a_command_cannot_escape_the_comment_line(tmp_path):
    marker = tmp_path / "pwned"
    job = CommandJob(
        ["true", f"x\ntouch {marker}"], run_dir=str(tmp_path / "r"), workdir=str(tmp_path)
    )
    subprocess.run(["bash", "-c", render_sbatch(job, ClusterConfig(scheduler="local"))], check=True)
    assert not marker.exists()
