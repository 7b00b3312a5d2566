"""What a cell's figures depend on besides its settings, as tags for its run: the machine
and TensorFlow's configuration where it trained (gathered by the cell's process, a
worker or a Ray actor), its data's checksum, and the git commit of the grid file
(gathered by the command, which has the file).

Float sums come out in another order with another thread count, another set of vector
instructions (oneDNN picks its kernels by them) or oneDNN on or off: the same cell
then gives other figures in their last digits.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from cvlib.data import Dataset
from cvlib.engine.hosts import usable_cores
from cvlib.tracking.schema import (
    CPU_FLAGS,
    CPU_FLAGS_TAG,
    CPU_TAG,
    DATA_CHECKSUM_TAG,
    DETERMINISTIC_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    INTER_OP_THREADS_TAG,
    INTRA_OP_THREADS_TAG,
    ONEDNN_TAG,
)

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
CPUINFO = "/proc/cpuinfo"
GIT_TIMEOUT_SECONDS = 10


@functools.cache
def cpu_facts(cpuinfo: str = CPUINFO) -> dict[str, str]:
    """The CPU's model and which of schema.CPU_FLAGS it has (Linux's /proc/cpuinfo; the
    platform's processor name and no flags elsewhere).

    Args:
        cpuinfo: The file to read.

    Returns:
        Tags: CPU_TAG and CPU_FLAGS_TAG (space-separated, or "none").
    """
    model, flags = "", set()
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return {CPU_TAG: model or platform.processor() or platform.machine() or "unknown",
            CPU_FLAGS_TAG: " ".join(present) or "none"}


def tensorflow_facts() -> dict[str, str]:
    """How this process's TensorFlow computes: its thread counts (its own default, 0,
    is one thread per usable core), oneDNN on or off and who chose it, and op
    determinism. Call it once TensorFlow is imported.

    Returns:
        Tags: INTRA_OP_THREADS_TAG, INTER_OP_THREADS_TAG, ONEDNN_TAG, DETERMINISTIC_TAG.
    """
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled
    from tensorflow.python.util import _pywrap_util_port

    threads = tf.config.threading
    chosen = os.environ.get(ONEDNN_ENV)
    onednn = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    return {
        INTRA_OP_THREADS_TAG: str(threads.get_intra_op_parallelism_threads() or usable_cores()),
        INTER_OP_THREADS_TAG: str(threads.get_inter_op_parallelism_threads() or usable_cores()),
        ONEDNN_TAG: f"{onednn} ({ONEDNN_ENV}={chosen})" if chosen is not None
        else f"{onednn} (TensorFlow's default)",
        DETERMINISTIC_TAG: "on" if is_op_determinism_enabled() else "off"}


def cell_environment(dataset: Dataset) -> dict[str, str]:
    """Everything a cell's process knows that its figures depend on, besides its settings.

    Args:
        dataset: The cell's prepared data.

    Returns:
        Tags: cpu_facts, tensorflow_facts and DATA_CHECKSUM_TAG.
    """
    return {**cpu_facts(), **tensorflow_facts(), DATA_CHECKSUM_TAG: dataset.checksum}


def _git(folder: Path, *arguments: str) -> str | None:
    """A git command's output in a folder; None when git or the repository is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *arguments], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def grid_file_commit(path: str | os.PathLike) -> dict[str, str]:
    """The git commit of the repository that holds a grid file, and whether what was
    run differs from it: a tracked file changed, or the grid file itself not committed
    as it is.

    Args:
        path: The grid file.

    Returns:
        Tags: GIT_COMMIT_TAG and GIT_DIRTY_TAG ("true" or "false"); none outside a
        repository (or without git).
    """
    path = Path(path).resolve()
    commit = _git(path.parent, "rev-parse", "HEAD")
    if commit is None:
        return {}
    changed = _git(path.parent, "status", "--porcelain", "--untracked-files=no")
    grid_file = _git(path.parent, "status", "--porcelain", "--", path.name)
    dirty = bool(changed and changed.strip()) or bool(grid_file and grid_file.strip())
    return {GIT_COMMIT_TAG: commit.strip(), GIT_DIRTY_TAG: str(dirty).lower()}
