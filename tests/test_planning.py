"""Resume planning (which cells are done, to run, to redo; which runs are dead, by their
owner process: tracking.owner) and scheduling (which cell a process trains next)."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from cvlib.engine.events import Task
from cvlib.engine.resume import is_dead, plan
from cvlib.engine.scheduling import expected_cost, in_graph_order, pick_task
from cvlib.grids import grid_from_dict
from cvlib.studies.batch_norm import bn_grids
from cvlib.studies.context import SCALES, StudyContext, distinctly_named
from cvlib.tracking.owner import Owner, owner_alive, this_process
from cvlib.tracking.records import RunRecord

CELLS = grid_from_dict({"name": "p", "grid": {"model.activation": ["relu", "tanh", "elu",
                                                                   "selu", "gelu"]}}).cells()
HERE = this_process()
NOW = 1_000_000.0
FRESH, STALE = NOW - 60, NOW - 3600
# Prints the owner of the process that runs it, as its run's tags record it.
PRINT_OWNER = ("import json; from cvlib.tracking.owner import this_process; "
               "print(json.dumps(this_process().tags()), flush=True)")


def _record(cell, status, run_id="r", **kwargs):
    return RunRecord(run_id=run_id, cell_hash=cell.cell_hash, status=status, **kwargs)


def _owner_of(command: list[str]) -> tuple[subprocess.Popen, Owner]:
    """A process that prints its owner and waits for its stdin to close, and that owner."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    assert line, f"{command} printed no owner"
    return process, Owner.from_tags(json.loads(line))


def _python_owner(wait: bool = True) -> tuple[subprocess.Popen, Owner]:
    code = PRINT_OWNER + ("; import sys; sys.stdin.read()" if wait else "")
    return _owner_of([sys.executable, "-c", code])


def test_this_process_is_recorded_whole_and_alive():
    assert None not in (HERE.host, HERE.pid, HERE.boot_id, HERE.pid_namespace,
                        HERE.start_ticks)
    assert Owner.from_tags(HERE.tags()) == HERE
    assert owner_alive(HERE) is True


def test_an_owner_that_ended_is_dead_even_with_a_fresh_heartbeat():
    process, owner = _python_owner(wait=False)
    process.wait()  # reaped: its pid names no process
    assert owner_alive(owner) is False
    assert is_dead(_record(CELLS[0], "RUNNING", heartbeat=NOW, owner=owner), now=NOW)


def test_a_pid_that_now_belongs_to_another_process_is_dead():
    process, owner = _python_owner()
    try:
        # The same pid, started at another tick: the pid went to another process.
        reused = dataclasses.replace(owner, start_ticks=owner.start_ticks - 1)
        assert owner_alive(owner) is True
        assert owner_alive(reused) is False
        assert is_dead(_record(CELLS[0], "RUNNING", heartbeat=NOW, owner=reused), now=NOW)
        assert not is_dead(_record(CELLS[0], "RUNNING", heartbeat=0, owner=owner), now=NOW)
    finally:
        process.stdin.close()
        process.wait()


def test_a_killed_owner_not_yet_reaped_is_dead():
    process, owner = _python_owner()
    process.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
    try:
        assert owner_alive(owner) is False
    finally:
        process.wait()


def test_an_owner_of_another_boot_is_judged_by_its_heartbeat():
    """Another machine with this host name (a container elsewhere), or this one before a
    reboot: its pid says nothing here, even when it names this very process."""
    other_boot = dataclasses.replace(HERE, boot_id="another-boot")
    assert owner_alive(other_boot) is None
    assert not is_dead(_record(CELLS[0], "RUNNING", heartbeat=FRESH, owner=other_boot),
                       stale_after=1800, now=NOW)
    assert is_dead(_record(CELLS[0], "RUNNING", heartbeat=STALE, owner=other_boot),
                   stale_after=1800, now=NOW)


def test_an_owner_in_another_pid_namespace_is_judged_by_its_heartbeat():
    """A container on this machine shares the kernel's boot id but numbers its processes
    apart: its pid 1 is not this namespace's pid 1."""
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to start a process in a pid namespace")
    probe = subprocess.run([*unshare, "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"this system refuses new user and pid namespaces: {probe.stderr.strip()}")
    process, owner = _owner_of(
        [*unshare, sys.executable, "-c", PRINT_OWNER + "; import sys; sys.stdin.read()"])
    try:
        assert owner.boot_id == HERE.boot_id and owner.pid_namespace != HERE.pid_namespace
        assert owner.pid == 1 and owner.start_ticks is not None
        assert owner_alive(owner) is None  # this namespace's pid 1 is another process
        live = _record(CELLS[0], "RUNNING", heartbeat=FRESH, owner=owner)
        assert plan(CELLS[:1], [live], stale_after=1800, now=NOW).running_elsewhere == CELLS[:1]
    finally:
        process.stdin.close()
        process.wait()


def test_runs_of_older_versions_are_judged_by_their_heartbeat():
    """Tags with host and pid only: the pid may have gone to another process since, so
    even this host's live pid proves nothing; the heartbeat's age decides."""
    legacy = Owner(host=HERE.host, pid=HERE.pid)
    assert Owner.from_tags({"cvlib.host": HERE.host, "cvlib.pid": str(HERE.pid)}) == legacy
    assert owner_alive(legacy) is None
    fresh = _record(CELLS[0], "RUNNING", heartbeat=FRESH, owner=legacy)
    stale = _record(CELLS[1], "RUNNING", heartbeat=STALE, owner=legacy)
    silent = _record(CELLS[2], "RUNNING", owner=legacy)
    result = plan(CELLS[:3], [fresh, stale, silent], stale_after=1800, now=NOW)
    assert result.running_elsewhere == CELLS[:1]
    assert result.to_redo == CELLS[1:3] and result.dead_runs == [stale, silent]


def test_hostile_owner_tags_are_no_owner():
    tags = {"cvlib.host": "h\n'x", "cvlib.pid": "-1", "cvlib.process_start": "1e9",
            "cvlib.boot_id": "", "cvlib.pid_namespace": ""}
    owner = Owner.from_tags(tags)
    assert owner == Owner(host="h\n'x")
    assert owner_alive(owner) is None


def test_hostile_heartbeats_are_no_heartbeat(tmp_path):
    """A heartbeat tag that holds no finite time (NaN or infinity would never grow
    stale) counts as none: the run is dead unless its owner is seen alive."""
    from mlflow.tracking import MlflowClient

    from cvlib.tracking.reads import run_records

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("hostile")
    values = ["abc", "nan", "inf", "-inf", "1e400", "", "'; DROP TABLE runs; --"]
    for value in values:
        client.create_run(experiment_id, tags={"cvlib.cell": CELLS[0].cell_hash,
                                               "cvlib.heartbeat": value,
                                               "cvlib.host": "elsewhere"})
    records = run_records(uri, "hostile")
    assert len(records) == len(values) and {r.heartbeat for r in records} == {None}
    assert all(is_dead(record) for record in records)


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
    process, gone = _python_owner(wait=False)
    process.wait()
    dead = _record(CELLS[0], "RUNNING", heartbeat=10**10, owner=gone)
    alive = _record(CELLS[1], "RUNNING", heartbeat=0, owner=HERE)
    result = plan(CELLS, [dead, alive])
    assert result.dead_runs == [dead]
    assert CELLS[0] in result.to_redo
    assert result.running_elsewhere == [CELLS[1]]  # alive: its old heartbeat does not matter
    assert CELLS[1] not in result.pending


def test_dead_parent_runs_are_marked_too():
    process, gone = _python_owner(wait=False)
    process.wait()
    parent = RunRecord(run_id="p", cell_hash=None, status="RUNNING", owner=gone)
    live_parent = RunRecord(run_id="q", cell_hash=None, status="RUNNING", owner=HERE)
    assert plan(CELLS, [parent, live_parent]).dead_runs == [parent]


def test_the_bn_studys_cells_that_both_grids_hold_train_once():
    """The fixed-logits grid's cells whose initializer is the fixed one are the first
    grid's cells: trained once, and found done by either grid."""
    context = StudyContext(experiment=None, scale=SCALES["smoke"], parent_run_id="")
    raw, fixed = (grid_from_dict(grid).cells() for grid in bn_grids(context))
    together = distinctly_named(raw + fixed)
    assert len(together) == 12 + 8
    pending = plan(together, []).pending
    assert len(pending) == 12 + 8 - 2 and len({c.cell_hash for c in pending}) == len(pending)
    finished = [_record(cell, "FINISHED", f"r{i}") for i, cell in enumerate(raw)]
    result = plan(together, finished)
    assert len(result.done) == 12 and len(result.to_run) == 6
    assert {c.model.initializer for c in result.to_run} == {
        "small_gaussian", "unit_gaussian", "he"}


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
