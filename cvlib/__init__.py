"""cvlib: the CS231n "Training Neural Networks I" questions, answered on CIFAR-10.

Grids of Keras 3 models (activation x initializer x batch-norm placement x ...) are
trained from a YAML file and logged to MLflow. The flow, one way:

grid file (:mod:`~cvlib.grids`, :mod:`~cvlib.config`) -> cells -> data
(:mod:`~cvlib.data`) -> model (:mod:`~cvlib.models`) -> training
(:mod:`~cvlib.training`) -> engine (:mod:`cvlib.engine`: workers, recorder) -> tracking
(:mod:`cvlib.tracking`) -> table and report (:mod:`~cvlib.results`, :mod:`~cvlib.report`).
:mod:`cvlib.studies` builds the sanity checks, the learning-rate search and the claims on
the engine; :mod:`cvlib.cli` is the ``cvlib`` command.
"""

__version__ = "0.1.0"
