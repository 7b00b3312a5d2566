"""What the machine offers a grid: usable CPU cores, available memory, an NVIDIA GPU;
and how many worker processes ``--workers auto`` picks from them."""
from __future__ import annotations

import glob
import os

# Memory one worker may take: TensorFlow, a model, CIFAR-10 and its preprocessed splits
# (1.8 GB resident measured at 15,000 training images; all 50,000 add about 0.5 GB).
WORKER_MEMORY_BYTES = 3 * 2**30


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def nvidia_gpu_visible() -> bool:
    """Whether TensorFlow would see an NVIDIA GPU (checked without importing it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def auto_workers(cells: int | None, cores: int | None = None, memory: int | None = None,
                 gpu: bool | None = None) -> int:
    """How many worker processes ``cvlib run`` uses by default: one per usable CPU core
    (two one-thread workers trained 1.24x the images per second of one two-thread
    process on 2 cores), at most one per cell and one per WORKER_MEMORY_BYTES of
    available memory. One, in the calling process, with an NVIDIA GPU: TensorFlow takes
    nearly all of a GPU's memory in the first process that uses it.

    Args:
        cells: Cells to train (None: not known in advance, no bound).
        cores: Usable CPU cores (default: probed).
        memory: Available memory in bytes (default: probed; unknown sets no limit).
        gpu: Whether an NVIDIA GPU is visible (default: probed).

    Returns:
        The number of workers, at least 1.
    """
    gpu = nvidia_gpu_visible() if gpu is None else gpu
    cores = usable_cores() if cores is None else cores
    memory = available_memory() if memory is None else memory
    if gpu:
        return 1
    by_memory = cores if memory is None else memory // WORKER_MEMORY_BYTES
    return max(1, min(cores, cores if cells is None else cells, by_memory))
