r"""How many concurrent trainers can one driver record? Simulated cells send realistic
event streams to the real recorder (engine.recorder.GridRecorder, the real Tracker and
plot helper) as the worker pool and the Ray backend hand them over, interleaved across
many cells at once, as fast as it takes them; measured: sustained epoch records a second
into a SQLite store and into a real MLflow tracking server (`mlflow server`, on SQLite;
written as commands write to a server, through the local journal and its sending thread,
until the server has every write), each against MLflow's sequential log_batch of the
same epoch record into the same kind of store, measured in the same run.

    python benchmarks/driver_capacity.py [--cells 100] [--epochs 10] [--record]
    python benchmarks/driver_capacity.py --cells 4 --epochs 2 --baseline-records 20  # smallest

An epoch record: 120 metrics (loss, accuracies, timings and the per-layer statistics of
a deep network) and the heartbeat tag. Each cell also sends its batch series (two
metrics per gradient step, 40 steps an epoch), its statistics' long table (8 layers, 30
histogram bins a step), its history and its plots, drawn as a Ray actor draws them.
Goal: at least 3x the sequential baseline, so that one driver feeds 500 trainers with
10-second epochs (50 records a second).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from record import Recorder, add_option
from team_services import free_port

METRICS_PER_EPOCH = 120
LAYERS = 8
HISTOGRAM_BINS = 30
STEPS_PER_EPOCH = 40


def epoch_metrics(epoch: int) -> dict[str, float]:
    """One epoch's metrics, as many as a deep cell logs."""
    metrics = {"loss": 2.0 / epoch, "accuracy": 0.1 * epoch, "val_loss": 2.1 / epoch,
               "val_accuracy": 0.09 * epoch, "epoch_time_s": 9.5 + epoch / 100}
    layer = 0
    while len(metrics) < METRICS_PER_EPOCH:
        for statistic in ("mean", "std", "saturated", "dead"):
            metrics[f"act/layer{layer}_act/{statistic}"] = 0.01 * layer + epoch / 1000
        metrics[f"grad/layer{layer}/norm"] = 1.0 / (layer + epoch)
        metrics[f"update_ratio/layer{layer}"] = 1e-3 * (layer + 1)
        layer += 1
    return dict(list(metrics.items())[:METRICS_PER_EPOCH])


def stats_table(epochs: int):
    """A statistics' long table as cvlib.stats.StatsRecorder.table() gives it."""
    import numpy as np
    import pandas as pd

    rows = []
    for step in range(epochs + 1):
        for layer in range(LAYERS):
            name = f"layer{layer}_act"
            edges = np.linspace(-3, 3, HISTOGRAM_BINS + 1)
            rows += [{"layer": name, "step": step, "statistic": "hist_count",
                      "value": float(count), "bin_low": lo, "bin_high": hi}
                     for count, lo, hi in zip(np.arange(HISTOGRAM_BINS), edges[:-1], edges[1:])]
            rows += [{"layer": name, "step": step, "statistic": statistic, "value": 0.5}
                     for statistic in ("mean", "std", "saturated", "dead")]
    return pd.DataFrame(rows, columns=["layer", "step", "statistic", "value", "bin_low",
                                       "bin_high"])


def event_stream(cells: int, epochs: int) -> list:
    """Every event of the simulated cells, interleaved as many trainers send them."""
    from cvlib.engine.events import (
        CellFinished,
        CellStarted,
        FiguresReady,
        MetricsLogged,
        SeriesLogged,
        StageResult,
    )
    from cvlib.engine.plot_writer import drawn_plots

    table = stats_table(epochs)
    history = {key: [epoch_metrics(e)[key] for e in range(1, epochs + 1)]
               for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
    plots = drawn_plots(history, table)  # as a Ray actor draws and sends them
    steps = range(1, epochs * STEPS_PER_EPOCH + 1)
    events = [CellStarted(key, {"preprocess.mean": [0.49, 0.48, 0.45]}) for key in range(cells)]
    for epoch in range(1, epochs + 1):
        events += [MetricsLogged(key, epoch_metrics(epoch), epoch) for key in range(cells)]
    for key in range(cells):
        events += [SeriesLogged(key, {f"batch/{name}": [(step, 1.0 / step) for step in steps]
                                      for name in ("loss", "accuracy")}),
                   FiguresReady(key, history, table, plots),
                   CellFinished(key, StageResult("ok", epochs, 0.5, 0.5, trained_on="sim"))]
    return events


def record_all(tracking_uri: str, cells: int, epochs: int) -> float:
    """Hand every simulated event to a real recorder; returns the seconds until all of it
    (metrics, artifacts, plots) is in the store."""
    from cvlib.engine.plot_writer import PlotWriter
    from cvlib.engine.progress import Progress
    from cvlib.engine.recorder import GridRecorder, GridSummary
    from cvlib.engine.resume import plan
    from cvlib.engine.trials import trials_of
    from cvlib.grids import grid_from_dict
    from cvlib.tracking.writer import Tracker

    grid = grid_from_dict({"name": "capacity", "seeds": list(range(cells)),
                           "train": {"epochs": epochs}})
    pending = grid.cells()
    events = event_stream(cells, epochs)
    tracker = Tracker(tracking_uri, journal=True)  # a server's journal: in the cwd's mlruns/
    experiment_id = tracker.experiment_id("capacity")
    parent = tracker.start_grid(grid, experiment_id, cells)
    plots = PlotWriter(warn=print)
    plots.start()
    summary = GridSummary(plan=plan(pending, []))
    recorder = GridRecorder(tracker, experiment_id, parent, grid, trials_of(pending), summary,
                            Progress(pending, lambda line: None, bar=False), plots)
    started = time.perf_counter()
    for event in events:  # always one waiting: the engine's flush when idle never comes
        recorder.handle(event)
    recorder.flush()
    plots.attach_done(wait=True)
    tracker.connection.close(wait=True)
    seconds = time.perf_counter() - started
    plots.close()
    assert len(summary.finished) == cells, summary
    return seconds


def sequential_baseline(tracking_uri: str, records: int) -> float:
    """Seconds per epoch record by MLflow's log_batch, one after another."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("baseline")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(10)]
    started = time.perf_counter()
    for index in range(records):
        epoch, timestamp = index // len(run_ids) + 1, int(time.time() * 1000)
        client.log_batch(run_ids[index % len(run_ids)], metrics=[
            Metric(key, value, timestamp, epoch) for key, value in epoch_metrics(epoch).items()],
            tags=[RunTag("cvlib.heartbeat", str(time.time()))])
    return (time.perf_counter() - started) / records


def start_server(folder: str) -> tuple[subprocess.Popen, str]:
    """A real MLflow tracking server on a SQLite store in folder; returns it and its URI."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--default-artifact-root", f"{folder}/artifacts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return server, uri
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("the MLflow server did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=100, help="cells recorded at once")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per cell")
    parser.add_argument("--baseline-records", type=int, default=300,
                        help="epoch records in each sequential baseline")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stores", nargs="+", choices=("sqlite", "server"),
                        default=["sqlite", "server"])
    add_option(parser)
    args = parser.parse_args()
    recorder = Recorder(args.record)
    records = args.cells * args.epochs
    for store in args.stores:
        ratios, rates = [], []
        for _ in range(args.rounds):
            folder = tempfile.mkdtemp(prefix="cvlib-capacity-")
            os.chdir(folder)
            server = None
            try:
                if store == "server":
                    server, uri = start_server(folder)
                    baseline_uri = pipeline_uri = uri
                else:
                    baseline_uri = f"sqlite:///{folder}/baseline.db"
                    pipeline_uri = f"sqlite:///{folder}/mlflow.db"
                per_record = sequential_baseline(baseline_uri, args.baseline_records)
                seconds = record_all(pipeline_uri, args.cells, args.epochs)
            finally:
                if server is not None:
                    server.terminate()
                    server.wait()
            rates.append(records / seconds)
            ratios.append(records / seconds * per_record)
            print(f"{store}: sequential log_batch {per_record * 1000:.1f} ms a record "
                  f"({1 / per_record:.0f}/s); recorder {records / seconds:.0f} records/s "
                  f"({records} records of {args.cells} cells, {seconds:.1f} s, with their "
                  f"series, tables and plots)", flush=True)
        figure = f"{statistics.median(ratios):.2f}"
        print(f"{store}: epoch records per second, recorder / sequential log_batch: {figure} "
              f"(goal: at least 3); {statistics.median(rates):.0f} records/s feed "
              f"{statistics.median(rates) * 10:.0f} trainers with 10-second epochs")
        recorder.add(f"driver capacity into {store}: epoch records/s, recorder / sequential "
                     f"log_batch", ">= 3", figure)


if __name__ == "__main__":
    main()
