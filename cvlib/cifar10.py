"""CIFAR-10 read safely from the official files.

Sources, in order: a folder (``--data-dir`` or ``CVLIB_DATA_DIR``) holding
``cifar-10-batches-py/`` or the official ``cifar-10-python.tar.gz``; else
``keras.datasets.cifar10.load_data()``, which downloads once and caches.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from cvlib.errors import CvlibError

DATA_DIR_ENV = "CVLIB_DATA_DIR"
BATCH_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")


class DataError(CvlibError):
    """CIFAR-10 could not be found or read; the message says what to do."""


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the CIFAR-10 allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes, str, ints
    and numpy arrays. Any other global (``os.system``, say) is refused before it is
    looked up, so a doctored batch file cannot run code."""

    ALLOWED_GLOBALS = frozenset({
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        # Python 3 writes bytes at protocols 0-2 as _codecs.encode(text, "latin1"):
        # a pure function, harmless to admit.
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED_GLOBALS:
            raise RefusedGlobal(
                f"refused to load global {module}.{name}: CIFAR-10 batch files hold "
                f"only dicts, lists, bytes, strings, ints and numpy arrays")
        return super().find_class(module, name)


def restricted_loads(payload: bytes) -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler` (``bytes`` keys, as in CIFAR)."""
    return RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


def _decode_batch(payload: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn one batch file's bytes into uint8 images (one CHW row each) and int64 labels."""
    try:
        batch = restricted_loads(payload)
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32 * 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except RefusedGlobal as error:
        raise DataError(f"{source}: {error}") from None
    except Exception as error:  # truncated or corrupt files fail in many ways
        raise DataError(f"{source} is truncated or corrupt ({type(error).__name__}: "
                        f"{error}); replace it with a fresh copy of the official "
                        f"{ARCHIVE_NAME}") from None
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    return images, labels


class Cifar10Images:
    """CIFAR-10 images as its batch files store them, three channel planes per image,
    converted to uint8 NHWC only when indexed.

    A grid trains on a few thousand images; converting all 60,000 on load took about
    half a CPU second and 180 MB in every process that loaded them (each worker, and
    the runner's data check).

    Args:
        planes: One (images, 3, 1024) uint8 array per batch file, in order.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, planes: list[np.ndarray]):
        self.planes = planes
        self._starts = np.cumsum([0] + [len(part) for part in planes])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 32, 32, 3)

    def __getitem__(self, index) -> np.ndarray:
        """The images at ``index`` (an int, a slice or an index array), as uint8 NHWC.

        Copied a channel at a time: numpy copies a transposed uint8 view about 2.5x
        slower.
        """
        positions = np.arange(len(self))[index]
        flat = np.atleast_1d(positions)
        images = np.empty((len(flat), 32 * 32, 3), np.uint8)
        part_of = np.searchsorted(self._starts, flat, side="right") - 1
        for part in np.unique(part_of):
            chosen = part_of == part
            planes = self.planes[part][flat[chosen] - self._starts[part]]
            for channel in range(3):
                images[chosen, :, channel] = planes[:, channel]
        images = images.reshape(len(flat), 32, 32, 3)
        return images[0] if np.ndim(positions) == 0 else images

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def _read_folder(folder: Path) -> dict[str, bytes]:
    """Read the six batch files' bytes from an unpacked cifar-10-batches-py folder."""
    payloads = {}
    for name in TRAIN_FILES + (TEST_FILE,):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder} has no {name}; it should hold the unpacked "
                            f"official {ARCHIVE_NAME}")
        payloads[str(path)] = path.read_bytes()
    return payloads


def _read_archive(archive: Path) -> dict[str, bytes]:
    """Read the six batch files' bytes straight out of the official tar.gz."""
    payloads = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in TRAIN_FILES + (TEST_FILE,):
                member = tar.extractfile(f"{BATCH_FOLDER}/{name}")
                payloads[f"{archive}:{BATCH_FOLDER}/{name}"] = member.read()
    except (KeyError, tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{archive} is not a complete {ARCHIVE_NAME} ({error})") from None
    return payloads


def _stack(payloads: dict[str, bytes]):
    """Decode the payloads into ((x_train, y_train), (x_test, y_test)), the images as
    :class:`Cifar10Images`."""
    decoded = {source: _decode_batch(payload, source) for source, payload in payloads.items()}

    def split(batches: list[tuple[np.ndarray, np.ndarray]]):
        return (Cifar10Images([planes for planes, _ in batches]),
                np.concatenate([labels for _, labels in batches]))

    return (split([decoded[s] for s in decoded if not s.endswith(TEST_FILE)]),
            split([decoded[s] for s in decoded if s.endswith(TEST_FILE)]))


def load_cifar10(data_dir: str | os.PathLike | None = None):
    """Load all of CIFAR-10 as uint8 NHWC images and int64 labels.

    Args:
        data_dir: A folder with ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``.
            Defaults to ``$CVLIB_DATA_DIR``; with neither, Keras's own loader is used.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, 50,000 and 10,000 images: the
        images as :class:`Cifar10Images` (index them for uint8 NHWC arrays), the
        labels as int64 arrays.

    Raises:
        DataError: if the data cannot be found or read.
    """
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        folder = Path(data_dir).expanduser()
        if (folder / BATCH_FOLDER).is_dir():
            return _stack(_read_folder(folder / BATCH_FOLDER))
        if (folder / ARCHIVE_NAME).is_file():
            return _stack(_read_archive(folder / ARCHIVE_NAME))
        if folder.name == BATCH_FOLDER and folder.is_dir():
            return _stack(_read_folder(folder))
        raise DataError(f"no CIFAR-10 in {folder}: put the official {ARCHIVE_NAME} there, "
                        f"or its unpacked {BATCH_FOLDER}/ folder")
    return _load_with_keras()


def _load_with_keras():
    """Keras's loader: downloads the archive once into ~/.keras/datasets."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as error:
        raise DataError(
            f"CIFAR-10 is not available ({type(error).__name__}: {error}). Without "
            f"internet, put the official {ARCHIVE_NAME} (or its unpacked {BATCH_FOLDER}/) "
            f"in a folder and pass --data-dir FOLDER or set {DATA_DIR_ENV}=FOLDER") from None
    def split(images: np.ndarray, labels: np.ndarray):
        planes = images.reshape(len(images), 32 * 32, 3).transpose(0, 2, 1)  # a view
        return Cifar10Images([planes]), labels.reshape(-1).astype(np.int64)

    return split(x_train, y_train), split(x_test, y_test)
