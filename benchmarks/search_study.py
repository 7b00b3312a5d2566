"""What rebuilding a search's Optuna study costs, as the driver does before each proposal
and each pruning decision: it tells every ended trial to a fresh study
(cvlib.engine.search.Search.study) and asks its proposals, instead of keeping a study in an
Optuna database.

    python benchmarks/search_study.py [--trials 10 100 300] [--batch 2] [--record]
    python benchmarks/search_study.py --trials 2 5 --batch 1              # smallest

For each count of ended trials (a learning rate, an activation and a width; val_accuracy
after each of 9 epochs, reported at the pruner's rungs 1, 3, 9), times a rebuild plus
``--batch`` TPE proposals with the successive-halving pruner, three times, and prints the
medians. Goal: well under a second at 300 trials, against the tens of seconds of the
smallest cell it proposes.
"""
import argparse
import math
import statistics
import time

from record import Recorder, add_option

EPOCHS = 9


def ended_trials(count: int) -> list:
    """``count`` ended trials spread over the space, with made-up epochs."""
    from cvlib.engine.search import EndedTrial

    trials = []
    for number in range(count):
        rate = 10 ** (-5 + 4 * ((number * 0.618) % 1))
        accuracy = 0.6 - 0.1 * abs(math.log10(rate) + 2.5)
        epochs = {epoch: accuracy * epoch / EPOCHS for epoch in range(1, EPOCHS + 1)}
        trials.append(EndedTrial(number, {
            "train.learning_rate": float(f"{rate:.3g}"),
            "model.activation": ("relu", "tanh", "elu")[number % 3],
            "model.dense_units": 16 + number % 48}, accuracy, epochs=epochs))
    return trials


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 100, 300],
                        help="counts of ended trials to rebuild from")
    parser.add_argument("--batch", type=int, default=2, help="proposals asked per rebuild")
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)

    from cvlib.engine.search import Search
    from cvlib.grids import grid_from_dict

    grid = grid_from_dict({
        "name": "bench", "train": {"epochs": EPOCHS},
        "search": {"strategy": "tpe", "pruner": "halving", "min_epochs": 1, "reduction": 3},
        "space": {"train.learning_rate": {"loguniform": [1e-5, 0.1]},
                  "model.activation": ["relu", "tanh", "elu"],
                  "model.dense_units": {"int": [16, 64]}}})
    search = Search(grid.space, grid.search, grid.train.epochs)
    medians = {}
    for count in args.trials:
        ended = ended_trials(count)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            study = search.study(ended)
            for _ in range(args.batch):
                search.values(search.ask(study))
            times.append(time.perf_counter() - started)
        medians[count] = statistics.median(times)
        print(f"  {count:>4} ended trials: rebuild + {args.batch} proposals in "
              f"{medians[count]:.3f} s (median of {', '.join(f'{t:.3f}' for t in times)})",
              flush=True)
    last = args.trials[-1]
    figure = f"{medians[last]:.3f}"
    print(f"rebuild of {last} trials + {args.batch} proposals: {figure} s (goal: < 1 s)")
    recorder.add(f"search study rebuild, {last} trials", "< 1 s", figure)


if __name__ == "__main__":
    main()
