"""What TensorFlow's fused batch-norm kernel (cvlib.layers.FusedBatchNormalization) saves
against Keras 3's own BatchNormalization, on the cnn with BN before every activation.

    python benchmarks/fused_bn.py [--images 5000] [--epochs 3] [--rounds 3] [--record]
    python benchmarks/fused_bn.py --images 512 --epochs 2 --rounds 1      # smallest

Both models come from cvlib.models.build_model; the second has Keras's layer put in place
of the fused one (same momentum and epsilon). Each is compiled as cvlib compiles a cell and
fitted on real CIFAR-10 ($CVLIB_DATA_DIR) through cvlib's own feed, in this process, in
rounds that alternate the two. Prints the median epoch time of each (epochs after the
first, which traces) and the ratio fused / Keras. Goal: below 1.
"""
import argparse
import statistics
import time

from record import Recorder, add_option

MEASUREMENT = "fused batch norm: epoch time / Keras's BatchNormalization"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="training images")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (at least 2)")
    parser.add_argument("--rounds", type=int, default=3, help="fits of each model")
    add_option(parser)
    return parser.parse_args(argv)


def epoch_times(batch_norm_layer: type, cell, dataset) -> list[float]:
    """Epoch times of one fit of the cell's model with the given BN layer class."""
    import keras

    import cvlib.models
    from cvlib.feeds import epoch_batches
    from cvlib.training import compile_model

    original = cvlib.models.FusedBatchNormalization
    cvlib.models.FusedBatchNormalization = batch_norm_layer
    try:
        model = cvlib.models.build_model(**vars(cell.model))
    finally:
        cvlib.models.FusedBatchNormalization = original
    compile_model(model, cell.train)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    times: list[float] = []
    steps = -(-len(dataset.x_train) // cell.train.batch_size)
    model.fit(epoch_batches(dataset.x_train, dataset.y_train, cell.train.batch_size, 0, 0,
                            cell.train.epochs),
              steps_per_epoch=steps, epochs=cell.train.epochs, verbose=0, callbacks=[Timer()])
    keras.backend.clear_session(free_memory=False)
    return times[1:]


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict
    from cvlib.layers import FusedBatchNormalization

    (cell,) = grid_from_dict({
        "name": "fused-bn", "data": {"train_size": args.images, "val_size": 500},
        "model": {"widths": [32, 64, 64], "dense_units": 64, "bn": "before"},
        "train": {"epochs": max(2, args.epochs), "batch_size": 128}}).cells()
    dataset = DataCache().get(cell.data)
    layers = {"fused": FusedBatchNormalization, "keras": keras.layers.BatchNormalization}
    times: dict[str, list[float]] = {name: [] for name in layers}
    for round_number in range(args.rounds):
        order = list(layers) if round_number % 2 == 0 else list(reversed(layers))
        for name in order:
            times[name] += epoch_times(layers[name], cell, dataset)
        print(f"  round {round_number + 1}: " + ", ".join(
            f"{name} {statistics.median(values):.2f} s" for name, values in times.items()),
            flush=True)
    fused, plain = (statistics.median(times[name]) for name in layers)
    ratio = fused / plain
    print(f"median epoch: fused {fused:.2f} s, Keras's BatchNormalization {plain:.2f} s; "
          f"{MEASUREMENT}: {ratio:.3f}")
    Recorder(args.record).add(MEASUREMENT, "< 1", f"{ratio:.3f}")


if __name__ == "__main__":
    main()
