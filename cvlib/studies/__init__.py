"""The lecture's procedures, built on the engine: the sanity checks and the learning-rate
search of "babysitting the learning process", and the claims with their studies and
verdicts.

One package for all three, rather than ``claims`` alone, because they are the same kind
of thing: each turns a question into grids, trains them through
:class:`cvlib.engine.experiment.Experiment`, and judges the finished runs with plain
functions of the figures. The speed study searches each variant's learning rate with
:mod:`~cvlib.studies.lr_search`, so the search cannot sit below the claims, nor in the
core, which stays below the engine. This package may import the engine and the core; only
:mod:`cvlib.cli` imports it.

- :mod:`~cvlib.studies.sanity`: initial loss and overfitting a tiny subset;
- :mod:`~cvlib.studies.lr_search`: coarse-to-fine random search;
- :mod:`~cvlib.studies.claims`: the claims and the table of verdicts;
- :mod:`~cvlib.studies.context`: the studies' sizes and what they share;
- :mod:`~cvlib.studies.init_at_depth`, :mod:`~cvlib.studies.steps_to_accuracy`,
  :mod:`~cvlib.studies.batch_norm`: one module per study;
- :mod:`~cvlib.studies.verdicts`, :mod:`~cvlib.studies.step_verdicts`: from figures
  (and from step counts, which may be censored) to verdicts.
"""
