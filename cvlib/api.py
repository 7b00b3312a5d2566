"""cvlib from Python (a script, a notebook): what the ``cvlib`` command does, as functions that
return what they made, a pandas DataFrame, a report page, a Keras model, instead of printing
it. ``import cvlib`` gives them (:mod:`cvlib` loads this module on first use).

Each function reads and writes the same store as the command would (its ``tracking_uri``,
else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns/mlflow.db``), and raises a
:class:`cvlib.CvlibError` with the command's one-line message where the command would exit
with it.
"""
from __future__ import annotations

import contextlib
import html
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from cvlib.environment import configure_process
from cvlib.errors import did_you_mean
from cvlib.fields import ConfigError
from cvlib.store_choice import ChosenStore

if TYPE_CHECKING:
    import pandas as pd

    from cvlib.engine.options import EngineOptions
    from cvlib.grids import Grid

# A run id as MLflow makes them, alone or in the model's URI that the table gives
# (runs:/ID/model); anything else names a cell.
RUN_ID = re.compile(r"(?:runs:/)?([0-9a-f]{32})(?:/.*)?")
# The report's height inline in a notebook, in pixels (it scrolls inside).
REPORT_HEIGHT = 800


@contextlib.contextmanager
def _store(tracking_uri: str | None) -> Iterator[ChosenStore]:
    """The store a call uses, its failures turned into one-line errors as the command's."""
    from cvlib.tracking.failures import store_failures

    configure_process()
    store = ChosenStore.choose(tracking_uri)
    with store_failures(store.uri):
        yield store


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Training that an interrupt (Ctrl-C, a notebook's stop button) ends as the command's
    does, its open runs marked KILLED; then KeyboardInterrupt. Signal handlers belong to
    the main thread: elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from cvlib.engine.signals import GridInterrupted, interrupts_raise

    try:
        with interrupts_raise():
            yield
    except GridInterrupted as interruption:
        raise KeyboardInterrupt(f"{interruption}: the open runs were marked KILLED; run "
                                f"the same call again to resume") from None


def _grid(grid: str | Path | Mapping[str, Any]) -> Grid:
    """A grid from its file, or from a dict with the file's content."""
    from cvlib.grids import grid_from_dict, load_grid

    if isinstance(grid, Mapping):
        return grid_from_dict(dict(grid))
    if isinstance(grid, (str, Path)):
        return load_grid(grid)
    raise ConfigError(f"a grid is a grid file's path or a dict of its sections, got "
                      f"{type(grid).__name__}")


def _engine(workers: int | None, ray: bool | str | None, cells: int | None,
            data_dir: str | None, progress: bool,
            grid_file: str | Path | None = None) -> EngineOptions:
    """What trains a call's cells: ``workers`` processes (None: one per CPU core, as
    ``--workers auto``), or a Ray cluster (``ray``: True for $RAY_ADDRESS, else a local
    instance; or the cluster's address); the grid file's git commit tags the cell runs."""
    from cvlib.engine.hosts import auto_workers
    from cvlib.engine.options import EngineOptions
    from cvlib.engine.provenance import grid_file_commit
    from cvlib.engine.ray_cluster import RayOptions
    from cvlib.extras import require

    shared = {"data_dir": data_dir, "progress_bar": progress,
              "run_tags": grid_file_commit(grid_file) if grid_file is not None else {}}

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"workers must be a number of at least 1, or None for one per "
                          f"CPU core, got {workers!r}")
    if ray is None or ray is False:
        return EngineOptions(**shared,
                             workers=auto_workers(cells) if workers is None else workers)
    require("ray", "cvlib.run(ray=...)")
    return EngineOptions(**shared, workers=1,
                         ray=RayOptions(address=ray if isinstance(ray, str) and ray else None,
                                        max_cells=workers))


def run(grid: str | Path | Mapping[str, Any], *, tracking_uri: str | None = None,
        experiment: str | None = None, workers: int | None = None,
        ray: bool | str | None = None, rerun: bool = False, progress: bool = True,
        data_dir: str | None = None) -> pd.DataFrame:
    """Train every cell of a grid into MLflow, as ``cvlib run`` does (resuming: cells with
    a result are skipped unless ``rerun``), and return its results table.

    Args:
        grid: A grid file's path, or a dict with the same content as a grid file.
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else
            sqlite:///mlruns/mlflow.db).
        experiment: The MLflow experiment (default: the grid's name).
        workers: Cells trained at once, each in its own process; 1 trains in this
            process (default: one per CPU core, as ``--workers auto``). With ``ray``: at
            most this many at once.
        ray: Train on a Ray cluster: True for $RAY_ADDRESS, else a local instance; or
            the cluster's address (needs ``pip install 'cvlib[ray]'``).
        rerun: Train every cell again (the replaced runs go to MLflow's trash).
        progress: Show a progress bar (in Jupyter the notebook's bar, with ipywidgets);
            the per-cell lines are printed either way.
        data_dir: The CIFAR-10 folder (default: $CVLIB_DATA_DIR, else Keras's download).

    Returns:
        The experiment's results table, as :func:`table` gives it.

    Raises:
        CvlibError: for a bad grid, an unusable store or missing data, before anything
            is trained.
        KeyboardInterrupt: when interrupted, after the open runs were marked KILLED.
    """
    with _store(tracking_uri) as store:
        chosen = _grid(grid)
        engine = _engine(workers, ray, len(chosen.cells()), data_dir, progress,
                         grid_file=None if isinstance(grid, Mapping) else grid)
        # Loaded once the grid is found good: a bad one is refused before MLflow loads.
        from cvlib.engine.experiment import run_grid
        from cvlib.engine.options import GridOptions
        from cvlib.pivot import experiment_table

        with _interruptible():
            summary = run_grid(chosen, store.uri, engine, GridOptions(rerun=rerun),
                               experiment=experiment, echo=_echo)
        return experiment_table(store.uri, summary.experiment)[0]


def _echo(line: str) -> None:
    print(line, flush=True)


def table(experiment: str | None = None, *, tracking_uri: str | None = None,
          columns: str | Sequence[str] = (), every_run: bool = False,
          pivot: str | None = None) -> pd.DataFrame:
    """An experiment's results table, as ``cvlib table`` shows it (``--format csv``
    keeps the same columns).

    Args:
        experiment: The experiment (default: the store's newest).
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else
            sqlite:///mlruns/mlflow.db).
        columns: Further metrics to add as columns, e.g. ``["act_std_last"]`` (or
            ``"a,b"`` as ``--columns`` takes them).
        every_run: Count every cell's latest run, failed and unfinished ones too (the
            columns runs, env_differs and error).
        pivot: One row per bn placement and activation, one column per initializer, each
            value this metric's mean ± std, e.g. ``"test_accuracy"``.

    Returns:
        One row per cell setting, the grid's settings first, best val_accuracy first.
    """
    from cvlib.pivot import experiment_table

    names = columns.split(",") if isinstance(columns, str) else list(columns)
    with _store(tracking_uri) as store:
        return experiment_table(store.uri, store.experiment(experiment),
                                tuple(name.strip() for name in names if name.strip()),
                                every_run=every_run, pivot=pivot)[0]


@dataclass(frozen=True)
class ReportPage:
    """A written report: shown inline by Jupyter, its file at ``path``."""

    path: Path
    experiment: str
    # The run name of the cell looked inside (None when none was).
    cell: str | None

    def _repr_html_(self) -> str:
        """The page in a frame of its own: its style and script stay inside it. Sandboxed:
        the page's sorting script runs, in an origin of its own, where text from the store
        could never reach the notebook's."""
        page = self.path.read_text(encoding="utf-8")
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
                f'style="width:100%;height:{REPORT_HEIGHT}px;border:1px solid #ccc" '
                f'title="cvlib report: {html.escape(self.experiment, quote=True)}"></iframe>')


def report(experiment: str | None = None, *, tracking_uri: str | None = None,
           out: str | Path | None = None, cell: str | None = None) -> ReportPage:
    """Write an experiment's HTML report and log it to its grid run, as ``cvlib report``
    does.

    Args:
        experiment: The experiment (default: the store's newest).
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else
            sqlite:///mlruns/mlflow.db).
        out: The HTML file (default: reports/EXPERIMENT.html beside a SQLite store).
        cell: The cell to look inside, by run name (default: the best by val_accuracy).

    Returns:
        The ReportPage: Jupyter shows it inline; ``.path`` is the file.
    """
    from cvlib.report_page import default_report_path, write_report

    with _store(tracking_uri) as store:
        name = store.experiment(experiment)
        path = Path(out or default_report_path(store.uri, name))
        written = write_report(store.uri, name, path, cell)
        return ReportPage(path=path, experiment=written.experiment, cell=written.cell)


def claims(scale: str = "full", *, tracking_uri: str | None = None,
           experiment: str | None = None, workers: int | None = None,
           ray: bool | str | None = None, out: str | Path | None = None,
           progress: bool = True, data_dir: str | None = None) -> pd.DataFrame:
    """Test the notes' claims on real CIFAR-10, as ``cvlib claims`` does, and return the
    verdicts.

    Args:
        scale: ``"full"`` (under an hour on 2 CPU cores, 3 seeds), ``"quick"`` (a
            fraction of that, 1 seed) or ``"smoke"`` (checks the wiring; its verdicts mean
            nothing).
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else
            sqlite:///mlruns/mlflow.db).
        experiment: The experiment (default: claims, or claims-SCALE).
        workers: Cells of a study trained at once (default: one per CPU core).
        ray: Train on a Ray cluster, as in :func:`run`.
        out: Also write claims.html, claims.md, claims.csv, about.json and the figures
            into this folder.
        progress: Show a progress bar while a study trains.
        data_dir: The CIFAR-10 folder (default: $CVLIB_DATA_DIR, else Keras's download).

    Returns:
        One row per claim: key, claim, source, setup, measured, verdict, reason.
    """
    from cvlib.studies.claims import SCALES, run_claims

    if scale not in SCALES:
        raise ConfigError(f"unknown claims scale {scale!r}; valid: {', '.join(SCALES)}"
                          f"{did_you_mean(scale, SCALES)}")
    with _store(tracking_uri) as store:
        engine = _engine(workers, ray, None, data_dir, progress)
        with _interruptible():
            result = run_claims(store.uri, scale, engine, echo=_echo, experiment=experiment,
                                command=f"cvlib.claims({scale!r})")
        if out is not None:
            result.write(out)
        return result.table


def load_model(run_or_cell: str, *, experiment: str | None = None,
               tracking_uri: str | None = None) -> Any:
    """The trained Keras model of a cell run (cells log theirs with ``train.save_model:
    final``, the default).

    Args:
        run_or_cell: A run id (or the model's URI the table gives, runs:/ID/model), or a
            cell: its run name (``relu-he-before-s0``, as the
            table's ``runs`` column and the report name them) or its cell hash; the
            newest finished run of the cell that has a model.
        experiment: Where to look for a cell (default: the store's newest experiment).
        tracking_uri: The store (default: $MLFLOW_TRACKING_URI, else
            sqlite:///mlruns/mlflow.db).

    Returns:
        A keras.Model that takes raw uint8 images (N, 32, 32, 3) and gives the ten
        classes' probabilities: its accuracy on the cell's test images is the run's
        test_accuracy.
    """
    from cvlib.tracking.models import load_keras_model

    with _store(tracking_uri) as store:
        given = RUN_ID.fullmatch(run_or_cell)
        if given:
            store.open()
            return load_keras_model(store.uri, given.group(1))
        return load_keras_model(store.uri, _cell_run_id(store, run_or_cell, experiment))


def _cell_run_id(store: ChosenStore, cell: str, experiment: str | None) -> str:
    """The run id of a cell's newest finished run with a model, by run name or cell hash."""
    from cvlib.tracking import schema
    from cvlib.tracking.reads import cell_runs

    name = store.experiment(experiment)
    found = cell_runs(store.uri, name)
    if found is None:
        raise ConfigError(f"no experiment named {name!r} in {store.named}")
    runs = found.table
    mine = runs[(runs["run_name"] == cell) | (runs["cell"] == cell)]
    if mine.empty:
        raise ConfigError(f"no cell {cell!r} in experiment {name!r}"
                          f"{did_you_mean(cell, runs['run_name'].dropna().unique())}")
    usable = mine[(mine["status"] == "FINISHED") & mine[schema.MODEL_URI_COLUMN].notna()]
    if usable.empty:
        raise ConfigError(f"cell {cell!r} of {name!r} has no finished run with a model: only "
                          f"a cell that finished with train.save_model: final logs one")
    return str(usable.iloc[0]["run_id"])  # cell_runs lists the newest first
