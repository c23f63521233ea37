"""Train where a cluster config says, for a program that runs the trainer as a process (the
pipeline's train kind knows this command line, not the launch layer's code):

    python -m slurm.train CLUSTER --run-dir DIR [--timeout-s S] -- OVERRIDES   # a Slurm job
    python -m slurm.train CLUSTER --step [--module M] -- OVERRIDES   # srun step of this job
    python -m slurm.train CLUSTER --world-size                       # print its world size

CLUSTER is a name in conf/cluster/ or a YAML file. A job: submitted, waited for, exit 0 when it
COMPLETED, else 1 with the state and log on stderr. A step: prints `launch: srun ...` and
becomes that srun (torchrun per node with c10d rendezvous on the allocation's first node).
The environment (MLFLOW_RUN_ID, PRETRAIN_PROGRESS_FILE, ...) reaches the trainer either way
(sbatch exports the submitting environment).
"""

from __future__ import annotations

import argparse
import os
import sys

from slurm.config import load_cluster
from slurm.jobs import SlurmError, launch_training
from slurm.step import train_step


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    overrides: list[str] = []
    if "--" in argv:
        argv, overrides = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="python -m slurm.train", description=__doc__)
    parser.add_argument("cluster", help="a name in conf/cluster/ or a YAML file")
    parser.add_argument("--run-dir", help="job: where the script and logs go")
    parser.add_argument("--timeout-s", type=float, default=None, help="job: stop waiting after")
    parser.add_argument("--step", action="store_true", help="an srun step of the current job")
    parser.add_argument("--module", default="trainer", help="step: the trainer module")
    parser.add_argument("--world-size", action="store_true", help="print the world size")
    args = parser.parse_args(argv)
    if not (args.step or args.world_size or args.run_dir):
        parser.error("give --run-dir (a job), --step or --world-size")
    return args, overrides


def main(argv: list[str]) -> int:
    args, overrides = _parse(argv)
    try:
        cluster = load_cluster(args.cluster)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.world_size:
        print(cluster.world_size)
        return 0
    if args.step:
        try:
            cmd, extra = train_step(cluster, args.module, overrides)
        except RuntimeError as err:  # not inside a Slurm job
            print(f"error: {err}", file=sys.stderr)
            return 2
        print("launch:", " ".join(cmd), flush=True)
        os.execvpe(cmd[0], cmd, {**os.environ, **extra})
    try:
        result = launch_training(overrides, cluster, args.run_dir, timeout_s=args.timeout_s)
    except SlurmError as err:
        print(f"error: slurm training job failed: {err}", file=sys.stderr)
        return 1
    print(f"slurm job {result.job_id} ended {result.state} after {result.elapsed_s:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
