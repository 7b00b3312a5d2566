"""Plots drawn in the helper process reach their (already finished) runs; a run that ends
before them is marked until they do; a drawing that fails is tagged on its run and does
not stop the others; a helper that dies is replaced."""
import dataclasses
import multiprocessing
import os
import signal
import subprocess
import time

import pandas as pd
from conftest import TINY_GRID
from mlflow.tracking import MlflowClient

import cvlib.engine.experiment as experiment
from cvlib.engine.experiment import run_grid
from cvlib.engine.options import EngineOptions
from cvlib.engine.plot_repair import unplotted
from cvlib.engine.plot_writer import PlotWriter
from cvlib.grids import grid_from_dict, load_grid
from cvlib.tracking.owner import Owner, this_process
from cvlib.tracking.records import RunRecord
from cvlib.tracking.schema import PLOTS_DRAWN, PLOTS_ERROR_TAG, PLOTS_PENDING, PLOTS_TAG
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



HISTORY = {"loss": [2.0, 1.5], "accuracy": [0.2, 0.4], "val_loss": [1.9, 1.6],
           "val_accuracy": [0.25, 0.35]}


def _running_runs(uri: str, count: int):
    tracker = Tracker(uri)
    grid = grid_from_dict({"name": "plots", "seeds": list(range(count))})
    experiment_id = tracker.experiment_id("plots")
    parent = tracker.start_grid(grid, experiment_id, count)
    return [tracker.start_cell(experiment_id, parent, cell, grid.name) for cell in grid.cells()]


def test_a_run_ending_before_its_plots_is_marked_until_they_are_attached(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    early, late = _running_runs(uri, 2)
    writer = PlotWriter()
    writer.submit(early, HISTORY, None)
    writer.attach_done(wait=True)
    assert writer.pending_mark(early) == {}  # attached before its run ends: no mark
    early.finish("ok", tags=writer.pending_mark(early))
    writer.submit(late, HISTORY, None)
    mark = writer.pending_mark(late)
    assert mark == {PLOTS_TAG: PLOTS_PENDING}
    late.finish("ok", tags=mark)
    client = MlflowClient(uri)
    assert client.get_run(late.run_id).data.tags[PLOTS_TAG] == PLOTS_PENDING
    writer.close(wait=True)
    assert client.get_run(late.run_id).data.tags[PLOTS_TAG] == PLOTS_DRAWN
    assert PLOTS_TAG not in client.get_run(early.run_id).data.tags
    for run in (early, late):
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == \
            ["plots/curves.png"]


def test_plots_whose_helper_was_killed_are_drawn_by_a_new_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = _running_runs(uri, 1)
    before = set(multiprocessing.active_children())
    writer = PlotWriter()
    writer.start()
    (helper,) = set(multiprocessing.active_children()) - before
    writer.submit(run, HISTORY, None)
    os.kill(helper.pid, signal.SIGKILL)  # before its half second of drawing is over
    run.finish("ok", tags=writer.pending_mark(run))
    writer.close(wait=True)
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(run.run_id, "plots")] == ["plots/curves.png"]
    tags = client.get_run(run.run_id).data.tags
    assert PLOTS_ERROR_TAG not in tags and tags[PLOTS_TAG] == PLOTS_DRAWN


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_a_dead_commands_finished_runs_have_their_plots_redrawn():
    """A live command attaches its own pending plots; a later command redraws only those
    whose owner died."""
    here = this_process()
    gone = dataclasses.replace(here, pid=_a_dead_pid())

    def record(run_id, status="FINISHED", owner=gone, age=0.0, pending=True):
        return RunRecord(run_id=run_id, cell_hash=run_id, status=status,
                         heartbeat=time.time() - age, owner=owner, plots_pending=pending)

    records = [record("mine", owner=here), record("orphan"), record("drawn", pending=False),
               record("killed", status="RUNNING"),
               record("far", owner=Owner(host="other-host", pid=1), age=3600),
               record("far, beating", owner=Owner(host="other-host", pid=1))]
    assert [r.run_id for r in unplotted(records, stale_after=1800)] == ["orphan", "far"]


class _FailingToEnd(PlotWriter):
    """A plot writer whose part in a run's end raises, once: the recorder's write of
    that end fails."""

    failures = 1

    def pending_mark(self, run):
        if _FailingToEnd.failures:
            _FailingToEnd.failures -= 1
            raise OSError("the store refused the run's end")
        return super().pending_mark(run)


def test_a_run_whose_end_fails_to_be_written_is_failed_not_left_running(
        tmp_path, cifar_dir, monkeypatch):
    """The cell's one run ends FAILED with the reason, in this process's training (where
    the recorder's error reaches the trainer); no second run is opened for the failure,
    and none is left RUNNING by a command that lives on."""
    monkeypatch.setattr(experiment, "PlotWriter", _FailingToEnd)
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(TINY_GRID)
    grid = load_grid(grid_file, ["model.activation=relu"])  # 2 cells: bn none, before
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_grid(grid, uri, EngineOptions(data_dir=str(cifar_dir), workers=1),
                       echo=lambda line: None)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    cells = [run for run in runs if "cvlib.cell" in run.data.tags]
    by_cell: dict = {}
    for run in cells:
        by_cell.setdefault(run.data.tags["cvlib.cell"], []).append(run.info.status)
    assert len(summary.failed) == 1
    assert sorted(map(tuple, by_cell.values())) == sorted(
        [("FAILED",)] + [("FINISHED",)] * (len(by_cell) - 1)), by_cell
