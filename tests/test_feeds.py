"""cvlib's tf.data feeds: each epoch's own order, evaluation in order. (What turning
tf.data's autotuning off gains is a speed figure: benchmarks/feed_autotune.py.)"""
import numpy as np

from cvlib.feeds import epoch_batches, evaluation_batches


def test_every_epoch_has_its_own_order_and_a_continued_stage_repeats_none():
    # Keras's shuffle under a set seed gives every epoch the first one's order.
    images = np.arange(50, dtype="float32").reshape(50, 1)
    labels = np.arange(50)

    def orders(start, end):
        batches = list(epoch_batches(images, labels, 16, seed=3, start_epoch=start,
                                     end_epoch=end).as_numpy_iterator())
        assert [len(x) for x, _ in batches] == [16, 16, 16, 2] * (end - start)
        for x, y in batches:
            np.testing.assert_array_equal(x.ravel(), y)  # images keep their labels
        return [np.concatenate([y for _, y in batches[i:i + 4]])
                for i in range(0, len(batches), 4)]

    uninterrupted = orders(0, 3)
    assert all(sorted(order) == list(range(50)) for order in uninterrupted)
    assert len({tuple(order) for order in uninterrupted}) == 3
    np.testing.assert_array_equal(orders(1, 3), uninterrupted[1:])
    assert not np.array_equal(orders(0, 1)[0], list(range(50)))


def test_evaluation_feeds_every_image_once_in_order():
    images = np.arange(50, dtype="float32").reshape(50, 1)
    batches = list(evaluation_batches(images, np.arange(50), 16).as_numpy_iterator())
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]).ravel(), np.arange(50))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(50))
