"""The engine: how a grid becomes runs.

A command opens an :class:`~cvlib.engine.experiment.Experiment` (one MLflow experiment,
the worker processes, the data and the store, shared by its grids) and trains grids
through it. For each grid:

1. :mod:`~cvlib.engine.resume` plans what is left from the runs in the store, and
   :mod:`~cvlib.engine.plot_repair` draws the plots that a stopped command left undrawn;
2. :mod:`~cvlib.engine.grid_run` turns the pending cells into
   :class:`~cvlib.engine.trials.CellTrial` objects, each with its
   :class:`~cvlib.engine.events.Task` (for successive halving, the
   :mod:`~cvlib.engine.halving` oracle gives the tasks, rung by rung);
3. the tasks are trained by :func:`~cvlib.engine.cell.execute_cell`, in this process or
   by the trainers of a :class:`~cvlib.engine.pool.CellPool`, one loop for every backend
   with the retry policy of :mod:`~cvlib.engine.retries`: the worker processes of
   :mod:`~cvlib.engine.local_backend` (set up by :mod:`~cvlib.engine.child`, sized by
   :mod:`~cvlib.engine.hosts`) or the Ray actors of :mod:`~cvlib.engine.ray_backend`,
   fed in the order of :mod:`~cvlib.engine.scheduling`, which send typed events back;
4. the :class:`~cvlib.engine.recorder.GridRecorder`, always in the command's process,
   turns the events into MLflow runs (through :mod:`cvlib.tracking`) and progress lines
   (:mod:`~cvlib.engine.progress`), and hands the plots to the helper process of
   :mod:`~cvlib.engine.plot_writer`;
5. :mod:`~cvlib.engine.signals` turns Ctrl-C and SIGTERM into an exception that ends the
   open runs as KILLED.

A command's options reach the engine as :class:`~cvlib.engine.options.EngineOptions`,
a grid's as :class:`~cvlib.engine.options.GridOptions`.

The engine may import the core (grids, data, training, tracking); it never imports
:mod:`cvlib.studies` or :mod:`cvlib.cli`. Only the trainer side imports Keras, only the
recorder side MLflow, and neither is imported before the workers' fork server has
started.
"""
