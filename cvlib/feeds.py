"""How images and labels reach Keras: cvlib's own tf.data pipelines for training (a new
order every epoch) and for evaluation, both without tf.data's autotuning."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def epoch_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                  start_epoch: int, end_epoch: int) -> tf.data.Dataset:
    """The training batches of epochs ``start_epoch`` to ``end_epoch - 1``, each epoch in
    an order drawn from ``(seed, epoch)`` alone.

    Keras's own shuffle draws each epoch's order from the global seed, which a new
    iterator restarts: with a seed set (cvlib sets one per cell), every epoch repeats the
    first one's order (TensorFlow issue #35682), and a halving stage continued at epoch k
    would repeat an order of its own. Keyed by epoch, every epoch is shuffled anew and a
    continued stage trains on exactly the batches of an uninterrupted run.

    Args:
        images: The training images.
        labels: Their labels.
        batch_size: Images per batch; each epoch's last batch may be smaller.
        seed: The cell's seed.
        start_epoch: The first epoch (from 0).
        end_epoch: One past the last epoch.

    Returns:
        A tf.data.Dataset of (images, labels) batches, ``ceil(len(images) / batch_size)``
        per epoch.
    """
    count = len(images)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return _gathered(tf.data.Dataset.range(start_epoch, end_epoch).flat_map(one_epoch),
                     images, labels)


def evaluation_batches(images: np.ndarray, labels: np.ndarray,
                       batch_size: int) -> tf.data.Dataset:
    """Images and labels in order, in batches, fed as ``epoch_batches`` feeds training.

    Args:
        images: The images to evaluate on.
        labels: Their labels.
        batch_size: Images per batch.

    Returns:
        A tf.data.Dataset of (images, labels) batches.
    """
    indices = tf.data.Dataset.range(len(images)).batch(batch_size)
    return _gathered(indices, images, labels)


# tf.data's autotuning, on by default and in Keras's own array feed, stalls the end of
# many a fit (the training iterator's teardown waited 2-5 s on 2 CPU cores). Turned off,
# fits take about half the time in one process: docs/design.md, benchmarks/feed_autotune.py.
_WITHOUT_AUTOTUNE = tf.data.Options()
_WITHOUT_AUTOTUNE.autotune.enabled = False


def _gathered(index_batches: tf.data.Dataset, images: np.ndarray,
              labels: np.ndarray) -> tf.data.Dataset:
    """Batches of images and labels gathered by the index batches given, two prefetched."""
    # Gathering whole batches by index, as Keras's own array adapter does, is faster
    # than slicing single images.
    arrays = tf.data.Dataset.from_tensors((images, labels)).repeat()
    return tf.data.Dataset.zip(index_batches, arrays).map(
        lambda index, data: (tf.gather(data[0], index), tf.gather(data[1], index))
    ).prefetch(2).with_options(_WITHOUT_AUTOTUNE)
