"""`python -m slurm.ray_cluster wait ADDRESS NODES TIMEOUT_S`: block until a Ray cluster has
NODES alive nodes (used by data jobs after starting the head and the workers)."""

from __future__ import annotations

import sys
import time


def alive_nodes(address: str) -> int:
    """Number of alive nodes of the cluster at `address` (connects a short-lived driver)."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        return sum(1 for node in ray.nodes() if node.get("Alive"))
    finally:
        ray.shutdown()


def wait_for_nodes(address: str, nodes: int, timeout_s: float, poll_s: float = 2.0) -> int:
    """Poll until `nodes` nodes are alive; raises TimeoutError naming how many joined."""
    deadline = time.monotonic() + timeout_s
    seen, last_error = 0, ""
    while time.monotonic() < deadline:
        try:
            seen = alive_nodes(address)
            if seen >= nodes:
                return seen
        except (ConnectionError, RuntimeError) as err:  # head not up yet
            last_error = f" (last error: {str(err).splitlines()[0]})"
        time.sleep(poll_s)
    raise TimeoutError(
        f"Ray cluster at {address}: {seen} of {nodes} node(s) alive after {timeout_s:.0f} s"
        f"{last_error}"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "wait":
        print("usage: python -m slurm.ray_cluster wait ADDRESS NODES TIMEOUT_S", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        seen = wait_for_nodes(argv[1], int(argv[2]), float(argv[3]))
    except TimeoutError as err:
        print(f"[slurm] error: {err}", file=sys.stderr)
        return 1
    print(
        f"[slurm] Ray cluster {argv[1]}: {seen} node(s) alive after "
        f"{time.monotonic() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
