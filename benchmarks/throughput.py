"""How fast `cvlib run` trains a cell, against
plain Keras settings and PyTorch eager, side by side.

    python benchmarks/throughput.py [--images 5000] [--epochs 4] [--rounds 3] [--bn none before]
                                    [--torch] [--keras-options [SETUP ...]] [--feed]
                                    [--bfloat16] [--record]
    python benchmarks/throughput.py --images 256 --epochs 2 --rounds 1 --bn none --bfloat16  # smallest

The network (3 conv 32/64/64 + dense 64, relu, He init, batch 128, SGD) is trained
on real CIFAR-10 ($CVLIB_DATA_DIR) with validation every epoch, in rounds that
interleave the setups so that they share the machine's noise:

- keras-default: a plain Keras script, `compile()` defaults (jit_compile="auto", which
  Keras resolves to no XLA on a CPU-only machine);
- keras-xla: the same with jit_compile=True;  (with --keras-options, also
  keras-spe16: steps_per_execution=16, keras-batch256, and in child processes, since
  TensorFlow reads these settings once: keras-onednn-off (TF_ENABLE_ONEDNN_OPTS=0),
  keras-1thread (intra-op threads 1; what each of 2 cvlib workers gets) and
  keras-inter1 (inter-op threads 1))
- epoch-batches (with --feed): keras-default's script fed by cvlib's own training
  batches (`feeds.epoch_batches`, each epoch's order drawn from the seed and the
  epoch) instead of Keras's array feed: what that feed alone costs or saves;
- cvlib: `run_grid` on a one-cell grid, with MLflow tracking and statistics on, into a
  temporary SQLite store (epoch times from its `epoch_time_s` metric);
- torch: benchmarks/torch_twin.py in a subprocess (with --torch);
- keras-bf16 and cvlib-bf16 (with --bfloat16): keras-default and cvlib in Keras's
  mixed_bfloat16 (`model.precision: mixed_bfloat16` for cvlib). Not the same arithmetic
  as the float32 setups, so they are compared with each other only; the line names the
  CPU's bfloat16 instructions (AMX, AVX512_BF16 or neither), which decide the speed.

It prints each setup's median epoch time (epochs after the first, which compiles)
and the ratios against their targets: cvlib's epoch time at most plain Keras's
defaults' (ratio at most 1.0) and cvlib's speed at least 0.95x the fastest plain-Keras
setup's; with --torch, cvlib's speed at least PyTorch eager's.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from record import Recorder, add_option

WIDTHS, DENSE_UNITS, BATCH = [32, 64, 64], 64, 128


def plain_keras_epochs(dataset, bn, epochs, jit_compile="auto", steps_per_execution=1,
                       batch_size=BATCH, cvlib_feed=False, precision="float32"):
    """Epoch wall times of a plain Keras script doing the same work (fed by cvlib's
    feeds.epoch_batches when cvlib_feed; in the Keras dtype policy ``precision``)."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    layers = [keras.Input((32, 32, 3))]
    for width in WIDTHS:
        layers.append(keras.layers.Conv2D(width, 3, padding="same", use_bias=bn == "none",
                                          kernel_initializer="he_normal"))
        if bn == "before":
            layers.append(keras.layers.BatchNormalization())
        layers += [keras.layers.ReLU(), keras.layers.MaxPooling2D(2)]
    layers += [keras.layers.Flatten(), keras.layers.Dense(DENSE_UNITS, use_bias=bn == "none",
                                                          kernel_initializer="he_normal")]
    if bn == "before":
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.ReLU(), keras.layers.Dense(10, kernel_initializer="he_normal",
                                                       dtype="float32")]
    model = keras.Sequential(layers)
    keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.started)

    if cvlib_feed:
        from cvlib.feeds import epoch_batches

        feed = dict(x=epoch_batches(dataset.x_train, dataset.y_train, batch_size, 0, 0, epochs),
                    steps_per_epoch=math.ceil(len(dataset.x_train) / batch_size), shuffle=False)
    else:
        feed = dict(x=dataset.x_train, y=dataset.y_train, batch_size=batch_size)
    model.fit(**feed, validation_data=(dataset.x_val, dataset.y_val), epochs=epochs, verbose=0,
              callbacks=[EpochTimer()])
    return times


def cvlib_epochs(bn, epochs, images, folder, precision="float32"):
    """Epoch wall times of `cvlib run` on the same cell, statistics and tracking on."""
    from mlflow.tracking import MlflowClient

    from cvlib.engine.experiment import run_grid
    from cvlib.engine.options import EngineOptions
    from cvlib.grids import grid_from_dict
    from cvlib.tracking.schema import CELL_TAG, EPOCH_TIME

    grid = grid_from_dict({
        "name": "throughput", "data": {"train_size": images, "val_size": 1000, "test_size": 1000},
        "model": {"widths": WIDTHS, "dense_units": DENSE_UNITS, "bn": bn,
                  "precision": precision},
        "train": {"epochs": epochs, "batch_size": BATCH, "optimizer": "sgd",
                  "learning_rate": 0.01}})
    uri = f"sqlite:///{folder}/mlflow.db"
    summary = run_grid(grid, uri, EngineOptions(progress_bar=False),
                       experiment=f"throughput-{time.time_ns()}", echo=lambda line: None)
    client = MlflowClient(uri)
    (run,) = client.search_runs([summary.experiment_id], f"tags.`{CELL_TAG}` != ''")
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, EPOCH_TIME),
                                    key=lambda metric: metric.step)]


def child_keras_epochs(data_file, bn, epochs, env=None, intra=0, inter=0):
    """Epoch wall times of keras-default in a child process, with TensorFlow's
    environment or thread settings changed (they cannot change after its start)."""
    command = [sys.executable, __file__, "--child", str(data_file), "--bn", bn,
               "--epochs", str(epochs), "--intra", str(intra), "--inter", str(inter)]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, **(env or {})}).stdout
    return [float(line.split()[1]) for line in output.splitlines()
            if line.startswith("epoch_time_s")]


def child_main(args):
    """The child of child_keras_epochs: prints `epoch_time_s <seconds>` per epoch."""
    import tensorflow as tf

    if args.intra:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra)
    if args.inter:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter)
    arrays = np.load(args.child)
    dataset = types.SimpleNamespace(**{key: arrays[key] for key in arrays.files})
    for seconds in plain_keras_epochs(dataset, args.bn[0], args.epochs):
        print(f"epoch_time_s {seconds}")


def torch_epochs(data_file, bn, epochs):
    """Epoch wall times of the PyTorch twin, in a subprocess."""
    output = subprocess.run([sys.executable, str(Path(__file__).with_name("torch_twin.py")),
                             str(data_file), "--bn", bn, "--epochs", str(epochs)],
                            capture_output=True, text=True, check=True).stdout
    return [float(line.split()[1]) for line in output.splitlines()
            if line.startswith("epoch_time_s")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bn", nargs="+", default=["none", "before"])
    parser.add_argument("--torch", action="store_true", help="include the PyTorch twin")
    parser.add_argument("--keras-options", nargs="*", metavar="SETUP",
                        help="also try steps_per_execution=16, batch 256, oneDNN off and "
                             "thread settings in plain Keras (only the SETUPs named, e.g. "
                             "keras-spe16, if any)")
    parser.add_argument("--feed", action="store_true",
                        help="also time keras-default fed by cvlib's epoch_batches")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also time keras-default and cvlib in mixed_bfloat16")
    parser.add_argument("--child", metavar="DATA.npz", help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, default=0, help=argparse.SUPPRESS)
    add_option(parser)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch, which traces, is left out")
    recorder = Recorder(args.record)

    from cvlib.data import DataCache
    from cvlib.grids import grid_from_dict

    dataset = DataCache().get(grid_from_dict({"name": "t", "data": {
        "train_size": args.images, "val_size": 1000, "test_size": 1000}}).cells()[0].data)
    scratch = tempfile.TemporaryDirectory(prefix="cvlib-throughput-")  # removed at exit
    folder = Path(scratch.name)
    data_file = folder / "data.npz"
    np.savez(data_file, x_train=dataset.x_train, y_train=dataset.y_train,
             x_val=dataset.x_val, y_val=dataset.y_val)
    setups = {
        "keras-default": lambda bn: plain_keras_epochs(dataset, bn, args.epochs),
        "keras-xla": lambda bn: plain_keras_epochs(dataset, bn, args.epochs, jit_compile=True),
        "cvlib": lambda bn: cvlib_epochs(bn, args.epochs, args.images, folder),
    }
    if args.keras_options is not None:
        setups["keras-spe16"] = lambda bn: plain_keras_epochs(
            dataset, bn, args.epochs, jit_compile=False, steps_per_execution=16)
        setups["keras-batch256"] = lambda bn: plain_keras_epochs(
            dataset, bn, args.epochs, jit_compile=False, batch_size=256)
        setups["keras-onednn-off"] = lambda bn: child_keras_epochs(
            data_file, bn, args.epochs, env={"TF_ENABLE_ONEDNN_OPTS": "0"})
        setups["keras-1thread"] = lambda bn: child_keras_epochs(data_file, bn, args.epochs,
                                                                intra=1)
        setups["keras-inter1"] = lambda bn: child_keras_epochs(data_file, bn, args.epochs,
                                                               inter=1)
    optional = set(setups) - {"keras-default", "keras-xla", "cvlib"}
    if set(args.keras_options or ()) - optional:
        parser.error(f"--keras-options takes these setups: {', '.join(sorted(optional))}")
    for name in optional - set(args.keras_options or setups):
        del setups[name]
    if args.feed:
        setups["epoch-batches"] = lambda bn: plain_keras_epochs(dataset, bn, args.epochs,
                                                                cvlib_feed=True)
    if args.bfloat16:
        setups["keras-bf16"] = lambda bn: plain_keras_epochs(dataset, bn, args.epochs,
                                                             precision="mixed_bfloat16")
        setups["cvlib-bf16"] = lambda bn: cvlib_epochs(bn, args.epochs, args.images, folder,
                                                       precision="mixed_bfloat16")
    if args.torch:
        setups["torch"] = lambda bn: torch_epochs(data_file, bn, args.epochs)
    print(f"{args.images} training + 1000 validation images, {args.epochs} epochs, "
          f"{args.rounds} interleaved rounds; median epoch time of epochs 2..{args.epochs}")
    for bn in args.bn:
        seconds = {name: [] for name in setups}
        for round_index in range(args.rounds):
            names = list(setups)
            names = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in names:
                seconds[name].extend(setups[name](bn)[1:])
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        print(f"\nbn={bn}")
        for name, median in medians.items():
            print(f"  {name:15s} {median:6.2f} s/epoch  {args.images / median:6.0f} img/s "
                  f"(with validation)")
        fastest_plain = min(v for k, v in medians.items()
                            if k.startswith("keras") and not k.endswith("bf16"))
        goal1 = f"{medians['cvlib'] / medians['keras-default']:.3f}"
        fastest = f"{fastest_plain / medians['cvlib']:.3f}"
        print(f"  epoch time, cvlib / keras-default = {goal1} (at most 1.0)")
        print(f"          cvlib speed / fastest plain Keras = {fastest} (at least 0.95)")
        recorder.add(f"epoch time: cvlib / plain Keras defaults, bn={bn}", "<= 1.0", goal1)
        recorder.add(f"speed: cvlib / fastest plain-Keras setup, bn={bn}", ">= 0.95", fastest)
        if "epoch-batches" in medians:
            print(f"  feed: epoch-batches / keras-default epoch time = "
                  f"{medians['epoch-batches'] / medians['keras-default']:.3f}")
        if "torch" in medians:
            goal2 = f"{medians['torch'] / medians['cvlib']:.3f}"
            print(f"  speed, cvlib / PyTorch eager = {goal2} (at least 1.0)")
            recorder.add(f"speed: cvlib / PyTorch eager, bn={bn}", ">= 1.0", goal2)
        if "cvlib-bf16" in medians:
            capability = bfloat16_capability()
            print(f"  bfloat16 on this CPU's {capability}: cvlib-bf16 / keras-bf16 epoch "
                  f"time = {medians['cvlib-bf16'] / medians['keras-bf16']:.3f}; speed in "
                  f"bfloat16 / float32: plain Keras "
                  f"{medians['keras-default'] / medians['keras-bf16']:.3f}, cvlib "
                  f"{medians['cvlib'] / medians['cvlib-bf16']:.3f}")
            recorder.add(f"epoch time: cvlib in mixed_bfloat16 / float32, bn={bn}, CPU with "
                         f"{capability}", "< 1 to adopt",
                         f"{medians['cvlib-bf16'] / medians['cvlib']:.3f}")
            if "torch" in medians:
                print(f"          cvlib-bf16 speed / PyTorch eager (float32) = "
                      f"{medians['torch'] / medians['cvlib-bf16']:.3f}")


def bfloat16_capability() -> str:
    """What the CPU offers bfloat16 matrix products (/proc/cpuinfo): AMX tiles, AVX-512's
    bfloat16 dot products, or neither (bfloat16 is then converted to float32 and back)."""
    from cvlib.engine.provenance import cpu_facts
    from cvlib.tracking.schema import CPU_FLAGS_TAG

    flags = set(cpu_facts()[CPU_FLAGS_TAG].split())
    if "amx_bf16" in flags:
        return "AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX512_BF16, no AMX"
    return "no AVX512_BF16 or AMX"


if __name__ == "__main__":
    main()
