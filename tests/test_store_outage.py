"""A tracking server that goes away mid-grid, loses answers or refuses writes, with the
real ``cvlib server`` on a real PostgreSQL: training goes on, the writes wait in the
local journal, and nothing is lost or written twice, whether the server comes back
during the command or only for the next one, whether the command is killed at any
moment, and whatever answer the network loses. Results are read back through MLflow's
API."""
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from conftest import REPO, TINY_GRID, free_port, read_until, start_cvlib, start_server
from journal_helpers import JournalOnly, plots_to_send
from mlflow.entities import ViewType

from cvlib.tracking.journal import Journal
from cvlib.tracking.rejected_writes import rejected_file
from cvlib.tracking.schema import CELL_TAG, RUN_KEY_TAG

SMOKE = REPO / "experiments" / "smoke.yaml"
# How long the server stays away in the test where it comes back during the command.
OUTAGE_SECONDS = 25
# The line after a failure that names the log of what libraries printed.
HELD_BACK_NOTE = "cvlib: what libraries and servers printed is in"


@pytest.fixture
def server_on(postgres, tmp_path):
    """Starts `cvlib server` on a database of the session's PostgreSQL, again on the same
    port when called again; every server it started is gone after the test."""
    started = []

    def start(database: str, port: int, folder: Path = tmp_path):
        folder.mkdir(parents=True, exist_ok=True)
        server, url = start_server(database, folder, port=port)
        started.append(server)
        return server, url

    yield start
    for server in started:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _four_epoch_grid(folder: Path) -> Path:
    grid = folder / "outage.yaml"
    grid.write_text(SMOKE.read_text().replace("epochs: 2", "epochs: 4"))
    return grid


def _run(grid: Path, url: str, cifar_dir, folder: Path, *flags: str):
    return start_cvlib("run", str(grid), "--tracking-uri", url, "--data-dir", str(cifar_dir),
                       *flags, cwd=folder)


def _kill(server) -> float:
    """SIGKILL the server's whole process group; returns when it went down."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    return time.monotonic()


def _assert_every_cell_once(url: str, plots_in_flight: int = 0) -> list:
    """Each of the 4 cells has one FINISHED run with every epoch's metrics once, its
    statistics table and its plots (but for ``plots_in_flight`` runs, whose plots were
    being drawn when their command was killed); no run was created twice. Returns every
    cell run."""
    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name("smoke")
    runs = [run for run in client.search_runs([experiment.experiment_id])
            if CELL_TAG in run.data.tags]
    keys = [run.data.tags[RUN_KEY_TAG] for run in runs]
    assert len(keys) == len(set(keys)), "a run was created twice"
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert sorted(run.data.tags[CELL_TAG] for run in finished) == sorted(
        {run.data.tags[CELL_TAG] for run in runs}) and len(finished) == 4
    without_plots = 0
    for run in finished:
        for key in ("loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3, 4], (run.info.run_name, key, steps)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "stats")] == [
            "stats/activations.parquet"]
        without_plots += not {a.path for a in client.list_artifacts(
            run.info.run_id, "plots")} >= {"plots/curves.png", "plots/layer_std.png"}
    assert without_plots <= plots_in_flight
    return runs


@pytest.mark.slow
def test_a_server_killed_mid_grid_and_back_costs_nothing(postgres, server_on, tmp_path,
                                                         cifar_dir):
    """The server is killed after the first cell, kept down for OUTAGE_SECONDS while the
    grid trains on, and started again on the same database and port."""
    backend, port = postgres("outage"), free_port()
    server, url = server_on(backend, port)
    process = _run(_four_epoch_grid(tmp_path), url, cifar_dir, tmp_path, "--workers", "2")
    lines = read_until(process, "[1/4]")
    down_at = _kill(server)
    lines += read_until(process, "tracking server unreachable since")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
    server, url = server_on(backend, port)
    back_at = time.monotonic()
    lines += process.stdout.readlines()
    assert process.wait(timeout=900) == 0, "".join(lines)[-3000:]
    output = "".join(lines)
    caught_up = re.search(r"tracking server back after ([\d.]+) s away; the (\d+) writes "
                          r"journaled meanwhile were sent in ([\d.]+) s", output)
    assert caught_up, output[-3000:]
    print(f"store down {back_at - down_at:.1f} s; the command saw it away "
          f"{caught_up[1]} s, then sent {caught_up[2]} journaled writes in {caught_up[3]} s")
    assert not list((tmp_path / "mlruns" / "journal").glob("*.jsonl")), "journal left"
    _assert_every_cell_once(url)


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["killed", "store-timeout"])
def test_a_command_ended_while_the_server_is_down_is_sent_by_the_next(
        ending, postgres, server_on, tmp_path, cifar_dir):
    """The server is killed after the first cell; the command then ends while it is still
    away: SIGKILL after the third cell, or --store-timeout. The server comes back, and the
    same command sends the journal, then trains only what is left."""
    backend, port = postgres(f"replay_{ending.replace('-', '_')}"), free_port()
    server, url = server_on(backend, port)
    grid = _four_epoch_grid(tmp_path)
    # Killed: the default (30 min) store-timeout never ends it; else 15 s of outage.
    flags = ("--workers", "1") + (("--store-timeout", "0.25") if ending != "killed" else ())
    process = _run(grid, url, cifar_dir, tmp_path, *flags)
    lines = read_until(process, "[1/4]")
    _kill(server)
    if ending == "killed":
        lines += read_until(process, "[3/4]")
        process.kill()
        process.wait()
    else:
        lines += process.stdout.readlines()
        assert process.wait(timeout=300) == 3, "".join(lines)[-3000:]
        # The error's line, then at most the line naming the log of what MLflow printed.
        error = [line for line in lines if not line.startswith(HELD_BACK_NOTE)][-1]
        assert "longer than --store-timeout" in error, lines[-2:]
    assert "tracking server unreachable since" in "".join(lines)
    journals = list((tmp_path / "mlruns" / "journal").glob("*.jsonl"))
    assert len(journals) == 1, "".join(lines)[-3000:]

    server, url = server_on(backend, port)
    rerun = _run(grid, url, cifar_dir, tmp_path, *flags)
    output = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, output[-3000:]
    replay = re.search(r"sent (\d+) writes that an earlier command journaled in .* \(([\d.]+) s\)",
                       output)
    assert replay, output[-3000:]
    continued = output.count("from its checkpoint after epoch")
    print(f"{ending}: replayed {replay[1]} writes in {replay[2]} s; {continued} cell(s) "
          f"continued from a checkpoint")
    assert not journals[0].exists()
    done = int(re.search(r"(\d+) cells done", output)[1])
    assert (done == 3 if ending == "killed" else done >= 1), output[-3000:]
    assert f"{4 - done} cells finished" in output, output[-3000:]
    runs = _assert_every_cell_once(url, plots_in_flight=1 if ending == "killed" else 0)
    assert {run.info.status for run in runs} <= {"FINISHED", "KILLED"}


def _tiny_grid(folder: Path) -> Path:
    grid = folder / "tiny.yaml"
    grid.write_text(TINY_GRID)
    return grid


def _closed(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


class AnswerDroppingProxy:
    """A TCP proxy in front of a server: it forwards every request and answer, but for
    the first ``drops`` run creations it forwards the request and, once the server's
    answer begins (the run is committed), closes the client's connection instead of
    passing the answer on."""

    CREATE = b"POST /api/2.0/mlflow/runs/create "

    def __init__(self, server_url: str, drops: int):
        self.drops = drops
        self.dropped = 0
        self._target = ("127.0.0.1", urllib.parse.urlsplit(server_url).port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        _closed(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self._target)
            drop_answer = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, drop_answer),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, drop_answer),
                             daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket,
                  drop_answer: threading.Event) -> None:
        while data := _received(client):
            if data.startswith(self.CREATE):
                with self._lock:
                    if self.drops > 0:
                        self.drops -= 1
                        drop_answer.set()
            upstream.sendall(data)
        _closed(upstream)

    def _answers(self, upstream: socket.socket, client: socket.socket,
                 drop_answer: threading.Event) -> None:
        while data := _received(upstream):
            if drop_answer.is_set():
                with self._lock:
                    self.dropped += 1
                break
            client.sendall(data)
        _closed(client)
        _closed(upstream)


def _received(connection: socket.socket) -> bytes:
    try:
        return connection.recv(1 << 16)
    except OSError:  # closed by the other side's thread
        return b""


def _cell_runs_by_key(url: str, experiment: str) -> dict[str, list]:
    """Every run of an experiment, the trash's too, by the key it was created under."""
    client = mlflow.MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    by_key: dict[str, list] = {}
    for run in client.search_runs([found.experiment_id], run_view_type=ViewType.ALL):
        by_key.setdefault(run.data.tags[RUN_KEY_TAG], []).append(run)
    return by_key


@pytest.mark.slow
def test_a_run_creation_whose_answer_is_lost_creates_one_run(postgres, server_on, tmp_path,
                                                              cifar_dir):
    """The answers to the first three run creations of `cvlib run` (the grid's run and
    two cells') are lost after the server committed them: each run exists once."""
    server, url = server_on(postgres("lost_answer"), free_port())
    proxy = AnswerDroppingProxy(url, drops=3)
    try:
        result = _run(_tiny_grid(tmp_path), proxy.url, cifar_dir, tmp_path, "--workers", "1")
        output = result.communicate(timeout=600)[0]
    finally:
        proxy.close()
    assert result.returncode == 0, output[-3000:]
    assert proxy.dropped == 3, proxy.dropped
    by_key = _cell_runs_by_key(url, "tiny")
    assert {key: len(runs) for key, runs in by_key.items() if len(runs) > 1} == {}
    runs = [run for runs in by_key.values() for run in runs]
    assert len(runs) == 5 and {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.info.run_name for run in runs if CELL_TAG in run.data.tags) == [
        "relu-he-before-s0", "relu-he-none-s0", "tanh-he-before-s0", "tanh-he-none-s0"]


def _too_deep(folder: Path, length: int) -> Path:
    """A folder of one small file whose path below ``folder`` is about ``length``
    characters long."""
    deep, left = folder, length - len("/plot.png")
    while left > 1:
        part = min(200, left - 1)
        deep, left = deep / ("d" * part), left - part - 1
    deep.mkdir(parents=True)
    (deep / "plot.png").write_bytes(b"png")
    return folder


@pytest.mark.slow
def test_a_poison_write_is_set_aside_and_the_grid_completes(postgres, server_on, tmp_path,
                                                             cifar_dir):
    """An earlier command left a journal with three writes that fail for good: a param
    changed (HTTP 400), plots whose path is too long for the server's disk (HTTP 500
    every time, while the server answers) and plots whose copy is gone (a local
    error). `cvlib run` sets each aside with a notice, sends the rest, and completes
    the grid; the next command reports them, and never sends them again."""
    # The server keeps its artifacts 100 characters deeper than the journal its copies.
    server, url = server_on(postgres("poison"), free_port(), tmp_path / ("s" * 100))
    client = mlflow.MlflowClient(url)
    experiment_id = client.create_experiment("tiny")
    folder = tmp_path / "mlruns" / "journal"
    journal = Journal.create(folder, url)
    writes = JournalOnly(journal)
    run = writes.create_run(experiment_id, "earlier", {})
    writes.log_batch(run, params={"lr": "0.1"})
    writes.log_batch(run, params={"lr": "0.2"})
    # Plots with a path that fits below the journal's copy (NAME.files/4/), not below
    # the server's artifacts folder, the experiment's and the run's: ENAMETOOLONG
    # there, an HTTP 500 each time they are sent.
    path_max = os.pathconf("/", "PC_PATH_MAX")
    length = path_max - len(str(journal.files_folder / "4")) - 20
    server_prefix = tmp_path / ("s" * 100) / "artifacts" / experiment_id / ("r" * 32)
    assert len(str(server_prefix / "artifacts")) + length > path_max
    writes.log_artifacts(run, str(_too_deep(tmp_path / "deep", length)))
    writes.log_artifacts(run, str(plots_to_send(tmp_path)))
    writes.log_metrics(run, [("loss", 0.5, 1000, 1)])
    writes.set_terminated(run, "FINISHED")
    journal.close(remove=False)
    shutil.rmtree(journal.files_folder / "5")  # the copy of the second plots, gone

    grid = _tiny_grid(tmp_path)
    first = _run(grid, url, cifar_dir, tmp_path, "--workers", "1")
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output[-3000:]
    failed = re.findall(r"a write \((\w+) of run \w+\) failed for good: (.*); set aside in "
                        r"(\S+), never sent again", output)
    assert [(kind, path) for kind, _, path in failed] == [
        ("log_batch", str(rejected_file(Path("mlruns", "journal"))))] + [
        ("log_artifacts", str(rejected_file(Path("mlruns", "journal"))))] * 2, output[-3000:]
    assert "HTTP 500" in failed[1][1] and "gone" in failed[2][1], failed
    assert re.search(r"sent 7 writes that an earlier command journaled", output), output
    assert "4 cells finished" in output, output[-3000:]
    earlier = client.search_runs([experiment_id], "attributes.run_name = 'earlier'")[0]
    assert earlier.info.status == "FINISHED" and earlier.data.params == {"lr": "0.1"}
    assert earlier.data.metrics == {"loss": 0.5}
    assert len(rejected_file(folder).read_text().splitlines()) == 3

    again = _run(grid, url, cifar_dir, tmp_path, "--workers", "1")
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert (f"3 writes to this tracking server failed for good earlier and are set aside "
            f"in {rejected_file(Path('mlruns', 'journal'))}") in output, output[-3000:]
    assert "4 cells done, 0 to run" in output and "failed for good:" not in output, output
    assert len(rejected_file(folder).read_text().splitlines()) == 3


# The chaos loop: how many commands it kills. Its moments follow the grid's progress, not
# the clock, so that a fast or a loaded machine gets the same kinds of moments: some while
# a command starts (before it has read the store), the others after a random number of
# its cells' ends (piped output has a line per cell, and an epoch's line at most every
# 30 s), at most an equal share of the cells left for each kill to come, then a random
# part of a cell's time more (inside an epoch, a write, a cell's end, a journal's replay).
# A command whose server is down trains its last cell, then waits for the server: that
# wait is a moment too.
CHAOS_KILLS = 6
CHAOS_SEED_ENV = "CVLIB_CHAOS_SEED"
CHAOS_EPOCHS = 8
CHAOS_GRID = TINY_GRID.replace("train_size: 200", "train_size: 8000").replace(
    "epochs: 2", f"epochs: {CHAOS_EPOCHS}").replace(
    "[relu, tanh]", "[relu, tanh, elu, sigmoid]").replace("seeds: [0]", "seeds: [0, 1, 2]")
# One round in this many kills its command while it starts.
CHAOS_STARTUP_ODDS = 5
# A command has read the store once it says what it will train.
PLANNED = "to redo"
PLAN = re.compile(r"(\d+) cells done, (\d+) to run, (\d+) to redo")
PROGRESS = re.compile(r" epoch \d+/\d+ |^\[\d+/\d+\] ")
WAITING_FOR_SERVER = "waiting for the tracking server to take the last"


def _read_all(process, marker: str) -> tuple[list[str], threading.Event, threading.Thread]:
    """A running command's output lines, read by a thread (so the pipe never fills), and
    an event set once a line holds ``marker``."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, seen, reader


def _tally(output: str, figures: Counter) -> None:
    """Count what a command said it retried, replayed, redid and set aside."""
    for count in re.findall(r"sent (\d+) writes that an earlier command journaled", output):
        figures["journals replayed"] += 1
        figures["writes replayed"] += int(count)
    for count in re.findall(r"the (\d+) writes journaled meanwhile were sent", output):
        figures["outages caught up during a command"] += 1
        figures["writes sent after an outage"] += int(count)
    figures["outages seen"] += output.count("its results wait in the local journal")
    for redo in re.findall(r"cells done, \d+ to run, (\d+) to redo", output):
        figures["cells redone"] += int(redo)
    for killed in re.findall(r"\((\d+) runs left RUNNING by a dead process marked KILLED\)",
                             output):
        figures["runs marked KILLED"] += int(killed)
    figures["writes set aside"] += output.count("failed for good")
    figures["torn journal lines dropped"] += output.count("cut short")
    figures["duplicate runs repaired"] += output.count("two runs were created under one key")


def _progress(lines: list[str]) -> int:
    """How many progress lines (an epoch, a cell's end) a command printed."""
    return sum(bool(PROGRESS.search(line)) for line in list(lines))


def _wait_for_progress(lines: list[str], count: int, process, timeout: float = 600) -> None:
    """Return once a command printed ``count`` progress lines, waits for its server after
    its last cell, or ended."""
    deadline = time.monotonic() + timeout
    while (_progress(lines) < count and process.poll() is None
           and not any(WAITING_FOR_SERVER in line for line in list(lines))):
        assert time.monotonic() < deadline, "the command stalled"
        time.sleep(0.02)


def _wait_for_plan(planned: threading.Event, process, timeout: float = 600) -> bool:
    """Whether a command said what it will train (False: it ended first)."""
    deadline = time.monotonic() + timeout
    while not planned.wait(timeout=0.1):
        if process.poll() is not None:
            return planned.is_set()
        assert time.monotonic() < deadline, "the command stalled before its plan"
    return True


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chaos_kills_at_random_moments_lose_nothing_and_write_nothing_twice(
        postgres, server_on, tmp_path, cifar_dir):
    """Rounds until CHAOS_KILLS commands were killed: `cvlib run` starts, and is killed
    with SIGKILL at a random moment of its progress (every other round with the server
    killed at a random moment before); then what was stopped is started again. A last
    command completes the grid. Every cell is FINISHED once, with every epoch's metrics
    once, its statistics and its plots; no run key is in the store twice; no write was
    set aside."""
    seed = int(os.environ.get(CHAOS_SEED_ENV) or time.time())
    rng = random.Random(seed)
    backend, port = postgres("chaos"), free_port()
    server, url = server_on(backend, port)
    grid = tmp_path / "tiny.yaml"
    grid.write_text(CHAOS_GRID)
    figures: Counter = Counter()
    moments = []  # per round: (progress lines at the server's kill or None, at the command's)
    killed_rounds = []
    outputs = []
    while len(killed_rounds) < CHAOS_KILLS and len(outputs) < 2 * CHAOS_KILLS:
        round_number = len(outputs) + 1
        server_dies = round_number % 2 == 0
        process = _run(grid, url, cifar_dir, tmp_path, "--workers", "2")
        lines, planned, reader = _read_all(process, PLANNED)
        server_at = kill_at = "start"
        if rng.randrange(CHAOS_STARTUP_ODDS) == 0:
            if server_dies:
                planned.wait(timeout=rng.uniform(0.5, 4.0))
                _kill(server)
            planned.wait(timeout=rng.uniform(0.5, 8.0))
        elif _wait_for_plan(planned, process):
            plan = next(PLAN.search(line) for line in lines if PLAN.search(line))
            left = int(plan[2]) + int(plan[3])
            share = left // (CHAOS_KILLS - len(killed_rounds) + 1)
            kill_at = rng.randint(0, share)
            base = _progress(lines)
            if server_dies:
                server_at = rng.randint(0, kill_at)
                _wait_for_progress(lines, base + server_at, process)
                time.sleep(rng.uniform(0.0, 0.5))
                _kill(server)
            _wait_for_progress(lines, base + kill_at, process)
            time.sleep(rng.uniform(0.0, 4.0))
        moments.append((server_at if server_dies else None, kill_at))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            figures["commands killed with the server down"] += server_dies
            killed_rounds.append(round_number)
        else:
            figures[f"commands that ended before their kill, exit {process.returncode}"] += 1
        reader.join()
        outputs.append("".join(lines))
        print(f"round {round_number}: exit {process.returncode}; last lines: {lines[-3:]}")
        _tally(outputs[-1], figures)
        if server.poll() is not None:  # restart what was stopped
            server, url = server_on(backend, port)
    final = _run(grid, url, cifar_dir, tmp_path, "--workers", "2")
    output = final.communicate(timeout=900)[0]
    outputs.append(output)
    _tally(output, figures)
    print(f"chaos loop, seed {seed} ({CHAOS_SEED_ENV}): {len(moments)} rounds, "
          f"{len(killed_rounds)} commands killed, at (progress lines when the server was "
          f"killed, when the command was): {moments}; "
          + "; ".join(f"{name}: {count}" for name, count in sorted(figures.items())))
    assert final.returncode == 0, output[-3000:]
    assert len(killed_rounds) == CHAOS_KILLS, f"only {len(killed_rounds)} commands killed"

    by_key = _cell_runs_by_key(url, "tiny")
    assert {key: len(runs) for key, runs in by_key.items() if len(runs) > 1} == {}, \
        "a run was created twice"
    client = mlflow.MlflowClient(url)
    cells = [run for runs in by_key.values() for run in runs if CELL_TAG in run.data.tags]
    finished = Counter(run.data.tags[CELL_TAG] for run in cells
                       if run.info.status == "FINISHED" and run.info.lifecycle_stage == "active")
    assert len(finished) == 24 and set(finished.values()) == {1}, finished
    without_plots = []
    for run in cells:
        if run.info.status != "FINISHED":
            continue
        for key in ("loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, CHAOS_EPOCHS + 1)), (run.info.run_name, key, steps)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "stats")] == [
            "stats/activations.parquet"], run.info.run_name
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        if not plots >= {"plots/curves.png", "plots/layer_std.png"}:
            without_plots.append(run.info.run_name)
    journal = tmp_path / "mlruns" / "journal"
    assert not list(journal.glob("*.jsonl")), "a journal or a rejected write is left"
    # Which command's output said each of them had finished, and whether it was killed.
    ended_in = {name: [number + 1 for number, text in enumerate(outputs)
                       if re.search(rf"\] {name} ", text)] for name in without_plots}
    assert without_plots == [], (
        f"FINISHED without plots: {without_plots}; they finished in rounds {ended_in} "
        f"(round {len(outputs)} is the last command), rounds {killed_rounds} "
        f"were killed. Every journal was replayed and none of its writes set aside: "
        f"their plots never reached a journal (a kill between a run's end and its plots)")
