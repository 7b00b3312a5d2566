r"""cvlib on Ray against cvlib's local worker processes, on the same two cores: the 12-cell
grid of vs_kerastuner.py by `cvlib run --ray ADDRESS` on a local two-node Ray cluster (a
head without CPUs and two 1-CPU worker nodes, ray.cluster_utils.Cluster) and by
`cvlib run --workers 2`, each a fresh process into a fresh store, rounds interleaved.

    python benchmarks/ray_overhead.py [--rounds 3] [--record]
    python benchmarks/ray_overhead.py --rounds 0            # the local Ray instance only
    python benchmarks/ray_overhead.py --rounds 1 --train-size 500 --activations relu \
        --bn none --idle-seconds 2                                       # smallest

Prints:
- the median wall-time ratio Ray / local workers (goal: at most 1.15);
- Ray's median dispatch time per cell, as each Ray run records it on its parent run
  (``ray.dispatch_s``: from hand-out to the actor's start, and from its end to the
  driver; goal: at most 0.3 s);
- what a local Ray instance as `cvlib run --ray` starts it costs: start-up seconds, its
  processes, their memory, and their CPU use while idle (--idle-seconds).
Needs real CIFAR-10 ($CVLIB_DATA_DIR).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

from record import Recorder, add_option
from ui_startup import process_tree, rss_mib
from vs_kerastuner import (
    ACTIVATIONS,
    BN_PLACEMENTS,
    cell_count,
    grid_file,
    grid_settings,
    time_command,
    tree_cpu_seconds,
)

NODE_STORE_BYTES = 400 * 2**20  # CIFAR-10's raw arrays are 184 MB

# Run in a fresh process: start Ray as `cvlib run --ray` does, then measure it.
STARTUP_PROBE = textwrap.dedent("""\
    import os, sys, time
    started = time.perf_counter()
    from cvlib.engine.ray_cluster import RayCluster, RayOptions
    cluster = RayCluster(RayOptions())
    cluster.connect()
    print(time.perf_counter() - started, flush=True)
    sys.stdin.readline()  # measured from outside meanwhile
    cluster.shutdown()
    """)


def measure_startup(idle_seconds: float) -> tuple[float, int, int, float]:
    """Start a local Ray instance in a fresh process as cvlib does.

    Returns:
        Start-up seconds (import and ray.init), the processes Ray started, their
        resident memory in bytes, and their CPU use while idle (fraction of a core).
    """
    probe = subprocess.Popen([sys.executable, "-c", STARTUP_PROBE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answer = probe.stdout.readline()
    if not answer:
        raise RuntimeError(f"the local Ray instance did not start: {probe.communicate()[1]}")
    seconds = float(answer)
    time.sleep(1)  # its processes settle
    pids = process_tree(probe.pid)[1:]  # Ray's, without the probe itself
    before: dict[int, float] = {}
    tree_cpu_seconds(probe.pid, before)
    time.sleep(idle_seconds)
    after: dict[int, float] = {}
    tree_cpu_seconds(probe.pid, after)
    idle = sum(after[pid] - before.get(pid, 0.0) for pid in pids if pid in after) / idle_seconds
    memory = rss_mib(pids) * 2**20
    probe.communicate("\n", timeout=60)
    return seconds, len(pids), memory, idle


def dispatch_seconds(uri: str) -> float:
    """The Ray run's median dispatch time per cell, from its parent run."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.schema import RAY_DISPATCH_METRIC

    client = MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    values = [run.data.metrics[RAY_DISPATCH_METRIC]
              for run in client.search_runs(experiment_ids)
              if RAY_DISPATCH_METRIC in run.data.metrics]
    assert len(values) == 1, values
    return values[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of both sides (0: the local instance only)")
    parser.add_argument("--train-size", type=int, default=4000, help="training images")
    parser.add_argument("--activations", nargs="+", default=ACTIVATIONS)
    parser.add_argument("--bn", nargs="+", choices=BN_PLACEMENTS, default=BN_PLACEMENTS)
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="how long the idle local Ray instance is watched")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)

    seconds, processes, memory, idle = measure_startup(args.idle_seconds)
    print(f"local Ray instance (cvlib run --ray): start-up {seconds:.1f} s, {processes} "
          f"processes, {memory / 2**30:.2f} GiB resident, {idle:.1%} of a core idle",
          flush=True)
    recorder.add("local Ray instance: start-up (s)", "", f"{seconds:.1f}")
    recorder.add("local Ray instance: resident memory (GiB)", "", f"{memory / 2**30:.2f}")
    recorder.add("local Ray instance: CPU while idle (share of a core)", "", f"{idle:.3f}")
    if args.rounds < 1:
        return

    from ray.cluster_utils import Cluster

    from cvlib.engine.ray_cluster import FAST_HEALTH_CHECK, keep_ray_sockets_short

    keep_ray_sockets_short()

    grid = grid_settings(args.train_size, args.activations, args.bn)
    path = grid_file(grid)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": NODE_STORE_BYTES, "include_dashboard": False,
        "_system_config": FAST_HEALTH_CHECK})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE_BYTES)
        cluster.wait_for_nodes()
        walls: dict[str, list[float]] = {"ray": [], "local": []}
        dispatch: list[float] = []
        for round_index in range(args.rounds):
            for side in ("local", "ray") if round_index % 2 == 0 else ("ray", "local"):
                uri = f"sqlite:///{tempfile.mkdtemp(prefix='cvlib-ray-bench-')}/mlflow.db"
                how = ["--ray", cluster.address] if side == "ray" else ["--workers", "2"]
                walls[side].append(time_command([sys.executable, "-m", "cvlib", "run", str(path),
                                                 "--tracking-uri", uri, *how])[0])
                print(f"round {round_index + 1} {side}: {walls[side][-1]:.1f} s", flush=True)
                if side == "ray":
                    dispatch.append(dispatch_seconds(uri))
    finally:
        cluster.shutdown()
    ratio = statistics.median(walls["ray"]) / statistics.median(walls["local"])
    figure = f"{ratio:.3f}"
    print(f"{cell_count(grid)}-cell grid, --ray on 2 one-CPU nodes / --workers 2 (medians): "
          f"{figure} (goal: at most 1.15)")
    recorder.add("grid wall time: --ray on a 2-node local cluster / --workers 2", "<= 1.15",
                 figure)
    per_cell = f"{statistics.median(dispatch):.3f}"
    print(f"Ray dispatch per cell (median of the runs' medians): {per_cell} s "
          f"(goal: at most 0.3 s)")
    recorder.add("Ray dispatch per cell (s)", "<= 0.3", per_cell)


if __name__ == "__main__":
    main()
