"""Why cvlib's feeds turn tf.data's autotuning off: fits with it on and off, interleaved.

    python benchmarks/feed_autotune.py [--rounds 8] [--processes 2] [--images 4000] [--record]
    python benchmarks/feed_autotune.py --rounds 1 --images 512         # smallest

Each round fits the cnn of benchmarks/vs_kerastuner.py (32/64/64, dense 64, no BN) for 2 epochs of 4,000 synthetic
images (--images), validating on 1,000, then evaluates on 1,000, twice:
- "autotuned": cvlib's training feed with tf.data's default options (autotuning on), and
  Keras's own array feed for validation and test (which autotunes too);
- "cvlib": cvlib's feeds as `cvlib run` uses them (`feeds.epoch_batches` and
  `feeds.evaluation_batches`, autotuning off).
It prints, for each, the median time of a fit and of an evaluation, and the longest wait
between the end of a fit's last epoch (on_train_end) and fit's return: the iterator's
teardown. With --processes 2, two such processes of one thread each run side by side, as
`cvlib run --workers 2` does. The headline, per process: cvlib's fit time over the
autotuned one (medians); the goal, that turning autotuning off costs nothing: at most 1.
"""
import argparse
import math
import statistics
import subprocess
import sys
import time

from record import Recorder, add_option

BATCH = 128


def one_process(rounds: int, threads: int, images_count: int) -> None:
    """Time the two feeds in this process and print one line per figure."""
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if threads == 1:  # as cvlib's workers
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from cvlib.feeds import epoch_batches, evaluation_batches
    from cvlib.models import build_model

    rng = np.random.default_rng(0)
    total = images_count + 2000
    images = rng.normal(size=(total, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, total)
    train = slice(0, images_count)
    val, test = slice(images_count, images_count + 1000), slice(images_count + 1000, total)
    steps_per_epoch = math.ceil(images_count / BATCH)
    model = build_model(widths=[32, 64, 64], dense_units=64, activation="relu", bn="none",
                        initializer="he")
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class TrainEnd(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.at = time.perf_counter()

    autotuned = tf.data.Options()
    autotuned.autotune.enabled = True
    figures: dict[str, list[float]] = {}
    for _ in range(rounds):
        for feed in ("autotuned", "cvlib"):
            batches = epoch_batches(images[train], labels[train], BATCH, 0, 0, 2)
            if feed == "autotuned":
                batches = batches.with_options(autotuned)  # the later setting wins
                validation = dict(validation_data=(images[val], labels[val]),
                                  validation_batch_size=1000)
                test_feed = dict(x=images[test], y=labels[test], batch_size=1000)
            else:
                validation = dict(validation_data=evaluation_batches(images[val], labels[val],
                                                                     1000))
                test_feed = dict(x=evaluation_batches(images[test], labels[test], 1000))
            end = TrainEnd()
            started = time.perf_counter()
            model.fit(batches, steps_per_epoch=steps_per_epoch, epochs=2, verbose=0,
                      callbacks=[end], **validation)
            returned = time.perf_counter()
            model.evaluate(**test_feed, verbose=0)
            evaluated = time.perf_counter()
            figures.setdefault(f"{feed} fit", []).append(returned - started)
            figures.setdefault(f"{feed} teardown", []).append(returned - end.at)
            figures.setdefault(f"{feed} evaluate", []).append(evaluated - returned)
    for name, values in figures.items():
        print(f"{name} {statistics.median(values):.3f} {max(values):.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--processes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--images", type=int, default=4000, help="training images")
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    add_option(parser)
    args = parser.parse_args()
    if args.child_threads:
        one_process(args.rounds, args.child_threads, args.images)
        return
    recorder = Recorder(args.record)
    threads = 2 // args.processes
    children = [subprocess.Popen([sys.executable, __file__, "--rounds", str(args.rounds),
                                  "--images", str(args.images),
                                  "--child-threads", str(threads)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
                for _ in range(args.processes)]
    print(f"{args.rounds} rounds, {args.processes} process(es) of {threads} thread(s); "
          f"seconds: median (longest)")
    for number, child in enumerate(children, 1):
        output = child.communicate()[0].split()
        if child.returncode:
            sys.exit(f"process {number} failed (exit code {child.returncode})")
        figures = {f"{output[i]} {output[i + 1]}": (float(output[i + 2]), float(output[i + 3]))
                   for i in range(0, len(output), 4)}
        print(f"process {number}:")
        for step in ("fit", "teardown", "evaluate"):
            tuned, cvlib = figures[f"autotuned {step}"], figures[f"cvlib {step}"]
            print(f"  {step:9s} autotuned {tuned[0]:.2f} ({tuned[1]:.2f})   "
                  f"cvlib {cvlib[0]:.2f} ({cvlib[1]:.2f})")
        fit_ratio = f"{figures['cvlib fit'][0] / figures['autotuned fit'][0]:.3f}"
        print(f"  cvlib's fit / autotuned fit (medians): {fit_ratio} (goal: at most 1)")
        recorder.add(f"feed: cvlib fit / autotuned fit, process {number} of "
                     f"{args.processes}", "<= 1", fit_ratio)


if __name__ == "__main__":
    main()
