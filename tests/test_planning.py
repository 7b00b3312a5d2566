"""Resume planning (which cells are done, to run, to redo; which runs are dead) and
scheduling (which cell a process trains next)."""
import dataclasses
import os
import subprocess
import sys

from cvlib.engine.events import Task
from cvlib.engine.resume import is_dead, plan
from cvlib.engine.scheduling import expected_cost, in_graph_order, pick_task
from cvlib.grids import grid_from_dict
from cvlib.tracking.records import RunRecord, this_process

CELLS = grid_from_dict({"name": "p", "grid": {"model.activation": ["relu", "tanh", "elu",
                                                                   "selu", "gelu"]}}).cells()
HOST, PID = this_process()


def _record(cell, status, run_id="r", **kwargs):
    return RunRecord(run_id=run_id, cell_hash=cell.cell_hash, status=status, **kwargs)


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_finished_cells_are_done_failed_and_killed_are_redone():
    records = [_record(CELLS[0], "FINISHED"), _record(CELLS[1], "FAILED"),
               _record(CELLS[2], "KILLED"), _record(CELLS[2], "FAILED", "r2")]
    result = plan(CELLS, records)
    assert result.done == [CELLS[0]]
    assert result.to_redo == [CELLS[1], CELLS[2]]
    assert result.to_run == CELLS[3:]
    assert result.pending == CELLS[1:]
    assert result.summary() == "1 cells done, 2 to run, 2 to redo"


def test_a_finished_run_wins_over_failed_attempts_of_the_same_cell():
    result = plan(CELLS, [_record(CELLS[0], "FAILED", "a"), _record(CELLS[0], "FINISHED", "b")])
    assert result.done == [CELLS[0]]


def test_running_runs_of_a_dead_process_are_marked_and_redone():
    dead = _record(CELLS[0], "RUNNING", host=HOST, pid=_dead_pid(), heartbeat=10**10)
    alive = _record(CELLS[1], "RUNNING", host=HOST, pid=PID, heartbeat=0)
    result = plan(CELLS, [dead, alive])
    assert result.dead_runs == [dead]
    assert CELLS[0] in result.to_redo
    assert result.running_elsewhere == [CELLS[1]]  # alive: its old heartbeat does not matter
    assert CELLS[1] not in result.pending


def test_other_hosts_runs_die_by_heartbeat_age():
    now = 1_000_000.0
    fresh = _record(CELLS[0], "RUNNING", host="elsewhere", pid=1, heartbeat=now - 60)
    stale = _record(CELLS[1], "RUNNING", host="elsewhere", pid=1, heartbeat=now - 3600)
    silent = _record(CELLS[2], "RUNNING", host="elsewhere", pid=1)
    assert not is_dead(fresh, stale_after=1800, now=now)
    assert is_dead(stale, stale_after=1800, now=now)
    assert is_dead(silent, stale_after=1800, now=now)


def test_dead_parent_runs_are_marked_too():
    parent = RunRecord(run_id="p", cell_hash=None, status="RUNNING", host=HOST, pid=_dead_pid())
    live_parent = RunRecord(run_id="q", cell_hash=None, status="RUNNING", host=HOST,
                            pid=os.getpid())
    assert plan(CELLS, [parent, live_parent]).dead_runs == [parent]


def test_rerun_redoes_everything_and_supersedes_finished_runs():
    records = [_record(CELLS[0], "FINISHED", "old"), _record(CELLS[1], "FAILED")]
    result = plan(CELLS, records, rerun=True)
    assert result.done == []
    assert result.pending == CELLS
    assert result.superseded == {CELLS[0].cell_hash: ["old"]}


def _grid_cells(axes: dict) -> list:
    return grid_from_dict({"name": "g", "grid": axes}).cells()


def test_a_graph_is_fixed_by_all_settings_but_initializer_learning_rate_and_seed():
    same = grid_from_dict({"name": "g", "seeds": [0, 1], "grid": {
        "model.initializer": ["xavier", "he"], "train.learning_rate": [0.1, 0.5]}}).cells()
    assert len(same) == 8 and len({cell.graph_key for cell in same}) == 1
    for axis, values in {"model.activation": ["tanh", "relu"], "model.bn": ["none", "before"],
                         "model.widths": [[8], [16]], "train.optimizer": ["sgd", "adam"],
                         "train.momentum": [0.0, 0.5], "train.weight_decay": [0.0, 1e-4]}.items():
        cells = _grid_cells({axis: values})
        assert cells[0].graph_key != cells[1].graph_key, axis


def test_a_worker_takes_cells_of_the_graphs_it_holds_and_leaves_others_theirs():
    # Grid order alternates the graphs (initializer varies slowest), as a yaml file may.
    cells = _grid_cells({"model.initializer": ["xavier", "he"],
                         "model.activation": ["relu", "tanh", "elu"]})
    graphs = [cell.graph_key for cell in cells]
    relu, tanh, elu = graphs[:3]
    assert pick_task(cells, [], []) == 0
    assert pick_task(cells[1:], [relu], [tanh]) == 2  # its own graph, further down
    assert pick_task(cells, [], [relu]) == 1  # a graph no other worker holds
    assert pick_task(cells, [tanh, relu], []) == 0  # the most recent of its graphs
    assert pick_task(cells[3:], [elu], [relu, tanh]) == 2
    assert pick_task(cells[:2], [elu], [relu, tanh]) == 0  # all taken elsewhere: the first


def test_a_worker_starts_the_graph_with_the_most_waiting_work():
    """Longest first, so that the grid ends on short cells: BN and maxout passes cost
    more, and so do more epochs, more images and more cells of one graph."""
    plain, bn = _grid_cells({"model.bn": ["none", "before"]})
    maxout = _grid_cells({"model.activation": ["maxout"]})[0]
    assert pick_task([plain, bn], [], []) == 1
    assert pick_task([plain, bn, maxout], [], []) == 2
    longer = dataclasses.replace(plain, train=dataclasses.replace(plain.train,
                                                               epochs=2 * plain.train.epochs))
    assert pick_task([bn, longer], [], []) == 1
    # Two cells of one graph (seeds) outweigh one cell of a costlier pass.
    twice = [plain, dataclasses.replace(plain, seed=1)]
    assert pick_task([bn, *twice], [], []) == 1
    assert pick_task([bn, *twice], [], [plain.graph_key]) == 0  # held elsewhere
    assert expected_cost(plain) < expected_cost(bn) < expected_cost(maxout)


def test_two_workers_dispatched_by_pick_task_trace_each_graph_once():
    cells = _grid_cells({"model.initializer": ["xavier", "he", "small_gaussian"],
                         "model.activation": ["relu", "tanh", "elu", "sigmoid"]})
    waiting, history = list(cells), {0: [], 1: []}
    for turn in range(len(cells)):  # the workers take turns
        worker = turn % 2
        cell = waiting.pop(pick_task(waiting, history[worker], history[1 - worker]))
        history[worker].append(cell.graph_key)
    traced = [set(history[0]), set(history[1])]
    assert len(traced[0]) + len(traced[1]) == 4  # four graphs, each traced by one worker
    assert len(history[0]) == len(history[1]) == 6


def test_one_process_trains_the_cells_of_each_graph_one_after_another():
    cells = _grid_cells({"model.initializer": ["xavier", "he"],
                         "model.activation": ["relu", "tanh", "elu"]})
    ordered = in_graph_order([Task(key, cell) for key, cell in enumerate(cells)])
    assert [task.key for task in ordered] == [0, 3, 1, 4, 2, 5]
