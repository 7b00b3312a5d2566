"""What a grid's progress shows without a terminal (few lines, none too long), how true
its time left is on made-up timings, and the time estimate of --dry-run."""
import re

import pytest
from conftest import run_cvlib

from cvlib.engine.estimate import Speed, TimeLeft, finishing_time, grid_estimate, multiply_adds
from cvlib.engine.progress import HEARTBEAT_SECONDS, LINE_LIMIT, Progress
from cvlib.grids import grid_from_dict

# Lines of a piped `cvlib run` that are not about cells: the header, the plan and the
# closing summary.
FIXED_LINES = 3


def cells_of(grid: dict) -> list:
    return grid_from_dict({"name": "g", "data": {"train_size": 1000}, **grid}).cells()


def test_the_time_left_is_the_longest_trainer_s_queue():
    assert finishing_time([], [3, 3, 3, 3], workers=2) == 6
    assert finishing_time([5], [1, 1], workers=2) == 5  # both go to the free trainer
    assert finishing_time([], [4, 1, 1, 1, 1], workers=2) == 4  # longest first
    assert finishing_time([2, 2], [], workers=2) == 2
    assert finishing_time([], [], workers=3) == 0


def test_the_time_left_learns_the_grid_s_speed_from_its_epochs_and_cells():
    """Cells of 10 s (1 s set-up, a 6 s first epoch, a 2 s second one, 1 s after): once
    two have ended, the two left take 10 s on two trainers, whatever the prior said."""
    cells = cells_of({"train": {"epochs": 2}, "grid": {"model.activation": ["relu", "elu"]},
                      "seeds": [0, 1]})
    wrong_prior = Speed(seconds_per_unit=1e-6, cell_overhead=100)
    time_left = TimeLeft(cells, workers=2, prior=wrong_prior)
    first, second = cells[0].name, cells[1].name
    assert time_left.remaining(0) > 1000  # the prior alone: far off
    for name in (first, second):
        time_left.cell_started(name, 0)
        time_left.epoch_done(name, 0, None, 0.5)
    for name in (first, second):
        time_left.epoch_done(name, 1, 6.0, 7.0)
    for name in (first, second):
        time_left.epoch_done(name, 2, 2.0, 9.0)
        time_left.cell_done(name, 10.0)
    # relu and elu weigh the same (vocabulary cost 1.0): every cell is alike.
    assert time_left.remaining(10.0) == pytest.approx(10.0, rel=0.01)
    times = time_left.times(repeat=False)
    assert (times.set_up, times.wrap_up) == (pytest.approx(1.0), pytest.approx(1.0))
    assert times.first_epoch == pytest.approx(3 * times.later_epochs)
    # A cell that has trained its first epoch for 2 s of its 8: its second and wrap-up.
    time_left.cell_started(cells[2].name, 10.0)
    time_left.epoch_done(cells[2].name, 1, 6.0, 17.0)
    assert time_left.remaining(17.0) == pytest.approx(10.0)  # the 4th cell, started now


def test_a_bigger_network_costs_more_in_the_cost_model():
    seeds = {"seeds": [0, 1, 2, 3]}
    small = cells_of({"model": {"widths": [8], "dense_units": 16}, **seeds})
    big = cells_of({"model": {"widths": [32, 64], "dense_units": 64}, **seeds})
    assert multiply_adds(big[0].model) > 10 * multiply_adds(small[0].model)
    mlp = cells_of({"model": {"arch": "mlp", "depth": 2, "width": 100}})[0]
    assert multiply_adds(mlp.model) == 32 * 32 * 3 * 100 + 100 * 100 + 100 * 10
    assert grid_estimate(big, 2, 2) > grid_estimate(small, 2, 2)
    assert grid_estimate(small, 1, 2) > grid_estimate(small, 2, 2)
    assert grid_estimate([], 2, 2) == 0


def test_piped_progress_is_a_line_per_cell_and_at_the_first_epoch(monkeypatch):
    """Many epochs told within HEARTBEAT_SECONDS: one line at the first second epoch,
    then one per finished cell, each within LINE_LIMIT, even for a hostile name and error."""
    cells = cells_of({"train": {"epochs": 50}, "grid": {"model.activation": ["relu", "tanh"]}})
    lines = []
    progress = Progress(cells, lines.append, bar=False, workers=2)
    for cell in cells:
        progress.cell_started(cell)
    for epoch in range(51):
        for cell in cells:
            progress.epoch_done(cell, epoch, 0.01)
    assert len(lines) == 1 and lines[0].startswith("  training ")
    assert f"{cells[0].name} epoch 2/50, {cells[1].name} epoch 1/50  (0/2 done" in lines[0]
    progress.cell_done(cells[0], "val_acc=0.500 test_acc=0.400")
    progress.cell_done(cells[1], "FAILED ValueError: " + "<x>" * 300)
    assert len(lines) == 3
    assert lines[1].startswith(f"[1/2] {cells[0].name}  val_acc=0.500 test_acc=0.400  (")
    assert lines[2].startswith(f"[2/2] {cells[1].name}  FAILED ValueError: <x>")
    assert "left ~0:00:00" in lines[2]
    assert all(len(line) <= LINE_LIMIT for line in lines), [len(line) for line in lines]
    # Each setting once: the run name, no key=value repeating it.
    assert "activation=" not in "".join(lines)


def test_the_training_line_fits_many_cells_within_the_limit():
    cells = cells_of({"grid": {"model.activation": ["relu", "tanh", "elu", "selu", "gelu"],
                               "model.initializer": ["he", "xavier", "glorot"]}})
    lines = []
    progress = Progress(cells, lines.append, bar=False, workers=15)
    for cell in cells:
        progress.cell_started(cell)
    progress.epoch_done(cells[0], 1, 1.0)
    assert not lines  # a first epoch alone says little of the next ones
    progress.epoch_done(cells[0], 2, 1.0)
    assert len(lines) == 1 and len(lines[0]) <= LINE_LIMIT
    assert re.search(r", \+\d+ more  \(0/15 done; elapsed", lines[0]), lines[0]


def test_a_piped_run_prints_a_line_per_cell_and_few_others(tmp_path, cifar_dir):
    """The real command, its output a pipe: 2 cells of 12 epochs each print their two
    lines, the heartbeat lines the elapsed time allows, and the fixed ones."""
    grid = tmp_path / "many-epochs.yaml"
    grid.write_text("name: many-epochs\n"
                    "data: {train_size: 100, val_size: 50, test_size: 50}\n"
                    "model: {arch: cnn, widths: [4], dense_units: 8}\n"
                    "train: {epochs: 12, batch_size: 50, stats_every: 12}\n"
                    "grid: {model.activation: [relu, tanh]}\n")
    result = run_cvlib("run", str(grid), "--workers", "1", "--data-dir", str(cifar_dir),
                       "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    cell_lines = [line for line in lines if re.match(r"\[\d/2\] ", line)]
    training = [line for line in lines if line.startswith("  training ")]
    assert len(cell_lines) == 2
    elapsed = re.search(r"elapsed (\d+):(\d\d):(\d\d)", cell_lines[-1]).groups()
    seconds = int(elapsed[0]) * 3600 + int(elapsed[1]) * 60 + int(elapsed[2])
    assert 1 <= len(training) <= 1 + seconds // HEARTBEAT_SECONDS, lines
    assert len(lines) == FIXED_LINES + len(cell_lines) + len(training), lines
    assert all(len(line) <= LINE_LIMIT for line in lines)


def test_dry_run_prints_a_time_estimate(tmp_path):
    result = run_cvlib("run", "experiments/seed_grid.yaml", "--dry-run", "--workers", "2",
                       "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.returncode == 0, result.stderr
    found = re.search(r"time estimate on this machine \(\d+ CPU cores?, 2 workers\): "
                      r"~(\d+):(\d\d):(\d\d) for 84 cells", result.stdout)
    assert found, result.stdout[-2000:]
    hours, minutes, _ = map(int, found.groups())
    assert hours * 60 + minutes >= 1
    one = run_cvlib("run", "experiments/seed_grid.yaml", "--dry-run", "--workers", "1",
                    "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert "1 worker): ~" in one.stdout
