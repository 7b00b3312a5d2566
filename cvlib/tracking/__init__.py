"""MLflow tracking: the only package that imports mlflow.

- :mod:`cvlib.tracking.runs` writes: a grid's parent run, a child run per cell and
  seed, the parent runs of searches and studies, from one process only;
- :mod:`cvlib.tracking.reads` reads a store back: cell runs for tables, a grid's
  parent run, metric histories and artifacts for reports and studies;
- :mod:`cvlib.tracking.store` opens a store, building a new SQLite one whole, since
  MLflow's in-place build fails when two processes open a new store at once.
"""
from cvlib.tracking.reads import (GridRun, download_artifact, experiment_names,
                                  metric_histories, metric_history, newest_grid_run,
                                  search_cell_runs)
from cvlib.tracking.runs import (CELL_TAG, ERROR_TAG, OUTCOME_TAG, VERSION_TAG_PREFIX, CellRun,
                                 Tracker, TrackingError, log_outputs, log_series,
                                 log_text_artifact, parent_run, software_versions)

__all__ = [
    "CELL_TAG", "ERROR_TAG", "OUTCOME_TAG", "VERSION_TAG_PREFIX", "CellRun", "GridRun",
    "Tracker", "TrackingError", "download_artifact", "experiment_names", "log_outputs",
    "log_series", "log_text_artifact", "metric_histories", "metric_history",
    "newest_grid_run", "parent_run", "search_cell_runs", "software_versions",
]
