"""CIFAR-10 loading (real files), the restricted unpickler, splits, preprocessing."""
import os
import pickle
import shutil

import numpy as np
import pytest

from cvlib.cifar10 import Cifar10Images, DataError, load_cifar10, restricted_loads
from cvlib.config import DataConfig
from cvlib.data import (
    PREPROCESSORS,
    DataCache,
    normalize,
    prepare,
    stratified_order,
    to_unit_range,
)


class RunsCode:
    """Unpickling this calls os.system: what a doctored batch file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({b"data": RunsCode(marker), b"labels": [1]})
    with pytest.raises(pickle.UnpicklingError, match="refused to load global posix.system"):
        restricted_loads(payload)
    assert not marker.exists()
    pickle.loads(payload)  # the same bytes do run code with the plain unpickler
    assert marker.exists()


def test_restricted_unpickler_admits_what_a_cifar_batch_holds():
    batch = {b"batch_label": b"x", b"labels": [1, 2], "name": "s",
             b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    for protocol in (2, 4, 5):
        loaded = restricted_loads(pickle.dumps(batch, protocol=protocol))
        np.testing.assert_array_equal(loaded[b"data"], batch[b"data"])


def test_doctored_batch_file_is_refused_by_the_loader_and_runs_nothing(cifar_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_dir / "cifar-10-batches-py", folder)
    marker = tmp_path / "ran"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": RunsCode(marker)}))
    with pytest.raises(DataError, match="data_batch_3: refused to load global"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_truncated_batch_file_is_named(cifar_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_dir / "cifar-10-batches-py", folder)
    payload = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(payload[:len(payload) // 2])
    with pytest.raises(DataError, match="test_batch is truncated or corrupt"):
        load_cifar10(tmp_path)


def test_folder_without_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 in .*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path)


def test_real_cifar10_loads_from_the_folder_and_from_the_archive(cifar_dir, tmp_path):
    (x_train, y_train), (x_test, y_test) = load_cifar10(cifar_dir)
    assert x_train.shape == (50_000, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (10_000, 32, 32, 3)
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert 100 < np.asarray(x_train).mean() < 140  # real photographs, not blank or noise
    archive_only = tmp_path / "archive"
    archive_only.mkdir()
    (archive_only / "cifar-10-python.tar.gz").symlink_to(cifar_dir / "cifar-10-python.tar.gz")
    (x_archive, y_archive), _ = load_cifar10(archive_only)
    np.testing.assert_array_equal(x_archive[:100], x_train[:100])
    np.testing.assert_array_equal(y_archive, y_train)


def test_indexed_images_are_the_batch_files_pixels_in_nhwc(cifar_dir):
    """A batch file stores an image as 1024 red, then green, then blue bytes, row by row."""
    (x_train, _), (x_test, _) = load_cifar10(cifar_dir)
    folder = cifar_dir / "cifar-10-batches-py"
    for images, name, first in ((x_train, "data_batch_3", 20_000), (x_test, "test_batch", 0)):
        with open(folder / name, "rb") as batch_file:
            stored = pickle.load(batch_file, encoding="bytes")[b"data"]
        chosen = np.array([first + 9_999, first, first + 5])
        gathered = images[chosen]
        assert gathered.shape == (3, 32, 32, 3) and gathered.flags.c_contiguous
        for image, row in zip(gathered, chosen - first):
            np.testing.assert_array_equal(image, stored[row].reshape(3, 32, 32).transpose(1, 2, 0))
        np.testing.assert_array_equal(images[first + 5], gathered[2])


def test_nhwc_arrays_index_the_same_as_images_held_in_planes():
    """Keras's loader gives NHWC arrays; held as planes, they index to the same images."""
    nhwc = np.random.default_rng(0).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    images = Cifar10Images([nhwc[:20].reshape(20, 1024, 3).transpose(0, 2, 1),
                            nhwc[20:].reshape(30, 1024, 3).transpose(0, 2, 1)])
    assert images.shape == nhwc.shape and len(images) == 50
    for index in (np.array([49, 3, 20, 19]), slice(5, 40, 7), slice(None)):
        np.testing.assert_array_equal(images[index], nhwc[index])
    np.testing.assert_array_equal(images[-1], nhwc[-1])


def test_stratified_order_prefixes_are_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 500)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(5000))
    for n in (10, 100, 1000):
        counts = np.bincount(labels[order[:n]], minlength=10)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(order, stratified_order(labels, seed=3))
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def _tiny_raw(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(600, 32, 32, 3), dtype=np.uint8)
    images[..., 0] //= 2  # channels with different means, to tell them apart
    labels = np.repeat(np.arange(10), 60)
    test = rng.integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    return (images, labels), (test, np.repeat(np.arange(10), 10))


def test_splits_are_disjoint_stratified_and_sized():
    raw = _tiny_raw()
    data = prepare(DataConfig(train_size=200, val_size=100, test_size=50, preprocess="none"), raw)
    assert len(data.x_train) == 200 and len(data.x_val) == 100 and len(data.x_test) == 50
    assert np.bincount(data.y_val).tolist() == [10] * 10
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_val)


@pytest.mark.parametrize("preprocess", ["none", "mean_image", "per_channel_mean", "standardize"])
def test_preprocessing_statistics_come_from_the_training_split(preprocess):
    raw = _tiny_raw()
    config = DataConfig(train_size=300, val_size=100, preprocess=preprocess)
    data = prepare(config, raw)
    order = stratified_order(raw[0][1], 0)
    train_raw = raw[0][0][order[100:400]].astype(np.float64) / 255
    val_raw = raw[0][0][order[:100]].astype(np.float64) / 255
    if preprocess == "none":
        expected_train, expected_val = train_raw, val_raw
        assert data.params == {}
    elif preprocess == "mean_image":
        mean = train_raw.mean(axis=0)
        expected_train, expected_val = train_raw - mean, val_raw - mean
    else:
        mean = train_raw.mean(axis=(0, 1, 2))
        std = train_raw.std(axis=(0, 1, 2)) if preprocess == "standardize" else 1.0
        expected_train, expected_val = (train_raw - mean) / std, (val_raw - mean) / std
        np.testing.assert_allclose(data.params["preprocess.mean"], mean, atol=1e-4)
    np.testing.assert_allclose(data.x_train, expected_train, atol=1e-4)
    np.testing.assert_allclose(data.x_val, expected_val, atol=1e-4)
    if preprocess != "none":  # the val split is not zero-mean: its own stats were not used
        assert np.abs(data.x_val.mean(axis=(0, 1, 2))).max() > 1e-4
        np.testing.assert_allclose(data.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    if preprocess == "standardize":
        np.testing.assert_allclose(data.x_train.std(axis=(0, 1, 2)), 1, atol=1e-3)


def test_preprocessors_cover_the_config_vocabulary():
    from cvlib.config import PREPROCESSES

    assert tuple(PREPROCESSORS) == PREPROCESSES
    image = np.full((1, 2, 2, 3), 255, dtype=np.uint8)
    np.testing.assert_array_equal(normalize(to_unit_range(image), {}), 1.0)


def test_data_cache_prepares_once_per_setting(cifar_dir):
    cache = DataCache(cifar_dir)
    config = DataConfig(train_size=100, val_size=50, test_size=20)
    first = cache.get(config)
    assert cache.get(DataConfig(train_size=100, val_size=50, test_size=20)) is first
    assert cache.get(DataConfig(train_size=200, val_size=50, test_size=20)) is not first
