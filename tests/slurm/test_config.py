from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from slurm.config import ClusterConfig, CommandJob, load_cluster


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "cluster.nodes must be >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node must be >= 0"),
        ({"time": "ten minutes"}, "is not MM, HH:MM:SS"),
        ({"scheduler": "k8s"}, "scheduler must be one of"),
        ({"job_name": "a b"}, "job_name"),
        ({"extra_sbatch": ["constraint=h100"]}, "must be one `--option"),
        ({"scheduler": "local", "nodes": 2}, "nodes must be 1"),
        ({"master_port": 80}, "master_port"),
    ],
)
def test_bad_cluster_values_fail_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**kwargs)


@pytest.mark.parametrize("time", ["30", "00:30:00", "2-00:00:00", "1:00"])
def test_slurm_time_formats_are_accepted(time):
    assert ClusterConfig(time=time).time == time


def test_processes_per_node_default_to_gpus_then_cpus():
    assert ClusterConfig(gpus_per_node=8, cpus_per_task=96).nproc_per_node == 8
    assert ClusterConfig(cpus_per_task=4).nproc_per_node == 4
    cfg = ClusterConfig(nodes=3, gpus_per_node=8, procs_per_node=4)
    assert (cfg.nproc_per_node, cfg.world_size) == (4, 12)


def test_load_cluster_by_name_mapping_and_instance():
    h100 = load_cluster("slurm_h100")
    assert (h100.gpus_per_node, h100.nodes, h100.world_size) == (8, 16, 128)
    assert load_cluster({"partition": "p", "nodes": 2}).nodes == 2
    assert load_cluster(OmegaConf.create({"time": "5"})).time == "5"
    assert load_cluster(h100) is h100


def test_load_cluster_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="unknown cluster 'nope'; known: .*slurm_dev"):
        load_cluster("nope")
    with pytest.raises(Exception, match="gpus"):
        load_cluster({"gpus": 8})
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        load_cluster({"nodes": 0})


def test_command_job_needs_a_command():
    with pytest.raises(ValueError, match="empty"):
        CommandJob(command=[], run_dir="/tmp")
