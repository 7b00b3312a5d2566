"""Set-up of a grid's child processes (the workers, the plot helper): how they start
without the parent's main script, ignore Ctrl-C, keep their temporary files, die with
their parent, and start TensorFlow quietly."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import types
from typing import Iterator

from cvlib.environment import configure_process
from cvlib.errors import CvlibError

# Optional packages that Keras imports at its start when they are installed, for what a
# worker never does (image-gallery plots, scikit-learn wrappers, notebook detection):
# hidden during the import, they no longer cost about 1.5 CPU seconds.
UNUSED_BY_WORKERS = ("matplotlib", "sklearn", "IPython")


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Start spawned processes without re-importing this process's ``__main__``.

    A spawned child imports the parent's main script again, which for a script that
    imports TensorFlow costs seconds of CPU beside the training; cvlib's children
    need nothing from it (their targets live in cvlib). A stand-in with neither
    ``__file__`` nor ``__spec__`` tells multiprocessing there is nothing to import.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def hidden_modules(names: tuple[str, ...]) -> Iterator[None]:
    """Make ``import name`` raise ImportError inside the block, for each named package
    not imported yet (as if it were not installed); importable again afterwards."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # Python's own marker for "import of this fails"
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def set_up_child(scratch: str) -> None:
    """Set up a child process of the grid (a worker, the plot helper).

    - Ctrl-C reaches the whole process group; the parent decides what happens.
    - Temporary files go to the child's own folder, which its parent removes when the
      child has ended: a child ended by a signal runs no atexit handlers, and those
      are what delete TensorFlow's autograph sources (one file per traced function,
      dozens a grid) and the like.
    - The child ends when the process that started it dies, removing that folder
      first: a runner killed with SIGKILL cannot stop its children, which would
      otherwise wait on their queues forever (and a worker's fork server, which lives
      as long as any worker does, with them).

    Args:
        scratch: The child's temporary folder, made by its parent.
    """
    configure_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TMPDIR"] = scratch  # for native code and any child process
    tempfile.tempdir = scratch
    # Not os.getppid(): a worker's parent is the fork server.
    starter = multiprocessing.parent_process()

    def watch() -> None:
        starter.join()  # returns when its end of a pipe closes, however it ended
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def notices_held_back(shown_on_failure: bool = True) -> Iterator[None]:
    """Hold back what native code writes to stderr (TensorFlow's C++ start-up notices:
    oneDNN, CPU instructions, no CUDA driver); show it if the block raises and
    ``shown_on_failure``."""
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as notices:
        os.dup2(notices.fileno(), 2)  # TensorFlow's C++ logging writes to fd 2
        try:
            yield
        except BaseException:
            os.dup2(saved_stderr, 2)
            if shown_on_failure:
                notices.seek(0)
                os.write(2, notices.read())
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)


def import_tensorflow() -> types.ModuleType:
    """Import TensorFlow (and all of Keras with it) without the packages workers never use.

    Returns:
        The tensorflow module.
    """
    with hidden_modules(UNUSED_BY_WORKERS):
        import tensorflow
    return tensorflow


def preload_tensorflow() -> None:
    """Import TensorFlow quietly in the workers' fork server. If that fails, each worker
    imports it again and shows why."""
    configure_process()
    with contextlib.suppress(Exception), notices_held_back(shown_on_failure=False):
        import_tensorflow()


def start_tensorflow_quietly(threads: int | None = None, gpu_memory_growth: bool = False,
                             deterministic: bool = False) -> None:
    """Import TensorFlow (unless done already), give it this process's threads and start
    its runtime, with its start-up notices held back and shown only if that fails.

    Every process would print the same notices (oneDNN, CPU instructions, no CUDA
    driver), which only clutter a grid's output.

    Args:
        threads: Intra-op threads (a worker's share of the cores); None keeps
            TensorFlow's own choice (the command's process training alone).
        gpu_memory_growth: Take GPU memory as needed instead of nearly all of it at
            once, so that processes that share a GPU fit.
        deterministic: Turn on TensorFlow's op determinism.

    Raises:
        CvlibError: the runtime started already with other thread counts (TensorFlow
            cannot change them then).
    """
    with notices_held_back():
        tf = import_tensorflow()
        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                raise CvlibError(
                    f"TensorFlow in this process started with "
                    f"{tf.config.threading.get_intra_op_parallelism_threads() or 'its default'}"
                    f" intra-op threads and cannot train with {threads}; run the command "
                    f"in a new process") from None
        if deterministic:
            tf.config.experimental.enable_op_determinism()
        if gpu_memory_growth:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.list_logical_devices()  # starts the runtime, which looks for GPUs
