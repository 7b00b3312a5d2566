"""The Ray cluster a command's cells train on: connecting to it (or starting a local Ray
instance for the command), checking that one of its nodes can hold a cell, and the params
that describe it on the parent run.

Every problem found here (no such address, a cluster too small for one cell) raises a
:class:`~cvlib.errors.CvlibError` before the store is touched: one line, exit status 2.
Ray is imported only once a command asks for it.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cvlib.engine.child import notices_held_back
from cvlib.engine.hosts import usable_cores
from cvlib.errors import CvlibError
from cvlib.tracking.schema import (
    BACKEND_PARAM,
    RAY_ADDRESS_PARAM,
    RAY_BACKEND,
    RAY_CELL_RESOURCES_PARAM,
    RAY_RESOURCES_PARAM,
)
from cvlib.tracking.uris import without_credentials

ADDRESS_ENV = "RAY_ADDRESS"
# Addresses that ray.init resolves itself rather than a host and port.
SPECIAL_ADDRESSES = ("auto", "local")
# A local instance's object store: CIFAR-10's raw arrays (184 MB), the halving
# checkpoints and the events in flight, instead of Ray's default of 30% of the RAM.
LOCAL_OBJECT_STORE_BYTES = 2**30
# A dead node is noticed in about 2.5 s instead of about 12 s (a raylet killed with
# SIGKILL, measured with Ray 2.60), so that its cell is retried sooner.
FAST_HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
# A Ray instance keeps its Unix sockets under its temporary folder, and a socket's path
# may not exceed 107 bytes: under a long $TMPDIR (a test's, a batch job's) a local
# instance fails to start, so it then goes to /tmp. Ray's own part of the path takes
# about 70 bytes.
RAY_TEMP_ENV = "RAY_TMPDIR"
LONGEST_TEMP_FOLDER = 35
# Seconds to wait for an address's port to answer before saying it cannot be reached
# (ray.init itself retries for about 35 s and prints native warnings meanwhile).
CONNECT_TIMEOUT_SECONDS = 5


def keep_ray_sockets_short() -> None:
    """Have Ray instances started by this process keep their files under /tmp when the
    temporary folder's path is too long for their sockets (see LONGEST_TEMP_FOLDER)."""
    if RAY_TEMP_ENV not in os.environ and len(tempfile.gettempdir()) > LONGEST_TEMP_FOLDER:
        os.environ[RAY_TEMP_ENV] = "/tmp"


@dataclass(frozen=True)
class RayOptions:
    """How a command's cells train on Ray (``--ray`` and its options)."""

    # What ray.init(address=...) takes (auto, host:port, ray://host:10001); None:
    # $RAY_ADDRESS if set, else a local Ray instance started for the command.
    address: str | None = None
    # CPU cores per cell (each actor's TensorFlow gets as many intra-op threads).
    cpus_per_cell: int = 1
    # GPUs per cell, fractions allowed (0.25: 4 cells share one); None: 1 on a cluster
    # with GPUs, else 0.
    gpus_per_cell: float | None = None
    # Cells trained at once at most (--workers N); None: as many as the cluster holds.
    max_cells: int | None = None
    # Stream what the actors print (TensorFlow's log) to the command's output (--verbose);
    # else it stays in Ray's session logs, like the lines a local worker holds back.
    show_output: bool = False


def _parts(address: str) -> urllib.parse.SplitResult:
    """An address split as a URL (host:port alone has no scheme)."""
    return urllib.parse.urlsplit(address if "://" in address else f"//{address}")


def _host_and_port(address: str) -> tuple[str, int] | None:
    """The host and port an address names (None for auto, local, or no port)."""
    if address in SPECIAL_ADDRESSES:
        return None
    parts = _parts(address)
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


def _check_reachable(address: str) -> None:
    """Raise CvlibError at once when an address's port does not answer."""
    target = _host_and_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise CvlibError(f"cannot reach the Ray cluster at {without_credentials(address)} ({reason}); "
                         f"start one with 'ray start --head', or give its address to "
                         f"--ray") from None


def _counted(amount: float, noun: str) -> str:
    return f"{amount:g} {noun}{'' if amount == 1 else 's'}"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


@dataclass(frozen=True)
class NodeCapacity:
    """What one alive node of the cluster offers."""

    node_id: str
    cpus: float
    gpus: float


class RayCluster:
    """The cluster of one command: connected by :meth:`connect`, left by :meth:`shutdown`
    (which stops a local instance that :meth:`connect` started).

    Args:
        options: The command's Ray options.
    """

    def __init__(self, options: RayOptions):
        self.options = options
        self.address = options.address or os.environ.get(ADDRESS_ENV) or None
        self.started_here = self.address is None
        self.gpus_per_cell = options.gpus_per_cell or 0.0
        self.slots = 0
        self._resources: dict[str, float] = {}
        self._nodes = 0

    def connect(self) -> None:
        """Connect to the cluster (or start a local instance), and size the cell slots.

        Raises:
            CvlibError: for an address that cannot be reached or refuses, or a cluster
                on which no node can hold one cell.
        """
        if self.address is not None:
            _check_reachable(self.address)
        import ray

        try:
            with notices_held_back():  # Ray's native connection warnings
                if self.started_here:
                    keep_ray_sockets_short()
                    ray.init(address="local", num_cpus=usable_cores(),
                             object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                             include_dashboard=False,
                             log_to_driver=self.options.show_output,
                             logging_level="ERROR", _system_config=FAST_HEALTH_CHECK)
                else:
                    ray.init(address=self.address, log_to_driver=self.options.show_output,
                             logging_level="ERROR")
        except Exception as error:
            where = "a local Ray instance" if self.started_here else \
                f"the Ray cluster at {without_credentials(self.address)}"
            raise CvlibError(f"cannot start {where}: {_first_line(error)}") from None
        try:
            self._size(self._alive_nodes(ray))
        except CvlibError:
            self.shutdown()
            raise

    def _alive_nodes(self, ray) -> list[NodeCapacity]:
        self._resources = ray.cluster_resources()
        nodes = [NodeCapacity(node["NodeID"], node["Resources"].get("CPU", 0.0),
                              node["Resources"].get("GPU", 0.0))
                 for node in ray.nodes() if node.get("Alive")]
        self._nodes = len(nodes)
        return nodes

    def _size(self, nodes: list[NodeCapacity]) -> None:
        """Set the GPUs per cell and the number of cell slots; raise if none fits."""
        cpus_per_cell = self.options.cpus_per_cell
        if self.options.gpus_per_cell is None:
            self.gpus_per_cell = 1.0 if any(node.gpus >= 1 for node in nodes) else 0.0

        def cells_on(node: NodeCapacity) -> int:
            fit = math.floor(node.cpus / cpus_per_cell + 1e-9)
            if self.gpus_per_cell:
                fit = min(fit, math.floor(node.gpus / self.gpus_per_cell + 1e-9))
            return fit

        self.slots = sum(cells_on(node) for node in nodes)
        if self.slots < 1:
            where = "this machine's local Ray instance" if self.started_here else \
                f"the Ray cluster at {without_credentials(self.address)}"
            largest = max(nodes, key=lambda node: (node.cpus, node.gpus), default=None)
            offer = "no alive node" if largest is None else \
                f"its largest node has {_counted(largest.cpus, 'CPU')} and " \
                f"{_counted(largest.gpus, 'GPU')}"
            raise CvlibError(f"no node of {where} can hold a cell of {self.cell_resources()}: "
                             f"{offer}; lower --cpus-per-cell or --gpus-per-cell")
        if self.options.max_cells is not None:
            self.slots = min(self.slots, self.options.max_cells)

    def cell_resources(self) -> str:
        """What one cell asks of its node, in words."""
        return f"{_counted(self.options.cpus_per_cell, 'CPU')} and " \
               f"{_counted(self.gpus_per_cell, 'GPU')}"

    def actor_options(self) -> dict[str, Any]:
        """The Ray options of one cell slot's actor."""
        return {"num_cpus": self.options.cpus_per_cell, "num_gpus": self.gpus_per_cell,
                "max_restarts": 0, "scheduling_strategy": "SPREAD"}

    def params(self) -> dict[str, str]:
        """The parent run's params that describe the cluster."""
        resources = self._resources
        return {BACKEND_PARAM: RAY_BACKEND,
                RAY_ADDRESS_PARAM: "local" if self.started_here else without_credentials(self.address),
                RAY_RESOURCES_PARAM: (f"{_counted(self._nodes, 'node')}, "
                                      f"{_counted(resources.get('CPU', 0), 'CPU')}, "
                                      f"{_counted(resources.get('GPU', 0), 'GPU')}"),
                RAY_CELL_RESOURCES_PARAM: self.cell_resources()}

    def shutdown(self) -> None:
        """Disconnect, and stop the local instance if this command started it."""
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
