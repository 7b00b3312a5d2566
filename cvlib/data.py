"""CIFAR-10: find and load it safely, split it, preprocess it.

Sources, in order: a folder (``--data-dir`` or ``CVLIB_DATA_DIR``) holding
``cifar-10-batches-py/`` or the official ``cifar-10-python.tar.gz``; else
``keras.datasets.cifar10.load_data()``, which downloads once and caches.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvlib.config import DataConfig
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


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Order indices so that every prefix is a stratified sample.

    Each class is shuffled, then indices are ordered by their rank within their
    class (ties broken at random), so the first n indices hold each class in
    proportion to its size, give or take one image.

    Returns:
        A permutation of ``range(len(labels))``.
    """
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((rng.random(len(labels)), rank))


# Each preprocessing returns the statistics it subtracts/divides by, computed on
# the training images (float32 in [0, 1], NHWC).
def _no_statistics(x_train: np.ndarray) -> dict[str, np.ndarray]:
    return {}


def _mean_image(x_train: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": x_train.mean(axis=0, dtype=np.float64)}


def _per_channel_mean(x_train: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": x_train.mean(axis=(0, 1, 2), dtype=np.float64)}


def _standardize(x_train: np.ndarray) -> dict[str, np.ndarray]:
    return {"mean": x_train.mean(axis=(0, 1, 2), dtype=np.float64),
            "std": x_train.std(axis=(0, 1, 2), dtype=np.float64)}


PREPROCESSORS: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {
    "none": _no_statistics,
    "mean_image": _mean_image,
    "per_channel_mean": _per_channel_mean,
    "standardize": _standardize,
}


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 images as float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def normalize(images: np.ndarray, statistics: dict[str, np.ndarray]) -> np.ndarray:
    """Subtract ``mean`` and divide by ``std`` (where given), in place.

    Args:
        images: float32 images in [0, 1], NHWC.
        statistics: from one of PREPROCESSORS, computed on the training split.

    Returns:
        The same array, normalized.
    """
    if "mean" in statistics:
        images -= statistics["mean"].astype(np.float32)
    if "std" in statistics:
        images /= statistics["std"].astype(np.float32)
    return images


@dataclass
class Dataset:
    """Preprocessed splits, ready for ``model.fit``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # The preprocessing's training-split statistics, as loggable params.
    params: dict[str, Any] = field(default_factory=dict)


def prepare(config: DataConfig, raw) -> Dataset:
    """Split and preprocess raw CIFAR-10 as a data config says.

    Args:
        config: The cell's data settings.
        raw: ``((x_train, y_train), (x_test, y_test))`` from :func:`load_cifar10`, or
            with the images as uint8 NHWC arrays.

    Returns:
        The Dataset; statistics come from its training split only.
    """
    (x_all, y_all), (x_test, y_test) = raw
    order = stratified_order(y_all, config.split_seed)
    val_index = order[:config.val_size]
    rest = order[config.val_size:]
    train_index = rest if config.train_size is None else rest[:config.train_size]
    test_index = (np.arange(len(y_test)) if config.test_size is None
                  else stratified_order(y_test, config.split_seed)[:config.test_size])
    x_test, y_test = x_test[test_index], y_test[test_index]
    x_train = to_unit_range(x_all[train_index])
    statistics = PREPROCESSORS[config.preprocess](x_train)
    # Logged per channel (the mean image is summarised by its channel means).
    params = {f"preprocess.{name}":
              np.round(value.astype(np.float64).reshape(-1, 3).mean(axis=0), 5).tolist()
              for name, value in statistics.items()}
    return Dataset(x_train=normalize(x_train, statistics), y_train=y_all[train_index],
                   x_val=normalize(to_unit_range(x_all[val_index]), statistics),
                   y_val=y_all[val_index],
                   x_test=normalize(to_unit_range(x_test), statistics), y_test=y_test,
                   params=params)


class DataCache:
    """Loads the raw images once and keeps the last prepared Dataset, so that the
    cells of a grid that share data settings share one load and preprocessing."""

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = data_dir
        self._raw = None
        self._prepared: tuple[DataConfig, Dataset] | None = None
        self._loaded_once = False

    def raw(self):
        """The raw images and labels, loaded on first use (see :func:`load_cifar10`)."""
        if self._raw is None:
            self._raw = load_cifar10(self.data_dir)
            self._loaded_once = True
        return self._raw

    def check(self) -> None:
        """Load the raw images unless they loaded before, released or not, so that a
        data error raises here; a caller that hands training to workers checks each
        grid of many (lr-search's stages, the claims' studies) without decoding
        CIFAR-10 again."""
        if not self._loaded_once:
            self.raw()

    def get(self, config: DataConfig) -> Dataset:
        """Return the Dataset for config, preparing it only when config changed."""
        if self._prepared is None or self._prepared[0] != config:
            self._prepared = (config, prepare(config, self.raw()))
        return self._prepared[1]

    def release(self) -> None:
        """Drop what was loaded (a process that hands training to workers needs none)."""
        self._raw = self._prepared = None
