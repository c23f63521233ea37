"""Pieces of `cluster=slurm` that need no cluster: job overrides, torch ranks from Slurm task
variables, the training step argv, the status verdict, and a multi-node Ray data script run
with fake srun/scontrol/python."""

from __future__ import annotations

import os
import subprocess

import pytest

from slurm.app import job_overrides
from slurm.config import ClusterConfig, RayJob
from slurm.render import render_sbatch
from slurm.srun_task import torch_env
from slurm.status import JobStatus, outcome
from slurm.step import train_step
from tests.slurm.fake_bin import write_fakes


def test_job_overrides_drop_cluster_and_dry_run_and_run_in_place():
    given = [
        "cluster=slurm",
        "cluster.nodes=4",
        "+cluster.env.X=1",
        "dry_run=false",
        "train.steps=5",
        "clusters_of_docs=3",
        "model=tiny_v3",
    ]
    assert job_overrides(given) == [
        "train.steps=5",
        "clusters_of_docs=3",
        "model=tiny_v3",
        "cluster=local",
    ]


def test_torch_ranks_come_from_slurm_task_variables():
    env = {
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "16",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "2",
    }
    assert torch_env(env) == {
        "RANK": "9",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "16",
        "LOCAL_WORLD_SIZE": "8",
    }
    with pytest.raises(RuntimeError, match="must run under srun: SLURM_PROCID"):
        torch_env({k: v for k, v in env.items() if k != "SLURM_PROCID"})


SLURM_ENV = {"SLURM_JOB_ID": "41234", "SLURM_JOB_NODELIST": "gpu[3-4]", "SLURM_JOB_NUM_NODES": "2"}


def test_training_step_spans_the_allocation_with_rendezvous_on_its_first_node():
    cluster = ClusterConfig(nodes=2, gpus_per_node=8, container_image="img:1", python="py")
    argv, env = train_step(cluster, "trainer", ["a=1"], env=SLURM_ENV)
    assert env == {"MASTER_ADDR": "gpu3", "MASTER_PORT": str(20000 + 41234 % 20000)}
    assert argv[:6] == [
        "srun",
        "--kill-on-bad-exit=1",
        "--mpi=none",
        "--container-image=img:1",
        f"--container-workdir={os.getcwd()}",
        "--nodes=2",
    ]
    assert argv[argv.index("py") :] == [
        "py",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=gpu3:{env['MASTER_PORT']}",
        "--rdzv-id=41234",
        "-m",
        "trainer",
        "a=1",
    ]
    argv, _ = train_step(
        ClusterConfig(gpus_per_node=8, launch="srun"), "trainer", [], env=SLURM_ENV
    )
    assert "--ntasks=16" in argv and argv[-3:] == ["-m", "slurm.srun_task", "trainer"]
    with pytest.raises(RuntimeError, match="inside a Slurm job"):
        train_step(cluster, "trainer", [], env={})


def _status(role: str, state: str) -> JobStatus:
    return JobStatus(role, role, "1", state, "0:0", "", "", "")


def test_verdict_judges_work_jobs_not_the_finishing_job():
    assert outcome([_status("data", "COMPLETED"), _status("finish", "RUNNING")]) == 0
    assert outcome([_status("data", "COMPLETED"), _status("train", "RUNNING")]) == 3
    assert outcome([_status("data", "FAILED"), _status("train", "PENDING")]) == 1
    assert outcome([_status("data", "TIMEOUT"), _status("finish", "COMPLETED")]) == 1


def test_ray_data_script_starts_a_worker_on_every_other_node(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    fakes = {
        # a Ray node blocks until stopped; the node wait gives the background sruns time to log
        "python": 'echo "python $*" >> "$REC/calls"; [[ "$*" == *"--block"* ]] && exec sleep 30\n'
        '[[ "$*" == *"ray_cluster wait"* ]] && sleep 0.5; exit 0',
        "srun": 'echo "srun $*" >> "$REC/calls"; '
        'while [ "$1" != python ]; do shift; done; exec "$@"',
        "scontrol": "echo node1; echo node2; echo node3",
        "hostname": "echo 10.0.0.1 10.0.0.2",
    }
    bin_dir = write_fakes(tmp_path / "bin", fakes)
    job = RayJob(["python", "-c", "driver"], run_dir=str(tmp_path / "run"), workdir=str(tmp_path))
    script = render_sbatch(job, ClusterConfig(nodes=3, cpus_per_task=4, python="python"))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REC": str(rec),
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_CPUS_PER_TASK": "4",
    }
    proc = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    calls = (rec / "calls").read_text().splitlines()
    head = [c for c in calls if "--head" in c and c.startswith("python")]
    assert len(head) == 1 and "--node-ip-address=10.0.0.1" in head[0] and "--port=30007" in head[0]
    workers = [c for c in calls if c.startswith("srun")]
    assert sorted(w.split("-w ")[1].split()[0] for w in workers) == ["node2", "node3"]
    assert all("--address=10.0.0.1:30007" in w and "--num-cpus=4" in w for w in workers)
    waits = [c for c in calls if "slurm.ray_cluster wait" in c]
    assert waits == [
        "python -m slurm.ray_cluster wait 10.0.0.1:30007 1 300",
        "python -m slurm.ray_cluster wait 10.0.0.1:30007 3 300",
    ]
    driver = calls.index("python -c driver")
    assert driver > calls.index(waits[-1])  # the driver starts once every node has joined
    assert "[slurm] stopping the Ray cluster" in proc.stdout
