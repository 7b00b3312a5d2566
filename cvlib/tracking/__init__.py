"""MLflow tracking: the only package that imports mlflow.

- :mod:`~cvlib.tracking.schema` names every tag, param, metric prefix and artifact path;
- :mod:`~cvlib.tracking.uris` says where a store and its artifacts are;
- :mod:`~cvlib.tracking.records` is what resuming needs to know of a run;
- :mod:`~cvlib.tracking.store` opens a store and checks it, building a new SQLite store
  whole, since MLflow's in-place build fails when two processes open one at once;
- :mod:`~cvlib.tracking.connection` is a command's connection to its store: the checked
  client, and whether writes go at once or through the journal;
- :mod:`~cvlib.tracking.writer` writes: a grid's parent run, a child run per cell and
  seed, the parent runs of searches and studies, from one process only;
- :mod:`~cvlib.tracking.reads` reads back, in cvlib's own column names.

Importing the package imports nothing: the first four modules are MLflow-free, so the
training side and the command line can use them without MLflow's import (seconds).
"""
