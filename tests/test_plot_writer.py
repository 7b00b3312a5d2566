"""Plots drawn in the helper process reach their (already finished) runs; a drawing
that fails is tagged on its run and does not stop the others."""
import pandas as pd
from mlflow.tracking import MlflowClient

from cvlib.engine.plot_writer import PlotWriter
from cvlib.grids import grid_from_dict
from cvlib.tracking.schema import PLOTS_ERROR_TAG
from cvlib.tracking.writer import Tracker


def _finished_runs(uri: str, count: int):
    tracker = Tracker(uri)
    grid = grid_from_dict({"name": "plots", "seeds": list(range(count))})
    experiment_id = tracker.experiment_id("plots")
    parent = tracker.start_grid(grid, experiment_id, count)
    runs = [tracker.start_cell(experiment_id, parent, cell, grid.name) for cell in grid.cells()]
    for run in runs:
        run.finish("ok")
    return runs


def test_plots_join_finished_runs_and_a_failed_drawing_is_tagged(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    good, bad = _finished_runs(uri, 2)
    warnings = []
    writer = PlotWriter(warn=warnings.append)
    history = {"loss": [2.0, 1.5], "accuracy": [0.2, 0.4], "val_loss": [1.9, 1.6],
               "val_accuracy": [0.25, 0.35]}
    writer.submit(good, history, None)
    writer.submit(bad, history, pd.DataFrame({"no such column": [1.0]}))
    writer.close(wait=True)
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(good.run_id, "plots")] == ["plots/curves.png"]
    assert PLOTS_ERROR_TAG not in client.get_run(good.run_id).data.tags
    assert client.list_artifacts(bad.run_id, "plots") == []
    assert "KeyError" in client.get_run(bad.run_id).data.tags[PLOTS_ERROR_TAG]
    assert len(warnings) == 1 and bad.run_id in warnings[0]
    assert client.get_run(good.run_id).info.status == "FINISHED"
