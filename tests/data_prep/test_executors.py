"""Executors chosen by config: Ray gives the same result as local."""

from __future__ import annotations

import pytest

from data_prep import run_stage


def test_ray_executor_matches_local(ray_session, planted, tmp_path, docs_of):
    # 3 bands, not 14: each band is a Ray task of the buckets and index phases, and a Ray task
    # costs a worker start (~2 s on 2 cores); the comparison holds for any band count
    args = [f"input={planted.raw}/planted_copies.jsonl", "progress=false", "minhash.num_buckets=3"]
    local = run_stage("minhash_dedup", [*args, f"output={tmp_path / 'local'}"])
    assert sum(local["removed"].values()) > 0  # near-duplicates were planted: not vacuous
    on_ray = run_stage(
        "minhash_dedup", [*args, f"output={tmp_path / 'ray'}", "executor=ray", "executor.tasks=1"]
    )
    assert (
        on_ray["removed"] == local["removed"]
        and on_ray["documents_kept"] == local["documents_kept"]
    )
    assert {d["id"] for d in docs_of(tmp_path / "ray")} == {
        d["id"] for d in docs_of(tmp_path / "local")
    }


@pytest.mark.parametrize("stage", ["quality_model", "pii"])
def test_new_stages_on_ray_match_local(ray_session, stage, planted, corpus_dir, tmp_path, docs_of):
    args = [
        f"input={planted.raw}/planted_copies.jsonl",
        "progress=false",
        f"quality_model.positives=[{corpus_dir}/en_docs.jsonl]",
    ]
    local = run_stage(stage, [*args, f"output={tmp_path / 'local'}"])
    on_ray = run_stage(stage, [*args, f"output={tmp_path / 'ray'}", "executor=ray"])
    for key in ("documents_in", "documents_kept", "removed", "counts"):
        assert on_ray[key] == local[key], key
    assert docs_of(tmp_path / "ray") == docs_of(tmp_path / "local")


@pytest.mark.usefixtures("dev_cluster")
def test_new_stages_on_datatrove_slurm_executor_match_local(planted, corpus_dir, tmp_path, docs_of):
    """executor=slurm: each phase is a Slurm job array on the dev cluster; quality_model's
    training runs in the driver between its two phases."""
    args = [
        f"input={planted.raw}/planted_copies.jsonl",
        "progress=false",
        f"quality_model.positives=[{corpus_dir}/en_docs.jsonl]",
    ]
    slurm = ["executor=slurm", "executor.partition=debug", "executor.poll_s=0.5"]
    for stage in ("quality_model", "pii"):
        local = run_stage(stage, [*args, f"output={tmp_path / stage / 'local'}"])
        on_slurm = run_stage(stage, [*args, f"output={tmp_path / stage / 'slurm'}", *slurm])
        for key in ("documents_in", "documents_kept", "removed", "counts"):
            assert on_slurm[key] == local[key], (stage, key)
        assert docs_of(tmp_path / stage / "slurm") == docs_of(tmp_path / stage / "local")
